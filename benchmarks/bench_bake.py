"""Benchmark: streaming bake vs a plain copy vs the naive transformers round trip.

Builds a synthetic sharded bf16 checkpoint shaped like a subset of Llama-7B's language model
(hidden 4096, MLP 11008, vocab 32000; --layers decoder layers; about 4.6 GB at 10 layers), puts
alphas on every MLP projection, and measures in one run, each step in its own process:

- copy:  `cp -r` of the checkpoint folder (the floor: the bytes must be read and written once);
- bake:  `sgm-bake bake --no-verify`;
- naive: transformers `from_pretrained`, scale the rows in place, `save_pretrained`.

Wall time and peak anonymous memory (RssAnon, sampled every 20 ms; file-backed pages of the
memory-mapped shards do not count) are reported as a markdown table.

    python benchmarks/bench_bake.py --workdir /tmp/sgm-bench --layers 10
"""

from __future__ import annotations

import argparse
import json
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


def measure(command: list[str]) -> tuple[float, int]:
    """Run a command; return wall seconds and peak RssAnon bytes (sampled)."""
    start = time.perf_counter()
    process = subprocess.Popen(command)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        status = Path(f"/proc/{process.pid}/status")
        while not done.is_set():
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
            except (FileNotFoundError, ProcessLookupError):
                break
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

    methods = {
        "copy (cp -r)": lambda out: ["cp", "-r", str(source), str(out)],
        "sgm-bake bake": lambda out: [
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
        ],
    }
    if not args.skip_naive:
        methods["naive from_pretrained/save_pretrained"] = lambda out: [
            sys.executable,
            "-c",
            NAIVE,
            str(source),
            str(out),
            str(expertise),
        ]
    results = {}
    for _ in range(args.repeat):
        for label, command in methods.items():
            out = args.workdir / "out"
            shutil.rmtree(out, ignore_errors=True)
            elapsed, peak = measure(command(out))
            best = results.get(label)
            results[label] = (
                min(elapsed, best[0]) if best else elapsed,
                max(peak, best[1]) if best else peak,
            )
            shutil.rmtree(out, ignore_errors=True)

    copy_time = results["copy (cp -r)"][0]
    print(
        f"checkpoint: {size / 1e9:.2f} GB bf16 in "
        f"{len(list(source.glob('*.safetensors')))} shards, "
        f"{args.layers} layers; largest tensor {largest / 1e6:.0f} MB; best of {args.repeat}"
    )
    print()
    print("| method | wall s | x copy | peak RssAnon MB |")
    print("|---|---|---|---|")
    for label, (elapsed, peak) in results.items():
        print(f"| {label} | {elapsed:.1f} | {elapsed / copy_time:.2f} | {peak / 1e6:.0f} |")


if __name__ == "__main__":
    main()
