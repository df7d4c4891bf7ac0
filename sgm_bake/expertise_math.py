"""Expertise and suppression, the pure math of SGM/AurA (no files, no models).

AUROC of every unit at once. For unit m, AUROC = P(r_pos > r_neg) + 0.5 P(r_pos = r_neg), the
Mann-Whitney U statistic with tie-averaged ranks divided by n_pos * n_neg (equal to sklearn's
`roc_auc_score`). Each unit's responses are sorted once; the positive samples' ranks are summed,
with tie groups given the mean of their first and last rank (only when ties exist).

Suppression rules turn AUROC into per-unit factors:
- `aura` (AurA's soft rule): alpha = 1 - 2 (auroc - 0.5) for units with auroc > threshold;
- `damp`: a fixed alpha for the top-k units;
- `det0`: alpha 0 for the top-k units;
then a strength s scales the suppression, alpha' = max(0, 1 - s (1 - alpha)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Rule = Literal["aura", "damp", "det0"]
RULES: tuple[str, ...] = ("aura", "damp", "det0")
CHUNK_ELEMENTS = 32 * 1024 * 1024


def auroc(responses: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """AUROC of each column of `responses` [N samples, M units] for binary `labels` [N].

    Returns float64 [M]. A constant column gets 0.5. Raises ValueError on non-finite responses
    or when `labels` does not hold both classes.
    """
    values = torch.as_tensor(responses)
    target = torch.as_tensor(labels).to(torch.bool).reshape(-1)
    if values.ndim != 2 or values.shape[0] != target.numel():
        raise ValueError(f"responses {tuple(values.shape)} do not match labels [{target.numel()}]")
    n_pos = int(target.sum())
    n_neg = target.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("labels must contain both classes (toxic and non-toxic samples)")
    if not values.is_floating_point():
        values = values.to(torch.float64)
    if not torch.isfinite(values).all():
        raise ValueError("responses contain NaN or infinite values")
    weights = target.to(torch.float64)
    units = values.shape[1]
    result = torch.empty(units, dtype=torch.float64)
    step = max(1, CHUNK_ELEMENTS // max(1, values.shape[0]))
    for begin in range(0, units, step):
        chunk = values[:, begin : begin + step].T.contiguous()
        rank_sum = _positive_rank_sum(chunk, weights)
        result[begin : begin + step] = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return result


def _positive_rank_sum(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Sum of the (1-based, tie-averaged) ranks of the positive samples in each row."""
    ordered, order = torch.sort(rows, dim=1)
    positive = weights[order]
    width = rows.shape[1]
    position = torch.arange(1, width + 1, dtype=torch.float64)
    ties = ordered[:, 1:] == ordered[:, :-1]
    if not bool(ties.any()):
        return positive @ position
    # Average rank of a tie group = mean of its first and last 1-based positions.
    index = torch.arange(width).expand(rows.shape[0], width)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ~ties
    ends = torch.ones_like(ordered, dtype=torch.bool)
    ends[:, :-1] = ~ties
    first = torch.cummax(torch.where(starts, index, 0), dim=1).values
    last_reversed = torch.cummin(torch.where(ends, index, width - 1).flip(1), dim=1).values
    last = last_reversed.flip(1)
    average = (first + last).to(torch.float64) / 2 + 1
    return (positive * average).sum(dim=1)


@dataclass(frozen=True)
class RuleOptions:
    """How expertise becomes factors."""

    rule: Rule = "aura"
    threshold: float = 0.5
    top_k: int | None = None
    damp_alpha: float = 0.5
    strength: float = 1.0

    def describe(self) -> dict[str, str]:
        """String metadata for the expertise file."""
        return {
            "rule": self.rule,
            "threshold": repr(self.threshold),
            "top_k": "" if self.top_k is None else str(self.top_k),
            "damp_alpha": repr(self.damp_alpha),
            "strength": repr(self.strength),
        }


def top_k_mask(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Mark the k highest scores across all modules (ties broken by position, deterministic)."""
    flat = torch.cat([s.reshape(-1).to(torch.float64) for s in scores])
    if k < 0:
        raise ValueError("top-k must be >= 0")
    k = min(k, flat.numel())
    order = torch.sort(-flat, stable=True).indices[:k]
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[order] = True
    return list(torch.split(mask, [s.numel() for s in scores]))


def factors(scores: list[torch.Tensor], options: RuleOptions) -> list[torch.Tensor]:
    """Per-unit factors (float32) for each module's AUROC, by the chosen rule.

    Units are eligible when their AUROC exceeds the threshold and, with top-k, when they rank in
    the global top k. `aura` sets alpha = 1 - 2 (auroc - 0.5) on eligible units (a threshold
    below 0.5, as in the SGM code's 0.3, lets units with auroc in (threshold, 0.5) be amplified);
    `damp` sets the fixed `damp_alpha`; `det0` sets 0. The strength then scales the change.
    """
    if options.rule not in RULES:
        raise ValueError(f"unknown rule {options.rule!r}; use one of {RULES}")
    if not 0.0 <= options.threshold <= 1.0:
        raise ValueError("threshold must lie in [0, 1]")
    if options.strength < 0:
        raise ValueError("strength must be >= 0")
    eligible = [s > options.threshold for s in scores]
    if options.top_k is not None:
        ranked = top_k_mask(scores, options.top_k)
        eligible = [e & r for e, r in zip(eligible, ranked, strict=True)]
    alphas = []
    for score, mask in zip(scores, eligible, strict=True):
        alpha = torch.ones(score.shape, dtype=torch.float64)
        if options.rule == "aura":
            alpha[mask] = 1.0 - 2.0 * (score.to(torch.float64)[mask] - 0.5)
        elif options.rule == "damp":
            alpha[mask] = options.damp_alpha
        else:
            alpha[mask] = 0.0
        alpha = (1.0 - options.strength * (1.0 - alpha)).clamp(min=0.0)
        alphas.append(alpha.to(torch.float32))
    return alphas
