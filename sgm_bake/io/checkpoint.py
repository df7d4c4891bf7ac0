"""Find and check the weight files of a checkpoint folder, in its own key space.

We work with the files transformers itself loads (`model.safetensors`, a sharded
`model.safetensors.index.json`, or the PyTorch `.bin` equivalents) and never round-trip through
`from_pretrained`/`save_pretrained`, which may rename keys.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from sgm_bake.errors import SGMError
from sgm_bake.io.safetensors import Header, read_header

logger = logging.getLogger(__name__)

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
# Files holding weights in some format; any not among the files we rewrite is left out of the
# output, so that no unbaked copy of the weights ships beside the baked one.
WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".onnx",
    ".onnx_data",
    ".gguf",
    ".ggml",
    ".tflite",
    ".ot",
    ".pdparams",
    ".npz",
)
QUANTIZED_DTYPES = {"F8_E4M3", "F8_E5M2", "F8_E8M0", "F4"}


@dataclass(frozen=True)
class Checkpoint:
    """A model folder: its config and the weight files transformers loads from it."""

    root: Path
    config: dict[str, Any]
    format: Literal["safetensors", "bin"]
    weight_files: tuple[str, ...]
    index_file: str | None

    @cached_property
    def headers(self) -> dict[str, Header]:
        """Parsed safetensors headers per weight file (safetensors checkpoints only)."""
        if self.format != "safetensors":
            raise ValueError("headers exist only for safetensors checkpoints")
        return {name: read_header(self.root / name) for name in self.weight_files}

    def tensor_keys(self) -> dict[str, str]:
        """Every tensor key -> the weight file that holds it."""
        if self.format == "safetensors":
            return {key: name for name, header in self.headers.items() for key in header.tensors}
        keys: dict[str, str] = {}
        for name in self.weight_files:
            for key in load_bin(self.root / name):
                keys[key] = name
        return keys

    def is_weight_file(self, relative: str) -> bool:
        """Whether a file in the folder holds weights (ours or any other format's)."""
        return relative in self.weight_files or relative.endswith(WEIGHT_SUFFIXES)


def load_bin(path: Path) -> dict[str, Any]:
    """Load a PyTorch weight file safely (no pickled code) and lazily (memory-mapped)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise SGMError(
            f"{path} is not a loadable PyTorch weight file ({type(exc).__name__}: {exc}); it is "
            "corrupt or holds pickled code, which is refused"
        ) from exc
    if not isinstance(state, dict):
        raise SGMError(f"{path} does not hold a state dict of tensors")
    return state


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SGMError(f"{path} is not valid JSON ({exc}); the checkpoint is damaged") from exc
    if not isinstance(data, dict):
        raise SGMError(f"{path} does not hold a JSON object; the checkpoint is damaged")
    return data


def _check_not_quantized(config: dict[str, Any], root: Path) -> None:
    for where in (config, config.get("text_config") or {}):
        quantization = where.get("quantization_config")
        if quantization:
            method = (
                quantization.get("quant_method", "unknown")
                if isinstance(quantization, dict)
                else "unknown"
            )
            raise SGMError(
                f"{root} is a quantized checkpoint ({method}); folding needs the full-precision "
                "weights: bake the unquantized model, then quantize the baked output"
            )


def _index_files(root: Path, index_name: str) -> tuple[str, ...]:
    index = _read_json(root / index_name)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise SGMError(f"{root / index_name} has no weight_map; the checkpoint index is damaged")
    files = tuple(sorted(set(weight_map.values())))
    missing = [name for name in files if not (root / name).is_file()]
    if missing:
        raise SGMError(
            f"{root} lacks shard {missing[0]} named in {index_name} ({len(missing)} missing); "
            "download the complete checkpoint"
        )
    return files


def open_checkpoint(root: Path) -> Checkpoint:
    """Inspect a checkpoint folder, refusing what cannot be baked."""
    if not root.is_dir():
        raise SGMError(f"source {root} is not a folder; pass a model folder or a Hub model id")
    config_path = root / "config.json"
    if not config_path.is_file():
        raise SGMError(
            f"source {root} has no config.json; it is not a transformers checkpoint folder"
        )
    config = _read_json(config_path)
    _check_not_quantized(config, root)
    if (root / SAFE_INDEX).is_file():
        checkpoint = Checkpoint(
            root, config, "safetensors", _index_files(root, SAFE_INDEX), SAFE_INDEX
        )
    elif (root / SAFE_SINGLE).is_file():
        checkpoint = Checkpoint(root, config, "safetensors", (SAFE_SINGLE,), None)
    elif (root / BIN_INDEX).is_file():
        checkpoint = Checkpoint(root, config, "bin", _index_files(root, BIN_INDEX), BIN_INDEX)
    elif (root / BIN_SINGLE).is_file():
        checkpoint = Checkpoint(root, config, "bin", (BIN_SINGLE,), None)
    else:
        raise SGMError(
            f"source {root} has config.json but no weights ({SAFE_SINGLE}, {SAFE_INDEX}, "
            f"{BIN_SINGLE} or {BIN_INDEX}); download the weights too"
        )
    if checkpoint.format == "safetensors":
        for name, header in checkpoint.headers.items():
            odd = {t.dtype for t in header.tensors.values()} & QUANTIZED_DTYPES
            if odd:
                raise SGMError(
                    f"{name} stores {sorted(odd)} tensors, a quantized checkpoint; bake the "
                    "unquantized model, then quantize the baked output"
                )
    return checkpoint


def bin_to_safetensors_name(name: str) -> str:
    """`pytorch_model-00001-of-00002.bin` -> `model-00001-of-00002.safetensors`."""
    stem = name[: -len(".bin")] if name.endswith(".bin") else name
    if stem.startswith("pytorch_model"):
        stem = "model" + stem[len("pytorch_model") :]
    return stem + ".safetensors"
