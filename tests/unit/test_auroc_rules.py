"""AUROC against sklearn, and the suppression rules' golden values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

import sgm_bake
from sgm_bake.core.rules import RuleOptions, auroc, auroc_torch, factors, top_k_mask


@st.composite
def labelled_responses(draw):
    samples = draw(st.integers(4, 40))
    units = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    levels = draw(st.sampled_from([2, 3, 5, None]))  # few levels -> many ties
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, samples)
    labels[0], labels[1] = 0, 1
    if levels is None:
        responses = rng.standard_normal((samples, units)).astype(np.float32)
    else:
        responses = rng.integers(0, levels, (samples, units)).astype(np.float32)
    return responses, labels


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(labelled_responses())
def test_auroc_equals_sklearn(data):
    responses, labels = data
    ours = auroc(responses, labels).numpy()
    expected = np.array([roc_auc_score(labels, responses[:, i]) for i in range(responses.shape[1])])
    np.testing.assert_allclose(ours, expected, atol=1e-6, rtol=0)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(labelled_responses(), st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_auroc_on_the_device_equals_auroc_bit_for_bit(data, dtype):
    """The torch path (run on a GPU when the responses live there; on the CPU here) counts the
    same integers as the numpy path, so the values are identical, ties and signed zeros too."""
    responses, labels = data
    tensor = torch.from_numpy(responses).to(dtype)
    tensor[0] = -0.0  # a signed zero among zeros: equal in the statistic
    expected = auroc(tensor.float() if dtype == torch.bfloat16 else tensor, labels)
    assert torch.equal(auroc_torch(tensor, torch.from_numpy(labels)), expected)
    assert torch.equal(auroc_torch(tensor, labels, chunk_elements=2 * len(labels)), expected)


def test_auroc_on_the_device_refuses_what_auroc_refuses():
    with pytest.raises(ValueError, match="both classes"):
        auroc_torch(torch.zeros(4, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        auroc_torch(torch.full((4, 2), float("nan")), torch.tensor([0, 1, 0, 1]))


def test_public_name_and_constant_units():
    assert sgm_bake.auroc is auroc
    responses = torch.randn(30, 4)
    responses[:, 2] = 3.0
    labels = torch.tensor([0, 1] * 15)
    assert auroc(responses, labels)[2] == 0.5


def test_auroc_chunks_agree(monkeypatch):
    import sgm_bake.core.rules as math_module

    rng = np.random.default_rng(0)
    responses = rng.standard_normal((50, 37)).astype(np.float32)
    labels = rng.integers(0, 2, 50)
    whole = auroc(responses, labels)
    monkeypatch.setattr(math_module, "CHUNK_ELEMENTS", 50 * 5)
    assert torch.equal(auroc(responses, labels), whole)


def test_perfect_and_inverted_separation():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    responses = torch.tensor(
        [[0.1, 3.0], [0.2, 2.0], [0.3, 1.5], [1.0, 0.5], [2.0, 0.1], [3.0, 0.0]]
    )
    assert auroc(responses, labels).tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    ("responses", "labels", "message"),
    [
        (torch.tensor([[float("nan")], [1.0]]), torch.tensor([0, 1]), "NaN"),
        (torch.ones(4, 2), torch.tensor([1, 1, 1, 1]), "both classes"),
        (torch.ones(4, 2), torch.tensor([0, 1, 1]), "do not match"),
    ],
)
def test_auroc_errors(responses, labels, message):
    with pytest.raises(ValueError, match=message):
        auroc(responses, labels)


SCORES = [torch.tensor([0.2, 0.5, 0.55, 0.75, 1.0]), torch.tensor([0.35, 0.9])]


def test_aura_golden_values():
    alphas = factors(SCORES, RuleOptions("aura"))
    torch.testing.assert_close(alphas[0], torch.tensor([1.0, 1.0, 0.9, 0.5, 0.0]))
    torch.testing.assert_close(alphas[1], torch.tensor([1.0, 0.2]))


def test_aura_sgm_threshold_amplifies_below_half():
    alphas = factors(SCORES, RuleOptions("aura", threshold=0.3))
    torch.testing.assert_close(alphas[1], torch.tensor([1.3, 0.2]))
    assert alphas[0][1] == 1.0  # auroc exactly 0.5 -> 1 - 0 = 1


def test_damp_and_det0_top_k_across_modules():
    damp = factors(SCORES, RuleOptions("damp", top_k=3, damp_alpha=0.25))
    torch.testing.assert_close(damp[0], torch.tensor([1.0, 1.0, 1.0, 0.25, 0.25]))
    torch.testing.assert_close(damp[1], torch.tensor([1.0, 0.25]))
    det0 = factors(SCORES, RuleOptions("det0", top_k=2))
    torch.testing.assert_close(det0[0], torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0]))
    torch.testing.assert_close(det0[1], torch.tensor([1.0, 0.0]))


def test_strength_scales_and_clamps():
    half = factors(SCORES, RuleOptions("aura", strength=0.5))
    torch.testing.assert_close(half[0], torch.tensor([1.0, 1.0, 0.95, 0.75, 0.5]))
    double = factors(SCORES, RuleOptions("aura", strength=2.0))
    torch.testing.assert_close(double[0], torch.tensor([1.0, 1.0, 0.8, 0.0, 0.0]))
    assert all((a >= 0).all() for a in double)


def test_top_k_ties_are_deterministic():
    mask = top_k_mask([torch.tensor([0.9, 0.9, 0.9]), torch.tensor([0.9])], 2)
    assert mask[0].tolist() == [True, True, False] and mask[1].tolist() == [False]


@pytest.mark.slow
@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=30), st.floats(0, 3), st.floats(0, 1))
def test_rule_properties(values, strength, threshold):
    scores = [torch.tensor(values, dtype=torch.float64)]
    alpha = factors(scores, RuleOptions("aura", threshold=threshold, strength=strength))[0]
    assert (alpha >= 0).all()
    below = scores[0] <= threshold
    assert (alpha[below] == 1).all()
    if threshold >= 0.5:
        assert (alpha <= 1).all()
