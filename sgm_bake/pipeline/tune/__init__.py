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

The package, by idea: `options` (what is asked), `splits` (the three parts), `space` (the knobs
and how a trial draws them), `scores` (the AUROC cache and a setting's factors), `measure` (one
split's figures), `objectives` (one scorer per figure: objective or budget), `result` (trials,
front, choice and their JSON form) and `study` (the optuna search and the step from a source).
"""

from __future__ import annotations

from sgm_bake.pipeline.tune.measure import (
    Measurement,
    SplitMeasure,
)
from sgm_bake.pipeline.tune.objectives import (
    BenignAccuracy,
    BenignRefusalRise,
    DegenerateShare,
    Harm,
    KLDivergence,
    Scorer,
    objectives,
    ranking,
    scorers,
    violations,
)
from sgm_bake.pipeline.tune.options import (
    DEFAULT_ACCURACY_MARGIN,
    DEFAULT_DEGENERATE_MARGIN,
    DEFAULT_FRACTIONS,
    DEFAULT_KNOBS,
    DEFAULT_MAX_KL,
    DEFAULT_MAX_REFUSAL_RISE,
    EDIT_KNOBS,
    KNOBS,
    SAMPLERS,
    SGM_KNOBS,
    Sampler,
    TuneOptions,
    TuneRequest,
)
from sgm_bake.pipeline.tune.result import (
    PARETO_PLOT,
    TrialRecord,
    TuneResult,
    choose,
    chosen_method_line,
    pareto_front,
    record_tuning,
    summary_lines,
    write_result,
)
from sgm_bake.pipeline.tune.scores import (
    ScoreCache,
    ScoredModule,
    setting_expertise,
    trial_expertise,
)
from sgm_bake.pipeline.tune.space import (
    DAMP_ALPHA_RANGE,
    EDIT_RIDGE_RANGE,
    EDIT_STRENGTH_RANGE,
    HOOK_SET_DEFAULT,
    HOOK_SET_NEURONS,
    STRENGTH_RANGE,
    THRESHOLD_RANGE,
    TOP_K_SHARE_RANGE,
    SearchSpace,
    Setting,
    edit_layer_sets,
    hook_sets,
)
from sgm_bake.pipeline.tune.splits import (
    SPLIT_MINIMUM,
    Splits,
    minimum_rows_per_class,
    split_profile_set,
)
from sgm_bake.pipeline.tune.study import (
    JOURNAL,
    MEASURE_VERSION,
    STUDY_NAME,
    TuneOutcome,
    open_study,
    require_optuna,
    run_tune,
    study_identity,
    tune_source,
)

__all__ = [
    "DAMP_ALPHA_RANGE",
    "DEFAULT_ACCURACY_MARGIN",
    "DEFAULT_DEGENERATE_MARGIN",
    "DEFAULT_FRACTIONS",
    "DEFAULT_KNOBS",
    "DEFAULT_MAX_KL",
    "DEFAULT_MAX_REFUSAL_RISE",
    "EDIT_KNOBS",
    "EDIT_RIDGE_RANGE",
    "EDIT_STRENGTH_RANGE",
    "HOOK_SET_DEFAULT",
    "HOOK_SET_NEURONS",
    "JOURNAL",
    "KNOBS",
    "MEASURE_VERSION",
    "PARETO_PLOT",
    "SAMPLERS",
    "SGM_KNOBS",
    "SPLIT_MINIMUM",
    "STRENGTH_RANGE",
    "STUDY_NAME",
    "THRESHOLD_RANGE",
    "TOP_K_SHARE_RANGE",
    "BenignAccuracy",
    "BenignRefusalRise",
    "DegenerateShare",
    "Harm",
    "KLDivergence",
    "Measurement",
    "Sampler",
    "ScoreCache",
    "ScoredModule",
    "Scorer",
    "SearchSpace",
    "Setting",
    "SplitMeasure",
    "Splits",
    "TrialRecord",
    "TuneOptions",
    "TuneOutcome",
    "TuneRequest",
    "TuneResult",
    "choose",
    "chosen_method_line",
    "edit_layer_sets",
    "hook_sets",
    "minimum_rows_per_class",
    "objectives",
    "open_study",
    "pareto_front",
    "ranking",
    "record_tuning",
    "require_optuna",
    "run_tune",
    "scorers",
    "setting_expertise",
    "split_profile_set",
    "study_identity",
    "summary_lines",
    "trial_expertise",
    "tune_source",
    "violations",
    "write_result",
]
