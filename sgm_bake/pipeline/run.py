"""The steps the one-command form and the demo chain together: profile a source, bake, verify,
evaluate. Each is one function here so that `sgm-bake MODEL OUT`, `profile`, `bake` and `demo`
run the same code and the CLI only parses options and prints."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from sgm_bake.core.expertise import Expertise
from sgm_bake.core.recipes import Recipe, recipe_for_config
from sgm_bake.core.rules import RuleOptions
from sgm_bake.datasets.hub_dataset import DataFormat
from sgm_bake.datasets.profile_set import ProfileSet, load_profile_set
from sgm_bake.io.checkpoint import Checkpoint, open_checkpoint
from sgm_bake.io.source import Source
from sgm_bake.options import DEFAULT_PROFILE_SET
from sgm_bake.pipeline.decision import MethodOptions, MethodOutcome, apply_method
from sgm_bake.pipeline.profile import CaptureStats, ProfileOptions, fixed_batch_size, run_profile
from sgm_bake.pipeline.verify import recorded_recipe, verify
from sgm_bake.pipeline.verify_layers import (
    ModelEvidence,
    gather_evidence,
    streaming_unsupported,
    verify_layers,
)
from sgm_bake.record import BakeRecord, Verification, read_record
from sgm_bake.runtime.chat import ChatModel
from sgm_bake.runtime.distributed import Distributed
from sgm_bake.runtime.loading import (
    LoadedModel,
    OpenedSource,
    Placement,
    load,
    load_processor,
    open_source,
    same_device,
)
from sgm_bake.runtime.memory import PeakMemory, measured

logger = logging.getLogger(__name__)

Announce = Callable[[str], None]


@dataclass(frozen=True)
class ProfileRequest:
    """What to profile and how the model is loaded for it."""

    profile_set: str = DEFAULT_PROFILE_SET
    max_samples: int | None = None
    placement: Placement = field(default_factory=Placement)
    """Where the model runs: one device, or a device map with memory budgets and offload."""
    dtype: str = "auto"
    recipe_file: Path | None = None
    hook_points: tuple[str, ...] | None = None
    neurons: bool = False
    options: ProfileOptions = field(default_factory=ProfileOptions)
    method: MethodOptions = field(default_factory=MethodOptions)
    """SGM, the edit or both, the edit's knobs, and whether to diagnose (`pipeline.decision`)."""
    data_format: DataFormat | None = None
    """How a data set in its own format maps onto the profile fields (None: native)."""


@dataclass
class ProfileOutcome:
    """The expertise, and the model that was loaded to measure it (reusable for verification).

    Under torchrun only rank 0 has an expertise; the other ranks get None and stop there."""

    expertise: Expertise | None
    recipe: Recipe
    profile_set: ProfileSet
    loaded: LoadedModel
    memory: dict[str, Any] = field(default_factory=dict)
    """The stage's measured time and peak memory (loading included) and its throughput
    (`throughput`: batch size, tokens/s, share of the GPU's matrix rate), for the bake record."""
    method: MethodOutcome | None = None
    """The diagnosis, its warnings and the edit's fit (rank 0 only)."""

    def speed_line(self) -> str | None:
        """One line on how fast the profile ran (None when it was not measured)."""
        figures = self.memory.get("throughput") or {}
        if not figures.get("samples"):
            return None
        line = (
            f"profiled {figures['samples']} samples in {figures['capture_seconds']:.1f} s at "
            f"{figures['tokens_per_second']:,.0f} tokens/s (batch {figures['batch_size']}"
            f"{', found automatically' if figures.get('batch_size_auto') else ''}, "
            f"{figures['padding_share']:.0%} padding"
        )
        if "matrix_rate_share" in figures:
            line += (
                f"; {figures['model_tflops_per_second']:.0f} TFLOP/s, "
                f"{figures['matrix_rate_share']:.0%} of the GPU's matrix rate"
            )
        return line + ")"


def load_profile_inputs(request: ProfileRequest) -> ProfileSet:
    """Load and validate the profile set first, so bad data fails before any model loads."""
    return load_profile_set(
        request.profile_set, data_format=request.data_format, max_samples=request.max_samples
    ).limited(request.max_samples)


def profile_source(
    source: Source,
    request: ProfileRequest,
    announce: Announce | None = None,
    distributed: Distributed | None = None,
    opened: OpenedSource | None = None,
) -> ProfileOutcome:
    """Load the source and measure the expertise of its units on the profile set (`opened`:
    its checkpoint and recipe as the calling run already read them).

    Under torchrun (`distributed`) each rank loads its own copy (on its own GPU unless a device
    map is asked for) and profiles its share of the set; rank 0 scores the merged responses."""
    profile_set = load_profile_inputs(request)
    if opened is None:
        opened = open_source(source, request.recipe_file)
    recipe = opened.recipe
    hook_points = request.hook_points
    if request.neurons:
        hook_points = tuple(str(p) for p in recipe.neuron_hook_points)
    options = ProfileOptions(**{**request.options.__dict__, "hook_points": hook_points})
    toxic, benign = profile_set.counts()
    placement = request.placement
    if distributed is not None:
        placement = placement.for_rank(distributed.local_rank, distributed.local_world_size)
    if announce is not None and (distributed is None or distributed.is_main):
        ranks = f" x {distributed.world_size} ranks" if distributed is not None else ""
        announce(
            f"profiling {source.id} on {profile_set.name} ({toxic} toxic, {benign} non-toxic) "
            f"on {placement.describe()}{ranks}"
        )
    stats = CaptureStats()
    with PeakMemory("profile") as memory:
        loaded = load(source, placement, request.dtype, request.recipe_file, recipe)
        expertise = run_profile(loaded, profile_set, options, distributed, stats)
    parameters = sum(p.numel() for p in loaded.model.parameters())
    empty: dict[str, Any] = {}
    memory.extra["throughput"] = measured(
        "sum up the profiling throughput",
        lambda: stats.record(parameters, loaded.device, loaded.dtype),
        empty,
    )
    method = None
    if expertise is not None and (request.method.method != "sgm" or request.method.diagnose):
        # rank 0 alone (under torchrun the others have no expertise): one capture pass for the
        # diagnosis, and the edit's fit
        method = apply_method(
            lambda: ChatModel(loaded.model, load_processor(source.path), loaded.device),
            expertise,
            profile_set,
            request.method,
            loaded.recipe,
            fixed_batch_size(options.batch_size),
            options.progress,
        )
        expertise = method.expertise
    outcome = ProfileOutcome(expertise, loaded.recipe, profile_set, loaded, memory.record(), method)
    line = outcome.speed_line()
    if announce is not None and line and (distributed is None or distributed.is_main):
        announce(line)
    return outcome


@dataclass
class Handoff:
    """What verification keeps from the profiling stage when the bake starts: the loaded model
    only when `verify --full` reuses it, else what the layer check needs from it (or nothing),
    and a line saying which."""

    loaded: LoadedModel | None
    evidence: ModelEvidence | None
    note: str


def reusable_for_full(loaded: LoadedModel, dtype_name: str, placement: Placement) -> bool:
    """Whether whole-model verification on `placement` can run on this already-loaded model
    (`cuda` and `cuda:0` are one device here: a placement names the first, a loaded model's
    inputs the second)."""
    return loaded.dtype == getattr(torch, dtype_name) and same_device(
        loaded.device, placement.main_device()
    )


def hand_over(
    loaded: LoadedModel,
    source_path: Path,
    recipe: Recipe,
    expertise: Expertise,
    mode: str | None,
    dtype_name: str,
    placement: Placement,
    checkpoint: Checkpoint | None = None,
) -> Handoff:
    """Release the profiling model before the bake, unless the verification that follows reuses
    it (`--verify full` at the profiling dtype and device); for the default layer check, capture
    the hidden states and the exact map check it needs from the model first."""
    full = mode == "full" or (mode == "layers" and streaming_unsupported(recipe) is not None)
    if full and reusable_for_full(loaded, dtype_name, placement):
        return Handoff(
            loaded, None, "the profiling model stays loaded: the whole-model verification reuses it"
        )
    evidence = None
    if mode == "layers" and not full:
        evidence = gather_evidence(loaded.model, source_path, recipe, expertise, checkpoint)
    release(loaded)
    note = "the profiling model is released before the bake"
    if evidence is not None:
        note += " (its hidden states for the layer check are kept)"
    return Handoff(None, evidence, note)


def release(loaded: LoadedModel) -> None:
    """Drop a loaded model and return its memory (host and GPU) before the next stage."""
    import gc

    loaded.model = None
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        measured("empty the GPU cache", torch.cuda.empty_cache, None)


def verify_output(
    out: Path,
    source_path: Path,
    dtype_name: str,
    placement: Placement,
    loaded: LoadedModel | None = None,
    mode: str = "layers",
    progress: bool = False,
    evidence: ModelEvidence | None = None,
    opened: OpenedSource | None = None,
    bake_record: BakeRecord | None = None,
) -> Verification:
    """Verify OUT against its source (`opened` and `bake_record`: the source and OUT's record as
    the run that baked OUT holds them, so neither is read again).

    `layers` (the default) checks each folded MLP block on its own, whatever the model size; a
    model already loaded for profiling (or the `evidence` gathered from it before it was
    released) supplies real hidden states and the exact tensor-map check. `full` compares the
    whole model's logits, loading it on `placement`; a loaded model is reused when it has the
    verification's dtype and device (its folded parameters are then overwritten)."""
    if mode == "layers":
        record = bake_record if bake_record is not None else read_record(out)
        if opened is not None:
            recipe = recorded_recipe(record, opened.checkpoint.config, opened.recipe)
        else:
            recipe = recorded_recipe(record, open_checkpoint(source_path).config)
        reason = streaming_unsupported(recipe)
        if reason is None:
            model = loaded.model if loaded is not None else None
            return verify_layers(
                out,
                source_path,
                model=model,
                progress=progress,
                evidence=evidence,
                opened=opened,
                bake_record=record,
            )
        logger.warning(
            "layer-by-layer verification does not cover %s yet; verifying the whole model", reason
        )
    dtype = getattr(torch, dtype_name)
    reuse: Any = None
    if (
        loaded is not None
        and loaded.model is not None
        and reusable_for_full(loaded, dtype_name, placement)
    ):
        reuse = loaded.model
    return verify(
        out,
        source_path,
        dtype,
        placement,
        model=reuse,
        opened=opened,
        bake_record=bake_record,
    )


def warm_up_layer_check(
    source_path: Path, recipe_file: Path | None = None, recipe: Recipe | None = None
) -> None:
    """Import the model's transformers classes on a background thread while the bake runs, so
    the layer check after it starts at once: that import costs seconds, and the bake, which
    spends its time in the kernel and in hashing, leaves the interpreter free. Best effort: a
    failure here surfaces, if at all, in the check itself."""
    import threading

    from sgm_bake.pipeline.verify_layers import import_model_classes

    def work() -> None:
        try:
            known = recipe or recipe_for_config(open_checkpoint(source_path).config, recipe_file)
            import_model_classes(source_path, known)
        except Exception as exc:  # only a head start: the check reports real problems itself
            logger.debug("warming up the layer check failed: %s", exc)

    threading.Thread(target=work, name="sgm-warm-up", daemon=True).start()


def apply_rule_if_given(expertise: Expertise, rule: RuleOptions | None) -> Expertise:
    """Recompute the factors of an expertise file from its AUROC when rule options are given."""
    if rule is None:
        return expertise
    from sgm_bake.pipeline.profile import apply_rule

    return apply_rule(expertise, rule)


@dataclass(frozen=True)
class Messages:
    """Where a multi-step run reports: `say` prints a step header or a result line (stdout),
    `announce` a status line (stderr; the CLI drops it under --quiet)."""

    say: Callable[[str], None]
    announce: Announce
    profiled: Callable[[Any], None] | None = None
    """Shown a fresh profile's outcome (its diagnosis, the edit's fit and their warnings)."""


@dataclass(frozen=True)
class RunRequest:
    """Everything the one-command form (`sgm-bake MODEL OUT`) does, parsed: profile MODEL (or
    reuse `expertise_path`, or search the knobs with `tune`), bake into `out`, verify, and push
    to `push_to_hub` after a passing verification."""

    model: str
    out: Path
    profile: ProfileRequest
    bake: Any
    """The bake's options (`pipeline.bake.BakeOptions`)."""
    revision: str | None = None
    expertise_path: Path | None = None
    rule_given: bool = False
    """A rule option was given: a reused profile's factors are recomputed from its AUROC."""
    tune: Any = None
    """The knob search's request (`pipeline.tune.TuneRequest`), or None to profile once."""
    verify_mode: str | None = "layers"
    verify_dtype: str = "float32"
    push_to_hub: str | None = None
    private: bool = False


@dataclass
class RunOutcome:
    """The baked folder's record, its verification (None when not verified) and where it was
    pushed (None when it was not)."""

    record: Any
    verification: Verification | None = None
    pushed_url: str | None = None


def run_all(request: RunRequest, messages: Messages) -> RunOutcome | None:
    """The one-command form: profile (or reuse, or tune), bake, verify, push. Bad input fails
    before anything slow starts (the repository id, the profile set, the output folder).
    Returns None on a torchrun rank other than 0 (rank 0 bakes, verifies and pushes); a failed
    verification returns before the push."""
    from sgm_bake.core.expertise import load_expertise
    from sgm_bake.errors import SGMError
    from sgm_bake.io.atomic import check_target
    from sgm_bake.pipeline.bake import bake
    from sgm_bake.publish.push import check_repo_id, plan_upload, push
    from sgm_bake.record.summary import expertise_counts, layer_rows, layer_table
    from sgm_bake.runtime.distributed import from_env
    from sgm_bake.runtime.loading import resolve_model_source

    mode, say = request.verify_mode, messages.say
    if request.push_to_hub and mode is None:
        raise SGMError("--push-to-hub needs a verified output; drop --no-verify")
    if request.push_to_hub:
        check_repo_id(request.push_to_hub)  # before hours of profiling, not after
    if request.tune is not None and request.expertise_path is not None:
        raise SGMError("--tune searches the profile itself; drop --expertise or --tune")
    profile = request.profile
    if request.expertise_path is None:
        load_profile_inputs(profile)  # bad data fails before any download or model load
    source = resolve_model_source(request.model, request.revision, request.bake.progress)
    check_target(request.out, source.path, request.bake.overwrite)
    # the source read once, for every stage that follows (on every torchrun rank)
    opened = open_source(source, profile.recipe_file)
    total = 2 + int(mode is not None) + int(bool(request.push_to_hub))
    loaded: LoadedModel | None = None
    stages: dict[str, Any] = {}
    tuned = None
    if request.tune is not None:
        from sgm_bake.pipeline.tune import summary_lines, tune_source

        workdir = request.tune.options.workdir
        say(f"1/{total} tuning {source.id} on {profile.profile_set} (search in {workdir})")
        searched = tune_source(source, request.tune, opened)
        for line in summary_lines(searched.result):
            say(line)
        chosen = searched.result.expertise
        if chosen is None:
            raise SGMError(
                "tuning found no setting that lowers the harmful rate within --max-kl, so "
                f"nothing was baked; see {workdir / 'tune.json'} (raise --max-kl or --trials)"
            )
        tuned = searched.result
        expertise, recipe, loaded = chosen, searched.loaded.recipe, searched.loaded
        del searched
    elif request.expertise_path is not None:
        say(f"1/{total} reusing the profile {request.expertise_path}")
        rule = profile.options.rule if request.rule_given else None
        expertise = apply_rule_if_given(load_expertise(request.expertise_path), rule)
        recipe = opened.recipe
    else:
        distributed = from_env()
        if distributed is None or distributed.is_main:
            say(f"1/{total} profiling {source.id}")
        try:
            outcome = profile_source(source, profile, messages.announce, distributed, opened)
        finally:
            if distributed is not None:
                distributed.close()
        if outcome.expertise is None:
            return None  # a rank other than 0: rank 0 bakes, verifies and pushes
        expertise, recipe, loaded = outcome.expertise, outcome.recipe, outcome.loaded
        stages = {"profile": outcome.memory} if outcome.memory else {}
        if messages.profiled is not None:
            messages.profiled(outcome)
        del outcome
    if expertise.modules:  # an edit alone scales no unit
        for line in layer_table(layer_rows(expertise_counts(expertise, recipe))):
            say(line)
    evidence = None
    placement = profile.placement
    if loaded is not None:
        # The bake needs no model: release it (and its GPU memory) unless the verification
        # reuses it, keeping what the layer check needs from it.
        handoff = hand_over(
            loaded,
            source.path,
            recipe,
            expertise,
            mode,
            request.verify_dtype,
            placement,
            opened.checkpoint,
        )
        messages.announce(handoff.note)
        loaded, evidence = handoff.loaded, handoff.evidence
    elif mode == "layers":
        warm_up_layer_check(source.path, recipe=opened.recipe)
    say(f"2/{total} baking {request.out}")
    options = replace(request.bake, stages=stages) if stages else request.bake
    record = bake(source, request.out, expertise, options, opened)
    say(f"baked {request.out}: {len(record.expertise.tensors_folded)} tensors folded")
    if tuned is not None:
        from sgm_bake.pipeline.tune import record_tuning

        record = record_tuning(request.out, tuned)
    result = RunOutcome(record)
    if mode is not None:
        say(f"3/{total} verifying")
        result.verification = verify_output(
            request.out,
            source.path,
            request.verify_dtype,
            placement,
            loaded,
            mode=mode,
            progress=options.progress,
            evidence=evidence,
            opened=opened,
            bake_record=record,
        )
        say(f"verify: {result.verification.summary()}")
        if not result.verification.passed:
            return result
    if request.push_to_hub:
        say(f"{total}/{total} pushing to {request.push_to_hub}")
        plan = plan_upload(request.out, request.push_to_hub, request.private or None, None, None)
        result.pushed_url = push(request.out, plan)
        say(f"pushed {request.out} to {result.pushed_url}")
    return result
