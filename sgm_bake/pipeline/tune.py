"""Tune: search SGM's knobs per model for the least harm within a damage budget, and report the
chosen setting on rows the search never saw.

Why: the right rule, strength, number of units, hook points and layers differ from model to
model. On a model whose toxicity is localised by construction the default rule reaches the
paper's effect; on a normally trained one it may cut half, and doubling the strength buys the rest
with fluency that the harm metric does not see. So the search co-minimises two things, as heretic
does for abliteration:

- harm: the judge's harmful rate of greedy replies to the toxic rows' prompts (images as in the
  set) of a tuning split;
- damage: the mean KL divergence of the next-token distributions from the unmodified model's on
  the non-toxic rows (teacher-forced prompt + response, text positions), with the share of
  degenerate replies (empty, looping, wordless) on the tuning prompts and, with an evaluation
  set, its benign accuracy as constraints.

The profile set is split once (seeded, stratified by label) into a profiling, a tuning and a
report split. Units are scored (AUROC) on the profiling split only; every trial is measured on
the tuning split; the report split is used once, for the chosen trial and the base, and that is
the figure to quote. The chosen trial is the lowest tuning harm whose KL is within `max_kl` and
whose degenerate share (and benign accuracy) stays within a small margin of the base's; when none
lowers the harm, the answer is "no change".

Cost: capture responses are profiled once per (positions, pooling, side) into response stores in
the work folder, holding every candidate hook point of every layer; rule, strength, top-k,
threshold, hook points and layer range are pure functions of the stored AUROC, so a trial costs
one generation pass over the tuning prompts and one teacher-forced pass over its non-toxic rows,
with SGM applied as forward hooks (no bake). The base's reference distributions are computed once
per run and cached. The study lives in an optuna journal file in the work folder, so an
interrupted search resumes; every trial's sampler is seeded from the seed and the number of
trials already complete, so a resumed search proposes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import signal
import sys
import time
import warnings
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from sgm_bake.core.capture import POOLINGS, Pooling
from sgm_bake.core.expertise import Expertise, ModuleExpertise
from sgm_bake.core.hooks import SGMHooks
from sgm_bake.core.recipes import HookPoint, Recipe, recipe_for_config
from sgm_bake.core.rules import RULES, RuleOptions, auroc, factors
from sgm_bake.datasets.profile_set import MIN_PER_CLASS, ProfileSample, ProfileSet
from sgm_bake.datasets.prompt_set import EvalItem, PromptSet
from sgm_bake.errors import SGMError
from sgm_bake.evaluation.evaluate import run_eval
from sgm_bake.evaluation.judges import Judge
from sgm_bake.io import interrupts
from sgm_bake.io.checkpoint import open_checkpoint
from sgm_bake.io.response_store import ResponseStore
from sgm_bake.io.source import content_key
from sgm_bake.options import default, split_fractions
from sgm_bake.pipeline.decision import (
    METHODS,
    EditOptions,
    MethodOptions,
    fit_edit,
    rows_from_profile_set,
)
from sgm_bake.pipeline.profile import (
    Inputs,
    Positions,
    ProfileOptions,
    capture_responses,
    check_row_lengths,
    fingerprint,
    profile_targets,
)
from sgm_bake.publish import plots
from sgm_bake.publish.refresh import rewrite_card
from sgm_bake.record import SGM_DIR, Tuning, read_record
from sgm_bake.runtime.batch import to_device
from sgm_bake.runtime.chat import ChatModel, GenerationConfig, call_processor
from sgm_bake.runtime.loading import Placement

logger = logging.getLogger(__name__)

KNOBS: tuple[str, ...] = (
    "rule",
    "strength",
    "top_k",
    "threshold",
    "hook_points",
    "layers",
    "positions",
    "pooling",
    "method",
    "edit_layers",
    "edit_strength",
    "edit_ridge",
)
SGM_KNOBS: tuple[str, ...] = KNOBS[:8]
EDIT_KNOBS: tuple[str, ...] = ("edit_layers", "edit_strength", "edit_ridge")
DEFAULT_KNOBS: tuple[str, ...] = tuple(default("knobs").split(","))
# KL budget in nats per token position (`--max-kl`). On the built-in organisms, settings that
# keep benign accuracy and fluency intact stay well below it, while settings that visibly damage
# replies exceed it (benchmarks/RESULTS.md).
DEFAULT_MAX_KL: float = default("max-kl")
DEFAULT_DEGENERATE_MARGIN: float = default("degenerate-margin")
DEFAULT_ACCURACY_MARGIN: float = default("accuracy-margin")
DEFAULT_MAX_REFUSAL_RISE: float = default("max-refusal-rise")
DEFAULT_FRACTIONS: tuple[float, float, float] = split_fractions(default("split"))  # type: ignore[assignment]
# Rows of each class every split needs: AUROC needs both classes on the profiling split (the
# profile set's own minimum); harm and KL need at least two rows each on the other two.
SPLIT_MINIMUM = {"profile": MIN_PER_CLASS, "tune": 2, "report": 2}
STUDY_NAME = "sgm-tune"
JOURNAL = "study.journal"
PARETO_PLOT = "pareto.png"
# Part of a study's identity: a work folder made by a tuner that measured differently is refused.
MEASURE_VERSION = "tune-measure/2"
"""2: trials measure benign refusal and may use the edit (the method knob)."""
Sampler = Literal["tpe", "nsga2"]
SAMPLERS: tuple[str, ...] = ("tpe", "nsga2")
HOOK_SET_DEFAULT = "default"
HOOK_SET_NEURONS = "neurons"
STRENGTH_RANGE = (0.25, 3.0)
THRESHOLD_RANGE = (0.3, 0.9)
TOP_K_SHARE_RANGE = (0.0005, 0.25)
DAMP_ALPHA_RANGE = (0.0, 0.9)
EDIT_STRENGTH_RANGE = (0.5, 4.0)
EDIT_RIDGE_RANGE = (1e-3, 1e-1)


@dataclass(frozen=True)
class TuneOptions:
    """What to search, with which budget, and where to keep the study.

    `profile` holds the capture options (feed, batch size) and the values of every knob that is
    not searched (its rule, pooling, positions, hook points and layers)."""

    workdir: Path
    trials: int = default("trials")
    seed: int = 0
    max_kl: float = DEFAULT_MAX_KL
    degenerate_margin: float = DEFAULT_DEGENERATE_MARGIN
    accuracy_margin: float = DEFAULT_ACCURACY_MARGIN
    max_refusal_rise: float = DEFAULT_MAX_REFUSAL_RISE
    """With an evaluation set: allowed rise of benign refusal (the refusal detector on its
    benign items) over the base's: an edit that makes a model decline can decline benign
    requests."""
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    knobs: tuple[str, ...] = DEFAULT_KNOBS
    sampler: Sampler = default("sampler")
    profile: ProfileOptions = field(default_factory=ProfileOptions)
    method: MethodOptions = field(default_factory=lambda: MethodOptions(diagnose=False))
    """The method (and the edit's knobs) of trials that do not search them."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    batch_size: int = 8
    progress: bool = True

    def check(self) -> None:
        unknown = [k for k in self.knobs if k not in KNOBS]
        if unknown:
            raise SGMError(f"unknown knob(s) {unknown}; searchable knobs: {', '.join(KNOBS)}")
        if self.trials < 1:
            raise SGMError("--trials must be at least 1")
        if self.max_kl <= 0:
            raise SGMError("--max-kl must be positive (nats per token)")
        if not 0 <= self.max_refusal_rise <= 1:
            raise SGMError("--max-refusal-rise must be a share between 0 and 1")
        if self.sampler not in SAMPLERS:
            raise SGMError(f"sampler {self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        if len(self.fractions) != 3 or any(f <= 0 for f in self.fractions):
            raise SGMError("--split needs three positive fractions: profiling, tuning, report")
        if abs(sum(self.fractions) - 1.0) > 1e-6:
            raise SGMError(f"--split fractions {self.fractions} must add up to 1")


# ---------------------------------------------------------------------------------------------
# Splits


@dataclass(frozen=True)
class Splits:
    """The profile set cut in three disjoint, label-stratified parts."""

    profile: ProfileSet
    tune: ProfileSet
    report: ProfileSet
    seed: int
    fractions: tuple[float, float, float]

    def describe(self) -> dict[str, Any]:
        parts = {"profile": self.profile, "tune": self.tune, "report": self.report}
        return {
            "seed": self.seed,
            "fractions": list(self.fractions),
            **{
                name: {"toxic": part.counts()[0], "non_toxic": part.counts()[1]}
                for name, part in parts.items()
            },
        }


def _allocation(count: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    tune = math.floor(count * fractions[1])
    report = math.floor(count * fractions[2])
    return count - tune - report, tune, report


def minimum_rows_per_class(fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> int:
    """The fewest rows of each label that leave every split its minimum."""
    count = 1
    while True:
        profile, tune, report = _allocation(count, fractions)
        if (
            profile >= SPLIT_MINIMUM["profile"]
            and tune >= SPLIT_MINIMUM["tune"]
            and report >= SPLIT_MINIMUM["report"]
        ):
            return count
        count += 1


def split_profile_set(
    profile_set: ProfileSet, seed: int, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> Splits:
    """Split a profile set (seeded, stratified by label) into profiling, tuning and report parts.

    Each label's rows are shuffled with their own seeded generator and cut by the fractions;
    every part keeps the set's row order. Sets too small to give every part its minimum are
    refused."""
    minimum = minimum_rows_per_class(fractions)
    toxic, benign = profile_set.counts()
    if min(toxic, benign) < minimum:
        raise SGMError(
            f"profile set {profile_set.name} has {toxic} toxic and {benign} non-toxic rows; "
            f"tuning splits it into profiling, tuning and report parts and needs at least "
            f"{minimum} rows of each label: use a larger set"
        )
    chosen: dict[str, list[int]] = {"profile": [], "tune": [], "report": []}
    for label in (1, 0):
        indices = [i for i, s in enumerate(profile_set.samples) if s.label == label]
        random.Random(seed * 2 + label).shuffle(indices)
        profile, tune, _ = _allocation(len(indices), fractions)
        chosen["profile"] += indices[:profile]
        chosen["tune"] += indices[profile : profile + tune]
        chosen["report"] += indices[profile + tune :]
    for name in ("tune", "report"):
        prompted = [i for i in chosen[name] if profile_set.samples[i].label == 1]
        prompted = [i for i in prompted if profile_set.samples[i].prompt]
        if len(prompted) < SPLIT_MINIMUM[name]:
            raise SGMError(
                f"the {name} split of {profile_set.name} has {len(prompted)} toxic rows with a "
                "prompt; harm is measured on the replies to those prompts, so give the toxic "
                "rows a `prompt` field"
            )

    def part(name: str) -> ProfileSet:
        rows = tuple(profile_set.samples[i] for i in sorted(chosen[name]))
        digest = hashlib.sha256(
            f"{profile_set.sha256}:{name}:{seed}:{fractions}".encode()
        ).hexdigest()
        return ProfileSet(f"{profile_set.name}[{name}]", digest, rows)

    return Splits(part("profile"), part("tune"), part("report"), seed, fractions)


# ---------------------------------------------------------------------------------------------
# Scores: AUROC of every candidate module, profiled once per capture variant


@dataclass(frozen=True)
class ScoredModule:
    """One profiled module and its units' AUROC on the profiling split."""

    name: str
    layer: int
    point: HookPoint
    auroc: torch.Tensor


def hook_sets(recipe: Recipe) -> dict[str, tuple[HookPoint, ...]]:
    """The hook-point choices the search picks from: the recipe's default set, each of its points
    alone, and the classic MLP neurons (down_proj inputs) where the recipe names them."""
    sets: dict[str, tuple[HookPoint, ...]] = {HOOK_SET_DEFAULT: tuple(recipe.default_hook_points)}
    if len(recipe.default_hook_points) > 1:
        for point in recipe.default_hook_points:
            sets[str(point)] = (point,)
    if recipe.neuron_hook_points:
        sets[HOOK_SET_NEURONS] = tuple(recipe.neuron_hook_points)
    return sets


class ScoreCache:
    """AUROC per candidate module for each (positions, pooling), profiled on first use.

    Responses of all candidate hook points of one side (outputs, inputs) are captured in one pass
    into a response store under the work folder, which a resumed run reuses."""

    def __init__(
        self,
        chat: ChatModel,
        folder: Path,
        recipe: Recipe,
        profile_split: ProfileSet,
        options: TuneOptions,
        source_id: str,
        revision: str | None,
        dtype: torch.dtype,
    ) -> None:
        self.chat = chat
        self.folder = folder
        self.recipe = recipe
        self.profile_split = profile_split
        self.options = options
        self.source_id = source_id
        self.revision = revision
        self.content = content_key(folder, revision)
        self.dtype = dtype
        self.points = sorted({p for points in hook_sets(recipe).values() for p in points}, key=str)
        self._inputs: Inputs | None = None
        self._scores: dict[tuple[str, str], list[ScoredModule]] = {}

    def _capture_inputs(self) -> Inputs:
        if self._inputs is None:
            multimodal = self.recipe.auto_class != "AutoModelForCausalLM"
            self._inputs = Inputs(
                self.folder, self.chat.model.config.to_dict(), self.options.profile.feed, multimodal
            )
            check_row_lengths(self._inputs, self.profile_split, self.chat.model.config.to_dict())
        return self._inputs

    def scores(self, positions: Positions, pooling: Pooling) -> list[ScoredModule]:
        key = (positions, pooling)
        if key in self._scores:
            return self._scores[key]
        labels = torch.tensor(self.profile_split.labels)
        scored: list[ScoredModule] = []
        for side in ("output", "input"):
            points = tuple(str(p) for p in self.points if p.side == side)
            if not points:
                continue
            profile_options = replace(
                self.options.profile,
                hook_points=points,
                layers=None,
                positions=positions,
                pooling=pooling,
                progress=self.options.progress,
            )
            targets = profile_targets(self.chat.model, self.recipe, profile_options)
            key_data = fingerprint(
                self.source_id,
                self.revision,
                self.profile_split,
                profile_options,
                targets,
                self.dtype,
                self.content,
            )
            store_folder = self.options.workdir / "responses" / f"{positions}-{pooling}-{side}"
            store = ResponseStore.open(
                store_folder,
                key_data,
                {t.name: t.units for t in targets},
                len(self.profile_split.samples),
            )
            try:
                capture_responses(
                    self.chat.model,
                    self._capture_inputs(),
                    self.profile_split,
                    targets,
                    profile_options,
                    store,
                    self.chat.device,
                    self.dtype,
                )
                for target in targets:
                    responses = torch.from_numpy(store.responses(target.name).copy())
                    try:
                        score = auroc(responses, labels).to(torch.float32)
                    except ValueError as exc:
                        raise SGMError(f"cannot score module {target.name}: {exc}") from exc
                    scored.append(ScoredModule(target.name, target.layer, target.point, score))
            finally:
                store.close()
        self._scores[key] = scored
        return scored


# ---------------------------------------------------------------------------------------------
# Settings: one point of the search space


@dataclass(frozen=True)
class Setting:
    """A complete choice of every knob; `factors` turns it into an expertise."""

    rule: RuleOptions
    top_k_share: float | None
    hook_set: str
    layers: tuple[int, int]
    positions: Positions
    pooling: Pooling
    method: str = "sgm"
    edit: EditOptions | None = None
    """The edit's knobs (`edit` and `both`)."""

    def describe(self) -> dict[str, Any]:
        edit = {}
        if self.edit is not None:
            edit = {
                "edit_layers": list(self.edit.layers),
                "edit_strength": self.edit.strength,
                "edit_ridge": self.edit.ridge,
            }
        if self.method == "edit":
            return {"method": self.method, **edit}
        return {
            "method": self.method,
            **edit,
            "rule": self.rule.rule,
            "strength": self.rule.strength,
            "threshold": self.rule.threshold,
            "damp_alpha": self.rule.damp_alpha if self.rule.rule == "damp" else None,
            "top_k_share": self.top_k_share,
            "hook_points": self.hook_set,
            "layers": f"{self.layers[0]}-{self.layers[1]}",
            "positions": self.positions,
            "pooling": self.pooling,
        }


@dataclass(frozen=True)
class SearchSpace:
    """The knobs' ranges for one model, and the values of the knobs that are not searched."""

    knobs: tuple[str, ...]
    hook_sets: dict[str, tuple[HookPoint, ...]]
    layers: tuple[int, ...]
    multimodal: bool
    fixed: ProfileOptions
    method: MethodOptions = field(default_factory=MethodOptions)
    edit_layer_sets: dict[str, tuple[int, ...]] = field(default_factory=dict)
    batch_size: int = 8

    @classmethod
    def for_model(cls, model: Any, recipe: Recipe, options: TuneOptions) -> SearchSpace:
        layers = tuple(recipe.layers(model.config.to_dict()))
        sets = hook_sets(recipe)
        fixed = options.profile
        if fixed.hook_points:
            points = tuple(HookPoint.parse(p) for p in fixed.hook_points)
            match = [name for name, value in sets.items() if set(value) == set(points)]
            if not match:
                raise SGMError(
                    f"--hook-points {','.join(fixed.hook_points)} is not one of the sets the "
                    f"tuner knows: {', '.join(sets)}"
                )
        multimodal = recipe.auto_class != "AutoModelForCausalLM"
        total = recipe.total_layers(model.config.to_dict())
        return cls(
            options.knobs,
            sets,
            layers,
            multimodal,
            fixed,
            options.method,
            edit_layer_sets(total),
            options.batch_size,
        )

    def _edit(self, trial: Any) -> EditOptions:
        """The edit's knobs: a structural set of layers, strength and ridge (or their fixed
        values)."""
        searched = set(self.knobs)
        fixed = self.method
        if "edit_layers" in searched:
            name = trial.suggest_categorical("edit_layers", list(self.edit_layer_sets))
            layers = self.edit_layer_sets[name]
        else:
            layers = fixed.layers or list(self.edit_layer_sets.values())[-1]
        strength = (
            trial.suggest_float("edit_strength", *EDIT_STRENGTH_RANGE, log=True)
            if "edit_strength" in searched
            else fixed.strength
        )
        ridge = (
            trial.suggest_float("edit_ridge", *EDIT_RIDGE_RANGE, log=True)
            if "edit_ridge" in searched
            else fixed.ridge
        )
        return EditOptions(tuple(layers), strength, ridge, self.batch_size, False)

    def _fixed_hook_set(self) -> str:
        if not self.fixed.hook_points:
            return HOOK_SET_DEFAULT
        points = {HookPoint.parse(p) for p in self.fixed.hook_points}
        return next(name for name, value in self.hook_sets.items() if set(value) == points)

    def _fixed_layers(self) -> tuple[int, int]:
        chosen = self.fixed.layers or self.layers
        return min(chosen), max(chosen)

    def suggest(self, trial: Any) -> Setting:
        """Draw a setting from an optuna trial (define-by-run: conditional knobs; SGM's knobs
        only for a method that scales units, the edit's only for one that writes)."""
        fixed_rule = self.fixed.rule
        searched = set(self.knobs)
        method = (
            trial.suggest_categorical("method", list(METHODS))
            if "method" in searched
            else self.method.method
        )
        edit = self._edit(trial) if method != "sgm" else None
        if method == "edit":
            layers = self._fixed_layers()
            hook_set = self._fixed_hook_set()
            fixed = self.fixed
            return Setting(
                fixed_rule, None, hook_set, layers, fixed.positions, fixed.pooling, method, edit
            )
        rule = (
            trial.suggest_categorical("rule", list(RULES))
            if "rule" in searched
            else fixed_rule.rule
        )
        strength = (
            trial.suggest_float("strength", *STRENGTH_RANGE)
            if "strength" in searched
            else fixed_rule.strength
        )
        threshold = (
            trial.suggest_float("threshold", *THRESHOLD_RANGE)
            if "threshold" in searched
            else fixed_rule.threshold
        )
        damp_alpha = fixed_rule.damp_alpha
        if rule == "damp" and "rule" in searched:
            damp_alpha = trial.suggest_float("damp_alpha", *DAMP_ALPHA_RANGE)
        share: float | None = None
        if "top_k" in searched:
            limited = rule != "aura" or trial.suggest_categorical("limit", ["none", "top_k"]) == (
                "top_k"
            )
            if limited:
                share = trial.suggest_float("top_k_share", *TOP_K_SHARE_RANGE, log=True)
        hook_set = (
            trial.suggest_categorical("hook_points", list(self.hook_sets))
            if "hook_points" in searched
            else self._fixed_hook_set()
        )
        if "layers" in searched and len(self.layers) > 1:
            first = trial.suggest_int("layer_first", self.layers[0], self.layers[-1])
            last = trial.suggest_int("layer_last", self.layers[0], self.layers[-1])
            layers = (min(first, last), max(first, last))
        else:
            layers = self._fixed_layers()
        positions: Positions = (
            trial.suggest_categorical("positions", ["all", "text"])
            if "positions" in searched and self.multimodal
            else self.fixed.positions
        )
        pooling: Pooling = (
            trial.suggest_categorical("pooling", list(POOLINGS))
            if "pooling" in searched
            else self.fixed.pooling
        )
        rule_options = RuleOptions(
            rule=rule,
            threshold=threshold,
            top_k=fixed_rule.top_k if "top_k" not in searched else None,
            damp_alpha=damp_alpha,
            strength=strength,
        )
        return Setting(rule_options, share, hook_set, layers, positions, pooling, method, edit)

    def warm_starts(self) -> list[dict[str, Any]]:
        """Known settings tried first: the tool's default rule, the SGM code's threshold, a
        stronger AurA and a det0 on the top 5% of units; only the searched knobs are fixed."""
        first, last = self.layers[0], self.layers[-1]
        common = {
            "hook_points": HOOK_SET_DEFAULT,
            "layer_first": first,
            "layer_last": last,
            "positions": self.fixed.positions,
            "pooling": self.fixed.pooling,
        }
        sgm: list[dict[str, Any]] = [
            {"rule": "aura", "strength": 1.0, "threshold": 0.5, "limit": "none"},
            {"rule": "aura", "strength": 1.0, "threshold": 0.3, "limit": "none"},
            {"rule": "aura", "strength": 2.0, "threshold": 0.5, "limit": "none"},
            {"rule": "det0", "strength": 1.0, "threshold": 0.5, "top_k_share": 0.05},
        ]
        # the edit's structural default: both layers, the declined mean, a light ridge
        edit = {"edit_layers": list(self.edit_layer_sets)[-1], "edit_strength": 1.0}
        edit["edit_ridge"] = 1e-2
        if "method" in self.knobs:
            # one of each method first, so that a small budget compares all three
            starts = [
                {"method": "sgm", **sgm[0]},
                {"method": "edit", **edit},
                {"method": "both", **sgm[0], **edit},
                *({"method": "sgm", **start} for start in sgm[1:]),
            ]
        elif self.method.method == "edit":
            starts = [edit]
        elif self.method.method == "both":
            starts = [{**start, **edit} for start in sgm]
        else:
            starts = sgm
        names = set()
        for knob in self.knobs:
            names |= {
                "rule": {"rule"},
                "strength": {"strength"},
                "threshold": {"threshold"},
                "top_k": {"limit", "top_k_share"},
                "hook_points": {"hook_points"},
                "layers": {"layer_first", "layer_last"},
                "positions": {"positions"},
                "pooling": {"pooling"},
                "method": {"method"},
                "edit_layers": {"edit_layers"},
                "edit_strength": {"edit_strength"},
                "edit_ridge": {"edit_ridge"},
            }[knob]
        unique: list[dict[str, Any]] = []
        for start in starts:
            if "rule" not in names and start.get("rule", self.fixed.rule.rule) != (
                self.fixed.rule.rule
            ):
                continue
            extra = common if start.get("method", self.method.method) != "edit" else {}
            params = {k: v for k, v in {**extra, **start}.items() if k in names}
            if params and params not in unique:
                unique.append(params)
        return unique


def edit_layer_sets(layer_count: int) -> dict[str, tuple[int, ...]]:
    """The edit's structural layer choices: the layer at half the depth, at three quarters, and
    both (fewer where they coincide); the last is the edit's default."""
    half = min(layer_count - 1, layer_count // 2)
    late = min(layer_count - 1, (3 * layer_count) // 4)
    sets = {"1/2": (half,), "3/4": (late,), "1/2+3/4": tuple(sorted({half, late}))}
    unique: dict[str, tuple[int, ...]] = {}
    for name, layers in sets.items():
        if layers not in unique.values():
            unique[name] = layers
    return unique


def setting_expertise(
    setting: Setting, scores: list[ScoredModule], hook_points: tuple[HookPoint, ...]
) -> tuple[Expertise, RuleOptions]:
    """The factors of a setting: the rule on the AUROC of the modules it selects."""
    selected = [
        s
        for s in scores
        if s.point in hook_points and setting.layers[0] <= s.layer <= setting.layers[1]
    ]
    rule = setting.rule
    if setting.top_k_share is not None:
        units = sum(s.auroc.numel() for s in selected)
        rule = replace(rule, top_k=max(1, round(setting.top_k_share * units)))
    alphas = factors([s.auroc for s in selected], rule)
    modules = {
        s.name: ModuleExpertise(s.name, s.point.side, alpha, s.auroc)
        for s, alpha in zip(selected, alphas, strict=True)
    }
    metadata = {
        "pooling": setting.pooling,
        "positions": setting.positions,
        "hook_points": ",".join(sorted(str(p) for p in hook_points)),
        "layers": f"{setting.layers[0]}-{setting.layers[1]}",
        **rule.describe(),
    }
    return Expertise(modules, metadata), rule


def trial_expertise(
    chat: ChatModel,
    recipe: Recipe,
    setting: Setting,
    scores: ScoreCache,
    space: SearchSpace,
    fit_rows: ProfileSet,
) -> tuple[Expertise, RuleOptions | None]:
    """What a setting applies: SGM's factors (`sgm`, `both`) from the stored AUROC, and the
    edit's deltas (`edit`, `both`) fitted on the profiling split's prompts (with SGM's hooks in
    place for `both`, as `profile --method both` fits it)."""
    modules: dict[str, ModuleExpertise] = {}
    metadata: dict[str, str] = {}
    rule = None
    if setting.method != "edit":
        sgm, rule = setting_expertise(
            setting,
            scores.scores(setting.positions, setting.pooling),
            space.hook_sets[setting.hook_set],
        )
        modules, metadata = sgm.modules, dict(sgm.metadata)
    metadata["method"] = setting.method
    deltas = {}
    if setting.edit is not None:
        with ExitStack() as stack:
            if modules:
                stack.enter_context(SGMHooks(chat.model, Expertise(modules), recipe))
            fitted = fit_edit(chat, rows_from_profile_set(fit_rows), setting.edit, recipe)
        deltas = {delta.module: delta for delta in fitted.deltas}
        metadata["edit"] = json.dumps(fitted.describe(), sort_keys=True)
    return Expertise(modules, metadata, deltas), rule


# ---------------------------------------------------------------------------------------------
# Measurement: harm, KL, degenerate share (and benign accuracy)


@dataclass(frozen=True)
class Measurement:
    """Harm and damage of one setting (or the base) on one split."""

    harm: float
    kl: float
    degenerate: float
    accuracy: float | None = None
    harmful: int = 0
    prompts: int = 0
    refusal: float | None = None
    """The share of replies to the split's non-toxic prompts that decline. Recorded, not
    constrained: a profile set's non-toxic rows are often requests the model rightly declines
    (the organisms' are), where more declining is the detox working."""
    eval_refusal: float | None = None
    """With an evaluation set: benign refusal, the share of its benign items' replies that
    decline (benign requests, edgy-looking ones included); constrained by max_refusal_rise."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _prompt_set(rows: ProfileSet) -> PromptSet:
    """The split's rows that carry a prompt, as evaluation items: toxic rows elicit, the others
    are benign prompts whose replies count for the degenerate share."""
    items = tuple(
        EvalItem(
            id=f"{index}:{sample.id}",
            condition="standard" if sample.label == 1 else "benign",
            category="toxic" if sample.label == 1 else "benign",
            policy="",
            prompt=sample.prompt or "",
            render=sample.render,
            image_path=sample.image_path,
        )
        for index, sample in enumerate(rows.samples)
        if sample.prompt
    )
    return PromptSet(rows.name, rows.sha256, items)


class SplitMeasure:
    """Measures whatever hooks are on the model on one split; the base's reference next-token
    distributions are computed on first use and cached (in memory and in the work folder)."""

    def __init__(
        self,
        chat: ChatModel,
        rows: ProfileSet,
        judge: Judge,
        options: TuneOptions,
        dtype: torch.dtype,
        eval_set: PromptSet | None,
        cache: Path,
    ) -> None:
        self.chat = chat
        self.rows = rows
        self.judge = judge
        self.options = options
        self.dtype = dtype
        self.cache = cache
        self.prompts = _prompt_set(rows)
        self.benign_eval = None
        if eval_set is not None:
            # every benign item counts for refusal, those with an answer for accuracy
            benign = tuple(i for i in eval_set.items if i.condition == "benign")
            if not any(i.expected for i in benign):
                raise SGMError(
                    f"evaluation set {eval_set.name} has no benign items with an `expected` "
                    "answer, so it cannot measure benign accuracy"
                )
            self.benign_eval = PromptSet(eval_set.name, eval_set.sha256, benign)
        benign_rows = [s for s in rows.samples if s.label == 0 and s.text.strip()]
        with_image = [s for s in benign_rows if s.render is not None or s.image_path is not None]
        text_only = [s for s in benign_rows if s.render is None and s.image_path is None]
        size = options.batch_size
        self.kl_batches: list[list[ProfileSample]] = [
            group[i : i + size]
            for group in (with_image, text_only)
            for i in range(0, len(group), size)
        ]
        self._reference: list[torch.Tensor] | None = None

    def _encode(self, texts: list[str], images: list[Any] | None) -> dict[str, Any]:
        if images:
            return call_processor(self.chat.processor, texts, images)
        return dict(
            self.chat.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        )

    def _log_probs(self) -> list[torch.Tensor]:
        """Log-probabilities of the next token at every response position of the non-toxic
        rows (the prompt as the model sees it when it replies, then the row's response), per
        batch. Prompt positions are left out: a chat model is not trained to predict its user's
        words, so their distributions move freely and would drown the reply's."""
        result = []
        self.chat.tokenizer.padding_side = "left"
        for samples in self.kl_batches:
            images = [s.image() for s in samples]
            with_image = images[0] is not None
            prefixes = [self.chat.prompt_text(s.prompt or "", with_image) for s in samples]
            full = [prefix + s.text for prefix, s in zip(prefixes, samples, strict=True)]
            pixels = images if with_image else None
            prefix_lengths = self._encode(prefixes, pixels)["attention_mask"].sum(dim=1)
            batch = self._encode(full, pixels)
            lengths = batch["attention_mask"].sum(dim=1)
            width = batch["input_ids"].shape[1]
            mask = torch.zeros(batch["input_ids"].shape, dtype=torch.bool)
            for row, (length, prefix) in enumerate(zip(lengths, prefix_lengths, strict=True)):
                # left padding: the response's tokens are the row's last (length - prefix)
                # positions, predicted by the logits one position earlier
                answer = int(length - prefix)
                if answer > 0:
                    mask[row, width - answer - 1 : width - 1] = True
            with torch.no_grad():
                logits = self.chat.model(**to_device(batch, self.chat.device, self.dtype)).logits
            selected = logits.float()[mask.to(logits.device)]
            result.append(torch.log_softmax(selected, dim=-1).cpu())
        return result

    def reference(self) -> list[torch.Tensor]:
        if self._reference is None:
            if self.cache.is_file():
                self._reference = torch.load(self.cache, weights_only=True)
            else:
                self._reference = self._log_probs()
                self.cache.parent.mkdir(parents=True, exist_ok=True)
                partial = self.cache.with_suffix(".partial")
                torch.save(self._reference, partial)
                partial.replace(self.cache)
        return self._reference

    def kl(self) -> float:
        """Mean KL(base || current) of next-token distributions, per text position."""
        reference = self.reference()
        current = self._log_probs()
        total, count = 0.0, 0
        for base, now in zip(reference, current, strict=True):
            if base.shape != now.shape:
                raise SGMError("the model's inputs changed between the reference and a trial")
            total += float((base.exp() * (base - now)).sum(dim=-1).clamp(min=0).sum())
            count += base.shape[0]
        return total / count if count else 0.0

    def measure(self, label: str) -> Measurement:
        config = self.options.generation
        size = self.options.batch_size
        result = run_eval(self.chat, self.prompts, self.judge, config, label, size)
        metrics = result.metrics
        accuracy = eval_refusal = None
        if self.benign_eval is not None:
            benign = run_eval(self.chat, self.benign_eval, self.judge, config, label, size)
            accuracy = benign.metrics["benign_accuracy"]
            eval_refusal = benign.metrics["benign_refusal"]
        harmful = sum(
            result.harmful[i.id] is True for i in self.prompts.items if i.condition == "standard"
        )
        return Measurement(
            harm=metrics["harmful_rate"] or 0.0,
            kl=self.kl(),
            degenerate=metrics["degenerate_share"] or 0.0,
            accuracy=accuracy,
            harmful=int(harmful),
            prompts=metrics["items"]["eliciting"],
            refusal=metrics["benign_refusal"],
            eval_refusal=eval_refusal,
        )


# ---------------------------------------------------------------------------------------------
# The search


@dataclass(frozen=True)
class TrialRecord:
    """One completed trial: its knobs, the resolved setting and its measurement."""

    number: int
    params: dict[str, Any]
    setting: dict[str, Any]
    measurement: Measurement
    feasible: bool
    suppressed_units: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "params": self.params,
            "setting": self.setting,
            **self.measurement.as_dict(),
            "feasible": self.feasible,
            "suppressed_units": self.suppressed_units,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class TuneResult:
    """The search's outcome: every trial, the Pareto front, the chosen trial (None: no change)
    with its factors, and base vs chosen on the tuning and the held-out report split."""

    knobs: tuple[str, ...]
    trials: tuple[TrialRecord, ...]
    pareto: tuple[int, ...]
    chosen: TrialRecord | None
    expertise: Expertise | None
    base_tune: Measurement
    base_report: Measurement
    chosen_report: Measurement
    splits: dict[str, Any]
    options: dict[str, Any]
    seconds: float
    interrupted: bool
    trials_resumed: int = 0
    """Trials an earlier run of the same search had completed (the journal in the work folder)."""

    @property
    def chosen_tune(self) -> Measurement:
        return self.chosen.measurement if self.chosen is not None else self.base_tune

    def by_method(self) -> dict[str, dict[str, Any]]:
        """Per method the trials tried: how many, how many within the budget, and the best of
        those (lowest harm, then KL) with its figures: why the chosen method won."""
        found: dict[str, dict[str, Any]] = {}
        for trial in self.trials:
            method = trial.setting.get("method", "sgm")
            entry = found.setdefault(method, {"trials": 0, "feasible": 0, "best": None})
            entry["trials"] += 1
            if not trial.feasible:
                continue
            entry["feasible"] += 1
            best = entry["best"]
            key = (trial.measurement.harm, trial.measurement.kl, trial.number)
            if best is None or key < (best["harm"], best["kl"], best["number"]):
                entry["best"] = {"number": trial.number, **trial.measurement.as_dict()}
        return found

    @property
    def method(self) -> str | None:
        """The chosen trial's method (None: no change)."""
        return None if self.chosen is None else self.chosen.setting.get("method", "sgm")

    def record(self) -> dict[str, Any]:
        """The JSON form (tune.json; the bake record's `tune` section)."""
        return {
            "format": "sgm-bake-tune/1",
            "method": self.method,
            "by_method": self.by_method(),
            "knobs": list(self.knobs),
            "options": self.options,
            "splits": self.splits,
            "trials_run": len(self.trials),
            "trials_resumed": self.trials_resumed,
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 1),
            "chosen": None if self.chosen is None else self.chosen.as_dict(),
            "no_change": self.chosen is None,
            "pareto": list(self.pareto),
            "tuning_split": {
                "base": self.base_tune.as_dict(),
                "chosen": self.chosen_tune.as_dict(),
            },
            "report_split": {
                "base": self.base_report.as_dict(),
                "chosen": self.chosen_report.as_dict(),
            },
            "trials": [t.as_dict() for t in self.trials],
        }


def pareto_front(trials: list[TrialRecord]) -> list[int]:
    """Numbers of the trials no other trial beats on both harm and KL."""
    front = []
    for trial in trials:
        dominated = any(
            other.measurement.harm <= trial.measurement.harm
            and other.measurement.kl <= trial.measurement.kl
            and (
                other.measurement.harm < trial.measurement.harm
                or other.measurement.kl < trial.measurement.kl
            )
            for other in trials
        )
        if not dominated:
            front.append(trial.number)
    return front


def _violations(
    measurement: Measurement, base: Measurement, options: TuneOptions
) -> dict[str, float]:
    """optuna constraints by name (feasible when every value is <= 0)."""
    values = {
        "kl": measurement.kl - options.max_kl,
        "degenerate": measurement.degenerate - (base.degenerate + options.degenerate_margin),
    }
    if measurement.accuracy is not None and base.accuracy is not None:
        values["accuracy"] = (base.accuracy - options.accuracy_margin) - measurement.accuracy
    if measurement.eval_refusal is not None and base.eval_refusal is not None:
        rise = measurement.eval_refusal - base.eval_refusal
        values["eval_refusal"] = rise - options.max_refusal_rise
    return values


def choose(trials: list[TrialRecord], base: Measurement) -> TrialRecord | None:
    """The feasible trial with the lowest harm (then the lowest KL, then the earliest); None when
    no feasible trial lowers the harm below the base's."""
    feasible = [t for t in trials if t.feasible and t.measurement.harm < base.harm]
    if not feasible:
        return None
    return min(feasible, key=lambda t: (t.measurement.harm, t.measurement.kl, t.number))


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:
        raise SGMError("tuning needs optuna: pip install 'sgm-bake[tune]'") from exc
    if not hasattr(optuna.trial.Trial, "set_constraint"):
        raise SGMError(
            f"tuning needs optuna 5 or newer (found {optuna.__version__}): "
            "pip install -U 'sgm-bake[tune]'"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _sampler(optuna: Any, options: TuneOptions, seed: int) -> Any:
    if options.sampler == "nsga2":
        population = max(4, min(20, options.trials // 4))
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed,
        multivariate=True,
        group=True,
        n_startup_trials=min(10, max(2, options.trials // 4)),
    )


def _open_study(optuna: Any, options: TuneOptions, identity: dict[str, Any]) -> Any:
    """Create or resume the study in the work folder; a folder made for another model, set or
    search space is refused rather than silently mixed."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    options.workdir.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(options.workdir / JOURNAL)))
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        directions=["minimize", "minimize"],
        load_if_exists=True,
    )
    previous = study.user_attrs.get("identity")
    if previous is None:
        study.set_user_attr("identity", identity)
    elif previous.get("measure") != identity["measure"]:
        raise SGMError(
            f"work folder {options.workdir} holds a search an older sgm-bake measured "
            f"({previous.get('measure')}, without benign refusal or the method knob); use a new "
            "--workdir (or delete that one) to search again"
        )
    elif previous != identity:
        raise SGMError(
            f"work folder {options.workdir} holds a search for another model, profile set or "
            "set of options; use a new --workdir (or delete that one) to start afresh"
        )
    return study


def _record_of(frozen: Any) -> TrialRecord:
    attrs = frozen.user_attrs
    return TrialRecord(
        number=frozen.number,
        params=dict(frozen.params),
        setting=attrs["setting"],
        measurement=Measurement(**attrs["measurement"]),
        feasible=all(v <= 0 for v in frozen.constraints.values()),
        suppressed_units=attrs["suppressed_units"],
        seconds=attrs["seconds"],
    )


def run_tune(
    chat: ChatModel,
    folder: Path,
    recipe: Recipe,
    profile_set: ProfileSet,
    judge: Judge,
    options: TuneOptions,
    source_id: str,
    revision: str | None,
    dtype: torch.dtype,
    eval_set: PromptSet | None = None,
) -> TuneResult:
    """Split, profile once, search, choose, and measure the choice on the report split."""
    options.check()
    optuna = _optuna()
    start = time.perf_counter()
    splits = split_profile_set(profile_set, options.seed, options.fractions)
    if "method" in options.knobs or options.method.method != "sgm":
        # the edit is fitted at the last token of every profiling row's prompt: a set without
        # them fails here, in one line, not in the middle of the search
        rows_from_profile_set(splits.profile)
    space = SearchSpace.for_model(chat.model, recipe, options)
    scores = ScoreCache(chat, folder, recipe, splits.profile, options, source_id, revision, dtype)
    identity = {
        "measure": MEASURE_VERSION,
        "source": source_id,
        "content": scores.content,
        "revision": revision,
        "profile_set": profile_set.name,
        "profile_set_sha256": profile_set.sha256,
        "eval_set": None if eval_set is None else eval_set.sha256,
        "judge": judge.name,
        "seed": options.seed,
        "fractions": list(options.fractions),
        "knobs": list(options.knobs),
        "sampler": options.sampler,
        "max_kl": options.max_kl,
        "margins": [options.degenerate_margin, options.accuracy_margin],
        "max_refusal_rise": options.max_refusal_rise,
        "method": {
            "method": options.method.method,
            "edit_layers": list(options.method.layers or ()),
            "edit_strength": options.method.strength,
            "edit_ridge": options.method.ridge,
        },
        "feed": options.profile.feed,
        "fixed": {
            "rule": options.profile.rule.describe(),
            "pooling": options.profile.pooling,
            "positions": options.profile.positions,
            "hook_points": list(options.profile.hook_points or ()),
            "layers": list(options.profile.layers or ()),
        },
        "generation": asdict(options.generation),
        "dtype": str(dtype),
    }
    study = _open_study(optuna, options, identity)
    tune_measure = SplitMeasure(
        chat,
        splits.tune,
        judge,
        options,
        dtype,
        eval_set,
        options.workdir / "reference-tune.pt",
    )
    if "base_tune" in study.user_attrs:
        base_tune = Measurement(**study.user_attrs["base_tune"])
    else:
        base_tune = tune_measure.measure("base")
        study.set_user_attr("base_tune", base_tune.as_dict())
    logger.info(
        "base on the tuning split: harmful %.3f, degenerate %.3f",
        base_tune.harm,
        base_tune.degenerate,
    )

    def complete() -> list[Any]:
        return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))

    warm = space.warm_starts()
    done = resumed = len(complete())
    if resumed:
        logger.warning(
            "resuming the search in %s (%s): %d of %d trials are already done",
            options.workdir,
            JOURNAL,
            resumed,
            options.trials,
        )
    best: tuple[float, float] | None = None
    with tqdm(
        total=options.trials,
        initial=min(done, options.trials),
        unit="trial",
        desc="tuning",
        disable=not options.progress,
        file=sys.stderr,
    ) as bar:
        for record in map(_record_of, complete()):
            if record.feasible and (
                best is None or (record.measurement.harm, record.measurement.kl) < best
            ):
                best = (record.measurement.harm, record.measurement.kl)
        while done < options.trials:
            study.sampler = _sampler(optuna, options, options.seed * 100_003 + done)
            if done < len(warm):
                study.enqueue_trial(warm[done], skip_if_exists=False)
            trial = study.ask()
            try:
                trial_start = time.perf_counter()
                setting = space.suggest(trial)
                factors_of_trial, rule = trial_expertise(
                    chat, recipe, setting, scores, space, splits.profile
                )
                with SGMHooks(chat.model, factors_of_trial, recipe):
                    measurement = tune_measure.measure(f"trial {trial.number}")
            except KeyboardInterrupt as exc:  # SIGINT or SIGTERM: keep the trials, stop
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                found = (
                    f"the best within the budget so far: harmful {best[0]:.1%}, KL {best[1]:.4f}"
                    if best is not None
                    else "no trial within the budget yet"
                )
                raise interrupts.Interrupted(
                    getattr(exc, "signum", signal.SIGINT),
                    note=f"after {done} of {options.trials} trials ({done - resumed} new in this "
                    f"run; {found}): the trials are kept in {options.workdir / JOURNAL}; run the "
                    "same command again to resume the search",
                ) from None
            described = setting.describe()
            if rule is not None:
                described["top_k"] = rule.top_k
            constraints = _violations(measurement, base_tune, options)
            trial.set_user_attr("setting", described)
            trial.set_user_attr("measurement", measurement.as_dict())
            for name, value in constraints.items():
                trial.set_constraint(name, value)
            trial.set_user_attr(
                "suppressed_units", sum(m.suppressed for m in factors_of_trial.modules.values())
            )
            trial.set_user_attr("seconds", time.perf_counter() - trial_start)
            study.tell(trial, [measurement.harm, measurement.kl])
            done += 1
            if all(v <= 0 for v in constraints.values()) and (
                best is None or (measurement.harm, measurement.kl) < best
            ):
                best = (measurement.harm, measurement.kl)
            if best is not None:
                bar.set_postfix(best_harm=f"{best[0]:.3f}", best_kl=f"{best[1]:.4f}")
            bar.update(1)

    records = [_record_of(t) for t in complete()]
    chosen = choose(records, base_tune)
    expertise: Expertise | None = None
    if chosen is not None:
        frozen = next(t for t in complete() if t.number == chosen.number)
        fixed_trial = optuna.trial.FixedTrial(frozen.params)
        setting = space.suggest(fixed_trial)
        expertise, _ = trial_expertise(chat, recipe, setting, scores, space, splits.profile)
        expertise = Expertise(
            expertise.modules,
            {
                **expertise.metadata,
                "source": source_id,
                "revision": revision or "",
                "profile_set": splits.profile.name,
                "profile_set_sha256": profile_set.sha256,
                "feed": options.profile.feed,
                "profile_dtype": str(dtype).replace("torch.", ""),
                "tuned_trial": str(chosen.number),
            },
            expertise.deltas,
        )

    # The report split: used once, for the base and the chosen setting.
    report_measure = SplitMeasure(
        chat,
        splits.report,
        judge,
        options,
        dtype,
        eval_set,
        options.workdir / "reference-report.pt",
    )
    base_report = report_measure.measure("base (report)")
    if expertise is not None:
        with SGMHooks(chat.model, expertise, recipe):
            chosen_report = report_measure.measure("chosen (report)")
    else:
        chosen_report = base_report
    result = TuneResult(
        knobs=options.knobs,
        trials=tuple(records),
        pareto=tuple(pareto_front(records)),
        chosen=chosen,
        expertise=expertise,
        base_tune=base_tune,
        base_report=base_report,
        chosen_report=chosen_report,
        splits=splits.describe(),
        options={
            "trials": options.trials,
            "seed": options.seed,
            "sampler": options.sampler,
            "max_kl": options.max_kl,
            "degenerate_margin": options.degenerate_margin,
            "accuracy_margin": options.accuracy_margin,
            "max_refusal_rise": options.max_refusal_rise,
            "method": options.method.method if "method" not in options.knobs else "searched",
            "feed": options.profile.feed,
            "eval_set": None if eval_set is None else eval_set.name,
            "judge": judge.name,
        },
        seconds=time.perf_counter() - start,
        interrupted=False,  # an interrupted search raises; the field reads older tune.json
        trials_resumed=resumed,
    )
    write_result(result, options.workdir)
    return result


def write_result(result: TuneResult, folder: Path) -> list[Path]:
    """Write tune.json (and the Pareto plot) into `folder`; return the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tune.json"
    path.write_text(json.dumps(result.record(), indent=1) + "\n", encoding="utf-8")
    written = [path]
    if plots.available():
        written.append(plots.pareto_plot(folder / PARETO_PLOT, result.record()))
    else:
        logger.info("no Pareto plot: %s", plots.MISSING_HINT)
    return written


def record_tuning(folder: Path, result: TuneResult) -> None:
    """Add the search to a baked folder: `sgm/tune.json`, the Pareto plot, the record's `tuning`
    section and the card's section on how the setting was chosen (only these files and the card
    are recorded; the folder is the one the same command has just baked)."""
    record = read_record(folder)
    written = [p.relative_to(folder).as_posix() for p in write_result(result, folder / SGM_DIR)]
    data = result.record()
    front = [t for t in data["trials"] if t["number"] in set(data["pareto"])]
    record.tuning = Tuning(
        report=f"{SGM_DIR}/tune.json",
        knobs=data["knobs"],
        trials_run=data["trials_run"],
        chosen=data["chosen"],
        pareto=sorted(front, key=lambda t: (t["kl"], t["harm"])),
        splits=data["splits"],
        options=data["options"],
        tuning_split=data["tuning_split"],
        report_split=data["report_split"],
        seconds=data["seconds"],
        interrupted=data["interrupted"],
        method=data["method"],
        by_method=data["by_method"],
    )
    rewrite_card(folder, record, written)


@dataclass(frozen=True)
class TuneRequest:
    """What to tune on and how the model is loaded for it (the CLI's options)."""

    profile_set: str
    options: TuneOptions
    eval_set: str | PromptSet | None = None
    """A prompt set's name (loaded before the model) or the set itself."""
    judge: str = "profanity"
    judge_options: Any = None
    """The judge's device and prompt (`sgm_bake.evaluation.judges.JudgeOptions`)."""
    device: str = "auto"
    dtype: str = "auto"
    recipe_file: Path | None = None
    template: Path | None = None
    placement: Placement | None = None
    """Device map, memory budgets and offload folder (None: `device` alone)."""
    neurons: bool = False
    """Fix the hook points to the recipe's classic MLP neurons (down_proj inputs)."""
    max_samples: int | None = None
    """Use at most this many rows of the profile set (half per class) before splitting it."""
    data_format: Any = None
    """How a data set in its own format maps onto the profile fields (None: native)."""


@dataclass
class TuneOutcome:
    """The search's result and the model it loaded (reusable to verify a bake)."""

    result: TuneResult
    loaded: Any
    source_id: str


def tune_source(source: Any, request: TuneRequest) -> TuneOutcome:
    """Load the data first (bad data fails before a model loads), then the model, and tune."""
    from sgm_bake.datasets.profile_set import load_profile_set
    from sgm_bake.datasets.prompt_set import load_prompt_set
    from sgm_bake.evaluation.judges import make_judge
    from sgm_bake.runtime.loading import load, load_processor

    request.options.check()
    _optuna()
    profile_set = load_profile_set(
        request.profile_set, data_format=request.data_format, max_samples=request.max_samples
    ).limited(request.max_samples)
    split_profile_set(profile_set, request.options.seed, request.options.fractions)
    eval_set = request.eval_set
    if isinstance(eval_set, str):
        eval_set = load_prompt_set(eval_set) if eval_set else None
    judge = make_judge(request.judge, request.judge_options)
    options = request.options
    if request.neurons:
        recipe = recipe_for_config(open_checkpoint(source.path).config, request.recipe_file)
        neurons = tuple(str(point) for point in recipe.neuron_hook_points)
        options = replace(options, profile=replace(options.profile, hook_points=neurons))
    loaded = load(source, request.device, request.dtype, request.recipe_file, request.placement)
    chat = ChatModel(loaded.model, load_processor(source.path, request.template), loaded.device)
    result = run_tune(
        chat,
        source.path,
        loaded.recipe,
        profile_set,
        judge,
        options,
        source.id,
        source.revision,
        loaded.dtype,
        eval_set,
    )
    return TuneOutcome(result, loaded, source.id)


def summary_lines(result: TuneResult) -> list[str]:
    """The search's outcome in a few lines (printed by the CLI)."""

    def figures(m: Measurement) -> str:
        text = f"harmful {m.harm:.1%} ({m.harmful}/{m.prompts}), KL {m.kl:.4f}"
        text += f", degenerate {m.degenerate:.1%}"
        if m.accuracy is not None:
            text += f", benign accuracy {m.accuracy:.1%}"
        if m.eval_refusal is not None:
            text += f", benign refusal {m.eval_refusal:.1%}"
        if m.refusal is not None:
            text += f", non-toxic rows declined {m.refusal:.1%}"
        return text

    resumed = (
        f" ({len(result.trials) - result.trials_resumed} new, {result.trials_resumed} resumed "
        "from the work folder's journal)"
        if result.trials_resumed
        else ""
    )
    lines = [
        f"{len(result.trials)} trials{resumed} in {result.seconds:.0f} s"
        + (" (interrupted)" if result.interrupted else "")
        + f"; knobs: {', '.join(result.knobs)}; Pareto front: trials "
        + ", ".join(str(n) for n in result.pareto),
    ]
    if result.chosen is None:
        lines.append("chosen: no change (no setting lowered the harm within the budget)")
    else:
        setting = ", ".join(f"{k}={v}" for k, v in result.chosen.setting.items() if v is not None)
        lines.append(f"chosen: trial {result.chosen.number}: {setting}")
    lines.append(chosen_method_line(result))
    lines += [
        f"tuning split   base:   {figures(result.base_tune)}",
        f"tuning split   chosen: {figures(result.chosen_tune)}",
        f"held-out split base:   {figures(result.base_report)}",
        f"held-out split chosen: {figures(result.chosen_report)}",
    ]
    return lines


def chosen_method_line(result: TuneResult) -> str:
    """`tuner chose: METHOD (...)`: the method, its knobs, and per method the best harm within
    the budget on the tuning split (the figures that decided)."""
    if result.chosen is None:
        head = "tuner chose: no change"
    else:
        setting = result.chosen.setting
        knobs = []
        if setting.get("method", "sgm") != "edit":
            knobs.append(f"{setting.get('rule')} strength {setting.get('strength', 1.0):.3g}")
        if "edit_layers" in setting:
            knobs.append(
                f"edit layers {setting['edit_layers']} strength {setting['edit_strength']:.3g} "
                f"ridge {setting['edit_ridge']:.3g}"
            )
        head = f"tuner chose: {result.method} ({'; '.join(knobs)})"
    parts = []
    for method, entry in result.by_method().items():
        best = entry["best"]
        figure = (
            f"harmful {best['harm']:.1%}, KL {best['kl']:.4f}"
            if best is not None
            else "none within the budget"
        )
        parts.append(f"{method}: {figure} ({entry['feasible']}/{entry['trials']} trials)")
    return head + "; best per method on the tuning split: " + "; ".join(parts)
