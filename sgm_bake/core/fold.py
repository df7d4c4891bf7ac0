"""The fold: scaling a linear layer's units inside its weights (pure math, no I/O).

For `y = W x + b` with W stored [out, in], scaling output unit i by alpha_i is scaling row i of W
and b_i: `alpha * (W x + b) = (diag(alpha) W) x + alpha * b`. Scaling input unit j (a pre-hook
`x_j * alpha_j`) is scaling column j of W; the bias is untouched. GPT-2's Conv1D stores W as
[in, out], which swaps rows and columns. Factors are applied in float32 and the result is rounded
once to the stored dtype, so a bf16 weight incurs a single rounding.
"""

from __future__ import annotations

import torch

from sgm_bake.core.recipes import Layout, Side


def unit_axis(layout: Layout, side: Side) -> int:
    """The axis of the stored weight that indexes the units of a hook point."""
    output_axis = 0 if layout == "out_in" else 1
    return output_axis if side == "output" else 1 - output_axis


def scale_weight(
    weight: torch.Tensor,
    row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
    compute: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Scale the rows and/or columns of a 2-D weight in `compute` precision (not yet rounded
    back to the weight's dtype)."""
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
    scaled = weight.to(compute, copy=True)
    if row_scale is not None:
        if row_scale.shape != (weight.shape[0],):
            raise ValueError(
                f"row scale {tuple(row_scale.shape)} does not fit {tuple(weight.shape)}"
            )
        scaled.mul_(row_scale.to(compute)[:, None])
    if col_scale is not None:
        if col_scale.shape != (weight.shape[1],):
            raise ValueError(
                f"col scale {tuple(col_scale.shape)} does not fit {tuple(weight.shape)}"
            )
        scaled.mul_(col_scale.to(compute)[None, :])
    return scaled


def fold_weight(
    weight: torch.Tensor,
    row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scale the rows and/or columns of a 2-D weight, in float32, rounding once to its dtype."""
    return scale_weight(weight, row_scale, col_scale).to(weight.dtype)


def fold_bias(bias: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Scale a bias vector by per-unit factors, in float32, rounding once to its dtype."""
    if bias.shape != scale.shape:
        raise ValueError(f"bias {tuple(bias.shape)} does not fit scale {tuple(scale.shape)}")
    return (bias.to(torch.float32) * scale.to(torch.float32)).to(bias.dtype)


def unfold_weight(
    weight: torch.Tensor,
    row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Invert `fold_weight`: divide in float64 and round once, so the result is within the
    fold's rounding plus one more of the original. Every scale must be non-zero."""
    inverse_rows = None if row_scale is None else 1.0 / row_scale.to(torch.float64)
    inverse_cols = None if col_scale is None else 1.0 / col_scale.to(torch.float64)
    return scale_weight(weight, inverse_rows, inverse_cols, torch.float64).to(weight.dtype)
