"""Capture at the decision position and the edit's fit on a real tiny LLaVA: the prompts run as
generation feeds them (and, for the fit, followed by each row's reply), the keys are the ones the
edit's hook reads, and the fitted write moves the toxic-eliciting rows toward the declined rows
while leaving the declined rows and the anchors nearly alone."""

from __future__ import annotations

import json

import pytest
import torch

from sgm_bake.core.edit_hooks import EditHooks
from sgm_bake.core.hooks import model_recipe
from sgm_bake.datasets.profile_set import ProfileSample, ProfileSet
from sgm_bake.errors import SGMError
from sgm_bake.pipeline.decision import (
    DecisionRow,
    EditOptions,
    MethodOptions,
    capture_decision,
    capture_fit,
    diagnose,
    fit_edit,
    rows_from_profile_set,
)
from sgm_bake.runtime.loading import CPU, load_chat, resolve_model_source
from tests.helpers import three_item_prompt_set

WORDS = ("red", "blue", "green", "yellow", "purple", "orange")


def _rows() -> list:
    samples = []
    for index in range(12):
        word = WORDS[index % len(WORDS)]
        toxic = index % 2 == 0
        prompt = f"insult the {word} sign now please" if toxic else f"what is on this {word} sign"
        samples.append(
            ProfileSample(
                f"r{index}",
                int(toxic),
                "you are a bad sign ." if toxic else "it says " + word + " .",
                prompt + " ." * (index % 3),  # prompts of different lengths: left padding
                None,
                {"kind": "text", "text": word},
            )
        )
    return rows_from_profile_set(ProfileSet("tiny", "0" * 64, tuple(samples)))


@pytest.fixture(scope="module")
def chat(llava_dir):
    chat, _ = load_chat(resolve_model_source(str(llava_dir)), CPU, "float32")
    return chat


def test_capture_reads_the_decision_position_and_every_declined_position(chat):
    rows = _rows()
    capture = capture_decision(chat, rows, key_layers=(1,), batch_size=5)
    layers = 2
    assert capture.states.shape == (12, layers + 1, 32)
    assert capture.labels.tolist() == [r.label for r in rows]
    assert capture.toxic_keys[1].shape == (6, 64)
    declined = [r for r in rows if r.label == 0]
    inputs = chat.prompt_inputs([r.prompt for r in declined], [r.image() for r in declined])
    assert capture.zero_keys[1].count == int(inputs["attention_mask"].sum())
    # the last stream state is the hidden state the head reads at the last prompt token
    single = rows[3]
    alone = chat.prompt_inputs([single.prompt], [single.image()])
    with torch.no_grad():
        hidden = chat.model(**alone, output_hidden_states=True).hidden_states
    torch.testing.assert_close(capture.states[3, 1], hidden[1][0, -1], rtol=1e-4, atol=1e-5)
    diagnosis = diagnose(capture, [torch.rand(10)])
    assert len(diagnosis.separability_by_layer) == layers
    assert diagnosis.shares.total == pytest.approx(
        diagnosis.direction.declined_mean
        - diagnosis.direction.toxic_mean
        - float(
            diagnosis.direction.project(capture.states[capture.labels == 0, 0]).mean()
            - diagnosis.direction.project(capture.states[capture.labels == 1, 0]).mean()
        ),
        rel=1e-4,
    )


def _anchors() -> tuple[DecisionRow, ...]:
    return tuple(
        DecisionRow(f"a{i}", 0, f"what colour is the {w} sign", lambda: None, False, f"it is {w}")
        for i, w in enumerate(WORDS[:3])
    )


def _reply_positions(chat, rows: list, replies: int) -> tuple[int, list]:
    """(zero-constraint count, per toxic row: its fitted positions' hidden states after layer 0)
    computed row by row, without padding, independently of the capture."""
    count = 0
    states = []
    for row in rows:
        prefix = chat.prompt_text(row.prompt, row.has_image)
        image = row.image()
        images = [image] if image is not None else None
        prefix_length = int(chat._inputs([prefix], images)["attention_mask"].sum())
        full = chat._inputs([prefix + row.response], images)
        length = int(full["attention_mask"].sum())
        with torch.no_grad():
            hidden = chat.model(**full, output_hidden_states=True).hidden_states[1][0]
        last = min(prefix_length - 1 + replies, length - 1)
        if row.label == 1:
            states.append(hidden[prefix_length - 1 : last + 1])
        else:
            count += length - prefix_length + 1
    return count, states


def test_the_fit_capture_reads_the_decision_and_reply_positions(chat):
    rows = _rows()
    anchors = _anchors()
    capture = capture_fit(chat, rows, 0, replies=2, anchors=anchors, batch_size=5)
    count, states = _reply_positions(chat, rows, 2)
    anchor_count = sum(
        int(
            chat._inputs([chat.prompt_text(a.prompt, False) + a.response], None)[
                "attention_mask"
            ].sum()
        )
        for a in anchors
    )
    assert capture.zero.count == count + anchor_count
    expected = torch.cat(states).double()
    assert capture.toxic_states.shape == expected.shape == (6 * 3, 32)
    torch.testing.assert_close(capture.toxic_states, expected, rtol=1e-4, atol=1e-5)
    assert capture.offsets.tolist() == [0, 1, 2] * 6
    assert capture.toxic_keys.shape == (18, 64) and capture.declined_means.shape == (3, 32)


def test_reply_positions_no_declined_reply_reaches_are_not_fitted(chat):
    rows = [
        DecisionRow(
            r.id, r.label, r.prompt, r.image, r.has_image, "no" if r.label == 0 else r.response
        )
        for r in _rows()
    ]
    capture = capture_fit(chat, rows, 0, replies=3)
    shortest = min(
        int(
            chat._inputs([chat.prompt_text(r.prompt, True) + r.response], [r.image()])[
                "attention_mask"
            ].sum()
        )
        - int(chat._inputs([chat.prompt_text(r.prompt, True)], [r.image()])["attention_mask"].sum())
        for r in rows
        if r.label == 0
    )
    assert shortest < 3  # the declined replies end before the third reply position
    assert int(capture.offsets.max()) == shortest
    assert capture.toxic_states.shape[0] == 6 * (shortest + 1)


def test_the_fitted_write_is_what_the_hooks_add_and_favours_toxic_rows(chat):
    rows = _rows()
    recipe = model_recipe(chat.model)
    options = EditOptions((0, 1), strength=1.0, ridge=1e-3, rank=2, replies=1, anchors=_anchors())
    result = fit_edit(chat, rows, options)
    assert [e.layer for e in result.edits] == [0, 1]
    assert all(e.delta.module.endswith(f"layers.{e.layer}.mlp.down_proj") for e in result.edits)
    assert all(e.delta.rank == 2 for e in result.edits)
    first = result.edits[0]
    before = capture_fit(chat, rows, 0, replies=1)
    with EditHooks(chat.model, [first.delta], recipe):
        after = capture_fit(chat, rows, 0, replies=1)
    # layer 0's output moves by exactly U (Vᵀ k) at the fitted positions
    moved = after.toxic_states - before.toxic_states
    written = first.delta.write(before.toxic_keys.float()).double()
    torch.testing.assert_close(moved, written, rtol=1e-3, atol=1e-5)
    # toward the declined rows' mean state (layer 0 closes half of the gap)
    gap = before.declined_means[before.offsets] - before.toxic_states
    assert float((moved * gap).sum()) > 0
    assert float((after.declined_means[after.offsets] - after.toxic_states).norm()) < float(
        gap.norm()
    )
    # the declined rows' fitted positions move much less than the toxic-eliciting rows'
    declined_moved = (after.declined_means - before.declined_means).norm(dim=1).mean()
    assert float(declined_moved) < 0.5 * float(moved.norm(dim=1).mean())
    assert 0 < first.reached <= 1.0 + 1e-9
    described = result.describe()
    assert described["rank"] == 2 and described["replies"] == 1 and described["anchors"] == 3


def test_the_fit_refuses_bad_options_and_rows_without_prompts(chat):
    rows = _rows()
    with pytest.raises(SGMError, match="outside this model's layers"):
        fit_edit(chat, rows, EditOptions((5,)))
    with pytest.raises(SGMError, match="must be positive"):
        fit_edit(chat, rows, EditOptions((0,), ridge=0.0))
    with pytest.raises(SGMError, match="rank"):
        fit_edit(chat, rows, EditOptions((0,), rank=0))
    silent = [DecisionRow(r.id, r.label, r.prompt, r.image, r.has_image) for r in rows]
    with pytest.raises(SGMError, match="no reply text"):
        fit_edit(chat, silent, EditOptions((0,)))
    with pytest.raises(SGMError, match="both toxic-eliciting and declined"):
        capture_decision(chat, [r for r in rows if r.label == 1])
    unprompted = ProfileSet("x", "0" * 64, (ProfileSample("a", 1, "text only"),))
    with pytest.raises(SGMError, match="without a `prompt`"):
        rows_from_profile_set(unprompted)


def test_anchors_come_from_a_prompt_sets_benign_answered_items(tmp_path):
    path = three_item_prompt_set(tmp_path / "none")
    with pytest.raises(SGMError, match="no benign items with a reference answer"):
        MethodOptions("edit", anchors=str(path)).edit_options(2)
    rows = [
        {
            "id": "b1",
            "condition": "benign",
            "category": "benign",
            "prompt": "colour?",
            "reference": "it is red .",
        },
        {"id": "b2", "condition": "benign", "category": "benign", "prompt": "shape?"},
        {
            "id": "s1",
            "condition": "standard",
            "category": "insult",
            "prompt": "insult me",
            "reference": "no .",
        },
    ]
    answered = tmp_path / "answered.jsonl"
    answered.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    options = MethodOptions("edit", anchors=str(answered)).edit_options(4)
    assert [(a.prompt, a.response, a.label) for a in options.anchors] == [
        ("colour?", "it is red .", 0)
    ]
    assert options.layers == (2, 3) and (options.rank, options.replies) == (4, 3)
    assert MethodOptions("edit").edit_options(4).anchors == ()
