"""The steps the one-command form and the demo chain together: profile a source, bake, verify,
evaluate. Each is one function here so that `sgm-bake MODEL OUT`, `profile`, `bake` and `demo`
run the same code and the CLI only parses options and prints."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sgm_bake.core.expertise import Expertise
from sgm_bake.core.recipes import Recipe, recipe_for_config
from sgm_bake.core.rules import RuleOptions
from sgm_bake.datasets.profile_set import ProfileSet, load_profile_set
from sgm_bake.io.checkpoint import open_checkpoint
from sgm_bake.io.source import Source
from sgm_bake.pipeline.profile import ProfileOptions, run_profile
from sgm_bake.pipeline.record import read_record
from sgm_bake.pipeline.verify import VerifyReport, recorded_recipe, verify
from sgm_bake.pipeline.verify_layers import (
    LayerVerifyReport,
    streaming_unsupported,
    verify_layers,
)
from sgm_bake.runtime.distributed import Distributed
from sgm_bake.runtime.loading import LoadedModel, Placement, load, pick_device
from sgm_bake.runtime.memory import PeakMemory

logger = logging.getLogger(__name__)

Announce = Callable[[str], None]


@dataclass(frozen=True)
class ProfileRequest:
    """What to profile and how the model is loaded for it."""

    profile_set: str = "builtin:default"
    max_samples: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    recipe_file: Path | None = None
    hook_points: tuple[str, ...] | None = None
    neurons: bool = False
    options: ProfileOptions = field(default_factory=ProfileOptions)
    placement: Placement | None = None
    """Device map, memory budgets and offload folder (None: `device` alone)."""


@dataclass
class ProfileOutcome:
    """The expertise, and the model that was loaded to measure it (reusable for verification).

    Under torchrun only rank 0 has an expertise; the other ranks get None and stop there."""

    expertise: Expertise | None
    recipe: Recipe
    profile_set: ProfileSet
    loaded: LoadedModel
    memory: dict[str, Any] = field(default_factory=dict)
    """The stage's measured time and peak memory (loading included), for the bake record."""


def load_profile_inputs(request: ProfileRequest) -> ProfileSet:
    """Load and validate the profile set first, so bad data fails before any model loads."""
    return load_profile_set(request.profile_set).limited(request.max_samples)


def profile_source(
    source: Source,
    request: ProfileRequest,
    announce: Announce | None = None,
    distributed: Distributed | None = None,
) -> ProfileOutcome:
    """Load the source and measure the expertise of its units on the profile set.

    Under torchrun (`distributed`) each rank loads its own copy (on its own GPU unless a device
    map is asked for) and profiles its share of the set; rank 0 scores the merged responses."""
    profile_set = load_profile_inputs(request)
    recipe = recipe_for_config(open_checkpoint(source.path).config, request.recipe_file)
    hook_points = request.hook_points
    if request.neurons:
        hook_points = tuple(str(p) for p in recipe.neuron_hook_points)
    options = ProfileOptions(**{**request.options.__dict__, "hook_points": hook_points})
    toxic, benign = profile_set.counts()
    placement = request.placement or Placement(device=request.device)
    if distributed is not None:
        placement = placement.for_rank(distributed.local_rank, distributed.local_world_size)
    if announce is not None and (distributed is None or distributed.is_main):
        ranks = f" x {distributed.world_size} ranks" if distributed is not None else ""
        announce(
            f"profiling {source.id} on {profile_set.name} ({toxic} toxic, {benign} non-toxic) "
            f"on {placement.describe()}{ranks}"
        )
    with PeakMemory("profile") as memory:
        loaded = load(source, request.device, request.dtype, request.recipe_file, placement)
        expertise = run_profile(
            loaded.model,
            source.path,
            loaded.recipe,
            profile_set,
            options,
            source.id,
            source.revision,
            loaded.device,
            loaded.dtype,
            distributed,
        )
    return ProfileOutcome(expertise, loaded.recipe, profile_set, loaded, memory.record())


def verify_output(
    out: Path,
    source_path: Path,
    dtype_name: str,
    device: str,
    loaded: LoadedModel | None = None,
    mode: str = "layers",
    placement: Placement | None = None,
    progress: bool = False,
) -> VerifyReport | LayerVerifyReport:
    """Verify OUT against its source.

    `layers` (the default) checks each folded MLP block on its own, whatever the model size; a
    model already loaded for profiling supplies real hidden states and the exact tensor-map
    check. `full` compares the whole model's logits, loading it on `placement`; a loaded model
    is reused when it has the verification's dtype and device (its folded parameters are then
    overwritten)."""
    if mode == "layers":
        record = read_record(out)
        recipe = recorded_recipe(record, open_checkpoint(source_path).config)
        reason = streaming_unsupported(recipe)
        if reason is None:
            model = loaded.model if loaded is not None else None
            return verify_layers(out, source_path, model=model, progress=progress)
        logger.warning(
            "layer-by-layer verification does not cover %s yet; verifying the whole model", reason
        )
    dtype = getattr(torch, dtype_name)
    reuse: Any = None
    wanted = placement.main_device() if placement is not None else pick_device(device)
    if loaded is not None and loaded.dtype == dtype and loaded.device == wanted:
        reuse = loaded.model
    return verify(out, source_path, dtype, device, model=reuse, placement=placement)


def apply_rule_if_given(expertise: Expertise, rule: RuleOptions | None) -> Expertise:
    """Recompute the factors of an expertise file from its AUROC when rule options are given."""
    if rule is None:
        return expertise
    from sgm_bake.pipeline.profile import apply_rule

    return apply_rule(expertise, rule)
