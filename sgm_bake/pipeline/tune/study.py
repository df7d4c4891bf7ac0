"""The study: an optuna search over the space, resumable from its journal in the work folder,
each trial measured on the tuning split with its factors as hooks; then the choice, measured once
on the report split (`run_tune`), and the whole step from a model source (`tune_source`)."""

from __future__ import annotations

import logging
import signal
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from sgm_bake.core.expertise import Expertise
from sgm_bake.core.hooks import SGMHooks
from sgm_bake.datasets.profile_set import ProfileSet
from sgm_bake.datasets.prompt_set import PromptSet
from sgm_bake.errors import SGMError
from sgm_bake.evaluation.judges import Judge
from sgm_bake.io import interrupts
from sgm_bake.pipeline.decision import rows_from_profile_set
from sgm_bake.pipeline.tune.measure import Measurement, SplitMeasure
from sgm_bake.pipeline.tune.objectives import objectives, ranking, violations
from sgm_bake.pipeline.tune.options import EDIT_KNOBS, TuneOptions, TuneRequest
from sgm_bake.pipeline.tune.result import (
    TrialRecord,
    TuneResult,
    choose,
    pareto_front,
    write_result,
)
from sgm_bake.pipeline.tune.scores import EditUnfit, ScoreCache, trial_expertise
from sgm_bake.pipeline.tune.space import SearchSpace
from sgm_bake.pipeline.tune.splits import split_profile_set
from sgm_bake.runtime.chat import ChatModel
from sgm_bake.runtime.loading import LoadedModel, OpenedSource

logger = logging.getLogger(__name__)

STUDY_NAME = "sgm-tune"
JOURNAL = "study.journal"
# Part of a study's identity: a work folder made by a tuner that measured differently is refused.
MEASURE_VERSION = "tune-measure/2"
"""2: trials measure benign refusal and may use the edit (the method knob)."""


def require_optuna() -> Any:
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


def open_study(optuna: Any, options: TuneOptions, identity: dict[str, Any]) -> Any:
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
        error=attrs.get("error"),
    )


def study_identity(
    options: TuneOptions,
    scores: ScoreCache,
    profile_set: ProfileSet,
    eval_set: PromptSet | None,
    judge: Judge,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """What makes two searches the same search: the model (its content), the data, the judge,
    the options and the measure's version. A resumed study must match it."""
    return {
        "measure": MEASURE_VERSION,
        "source": scores.source_id,
        "content": scores.content,
        "revision": scores.revision,
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
            "edit_rank": options.method.rank,
            "edit_replies": options.method.replies,
            "edit_anchors": options.method.anchors,
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


def edit_unavailable(profile_split: ProfileSet, space: SearchSpace) -> str | None:
    """Why the edit cannot be fitted in this search (None when it can)."""
    if any(not s.prompt or not s.text for s in profile_split.samples):
        return (
            "the profile set's rows lack the prompts and replies the edit is fitted on (give "
            "every row a prompt and a response to let the tuner choose the method)"
        )
    if not space.edit_layer_sets:
        return (
            "this model's layers at half and three quarters of its depth have no dense MLP "
            "output projection for the edit (stacked experts only)"
        )
    return None


def run_tune(
    chat: ChatModel,
    loaded: LoadedModel,
    profile_set: ProfileSet,
    judge: Judge,
    options: TuneOptions,
    eval_set: PromptSet | None = None,
) -> TuneResult:
    """Split, profile once, search, choose, and measure the choice on the report split (`chat`
    generates with `loaded`'s model, which brings its source, recipe and dtype)."""
    recipe, dtype = loaded.recipe, loaded.dtype
    options.check()
    optuna = require_optuna()
    start = time.perf_counter()
    splits = split_profile_set(profile_set, options.seed, options.fractions)
    space = SearchSpace.for_model(chat.model, recipe, options)
    if options.method_auto and "method" in options.knobs:
        # the default search adds the method; where the edit cannot be fitted it keeps to SGM
        # and says why, instead of failing a search nobody asked to include the edit
        reason = edit_unavailable(splits.profile, space)
        if reason:
            logger.warning(f"{reason}: the search keeps to SGM's knobs")
            options = replace(
                options, knobs=tuple(k for k in options.knobs if k not in ("method", *EDIT_KNOBS))
            )
            space = SearchSpace.for_model(chat.model, recipe, options)
    if "method" in options.knobs or options.method.method != "sgm":
        # the edit is fitted at the last token of every profiling row's prompt: a set without
        # them fails here, in one line, not in the middle of the search
        rows_from_profile_set(splits.profile)
        if "edit_layers" in options.knobs and not space.edit_layer_sets:
            raise SGMError(
                "no layer at half or three quarters of this model's depth has a dense MLP output "
                "projection for the edit (stacked experts only); give --edit-layers or search "
                "SGM's knobs alone"
            )
    scores = ScoreCache(chat, loaded, splits.profile, options)
    identity = study_identity(options, scores, profile_set, eval_set, judge, dtype)
    study = open_study(optuna, options, identity)
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
        study.set_user_attr("base_tune", base_tune.to_dict())
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
    best: tuple[float, float, float] | None = None
    with tqdm(
        total=options.trials,
        initial=min(done, options.trials),
        unit="trial",
        desc="tuning",
        disable=not options.progress,
        file=sys.stderr,
    ) as bar:
        for record in map(_record_of, complete()):
            if record.feasible and (best is None or ranking(record.measurement) < best):
                best = ranking(record.measurement)
        while done < options.trials:
            study.sampler = _sampler(optuna, options, options.seed * 100_003 + done)
            if done < len(warm):
                study.enqueue_trial(warm[done], skip_if_exists=False)
            trial = study.ask()
            try:
                trial_start = time.perf_counter()
                setting = space.suggest(trial)
                unfit = None
                try:
                    factors_of_trial, rule = trial_expertise(
                        chat, recipe, setting, scores, space, splits.profile
                    )
                except EditUnfit as exc:
                    # over budget, kept as a complete trial so a resumed search draws the same
                    unfit = str(exc)
                    logger.warning(f"trial {trial.number}: the edit could not be fitted: {unfit}")
                    factors_of_trial, rule, measurement = Expertise({}), None, base_tune
                if unfit is None:
                    with SGMHooks(chat.model, factors_of_trial, recipe):
                        measurement = tune_measure.measure(f"trial {trial.number}")
            except KeyboardInterrupt as exc:  # SIGINT or SIGTERM: keep the trials, stop
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                found = (
                    f"the best within the budget so far: harmful {best[0]:.1%}, KL {best[2]:.4f}"
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
            constraints = violations(measurement, base_tune, options)
            if unfit is not None:
                constraints["edit_fit"] = 1.0
                trial.set_user_attr("error", unfit)
            trial.set_user_attr("setting", described)
            trial.set_user_attr("measurement", measurement.to_dict())
            for name, value in constraints.items():
                trial.set_constraint(name, value)
            trial.set_user_attr(
                "suppressed_units", sum(m.suppressed for m in factors_of_trial.modules.values())
            )
            trial.set_user_attr("seconds", time.perf_counter() - trial_start)
            study.tell(trial, list(objectives(measurement)))
            done += 1
            if all(v <= 0 for v in constraints.values()) and (
                best is None or ranking(measurement) < best
            ):
                best = ranking(measurement)
            if best is not None:
                bar.set_postfix(best_harm=f"{best[0]:.3f}", best_kl=f"{best[2]:.4f}")
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
                "source": loaded.source.id,
                "revision": loaded.source.revision or "",
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


@dataclass
class TuneOutcome:
    """The search's result and the model it loaded (reusable to verify a bake)."""

    result: TuneResult
    loaded: Any
    source_id: str


def tune_source(
    source: Any, request: TuneRequest, opened: OpenedSource | None = None
) -> TuneOutcome:
    """Load the data first (bad data fails before a model loads), then the model, and tune
    (`opened`: the source's checkpoint and recipe as the calling run already read them)."""
    from sgm_bake.datasets.profile_set import load_profile_set
    from sgm_bake.datasets.prompt_set import load_prompt_set
    from sgm_bake.evaluation.judges import make_judge
    from sgm_bake.runtime.loading import load, load_processor, open_source

    request.options.check()
    require_optuna()
    profile_set = load_profile_set(
        request.profile_set, data_format=request.data_format, max_samples=request.max_samples
    ).limited(request.max_samples)
    split_profile_set(profile_set, request.options.seed, request.options.fractions)
    eval_set = request.eval_set
    if isinstance(eval_set, str):
        eval_set = load_prompt_set(eval_set) if eval_set else None
    judge = make_judge(request.judge, request.judge_options)
    options = request.options
    if opened is None:
        opened = open_source(source, request.recipe_file)
    if request.neurons:
        neurons = tuple(str(point) for point in opened.recipe.neuron_hook_points)
        options = replace(options, profile=replace(options.profile, hook_points=neurons))
    loaded = load(source, request.placement, request.dtype, request.recipe_file, opened.recipe)
    chat = ChatModel(loaded.model, load_processor(source.path, request.template), loaded.device)
    result = run_tune(chat, loaded, profile_set, judge, options, eval_set)
    return TuneOutcome(result, loaded, source.id)
