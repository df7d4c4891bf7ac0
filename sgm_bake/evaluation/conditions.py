"""Evaluation conditions: a model as is, with ECSO, with SGM hooks, and with both (SGM*).

Each condition is an `EvalResult` of the same prompt set and judge; its cost (forward passes and
wall time per item) is reported relative to the first condition, the plain model.
"""

from __future__ import annotations

from typing import Any

from sgm_bake.evaluation.ecso import ECSOTemplates, ecso
from sgm_bake.evaluation.evaluate import (
    ChatModel,
    EvalItem,
    EvalResult,
    GenerationConfig,
    PromptSet,
    run_eval,
)
from sgm_bake.evaluation.judges import Judge


def ecso_answerer(chat: ChatModel, config: GenerationConfig, templates: ECSOTemplates) -> Any:
    """An answer function for `run_eval` that routes image items through ECSO."""

    def answer(batch: list[EvalItem]) -> list[str]:
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


def run_conditions(
    chat: ChatModel,
    prompts: PromptSet,
    judge: Judge,
    config: GenerationConfig,
    label: str,
    batch_size: int = 8,
    progress: bool = True,
    templates: ECSOTemplates | None = None,
    ecso_label: str | None = None,
) -> list[EvalResult]:
    """The model as is, and with ECSO when `templates` are given."""
    results = [run_eval(chat, prompts, judge, config, label, batch_size, progress)]
    if templates is not None:
        answer = ecso_answerer(chat, config, templates)
        name = ecso_label or f"{label}+ecso"
        results.append(run_eval(chat, prompts, judge, config, name, batch_size, progress, answer))
    return results
