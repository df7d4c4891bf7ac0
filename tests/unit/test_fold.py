"""The fold in isolation: folded weights compute exactly what the hooks compute."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.pytorch_utils import Conv1D

from sgm_bake.core.fold import fold_bias, fold_weight, unfold_weight, unit_axis

shapes = st.tuples(st.integers(1, 12), st.integers(1, 12))
seeds = st.integers(0, 2**31 - 1)


def _linear(out_features: int, in_features: int, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(in_features, out_features)


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(shapes, seeds)
def test_output_fold_equals_output_hook(shape, seed):
    out_features, in_features = shape
    layer = _linear(out_features, in_features, seed)
    alpha = torch.rand(out_features, generator=torch.Generator().manual_seed(seed))
    x = torch.randn(5, in_features)
    hooked = layer(x) * alpha
    axis = unit_axis("out_in", "output")
    assert axis == 0
    folded = fold_weight(layer.weight.detach(), row_scale=alpha)
    bias = fold_bias(layer.bias.detach(), alpha)
    torch.testing.assert_close(x @ folded.T + bias, hooked, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(shapes, seeds)
def test_input_fold_equals_pre_hook(shape, seed):
    out_features, in_features = shape
    layer = _linear(out_features, in_features, seed)
    alpha = torch.rand(in_features, generator=torch.Generator().manual_seed(seed))
    x = torch.randn(5, in_features)
    hooked = layer(x * alpha)
    assert unit_axis("out_in", "input") == 1
    folded = fold_weight(layer.weight.detach(), col_scale=alpha)
    torch.testing.assert_close(x @ folded.T + layer.bias.detach(), hooked, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(shapes, seeds, st.sampled_from(["output", "input"]))
def test_conv1d_layout_swaps_axes(shape, seed, side):
    n_out, n_in = shape
    torch.manual_seed(seed)
    layer = Conv1D(n_out, n_in)
    torch.nn.init.normal_(layer.bias)
    units = n_out if side == "output" else n_in
    alpha = torch.rand(units, generator=torch.Generator().manual_seed(seed))
    x = torch.randn(3, n_in)
    axis = unit_axis("in_out", side)
    weight = layer.weight.detach()
    if side == "output":
        hooked = layer(x) * alpha
        folded = fold_weight(weight, col_scale=alpha) if axis == 1 else None
        result = x @ folded + fold_bias(layer.bias.detach(), alpha)
    else:
        hooked = layer(x * alpha)
        folded = fold_weight(weight, row_scale=alpha) if axis == 0 else None
        result = x @ folded + layer.bias.detach()
    torch.testing.assert_close(result, hooked, rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(shapes, seeds, st.sampled_from([torch.bfloat16, torch.float16]))
def test_half_precision_rounds_once(shape, seed, dtype):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator).to(dtype)
    rows = torch.rand(shape[0], generator=generator)
    cols = torch.rand(shape[1], generator=generator)
    folded = fold_weight(weight, rows, cols)
    assert folded.dtype == dtype
    expected = (weight.float() * rows[:, None] * cols[None, :]).to(dtype)
    assert torch.equal(folded, expected)


def test_identity_factors_are_bit_exact():
    weight = torch.randn(7, 5).to(torch.bfloat16)
    assert torch.equal(fold_weight(weight, torch.ones(7), torch.ones(5)), weight)


@settings(max_examples=40, deadline=None)
@given(shapes, seeds)
def test_unfold_inverts_fold_in_fp32(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator)
    rows = 0.05 + torch.rand(shape[0], generator=generator)
    folded = fold_weight(weight, rows)
    torch.testing.assert_close(unfold_weight(folded, rows), weight, rtol=3e-7, atol=0)


def test_shape_mismatch_is_an_error():
    import pytest

    with pytest.raises(ValueError):
        fold_weight(torch.zeros(3, 4), row_scale=torch.ones(4))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), shapes, seeds, st.sampled_from(["output", "input"]))
def test_stacked_fold_equals_per_expert_scaling(experts, shape, seed, side):
    """Stacked experts [E, out, in]: expert e's output (input) channels times alpha[e]."""
    from sgm_bake.core.fold import fold_stacked

    out_features, in_features = shape
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(experts, out_features, in_features, generator=generator)
    units = out_features if side == "output" else in_features
    alpha = torch.rand(experts, units, generator=generator)
    x = torch.randn(experts, 3, in_features, generator=generator)
    if side == "output":
        hooked = torch.einsum("eoi,eti->eto", weight, x) * alpha[:, None, :]
        folded = fold_stacked(weight, row_scale=alpha)
    else:
        hooked = torch.einsum("eoi,eti->eto", weight, x * alpha[:, None, :])
        folded = fold_stacked(weight, col_scale=alpha)
    torch.testing.assert_close(torch.einsum("eoi,eti->eto", folded, x), hooked)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([(7,), (6, 5), (3, 4, 5)]), seeds, st.integers(1, 4))
def test_streamed_blocks_equal_the_whole_fold(shape, seed, block):
    """The bake folds row blocks (TensorFold.fold_block): the result equals folding at once."""
    from sgm_bake.core.fold import TensorFold

    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator).to(torch.bfloat16)
    fold = TensorFold(shape)
    fold.scale_axis(0, torch.rand(shape if len(shape) == 1 else shape[:-1], generator=generator))
    if len(shape) > 1:
        fold.scale_axis(1, torch.rand((*shape[:-2], shape[-1]), generator=generator))
    pieces = [
        fold.fold_block(weight[start : start + block], start).to(weight.dtype)
        for start in range(0, shape[0], block)
    ]
    assert torch.equal(torch.cat(pieces), fold.fold(weight))
    if len(shape) == 3:  # the writer streams a stack as rows of its [E * a, b] view
        flat = weight.reshape(-1, shape[-1])
        pieces = [
            fold.fold_block(flat[start : start + block], start).to(weight.dtype)
            for start in range(0, flat.shape[0], block)
        ]
        assert torch.equal(torch.cat(pieces).reshape(shape), fold.fold(weight))
