"""The evaluation step shared by `eval`, `demo` and the tuner's report: run variants of a model
(as is, with SGM hooks, baked, each optionally through ECSO) on one prompt set and judge, with
one progress bar for the whole step, costs relative to the first variant and the perplexity of
generated answers under the base model."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sgm_bake.core.expertise import Expertise
from sgm_bake.core.hooks import SGMHooks
from sgm_bake.core.recipes import Recipe
from sgm_bake.datasets.prompt_set import EvalItem, PromptSet
from sgm_bake.evaluation.ecso import ECSOTemplates, ecso
from sgm_bake.evaluation.evaluate import (
    EvalResult,
    benign_items,
    generated_perplexity,
    reference_pairs,
    report,
    run_eval,
)
from sgm_bake.evaluation.judges import Judge
from sgm_bake.runtime.chat import ChatModel, GenerationConfig, check_context, context_length


@dataclass
class Variant:
    """One model condition to evaluate."""

    label: str
    chat: ChatModel
    expertise: Expertise | None = None
    """SGM factors applied as forward hooks while this variant runs."""
    recipe: Recipe | None = None
    ecso_label: str | None = None
    """Also evaluate this variant wrapped in ECSO, under this label (needs templates)."""


@dataclass(frozen=True)
class EvalSettings:
    """How every variant is evaluated."""

    generation: GenerationConfig
    batch_size: int = 8
    progress: bool = True
    templates: ECSOTemplates | None = None
    seeds: tuple[int, ...] | None = None
    """With sampling: one run per seed, the rates pooled over items x seeds."""

    def runs(self) -> int:
        """Generation passes per variant."""
        return len(self.seeds) if self.generation.sample and self.seeds else 1


def ecso_answerer(chat: ChatModel, templates: ECSOTemplates) -> Any:
    """An answer function for `run_eval` that routes image items through ECSO."""

    def answer(batch: list[EvalItem], config: GenerationConfig) -> list[str]:
        images = [item.image() for item in batch]
        queries = [item.prompt for item in batch]
        if images[0] is None:  # text-only items: ECSO has no image to close its eyes on
            return chat.generate(queries, images, config)
        return [trace.final_answer for trace in ecso(chat, queries, images, config, templates)]

    return answer


def add_costs(results: list[EvalResult]) -> None:
    """Forward passes and wall time per item of every result relative to the first."""
    first = results[0].metrics
    for result in results:
        metrics = result.metrics
        metrics["cost_vs_first"] = {
            "forward_passes": metrics["forward_passes"] / max(1, first["forward_passes"]),
            "seconds": metrics["seconds"] / max(1e-9, first["seconds"]),
        }


def check_prompt_lengths(chat: ChatModel, prompts: PromptSet, reserve: int) -> None:
    """Refuse, before the first generation, an item whose prompt (through the chat template)
    and the tokens to generate exceed the model's context."""
    texts = [
        (f"prompt set {prompts.name} item {item.id}", chat.prompt_text(item.prompt, False))
        for item in prompts.items
    ]
    check_context(texts, chat.tokenizer, context_length(chat.model.config.to_dict()), reserve)


def evaluate_variants(
    variants: list[Variant],
    prompts: PromptSet,
    judge: Judge,
    settings: EvalSettings,
    base: ChatModel | None = None,
) -> list[EvalResult]:
    """Evaluate every variant (and its ECSO form); with `base`, score the generated benign
    answers of each under the base model."""
    check_prompt_lengths(variants[0].chat, prompts, settings.generation.max_new_tokens)
    with_ecso = settings.templates is not None
    runs = sum(1 + int(with_ecso and v.ecso_label is not None) for v in variants)
    per_run = len(prompts.items) * settings.runs() + len(reference_pairs(prompts))
    per_run += len(benign_items(prompts)) if base is not None else 0
    results: list[EvalResult] = []
    with tqdm(
        total=runs * per_run,
        desc="evaluating",
        unit="item",
        disable=not settings.progress,
        file=sys.stderr,
    ) as bar:
        for variant in variants:
            hooks: Any = (
                SGMHooks(variant.chat.model, variant.expertise, variant.recipe)
                if variant.expertise is not None
                else contextlib.nullcontext()
            )
            # the variant as it is, then (with templates) the same model behind ECSO
            runs_of_variant: list[tuple[str, Any]] = [(variant.label, None)]
            if settings.templates is not None and variant.ecso_label is not None:
                runs_of_variant.append(
                    (variant.ecso_label, ecso_answerer(variant.chat, settings.templates))
                )
            with hooks:
                for label, answer in runs_of_variant:
                    bar.set_postfix_str(label)
                    results.append(
                        run_eval(
                            variant.chat,
                            prompts,
                            judge,
                            settings.generation,
                            label,
                            settings.batch_size,
                            bar,
                            answer,
                            settings.seeds,
                        )
                    )
        add_costs(results)
        if base is not None:
            for result in results:
                result.metrics["generated_perplexity_under_base"] = generated_perplexity(
                    base, prompts, result, bar
                )
    return results


def write_report(
    path: Path,
    prompts: PromptSet,
    judge: Judge,
    settings: EvalSettings,
    results: list[EvalResult],
    model: dict[str, Any],
) -> dict[str, Any]:
    """Write the JSON report (and its chart beside it, when matplotlib is installed)."""
    from sgm_bake.publish import plots

    data = report(prompts, judge, settings.generation, results, model, settings.seeds)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if plots.available():
        plots.evaluation_chart(path.with_suffix(".png"), {r.label: r.metrics for r in results})
    return data
