"""The fold: scaling a linear layer's units inside its weights (pure math, no I/O).

For `y = W x + b` with W stored [out, in], scaling output unit i by alpha_i is scaling row i of W
and b_i: `alpha * (W x + b) = (diag(alpha) W) x + alpha * b`. Scaling input unit j (a pre-hook
`x_j * alpha_j`) is scaling column j of W; the bias is untouched. GPT-2's Conv1D stores W as
[in, out], which swaps rows and columns.

Stacked experts hold one such matrix per expert, [E, a, b]; expert e's matrix is scaled by its
own factors, so the row factors are [E, a] and the column factors [E, b]. Per-expert checkpoint
weights are ordinary 2-D matrices taking one expert's slice of the factors.

Factors are applied in float32 (float64 when unfolding) and the result is rounded once to the
stored dtype, so a bf16 weight incurs a single rounding. `TensorFold` is what the streaming bake
applies block by block; `fold_weight` and `fold_stacked` are the same fold on a whole tensor.

A 2-D matrix may also carry low-rank terms (the conditional write of `core.edit`), added after
the scaling in the same precision and rounding: `W' = diag(rows) · W · diag(cols) + Σ r cᵀ`, with
each term given in the stored orientation (`LowRankDelta.stored(layout)`: a row factor [a, r]
and a column factor [b, r], the term `R Cᵀ`; a vector is rank 1). Rows [r0, r1) of a block get
`R[r0:r1] Cᵀ`, term by term, so a block's result does not depend on where the blocks are cut.
Stacked experts and biases take no low-rank term.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from sgm_bake.core.recipes import Layout, Side


def unit_axis(layout: Layout, side: Side) -> int:
    """The axis of a stored 2-D matrix that indexes the units of a hook point (for stacked
    experts [E, a, b], add one)."""
    output_axis = 0 if layout == "out_in" else 1
    return output_axis if side == "output" else 1 - output_axis


def scale_weight(
    weight: torch.Tensor,
    row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
    compute: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Scale the rows and/or columns of a matrix, or of every matrix of a stack [E, a, b], in
    `compute` precision (not yet rounded back to the weight's dtype).

    Row factors have the weight's shape without its last axis ([a] or [E, a]); column factors
    without its second-to-last ([b] or [E, b])."""
    if weight.ndim not in (2, 3):
        raise ValueError(f"expected a 2-D or stacked 3-D weight, got shape {tuple(weight.shape)}")
    scaled = weight.to(compute, copy=True)
    if row_scale is not None:
        if tuple(row_scale.shape) != tuple(weight.shape[:-1]):
            raise ValueError(
                f"row scale {tuple(row_scale.shape)} does not fit {tuple(weight.shape)}"
            )
        scaled.mul_(row_scale.to(compute).unsqueeze(-1))
    if col_scale is not None:
        expected = (*weight.shape[:-2], weight.shape[-1])
        if tuple(col_scale.shape) != expected:
            raise ValueError(
                f"col scale {tuple(col_scale.shape)} does not fit {tuple(weight.shape)}"
            )
        scaled.mul_(col_scale.to(compute).unsqueeze(-2))
    return scaled


@dataclass
class TensorFold:
    """The factors to apply to one stored tensor: a bias [n], a matrix [a, b] or a stack of
    expert matrices [E, a, b]. Factors on the same axis from several hook points multiply."""

    shape: tuple[int, ...]
    row_scale: torch.Tensor | None = None
    col_scale: torch.Tensor | None = None
    compute: torch.dtype = torch.float32
    low_rank: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    """Terms `rows colsᵀ` (factors [a, r] and [b, r] of a 2-D [a, b] matrix) added after
    scaling."""

    def scale_axis(self, axis: int, factors: torch.Tensor) -> None:
        """Multiply the factors of matrix axis `axis` (0: rows, 1: columns; a bias has rows
        only) by `factors` ([units], or [E, units] for a stack)."""
        if axis not in (0, 1) or (axis == 1 and len(self.shape) == 1):
            raise ValueError(f"axis {axis} does not exist for shape {self.shape}")
        factors = factors.to(torch.float64)
        current = self.row_scale if axis == 0 else self.col_scale
        combined = factors if current is None else current * factors
        if axis == 0:
            self.row_scale = combined
        else:
            self.col_scale = combined
        self.check()

    def add_low_rank(self, rows: torch.Tensor, cols: torch.Tensor) -> None:
        """Add the term `rows colsᵀ` (factors [a, r] and [b, r]; vectors [a] and [b] are rank
        1) to a 2-D matrix (after its scaling)."""
        if len(self.shape) != 2:
            raise ValueError(
                f"a low-rank term needs a 2-D matrix; {self.shape} is "
                + ("a stack of experts" if len(self.shape) == 3 else "not one")
            )
        rows = rows.unsqueeze(1) if rows.ndim == 1 else rows
        cols = cols.unsqueeze(1) if cols.ndim == 1 else cols
        self.low_rank.append((rows.to(torch.float64), cols.to(torch.float64)))
        self.check()

    def check(self) -> None:
        """Raise ValueError unless the factors fit the tensor's shape."""
        shape = self.shape
        rows_expected = shape if len(shape) == 1 else shape[:-1]
        cols_expected = (*shape[:-2], shape[-1]) if len(shape) > 1 else None
        if self.row_scale is not None and tuple(self.row_scale.shape) != tuple(rows_expected):
            raise ValueError(f"row scale {tuple(self.row_scale.shape)} does not fit {shape}")
        if self.col_scale is not None and (
            cols_expected is None or tuple(self.col_scale.shape) != tuple(cols_expected)
        ):
            raise ValueError(f"col scale {tuple(self.col_scale.shape)} does not fit {shape}")
        for rows, cols in self.low_rank:
            if len(shape) != 2 or (rows.ndim, cols.ndim) != (2, 2):
                raise ValueError(f"a low-rank term is two factors of a 2-D matrix, not {shape}")
            if (rows.shape[0], cols.shape[0]) != shape or rows.shape[1] != cols.shape[1]:
                raise ValueError(
                    f"low-rank term {list(rows.shape)} x {list(cols.shape)}ᵀ does not fit {shape}"
                )

    def fold_block(self, block: torch.Tensor, first_row: int) -> torch.Tensor:
        """Fold rows [first_row, first_row + len(block)) of the stored tensor's first axis (matrix
        rows, or whole experts of a stack [E, a, b]; a stack may also come as rows of its
        [E * a, b] view, and a bias as [n] or [n, 1]). The result is in `compute` precision;
        the caller rounds it once to the stored dtype."""
        count = block.shape[0]
        if len(self.shape) == 3 and block.ndim == 2:
            return self._fold_flat_rows(block, first_row)
        rows = None if self.row_scale is None else self.row_scale[first_row : first_row + count]
        if len(self.shape) == 1:
            column = block.reshape(count, 1)
            scaled = scale_weight(column, rows, None, self.compute)
            return scaled.reshape(block.shape)
        cols = self.col_scale
        if len(self.shape) == 3 and cols is not None:
            cols = cols[first_row : first_row + count]
        scaled = scale_weight(block, rows, cols, self.compute)
        for term_rows, term_cols in self.low_rank:
            part = term_rows[first_row : first_row + count].to(self.compute)
            scaled.add_(part @ term_cols.to(self.compute).T)
        return scaled

    def _fold_flat_rows(self, block: torch.Tensor, first_row: int) -> torch.Tensor:
        """A block of a stack [E, a, b] viewed as [E * a, b]: row r is row r % a of expert
        r // a. The streaming writer folds stacks this way, so a block can be a slice of one
        expert's matrix and memory stays at about a megabyte however large the experts are.
        The multiplications are the same, in the same order, as `scale_weight` on the stack."""
        rows_per_expert = self.shape[1]
        index = torch.arange(first_row, first_row + block.shape[0])
        experts, within = index // rows_per_expert, index % rows_per_expert
        scaled = block.to(self.compute, copy=True)
        if self.row_scale is not None:
            scaled.mul_(self.row_scale[experts, within].to(self.compute).unsqueeze(-1))
        if self.col_scale is not None:
            scaled.mul_(self.col_scale[experts].to(self.compute))
        return scaled

    def inverse(self) -> TensorFold:
        """The fold that undoes this one, in float64: divide by the factors after subtracting
        the low-rank terms (`inverse_low_rank`). Every factor must be non-zero."""
        inverse_rows = None if self.row_scale is None else 1.0 / self.row_scale
        inverse_cols = None if self.col_scale is None else 1.0 / self.col_scale
        undo = TensorFold(self.shape, inverse_rows, inverse_cols, torch.float64)
        for rows, cols in self.low_rank:
            undo.add_low_rank(*inverse_low_rank(rows, cols, self.row_scale, self.col_scale))
        return undo

    def scaling(self) -> TensorFold:
        """The same factors without the low-rank terms."""
        return TensorFold(self.shape, self.row_scale, self.col_scale, self.compute)

    def fold(self, tensor: torch.Tensor) -> torch.Tensor:
        """The whole tensor folded and rounded once to its dtype."""
        if tuple(tensor.shape) != tuple(self.shape):
            raise ValueError(f"tensor {tuple(tensor.shape)} is not the planned {self.shape}")
        self.check()
        return self.fold_block(tensor, 0).to(tensor.dtype)


def fold_weight(
    weight: torch.Tensor,
    row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scale the rows and/or columns of a 2-D weight, in float32, rounding once to its dtype."""
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
    return TensorFold(tuple(weight.shape), row_scale, col_scale).fold(weight)


def fold_stacked(
    weight: torch.Tensor,
    row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scale each expert matrix of a stack [E, a, b] by its own row [E, a] and column [E, b]
    factors, in float32, rounding once to its dtype."""
    if weight.ndim != 3:
        raise ValueError(f"expected a stacked 3-D weight, got shape {tuple(weight.shape)}")
    return TensorFold(tuple(weight.shape), row_scale, col_scale).fold(weight)


def fold_bias(bias: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Scale a bias vector by per-unit factors, in float32, rounding once to its dtype."""
    if bias.shape != scale.shape:
        raise ValueError(f"bias {tuple(bias.shape)} does not fit scale {tuple(scale.shape)}")
    return TensorFold(tuple(bias.shape), scale).fold(bias)


def inverse_low_rank(
    rows: torch.Tensor,
    cols: torch.Tensor,
    row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The term that undoes a baked `diag(r) W diag(c) + rows colsᵀ` in a fold that scales by
    `1/r` and `1/c` first: `-(diag(1/r) rows) (diag(1/c) cols)ᵀ`, in float64 (factors [a, r] and
    [b, r], or vectors; every scale must be non-zero). `W = diag(1/r) (W' - rows colsᵀ) diag(1/c)`
    is then again "scale, then add"."""
    rows = rows.to(torch.float64)
    cols = cols.to(torch.float64)
    rows = rows.unsqueeze(1) if rows.ndim == 1 else rows
    cols = cols.unsqueeze(1) if cols.ndim == 1 else cols
    if row_scale is not None:
        rows = rows / row_scale.to(torch.float64).unsqueeze(1)
    if col_scale is not None:
        cols = cols / col_scale.to(torch.float64).unsqueeze(1)
    return -rows, cols


def unfold_weight(
    weight: torch.Tensor,
    row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
    low_rank: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
) -> torch.Tensor:
    """Invert `fold_weight` (and the low-rank terms added after it): subtract and divide in
    float64 and round once, so the result is within the fold's rounding plus one more of the
    original. Every scale must be non-zero."""
    inverse_rows = None if row_scale is None else 1.0 / row_scale.to(torch.float64)
    inverse_cols = None if col_scale is None else 1.0 / col_scale.to(torch.float64)
    fold = TensorFold(tuple(weight.shape), inverse_rows, inverse_cols, torch.float64)
    for rows, cols in low_rank:
        fold.add_low_rank(*inverse_low_rank(rows, cols, row_scale, col_scale))
    return fold.fold(weight)
