"""The offline demo on a built-in model organism: profile, bake, verify, and evaluate base, ECSO,
SGM (baked) and SGM* (baked + ECSO) on the organism's prompt set. The CLI's `demo` parses its
options, calls `run_demo` and prints the table."""

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
from sgm_bake.pipeline.bake import BakeOptions, bake
from sgm_bake.pipeline.profile import ProfileOptions
from sgm_bake.pipeline.run import Messages, ProfileRequest, profile_source, verify_output
from sgm_bake.publish.refresh import record_evaluation
from sgm_bake.record import SGM_DIR
from sgm_bake.record.summary import expertise_counts, layer_rows, layer_table
from sgm_bake.runtime.chat import ChatModel, GenerationConfig
from sgm_bake.runtime.loading import load_chat, load_processor, resolve_model_source

DEMO_PROFILE_SET = "builtin:organism"
DEMO_PROMPT_SET = "builtin:mmtoxicqa-organism-v1"


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


@dataclass
class DemoOutcome:
    """The baked folder, its verification, and (when it passed) the evaluation results."""

    baked: Path
    verification: Any
    results: list[Any] = field(default_factory=list)

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
        device="cpu",
        dtype="float32",
        options=ProfileOptions(
            positions=request.positions,  # type: ignore[arg-type]
            progress=progress,
            rule=request.rule,
        ),
    )
    say(f"1/4 profiling {source.id} on {DEMO_PROFILE_SET}")
    outcome = profile_source(source, profile)
    expertise = outcome.expertise
    if expertise is None:  # only ranks other than 0 of a torchrun job get none
        raise SGMError("the demo runs in one process; start it without torchrun")
    for line in layer_table(layer_rows(expertise_counts(expertise, outcome.recipe))):
        say(line)
    with atomic_folder(request.workdir, request.overwrite) as staging:
        save_expertise(expertise, staging / "expertise.safetensors")
    baked = request.workdir.resolve() / "baked"
    say("2/4 baking")
    bake(source, baked, expertise, request.bake)
    say("3/4 verifying")
    # The profiling model stays the base: verification loads its own copy.
    report = verify_output(baked, source.path, "float32", "cpu")
    say(f"verify: {report.summary()}")
    result = DemoOutcome(baked, report)
    if not report.passed:
        return result
    say("4/4 evaluating: base, ECSO, SGM (baked), SGM* (baked + ECSO)")
    base_chat = ChatModel(outcome.loaded.model, load_processor(source.path), outcome.loaded.device)
    baked_chat, _ = load_chat(resolve_model_source(str(baked)), "cpu", "float32")
    templates = templates_for(source.path, outcome.recipe.model_type)
    settings = EvalSettings(GenerationConfig(), 8, progress, templates)
    variants = [
        Variant("base", base_chat, ecso_label="ecso"),
        Variant("sgm-baked", baked_chat, ecso_label="sgm*"),
    ]
    result.results = evaluate_variants(variants, prompts, judge, settings, base_chat)
    data = write_report(
        result.report,
        prompts,
        judge,
        settings,
        result.results,
        {"id": source.id, **request.rule.describe()},
    )
    record_evaluation(baked, f"{SGM_DIR}/eval.json", data)
    return result
