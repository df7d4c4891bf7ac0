"""Bake: write a checkpoint whose MLP weights carry the suppression factors.

The output has the source's file set, tensor names, dtypes, shapes, safetensors metadata and
sharding; only the targeted projection weights (and their biases, for output units) differ.
Shards are streamed one tensor block at a time, so memory stays at a few blocks for any model
size. Everything is written into a temporary folder and renamed into place at the end.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sgm_bake.core.edit import LowRankDelta
from sgm_bake.core.expertise import (
    Expertise,
    ModuleExpertise,
    ResolvedDelta,
    ResolvedUnits,
    language_units,
    save_expertise,
)
from sgm_bake.core.fold import TensorFold, unit_axis
from sgm_bake.core.recipes import (
    CheckpointLayout,
    CheckpointTensor,
    Recipe,
    recipe_for_config,
    resolve_checkpoint_layout,
    with_expert_layout,
)
from sgm_bake.errors import SGMError
from sgm_bake.io import interrupts
from sgm_bake.io.atomic import atomic_folder, check_target
from sgm_bake.io.checkpoint import (
    BIN_INDEX,
    SAFE_INDEX,
    Checkpoint,
    bin_to_safetensors_name,
    load_bin,
    open_checkpoint,
)
from sgm_bake.io.safetensors import (
    FOLDABLE,
    TORCH_TO_TAG,
    rewrite_file,
    write_tensors,
)
from sgm_bake.io.source import Source
from sgm_bake.publish.card import source_card_metadata, write_card, write_plots
from sgm_bake.record import (
    SGM_DIR,
    BakeRecord,
    ExpertiseInfo,
    FormatInfo,
    ModuleCount,
    RecipeInfo,
    SourceInfo,
    ToolInfo,
    write_record,
)
from sgm_bake.record.summary import count_module
from sgm_bake.runtime.loading import OpenedSource
from sgm_bake.runtime.memory import PeakMemory

logger = logging.getLogger(__name__)

# Named so that no weight glob (`*.safetensors`, as vLLM and TGI download) fetches it with the
# weights; still a safetensors-format file. Outputs of earlier versions used the legacy name.
EXPERTISE_FILE = "expertise.sgm"
LEGACY_EXPERTISE_FILE = "expertise.safetensors"
SKIPPED_DIRS = {".git", ".cache", ".huggingface", SGM_DIR}
SHARD_WORKERS = 2


@dataclass(frozen=True)
class BakeOptions:
    """Knobs of a bake."""

    overwrite: bool = False
    recipe_file: Path | None = None
    progress: bool = True
    command: str | None = None
    base_model: str | None = None
    expert_layout: str | None = None
    """How the checkpoint stores square stacked expert matrices (`--expert-layout`)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The effective value of every option of the command, and where each came from when not
    from the command line or the default (recorded as `settings` in the record)."""
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Measured figures of stages that ran before the bake (the one-command form's profile)."""


@dataclass(frozen=True)
class TensorEdit:
    """One checkpoint tensor to fold: its key, shape and stored dtype, and the fold itself."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    fold: TensorFold

    def fold_block(self, block: torch.Tensor, first_row: int) -> torch.Tensor:
        """The streaming writer's entry point: `TensorFold.fold_block` (compute precision; the
        writer rounds it once to the stored dtype)."""
        return self.fold.fold_block(block, first_row)


@dataclass(frozen=True)
class BakePlan:
    """Everything decided before a byte is written."""

    checkpoint: Checkpoint
    recipe: Recipe
    layout: CheckpointLayout
    units: list[ResolvedUnits]
    edits: dict[str, TensorEdit]
    key_files: dict[str, str]
    deltas: list[ResolvedDelta] = field(default_factory=list)
    """The edit's low-rank deltas (expertise/2 and /3), each added to its tensor's fold."""


def tensor_shapes(checkpoint: Checkpoint) -> dict[str, tuple[tuple[int, ...], str]]:
    """(shape, dtype tag) of every tensor of a checkpoint (from the headers when safetensors)."""
    if checkpoint.format == "safetensors":
        return {
            key: (info.shape, info.dtype)
            for header in checkpoint.headers.values()
            for key, info in header.tensors.items()
        }
    shapes = {}
    for name in checkpoint.weight_files:
        for key, tensor in load_bin(checkpoint.root / name).items():
            shapes[key] = (tuple(tensor.shape), TORCH_TO_TAG.get(tensor.dtype, str(tensor.dtype)))
    return shapes


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shaped the output."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "safetensors", "huggingface-hub", "numpy"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def covered_layers(
    recipe: Recipe,
    config: dict[str, Any],
    units: list[ResolvedUnits],
    deltas: list[ResolvedDelta] | None = None,
) -> range:
    """The language layers a bake touches: the post-fusion ones, widened down to the earliest
    layer an explicit expertise file names (`language_units` warns about those) or an edit's
    delta writes into."""
    post_fusion = recipe.layers(config)
    named = [unit.layer for unit in units] + [delta.layer for delta in deltas or []]
    early = min(named, default=post_fusion.start)
    return range(min(early, post_fusion.start), post_fusion.stop)


def _unit_factors(
    unit: ResolvedUnits, tensor: CheckpointTensor, shape: tuple[int, ...]
) -> tuple[int, torch.Tensor]:
    """(matrix axis, factors) that apply `unit` to one checkpoint tensor holding its weight."""
    alpha = unit.entry.alpha
    projection = unit.projection
    if not projection.stacked:
        axis = unit_axis(tensor.layout, unit.side)
        if len(shape) != 2 or alpha.numel() != shape[axis]:
            raise SGMError(
                f"expertise for {unit.source_name!r} has {alpha.numel()} {unit.side} units but "
                f"the checkpoint tensor {tensor.key!r} has shape {list(shape)}; the expertise "
                "was made for another model"
            )
        return axis, alpha
    if tensor.stacked:
        axis = unit_axis(tensor.layout, unit.side)
        if len(shape) != 3 or tuple(alpha.shape) != (shape[0], shape[1 + axis]):
            raise SGMError(
                f"expertise for {unit.source_name!r} has shape {list(alpha.shape)}, which does "
                f"not fit the stacked checkpoint tensor {tensor.key!r} of shape {list(shape)} "
                f"({unit.side} side); the expertise was made for another model"
            )
        return axis, alpha
    if tensor.expert is None or len(shape) != 2:
        raise SGMError(f"checkpoint tensor {tensor.key!r} of shape {list(shape)} is not 2-D")
    if unit.side == "output":
        axis, expected = 0, len(projection.per_expert) * shape[0]
        factors = alpha[tensor.expert, tensor.offset : tensor.offset + shape[0]]
    else:
        axis, expected = 1, shape[1]
        factors = alpha[tensor.expert]
    if tensor.expert >= alpha.shape[0] or alpha.shape[1] != expected:
        raise SGMError(
            f"expertise for {unit.source_name!r} has shape {list(alpha.shape)}, which does not "
            f"fit the per-expert checkpoint tensor {tensor.key!r} (shape {list(shape)}, "
            f"{unit.side} side); the expertise was made for another model"
        )
    return axis, factors


def plan_bake(
    checkpoint: Checkpoint,
    expertise: Expertise,
    recipe_file: Path | None = None,
    recipe: Recipe | None = None,
    compute: torch.dtype = torch.float32,
) -> BakePlan:
    """Map every expertise entry to checkpoint tensors and check that the factors fit them."""
    recipe = recipe or recipe_for_config(checkpoint.config, recipe_file)
    key_files = checkpoint.tensor_keys()
    shapes = tensor_shapes(checkpoint)
    units = language_units(expertise.scaling_only(), recipe, checkpoint.config)
    deltas = expertise.resolve_deltas(recipe, recipe.all_layers(checkpoint.config))
    layers = covered_layers(recipe, checkpoint.config, units, deltas)
    layout = resolve_checkpoint_layout(
        recipe, checkpoint.config, key_files, {k: s for k, (s, _) in shapes.items()}, layers
    )
    edits: dict[str, TensorEdit] = {}

    def edit(key: str) -> TensorEdit:
        if key not in edits:
            shape, dtype = shapes[key]
            if dtype not in FOLDABLE:
                raise SGMError(
                    f"checkpoint tensor {key!r} is stored as {dtype}; only "
                    f"{', '.join(sorted(FOLDABLE))} weights can be folded (bake the "
                    "unquantized model)"
                )
            edits[key] = TensorEdit(key, shape, dtype, TensorFold(shape, compute=compute))
        return edits[key]

    for unit in units:
        if not layout.has(unit.layer, unit.projection):
            raise SGMError(
                f"expertise names {unit.source_name!r} but layer {unit.layer} of this checkpoint "
                f"holds no {unit.projection.name} (a dense layer beside MoE layers, or the "
                "reverse); the expertise was made for another model"
            )
        for tensor in layout.tensors(unit.layer, unit.projection):
            axis, factors = _unit_factors(unit, tensor, shapes[tensor.key][0])
            edit(tensor.key).fold.scale_axis(axis, factors)
        bias_key = layout.bias_key(unit.layer, unit.projection)
        if unit.side == "output" and not unit.projection.stacked and bias_key in shapes:
            edit(bias_key).fold.scale_axis(0, unit.entry.alpha)
    for entry in deltas:
        # the edit's term is added after the factors of the same tensor (`TensorFold`)
        tensors = (
            layout.tensors(entry.layer, entry.projection)
            if layout.has(entry.layer, entry.projection)
            else []
        )
        if len(tensors) != 1:
            raise SGMError(
                f"expertise has a delta on {entry.source_name!r} but layer {entry.layer} of this "
                f"checkpoint holds {len(tensors)} tensors for {entry.projection.name}, not one "
                "dense matrix; the edit was made for another model"
            )
        (tensor,) = tensors
        stored = entry.delta.stored_shape(tensor.layout)
        if stored != tuple(shapes[tensor.key][0]):
            raise SGMError(
                f"the delta of {entry.source_name!r} is {list(stored)} in storage order but the "
                f"checkpoint tensor {tensor.key!r} has shape {list(shapes[tensor.key][0])}; the "
                "edit was made for another model"
            )
        edit(tensor.key).fold.add_low_rank(*entry.delta.stored(tensor.layout))
    return BakePlan(checkpoint, recipe, layout, units, edits, key_files, deltas)


def canonical_expertise(plan: BakePlan, expertise: Expertise) -> Expertise:
    """The expertise renamed to the recipe's current runtime module names."""
    modules = {}
    for unit in plan.units:
        name = plan.recipe.runtime_name(unit.layer, unit.projection)
        entry = unit.entry
        modules[name] = ModuleExpertise(name, unit.side, entry.alpha, entry.auroc)
    deltas = {}
    for resolved in plan.deltas:
        name = plan.recipe.runtime_name(resolved.layer, resolved.projection)
        deltas[name] = LowRankDelta(name, resolved.delta.u, resolved.delta.v)
    return Expertise(modules, dict(expertise.metadata), deltas)


def copy_other_files(
    checkpoint: Checkpoint, staging: Path, skip: frozenset[str] = frozenset()
) -> list[str]:
    """Copy every non-weight file verbatim; return the weight files that were left out.

    A symlink resolving outside the source folder is refused, never followed into the output.
    """
    dropped = []
    for path in sorted(checkpoint.root.rglob("*")):
        relative = path.relative_to(checkpoint.root)
        if (
            any(part in SKIPPED_DIRS for part in relative.parts[:-1])
            or relative.parts[0] in SKIPPED_DIRS
        ):
            continue
        if not checkpoint.contains(path):
            raise SGMError(
                f"{path} links to {os.path.realpath(path)}, outside the source folder; copy "
                "the file into the folder (sgm-bake never copies content from outside SOURCE)"
            )
        if not path.is_file():
            continue
        name = relative.as_posix()
        if name in (SAFE_INDEX, BIN_INDEX) or name in skip:
            continue
        if checkpoint.is_weight_file(name):
            if name not in checkpoint.weight_files:
                dropped.append(name)
            continue
        target = staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return dropped


def write_weights(plan: BakePlan, staging: Path, progress: bool) -> dict[str, str]:
    """Write the weight files (and index); return the sha256 of each weight file written."""
    checkpoint = plan.checkpoint
    per_file: dict[str, dict[str, Callable[[torch.Tensor, int], torch.Tensor]]] = {}
    for key, edit in plan.edits.items():
        per_file.setdefault(plan.key_files[key], {})[key] = edit.fold_block
    total = sum((checkpoint.root / name).stat().st_size for name in checkpoint.weight_files)
    with tqdm(
        total=total, unit="B", unit_scale=True, desc="baking", disable=not progress, file=sys.stderr
    ) as bar:
        if checkpoint.format == "safetensors":
            # Two shards at a time: while one waits on the disk the other folds and hashes.
            lock = threading.Lock()

            def advance(count: int) -> None:
                with lock:
                    bar.update(count)

            def rewrite(item: tuple[str, Any]) -> tuple[str, str]:
                name, header = item
                (staging / name).parent.mkdir(parents=True, exist_ok=True)  # shards in subfolders
                return name, rewrite_file(header, staging / name, per_file.get(name, {}), advance)

            workers = max(1, min(SHARD_WORKERS, len(checkpoint.headers)))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                try:
                    hashes = dict(pool.map(rewrite, checkpoint.headers.items()))
                except BaseException:  # Ctrl-C/SIGTERM: workers stop at their next block
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
            if checkpoint.index_file:
                shutil.copyfile(checkpoint.root / checkpoint.index_file, staging / SAFE_INDEX)
            return hashes
        hashes = {}
        renamed = {}
        total_size = 0
        for name in checkpoint.weight_files:
            interrupts.check()
            state = load_bin(checkpoint.root / name)
            folds = per_file.get(name, {})
            tensors = []
            for key, tensor in state.items():
                if key in folds:
                    tensor = plan.edits[key].fold.fold(tensor)
                tensors.append((key, tensor))
                total_size += tensor.numel() * tensor.element_size()
            renamed[name] = bin_to_safetensors_name(name)
            (staging / renamed[name]).parent.mkdir(parents=True, exist_ok=True)
            hashes[renamed[name]] = write_tensors(
                staging / renamed[name], tensors, {"format": "pt"}
            )
            bar.update((checkpoint.root / name).stat().st_size)
        if checkpoint.index_file:
            index = json.loads((checkpoint.root / checkpoint.index_file).read_text())
            index["weight_map"] = {k: renamed[v] for k, v in index["weight_map"].items()}
            index.setdefault("metadata", {})["total_size"] = total_size
            (staging / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return hashes


def module_counts(units: list[ResolvedUnits], recipe: Recipe) -> dict[str, ModuleCount]:
    """Per-module record of how many units the factors touch."""
    return {
        recipe.runtime_name(unit.layer, unit.projection): count_module(
            unit.layer, unit.side, unit.entry.alpha
        )
        for unit in units
    }


def expertise_path(folder: Path) -> Path:
    """The expertise file of a baked folder (the current name, else the legacy one)."""
    path = folder / SGM_DIR / EXPERTISE_FILE
    legacy = folder / SGM_DIR / LEGACY_EXPERTISE_FILE
    return legacy if not path.is_file() and legacy.is_file() else path


def bake(
    source: Source,
    out: Path,
    expertise: Expertise,
    options: BakeOptions,
    opened: OpenedSource | None = None,
) -> BakeRecord:
    """Bake `expertise` into the checkpoint at `source`, writing `out` atomically (`opened`: the
    source's checkpoint and recipe as a run already read them)."""
    from sgm_bake import __version__

    check_target(out, source.path, options.overwrite)
    if opened is not None:
        checkpoint, recipe = opened.checkpoint, opened.recipe
    else:
        checkpoint = open_checkpoint(source.path)
        recipe = recipe_for_config(checkpoint.config, options.recipe_file)
    if options.expert_layout is not None:
        recipe = with_expert_layout(recipe, options.expert_layout)
    plan = plan_bake(checkpoint, expertise, recipe=recipe)
    if not plan.deltas and all(bool((unit.entry.alpha == 1).all()) for unit in plan.units):
        logger.warning(
            "every factor is 1: this bake changes no weight (no unit passed the rule's "
            "threshold and top-k); check the expertise file and the rule's knobs"
        )
    logger.info(
        "recipe %s, layout %s, %d tensors to fold",
        plan.recipe.model_type,
        plan.layout.prefix_template,
        len(plan.edits),
    )
    with atomic_folder(out, options.overwrite) as staging:
        with PeakMemory("bake") as memory:
            dropped = copy_other_files(checkpoint, staging)
            for name in dropped:
                logger.warning("left out %s: weights in another format would ship unbaked", name)
            weight_hashes = write_weights(plan, staging, options.progress)
            (staging / SGM_DIR).mkdir()
            expertise_path = staging / SGM_DIR / EXPERTISE_FILE
            save_expertise(canonical_expertise(plan, expertise), expertise_path)
        record = BakeRecord(
            tool=ToolInfo("sgm-bake", __version__),
            versions=library_versions(),
            source=SourceInfo.of(source),
            command=options.command,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            recipe=RecipeInfo(
                model_type=plan.recipe.model_type,
                file=plan.recipe.path.name,
                checkpoint_layout=plan.layout.prefix_template,
                layers=[plan.layout.layers.start, plan.layout.layers.stop],
                definition=plan.recipe.definition,
            ),
            format=FormatInfo(
                source=checkpoint.format,
                weight_files=list(checkpoint.weight_files),
                folded_dtypes=sorted({edit.dtype for edit in plan.edits.values()}),
            ),
            expertise=ExpertiseInfo(
                metadata=dict(expertise.metadata),
                modules=module_counts(plan.units, plan.recipe),
                tensors_folded=sorted(plan.edits),
            ),
            dropped_files=dropped,
            source_card=source_card_metadata(source.path),
            base_model=options.base_model,
            settings=dict(options.settings),
            stages={**options.stages, "bake": memory.record()},
        )
        write_plots(staging, record, expertise)
        write_card(staging, record)
        write_record(staging, record, weight_hashes)
    return record
