"""The offline demo on a built-in model organism: profile, bake, verify, and evaluate base, ECSO,
the baked model (SGM, or the method the tuner chose) and it with ECSO on the organism's prompt
set. The CLI's `demo` parses its options, calls `run_demo` and prints the table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgm_bake.core.expertise import save_expertise
from sgm_bake.core.rules import RuleOptions
from sgm_bake.datasets.prompt_set import load_prompt_set
from sgm_bake.errors import SGMError
from sgm_bake.evaluation.conditions import EvalSettings, Variant, evaluate_variants, write_report
from sgm_bake.evaluation.ecso import templates_for
from sgm_bake.evaluation.judges import make_judge
from sgm_bake.io.atomic import atomic_folder, check_target
from sgm_bake.options import ORGANISM_ANCHORS, ORGANISM_EVAL_SET
from sgm_bake.organism.checks import tuning_checks
from sgm_bake.pipeline.bake import BakeOptions, bake
from sgm_bake.pipeline.decision import MethodOptions
from sgm_bake.pipeline.profile import ProfileOptions
from sgm_bake.pipeline.run import Messages, ProfileRequest, profile_source, verify_output
from sgm_bake.pipeline.tune import (
    TuneOptions,
    TuneOutcome,
    TuneRequest,
    record_tuning,
    summary_lines,
    tune_source,
)
from sgm_bake.publish.refresh import record_evaluation
from sgm_bake.record import BAKED_ECSO_LABEL, BAKED_LABEL, SGM_DIR
from sgm_bake.record.summary import expertise_counts, layer_rows, layer_table
from sgm_bake.runtime.chat import ChatModel, GenerationConfig
from sgm_bake.runtime.loading import CPU, load_chat, load_processor, resolve_model_source

DEMO_PROFILE_SET = "builtin:organism"
DEMO_PROMPT_SET = ORGANISM_EVAL_SET
DEMO_KNOBS = ("method", "edit_layers", "edit_strength", "rule", "strength")
"""What `demo --tune` searches: the method, the edit's layers and strength, SGM's rule and
strength (a few trials compare the three methods; see `tune` for the full search)."""


@dataclass(frozen=True)
class DemoRequest:
    """The demo's choices: which organism, the rule and where pooling looks, the judge."""

    workdir: Path
    organism: str
    rule: RuleOptions
    positions: str
    judge: str
    overwrite: bool = False
    judge_options: Any = None
    """The judge's run options (`evaluation.judges.JudgeOptions`; None: its defaults)."""
    bake: BakeOptions = field(default_factory=BakeOptions)
    """Progress, command line and settings for the bake record."""
    tune_trials: int | None = None
    """Let the tuner choose the method and its knobs in this many trials (None: profile once
    with `rule`)."""


@dataclass
class DemoOutcome:
    """The baked folder, its verification, and (when it passed) the evaluation results."""

    baked: Path
    verification: Any
    results: list[Any] = field(default_factory=list)
    tuned: Any = None
    """The search's result (`pipeline.tune.TuneResult`) when the tuner chose the setting."""

    @property
    def report(self) -> Path:
        return self.baked / SGM_DIR / "eval.json"


def run_demo(request: DemoRequest, messages: Messages) -> DemoOutcome:
    """Profile the organism, bake it into WORKDIR/baked, verify, then evaluate the four variants
    and record the figures in the baked folder's record, chart and card. A failed verification
    returns before the evaluation."""
    progress, say = request.bake.progress, messages.say
    judge = make_judge(request.judge, request.judge_options)
    prompts = load_prompt_set(DEMO_PROMPT_SET)
    check_target(request.workdir, None, request.overwrite)
    source = resolve_model_source(request.organism, None, progress)
    profile = ProfileRequest(
        profile_set=DEMO_PROFILE_SET,
        placement=CPU,
        dtype="float32",
        options=ProfileOptions(
            positions=request.positions,  # type: ignore[arg-type]
            progress=progress,
            rule=request.rule,
        ),
    )
    tuned = None
    if request.tune_trials is not None:
        say(
            f"1/4 tuning {source.id} on {DEMO_PROFILE_SET}: {request.tune_trials} trials of "
            "SGM, the edit or both"
        )
        searched = tune_demo(source, request, profile.options)
        tuned, loaded, recipe = searched.result, searched.loaded, searched.loaded.recipe
        for line in summary_lines(tuned):
            say(line)
        if tuned.expertise is None:
            raise SGMError(
                f"the tuner found no setting that lowers the harm within the budget in "
                f"{request.tune_trials} trials; see {tune_folder(request.workdir) / 'tune.json'} "
                "(raise --trials)"
            )
        expertise = tuned.expertise
    else:
        say(f"1/4 profiling {source.id} on {DEMO_PROFILE_SET}")
        outcome = profile_source(source, profile)
        if outcome.expertise is None:  # only ranks other than 0 of a torchrun job get none
            raise SGMError("the demo runs in one process; start it without torchrun")
        expertise, loaded, recipe = outcome.expertise, outcome.loaded, outcome.recipe
    if expertise.modules:
        for line in layer_table(layer_rows(expertise_counts(expertise, recipe))):
            say(line)
    with atomic_folder(request.workdir, request.overwrite) as staging:
        save_expertise(expertise, staging / "expertise.safetensors")
    baked = request.workdir.resolve() / "baked"
    say("2/4 baking")
    bake(source, baked, expertise, request.bake)
    if tuned is not None:
        record_tuning(baked, tuned)
    say("3/4 verifying")
    # The profiling model stays the base: verification loads its own copy.
    report = verify_output(baked, source.path, "float32", CPU)
    say(f"verify: {report.summary()}")
    result = DemoOutcome(baked, report, tuned=tuned)
    if not report.passed:
        return result
    method = "SGM" if tuned is None else f"the tuned {tuned.method}"
    say(
        f"4/4 evaluating: base, ECSO, {method} baked (row {BAKED_LABEL}), and baked + ECSO "
        f"(row {BAKED_ECSO_LABEL})"
    )
    base_chat = ChatModel(loaded.model, load_processor(source.path), loaded.device)
    baked_chat, _ = load_chat(resolve_model_source(str(baked)), CPU, "float32")
    templates = templates_for(source.path, recipe.model_type)
    settings = EvalSettings(GenerationConfig(), 8, progress, templates)
    variants = [
        Variant("base", base_chat, ecso_label="ecso"),
        Variant(BAKED_LABEL, baked_chat, ecso_label=BAKED_ECSO_LABEL),
    ]
    result.results = evaluate_variants(variants, prompts, judge, settings, base_chat)
    data = write_report(
        result.report,
        prompts,
        judge,
        settings,
        result.results,
        {"id": source.id, **(tuned_setting(tuned) or request.rule.describe())},
    )
    record_evaluation(baked, f"{SGM_DIR}/eval.json", data)
    return result


def tune_demo(source: Any, request: DemoRequest, profile: ProfileOptions) -> TuneOutcome:
    """The tuner on the organism's profile set with the method knob, a small trial budget and
    its study beside WORKDIR (resumable); benign accuracy and benign refusal are kept within
    their margins on the organism world's checks (scene questions and edgy requests, not
    evaluation items)."""
    assert request.tune_trials is not None
    options = TuneOptions(
        workdir=tune_folder(request.workdir),
        trials=request.tune_trials,
        knobs=DEMO_KNOBS,
        profile=profile,
        method=MethodOptions(diagnose=False, anchors=ORGANISM_ANCHORS),
        generation=GenerationConfig(max_new_tokens=16),
        batch_size=16,
        progress=request.bake.progress,
    )
    tune_request = TuneRequest(
        profile_set=DEMO_PROFILE_SET,
        options=options,
        eval_set=tuning_checks(),
        judge=request.judge,
        judge_options=request.judge_options,
        placement=CPU,
        dtype="float32",
    )
    return tune_source(source, tune_request)


def tuned_setting(tuned: Any) -> dict[str, Any] | None:
    """The chosen setting as the evaluation report's model description (None: not tuned)."""
    if tuned is None or tuned.chosen is None:
        return None
    return {"tuned_trial": tuned.chosen.number, **tuned.chosen.setting}


def tune_folder(workdir: Path) -> Path:
    """Where `demo --tune` keeps its study: beside WORKDIR (WORKDIR itself is replaced as one
    folder when the bake completes), as `sgm-bake MODEL OUT --tune` keeps OUT-tune."""
    workdir = workdir.expanduser().resolve()
    return workdir.with_name(f"{workdir.name}-tune")
