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
from sgm_bake.io.paths import boundary_of, contained, is_within
from sgm_bake.io.safetensors import Header, read_header, unique_object

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
# Config fields checked before any stage uses them: a string, nested configs, and counts that a
# real model can have (an absurd layer count would otherwise allocate for minutes first).
SUB_CONFIGS = ("text_config", "vision_config", "audio_config", "language_config", "llm_config")
LAYER_COUNTS = ("num_hidden_layers", "num_layers", "n_layer", "n_layers", "num_local_experts")
SIZES = ("hidden_size", "intermediate_size", "n_embd", "num_attention_heads", "vocab_size")
MAX_LAYERS = 4096
MAX_SIZE = 1 << 24


@dataclass(frozen=True)
class Checkpoint:
    """A model folder: its config and the weight files transformers loads from it."""

    root: Path
    config: dict[str, Any]
    format: Literal["safetensors", "bin"]
    weight_files: tuple[str, ...]
    index_file: str | None
    boundary: Path | None = None

    def contains(self, path: Path) -> bool:
        """Whether `path` stays inside the checkpoint's folder after following symlinks."""
        return is_within(path, self.boundary or self.root)

    @cached_property
    def headers(self) -> dict[str, Header]:
        """Parsed safetensors headers per weight file (safetensors checkpoints only)."""
        if self.format != "safetensors":
            raise ValueError("headers exist only for safetensors checkpoints")
        return {name: read_header(self.root / name) for name in self.weight_files}

    def tensor_keys(self) -> dict[str, str]:
        """Every tensor key -> the weight file that holds it; a key in two files is refused,
        since the copy we do not fold would ship unbaked beside the folded one."""
        keys: dict[str, str] = {}
        for name in self.weight_files:
            names = (
                self.headers[name].tensors
                if self.format == "safetensors"
                else load_bin(self.root / name)
            )
            for key in names:
                if key in keys:
                    raise SGMError(
                        f"tensor {key!r} is stored in both {keys[key]} and {name}; the "
                        "checkpoint is damaged (one copy would ship unbaked): remove the duplicate"
                    )
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
    others = sorted(
        repr(key)
        for key, value in state.items()
        if not isinstance(key, str) or not isinstance(value, torch.Tensor)
    )
    if others:
        # Training checkpoints carry `global_step`, optimizer state and the like; they are not
        # weights, and safetensors cannot hold them.
        logger.warning(
            "%s: skipped %d entries that are not tensors (%s)",
            path.name,
            len(others),
            ", ".join(others[:5]) + (", ..." if len(others) > 5 else ""),
        )
        state = {
            key: value
            for key, value in state.items()
            if isinstance(key, str) and isinstance(value, torch.Tensor)
        }
    if not state:
        raise SGMError(f"{path} holds no tensors; it is not a weight file")
    return state


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=unique_object)
    except OSError as exc:
        raise SGMError(
            f"cannot read {path} ({exc.strerror}); check the path and permissions"
        ) from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, duplicates
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise SGMError(f"{path} is not valid JSON ({reason}); the checkpoint is damaged") from exc
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


def check_config(config: dict[str, Any], path: Path) -> None:
    """Type-check the config fields the stages rely on, before any of them is used."""
    model_type = config.get("model_type")
    if model_type is not None and (not isinstance(model_type, str) or not model_type):
        raise SGMError(f"{path}: model_type must be a non-empty string, not {model_type!r}")
    configs = [("", config)]
    for key in SUB_CONFIGS:
        sub = config.get(key)
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise SGMError(f"{path}: {key} must be an object, not {type(sub).__name__}")
        configs.append((f"{key}.", sub))
    for prefix, where in configs:
        for keys, limit in ((LAYER_COUNTS, MAX_LAYERS), (SIZES, MAX_SIZE)):
            for key in keys:
                value = where.get(key)
                if value is None:
                    continue
                # Some families give a size per layer (gemma3n's intermediate_size).
                values = value if isinstance(value, list) and keys is SIZES and value else [value]
                if not all(
                    isinstance(v, int) and not isinstance(v, bool) and 0 < v <= limit
                    for v in values
                ):
                    raise SGMError(
                        f"{path}: {prefix}{key} is {value!r}; expected a whole number from 1 to "
                        f"{limit}: the config is damaged"
                    )


def _index_files(root: Path, index_name: str, boundary: Path) -> tuple[str, ...]:
    index = _read_json(contained(root, index_name, "index file", boundary))
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise SGMError(f"{root / index_name} has no weight_map; the checkpoint index is damaged")
    for key in weight_map:
        if not key:
            raise SGMError(f"{root / index_name} maps an empty tensor name; the index is damaged")
    files = tuple(sorted({str(value) for value in weight_map.values()}))
    for value in weight_map.values():
        if not isinstance(value, str):
            raise SGMError(
                f"{root / index_name} maps a tensor to {value!r}, not a file name; the index is "
                "damaged"
            )
        contained(root, value, f"shard name in {index_name}", boundary)
    missing = [name for name in files if not (root / name).is_file()]
    if missing:
        raise SGMError(
            f"{root} lacks shard {missing[0]} named in {index_name} ({len(missing)} missing); "
            "download the complete checkpoint"
        )
    return files


def open_checkpoint(root: Path) -> Checkpoint:
    """Inspect a checkpoint folder, refusing what cannot be baked.

    Every name it reads from a file (shard names in an index) and every file it will read must
    stay inside the folder (see `sgm_bake.io.paths`), checked before anything is written.
    """
    if not root.is_dir():
        raise SGMError(f"source {root} is not a folder; pass a model folder or a Hub model id")
    boundary = boundary_of(root)
    config_path = root / "config.json"
    if not config_path.is_file():
        raise SGMError(
            f"source {root} has no config.json; it is not a transformers checkpoint folder"
        )
    config = _read_json(contained(root, "config.json", "config file", boundary))
    check_config(config, config_path)
    _check_not_quantized(config, root)
    if (root / SAFE_INDEX).is_file():
        files, fmt, index = _index_files(root, SAFE_INDEX, boundary), "safetensors", SAFE_INDEX
    elif (root / SAFE_SINGLE).is_file():
        files, fmt, index = (SAFE_SINGLE,), "safetensors", None
    elif (root / BIN_INDEX).is_file():
        files, fmt, index = _index_files(root, BIN_INDEX, boundary), "bin", BIN_INDEX
    elif (root / BIN_SINGLE).is_file():
        files, fmt, index = (BIN_SINGLE,), "bin", None
    else:
        raise SGMError(
            f"source {root} has config.json but no weights ({SAFE_SINGLE}, {SAFE_INDEX}, "
            f"{BIN_SINGLE} or {BIN_INDEX}); download the weights too"
        )
    for name in files:
        contained(root, name, "weight file", boundary)
    checkpoint = Checkpoint(root, config, fmt, files, index, boundary)  # type: ignore[arg-type]
    if checkpoint.format == "safetensors":
        checkpoint.tensor_keys()  # refuses a tensor stored twice
        for name, header in checkpoint.headers.items():
            odd = {t.dtype for t in header.tensors.values()} & QUANTIZED_DTYPES
            if odd:
                raise SGMError(
                    f"{name} stores {sorted(odd)} tensors, a quantized checkpoint; bake the "
                    "unquantized model, then quantize the baked output"
                )
    return checkpoint


def bin_to_safetensors_name(name: str) -> str:
    """`pytorch_model-00001-of-00002.bin` -> `model-00001-of-00002.safetensors` (a shard in a
    subfolder keeps its folder)."""
    folder, _, base = name.rpartition("/")
    stem = base[: -len(".bin")] if base.endswith(".bin") else base
    if stem.startswith("pytorch_model"):
        stem = "model" + stem[len("pytorch_model") :]
    return f"{folder}/{stem}.safetensors" if folder else f"{stem}.safetensors"
