"""Loading models for the steps that run one: device, dtype, model, processor.

Profiling, generation, evaluation, tuning and whole-model verification all load through here, so
a model is always loaded the same way: with the recipe's transformers Auto class, straight into
the requested dtype, on the requested device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sgm_bake.core.recipes import Recipe, recipe_for_config
from sgm_bake.errors import SGMError
from sgm_bake.io.checkpoint import open_checkpoint
from sgm_bake.io.source import Source, resolve_source

logger = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")
ORGANISM = "organism"
ORGANISM_PLAIN = "organism-plain"


def pick_device(device: str) -> torch.device:
    """Resolve `auto` to cuda, then mps, then cpu; refuse a device this machine lacks."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise SGMError(
            f"device {device!r} is not a torch device; use auto, cpu, cuda or mps"
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SGMError(
            f"device {device!r} was asked for but CUDA is not available; use --device cpu"
        )
    return resolved


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is float32 on the CPU (exact, and bf16 matmuls are slow there), bfloat16 on a GPU."""
    if name not in DTYPES:
        raise SGMError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    if name != "auto":
        dtype: torch.dtype = getattr(torch, name)
        return dtype
    return torch.float32 if device.type == "cpu" else torch.bfloat16


def load_model(folder: Path, recipe: Recipe, dtype: torch.dtype, device: torch.device) -> Any:
    """Load a checkpoint with the recipe's Auto class, in `dtype`, on `device`, in eval mode."""
    import transformers

    auto = getattr(transformers, recipe.auto_class, None)
    if auto is None:
        raise SGMError(
            f"transformers {transformers.__version__} has no {recipe.auto_class}; upgrade it"
        )
    try:
        model = auto.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise SGMError(
            f"transformers cannot load the model in {folder} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); check the checkpoint"
        ) from exc
    return model.to(device).eval()


def load_processor(folder: Path, template: Path | None = None) -> Any:
    """The model's processor (or tokenizer), with an optional chat template file applied."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(folder)
    except Exception as exc:
        raise SGMError(
            f"{folder} has no loadable processor or tokenizer ({type(exc).__name__})"
        ) from exc
    if template is not None:
        try:
            text = template.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SGMError(f"chat template {template} is not readable ({exc})") from exc
        processor.chat_template = text
        if getattr(processor, "tokenizer", None) is not None:
            processor.tokenizer.chat_template = text
    return processor


def resolve_model_source(spec: str, revision: str | None = None, progress: bool = True) -> Source:
    """A Hub id, a local folder, or a built-in model organism: `organism` (toxicity implanted in
    a few units) or `organism-plain` (toxicity learned in ordinary training)."""
    if spec in (ORGANISM, ORGANISM_PLAIN):
        from sgm_bake.organism.train import ORGANISMS, organism_path

        mode, source_id = ORGANISMS[spec]
        return Source(organism_path(progress, mode), source_id, None, False)
    return resolve_source(spec, revision)


@dataclass
class LoadedModel:
    """A model loaded for a step, with what it was loaded from and how."""

    model: Any
    source: Source
    recipe: Recipe
    device: torch.device
    dtype: torch.dtype

    @property
    def folder(self) -> Path:
        return self.source.path


def load(
    source: Source,
    device: str = "auto",
    dtype: str = "auto",
    recipe_file: Path | None = None,
) -> LoadedModel:
    """Load the model of `source` for a step that needs the whole model."""
    recipe = recipe_for_config(open_checkpoint(source.path).config, recipe_file)
    target = pick_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    logger.info("loading %s on %s in %s", source.id, target, torch_dtype)
    model = load_model(source.path, recipe, torch_dtype, target)
    return LoadedModel(model, source, recipe, target, torch_dtype)


def load_chat(
    source: Source,
    device: str = "auto",
    dtype: str = "auto",
    template: Path | None = None,
) -> tuple[Any, LoadedModel]:
    """(ChatModel, LoadedModel) for generation and evaluation."""
    from sgm_bake.runtime.chat import ChatModel

    loaded = load(source, device, dtype)
    processor = load_processor(source.path, template)
    return ChatModel(loaded.model, processor, loaded.device), loaded
