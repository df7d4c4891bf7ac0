"""The tuner against fixed settings, on both model organisms.

For `organism` (toxicity implanted in 64 MLP units per layer) and `organism-plain` (toxicity
learned in ordinary one-stage training), compares on the evaluation set
`builtin:mmtoxicqa-organism-v1` (never used for profiling or tuning):

- base: the model as is;
- default rule: the one-command defaults (feed dialogue, max pooling, all positions, aura 0.5),
  profiled on the whole of `builtin:organism`;
- SGM code settings: `--feed response --pooling mean --threshold 0.3`, same set;
- tuned: `run_tune` on `builtin:organism` (profiling and tuning on their splits of that set).

With `--per-condition`, instead: the proposal measured for the plain organism, experts chosen
per condition (AUROC on the image-trigger pairs and on the jailbreak pairs of the profile set
separately; each unit takes the smaller of its two factors).

Each with the harmful rate per condition, benign accuracy, degenerate share and the mean KL
from the base's next-token distributions on the evaluation set's benign reference answers
(teacher-forced), plus the tuner's wall time and trials. SGM is applied as hooks (the bake is
exact; see bench_organism.py). Prints markdown.

    python benchmarks/bench_tune.py --workdir /tmp/sgm-tune-bench --trials 40
    python benchmarks/bench_tune.py --workdir /tmp/sgm-tune-pc --organisms organism-plain \
        --per-condition
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from sgm_bake.core.expertise import Expertise, ModuleExpertise
from sgm_bake.core.hooks import SGMHooks
from sgm_bake.core.rules import RuleOptions, factors
from sgm_bake.datasets.profile_set import ProfileSample, ProfileSet, load_profile_set
from sgm_bake.datasets.prompt_set import PromptSet, load_prompt_set
from sgm_bake.evaluation.evaluate import run_eval
from sgm_bake.evaluation.judges import Judge, make_judge
from sgm_bake.pipeline.profile import ProfileOptions, run_profile
from sgm_bake.pipeline.tune import SplitMeasure, TuneOptions, run_tune
from sgm_bake.runtime.chat import ChatModel, GenerationConfig
from sgm_bake.runtime.loading import CPU, load_chat, resolve_model_source

EVAL_SET = "builtin:mmtoxicqa-organism-v1"
PROFILE_SET = "builtin:organism"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def benign_references(prompts: PromptSet) -> ProfileSet:
    """The evaluation set's benign items with their reference answers, as non-toxic rows: the
    KL of the next-token distributions on these replies is the damage figure reported."""
    rows = tuple(
        ProfileSample(item.id, 0, item.reference or "", item.prompt, item.image_path, item.render)
        for item in prompts.items
        if item.condition == "benign" and item.reference
    )
    return ProfileSet(f"{prompts.name}[benign references]", prompts.sha256, rows)


def evaluate(
    label: str,
    chat: ChatModel,
    prompts: PromptSet,
    judge: Judge,
    kl_measure: SplitMeasure,
    base: dict[str, Any] | None,
) -> dict[str, Any]:
    result = run_eval(chat, prompts, judge, GenerationConfig(), label)
    metrics = dict(result.metrics)
    metrics["kl"] = 0.0 if base is None else kl_measure.kl()
    return metrics


def row(label: str, metrics: dict[str, Any], base: dict[str, Any]) -> str:
    by = metrics["harmful_rate_by_condition"]
    base_by = base["harmful_rate_by_condition"]
    cuts = []
    for condition in ("standard", "adversarial"):
        if base_by.get(condition):
            cuts.append(f"{100 * (1 - by[condition] / base_by[condition]):.0f}%")
        else:
            cuts.append("-")
    return (
        f"| {label} | {pct(metrics['harmful_rate'])} | {pct(by.get('standard'))} | "
        f"{pct(by.get('adversarial'))} | {pct(by.get('both'))} | {cuts[0]} / {cuts[1]} | "
        f"{pct(metrics['benign_accuracy'])} | {pct(metrics['degenerate_share'])} | "
        f"{metrics['kl']:.4f} |"
    )


HEADER = (
    "| variant | harmful | standard | adversarial | both | cut std / adv | benign acc | "
    "degenerate | KL |\n|---|---|---|---|---|---|---|---|---|"
)


def run_organism(name: str, args: argparse.Namespace, judge: Judge) -> list[str]:
    source = resolve_model_source(name)
    chat, loaded = load_chat(source, CPU, "float32")
    prompts = load_prompt_set(EVAL_SET)
    profile_set = load_profile_set(PROFILE_SET)
    workdir = args.workdir / name
    kl_options = TuneOptions(workdir=workdir, progress=False)
    kl_measure = SplitMeasure(
        chat,
        benign_references(prompts),
        judge,
        kl_options,
        torch.float32,
        None,
        workdir / "reference-eval.pt",
    )
    kl_measure.reference()
    lines = [f"### {name}", "", HEADER]
    base = evaluate("base", chat, prompts, judge, kl_measure, None)
    lines.append(row("base", base, base))

    def profiled(options: ProfileOptions) -> Any:
        return run_profile(loaded, profile_set, options)

    fixed = [
        ("default rule (aura 0.5, dialogue, max)", ProfileOptions(progress=False)),
        (
            "SGM code settings (response, mean, threshold 0.3)",
            ProfileOptions(
                feed="response", pooling="mean", progress=False, rule=RuleOptions(threshold=0.3)
            ),
        ),
    ]
    for label, options in fixed:
        expertise = profiled(options)
        with SGMHooks(chat.model, expertise, loaded.recipe):
            metrics = evaluate(label, chat, prompts, judge, kl_measure, base)
        lines.append(row(label, metrics, base))

    start = time.perf_counter()
    tune_options = TuneOptions(
        workdir=workdir / "tune", trials=args.trials, seed=args.seed, max_kl=args.max_kl
    )
    result = run_tune(chat, loaded, profile_set, judge, tune_options)
    seconds = time.perf_counter() - start
    if result.expertise is not None:
        with SGMHooks(chat.model, result.expertise, loaded.recipe):
            tuned = evaluate("tuned", chat, prompts, judge, kl_measure, base)
        setting = result.chosen.setting if result.chosen else {}
        label = f"tuned (trial {result.chosen.number if result.chosen else '-'})"
    else:
        tuned, setting, label = base, {}, "tuned (no change)"
    lines.append(row(label, tuned, base))
    lines += [
        "",
        f"Tuner: {len(result.trials)} trials, {seconds:.0f} s wall (profiling included); "
        f"chosen: {json.dumps(setting)}.",
        f"Tuning split base harmful {pct(result.base_tune.harm)}, chosen "
        f"{pct(result.chosen_tune.harm)} (KL {result.chosen_tune.kl:.4f}); held-out report "
        f"split base {pct(result.base_report.harm)}, chosen {pct(result.chosen_report.harm)} "
        f"(KL {result.chosen_report.kl:.4f}, degenerate {pct(result.base_report.degenerate)} -> "
        f"{pct(result.chosen_report.degenerate)}).",
        "",
        "Pareto front (tuning split): trial, harm, KL, degenerate, within budget, setting",
        "",
    ]
    for trial in sorted(
        (t for t in result.trials if t.number in result.pareto), key=lambda t: t.measurement.kl
    ):
        m = trial.measurement
        knobs = {k: v for k, v in trial.setting.items() if v is not None}
        lines.append(
            f"- {trial.number}: {pct(m.harm)}, {m.kl:.4f}, {pct(m.degenerate)}, "
            f"{'yes' if trial.feasible else 'no'}, {json.dumps(knobs)}"
        )
    lines.append("")
    return lines


def pair_mode(sample: ProfileSample) -> int:
    """Which kind of pair a row of `builtin:organism` belongs to (its id is orgNNN-label): 0 and
    2 hold a trigger word in the image, 1 a jailbreak in the text (organism.data.profile_rows)."""
    return int(sample.id[3:6]) % 3


def run_per_condition(name: str, args: argparse.Namespace, judge: Judge) -> list[str]:
    source = resolve_model_source(name)
    chat, loaded = load_chat(source, CPU, "float32")
    prompts = load_prompt_set(EVAL_SET)
    full = load_profile_set(PROFILE_SET)
    workdir = args.workdir / name
    kl_measure = SplitMeasure(
        chat,
        benign_references(prompts),
        judge,
        TuneOptions(workdir=workdir, progress=False),
        torch.float32,
        None,
        workdir / "reference-eval.pt",
    )
    kl_measure.reference()
    lines = [f"### {name}: experts per condition", "", HEADER]
    base = evaluate("base", chat, prompts, judge, kl_measure, None)
    lines.append(row("base", base, base))
    subsets = {
        "image": tuple(s for s in full.samples if pair_mode(s) != 1),
        "text": tuple(s for s in full.samples if pair_mode(s) == 1),
    }
    experts = {
        key: run_profile(
            loaded,
            ProfileSet(f"{full.name}[{key}]", full.sha256, rows),
            ProfileOptions(progress=False),
        )
        for key, rows in subsets.items()
    }
    names = list(experts["image"].modules)
    rules = [
        RuleOptions(),
        RuleOptions(strength=1.5),
        RuleOptions(threshold=0.3),
        RuleOptions("det0", top_k=256),
    ]
    for rule in rules:
        alphas = {
            key: factors([e.modules[n].auroc for n in names], rule)  # type: ignore[misc]
            for key, e in experts.items()
        }
        modules = {
            n: ModuleExpertise(n, experts["image"].modules[n].side, torch.minimum(a, b))
            for n, a, b in zip(names, alphas["image"], alphas["text"], strict=True)
        }
        with SGMHooks(chat.model, Expertise(modules), loaded.recipe):
            metrics = evaluate("per-condition", chat, prompts, judge, kl_measure, base)
        label = f"per-condition {rule.rule} s={rule.strength:g} t={rule.threshold:g}"
        lines.append(row(label + (f" k={rule.top_k}" if rule.top_k else ""), metrics, base))
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-kl", type=float, default=0.1)
    parser.add_argument("--organisms", default="organism,organism-plain")
    parser.add_argument("--per-condition", action="store_true")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    judge = make_judge("profanity")
    for name in args.organisms.split(","):
        run = run_per_condition if args.per_condition else run_organism
        lines = run(name, args, judge)
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
