"""Expertise and suppression, the pure math of SGM/AurA (no files, no models).

AUROC of every unit at once. For unit m, AUROC = P(r_pos > r_neg) + 0.5 P(r_pos = r_neg), the
Mann-Whitney U statistic with tie-averaged ranks divided by n_pos * n_neg (equal to sklearn's
`roc_auc_score`). Each unit's negative and positive responses are sorted once; for every
positive, binary searches count the negatives below it and equal to it. The searches of a whole
chunk of units run as one vectorised search over keys that put the unit index above the value,
and chunks run on a thread pool (numpy releases the GIL while sorting and searching).

Suppression rules turn AUROC into per-unit factors:
- `aura` (AurA's soft rule): alpha = 1 - 2 (auroc - 0.5) for units with auroc > threshold;
- `damp`: a fixed alpha for the top-k units;
- `det0`: alpha 0 for the top-k units;
then a strength s scales the suppression, alpha' = max(0, 1 - s (1 - alpha)).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from sgm_bake.options import default

Rule = Literal["aura", "damp", "det0"]
RULES: tuple[str, ...] = ("aura", "damp", "det0")
CHUNK_ELEMENTS = 2 * 1024 * 1024


def auroc(responses: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """AUROC of each column of `responses` [N samples, M units] for binary `labels` [N].

    Returns float64 [M]. A constant column gets 0.5. Raises ValueError on non-finite responses
    or when `labels` does not hold both classes.
    """
    values = _numpy(responses)
    target = _numpy(labels).reshape(-1).astype(bool)
    if values.ndim != 2 or values.shape[0] != target.size:
        raise ValueError(f"responses {tuple(values.shape)} do not match labels [{target.size}]")
    n_pos = int(target.sum())
    n_neg = target.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("labels must contain both classes (toxic and non-toxic samples)")
    if values.dtype.kind != "f" or values.dtype.itemsize > 4:
        values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("responses contain NaN or infinite values")
    positives, negatives = values[target], values[~target]
    units = values.shape[1]
    step = max(1, CHUNK_ELEMENTS // max(1, values.shape[0]))
    result = np.empty(units, dtype=np.float64)

    def chunk(begin: int) -> None:
        columns = slice(begin, min(units, begin + step))
        # +0.0 turns -0.0 into 0.0 (a sort treats them as equal, the integer keys would not);
        # sorted queries make the binary searches walk memory forward.
        negative = np.sort(np.ascontiguousarray(negatives[:, columns].T) + 0.0, axis=1)
        positive = np.sort(np.ascontiguousarray(positives[:, columns].T) + 0.0, axis=1)
        result[columns] = _wins(negative, positive) / (n_pos * n_neg)

    workers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # numpy releases the GIL here
        list(pool.map(chunk, range(0, units, step)))
    return torch.from_numpy(result)


def auroc_torch(
    responses: torch.Tensor, labels: torch.Tensor | np.ndarray, chunk_elements: int = 1 << 24
) -> torch.Tensor:
    """`auroc` computed with torch on the device that holds `responses` (a GPU: the sorts and
    searches run there, nothing is copied to the host but the result).

    The same statistic by the same integer counts (negatives below and equal to each positive,
    summed exactly, halved and divided in float64), so the result equals `auroc`'s bit for bit.
    Returns float64 [M] on the CPU."""
    target = torch.as_tensor(labels).reshape(-1).to(device=responses.device, dtype=torch.bool)
    if responses.ndim != 2 or responses.shape[0] != target.numel():
        raise ValueError(
            f"responses {tuple(responses.shape)} do not match labels [{target.numel()}]"
        )
    n_pos = int(target.sum())
    n_neg = target.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("labels must contain both classes (toxic and non-toxic samples)")
    values = responses.detach()
    # Exact and order-preserving: half precision widens to float32, anything else to float64.
    exact = torch.float32 if values.dtype in (torch.float16, torch.bfloat16) else torch.float64
    values = values if values.dtype == torch.float32 else values.to(exact)
    if not bool(torch.isfinite(values).all()):
        raise ValueError("responses contain NaN or infinite values")
    positives, negatives = values[target], values[~target]
    units = values.shape[1]
    step = max(1, chunk_elements // max(1, values.shape[0]))
    result = torch.empty(units, dtype=torch.float64, device=values.device)
    for begin in range(0, units, step):
        columns = slice(begin, min(units, begin + step))
        negative = negatives[:, columns].T.contiguous().sort(dim=1).values
        positive = positives[:, columns].T.contiguous()
        below = torch.searchsorted(negative, positive, right=False).sum(dim=1)
        upto = torch.searchsorted(negative, positive, right=True).sum(dim=1)
        result[columns] = (below + upto).to(torch.float64) / 2.0 / (n_pos * n_neg)
    return result.cpu()


def _numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _order_keys(rows: np.ndarray) -> np.ndarray:
    """Flattened uint64 keys, ascending wherever `rows` is sorted row by row: the row index in
    the high 32 bits, an order-preserving integer image of the float32 value in the low 32."""
    bits = rows.view(np.uint32)
    negative = (bits >> np.uint32(31)).astype(bool)
    ordered = np.where(negative, ~bits, bits | np.uint32(0x80000000)).astype(np.uint64)
    row = np.arange(rows.shape[0], dtype=np.uint64)[:, None] << np.uint64(32)
    return (row | ordered).ravel()


def _wins(negative: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Per row: #(neg < pos) + 0.5 #(neg == pos) over all pairs, from row-sorted inputs."""
    rows, n_neg = negative.shape
    if negative.dtype == np.float32:
        keys_neg, keys_pos = _order_keys(negative), _order_keys(positive)
        shape = positive.shape
        below = np.searchsorted(keys_neg, keys_pos, "left").reshape(shape)
        upto = np.searchsorted(keys_neg, keys_pos, "right").reshape(shape)
        offset = (np.arange(rows, dtype=np.int64) * n_neg)[:, None]
        below, upto = below - offset, upto - offset
    else:  # float64 leaves no room for a row index: search row by row
        pairs = list(zip(negative, positive, strict=True))
        below = np.stack([np.searchsorted(n, p, "left") for n, p in pairs])
        upto = np.stack([np.searchsorted(n, p, "right") for n, p in pairs])
    wins: np.ndarray = (below.sum(axis=1, dtype=np.int64) + upto.sum(axis=1, dtype=np.int64)) / 2.0
    return wins


@dataclass(frozen=True)
class RuleOptions:
    """How expertise becomes factors."""

    rule: Rule = default("rule")
    threshold: float = default("threshold")
    top_k: int | None = None  # None or 0 (the option's default): no cap
    damp_alpha: float = default("damp-alpha")
    strength: float = default("strength")

    def __post_init__(self) -> None:
        # One meaning everywhere: top-k 0 is "no cap" (as `demo` always read it), never "select
        # nothing", which would make a bake that changes no weight.
        if self.top_k == 0:
            object.__setattr__(self, "top_k", None)

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

    Scores may be [units] or, for stacked experts, [experts, units]; the factors keep the shape,
    and top-k ranks every unit of every module (dense and expert) together.

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
        # top_k_mask works on flattened scores; an expert module's [experts, units] scores
        # get their mask back in that shape.
        eligible = [e & r.reshape(e.shape) for e, r in zip(eligible, ranked, strict=True)]
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
