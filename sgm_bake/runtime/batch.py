"""Moving a processor's batch to where the model runs: one function for every step (profiling,
verification, generation, the tuner's KL passes)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def to_device(
    batch: Mapping[str, Any], device: torch.device | str, dtype: torch.dtype | None = None
) -> dict[str, Any]:
    """The batch with every tensor on `device`; floating tensors (pixel values) also cast to
    `dtype` when one is given, integer ones (token ids, masks) never. Other entries stay."""
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
        moved[key] = value
    return moved
