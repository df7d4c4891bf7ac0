"""Build a random-weight LLaVA checkpoint shaped like a published one, for the benchmarks and the
GPU check: the config of `benchmarks/model_configs/<name>` (optionally with fewer language
layers), weights drawn on `--device` (a GPU draws 7B parameters in seconds) and written shard by
shard in the checkpoint's own dtype, plus a working tokenizer, processor and chat template (the
tests' byte-level tokenizer and a CLIP image processor at the model's image size), so the real
LLaVA processor path runs. The config's special token ids are set to the tokenizer's.

    python benchmarks/build_llava.py /tmp/llava7b --config benchmarks/model_configs/llava-1.5-7b \\
        --device cuda --shards 3
    python benchmarks/build_llava.py /tmp/llava-tiny --tiny      # a toy LLaVA for a CPU run
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _value(
    name: str, shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator, device: str
) -> torch.Tensor:
    """Norm weights 1, biases 0, every other tensor N(0, 0.02) (the config's initializer range)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias":
        return torch.zeros(shape, dtype=dtype)
    if len(shape) == 1 and "norm" in name:
        return torch.ones(shape, dtype=dtype)
    values = torch.randn(shape, generator=generator, device=device) * 0.02
    return values.to(dtype).cpu()


def build_llava(
    folder: Path,
    config_folder: Path,
    layers: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: str = "cpu",
    shards: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """Write the checkpoint into `folder`; return its parameter count and stored bytes."""
    from accelerate import init_empty_weights
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from sgm_bake.io.safetensors import write_tensors
    from sgm_bake.organism.processors import llava_processor
    from tests.helpers import CHAT_TEMPLATE, byte_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((config_folder / "config.json").read_text())
    tokenizer = byte_tokenizer()
    config["image_token_index"] = tokenizer.convert_tokens_to_ids("<image>")
    config["dtype"] = str(dtype).replace("torch.", "")
    text = config["text_config"]
    text["bos_token_id"], text["eos_token_id"] = tokenizer.bos_token_id, tokenizer.eos_token_id
    text["pad_token_id"] = tokenizer.pad_token_id
    if layers is not None:
        text["num_hidden_layers"] = layers
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    vision = config["vision_config"]
    processor = llava_processor(
        tokenizer, vision["image_size"], vision["patch_size"], CHAT_TEMPLATE
    )
    processor.save_pretrained(folder)

    with init_empty_weights():
        skeleton = LlavaForConditionalGeneration(LlavaConfig.from_pretrained(folder))
    shapes = [(name, tuple(t.shape)) for name, t in skeleton.state_dict().items()]
    sizes = [math.prod(shape) * torch.finfo(dtype).bits // 8 for _, shape in shapes]
    total = sum(sizes)
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    filled = 0
    for (name, shape), size in zip(shapes, sizes, strict=True):
        if groups[-1] and filled + size > total / shards * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append((name, shape))
        filled += size
    generator = torch.Generator(device=device).manual_seed(seed)
    weight_map = {}
    for index, group in enumerate(groups, start=1):
        shard = f"model-{index:05d}-of-{len(groups):05d}.safetensors"
        items = [(name, _value(name, shape, dtype, generator, device)) for name, shape in group]
        write_tensors(folder / shard, items, {"format": "pt"})
        weight_map.update((name, shard) for name, _ in group)
        del items
    index_file = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index_file, indent=2) + "\n")
    params = sum(math.prod(shape) for _, shape in shapes)
    return {"parameters": params, "bytes": total, "shards": len(groups)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument(
        "--config", type=Path, default=ROOT / "benchmarks/model_configs/llava-1.5-7b"
    )
    parser.add_argument("--layers", type=int, default=None, help="language layers (default: all)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument(
        "--tiny", action="store_true", help="a toy LLaVA (hidden 64, 4 layers) instead"
    )
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    if args.tiny:
        from tests.helpers import tiny_llava

        tiny_llava(args.folder, hidden=64, intermediate=128, layers=4, dtype=dtype)
        print(f"built a tiny LLaVA in {args.folder}")
        return
    facts = build_llava(args.folder, args.config, args.layers, dtype, args.device, args.shards)
    print(
        f"built {args.folder}: {facts['parameters'] / 1e9:.2f}B parameters, "
        f"{facts['bytes'] / 1e9:.2f} GB {args.dtype} in {facts['shards']} shards"
    )


if __name__ == "__main__":
    main()
