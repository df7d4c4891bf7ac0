"""The search space: the knobs' ranges for one model (`SearchSpace`), one point of it
(`Setting`), how an optuna trial draws one (define-by-run, conditional knobs) and the known
settings tried first."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sgm_bake.core.capture import POOLINGS, Pooling
from sgm_bake.core.recipes import HookPoint, Recipe
from sgm_bake.core.rules import RULES, RuleOptions
from sgm_bake.errors import SGMError
from sgm_bake.pipeline.decision import (
    METHODS,
    DecisionRow,
    EditOptions,
    MethodOptions,
    writes_into,
)
from sgm_bake.pipeline.profile import Positions, ProfileOptions
from sgm_bake.pipeline.tune.options import TuneOptions

HOOK_SET_DEFAULT = "default"
HOOK_SET_NEURONS = "neurons"
STRENGTH_RANGE = (0.25, 3.0)
THRESHOLD_RANGE = (0.3, 0.9)
TOP_K_SHARE_RANGE = (0.0005, 0.25)
DAMP_ALPHA_RANGE = (0.0, 0.9)
EDIT_STRENGTH_RANGE = (0.5, 4.0)
EDIT_RIDGE_RANGE = (1e-3, 1e-1)


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
                "edit_rank": self.edit.rank,
                "edit_replies": self.edit.replies,
                "edit_anchors": len(self.edit.anchors),
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
    anchors: tuple[DecisionRow, ...] = ()
    """The edit's anchors, loaded once for every trial."""

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
            {
                name: layers
                for name, layers in edit_layer_sets(total).items()
                if writes_into(model, recipe, layers)
            },
            options.batch_size,
            (
                options.method.anchor_rows()
                if "method" in options.knobs or options.method.method != "sgm"
                else ()
            ),
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
        return EditOptions(
            tuple(layers),
            strength,
            ridge,
            self.batch_size,
            False,
            fixed.rank,
            fixed.replies,
            self.anchors,
        )

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
        edit: dict[str, Any] = {"edit_strength": 1.0, "edit_ridge": 1e-2}
        if self.edit_layer_sets:  # none when the edit's layers are fixed and the sets unwritable
            edit["edit_layers"] = list(self.edit_layer_sets)[-1]
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
