"""Benchmark: the default bake (with its layer-streamed verification) vs copying and hashing.

Builds a synthetic sharded bf16 checkpoint shaped like a subset of Llama-7B's language model
(hidden 4096, MLP 11008, vocab 32000; --layers decoder layers; about 4.6 GB at 10 layers), puts
alphas on every MLP projection, warms the page cache, and measures in one run, each step in its
own process:

- copy:         `cp -r` of the checkpoint folder (the bytes read and written once);
- copy + sha256: `cp -r`, then the sha256 of every copied file with Python's hashlib (what the
                bake also does: it records the digest of every output file);
- bake:         `sgm-bake bake` with its default verification (layer by layer);
- bake, no verify: `sgm-bake bake --no-verify`;
- verify --full: `sgm-bake verify OUT --full` (the whole-model logits check), once;
- naive:        transformers `from_pretrained`, scale the rows in place, `save_pretrained`
                (unless --skip-naive).

Wall time and peak anonymous memory of the process tree (RssAnon, sampled every 20 ms;
file-backed pages of the memory-mapped shards do not count) are reported as a markdown table,
with the goals of issue 11: bake peak <= 1 GB + the largest tensor, bake wall time <= 1.5x
(copy + sha256).

    nice python benchmarks/bench_bake.py --workdir /tmp/sgm-bench --layers 10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import torch

HIDDEN, INTERMEDIATE, VOCAB, HEADS = 4096, 11008, 32000, 32
SHARD_BYTES = 2 * 1024**3


def build_checkpoint(folder: Path, layers: int, seed: int = 0) -> None:
    """Write a Llama-shaped bf16 checkpoint shard by shard, one tensor in memory at a time."""
    from transformers import LlamaConfig

    from sgm_bake.io.safetensors import write_tensors

    folder.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        vocab_size=VOCAB,
        dtype="bfloat16",
    )
    config.save_pretrained(folder)
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for layer in range(layers):
        prefix = f"model.layers.{layer}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes.append((f"{prefix}.self_attn.{name}.weight", (HIDDEN, HIDDEN)))
        shapes.append((f"{prefix}.mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)))
        shapes.append((f"{prefix}.mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)))
        shapes.append((f"{prefix}.mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)))
        shapes.append((f"{prefix}.input_layernorm.weight", (HIDDEN,)))
        shapes.append((f"{prefix}.post_attention_layernorm.weight", (HIDDEN,)))
    shapes += [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]

    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = 2 * int(torch.tensor(shape).prod())
        if groups[-1] and size + nbytes > SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += nbytes
    generator = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for index, group in enumerate(groups, start=1):
        shard = f"model-{index:05d}-of-{len(groups):05d}.safetensors"

        def tensors(group=group):
            for name, shape in group:
                yield name, (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)

        # write_tensors needs the header first: materialise one shard's tensors lazily twice
        items = list(tensors())
        write_tensors(folder / shard, items, {"format": "pt"})
        for name, tensor in items:
            weight_map[name] = shard
            total += tensor.numel() * 2
        del items
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_expertise(path: Path, layers: int) -> None:
    from sgm_bake.core.expertise import Expertise, ModuleExpertise, save_expertise

    generator = torch.Generator().manual_seed(1)
    modules = {}
    for layer in range(layers):
        for name, units in (
            ("gate_proj", INTERMEDIATE),
            ("up_proj", INTERMEDIATE),
            ("down_proj", HIDDEN),
        ):
            module = f"model.layers.{layer}.mlp.{name}"
            modules[module] = ModuleExpertise(
                module, "output", torch.rand(units, generator=generator)
            )
    save_expertise(Expertise(modules), path)


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc/PID/task/*/children)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found.extend(_tree(int(child)))
    return found


def _rss_anon(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def measure(command: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Run a command; return wall seconds and the peak RssAnon of its process tree (sampled)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, sum(_rss_anon(pid) for pid in _tree(process.pid)))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = process.wait()
    elapsed = time.perf_counter() - start
    done.set()
    sampler.join()
    if code != 0:
        raise SystemExit(f"{command} failed with exit code {code}")
    return elapsed, peak


HASH = textwrap.dedent(
    """
    import hashlib, sys
    from pathlib import Path
    for path in sorted(Path(sys.argv[1]).rglob("*")):
        if path.is_file():
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                while chunk := handle.read(64 * 1024 * 1024):
                    digest.update(chunk)
    """
)


NAIVE = textwrap.dedent(
    """
    import sys, torch
    from transformers import AutoModelForCausalLM
    from sgm_bake.core.expertise import load_expertise
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
    expertise = load_expertise(sys.argv[3])
    with torch.no_grad():
        for name, entry in expertise.modules.items():
            weight = model.get_submodule(name).weight
            weight.copy_((weight.float() * entry.alpha[:, None]).to(weight.dtype))
    model.save_pretrained(sys.argv[2], max_shard_size="2GB")
    """
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=2, help="runs per method (best is kept)")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument(
        "--full-dtype", default="float32", help="--verify-dtype of the verify --full run"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a checkout of an earlier sgm-bake: its default bake runs in the same loop (on "
        "PYTHONPATH), so a change is measured against it under the same load",
    )
    parser.add_argument("--skip-full", action="store_true", help="skip the verify --full run")
    args = parser.parse_args()

    source = args.workdir / "source"
    expertise = args.workdir / "expertise.safetensors"
    if not (source / "model.safetensors.index.json").is_file():
        build_checkpoint(source, args.layers)
    write_expertise(expertise, args.layers)
    size = sum(p.stat().st_size for p in source.glob("*.safetensors"))
    from sgm_bake.io.safetensors import read_header

    largest = max(
        info.nbytes
        for p in source.glob("*.safetensors")
        for info in read_header(p).tensors.values()
    )
    subprocess.run(["cat", *map(str, source.glob("*"))], stdout=subprocess.DEVNULL, check=True)

    def bake(out: Path, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "sgm_bake",
            "-q",
            "bake",
            str(source),
            str(out),
            "--expertise",
            str(expertise),
            *extra,
        ]

    copy_and_hash = f'cp -r "$1" "$2" && "{sys.executable}" -c \'{HASH}\' "$2"'
    methods = {
        "copy (cp -r)": lambda out: ["cp", "-r", str(source), str(out)],
        "copy + hashlib sha256": lambda out: [
            "sh",
            "-c",
            copy_and_hash,
            "sh",
            str(source),
            str(out),
        ],
        "sgm-bake bake (default: layer-streamed verify)": lambda out: bake(out),
        "sgm-bake bake --no-verify": lambda out: bake(out, "--no-verify"),
    }
    environments: dict[str, dict[str, str]] = {}
    if args.baseline is not None:
        label = f"sgm-bake bake, default, at {args.baseline.name} (baseline)"
        methods[label] = lambda out: bake(out)
        environments[label] = {**os.environ, "PYTHONPATH": str(args.baseline.resolve())}
    if not args.skip_naive:
        methods["naive from_pretrained/save_pretrained"] = lambda out: [
            sys.executable,
            "-c",
            NAIVE,
            str(source),
            str(out),
            str(expertise),
        ]
    results: dict[str, tuple[float, int]] = {}
    out = args.workdir / "out"
    kept = args.workdir / "baked"
    for _ in range(args.repeat):
        for label, command in methods.items():
            shutil.rmtree(out, ignore_errors=True)
            elapsed, peak = measure(command(out), environments.get(label))
            best = results.get(label)
            results[label] = (
                min(elapsed, best[0]) if best else elapsed,
                max(peak, best[1]) if best else peak,
            )
            if label.endswith("layer-streamed verify)"):
                shutil.rmtree(kept, ignore_errors=True)
                out.rename(kept)
            shutil.rmtree(out, ignore_errors=True)
    record = json.loads((kept / "sgm" / "bake.json").read_text())
    if not args.skip_full:
        results["sgm-bake verify --full (once)"] = measure(
            [
                sys.executable,
                "-m",
                "sgm_bake",
                "-q",
                "verify",
                str(kept),
                "--full",
                "--device",
                "cpu",
                "--verify-dtype",
                args.full_dtype,
            ]
        )
    full_record = json.loads((kept / "sgm" / "bake.json").read_text())
    shutil.rmtree(kept, ignore_errors=True)

    floor = results["copy + hashlib sha256"][0]
    print(
        f"checkpoint: {size / 1e9:.2f} GB bf16 in "
        f"{len(list(source.glob('*.safetensors')))} shards, "
        f"{args.layers} layers; largest tensor {largest / 1e6:.0f} MB; best of {args.repeat}"
    )
    print()
    print("| method | wall s | x (copy + sha256) | peak RssAnon MB |")
    print("|---|---|---|---|")
    for label, (elapsed, peak) in results.items():
        print(f"| {label} | {elapsed:.1f} | {elapsed / floor:.2f} | {peak / 1e6:.0f} |")
    print()
    verification = record["verification"]
    print(
        f"default verification: {verification['mode']}, {verification['layers_checked']} blocks, "
        f"max per-unit rel diff {verification['max_rel_diff']:.3g} "
        f"(tolerance {verification['tolerance']:.3g}), passed {verification['passed']}"
    )
    for name, stage in {**record["stages"], **full_record["stages"]}.items():
        print(
            f"stage {name}: {stage['seconds']:.1f} s, in-process peak RssAnon "
            f"{stage['host_peak_rss_anon_bytes'] / 1e6:.0f} MB"
        )
    label = "sgm-bake bake (default: layer-streamed verify)"
    elapsed, peak = results[label]
    print()
    print(
        f"goal peak <= 1 GB + largest tensor ({(1e9 + largest) / 1e6:.0f} MB): "
        f"{peak / 1e6:.0f} MB, {'met' if peak <= 1e9 + largest else 'NOT met'}"
    )
    print(
        f"goal wall <= 1.5x (copy + sha256) ({1.5 * floor:.1f} s): {elapsed:.1f} s "
        f"({elapsed / floor:.2f}x), {'met' if elapsed <= 1.5 * floor else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
