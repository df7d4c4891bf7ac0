"""The conditional write: a closed-form low-rank edit of an MLP's output projection (pure math).

Why a second method. SGM scales units by their AUROC, and AUROC measures which units *detect*
toxicity, not which ones *cause* it: a unit that fires on an insulting word in the image separates
the classes perfectly whether or not the reply depends on it. Where a model's toxicity lives in
a few MLP units (the implanted `organism`), scaling the detectors down removes it. Where the toxic
reply is the *absence* of a refusal signal (`organism-plain`, `organism-staged`, and published
measurements on real models), the decisive difference sits at the last prompt token, the
decision position, along one direction of the residual stream: declined prompts sit on one side,
toxic-eliciting prompts short of it, and attention writes most of that shift. Scaling units down
cannot create a signal that is missing; adding it can. Directional ablation (abliteration) has
the wrong sign for this job: it removes the refusal direction, which makes a model comply more,
so it raises harm; projecting it out of weights (ProFS-style) does nothing useful either.

The edit. For one decoder layer's MLP output projection `y = W k` (`k` the MLP key,
`act(gate(x)) * up(x)`), add a rank-r term, `W' = W + U Vᵀ`, so the layer writes `U (Vᵀ k)` on
top of what it wrote before (ROME/MEMIT-style closed form; cf. DINM), fitted by reduced-rank
ridge regression (`fit_reduced_rank`):

- the targets are whole vectors: at each toxic-eliciting row's fitted positions (the decision
  position, and the first reply positions where a toxic and a polite reply share their first
  words) the move from its state after the layer to the declined rows' mean state there, times
  a strength; at the keys to leave alone (the declined rows' decision and reply positions,
  benign anchors' every position) zero, so the write is conditional: it leaves declined and
  benign prompts, and whatever looks like them, unchanged;
- `B = argmin ‖K B - T‖² + ‖Z B‖² + λ ‖B‖²` in float64 (the primal solve, from the keys and the
  streamed Gram matrix of the zero keys), `λ = ridge · trace(KᵀK + ZᵀZ) / I` (the mean
  eigenvalue of the key Gram matrix times the knob, so the knob means the same on any model);
- the write keeps the `r` output directions that carry most of the fitted outputs: `U = P`,
  `V = B P`, P the top eigenvectors of `Bᵀ (KᵀK + ZᵀZ) B`.

Rank 1 along one difference-in-means direction (the first version of this edit) could not
separate the classes where no single direction does (`organism-staged`: separability 0.72); the
measurements behind the rank and the reply positions are in benchmarks/RESULTS.md.

Composition with SGM on the same tensor, defined once here. With SGM's output factors `a_out` and
input factors `a_in` on the same projection, the baked weight is

    W' = diag(a_out) · W · diag(a_in) + U Vᵀ

and the hook reference adds `U (Vᵀ k)` to the module's output after SGM's output scaling, with `k`
the module's input *before* SGM scales it. So the two terms are independent: the edit is fitted on
the keys as the layer computes them (with SGM's factors on other modules in place when the two
are combined), it may read units that SGM silences (they are the detectors, the best conditions
for a write), a change of SGM's factors never changes the stored delta, and unbaking subtracts
the delta first and divides by the factors after: `W = diag(1/a_out) (W' - U Vᵀ) diag(1/a_in)`,
which is again "scale, then add a low-rank term" (`core.fold.inverse_low_rank`). For a weight stored
`[out, in]` (nn.Linear) the term is `U Vᵀ`; stored `[in, out]` (GPT-2 Conv1D) it is `V Uᵀ`.

This module holds the math only: the decision direction (the diagnosis's), the fit, the delta
record, and the figures of the diagnosis (how separable the decision direction is, how
asymmetric the classes sit on it, who writes the shift, how far the AUROCs are from chance).
Capturing the states and keys from a model is `sgm_bake.pipeline.decision`; the run-time
reference is `sgm_bake.core.edit_hooks`; the fold is `sgm_bake.core.fold.TensorFold.add_low_rank`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from sgm_bake.core.recipes import Layout
from sgm_bake.core.rules import auroc

# ---------------------------------------------------------------------------------------------
# The delta record


@dataclass(frozen=True)
class LowRankDelta:
    """A low-rank term `U Vᵀ` added to one module's weight: `U` [out, r] over its output units,
    `V` [in, r] over its input units (float32), whatever the layout the weight is stored in.
    One-dimensional `u`, `v` (the rank-1 files of format expertise/2) are read as rank 1."""

    module: str
    u: torch.Tensor
    v: torch.Tensor

    def __post_init__(self) -> None:
        for name, matrix in (("u", self.u), ("v", self.v)):
            if matrix.ndim not in (1, 2) or not matrix.is_floating_point() or matrix.numel() == 0:
                raise ValueError(
                    f"delta {name} of {self.module!r} has shape {list(matrix.shape)} and dtype "
                    f"{matrix.dtype}; it must be a non-empty float vector [units] or matrix "
                    "[units, rank]"
                )
            if not bool(torch.isfinite(matrix).all()):
                raise ValueError(f"delta {name} of {self.module!r} has non-finite values")
        u = self.u if self.u.ndim == 2 else self.u.unsqueeze(1)
        v = self.v if self.v.ndim == 2 else self.v.unsqueeze(1)
        if u.shape[1] != v.shape[1]:
            raise ValueError(
                f"delta of {self.module!r} has u of rank {u.shape[1]} and v of rank {v.shape[1]}; "
                "they must have the same number of columns"
            )
        object.__setattr__(self, "u", u.detach().to(torch.float32).cpu().contiguous())
        object.__setattr__(self, "v", v.detach().to(torch.float32).cpu().contiguous())

    @property
    def out_features(self) -> int:
        return int(self.u.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.v.shape[0])

    @property
    def rank(self) -> int:
        """The number of columns of U and V (the term's rank when they are independent)."""
        return int(self.u.shape[1])

    def stored(self, layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
        """(row factor [a, r], column factor [b, r]) of the term in the stored matrix [a, b]:
        `U, V` for `[out, in]`, `V, U` for `[in, out]`, so the stored term is `rows colsᵀ`."""
        if layout == "out_in":
            return self.u, self.v
        if layout == "in_out":
            return self.v, self.u
        raise ValueError(f"layout {layout!r} is not 'out_in' or 'in_out'")

    def stored_shape(self, layout: Layout) -> tuple[int, int]:
        rows, cols = self.stored(layout)
        return int(rows.shape[0]), int(cols.shape[0])

    def matrix(self, layout: Layout) -> torch.Tensor:
        """The term as a float32 matrix in the stored orientation (for tests and small tensors;
        the bake adds it block by block)."""
        rows, cols = self.stored(layout)
        return rows @ cols.T

    def write(self, keys: torch.Tensor) -> torch.Tensor:
        """What the term adds to the module's output for inputs `keys` [..., in]: `U (Vᵀ k)`,
        computed in float32 (the hook reference)."""
        if keys.shape[-1] != self.in_features:
            raise ValueError(
                f"keys have {keys.shape[-1]} features but the delta of {self.module!r} reads "
                f"{self.in_features}"
            )
        v = self.v.to(device=keys.device)
        u = self.u.to(device=keys.device)
        return (keys.to(torch.float32) @ v) @ u.T

    def norm(self) -> float:
        """Spectral norm of the term (its largest singular value), from the r × r core of
        `U Vᵀ = Q_u (R_u R_vᵀ) Q_vᵀ`, so the full matrix is never formed."""
        _, r_u = torch.linalg.qr(self.u.double())
        _, r_v = torch.linalg.qr(self.v.double())
        return float(torch.linalg.matrix_norm(r_u @ r_v.T, ord=2))


# ---------------------------------------------------------------------------------------------
# The decision direction


@dataclass(frozen=True)
class DecisionDirection:
    """The direction from the toxic-eliciting rows' mean state toward the declined rows' mean
    state at the decision position, and how the two classes sit on it."""

    direction: torch.Tensor
    """float64 [hidden], unit norm."""
    toxic_mean: float
    toxic_spread: float
    declined_mean: float
    declined_spread: float
    separability: float
    """AUROC of the projections: the share of (toxic, declined) pairs in which the declined row
    projects further along the direction (in-sample)."""

    @property
    def gap(self) -> float:
        """Distance between the class means along the direction, in declined spreads."""
        return (self.declined_mean - self.toxic_mean) / max(self.declined_spread, 1e-12)

    @property
    def spread_ratio(self) -> float:
        """Toxic spread over declined spread: above 1 when the toxic-eliciting rows scatter short
        of a tight declined cluster (a missing signal rather than an opposite one)."""
        return self.toxic_spread / max(self.declined_spread, 1e-12)

    def project(self, states: torch.Tensor) -> torch.Tensor:
        """Projections of states [..., hidden] on the direction (float64)."""
        return states.to(torch.float64) @ self.direction.to(states.device)

    def describe(self) -> dict[str, float]:
        return {
            "separability": self.separability,
            "toxic_mean": self.toxic_mean,
            "toxic_spread": self.toxic_spread,
            "declined_mean": self.declined_mean,
            "declined_spread": self.declined_spread,
            "gap_in_declined_spreads": self.gap,
            "spread_ratio": self.spread_ratio,
        }


def _states(name: str, states: torch.Tensor) -> torch.Tensor:
    if states.ndim != 2 or states.shape[0] < 2:
        raise ValueError(
            f"{name} states have shape {list(states.shape)}; need [rows, hidden] with at least "
            "two rows"
        )
    states = states.to(torch.float64)
    if not bool(torch.isfinite(states).all()):
        raise ValueError(f"{name} states have non-finite values")
    return states


def decision_direction(toxic: torch.Tensor, declined: torch.Tensor) -> DecisionDirection:
    """The difference-in-means direction of states [rows, hidden] at the decision position, from
    the toxic-eliciting rows toward the declined rows, with the classes' positions on it."""
    toxic = _states("toxic-eliciting", toxic)
    declined = _states("declined", declined)
    if toxic.shape[1] != declined.shape[1]:
        raise ValueError(
            f"toxic-eliciting states have {toxic.shape[1]} features, declined {declined.shape[1]}"
        )
    difference = declined.mean(0) - toxic.mean(0)
    length = float(difference.norm())
    scale = float(torch.cat([toxic, declined]).norm(dim=1).mean())
    if length <= 1e-12 * max(scale, 1e-300):
        raise ValueError(
            "the toxic-eliciting and declined rows have the same mean state: there is no "
            "decision direction to write along"
        )
    direction = difference / length
    toxic_projection = toxic @ direction
    declined_projection = declined @ direction
    scores = torch.cat([-toxic_projection, -declined_projection]).unsqueeze(1)
    labels = torch.cat([torch.ones(len(toxic)), torch.zeros(len(declined))])
    return DecisionDirection(
        direction,
        float(toxic_projection.mean()),
        float(toxic_projection.std()),
        float(declined_projection.mean()),
        float(declined_projection.std()),
        float(auroc(scores, labels)[0]),
    )


# ---------------------------------------------------------------------------------------------
# The fit


class ZeroKeys:
    """Keys at which the write must add nothing (the declined rows' decision and reply
    positions, the anchors' every position), streamed in batches into their float64 Gram matrix
    `Σ k kᵀ` [width, width]: memory is width² float64 however many positions there are."""

    def __init__(self, width: int) -> None:
        if width <= 0:
            raise ValueError(f"key width must be positive, got {width}")
        self.width = width
        self.count = 0
        self._gram = torch.zeros(width, width, dtype=torch.float64)

    def add(self, keys: torch.Tensor) -> None:
        """Add keys [rows, width] (any float dtype)."""
        if keys.ndim != 2 or keys.shape[1] != self.width:
            raise ValueError(f"keys have shape {list(keys.shape)}; expected [rows, {self.width}]")
        keys = keys.detach().to(device="cpu", dtype=torch.float64)
        if not bool(torch.isfinite(keys).all()):
            raise ValueError("keys have non-finite values")
        self._gram += keys.T @ keys
        self.count += keys.shape[0]

    @property
    def gram(self) -> torch.Tensor:
        return self._gram

    @property
    def trace(self) -> float:
        return float(self._gram.diagonal().sum())


@dataclass(frozen=True)
class RankFit:
    """A reduced-rank write `U Vᵀ` and how well it reaches its targets."""

    u: torch.Tensor
    """float64 [out, r]: orthonormal output directions."""
    v: torch.Tensor
    """float64 [in, r]: what each direction reads from the keys."""
    regularisation: float
    explained: float
    """1 - ‖T - K V Uᵀ‖² / ‖T‖² at the targeted keys (1: every target reached exactly)."""
    spectrum: torch.Tensor
    """float64 [out]: the energies of the full-rank fit's output directions, largest first
    (how much each further direction would add)."""


def fit_reduced_rank(
    keys: torch.Tensor,
    targets: torch.Tensor,
    zero: ZeroKeys | None = None,
    ridge: float = 1e-2,
    rank: int = 1,
) -> RankFit:
    """Reduced-rank ridge regression: fit `B = argmin ‖K B - T‖² + ‖Z B‖² + λ‖B‖²` (keys K
    [rows, in], whole-vector targets T [rows, out], zero-constraint keys Z, `λ = ridge ·
    trace(KᵀK + ZᵀZ) / in`), then keep the `rank` output directions that carry most of the fitted
    outputs over all constrained keys: P, the top eigenvectors of `Bᵀ (KᵀK + ZᵀZ) B`, and the
    write `U Vᵀ` with `U = P`, `V = B P` (Eckart-Young on the fitted outputs: no rank-r
    projection of B's outputs fits them closer). The primal solve, float64."""
    if keys.ndim != 2 or keys.shape[0] == 0:
        raise ValueError(f"keys have shape {list(keys.shape)}; need [rows, width] with rows > 0")
    if targets.ndim != 2 or targets.shape[0] != keys.shape[0]:
        raise ValueError(
            f"targets have shape {list(targets.shape)}; expected [{keys.shape[0]}, out]"
        )
    width, out = keys.shape[1], targets.shape[1]
    if not 1 <= rank <= out:
        raise ValueError(f"rank must be between 1 and the output width {out}, got {rank}")
    if not math.isfinite(ridge) or ridge <= 0:
        raise ValueError(f"ridge must be a positive number, got {ridge}")
    keys = keys.to(torch.float64)
    targets = targets.to(torch.float64)
    if not bool(torch.isfinite(keys).all()) or not bool(torch.isfinite(targets).all()):
        raise ValueError("keys or targets have non-finite values")
    if not bool((targets != 0).any()):
        raise ValueError("every target is 0: there is nothing to write")
    if zero is not None and zero.width != width:
        raise ValueError(f"zero-constraint keys have width {zero.width}, the keys {width}")
    # memory: three width x width float64 matrices at the peak (the caller's zero Gram, this
    # Gram, its Cholesky factor); the ridge goes onto the diagonal in place and comes off again
    gram = keys.T @ keys
    if zero is not None:
        gram += zero.gram
    trace = float(gram.diagonal().sum())
    if trace <= 0:
        raise ValueError("every key is zero: the layer's MLP is silent on these prompts")
    regularisation = ridge * trace / width
    gram.diagonal().add_(regularisation)
    factor = torch.linalg.cholesky(gram)
    gram.diagonal().sub_(regularisation)
    full = torch.cholesky_solve(keys.T @ targets, factor)  # [in, out]
    del factor
    energy = full.T @ (gram @ full)
    values, vectors = torch.linalg.eigh((energy + energy.T) / 2)
    order = torch.argsort(values, descending=True)
    directions = vectors[:, order[:rank]]
    read = full @ directions
    residual = targets - (keys @ read) @ directions.T
    explained = 1.0 - float((residual * residual).sum()) / float((targets * targets).sum())
    return RankFit(directions, read, regularisation, explained, values[order].clamp(min=0))


# ---------------------------------------------------------------------------------------------
# Diagnosis figures


@dataclass(frozen=True)
class WriteShares:
    """Who writes the shift along the decision direction: each layer's attention and MLP."""

    attention: tuple[float, ...]
    """Per layer: uᵀ (declined mean - toxic mean) of the attention block's output."""
    mlp: tuple[float, ...]
    """The same for the MLP block's output."""

    @property
    def total(self) -> float:
        return sum(self.attention) + sum(self.mlp)

    @property
    def attention_share(self) -> float:
        """The attention blocks' share of the layers' total write along the direction."""
        total = self.total
        return sum(self.attention) / total if total else math.nan

    @property
    def mlp_share(self) -> float:
        total = self.total
        return sum(self.mlp) / total if total else math.nan

    def describe(self) -> dict[str, object]:
        return {
            "attention_per_layer": list(self.attention),
            "mlp_per_layer": list(self.mlp),
            "attention_share": self.attention_share,
            "mlp_share": self.mlp_share,
        }


def write_shares(
    direction: torch.Tensor, attention_difference: torch.Tensor, mlp_difference: torch.Tensor
) -> WriteShares:
    """Split the shift along `direction` [hidden] among the layers' blocks, given each block's
    class-mean difference (declined minus toxic-eliciting) at the decision position [layers,
    hidden]. A pre-norm residual layer adds both outputs to the stream, so their projections add
    up to the layer's share of the total shift."""
    if attention_difference.shape != mlp_difference.shape or attention_difference.ndim != 2:
        raise ValueError(
            f"attention {list(attention_difference.shape)} and MLP "
            f"{list(mlp_difference.shape)} differences must both be [layers, hidden]"
        )
    if direction.shape != attention_difference.shape[1:]:
        raise ValueError(
            f"direction {list(direction.shape)} does not fit [{attention_difference.shape[1]}]"
        )
    unit = direction.to(torch.float64)
    unit = unit / unit.norm()
    attention = attention_difference.to(torch.float64) @ unit
    mlp = mlp_difference.to(torch.float64) @ unit
    return WriteShares(tuple(attention.tolist()), tuple(mlp.tolist()))


@dataclass(frozen=True)
class ChanceDistance:
    """How far a model's unit AUROCs are from chance (0.5)."""

    units: int
    above_08: float
    """Share of units with AUROC > 0.8."""
    above_09: float
    below_02: float
    """Share of units with AUROC < 0.2 (anti-experts: fire on non-toxic samples)."""
    mean_distance: float
    """Mean |AUROC - 0.5|."""

    def describe(self) -> dict[str, float]:
        return {
            "units": self.units,
            "share_above_0.8": self.above_08,
            "share_above_0.9": self.above_09,
            "share_below_0.2": self.below_02,
            "mean_distance_from_chance": self.mean_distance,
        }


def chance_distance(aurocs: Iterable[torch.Tensor]) -> ChanceDistance:
    """The AUROC histogram's distance from chance over every unit of every module."""
    values = [a.detach().reshape(-1).to(torch.float64).cpu() for a in aurocs]
    flat = torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)
    if flat.numel() == 0:
        raise ValueError("no AUROC values to summarise")
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("AUROC values are not finite")
    count = flat.numel()
    return ChanceDistance(
        count,
        float((flat > 0.8).sum()) / count,
        float((flat > 0.9).sum()) / count,
        float((flat < 0.2).sum()) / count,
        float((flat - 0.5).abs().mean()),
    )
