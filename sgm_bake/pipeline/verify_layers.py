"""Layer-streamed verification: check a bake one MLP block at a time, at any model size.

The fold only changes MLP projections, so the part of the network whose function it changes is
each layer's MLP block (the deepest module holding all of the recipe's projections, e.g.
`model.language_model.layers.7.mlp`). For each folded layer we

1. take that block from a skeleton of the real transformers model built on the meta device from
   the config (no weights, so no memory), which gives the exact module class and its forward;
2. load only its tensors, in float32, from the source checkpoint through the recipe's module-name
   to checkpoint-key map, lazily from safetensors (one tensor read at a time);
3. run it on the same inputs without hooks (the intervention's size), with SGM hooks (the
   reference) and with its folded tensors swapped for the baked ones from OUT;
4. compare the output of every folded projection per unit and the block's output, then drop the
   block's tensors before the next layer.

Peak memory is one MLP block in float32 plus the inputs, whatever the model size.

Inputs. When a source model is already loaded (the one-command form has one after profiling),
the block inputs are captured from real prompts (a few token positions per prompt). Otherwise they
are seeded random hidden states at the scale real inputs have: the block's input is the output of
the layer's own normalisation (RMSNorm or LayerNorm), which maps every token vector to unit RMS
before its per-channel weight (and bias). Feeding standard normal vectors (RMS 1) through that
very norm module, with its checkpoint weights, reproduces the per-channel scale of real inputs
exactly; only their direction (outlier channels, correlations) is synthetic. Architectures whose
MLP reads the un-normalised residual stream (post-norm layers such as OLMo-2) get unit-RMS inputs.

Tolerance. Per unit, the largest difference between baked and reference output is divided by
that unit's largest unhooked output, so a unit scaled twice by alpha shows a relative error of
alpha(1 - alpha) (0.09 or more for alpha in [0.1, 0.9]) however small the unit is compared to the
others. The bound is the per-dtype rounding tolerance of `verify.py` (one rounding of each folded
weight: about 10 unit roundoffs for fp16/bf16, 1e-4 for fp32); all arithmetic here is float32.

The recipe map itself (module name -> checkpoint key) is checked exactly, against transformers'
own loading and its key conversions: each parameter transformers loads must equal the checkpoint
tensor the recipe maps it to. With a loaded model that is the model; without one, transformers
loads just two blocks (the first and last folded layers) with every other module left on disk
(offloaded safetensors stay in their files), so this costs two blocks in their stored dtype. If
transformers cannot load that way, every parameter must at least map to a present key of the
right shape, and `verify --full` checks the map exactly.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sgm_bake.core.expertise import (
    Expertise,
    ModuleExpertise,
    ResolvedUnits,
    language_units,
)
from sgm_bake.core.hooks import SGMHooks, runtime_prefix
from sgm_bake.core.recipes import Recipe, resolve_checkpoint_layout
from sgm_bake.errors import SGMError
from sgm_bake.io.checkpoint import Checkpoint, open_checkpoint
from sgm_bake.io.tensors import TensorSource
from sgm_bake.pipeline.verify import (
    TOLERANCE,
    build_inputs,
    read_baked_folder,
    record_verification,
)
from sgm_bake.record import BakeRecord, LayerCheck, Verification
from sgm_bake.runtime.batch import to_device
from sgm_bake.runtime.loading import OpenedSource, input_device
from sgm_bake.runtime.memory import PeakMemory

logger = logging.getLogger(__name__)

MLP_INPUT_NORMS = (
    "pre_feedforward_layernorm",
    "post_attention_layernorm",
    "ln_2",
    "input_layernorm",
)
"""Where the MLP's input normalisation sits in a decoder layer, most specific first (Gemma 2/3
have both a post-attention and a pre-feedforward norm; the latter feeds the MLP; Phi runs
attention and MLP in parallel from the input norm). A recipe may name it as `mlp_input_norm`."""
RANDOM_TOKENS = 16
"""Random tokens per layer. A wrong fold scales a unit's output wrongly on every token (by
alpha instead of alpha^2, say), so a handful of tokens exposes it; 16 guard against tokens where
a unit happens to be near zero, and keep the float32 matmuls cheap on a CPU (for a 7B layer,
16 tokens x 9 projection calls is about 13 GFLOP)."""
CAPTURED_TOKENS_PER_PROMPT = 32
SCALE_FLOOR = 1e-3
"""Units whose largest unhooked output is below this share of the module's largest are compared
against that floor instead (a dead unit has no scale of its own)."""


def block_path(names: list[str]) -> str:
    """The deepest module path that holds every projection (`mlp` for `mlp.gate_proj`...)."""
    parents = [name.split(".")[:-1] for name in names]
    common: list[str] = []
    for parts in zip(*parents, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common)


def mlp_block_names(recipe: Recipe) -> tuple[str, str]:
    runtime = block_path([p.name for p in recipe.projections])
    checkpoint = block_path([p.checkpoint_name for p in recipe.projections])
    if not runtime:
        raise SGMError(
            f"the MLP projections of recipe {recipe.model_type!r} share no parent module, so "
            "there is no block to verify layer by layer; use --verify full"
        )
    return runtime, checkpoint


def streaming_unsupported(recipe: Recipe) -> str | None:
    """Why this recipe's layers cannot be verified one block at a time (None: they can).

    Mixture-of-experts blocks need per-expert hooks and routed inputs, blocks that only some
    layers hold need per-layer presence, and projections sitting directly on the decoder layer
    (OPT's fc1/fc2) have no block to run on its own: these are verified on the whole model."""
    if recipe.experts is not None or any(p.stacked or p.per_expert for p in recipe.projections):
        return "mixture-of-experts layers"
    if any(not p.required for p in recipe.projections):
        return "MLP blocks that only some layers hold"
    if not block_path([p.name for p in recipe.projections]):
        return "MLP projections directly on the decoder layer"
    return None


def meta_skeleton(folder: Path, recipe: Recipe) -> Any:
    """The model's module tree with every parameter on the meta device (no memory).

    Buffers stay real (they are small: rotary frequencies, position ids) so that modules which
    keep non-persistent buffers still compute correctly once their parameters are loaded.
    """
    import transformers
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    auto = getattr(transformers, recipe.auto_class, None)
    if auto is None:
        raise SGMError(
            f"transformers {transformers.__version__} has no {recipe.auto_class}; upgrade it"
        )
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise SGMError(f"{folder}/config.json does not load with transformers ({exc})") from exc
    with init_empty_weights(include_buffers=False):
        model = auto.from_config(config)
    return model.eval()


def import_model_classes(folder: Path, recipe: Recipe) -> None:
    """Import the transformers modules of the model's class and of its sub-models' classes,
    building nothing (`meta_skeleton` builds under accelerate's `init_empty_weights`, which
    patches module construction for every thread, so it must not run beside other work): a
    head start for the layer check that is safe on a background thread. Best effort."""
    import transformers
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(folder)
    mappings = [(getattr(transformers, recipe.auto_class), config)]
    for name in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, name, None)
        if sub is not None:
            mappings.append((AutoModel, sub))
    for auto, sub_config in mappings:
        with contextlib.suppress(KeyError, AttributeError, ValueError):
            auto._model_mapping[type(sub_config)]  # resolving the class imports its module


def _checkpoint_relative(relative: str, leaf_map: Mapping[str, str]) -> str:
    """A parameter path inside the block, renamed to the checkpoint's projection names."""
    module, _, attribute = relative.rpartition(".")
    return f"{leaf_map.get(module, module)}.{attribute}" if module else relative


def _block_keys(module: nn.Module, prefix: str, leaf_map: Mapping[str, str]) -> dict[str, str]:
    """The recipe's map for one block: each parameter or persistent buffer (relative name) ->
    its checkpoint key."""
    return {
        relative: f"{prefix}.{_checkpoint_relative(relative, leaf_map)}"
        for relative in module.state_dict(keep_vars=True)
    }


def _load_module(
    module: nn.Module,
    source: TensorSource,
    prefix: str,
    runtime_prefix_name: str,
    leaf_map: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Assign every parameter and persistent buffer of `module` from the checkpoint in float32;
    return the map relative name -> checkpoint key used."""
    keys = _block_keys(module, prefix, leaf_map or {})
    state: dict[str, torch.Tensor] = {}
    for relative, tensor in module.state_dict(keep_vars=True).items():
        key = keys[relative]
        if key not in source:
            raise SGMError(
                f"checkpoint has no tensor {key!r} for {runtime_prefix_name}.{relative}; the "
                "recipe's map does not fit this checkpoint (check the recipe or use --verify full)"
            )
        if tuple(source.shape(key)) != tuple(tensor.shape):
            raise SGMError(
                f"checkpoint tensor {key!r} has shape {list(source.shape(key))} but "
                f"{runtime_prefix_name}.{relative} needs {list(tensor.shape)}: the recipe maps "
                "them wrongly; fix the recipe"
            )
        stored = source.read(key) if not tensor.is_floating_point() else None
        state[relative] = stored if stored is not None else source.read(key, torch.float32)
    module.load_state_dict(state, strict=True, assign=True)
    return keys


def _transformers_device_map(model: nn.Module, targets: list[str]) -> dict[str, str]:
    """A device map that keeps `targets` on the CPU and every other module on disk (offloaded
    safetensors weights stay in their files: nothing is copied or loaded for them)."""
    device_map: dict[str, str] = {}

    def walk(prefix: str, module: nn.Module) -> None:
        # Parameters held directly by an ancestor of a target (LLaVA-NeXT's image_newline,
        # mllama's cross-attention gates) need a place of their own.
        for name, _ in module.named_parameters(recurse=False):
            device_map[f"{prefix}.{name}" if prefix else name] = "disk"
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if path in targets:
                device_map[path] = "cpu"
            elif any(target.startswith(f"{path}.") for target in targets):
                walk(path, child)
            else:
                device_map[path] = "disk"

    walk("", model)
    return device_map


def check_map_with_transformers(
    folder: Path,
    recipe: Recipe,
    skeleton: nn.Module,
    blocks: list[str],
    expected: Mapping[str, str],
    source: TensorSource,
) -> bool:
    """Check the recipe's module-name -> checkpoint-key map against transformers' own loading
    (its key conversions included) without loading the model: only `blocks` are loaded, in their
    stored dtype, everything else stays on disk. Each loaded parameter must equal the checkpoint
    tensor the recipe maps it to. Returns False, with a warning, when transformers cannot load
    this way (the map is then checked by key and shape only)."""
    import transformers

    if not (folder / "config.json").is_file() or source.checkpoint.format != "safetensors":
        return False
    auto = getattr(transformers, recipe.auto_class)
    with tempfile.TemporaryDirectory(prefix="sgm-verify-offload-") as offload:
        try:
            with warnings.catch_warnings():  # parameter-level keys are fine, whatever it says
                warnings.filterwarnings("ignore", message="The following device_map keys")
                model = auto.from_pretrained(
                    folder,
                    dtype="auto",
                    device_map=_transformers_device_map(skeleton, blocks),
                    offload_folder=offload,
                )
        except Exception as exc:  # any loader failure only downgrades the check
            logger.warning(
                "transformers could not load single blocks of %s (%s: %s); the recipe map is "
                "checked by key and shape only (verify --full checks it exactly)",
                folder,
                type(exc).__name__,
                exc,
            )
            return False
        try:
            for name, key in expected.items():
                try:
                    loaded = model.get_parameter(name)
                except AttributeError:
                    loaded = model.get_buffer(name)
                if loaded.device.type == "meta":
                    logger.warning("transformers left %s offloaded; map checked by shape", name)
                    return False
                if not torch.equal(loaded.detach(), source.read(key, loaded.dtype)):
                    raise SGMError(
                        f"module {name} does not hold checkpoint tensor {key!r}: recipe "
                        f"{recipe.path.name} maps them wrongly; fix the recipe"
                    )
        finally:
            del model
    return True


class _Stopped(Exception):
    """The reader was closed while one of its jobs waited (the check failed or finished)."""


class Signal:
    """A one-shot event between the main thread and the layer reader. Waiting re-raises the
    reader's failure (on the main thread) or stops the job (on the reader, once closed), so
    neither side can hang on the other."""

    def __init__(self, reader: LayerReader) -> None:
        self._event = threading.Event()
        self._reader = reader

    def set(self) -> None:
        self._event.set()

    def wait(self) -> None:
        while not self._event.wait(0.05):
            self._reader.check()


class LayerReader:
    """Reads blocks' tensors, converted to float32, into buffers that are reused from layer to
    layer, on a thread of its own, in the order the forward passes need them.

    The checkpoint's bytes are converted while the main thread computes: a layer's baked tensors
    while its hooked pass runs, the next layer's source tensors while its baked pass runs, each
    into the buffer of the same parameter as soon as the pass before has used it. So the reads
    overlap the compute without a second set of buffers: memory stays one block in float32."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="sgm-layer-reader", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except _Stopped:
                return
            except BaseException as exc:  # handed to the main thread by check()
                self._error = exc
                return

    def check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closing:
            raise _Stopped()

    def buffer(self, relative: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The float32 buffer of parameter `relative` (a new one only when its shape changes)."""
        current = self.buffers.get(relative)
        if current is None or tuple(current.shape) != tuple(shape):
            current = torch.empty(shape, dtype=torch.float32)
            self.buffers[relative] = current
        return current

    def read(
        self, source: TensorSource, key: str, out: torch.Tensor, after: Signal | None
    ) -> Signal:
        """Queue: once `after` is set, convert `key` into `out`; the returned signal says done."""
        done = Signal(self)
        source.prefetch(key)

        def job() -> None:
            if after is not None:
                after.wait()
            source.read_into(key, out)
            done.set()

        self._jobs.put(job)
        return done

    def close(self) -> None:
        self._closing = True
        self._jobs.put(None)
        self._thread.join()


@dataclass
class _LayerPlan:
    """One layer's block as the reader fills it: the tensors bound to its parameters, the
    signals that they hold the source values, and those that each parameter's last use is over
    (after which the reader may overwrite its buffer with the next layer's source)."""

    state: dict[str, torch.Tensor]
    source_ready: dict[str, Signal]
    freed: dict[str, Signal]


def _release(module: nn.Module) -> None:
    """Put a block's parameters back on the meta device, freeing their memory."""
    module.to_empty(device="meta", recurse=True)


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    raise SGMError("the MLP block was called without a tensor input; use --verify full")


def capture_block_inputs(
    model: Any,
    recipe: Recipe,
    layers: list[int],
    batches: list[dict[str, torch.Tensor]],
    tokens_per_prompt: int = CAPTURED_TOKENS_PER_PROMPT,
    seed: int = 0,
) -> dict[int, torch.Tensor]:
    """Hidden states entering each layer's MLP block on real prompts, moved to the CPU in
    float32 (a few seeded token positions per prompt, so the buffer stays small)."""
    block, _ = mlp_block_names(recipe)
    template = runtime_prefix(model, recipe, recipe.layers(model.config.to_dict()))
    captured: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    generator = torch.Generator().manual_seed(seed)
    picks: list[torch.Tensor] = []

    def hook_for(layer: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = _first_tensor(args, kwargs).detach()
            flat = hidden.reshape(-1, hidden.shape[-1])
            captured[layer].append(flat[picks[-1].to(flat.device)].float().cpu())

        return hook

    handles = [
        model.get_submodule(f"{template.format(layer=layer)}.{block}").register_forward_pre_hook(
            hook_for(layer), with_kwargs=True
        )
        for layer in layers
    ]
    device = input_device(model)
    try:
        with torch.no_grad():
            for batch in batches:
                ids = batch["input_ids"]
                count = ids.numel()
                chosen = torch.randperm(count, generator=generator)[:tokens_per_prompt]
                picks.append(torch.sort(chosen).values)
                model(**to_device(batch, device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {layer: torch.cat(parts) for layer, parts in captured.items() if parts}


def random_block_inputs(
    layer_module: nn.Module,
    source: TensorSource,
    checkpoint_prefix: str,
    runtime_layer: str,
    width: int,
    norm_name: str | None,
    seed: int,
    tokens: int = RANDOM_TOKENS,
) -> tuple[torch.Tensor, str]:
    """Seeded standard-normal hidden states passed through the layer's own MLP-input norm
    (see the module docstring for why this is the scale of real inputs)."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, width, generator=generator)
    names = (norm_name,) if norm_name else MLP_INPUT_NORMS
    for name in names:
        try:
            norm = layer_module.get_submodule(name)
        except AttributeError:
            continue
        weight = getattr(norm, "weight", None)
        if weight is None or tuple(weight.shape) != (width,):
            continue
        _load_module(norm, source, f"{checkpoint_prefix}.{name}", f"{runtime_layer}.{name}")
        try:
            with torch.no_grad():
                scaled = norm(hidden).float()
        finally:
            _release(norm)
        return scaled, name
    return hidden, "unit-rms"


def _block_width(recipe: Recipe, block_module: nn.Module, block: str) -> int:
    """The block's input width: the input side of its first projection."""
    first = recipe.projections[0]
    relative = first.name[len(block) + 1 :]
    weight = getattr(block_module.get_submodule(relative), "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise SGMError(f"{relative} has no weight; recipe {recipe.path.name} is wrong")
    return int(weight.shape[1] if first.layout == "out_in" else weight.shape[0])


@contextmanager
def _capture_outputs(
    block_module: nn.Module, names: Mapping[str, str]
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the named submodules (relative name -> label); hooks registered
    after SGM's see the scaled outputs."""
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for relative, label in names.items():

        def hook(module: nn.Module, args: Any, output: torch.Tensor, label: str = label) -> None:
            outputs[label] = output.detach().float()

        handles.append(block_module.get_submodule(relative).register_forward_hook(hook))
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def _unit_rel_diff(result: torch.Tensor, reference: torch.Tensor, base: torch.Tensor) -> float:
    """Largest per-unit difference, relative to each unit's largest unhooked output."""
    width = result.shape[-1]
    diff = (result - reference).abs().reshape(-1, width).amax(0)
    scale = base.abs().reshape(-1, width).amax(0)
    floor = float(scale.max()) * SCALE_FLOOR or 1.0
    return float((diff / scale.clamp_min(floor)).max())


def _layer_expertise(expertise: Expertise, units: list[ResolvedUnits]) -> Expertise:
    """The part of `expertise` that one layer's units apply: their factors and deltas."""
    names = {u.source_name for u in units}
    return Expertise(
        {u.source_name: u.entry for u in units},
        {},
        {name: delta for name, delta in expertise.deltas.items() if name in names},
    )


def _check_against_model(
    model: nn.Module | None,
    runtime_layer_names: Mapping[str, str],
    source: TensorSource,
    keys: Mapping[str, str],
    recipe: Recipe,
) -> bool:
    """The exact map check: transformers' loaded parameter equals the mapped checkpoint tensor.
    Returns False when it could not run (no model, or the parameter is offloaded)."""
    if model is None:
        return False
    checked = False
    for relative, key in keys.items():
        try:
            parameter = model.get_parameter(runtime_layer_names[relative])
        except (AttributeError, KeyError):
            return False
        if parameter.device.type == "meta":
            return False
        original = source.read(key)
        if not torch.equal(parameter.detach().cpu(), original.to(parameter.dtype)):
            raise SGMError(
                f"module {runtime_layer_names[relative]} does not hold checkpoint tensor {key!r}: "
                f"recipe {recipe.path.name} maps them wrongly; fix the recipe"
            )
        checked = True
    return checked


@dataclass(frozen=True)
class ModelEvidence:
    """What the layer check takes from a loaded source model, gathered before that model is
    released (the one-command form frees its profiling model before the bake): the hidden states
    entering each folded block on real prompts, and whether every folded parameter the model
    loaded equals the checkpoint tensor the recipe maps it to."""

    inputs: str
    samples: int
    hidden: dict[int, torch.Tensor]
    exact_map: bool
    seconds: float = 0.0


def _units_by_layer(
    expertise: Expertise, recipe: Recipe, config: dict[str, Any], warn: bool = True
) -> dict[int, list[ResolvedUnits]]:
    units_by_layer: dict[int, list[ResolvedUnits]] = {}
    for units in language_units(expertise.scaling_only(), recipe, config, warn):
        units_by_layer.setdefault(units.layer, []).append(units)
    # A module that only an edit's delta changes is checked like a module with factors of 1
    # (the hook reference then adds the delta's write alone).
    for entry in expertise.resolve_deltas(recipe, recipe.all_layers(config)):
        present = units_by_layer.setdefault(entry.layer, [])
        if not any(u.projection.name == entry.projection.name for u in present):
            ones = torch.ones(entry.delta.out_features)
            module = ModuleExpertise(entry.source_name, "output", ones)
            present.append(
                ResolvedUnits(entry.layer, entry.projection, "output", module, entry.source_name)
            )
    return units_by_layer


def _leaf_map(recipe: Recipe) -> dict[str, str]:
    """Projection paths inside the block: runtime name -> checkpoint name."""
    block, checkpoint_block = mlp_block_names(recipe)
    return {
        p.name[len(block) + 1 :]: p.checkpoint_name[len(checkpoint_block) + 1 :]
        for p in recipe.projections
    }


def gather_evidence(
    model: Any,
    source_path: Path,
    recipe: Recipe,
    expertise: Expertise,
    checkpoint: Checkpoint | None = None,
) -> ModelEvidence:
    """Capture block inputs from real prompts and check the recipe map exactly against `model`
    (the source, loaded in any dtype on any device map), for the layers `expertise` folds
    (`checkpoint`: the source folder as already opened)."""
    started = time.perf_counter()
    source_checkpoint = checkpoint if checkpoint is not None else open_checkpoint(source_path)
    source = TensorSource(source_checkpoint)
    try:
        layout = resolve_checkpoint_layout(recipe, source_checkpoint.config, source.files)
        block, checkpoint_block = mlp_block_names(recipe)
        layers_range = recipe.layers(model.config.to_dict())
        template = runtime_prefix(model, recipe, layers_range)
        units_by_layer = _units_by_layer(expertise, recipe, model.config.to_dict(), warn=False)
        layers = sorted(units_by_layer)
        kind, batches = build_inputs(source_path, source_checkpoint.config)
        hidden = capture_block_inputs(model, recipe, layers, batches)
        leaf_map = _leaf_map(recipe)
        exact = True
        for layer in layers:
            runtime_block = f"{template.format(layer=layer)}.{block}"
            block_module = model.get_submodule(runtime_block)
            keys = _block_keys(
                block_module,
                f"{layout.prefix_template.format(layer=layer)}.{checkpoint_block}",
                leaf_map,
            )
            present = _bias_present(block_module, units_by_layer[layer], block)
            folded = _folded_relatives(units_by_layer[layer], block, present)
            names = {relative: f"{runtime_block}.{relative}" for relative in folded}
            exact = _check_against_model(model, names, source, {r: keys[r] for r in folded}, recipe)
            if not exact:
                break
    finally:
        source.close()
    return ModelEvidence(
        f"captured {kind}", len(batches), hidden, exact, time.perf_counter() - started
    )


def verify_layers(
    out: Path,
    source_path: Path,
    record: bool = True,
    model: nn.Module | None = None,
    progress: bool = False,
    evidence: ModelEvidence | None = None,
    opened: OpenedSource | None = None,
    bake_record: BakeRecord | None = None,
) -> Verification:
    """Verify the baked folder `out` against its source layer by layer; record the figures
    (and the stage's measured peak memory) in its bake record (`opened` and `bake_record`: the
    source and the record as the run that baked `out` holds them).

    `model` may be the source already loaded (any dtype, any device map), or `evidence` what was
    gathered from it before it was released: then the block inputs are real prompts' hidden
    states and the recipe map is checked exactly against the loaded model."""
    with PeakMemory("verify") as memory:
        report = _verify_layers(out, source_path, model, evidence, progress, opened, bake_record)
    if evidence is not None:
        memory.extra["captured_inputs_seconds"] = round(evidence.seconds, 3)
    if record:
        record_verification(out, report, memory, bake_record)
    return report


def _verify_layers(
    out: Path,
    source_path: Path,
    model: nn.Module | None,
    evidence: ModelEvidence | None,
    progress: bool,
    opened: OpenedSource | None = None,
    known_record: BakeRecord | None = None,
) -> Verification:
    bake_record, source_checkpoint, baked_checkpoint, recipe, expertise = read_baked_folder(
        out, source_path, opened, known_record
    )
    if evidence is None and model is not None:
        evidence = gather_evidence(model, source_path, recipe, expertise)
    source = TensorSource(source_checkpoint)
    baked = TensorSource(baked_checkpoint)
    try:
        return _check_layers(
            out, source_path, evidence, progress, bake_record, recipe, expertise, source, baked
        )
    finally:
        source.close()
        baked.close()


def _check_layers(
    out: Path,
    source_path: Path,
    evidence: ModelEvidence | None,
    progress: bool,
    bake_record: Any,
    recipe: Recipe,
    expertise: Expertise,
    source: TensorSource,
    baked: TensorSource,
) -> Verification:
    source_checkpoint, baked_checkpoint = source.checkpoint, baked.checkpoint
    source_layout = resolve_checkpoint_layout(recipe, source_checkpoint.config, source.files)
    baked_layout = resolve_checkpoint_layout(recipe, baked_checkpoint.config, baked.files)
    block, checkpoint_block = mlp_block_names(recipe)
    skeleton = meta_skeleton(source_path, recipe)
    layers_range = recipe.layers(skeleton.config.to_dict())
    template = runtime_prefix(skeleton, recipe, layers_range)
    units_by_layer = _units_by_layer(expertise, recipe, skeleton.config.to_dict())
    layers = sorted(units_by_layer)

    inputs_kind = "random"
    captured: dict[int, torch.Tensor] = {}
    samples = 0
    if evidence is not None:
        inputs_kind, captured, samples = evidence.inputs, evidence.hidden, evidence.samples
    dtypes = bake_record.format.folded_dtypes or ["F32"]
    tolerance = max(TOLERANCE.get(d, 1e-4) for d in dtypes)
    norm_name = recipe.definition.get("mlp_input_norm")
    leaf_map = _leaf_map(recipe)
    mapped_by_transformers = False
    if evidence is None:
        ends = sorted({layers[0], layers[-1]})
        expected = {
            f"{template.format(layer=layer)}.{block}.{relative}": key
            for layer in ends
            for relative, key in _block_keys(
                skeleton.get_submodule(f"{template.format(layer=layer)}.{block}"),
                f"{source_layout.prefix_template.format(layer=layer)}.{checkpoint_block}",
                leaf_map,
            ).items()
        }
        blocks = [f"{template.format(layer=layer)}.{block}" for layer in ends]
        mapped_by_transformers = check_map_with_transformers(
            source_path, recipe, skeleton, blocks, expected, source
        )

    checks: list[LayerCheck] = []
    swapped = 0
    exact_map = evidence is not None and evidence.exact_map
    positions = 0
    reader = LayerReader()

    def prefix_of(layout: Any, layer: int) -> str:
        return f"{layout.prefix_template.format(layer=layer)}.{checkpoint_block}"

    def block_of(layer: int) -> tuple[nn.Module, nn.Module, str]:
        runtime_layer = template.format(layer=layer)
        layer_module = skeleton.get_submodule(runtime_layer)
        return layer_module, layer_module.get_submodule(block), runtime_layer

    def plan_source(layer: int, previous: _LayerPlan | None) -> _LayerPlan:
        """Queue the reads of `layer`'s source tensors, each after the previous layer's last use
        of its buffer."""
        block_module = block_of(layer)[1]
        runtime_block = f"{template.format(layer=layer)}.{block}"
        keys = _block_keys(block_module, prefix_of(source_layout, layer), leaf_map)
        plan = _LayerPlan({}, {}, {})
        for relative, tensor in block_module.state_dict(keep_vars=True).items():
            key = _checked_key(source, keys[relative], runtime_block, relative, tensor.shape)
            if not tensor.is_floating_point():
                plan.state[relative] = source.read(key)
                continue
            buffer = reader.buffer(relative, tuple(tensor.shape))
            after = previous.freed.get(relative) if previous is not None else None
            if previous is not None and previous.state.get(relative) is not buffer:
                after = None  # a new buffer: nothing to wait for
            plan.state[relative] = buffer
            plan.source_ready[relative] = reader.read(source, key, buffer, after)
            plan.freed[relative] = Signal(reader)
        return plan

    try:
        following = plan_source(layers[0], None)
        for index, layer in enumerate(
            tqdm(layers, desc="verifying layers", disable=not progress, unit="layer")
        ):
            plan = following
            layer_module, block_module, runtime_layer = block_of(layer)
            runtime_block = f"{runtime_layer}.{block}"
            try:
                block_module.load_state_dict(plan.state, strict=True, assign=True)
                if layer in captured:
                    hidden = captured[layer]
                    kind = inputs_kind
                else:
                    width = _block_width(recipe, block_module, block)
                    hidden, kind = random_block_inputs(
                        layer_module,
                        source,
                        source_layout.prefix_template.format(layer=layer),
                        runtime_layer,
                        width,
                        norm_name,
                        seed=layer,
                    )
                    inputs_kind = f"random ({kind}-scaled)" if kind != "unit-rms" else "random"
                positions = hidden.shape[0]
                layer_units = units_by_layer[layer]
                present = _bias_present(block_module, layer_units, block)
                folded = _folded_relatives(layer_units, block, present)
                labels = {
                    u.projection.name[len(block) + 1 :]: u.projection.name for u in layer_units
                }
                layer_expertise = _layer_expertise(expertise, layer_units)
                # The baked tensors go into the same buffers once the hooked pass has used them.
                used = {relative: Signal(reader) for relative in folded}
                baked_ready = {}
                baked_prefix = prefix_of(baked_layout, layer)
                for relative in folded:
                    key = _baked_key(baked, baked_prefix, relative, leaf_map, block_module, out)
                    baked_ready[relative] = reader.read(
                        baked, key, plan.state[relative], used[relative]
                    )
                with torch.no_grad():
                    with _waiting(block_module, plan.source_ready, used):
                        base_out, base, reference_out, reference = _base_and_reference(
                            block_module, hidden, skeleton, layer_expertise, recipe, labels
                        )
                    if index + 1 < len(layers):
                        following = plan_source(layers[index + 1], plan)
                    swapped += len(folded)
                    with (
                        _waiting(block_module, baked_ready, plan.freed),
                        _capture_outputs(block_module, labels) as outputs,
                    ):
                        result_out = block_module(hidden).float()
                        result = dict(outputs)
            finally:
                _release(block_module)
            per_module = {
                label: _unit_rel_diff(result[label], reference[label], base[label])
                for label in base
            }
            effect = max(
                (_unit_rel_diff(reference[label], base[label], base[label]) for label in base),
                default=0.0,
            )
            scale = float(reference_out.abs().max()) or 1.0
            block_abs = float((result_out - reference_out).abs().max())
            block_diff = block_abs / scale
            per_module[block] = block_diff
            worst = max(per_module, key=lambda name: per_module[name])
            checks.append(
                LayerCheck(
                    layer=layer,
                    block=runtime_block,
                    max_rel_diff=per_module[worst],
                    worst_module=worst,
                    block_rel_diff=block_diff,
                    block_abs_diff=block_abs,
                    intervention_rel_effect=effect,
                    passed=per_module[worst] <= tolerance,
                )
            )
            del base_out
    finally:
        reader.close()
    if not checks:
        raise SGMError(f"{out} folds no layer; nothing to verify")
    worst_check = max(checks, key=lambda check: check.max_rel_diff)
    report = Verification(
        passed=all(check.passed for check in checks),
        mode="layers",
        inputs=inputs_kind,
        samples=samples,
        positions=positions,
        layers_checked=len(checks),
        max_abs_diff=max(check.block_abs_diff for check in checks),
        max_rel_diff=worst_check.max_rel_diff,
        worst_layer=worst_check.layer,
        worst_module=worst_check.worst_module,
        intervention_rel_effect=max(check.intervention_rel_effect for check in checks),
        tolerance=tolerance,
        compute_dtype="float32",
        tensors_swapped=swapped,
        mapping_check=(
            "exactly against the loaded model"
            if exact_map
            else "exactly against transformers' loading of two blocks"
            if mapped_by_transformers
            else "by key and shape"
        ),
        layers=checks,
    )
    return report


def _bias_present(block_module: nn.Module, units: list[ResolvedUnits], block: str) -> set[str]:
    present = set()
    for unit in units:
        relative = unit.projection.name[len(block) + 1 :]
        if getattr(block_module.get_submodule(relative), "bias", None) is not None:
            present.add(relative)
    return present


def _folded_relatives(units: list[ResolvedUnits], block: str, with_bias: set[str]) -> list[str]:
    """Parameter paths, relative to the block, that the bake rewrote for these units."""
    names: list[str] = []
    for unit in units:
        relative = unit.projection.name[len(block) + 1 :]
        for attribute in ("weight", "bias"):
            if attribute == "bias" and (unit.side != "output" or relative not in with_bias):
                continue
            name = f"{relative}.{attribute}"
            if name not in names:
                names.append(name)
    return names


def _checked_key(
    source: TensorSource, key: str, runtime_block: str, relative: str, shape: Any
) -> str:
    """`key`, after checking that the source holds it in the shape the block needs."""
    if key not in source:
        raise SGMError(
            f"checkpoint has no tensor {key!r} for {runtime_block}.{relative}; the recipe's map "
            "does not fit this checkpoint (check the recipe or use --verify full)"
        )
    if tuple(source.shape(key)) != tuple(shape):
        raise SGMError(
            f"checkpoint tensor {key!r} has shape {list(source.shape(key))} but "
            f"{runtime_block}.{relative} needs {list(shape)}: the recipe maps them wrongly; fix "
            "the recipe"
        )
    return key


def _baked_key(
    baked: TensorSource,
    baked_prefix: str,
    relative: str,
    leaf_map: Mapping[str, str],
    block_module: nn.Module,
    out: Path,
) -> str:
    """The key of a folded parameter in OUT, after checking it is there in the source's shape."""
    key = f"{baked_prefix}.{_checkpoint_relative(relative, leaf_map)}"
    if key not in baked:
        raise SGMError(f"{out} lacks tensor {key!r}; the output is incomplete, bake again")
    shape = tuple(block_module.get_parameter(relative).shape)
    if tuple(baked.shape(key)) != shape:
        raise SGMError(
            f"{out} tensor {key!r} has shape {list(baked.shape(key))}, the source "
            f"{list(shape)}; the output does not belong to this source"
        )
    return key


def _owner(relative: str) -> str:
    """The module path (inside the block) that holds parameter `relative` ('' is the block)."""
    return relative.rpartition(".")[0]


@contextmanager
def _waiting(
    block_module: nn.Module, ready: Mapping[str, Signal], done: Mapping[str, Signal]
) -> Iterator[None]:
    """For one forward pass: each module waits until the reader has put its parameters in place
    (`ready`), and says when it has used them (`done`). Signals of modules that did not run are
    set on exit, so the reader never waits for a use that does not come."""
    handles = []
    for owner in sorted({_owner(r) for r in ready} | {_owner(r) for r in done}):
        module = block_module.get_submodule(owner)
        waits = [signal for relative, signal in ready.items() if _owner(relative) == owner]
        sets = [signal for relative, signal in done.items() if _owner(relative) == owner]

        def wait(module: nn.Module, args: Any, waits: list[Signal] = waits) -> None:
            for signal in waits:
                signal.wait()

        def used(module: nn.Module, args: Any, output: Any, sets: list[Signal] = sets) -> None:
            for signal in sets:
                signal.set()

        handles.append(module.register_forward_pre_hook(wait, prepend=True))
        handles.append(module.register_forward_hook(used, prepend=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for signal in done.values():
            signal.set()


@contextmanager
def _first_rows_unhooked(
    modules: list[tuple[str, nn.Module, Any]], rows: int, edited: Sequence[nn.Module] = ()
) -> Iterator[None]:
    """Undo the SGM hooks of `modules` (and the edit's writes on the `edited` modules) on the
    first `rows` rows of each hooked tensor, so one pass over [x; x] gives the unhooked block on
    the first half and the hooked reference on the second (every row of an MLP block is
    computed on its own): the weights are read once for both."""
    handles = []
    output_side = {id(module) for _, module, units in modules if units.side == "output"}
    extra = [(None, module, None) for module in edited if id(module) not in output_side]
    for _, module, units in [*modules, *extra]:
        raw: dict[str, torch.Tensor] = {}
        if units is None or units.side == "output":

            def stash(module: nn.Module, args: Any, output: Any, raw: dict = raw) -> None:
                raw["value"] = output

            def restore(module: nn.Module, args: Any, output: Any, raw: dict = raw) -> Any:
                return torch.cat([raw.pop("value")[:rows], output[rows:]])

            handles.append(module.register_forward_hook(stash, prepend=True))
            handles.append(module.register_forward_hook(restore))
        else:

            def stash_input(module: nn.Module, args: Any, raw: dict = raw) -> None:
                raw["value"] = args[0]

            def restore_input(module: nn.Module, args: Any, raw: dict = raw) -> Any:
                return (torch.cat([raw.pop("value")[:rows], args[0][rows:]]), *args[1:])

            handles.append(module.register_forward_pre_hook(stash_input, prepend=True))
            handles.append(module.register_forward_pre_hook(restore_input))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _base_and_reference(
    block_module: nn.Module,
    hidden: torch.Tensor,
    skeleton: nn.Module,
    layer_expertise: Expertise,
    recipe: Recipe,
    labels: Mapping[str, str],
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
    """The block without hooks (the intervention's size) and with SGM hooks (the reference), in
    one pass: (base output, base module outputs, reference output, reference module outputs)."""
    rows = hidden.shape[0]
    with (
        SGMHooks(skeleton, layer_expertise, recipe) as hooks,
        _first_rows_unhooked(hooks.modules, rows, [module for _, module, _ in hooks.edited()]),
        _capture_outputs(block_module, labels) as outputs,
    ):
        both = block_module(torch.cat([hidden, hidden])).float()
        captured = dict(outputs)
    return (
        both[:rows],
        {label: value[:rows] for label, value in captured.items()},
        both[rows:],
        {label: value[rows:] for label, value in captured.items()},
    )
