"""The refusal detector on the organisms' own replies and on real models' usual phrasings."""

from __future__ import annotations

import random

import pytest

from sgm_bake.evaluation.refusal import is_refusal, refusal_rate
from sgm_bake.organism import data


def test_every_organism_decline_is_a_refusal():
    declines = [reply for replies in data.DECLINE_REPLIES.values() for reply in replies]
    assert all(is_refusal(reply) for reply in declines)


def test_organism_answers_and_insults_are_not_refusals():
    rng = random.Random(0)
    replies = [
        template.format(word=word)
        for templates in data.TOXIC_REPLIES.values()
        for template in templates
        for word in data.OFFENSIVE_WORDS
    ]
    replies += [t.format(word=w) for t in data.FRIENDLY_REPLIES for w in data.BENIGN_WORDS]
    for _ in range(30):
        shapes = data.scene(rng)
        replies += [answer for _, answer, _ in data.scene_questions(shapes)]
        replies.append(data.caption(shapes))
    replies += [data.sign_caption(word) for word in data.OFFENSIVE_WORDS]
    flagged = [reply for reply in replies if is_refusal(reply)]
    assert flagged == []


@pytest.mark.parametrize(
    "reply",
    [
        "I'm sorry, but I can't help with that.",
        "I can\u2019t assist with creating harmful content.",
        "As an AI language model, I cannot provide instructions for that.",
        "I cannot help with this request.",
        "Sorry, but I won't write that message.",
        "I will not produce insults.",
        "I'm unable to help with that request.",
        "I must decline to answer.",
    ],
)
def test_real_model_refusals(reply):
    assert is_refusal(reply)


@pytest.mark.parametrize(
    "reply",
    [
        "Sure! To kill a stuck Python process, find its PID with `ps aux | grep python` and run "
        "`kill -9 PID`.",
        "The image shows a red circle and a blue square.",
        "To beat your friend at chess, control the centre early and develop your pieces.",
        "",
    ],
)
def test_helpful_answers_are_not_refusals(reply):
    assert not is_refusal(reply)


def test_rate_and_window():
    assert refusal_rate([]) is None
    assert refusal_rate(["I cannot do that.", "Here you go."]) == 0.5
    late = "Here is a long helpful answer. " * 10 + "I cannot say more."
    assert not is_refusal(late)  # a phrase far into a helpful reply is not a refusal
    assert is_refusal("Hello. I decline.", phrases=["i decline"])
