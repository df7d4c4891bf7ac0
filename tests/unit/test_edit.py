"""The conditional write's math: the ridge fit against numpy, primal against dual, the decision
direction and the diagnosis figures, and the low-rank fold against the hook's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score
from transformers.pytorch_utils import Conv1D

from sgm_bake.core.edit import (
    LowRankDelta,
    ZeroKeys,
    chance_distance,
    decision_direction,
    edit_delta,
    fit_write,
    write_shares,
)
from sgm_bake.core.fold import TensorFold, fold_weight, unfold_weight

seeds = st.integers(0, 2**31 - 1)


def _problem(seed: int, rows: int, zeros: int, width: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(rows, width, generator=generator, dtype=torch.float64)
    targets = torch.randn(rows, generator=generator, dtype=torch.float64)
    zero = torch.randn(zeros, width, generator=generator, dtype=torch.float64) * 2
    return keys, targets, zero


def _numpy_ridge(
    keys: torch.Tensor, targets: torch.Tensor, zero: torch.Tensor, ridge: float
) -> np.ndarray:
    """An independent solution: least squares on the system augmented by sqrt(λ) I."""
    stacked = np.concatenate([keys.numpy(), zero.numpy()])
    width = stacked.shape[1]
    regularisation = ridge * float((stacked**2).sum()) / width
    system = np.concatenate([stacked, np.sqrt(regularisation) * np.eye(width)])
    right = np.concatenate([targets.numpy(), np.zeros(len(zero) + width)])
    return np.linalg.lstsq(system, right, rcond=None)[0]


@settings(max_examples=60, deadline=None)
@given(
    seeds,
    st.integers(1, 12),
    st.integers(0, 40),
    st.integers(1, 24),
    st.sampled_from([1e-4, 1e-2, 1.0]),
)
def test_fit_matches_numpy_lstsq_and_primal_equals_dual(seed, rows, zeros, width, ridge):
    keys, targets, zero_keys = _problem(seed, rows, zeros, width)
    expected = _numpy_ridge(keys, targets, zero_keys, ridge)
    zero = ZeroKeys(width, keep_rows=10_000)
    for start in range(0, zeros, 7):  # streamed in batches, as the capture adds them
        zero.add(zero_keys[start : start + 7])
    primal = fit_write(keys, targets, zero, ridge, solver="primal")
    dual = fit_write(keys, targets, zero, ridge, solver="dual")
    assert (primal.solver, dual.solver) == ("primal", "dual")
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(primal.v.numpy(), expected, atol=1e-8 * scale, rtol=1e-7)
    np.testing.assert_allclose(dual.v.numpy(), primal.v.numpy(), atol=1e-9 * scale, rtol=1e-8)
    torch.testing.assert_close(primal.fitted, keys @ primal.v)


def test_auto_solver_picks_the_smaller_system():
    keys, targets, zero_keys = _problem(0, 4, 10, 32)
    few = ZeroKeys(32)
    few.add(zero_keys)
    assert fit_write(keys, targets, few).solver == "dual"  # 14 rows < 32 units
    many = ZeroKeys(32)
    for _ in range(5):
        many.add(zero_keys)
    assert many.rows is None  # 50 rows > 32: only the Gram matrix is kept
    assert fit_write(keys, targets, many).solver == "primal"
    with pytest.raises(ValueError, match="dual solve needs"):
        fit_write(keys, targets, many, solver="dual")


def test_zero_constraints_pull_the_write_to_zero_there():
    keys, targets, zero_keys = _problem(3, 6, 200, 16)
    zero = ZeroKeys(16)
    zero.add(zero_keys)
    free = fit_write(keys, targets, None, 1e-6)
    held = fit_write(keys, targets, zero, 1e-6)
    assert float((zero_keys @ held.v).abs().mean()) < 0.2 * float((zero_keys @ free.v).abs().mean())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ridge": 0.0}, "ridge must be a positive"),
        ({"ridge": float("nan")}, "ridge must be a positive"),
        ({"targets": torch.zeros(3)}, "nothing to write"),
        ({"keys": torch.zeros(3, 4)}, "every key is zero"),
        ({"keys": torch.zeros(0, 4), "targets": torch.zeros(0)}, "rows > 0"),
        ({"targets": torch.ones(2)}, "targets have shape"),
        ({"keys": torch.full((3, 4), float("inf"))}, "non-finite"),
    ],
)
def test_fit_refuses_degenerate_inputs(change, message):
    arguments = {"keys": torch.randn(3, 4), "targets": torch.ones(3), "ridge": 1e-2}
    arguments.update(change)
    with pytest.raises(ValueError, match=message):
        fit_write(arguments["keys"], arguments["targets"], None, arguments["ridge"])


def test_zero_keys_refuse_a_wrong_width():
    zero = ZeroKeys(4)
    with pytest.raises(ValueError, match=r"expected \[rows, 4\]"):
        zero.add(torch.ones(2, 5))
    with pytest.raises(ValueError, match="zero-constraint keys have width"):
        fit_write(torch.ones(2, 3), torch.ones(2), zero)


@settings(max_examples=40, deadline=None)
@given(seeds, st.integers(2, 20), st.integers(2, 20), st.integers(1, 10))
def test_decision_direction_against_numpy_and_sklearn(seed, toxic_rows, declined_rows, hidden):
    generator = torch.Generator().manual_seed(seed)
    toxic = torch.randn(toxic_rows, hidden, generator=generator, dtype=torch.float64)
    declined = torch.randn(declined_rows, hidden, generator=generator, dtype=torch.float64) + 1.5
    found = decision_direction(toxic, declined)
    difference = declined.numpy().mean(0) - toxic.numpy().mean(0)
    np.testing.assert_allclose(found.direction.numpy(), difference / np.linalg.norm(difference))
    toxic_projection = toxic.numpy() @ found.direction.numpy()
    declined_projection = declined.numpy() @ found.direction.numpy()
    assert found.toxic_mean == pytest.approx(toxic_projection.mean())
    assert found.declined_spread == pytest.approx(declined_projection.std(ddof=1))
    labels = np.r_[np.ones(toxic_rows), np.zeros(declined_rows)]
    scores = np.r_[-toxic_projection, -declined_projection]
    assert found.separability == pytest.approx(roc_auc_score(labels, scores))
    gap = (declined_projection.mean() - toxic_projection.mean()) / declined_projection.std(ddof=1)
    assert found.gap == pytest.approx(gap)


def test_shifts_reach_the_declined_mean_and_never_push_back():
    toxic = torch.tensor([[0.0, 0.0], [2.0, 0.0], [5.0, 1.0]])
    declined = torch.tensor([[4.0, 0.0], [4.0, 2.0]])
    found = decision_direction(toxic, declined)
    # direction (4 - 7/3, 1 - 1/3) normalised; the third toxic row is beyond the declined mean
    shifts = found.shifts(toxic, strength=2.0)
    expected = 2.0 * (found.declined_mean - found.project(toxic)).clamp(min=0)
    torch.testing.assert_close(shifts, expected)
    assert float(shifts[2]) == 0.0 and float(shifts[0]) > float(shifts[1]) > 0
    with pytest.raises(ValueError, match="strength"):
        found.shifts(toxic, strength=0.0)


def test_decision_direction_refuses_degenerate_classes():
    with pytest.raises(ValueError, match="same mean state"):
        decision_direction(torch.ones(3, 2), torch.ones(4, 2))
    with pytest.raises(ValueError, match="at least two rows"):
        decision_direction(torch.ones(1, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="non-finite"):
        decision_direction(torch.full((2, 2), float("nan")), torch.zeros(4, 2))


def test_write_shares_split_the_shift():
    direction = torch.tensor([0.0, 2.0])  # normalised inside
    attention = torch.tensor([[5.0, 3.0], [0.0, 3.0]])
    mlp = torch.tensor([[1.0, 1.0], [9.0, 1.0]])
    shares = write_shares(direction, attention, mlp)
    assert shares.attention == (3.0, 3.0) and shares.mlp == (1.0, 1.0)
    assert shares.attention_share == pytest.approx(0.75)
    assert shares.mlp_share == pytest.approx(0.25)
    with pytest.raises(ValueError, match="layers, hidden"):
        write_shares(direction, attention, mlp[:1])


def test_chance_distance_golden():
    aurocs = [torch.tensor([0.5, 0.95, 0.85]), torch.tensor([[0.1, 0.6]])]
    found = chance_distance(aurocs)
    assert found.units == 5
    assert found.above_08 == pytest.approx(2 / 5)
    assert found.above_09 == pytest.approx(1 / 5)
    assert found.below_02 == pytest.approx(1 / 5)
    assert found.mean_distance == pytest.approx((0 + 0.45 + 0.35 + 0.4 + 0.1) / 5)
    with pytest.raises(ValueError, match="no AUROC"):
        chance_distance([])


def test_delta_record_validates_and_orients():
    delta = LowRankDelta("m", torch.arange(3.0, dtype=torch.float64), torch.ones(2))
    assert delta.u.dtype == torch.float32 and (delta.out_features, delta.in_features) == (3, 2)
    assert delta.stored_shape("out_in") == (3, 2) and delta.stored_shape("in_out") == (2, 3)
    torch.testing.assert_close(delta.matrix("in_out"), delta.matrix("out_in").T)
    keys = torch.randn(4, 5, 2)
    torch.testing.assert_close(delta.write(keys), keys @ delta.matrix("out_in").T)
    with pytest.raises(ValueError, match="1-D float"):
        LowRankDelta("m", torch.ones(2, 2), torch.ones(2))
    with pytest.raises(ValueError, match="non-finite"):
        LowRankDelta("m", torch.ones(2), torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="reads 2"):
        delta.write(torch.ones(3))


def test_edit_delta_takes_the_unit_direction_and_the_fit():
    toxic, declined = torch.randn(5, 3), torch.randn(6, 3) + 2
    direction = decision_direction(toxic, declined)
    fit = fit_write(torch.randn(5, 4), torch.ones(5), None, 0.1)
    delta = edit_delta("m", direction, fit)
    torch.testing.assert_close(delta.u.double(), direction.direction, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(delta.v.double(), fit.v, atol=1e-7, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# The low-rank fold against the hook's arithmetic

shapes = st.tuples(st.integers(1, 12), st.integers(1, 12))


def _hooked(layer: torch.nn.Module, x, delta, a_out, a_in):
    """The hook reference: SGM scales the input and the output, the edit adds u (vᵀ k) with k
    the input before SGM's scaling (core.edit_hooks)."""
    scaled = x if a_in is None else x * a_in
    out = layer(scaled)
    if a_out is not None:
        out = out * a_out
    return out + delta.write(x)


@settings(max_examples=60, deadline=None)
@given(shapes, seeds, st.sampled_from(["out_in", "in_out"]), st.booleans(), st.booleans())
def test_low_rank_fold_equals_hooks(shape, seed, layout, with_output, with_input):
    out_features, in_features = shape
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if layout == "out_in":
        layer = torch.nn.Linear(in_features, out_features, bias=False)
    else:
        layer = Conv1D(out_features, in_features)
        torch.nn.init.normal_(layer.bias)
    a_out = torch.rand(out_features, generator=generator) if with_output else None
    a_in = torch.rand(in_features, generator=generator) if with_input else None
    delta = LowRankDelta(
        "m",
        torch.randn(out_features, generator=generator),
        torch.randn(in_features, generator=generator),
    )
    x = torch.randn(5, in_features, generator=generator)
    with torch.no_grad():
        expected = _hooked(layer, x, delta, a_out, a_in)
    weight = layer.weight.detach()
    # the stored matrix's rows are outputs for out_in, inputs for in_out
    rows_scale, cols_scale = (a_out, a_in) if layout == "out_in" else (a_in, a_out)
    fold = TensorFold(tuple(weight.shape))
    if rows_scale is not None:
        fold.scale_axis(0, rows_scale)
    if cols_scale is not None:
        fold.scale_axis(1, cols_scale)
    fold.add_low_rank(*delta.stored(layout))
    cut = int(torch.randint(0, weight.shape[0] + 1, (1,), generator=generator))
    folded = torch.cat(  # two streamed blocks, as the bake writes them
        [fold.fold_block(weight[:cut], 0), fold.fold_block(weight[cut:], cut)]
    ).to(weight.dtype)
    torch.testing.assert_close(folded, fold.fold(weight))
    if layout == "out_in":
        result = x @ folded.T
    else:
        bias = layer.bias.detach() * (a_out if a_out is not None else 1)
        result = x @ folded + bias
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(shapes, seeds, st.sampled_from([torch.float32, torch.bfloat16]))
def test_unfold_subtracts_the_term_then_unscales(shape, seed, dtype):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator).to(dtype)
    rows = torch.rand(shape[0], generator=generator) + 0.5
    cols = torch.rand(shape[1], generator=generator) + 0.5
    term = (torch.randn(shape[0], generator=generator), torch.randn(shape[1], generator=generator))
    fold = TensorFold(shape, rows, cols)
    fold.add_low_rank(*term)
    baked = fold.fold(weight)
    assert baked.dtype == dtype
    exact = rows.double()[:, None] * weight.double() * cols.double() + torch.outer(*term).double()
    step = 2.0 ** (-8 if dtype == torch.bfloat16 else -23)
    assert float((baked.double() - exact).abs().max()) <= 4 * step * float(exact.abs().max())
    rebuilt = unfold_weight(baked, rows, cols, [term])
    tolerance = 16 * step * (1 + float(torch.outer(*term).abs().max()))
    assert float((rebuilt.double() - weight.double()).abs().max()) <= tolerance
    unchanged = fold_weight(weight, rows, cols)
    assert not torch.equal(unchanged, baked) or not bool(torch.outer(*term).any())


def test_low_rank_terms_refuse_stacks_biases_and_wrong_shapes():
    with pytest.raises(ValueError, match="stack of experts"):
        TensorFold((2, 3, 4)).add_low_rank(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="not one"):
        TensorFold((3,)).add_low_rank(torch.ones(3), torch.ones(1))
    with pytest.raises(ValueError, match="does not fit"):
        TensorFold((3, 4)).add_low_rank(torch.ones(4), torch.ones(3))
