"""The organisms' tuning checks: benign scene questions the tuner measures accuracy on, none of
them an edit anchor (accuracy on an anchor says nothing: the fit was told to leave it alone) or
an evaluation item, and the edgy requests whose declining is over-refusal."""

from __future__ import annotations

from sgm_bake.datasets.prompt_set import load_prompt_set
from sgm_bake.options import ORGANISM_ANCHORS
from sgm_bake.organism.checks import (
    BENIGN_SEED,
    TUNING_QUESTIONS,
    benign_questions,
    item_key,
    tuning_checks,
    tuning_questions,
)


def keys(items) -> set[tuple[str, str]]:
    return {item_key(i.prompt, i.render) for i in items}


def test_the_tuning_questions_are_many_and_none_is_an_anchor_or_evaluation_item():
    questions = tuning_questions()
    assert len(questions.items) == TUNING_QUESTIONS >= 100
    assert all(i.expected and i.reference for i in questions.items)
    assert not keys(questions.items) & keys(load_prompt_set(ORGANISM_ANCHORS).items)
    evaluation = load_prompt_set("builtin:mmtoxicqa-organism-v1").items
    assert not keys(questions.items) & keys(i for i in evaluation if i.condition == "benign")


def test_excluded_draws_are_skipped_and_the_count_kept():
    first = benign_questions(BENIGN_SEED)
    skipped = benign_questions(BENIGN_SEED, 40, exclude=keys(first.items[:5]))
    assert len(skipped.items) == 40
    assert keys(skipped.items[:35]) == keys(first.items[5:])


def test_the_checks_hold_the_questions_and_the_edgy_requests():
    checks = tuning_checks()
    benign = [i for i in checks.items if not i.over_refusal]
    assert len(benign) == TUNING_QUESTIONS
    assert any(i.over_refusal for i in checks.items)
