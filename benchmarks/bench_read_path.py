"""Benchmark: the bake's shard reading, this checkout against another (an A/B in one run).

The bake reads source shards with `pread` into buffers (so that a shard truncated under it is a
short read, not a SIGBUS); sgm-bake 0.1 copied untargeted tensors in the kernel
(`copy_file_range`) and folded through a memory map. This runs `sgm-bake bake --no-verify` on
the synthetic Llama-shaped checkpoint of `bench_bake.py` with each checkout in turn, page cache
warm, alternating, and reports the best wall time and the peak RssAnon of each.

    python benchmarks/bench_read_path.py --workdir /tmp/sgm-bench --other /path/to/old/checkout
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bake import build_checkpoint, measure, write_expertise

HERE = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--other", type=Path, required=True, help="another sgm-bake checkout")
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    source = args.workdir / "source"
    expertise = args.workdir / "expertise.safetensors"
    if not (source / "model.safetensors.index.json").is_file():
        build_checkpoint(source, args.layers)
    write_expertise(expertise, args.layers)
    subprocess.run(["cat", *map(str, source.glob("*"))], stdout=subprocess.DEVNULL, check=True)
    out = args.workdir / "out"
    results: dict[str, list[tuple[float, int]]] = {}
    for _ in range(args.repeat):
        for label, code in (("this checkout", HERE), ("other checkout", args.other)):
            shutil.rmtree(out, ignore_errors=True)
            command = [
                "env",
                f"PYTHONPATH={code}",
                sys.executable,
                "-m",
                "sgm_bake",
                "-q",
                "bake",
                str(source),
                str(out),
                "--expertise",
                str(expertise),
                "--no-verify",
            ]
            results.setdefault(label, []).append(measure(command))
    shutil.rmtree(out, ignore_errors=True)
    size = sum(p.stat().st_size for p in source.glob("*.safetensors"))
    print(f"checkpoint {size / 1e9:.2f} GB, {args.layers} layers, {args.repeat} runs each")
    print("| code | best wall s | all runs s | peak RssAnon MB |")
    print("|---|---|---|---|")
    for label, runs in results.items():
        walls = ", ".join(f"{wall:.1f}" for wall, _ in runs)
        peak = max(rss for _, rss in runs) / 2**20
        print(f"| {label} | {min(w for w, _ in runs):.1f} | {walls} | {peak:.0f} |")
    print(f"(cpu count {os.cpu_count()})")


if __name__ == "__main__":
    main()
