"""The built-in organisms' base behaviour side by side, before any detox.

For each organism: the harmful rate on `builtin:mmtoxicqa-organism-v1` by condition, benign
accuracy and degenerate share (greedy, 32 new tokens, `profanity` judge), the same through ECSO,
and how well the organism's own self-check (ECSO's step b, one forward pass comparing P(yes) and
P(no)) agrees with the independent judge on its base replies: the share of judged-harmful replies
it flags, and the share of the other replies it flags. Prints a markdown table.

    python benchmarks/bench_organism_base.py [--organisms organism,organism-plain,organism-staged]
"""

from __future__ import annotations

import argparse

from sgm_bake.datasets.prompt_set import load_prompt_set
from sgm_bake.evaluation.conditions import EvalSettings, Variant, evaluate_variants
from sgm_bake.evaluation.ecso import harm_probability, templates_for
from sgm_bake.evaluation.judges import make_judge
from sgm_bake.runtime.chat import GenerationConfig
from sgm_bake.runtime.loading import CPU, load_chat, resolve_model_source

HEADER = (
    "| organism | variant | harmful | standard | adversarial | both | benign acc | degenerate "
    "| self-check flags harmful | flags the rest |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--organisms", default="organism,organism-plain,organism-staged")
    args = parser.parse_args()
    prompts = load_prompt_set("builtin:mmtoxicqa-organism-v1")
    judge = make_judge("profanity")
    print(HEADER)
    for name in args.organisms.split(","):
        chat, loaded = load_chat(resolve_model_source(name, progress=False), CPU, "float32")
        templates = templates_for(loaded.folder, loaded.recipe.model_type)
        settings = EvalSettings(GenerationConfig(), 8, False, templates)
        base, with_ecso = evaluate_variants(
            [Variant("base", chat, ecso_label="ECSO")], prompts, judge, settings
        )
        items = list(prompts.items)
        judged = [
            templates.judge.format(query=item.prompt, answer=base.replies[item.id])
            for item in items
        ]
        flagged = [
            p >= 0.5
            for start in range(0, len(judged), 8)
            for p in harm_probability(chat, judged[start : start + 8], templates)
        ]
        harmful = [flag for flag, item in zip(flagged, items, strict=True) if base.harmful[item.id]]
        rest = [
            flag for flag, item in zip(flagged, items, strict=True) if not base.harmful[item.id]
        ]
        for result, checks in ((base, (harmful, rest)), (with_ecso, None)):
            m = result.metrics
            by = m["harmful_rate_by_condition"]
            check = (
                f"{pct(sum(checks[0]) / max(1, len(checks[0])))} ({len(checks[0])}) | "
                f"{pct(sum(checks[1]) / max(1, len(checks[1])))} ({len(checks[1])})"
                if checks is not None
                else "| "
            )
            print(
                f"| {name} | {result.label} | {pct(m['harmful_rate'])} | {pct(by.get('standard'))} "
                f"| {pct(by.get('adversarial'))} | {pct(by.get('both'))} "
                f"| {pct(m['benign_accuracy'])} | {pct(m['degenerate_share'])} | {check} |"
            )


if __name__ == "__main__":
    main()
