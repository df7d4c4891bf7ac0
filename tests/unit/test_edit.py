"""The conditional write's math: the ridge fit against numpy, primal against dual, the decision
direction and the diagnosis figures, and the low-rank fold against the hook's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score
from transformers.pytorch_utils import Conv1D

from sgm_bake.core.edit import (
    LowRankDelta,
    ZeroKeys,
    chance_distance,
    decision_direction,
    fit_reduced_rank,
    write_shares,
)
from sgm_bake.core.fold import TensorFold, fold_weight, unfold_weight

seeds = st.integers(0, 2**31 - 1)


def _problem(seed: int, rows: int, zeros: int, width: int, out: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(rows, width, generator=generator, dtype=torch.float64)
    targets = torch.randn(rows, out, generator=generator, dtype=torch.float64)
    zero = torch.randn(zeros, width, generator=generator, dtype=torch.float64) * 2
    return keys, targets, zero


def _numpy_ridge(
    keys: torch.Tensor, targets: torch.Tensor, zero: torch.Tensor, ridge: float
) -> np.ndarray:
    """An independent solution: least squares on the system augmented by sqrt(λ) I, [in, out]."""
    stacked = np.concatenate([keys.numpy(), zero.numpy()])
    width = stacked.shape[1]
    regularisation = ridge * float((stacked**2).sum()) / width
    system = np.concatenate([stacked, np.sqrt(regularisation) * np.eye(width)])
    right = np.concatenate([targets.numpy(), np.zeros((len(zero) + width, targets.shape[1]))])
    return np.linalg.lstsq(system, right, rcond=None)[0]


def _streamed(zero_keys: torch.Tensor, width: int) -> ZeroKeys:
    zero = ZeroKeys(width)
    for start in range(0, len(zero_keys), 7):  # in batches, as the capture adds them
        zero.add(zero_keys[start : start + 7])
    return zero


problems = st.tuples(
    seeds, st.integers(1, 12), st.integers(0, 40), st.integers(1, 16), st.integers(1, 8)
)


@settings(max_examples=60, deadline=None)
@given(problems, st.sampled_from([1e-4, 1e-2, 1.0]))
def test_full_rank_fit_is_the_ridge_solution(problem, ridge):
    seed, rows, zeros, width, out = problem
    keys, targets, zero_keys = _problem(seed, rows, zeros, width, out)
    expected = _numpy_ridge(keys, targets, zero_keys, ridge)  # [in, out]
    fit = fit_reduced_rank(keys, targets, _streamed(zero_keys, width), ridge, rank=out)
    scale = max(1.0, float(np.abs(expected).max()))
    # all output directions kept: U Vᵀ is the full multi-output ridge solution Bᵀ
    np.testing.assert_allclose((fit.u @ fit.v.T).numpy(), expected.T, atol=1e-8 * scale)
    torch.testing.assert_close(fit.u.T @ fit.u, torch.eye(out, dtype=torch.float64))


@settings(max_examples=60, deadline=None)
@given(problems, st.sampled_from([1e-3, 1e-1]), st.data())
def test_reduced_rank_keeps_the_best_directions(problem, ridge, data):
    seed, rows, zeros, width, out = problem
    rank = data.draw(st.integers(1, out))
    keys, targets, zero_keys = _problem(seed, rows, zeros, width, out)
    full = torch.from_numpy(_numpy_ridge(keys, targets, zero_keys, ridge))  # [in, out]
    fit = fit_reduced_rank(keys, targets, _streamed(zero_keys, width), ridge, rank)
    # the write is the full solution's outputs projected on the kept directions
    torch.testing.assert_close(fit.v, full @ fit.u, atol=1e-8, rtol=1e-6)
    everything = torch.cat([keys, zero_keys])

    def lost(directions: torch.Tensor) -> float:
        """Energy of the full fit's outputs (on every constrained key) that a projection on
        `directions` (orthonormal [out, r]) drops."""
        outputs = everything @ full
        return float((outputs - outputs @ directions @ directions.T).pow(2).sum())

    best = lost(fit.u)
    # Eckart-Young: the dropped energy is the sum of the discarded eigenvalues, and no other
    # rank-r projection drops less
    assert best == pytest.approx(float(fit.spectrum[rank:].sum()), rel=1e-6, abs=1e-8)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(5):
        other, _ = torch.linalg.qr(torch.randn(out, rank, generator=generator, dtype=torch.float64))
        assert best <= lost(other) + 1e-9 * (1 + best)
    residual = targets - keys @ fit.v @ fit.u.T
    explained = 1 - float(residual.pow(2).sum()) / float(targets.pow(2).sum())
    assert fit.explained == pytest.approx(explained, rel=1e-9, abs=1e-12)


def test_zero_constraints_pull_the_write_to_zero_there():
    keys, targets, zero_keys = _problem(3, 6, 200, 16, 4)
    free = fit_reduced_rank(keys, targets, None, 1e-6, 2)
    held = fit_reduced_rank(keys, targets, _streamed(zero_keys, 16), 1e-6, 2)
    written = (zero_keys @ held.v).abs().mean()
    assert float(written) < 0.2 * float((zero_keys @ free.v).abs().mean())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ridge": 0.0}, "ridge must be a positive"),
        ({"ridge": float("nan")}, "ridge must be a positive"),
        ({"targets": torch.zeros(3, 2)}, "nothing to write"),
        ({"keys": torch.zeros(3, 4)}, "every key is zero"),
        ({"keys": torch.zeros(0, 4), "targets": torch.zeros(0, 2)}, "rows > 0"),
        ({"targets": torch.ones(2, 2)}, "targets have shape"),
        ({"targets": torch.ones(3)}, "targets have shape"),
        ({"keys": torch.full((3, 4), float("inf"))}, "non-finite"),
        ({"rank": 0}, "rank must be between 1"),
        ({"rank": 3}, "rank must be between 1"),
    ],
)
def test_fit_refuses_degenerate_inputs(change, message):
    arguments = {"keys": torch.randn(3, 4), "targets": torch.ones(3, 2), "ridge": 1e-2, "rank": 1}
    arguments.update(change)
    with pytest.raises(ValueError, match=message):
        fit_reduced_rank(
            arguments["keys"], arguments["targets"], None, arguments["ridge"], arguments["rank"]
        )


def test_zero_keys_refuse_a_wrong_width():
    zero = ZeroKeys(4)
    with pytest.raises(ValueError, match=r"expected \[rows, 4\]"):
        zero.add(torch.ones(2, 5))
    with pytest.raises(ValueError, match="zero-constraint keys have width"):
        fit_reduced_rank(torch.ones(2, 3), torch.ones(2, 2), zero)


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
    assert delta.rank == 1 and delta.u.shape == (3, 1)  # a vector is rank 1 (expertise/2)
    assert delta.stored_shape("out_in") == (3, 2) and delta.stored_shape("in_out") == (2, 3)
    torch.testing.assert_close(delta.matrix("in_out"), delta.matrix("out_in").T)
    keys = torch.randn(4, 5, 2)
    torch.testing.assert_close(delta.write(keys), keys @ delta.matrix("out_in").T)
    with pytest.raises(ValueError, match="same number of columns"):
        LowRankDelta("m", torch.ones(2, 2), torch.ones(2))
    with pytest.raises(ValueError, match=r"matrix \[units, rank\]"):
        LowRankDelta("m", torch.ones(2, 2, 2), torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match="non-finite"):
        LowRankDelta("m", torch.ones(2), torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="reads 2"):
        delta.write(torch.ones(3))


@settings(max_examples=40, deadline=None)
@given(seeds, st.integers(1, 9), st.integers(1, 9), st.integers(1, 4))
def test_rank_r_delta_writes_its_matrix_and_knows_its_norm(seed, out, width, rank):
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn(out, rank, generator=generator)
    v = torch.randn(width, rank, generator=generator)
    delta = LowRankDelta("m", u, v)
    matrix = u.double() @ v.double().T
    torch.testing.assert_close(delta.matrix("out_in").double(), matrix, rtol=1e-5, atol=1e-5)
    keys = torch.randn(2, 3, width, generator=generator)
    expected = (keys.double() @ matrix.T).float()
    torch.testing.assert_close(delta.write(keys), expected, rtol=1e-4, atol=1e-4)
    spectral = float(torch.linalg.matrix_norm(matrix, ord=2))
    assert delta.norm() == pytest.approx(spectral, rel=1e-5, abs=1e-6)


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
@given(
    shapes,
    seeds,
    st.sampled_from(["out_in", "in_out"]),
    st.booleans(),
    st.booleans(),
    st.integers(1, 3),
)
def test_low_rank_fold_equals_hooks(shape, seed, layout, with_output, with_input, rank):
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
        torch.randn(out_features, rank, generator=generator),
        torch.randn(in_features, rank, generator=generator),
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
@given(shapes, seeds, st.sampled_from([torch.float32, torch.bfloat16]), st.integers(1, 3))
@example((1, 1), 13696186, torch.bfloat16, 1)  # a term below bf16's step at the weight: it vanishes
def test_unfold_subtracts_the_term_then_unscales(shape, seed, dtype, rank):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator).to(dtype)
    rows = torch.rand(shape[0], generator=generator) + 0.5
    cols = torch.rand(shape[1], generator=generator) + 0.5
    term = (
        torch.randn(shape[0], rank, generator=generator),
        torch.randn(shape[1], rank, generator=generator),
    )
    product = term[0].double() @ term[1].double().T
    size = float((term[0].abs().double() @ term[1].abs().double().T).max())
    fold = TensorFold(shape, rows, cols)
    fold.add_low_rank(*term)
    baked = fold.fold(weight)
    assert baked.dtype == dtype
    exact = rows.double()[:, None] * weight.double() * cols.double() + product
    step = 2.0 ** (-8 if dtype == torch.bfloat16 else -23)
    bound = 4 * step * (float(exact.abs().max()) + rank * size)
    assert float((baked.double() - exact).abs().max()) <= bound
    rebuilt = unfold_weight(baked, rows, cols, [term])
    tolerance = 16 * step * (1 + rank * size)
    assert float((rebuilt.double() - weight.double()).abs().max()) <= tolerance
    # wherever the term outweighs both roundings (half a step of each side), the baked element
    # differs from the scaled-only one; a term below the rounding step may vanish, rightly
    unchanged = fold_weight(weight, rows, cols)
    scaled = rows.double()[:, None] * weight.to(torch.float32).double() * cols.double()
    visible = product.abs() > 4 * step * torch.maximum(scaled.abs(), (scaled + product).abs())
    assert bool((unchanged != baked)[visible].all())


def test_low_rank_terms_refuse_stacks_biases_and_wrong_shapes():
    with pytest.raises(ValueError, match="stack of experts"):
        TensorFold((2, 3, 4)).add_low_rank(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="not one"):
        TensorFold((3,)).add_low_rank(torch.ones(3), torch.ones(1))
    with pytest.raises(ValueError, match="does not fit"):
        TensorFold((3, 4)).add_low_rank(torch.ones(4), torch.ones(3))
    with pytest.raises(ValueError, match="does not fit"):  # ranks that differ
        TensorFold((3, 4)).add_low_rank(torch.ones(3, 2), torch.ones(4, 3))
