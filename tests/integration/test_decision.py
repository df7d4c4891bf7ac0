"""Capture at the decision position and the edit's fit on a real tiny LLaVA: the prompts run as
generation feeds them, the keys are the ones the edit's hook reads, and the fitted write moves
the toxic-eliciting rows toward the declined rows while leaving the declined rows nearly alone."""

from __future__ import annotations

import pytest
import torch

from sgm_bake.core.edit_hooks import EditHooks
from sgm_bake.core.hooks import model_recipe
from sgm_bake.datasets.profile_set import ProfileSample, ProfileSet
from sgm_bake.errors import SGMError
from sgm_bake.pipeline.decision import (
    EditOptions,
    capture_decision,
    diagnose,
    fit_edit,
    rows_from_profile_set,
)
from sgm_bake.runtime.loading import load_chat, resolve_model_source

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
                "reply",
                prompt + " ." * (index % 3),  # prompts of different lengths: left padding
                None,
                {"kind": "text", "text": word},
            )
        )
    return rows_from_profile_set(ProfileSet("tiny", "0" * 64, tuple(samples)))


@pytest.fixture(scope="module")
def chat(llava_dir):
    chat, _ = load_chat(resolve_model_source(str(llava_dir)), "cpu", "float32")
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


def test_the_fitted_write_is_what_the_hooks_add_and_favours_toxic_rows(chat):
    rows = _rows()
    recipe = model_recipe(chat.model)
    result = fit_edit(chat, rows, EditOptions((0, 1), strength=1.0, ridge=1e-3))
    assert [e.layer for e in result.edits] == [0, 1]
    assert all(e.delta.module.endswith(f"layers.{e.layer}.mlp.down_proj") for e in result.edits)
    first = result.edits[0]
    before = capture_decision(chat, rows, key_layers=(0,))
    with EditHooks(chat.model, result.deltas, recipe):
        after = capture_decision(chat, rows)
    toxic = before.labels == 1
    # layer 0's output moves along u by exactly v^T k at the decision position
    moved = first.direction.project(after.states[:, 1]) - first.direction.project(
        before.states[:, 1]
    )
    written = before.toxic_keys[0].double() @ first.delta.v.double()
    torch.testing.assert_close(moved[toxic], written, rtol=1e-3, atol=1e-6)
    # a random model's last-token keys hardly tell the classes apart (every prompt ends with the
    # same template tokens), yet the write still favours the toxic-eliciting rows
    assert float(moved[toxic].mean()) > float(moved[~toxic].abs().mean()) > 0
    # the two layers' targets: half of each layer's gap (strength 1 spread over 2 layers)
    assert 0 < first.reached <= 1.01


def test_the_fit_refuses_bad_options_and_rows_without_prompts(chat):
    rows = _rows()
    with pytest.raises(SGMError, match="outside this model's layers"):
        fit_edit(chat, rows, EditOptions((5,)))
    with pytest.raises(SGMError, match="must be positive"):
        fit_edit(chat, rows, EditOptions((0,), ridge=0.0))
    with pytest.raises(SGMError, match="both toxic-eliciting and declined"):
        capture_decision(chat, [r for r in rows if r.label == 1])
    unprompted = ProfileSet("x", "0" * 64, (ProfileSample("a", 1, "text only"),))
    with pytest.raises(SGMError, match="without a `prompt`"):
        rows_from_profile_set(unprompted)
