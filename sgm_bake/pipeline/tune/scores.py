"""Scores and factors: the AUROC of every candidate module, profiled once per capture variant
(`ScoreCache`), and what a setting makes of them (SGM's factors from the stored AUROC, the edit's
deltas fitted on the profiling split): a trial re-profiles nothing."""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass, replace

import torch

from sgm_bake.core.capture import Pooling
from sgm_bake.core.expertise import Expertise, ModuleExpertise
from sgm_bake.core.hooks import SGMHooks
from sgm_bake.core.recipes import HookPoint, Recipe
from sgm_bake.core.rules import RuleOptions, auroc, factors
from sgm_bake.datasets.profile_set import ProfileSet
from sgm_bake.errors import SGMError
from sgm_bake.io.response_store import ResponseStore
from sgm_bake.io.source import content_key
from sgm_bake.pipeline.decision import fit_edit, rows_from_profile_set
from sgm_bake.pipeline.profile import (
    Inputs,
    Positions,
    capture_responses,
    check_row_lengths,
    fingerprint,
    profile_targets,
)
from sgm_bake.pipeline.tune.options import TuneOptions
from sgm_bake.pipeline.tune.space import SearchSpace, Setting, hook_sets
from sgm_bake.runtime.chat import ChatModel
from sgm_bake.runtime.loading import LoadedModel


@dataclass(frozen=True)
class ScoredModule:
    """One profiled module and its units' AUROC on the profiling split."""

    name: str
    layer: int
    point: HookPoint
    auroc: torch.Tensor


class ScoreCache:
    """AUROC per candidate module for each (positions, pooling), profiled on first use.

    Responses of all candidate hook points of one side (outputs, inputs) are captured in one pass
    into a response store under the work folder, which a resumed run reuses."""

    def __init__(
        self,
        chat: ChatModel,
        loaded: LoadedModel,
        profile_split: ProfileSet,
        options: TuneOptions,
    ) -> None:
        self.chat = chat
        self.folder = loaded.folder
        self.recipe = loaded.recipe
        self.profile_split = profile_split
        self.options = options
        self.source_id = loaded.source.id
        self.revision = loaded.source.revision
        self.content = content_key(self.folder, self.revision)
        self.dtype = loaded.dtype
        candidates = {p for points in hook_sets(self.recipe).values() for p in points}
        self.points = sorted(candidates, key=str)
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
                    self.recipe,  # stacked experts are captured through it
                )
                for target in targets:
                    responses = torch.from_numpy(store.responses(target.name).copy())
                    try:
                        score = auroc(responses, labels).to(torch.float32)
                        if target.shape:  # stacked experts: [experts, units], as profile keeps
                            score = score.reshape(target.shape)
                    except ValueError as exc:
                        raise SGMError(f"cannot score module {target.name}: {exc}") from exc
                    scored.append(ScoredModule(target.name, target.layer, target.point, score))
            finally:
                store.close()
        self._scores[key] = scored
        return scored


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


class EditUnfit(Exception):
    """The edit could not be fitted with a trial's knobs (the search marks the trial over budget
    and goes on: one bad draw of the edit must not end a search that also covers SGM)."""


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
            try:
                fitted = fit_edit(chat, rows_from_profile_set(fit_rows), setting.edit, recipe)
            except (SGMError, ValueError) as exc:
                raise EditUnfit(str(exc)) from exc
        deltas = {delta.module: delta for delta in fitted.deltas}
        metadata["edit"] = json.dumps(fitted.describe(), sort_keys=True)
    return Expertise(modules, metadata, deltas), rule
