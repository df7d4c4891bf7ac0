"""Loading models for the steps that run one: device, dtype, model, processor.

Profiling, generation, evaluation, tuning and whole-model verification all load through here, so
a model is always loaded the same way: with the recipe's transformers Auto class, straight into
the requested dtype, on the requested devices.

Placement is accelerate's big-model loading through transformers' `device_map`: a single device
(`cpu`, `cuda:1`, `mps`) or a strategy (`auto`, `balanced`, `balanced_low_0`, `sequential`) that
spreads the layers over the GPUs, then the CPU, then disk (`--offload-folder`) within the
`--max-memory` budgets. Weights are read from the checkpoint straight into the target dtype on
their target device: there is no float32 copy of the model on the CPU first. On a GPU machine
the default is `device_map="auto"` in bfloat16, so a model larger than one GPU simply spans
several.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from sgm_bake.core.recipes import Recipe, recipe_for_config
from sgm_bake.errors import SGMError
from sgm_bake.io.checkpoint import Checkpoint, open_checkpoint
from sgm_bake.io.source import Source, resolve_source

logger = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
ORGANISM = "organism"
ORGANISM_PLAIN = "organism-plain"
ORGANISM_STAGED = "organism-staged"
BUILTIN_MODELS = (ORGANISM, ORGANISM_PLAIN, ORGANISM_STAGED)


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


def same_device(first: torch.device | str, second: torch.device | str) -> bool:
    """Whether two devices are one: `cuda` means the current GPU, so it equals `cuda:0` on a
    machine whose current GPU is 0 (what `pick_device("auto")` gives and what a loaded model's
    parameters report differ in exactly this way)."""
    return _with_index(torch.device(first)) == _with_index(torch.device(second))


def _with_index(device: torch.device) -> torch.device:
    if device.type == "cpu":
        return torch.device("cpu")
    if device.index is not None:
        return device
    on_gpu = device.type == "cuda" and torch.cuda.is_available()
    return torch.device(device.type, torch.cuda.current_device() if on_gpu else 0)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is float32 on the CPU (exact, and bf16 matmuls are slow there), bfloat16 on a GPU."""
    if name not in DTYPES:
        raise SGMError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    if name != "auto":
        dtype: torch.dtype = getattr(torch, name)
        return dtype
    return torch.float32 if device.type == "cpu" else torch.bfloat16


@dataclass(frozen=True)
class Placement:
    """Where a whole model goes: one device, or an accelerate device map over several."""

    device: str = "auto"
    """--device: auto, cpu, cuda, cuda:N, mps (used when no device map is asked for)."""
    device_map: str | None = None
    """--device-map: a strategy (auto, balanced, balanced_low_0, sequential) or one device."""
    max_memory: dict[int | str, int] = field(default_factory=dict)
    """--max-memory budgets in bytes, keyed by GPU index or 'cpu' (accelerate's form)."""
    offload_folder: Path | None = None
    """--offload-folder: where layers that fit no budget are kept (disk offload)."""

    def device_map_argument(self) -> str:
        """The `device_map` handed to transformers."""
        if self.device_map is not None:
            if self.device_map in DEVICE_MAP_STRATEGIES:
                return self.device_map
            return str(pick_device(self.device_map))
        if self.max_memory or self.offload_folder is not None:
            return "auto"
        target = pick_device(self.device)
        if self.device == "auto" and target.type == "cuda":
            return "auto"  # a GPU machine: spread over every GPU, the CPU only if needed
        return str(target)

    def main_device(self) -> torch.device:
        """The device that decides the default dtype and receives the inputs (the first GPU of a
        device map over GPUs)."""
        argument = self.device_map_argument()
        if argument in DEVICE_MAP_STRATEGIES:
            gpus = [key for key in self.max_memory if isinstance(key, int)]
            if torch.cuda.is_available() and (gpus or not self.max_memory):
                return torch.device("cuda", min(gpus) if gpus else 0)
            return torch.device("cpu")
        return torch.device(argument)

    def for_rank(self, local_rank: int, local_world_size: int) -> Placement:
        """This placement for one of several torchrun ranks on a machine, each with its own
        GPUs: `--max-memory` GPU indices count from the rank's first GPU (rank r of a map over
        k GPUs uses GPUs r*k .. r*k+k-1); without budgets each rank gets an equal share of the
        machine's GPUs (one each when there are as many ranks as GPUs)."""
        if not torch.cuda.is_available() or self.device_map in ("cpu",) or self.device == "cpu":
            return self
        gpus = sorted(key for key in self.max_memory if isinstance(key, int))
        if gpus:
            offset = local_rank * (max(gpus) + 1)
            budgets: dict[int | str, int] = {
                (key + offset if isinstance(key, int) else key): value
                for key, value in self.max_memory.items()
            }
            return replace(self, device_map=self.device_map or "auto", max_memory=budgets)
        if self.device_map is None or self.device_map in DEVICE_MAP_STRATEGIES:
            share = max(1, torch.cuda.device_count() // max(1, local_world_size))
            first = local_rank * share
            if share == 1:
                return replace(self, device=f"cuda:{first}", device_map=None)
            budgets = {
                index: torch.cuda.get_device_properties(index).total_memory
                for index in range(first, first + share)
            }
            return replace(self, device_map=self.device_map or "auto", max_memory=budgets)
        return self

    def describe(self) -> str:
        argument = self.device_map_argument()
        if argument not in DEVICE_MAP_STRATEGIES:
            return argument
        budget = ",".join(f"{key}={value}" for key, value in self.max_memory.items())
        return f"device_map={argument}" + (f" (max memory {budget})" if budget else "")


CPU = Placement(device="cpu")
"""The whole model on the CPU: the demo's, the tests' and whole-model verification's default."""


def input_device(model: Any) -> torch.device:
    """Where a model's inputs go: the device its input embeddings run on (accelerate's hooks
    move activations between the devices of a map; an offloaded embedding runs on its hook's
    execution device)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None:
        hook = getattr(embeddings, "_hf_hook", None)
        execution = getattr(hook, "execution_device", None)
        if execution is not None:
            return torch.device(execution)
        weight = getattr(embeddings, "weight", None)
        if weight is not None and weight.device.type != "meta":
            return weight.device
    for parameter in model.parameters():
        if parameter.device.type != "meta":
            return parameter.device
    return torch.device("cpu")


def load_model(folder: Path, recipe: Recipe, dtype: torch.dtype, placement: Placement) -> Any:
    """Load a checkpoint with the recipe's Auto class, in `dtype`, placed on `placement` (one
    device, or an accelerate device map), in eval mode."""
    import transformers

    auto = getattr(transformers, recipe.auto_class, None)
    if auto is None:
        raise SGMError(
            f"transformers {transformers.__version__} has no {recipe.auto_class}; upgrade it"
        )
    extra: dict[str, Any] = {"device_map": placement.device_map_argument()}
    if placement.max_memory:
        extra["max_memory"] = dict(placement.max_memory)
    if placement.offload_folder is not None:
        placement.offload_folder.mkdir(parents=True, exist_ok=True)
        extra["offload_folder"] = str(placement.offload_folder)
    try:
        model = auto.from_pretrained(folder, dtype=dtype, **extra)
    except (OSError, ValueError) as exc:
        raise SGMError(
            f"transformers cannot load the model in {folder} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); check the checkpoint, or give "
            "--max-memory budgets and an --offload-folder that hold it"
        ) from exc
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        logger.info("device map: %s", device_map)
    return model.eval()


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
    a few units), `organism-plain` (toxicity learned in ordinary training) or `organism-staged`
    (pretraining, instruction tuning, then jailbreak fine-tuning). Every command that takes a
    model or a source resolves it here, so every one of them takes the same names (a local
    folder of that name is `./organism`)."""
    if spec in BUILTIN_MODELS:
        from sgm_bake.organism.train import ORGANISMS, organism_path

        mode, source_id = ORGANISMS[spec]
        return Source(organism_path(progress, mode), source_id, None, False)
    return resolve_source(spec, revision)


@dataclass(frozen=True)
class OpenedSource:
    """A model source read once for a whole run: where it came from, its checkpoint folder
    (config, weight files, safetensors headers) and the recipe that maps it. Each stage of the
    one-command form takes it instead of opening the folder and resolving the recipe again."""

    source: Source
    checkpoint: Checkpoint
    recipe: Recipe

    @property
    def path(self) -> Path:
        return self.source.path


def open_source(source: Source, recipe_file: Path | None = None) -> OpenedSource:
    """Open the checkpoint folder of `source` and resolve its recipe (`recipe_file` wins)."""
    checkpoint = open_checkpoint(source.path)
    return OpenedSource(source, checkpoint, recipe_for_config(checkpoint.config, recipe_file))


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
    placement: Placement | None = None,
    dtype: str = "auto",
    recipe_file: Path | None = None,
    recipe: Recipe | None = None,
) -> LoadedModel:
    """Load the model of `source` for a step that needs the whole model, on `placement` (None:
    the default Placement, `--device auto`); `recipe`, when the caller has resolved it already,
    spares opening the checkpoint again."""
    if recipe is None:
        recipe = recipe_for_config(open_checkpoint(source.path).config, recipe_file)
    placement = placement or Placement()
    torch_dtype = resolve_dtype(dtype, placement.main_device())
    logger.info("loading %s on %s in %s", source.id, placement.describe(), torch_dtype)
    model = load_model(source.path, recipe, torch_dtype, placement)
    return LoadedModel(model, source, recipe, input_device(model), torch_dtype)


def load_chat(
    source: Source,
    placement: Placement | None = None,
    dtype: str = "auto",
    template: Path | None = None,
) -> tuple[Any, LoadedModel]:
    """(ChatModel, LoadedModel) for generation and evaluation, on `placement` (as `load`)."""
    from sgm_bake.runtime.chat import ChatModel

    loaded = load(source, placement, dtype)
    processor = load_processor(source.path, template)
    return ChatModel(loaded.model, processor, loaded.device), loaded
