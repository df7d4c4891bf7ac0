"""Measure what SGM (and SGM* = SGM + ECSO) does to the model organism.

Profiles the shipped organism on its own profile set, then for several rules and strengths
evaluates it on the MM-TOXIC-QA-style prompt set with SGM as hooks and baked into the weights
(the two must agree), and finally compares base, ECSO, SGM and SGM* with their costs. Prints
markdown tables.

    python benchmarks/bench_organism.py --workdir /tmp/sgm-organism
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from sgm_bake.core.hooks import SGMHooks
from sgm_bake.core.recipes import recipe_for_config
from sgm_bake.core.rules import RuleOptions
from sgm_bake.datasets.profile_set import load_profile_set
from sgm_bake.datasets.prompt_set import load_prompt_set
from sgm_bake.evaluation.conditions import EvalSettings, Variant, add_costs, evaluate_variants
from sgm_bake.evaluation.ecso import ECSOTemplates, templates_for
from sgm_bake.evaluation.evaluate import (
    ChatModel,
    EvalResult,
    GenerationConfig,
    PromptSet,
    run_eval,
)
from sgm_bake.evaluation.judges import Judge, make_judge
from sgm_bake.io.source import Source
from sgm_bake.organism.train import organism_path
from sgm_bake.pipeline.bake import BakeOptions, bake
from sgm_bake.pipeline.profile import ProfileOptions, apply_rule, run_profile
from sgm_bake.runtime.loading import LoadedModel


def load(folder: Path) -> ChatModel:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    return ChatModel(model, AutoProcessor.from_pretrained(folder), torch.device("cpu"))


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def row(label: str, metrics: dict, base: dict | None = None) -> str:
    by = metrics["harmful_rate_by_condition"]
    relative = ""
    if base is not None and base["harmful_rate"]:
        relative = f"{100 * (1 - metrics['harmful_rate'] / base['harmful_rate']):.0f}%"
    return (
        f"| {label} | {pct(metrics['harmful_rate'])} | {pct(by.get('standard'))} | "
        f"{pct(by.get('adversarial'))} | {pct(by.get('both'))} | {relative} | "
        f"{pct(metrics['benign_accuracy'])} | {metrics['reference_perplexity']:.3f} | "
        f"{pct(metrics['degenerate_share'])} |"
    )


HEADER = (
    "| variant | harmful | standard | adversarial | both | cut vs base | benign acc | ref ppl "
    "| degenerate |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def run_conditions(
    chat: ChatModel,
    prompts: PromptSet,
    judge: Judge,
    config: GenerationConfig,
    label: str,
    batch_size: int,
    progress: bool,
    templates: ECSOTemplates,
    ecso_label: str,
) -> list[EvalResult]:
    """One model, plain and through ECSO, evaluated as `sgm-bake eval --ecso` does."""
    settings = EvalSettings(config, batch_size, progress, templates)
    return evaluate_variants(
        [Variant(label, chat, ecso_label=ecso_label)], prompts, judge, settings
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--feed", default="dialogue")
    parser.add_argument("--pooling", default="max")
    parser.add_argument("--positions", default="text")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)

    folder = organism_path()
    chat = load(folder)
    recipe = recipe_for_config(chat.model.config.to_dict())
    prompts = load_prompt_set("builtin:mmtoxicqa-organism-v1")
    judge = make_judge("profanity")
    config = GenerationConfig()
    profile_set = load_profile_set("builtin:organism")

    start = time.perf_counter()
    options = ProfileOptions(
        feed=args.feed, pooling=args.pooling, positions=args.positions, progress=False
    )
    loaded = LoadedModel(
        chat.model,
        Source(folder, "organism", None, False),
        recipe,
        torch.device("cpu"),
        torch.float32,
    )
    expertise = run_profile(loaded, profile_set, options)
    profile_seconds = time.perf_counter() - start
    implant = json.loads((folder / "implant.json").read_text())["units_per_layer"]
    recalls = []
    for name, entry in expertise.modules.items():
        if name.endswith(("gate_proj", "up_proj")):
            layer = name.split(".layers.")[1].split(".")[0]
            chosen = set(implant[layer])
            top = set(torch.argsort(entry.auroc, descending=True)[: len(chosen)].tolist())
            recalls.append(len(top & chosen) / len(chosen))

    base = run_eval(chat, prompts, judge, config, "base")
    print(
        f"profile: {len(profile_set.samples)} samples of {profile_set.name}, feed={args.feed}, "
        f"pooling={args.pooling}, {profile_seconds:.1f} s; recall of the implanted units in the "
        f"top-k of gate/up AUROC: mean {sum(recalls) / len(recalls):.2f}"
    )
    print()
    print(HEADER)
    print(row("base", base.metrics))
    rules = [
        RuleOptions("aura", strength=0.5),
        RuleOptions("aura"),
        RuleOptions("aura", strength=1.5),
        RuleOptions("aura", strength=2.0),
        RuleOptions("aura", threshold=0.3),
        RuleOptions("damp", top_k=256, damp_alpha=0.2),
        RuleOptions("det0", top_k=128),
        RuleOptions("det0", top_k=256),
    ]
    agreement = []
    for rule in rules:
        factors = apply_rule(expertise, rule)
        label = (
            f"{rule.rule}"
            + (f" k={rule.top_k}" if rule.top_k else "")
            + (f" s={rule.strength:g}" if rule.rule == "aura" else "")
            + (f" t={rule.threshold:g}" if rule.threshold != 0.5 else "")
            + (f" a={rule.damp_alpha:g}" if rule.rule == "damp" else "")
        )
        with SGMHooks(chat.model, factors, recipe):
            hooked = run_eval(chat, prompts, judge, config, label)
        out = args.workdir / label.replace(" ", "_").replace("=", "")
        bake(Source(folder, "organism", None, False), out, factors, BakeOptions(progress=False))
        baked = run_eval(load(out), prompts, judge, config, label)
        same = sum(hooked.replies[i] == baked.replies[i] for i in hooked.replies) / len(
            hooked.replies
        )
        agreement.append(
            (label, same, hooked.metrics["harmful_rate"], baked.metrics["harmful_rate"])
        )
        print(row(f"SGM {label}, hooks", hooked.metrics, base.metrics))
        print(row(f"SGM {label}, baked", baked.metrics, base.metrics))
    print()
    print("| rule | identical replies hooks vs baked | harmful hooks | harmful baked |")
    print("|---|---|---|---|")
    for label, same, hooked_rate, baked_rate in agreement:
        print(f"| {label} | {pct(same)} | {pct(hooked_rate)} | {pct(baked_rate)} |")

    print()
    print(
        "Conditions (SGM = det0 k=256 baked, the demo's setting; ECSO with the organism's "
        "templates):"
    )
    templates = templates_for(folder, recipe.model_type)
    conditions = run_conditions(chat, prompts, judge, config, "base", 8, False, templates, "ECSO")
    default = args.workdir / "det0_k256"
    conditions += run_conditions(
        load(default), prompts, judge, config, "SGM", 8, False, templates, "SGM*"
    )
    add_costs(conditions)
    print(HEADER)
    for result in conditions:
        print(row(result.label, result.metrics, conditions[0].metrics))
    print()
    benign_ids = {i.id for i in prompts.items if i.condition == "benign"}
    print("| condition | forward passes / item | x base | seconds / item | x base |")
    print("|---|---|---|---|---|")
    for result in conditions:
        m = result.metrics
        print(
            f"| {result.label} | {m['forward_passes'] / len(prompts.items):.1f} | "
            f"{m['cost_vs_first']['forward_passes']:.2f} | {m['seconds_per_item']:.3f} | "
            f"{m['cost_vs_first']['seconds']:.2f} |"
        )
    print(
        f"(all {len(prompts.items)} items; forward passes = batched decoding steps and scoring "
        "passes, per item)"
    )
    print()
    benign = PromptSet(
        prompts.name + " (benign items)",
        prompts.sha256,
        tuple(i for i in prompts.items if i.id in benign_ids),
    )
    costs = run_conditions(chat, benign, judge, config, "base", 8, False, templates, "ECSO")
    add_costs(costs)
    print(f"ECSO's overhead on the {len(benign_ids)} benign items alone:")
    print("| condition | forward passes / item | seconds / item | x base | judged harmful |")
    print("|---|---|---|---|---|")
    for result in costs:
        m = result.metrics
        print(
            f"| {result.label} | {m['forward_passes'] / len(benign.items):.2f} | "
            f"{m['seconds_per_item']:.4f} | {m['cost_vs_first']['seconds']:.2f} | "
            f"{pct(m['benign_harmful_rate'])} |"
        )


if __name__ == "__main__":
    main()
