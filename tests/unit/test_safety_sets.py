"""The built-in sets for real models: contrastive safety profile pairs and an MM-SafetyBench-style
evaluation set, held apart from each other, and the images they draw."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections import Counter
from functools import cache
from types import ModuleType

import numpy as np
import pytest

from sgm_bake._data.profiles.jsonl import jsonl_text
from sgm_bake.datasets.loader import load_set_file
from sgm_bake.datasets.profile_set import load_profile_set
from sgm_bake.datasets.prompt_set import ELICITING, load_prompt_set
from sgm_bake.datasets.render import render
from sgm_bake.resources import data_dir

PROFILE = "builtin:safety-profile-v1"
EVAL = "builtin:mm-safety-eval-v1"
CATEGORIES = {
    "harassment",
    "hate",
    "violence",
    "self-harm",
    "sexual",
    "illegal-activity",
    "fraud",
}


@cache
def _builder(name: str) -> ModuleType:
    """A builder script shipped next to the sets (not an importable module of the package)."""
    spec = importlib.util.spec_from_file_location(name, data_dir("profiles") / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _rows(spec: str) -> list[dict]:
    return list(load_set_file(spec).rows)


def _ink_rows(spec: dict) -> int:
    """The number of separate bands of ink, top to bottom: the lines of text drawn."""
    pixels = np.asarray(render(spec).convert("L"))
    inked = (pixels < 128).any(axis=1)
    return int(inked[0] + np.count_nonzero(inked[1:] & ~inked[:-1]))


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _grams(text: str, n: int = 4) -> set[tuple[str, ...]]:
    words = _words(text)
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _texts(row: dict) -> list[str]:
    """What a model reads in an item: its prompt and any text drawn into its image."""
    texts = [row["prompt"]]
    if row["render"]["kind"] == "text":
        texts.append(row["render"]["text"])
    return texts


def test_text_image_keeps_line_breaks():
    listing = {"kind": "text", "text": "Steps to bake.\n1.\n2.\n3."}
    flowing = {"kind": "text", "text": "Steps to bake. 1. 2. 3."}
    assert _ink_rows(listing) == 4
    assert _ink_rows(flowing) < 4


@pytest.mark.parametrize(
    ("builder", "name"),
    [("build_safety_profile", "safety-profile-v1"), ("build_safety_eval", "mm-safety-eval-v1")],
)
def test_builder_reproduces_the_committed_file(builder, name):
    module = _builder(builder)
    committed = (data_dir("profiles") / f"{name}.jsonl").read_text(encoding="utf-8")
    assert jsonl_text(module.build()) == committed


def test_profile_set_is_contrastive_pairs_across_categories():
    profile_set = load_profile_set(PROFILE)
    toxic, benign = profile_set.counts()
    assert toxic == benign >= 500
    pairs: dict[str, list] = {}
    for sample in profile_set.samples:
        assert sample.prompt and sample.render is not None
        pairs.setdefault(sample.id.rsplit("-", 1)[0], []).append(sample)
    for pair in pairs.values():
        assert sorted(s.label for s in pair) == [0, 1]
        assert pair[0].prompt == pair[1].prompt and pair[0].render == pair[1].render
        assert pair[0].text != pair[1].text
    rows = _rows(PROFILE)
    kinds = Counter((r["category"], r["image_kind"]) for r in rows if r["label"] == "toxic")
    for category in CATEGORIES:
        for kind in ("typographic", "figstep", "scene"):
            assert kinds[category, kind] >= 20, (category, kind)
        wrapped = [r for r in rows if r["category"] == category and r["jailbreak"]]
        assert sum(r["label"] == "toxic" for r in wrapped) >= 10, category
    assert {r["category"] for r in rows} == CATEGORIES
    # varied: many distinct prompts and replies on each side, not one template
    for label in ("toxic", "non-toxic"):
        replies = {r["response"] for r in rows if r["label"] == label}
        assert len(replies) >= 100, label
    requests = {(r["prompt"], json.dumps(r["render"])) for r in rows}
    assert len(requests) == len(pairs)  # no two pairs show the same prompt and image


def test_eval_set_covers_every_category_and_condition():
    prompt_set = load_prompt_set(EVAL)
    items = prompt_set.items
    counts = Counter((i.category, i.condition) for i in items if i.condition in ELICITING)
    assert {category for category, _ in counts} == CATEGORIES
    for category in CATEGORIES:
        for condition in ELICITING:
            assert counts[category, condition] >= 8, (category, condition)
    assert all(item.policy for item in items)
    assert all(item.render is not None for item in items)
    benign = [i for i in items if i.condition == "benign"]
    reasoning = [i for i in benign if not i.over_refusal]
    assert len(reasoning) >= 50
    assert all(i.reference and i.expected for i in reasoning)
    for item in reasoning:  # the expected word is in the question's image or its reference
        assert item.expected.lower() in item.reference.lower(), item.id
    edgy = [i for i in benign if i.over_refusal]
    assert all(i.reference and i.id.startswith("over-refusal-") for i in edgy)
    mimicked = Counter(i.id.split("-")[2] for i in edgy)
    assert len(edgy) >= 40 and min(mimicked.values()) >= 5
    assert not any(i.over_refusal for i in items if i.condition != "benign")
    # standard items carry the harm in the image: their text names no request of the set
    requests = [
        request
        for _, (_, pairs) in _builder("build_safety_eval").REQUESTS.items()
        for request, _ in pairs
    ]
    for item in items:
        if item.condition == "standard":
            assert item.render["kind"] == "text"
            assert not any(request in item.prompt for request in requests), item.id


@pytest.mark.slow
def test_sets_are_held_apart():
    profile_rows, eval_rows = _rows(PROFILE), _rows(EVAL)
    assert not {r["prompt"] for r in profile_rows} & {r["prompt"] for r in eval_rows}
    profile_builder, eval_builder = _builder("build_safety_profile"), _builder("build_safety_eval")
    profile_phrases = {
        phrase.lower()
        for category in profile_builder.CATEGORIES
        for request, key_phrase, _ in category.requests
        for phrase in (request, key_phrase)
    }
    eval_phrases = {
        phrase.lower()
        for _, requests in eval_builder.REQUESTS.values()
        for request_and_key in requests
        for phrase in request_and_key
    }
    # no request or key phrase of one set appears anywhere in the other
    profile_text = "\n".join(json.dumps(r).lower() for r in profile_rows)
    eval_text = "\n".join(json.dumps(r).lower() for r in eval_rows)
    assert not [p for p in eval_phrases if p in profile_text]
    assert not [p for p in profile_phrases if p in eval_text]

    # the jailbreak wrappers share no three-word run
    def wrapper_grams(wrappers):
        return set().union(*(_grams(re.sub(r"\{\w+\}", " ", w), 3) for w in wrappers))

    assert not wrapper_grams(profile_builder.JAILBREAKS) & wrapper_grams(
        eval_builder.WRAPPERS + eval_builder.IMAGE_WRAPPERS
    )
    # what the model reads in an eliciting item is mostly new to the profile set
    profile_grams = set().union(*(_grams(t) for r in profile_rows for t in _texts(r)))
    shares = []
    for row in eval_rows:
        if row["condition"] in ELICITING:
            grams = set().union(*(_grams(t) for t in _texts(row)))
            shares.append(len(grams & profile_grams) / len(grams))
    assert sum(shares) / len(shares) < 0.05 and max(shares) < 0.35

    # no scene is drawn in both sets
    def scenes(rows):
        return {render(row["render"]).tobytes() for row in rows if row["render"]["kind"] == "scene"}

    assert not scenes(profile_rows) & scenes(eval_rows)


@pytest.mark.slow
@pytest.mark.parametrize("spec", [PROFILE, EVAL])
def test_every_image_renders(spec):
    drawn = {json.dumps(row["render"], sort_keys=True) for row in _rows(spec)}
    for text in drawn:
        image = render(json.loads(text))
        low, high = image.convert("L").getextrema()
        assert image.size == (224, 224) and low < high, text
