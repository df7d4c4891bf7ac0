"""Benchmark: `sgm-bake plan` against the measured peak host memory of every stage, on the CPU.

Builds a random bf16 LLaVA with llava-1.5-7b's widths (hidden 4096, MLP 11008, vocab 32064, the
CLIP ViT-L/14 tower at 336 px) but only --layers language layers (the whole 7B model, 14 GB, does
not run on a 24 GB machine in float32), then runs each stage in its own process, as a user would,
and samples the process's RssAnon every 20 ms:

- profile:        `sgm-bake profile MODEL --device cpu` (float32) on --samples of builtin:default;
- bake:           `sgm-bake bake MODEL OUT --no-verify`;
- verify:         `sgm-bake verify OUT` (the layer check, one MLP block in float32);
- verify --full:  `sgm-bake verify OUT --full --device cpu` (float32);
- eval/generate:  `sgm-bake eval OUT --no-base --device cpu` on --eval-items items.

`plan` is given what the runs used: the device, the batch size, the longest batch's tokens per
sample, the number of samples and new tokens. Every stage's peak is one layer's working memory
on top of the weights, so the measured peaks of the subset scale to the full model by the
weights alone; the last table applies that (the weights counted from the 7B config) beside the
plan of the 7B model itself.

    python benchmarks/bench_plan.py --workdir /tmp/sgm-plan --layers 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

TOLERANCE = 0.15


def longest_tokens(model: Path, samples: int, batch_size: int) -> int:
    """Positions per sample of the longest batch profiling makes (image tokens included)."""
    import json as json_module

    from sgm_bake.datasets.profile_set import load_profile_set
    from sgm_bake.pipeline.profile import Inputs, length_order

    config = json_module.loads((model / "config.json").read_text())
    inputs = Inputs(model, config, "dialogue", multimodal=True)
    profile_set = load_profile_set("builtin:default").limited(samples)
    first = list(length_order(profile_set.samples, inputs)[:batch_size])
    return int(inputs.build(first)["input_ids"].shape[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-items", type=int, default=8)
    args = parser.parse_args()

    from bench_bake import measure
    from build_llava import build_llava

    from sgm_bake.pipeline.plan import PlanOptions, model_facts, plan_stages
    from sgm_bake.runtime.memory import format_bytes

    model = args.workdir / "model"
    if not (model / "model.safetensors.index.json").is_file():
        build_llava(model, ROOT / "benchmarks" / "model_configs" / "llava-1.5-7b", args.layers)
    out = args.workdir / "out"
    expertise = args.workdir / "expertise.safetensors"
    prompts = args.workdir / "few.jsonl"
    builtin = ROOT / "sgm_bake" / "_data" / "profiles" / "mmtoxicqa-organism-v1.jsonl"
    rows = builtin.read_text().splitlines()
    prompts.write_text("\n".join(rows[: args.eval_items]) + "\n")
    sgm = [sys.executable, "-m", "sgm_bake", "-q"]
    batch = ["--batch-size", str(args.batch_size)]
    commands = {
        "profile": [
            *sgm, "profile", str(model), "-o", str(expertise), "--overwrite", "--device", "cpu",
            "--max-samples", str(args.samples), *batch,
        ],
        "bake": [*sgm, "bake", str(model), str(out), "--expertise", str(expertise),
                 "--no-verify", "--overwrite"],
        "verify": [*sgm, "verify", str(out)],
        "verify --full": [*sgm, "verify", str(out), "--full", "--device", "cpu"],
        "eval/generate": [
            *sgm, "eval", str(out), "--no-base", "--device", "cpu", "--prompt-set", str(prompts),
            "--max-new-tokens", "16", *batch, "-o", str(args.workdir / "eval.json"),
        ],
    }  # fmt: skip
    measured: dict[str, tuple[float, int]] = {}
    for stage, command in commands.items():
        measured[stage] = measure(command)
        seconds, peak = measured[stage]
        print(f"{stage}: {seconds:.1f} s, peak RssAnon {format_bytes(peak)}", flush=True)

    tokens = longest_tokens(model, args.samples, args.batch_size)
    options = PlanOptions(
        device="cpu",
        batch_size=args.batch_size,
        sequence_length=tokens,
        new_tokens=16,
        profile_samples=args.samples,
    )
    subset = plan_stages(model_facts(str(model)), options)
    full_facts = model_facts(str(ROOT / "benchmarks" / "model_configs" / "llava-1.5-7b"))
    full = plan_stages(full_facts, options)
    record = json.loads((out / "sgm" / "bake.json").read_text())
    print()
    print(
        f"{subset.facts.params / 1e9:.2f}B parameters ({args.layers} of 32 language layers of "
        f"llava-1.5-7b), float32 on the CPU, batch {args.batch_size}, longest batch {tokens} "
        f"tokens per sample, {args.samples} samples; verification passed: "
        f"{record['verification']['passed']}"
    )
    print()
    print("| stage | plan | measured peak RssAnon | plan / measured | within 15% |")
    print("|---|---|---|---|---|")
    ratios = {}
    for row in subset.stages:
        peak = measured[row.stage][1]
        ratios[row.stage] = row.host_bytes / peak
        ok = abs(ratios[row.stage] - 1) <= TOLERANCE
        print(
            f"| {row.stage} | {format_bytes(row.host_bytes)} | {format_bytes(peak)} | "
            f"{ratios[row.stage]:.2f} | {'yes' if ok else 'NO'} |"
        )
    print()
    print(
        f"Scaled to llava-1.5-7b ({full_facts.params / 1e9:.2f}B): the whole-model stages hold "
        "the weights of every layer on top of one layer's working memory, so the measured peak "
        "plus the float32 weights of the missing layers (and, for generation, their KV cache); "
        "bake and verify do not grow with depth."
    )
    print()
    print("| stage | plan (7B) | measured subset + missing layers | plan / scaled |")
    print("|---|---|---|---|")
    extra = (full_facts.params - subset.facts.params) * 4
    missing_layers = full_facts.total_layers - subset.facts.total_layers
    kv_cache = args.batch_size * (tokens + 16) * missing_layers * 2 * full_facts.kv_width * 4
    for row, small in zip(full.stages, subset.stages, strict=True):
        whole = row.stage in ("verify --full", "profile", "eval/generate")
        scaled = measured[small.stage][1] + (extra if whole else 0)
        scaled += kv_cache if row.stage == "eval/generate" else 0
        print(
            f"| {row.stage} | {format_bytes(row.host_bytes)} | {format_bytes(scaled)} | "
            f"{row.host_bytes / scaled:.2f} |"
        )
    missed = [stage for stage, ratio in ratios.items() if abs(ratio - 1) > TOLERANCE]
    print()
    print(
        f"goal: plan within 15% of every measured peak: {'met' if not missed else 'NOT met'}"
        + (f" ({', '.join(missed)})" if missed else "")
    )


if __name__ == "__main__":
    main()
