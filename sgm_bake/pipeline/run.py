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
from sgm_bake.pipeline.verify import VerifyReport, verify
from sgm_bake.runtime.loading import LoadedModel, load, pick_device

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


@dataclass
class ProfileOutcome:
    """The expertise, and the model that was loaded to measure it (reusable for verification)."""

    expertise: Expertise
    recipe: Recipe
    profile_set: ProfileSet
    loaded: LoadedModel


def load_profile_inputs(request: ProfileRequest) -> ProfileSet:
    """Load and validate the profile set first, so bad data fails before any model loads."""
    return load_profile_set(request.profile_set).limited(request.max_samples)


def profile_source(
    source: Source, request: ProfileRequest, announce: Announce | None = None
) -> ProfileOutcome:
    """Load the source and measure the expertise of its units on the profile set."""
    profile_set = load_profile_inputs(request)
    recipe = recipe_for_config(open_checkpoint(source.path).config, request.recipe_file)
    hook_points = request.hook_points
    if request.neurons:
        hook_points = tuple(str(p) for p in recipe.neuron_hook_points)
    options = ProfileOptions(**{**request.options.__dict__, "hook_points": hook_points})
    toxic, benign = profile_set.counts()
    if announce is not None:
        announce(
            f"profiling {source.id} on {profile_set.name} ({toxic} toxic, {benign} non-toxic) "
            f"on {pick_device(request.device)}"
        )
    loaded = load(source, request.device, request.dtype, request.recipe_file)
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
    )
    return ProfileOutcome(expertise, loaded.recipe, profile_set, loaded)


def verify_output(
    out: Path,
    source_path: Path,
    dtype_name: str,
    device: str,
    loaded: LoadedModel | None = None,
) -> VerifyReport:
    """Verify OUT against its source; a model already loaded for profiling is reused when it
    has the verification's dtype and device (its folded parameters are then overwritten)."""
    dtype = getattr(torch, dtype_name)
    model: Any = None
    if loaded is not None and loaded.dtype == dtype and loaded.device == pick_device(device):
        model = loaded.model
    return verify(out, source_path, dtype, device, model=model)


def apply_rule_if_given(expertise: Expertise, rule: RuleOptions | None) -> Expertise:
    """Recompute the factors of an expertise file from its AUROC when rule options are given."""
    if rule is None:
        return expertise
    from sgm_bake.pipeline.profile import apply_rule

    return apply_rule(expertise, rule)
