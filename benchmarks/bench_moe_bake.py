"""Benchmark: streaming bake of stacked and per-expert MoE checkpoints vs a plain copy.

Builds a synthetic bf16 checkpoint shaped like Qwen3-VL-30B-A3B's MoE layers (hidden 2048,
128 experts of width 768; --layers MoE layers, about 1.2 GB each) in two layouts: stacked expert
tensors stored [E, H, 2I] / [E, I, H] as on the Hub (transposed from the runtime parameter), and
per-expert `experts.{e}.gate_proj/up_proj/down_proj` weights. Factors go on every expert's
gate_up output and down input channels. Each step runs in its own process; wall time and peak
anonymous memory (RssAnon, as in bench_bake.py) are reported as a markdown table.

    python benchmarks/bench_moe_bake.py --workdir /tmp/sgm-moe-bench --layers 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bake import measure

HIDDEN, MOE_INTERMEDIATE, EXPERTS = 2048, 768, 128


def config(layers: int) -> dict[str, object]:
    return {
        "model_type": "qwen3_vl_moe",
        "architectures": ["Qwen3VLMoeForConditionalGeneration"],
        "text_config": {
            "model_type": "qwen3_vl_moe_text",
            "hidden_size": HIDDEN,
            "moe_intermediate_size": MOE_INTERMEDIATE,
            "num_experts": EXPERTS,
            "num_hidden_layers": layers,
        },
    }


def build(folder: Path, layers: int, per_expert: bool) -> None:
    """One shard per layer, written one layer at a time."""
    from sgm_bake.io.safetensors import write_tensors

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config(layers), indent=2))
    generator = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    for layer in range(layers):
        prefix = f"model.language_model.layers.{layer}.mlp"
        shape_gate_up = (EXPERTS, HIDDEN, 2 * MOE_INTERMEDIATE)  # the Hub's [E, H, 2I]
        gate_up = torch.randn(shape_gate_up, generator=generator).mul_(0.02).to(torch.bfloat16)
        down = torch.randn((EXPERTS, MOE_INTERMEDIATE, HIDDEN), generator=generator)
        down = down.mul_(0.02).to(torch.bfloat16)
        items = [(f"{prefix}.gate.weight", torch.zeros(EXPERTS, HIDDEN, dtype=torch.bfloat16))]
        if per_expert:
            for e in range(EXPERTS):
                matrix = gate_up[e].T.contiguous()
                items += [
                    (f"{prefix}.experts.{e}.gate_proj.weight", matrix[:MOE_INTERMEDIATE]),
                    (f"{prefix}.experts.{e}.up_proj.weight", matrix[MOE_INTERMEDIATE:]),
                    (f"{prefix}.experts.{e}.down_proj.weight", down[e].T.contiguous()),
                ]
        else:
            items += [
                (f"{prefix}.experts.gate_up_proj", gate_up),
                (f"{prefix}.experts.down_proj", down),
            ]
        shard = f"model-{layer + 1:05d}-of-{layers:05d}.safetensors"
        write_tensors(folder / shard, items, {"format": "pt"})
        for name, tensor in items:
            weight_map[name] = shard
            total += tensor.numel() * 2
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_expertise(path: Path, layers: int) -> None:
    from sgm_bake.core.expertise import Expertise, ModuleExpertise, save_expertise

    generator = torch.Generator().manual_seed(1)
    modules = {}
    for layer in range(layers):
        prefix = f"model.language_model.layers.{layer}.mlp.experts"
        for name, side, units in (
            ("gate_up_proj", "output", 2 * MOE_INTERMEDIATE),
            ("down_proj", "input", MOE_INTERMEDIATE),
        ):
            alpha = torch.rand(EXPERTS, units, generator=generator)
            modules[f"{prefix}.{name}"] = ModuleExpertise(f"{prefix}.{name}", side, alpha)  # type: ignore[arg-type]
    save_expertise(Expertise(modules), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    expertise = args.workdir / "expertise.safetensors"
    args.workdir.mkdir(parents=True, exist_ok=True)
    write_expertise(expertise, args.layers)
    rows = []
    for layout in ("stacked [E, H, 2I]", "per-expert"):
        source = args.workdir / ("stacked" if layout.startswith("stacked") else "per_expert")
        if not (source / "model.safetensors.index.json").is_file():
            build(source, args.layers, per_expert=layout == "per-expert")
        size = sum(p.stat().st_size for p in source.glob("*.safetensors"))
        for method, command in (
            ("copy (cp -r)", lambda out, source=source: ["cp", "-r", str(source), str(out)]),
            (
                "sgm-bake bake",
                lambda out, source=source: [
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
            ),
        ):
            out = args.workdir / "out"
            shutil.rmtree(out, ignore_errors=True)
            seconds, peak = measure(command(out))
            rows.append((layout, size, method, seconds, peak))
            shutil.rmtree(out, ignore_errors=True)
    print("| layout | checkpoint | method | wall s | peak RssAnon MB |")
    print("|---|---|---|---|---|")
    for layout, size, method, seconds, peak in rows:
        print(f"| {layout} | {size / 1e9:.2f} GB | {method} | {seconds:.1f} | {peak / 2**20:.0f} |")


if __name__ == "__main__":
    main()
