"""Capture hooks: pool each unit's activation over a sample's token positions.

A forward hook (output units) or pre-hook (input units) on every profiled module reduces the
[batch, positions, units] activation to [batch, units] with `mean` (SGM's choice) or `max`
(AurA's choice for text) over the positions selected by a mask: every non-padding position by
default (image tokens included, as the SGM code does), or text positions only. The mask comes
from the attention mask, so left and right padding pool the same way.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from sgm_bake.errors import SGMError

Pooling = Literal["mean", "max"]
POOLINGS: tuple[str, ...] = ("mean", "max")


def pool(values: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Pool [batch, positions, units] over the positions where `mask` [batch, positions] is true.

    Returns float32 [batch, units]. A sample with no selected position is an error (it would
    pool to nothing).
    """
    if values.shape[:2] != mask.shape:
        raise SGMError(
            f"activation positions {tuple(values.shape[:2])} differ from the input's "
            f"{tuple(mask.shape)}: this model changes the sequence inside; use --positions all "
            "or another model"
        )
    counts = mask.sum(dim=1)
    if bool((counts == 0).any()):
        raise SGMError(
            "a sample has no token positions to pool over (empty text with --positions text?)"
        )
    if pooling == "mean":
        weights = mask.to(torch.float32).unsqueeze(1)
        return torch.bmm(weights, values.to(torch.float32)).squeeze(1) / counts.unsqueeze(1).to(
            torch.float32
        )
    masked = values.to(torch.float32).masked_fill(~mask.unsqueeze(-1), float("-inf"))
    return masked.amax(dim=1)


class Capture:
    """Hooks that pool the responses of named modules for the batch being run."""

    def __init__(self, modules: list[tuple[str, nn.Module, str]], pooling: Pooling) -> None:
        if pooling not in POOLINGS:
            raise SGMError(f"pooling {pooling!r} is not one of {POOLINGS}")
        self.pooling = pooling
        self.mask: torch.Tensor | None = None
        self.pooled: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []
        for name, module, side in modules:
            if side == "output":
                self._handles.append(module.register_forward_hook(self._output_hook(name)))
            else:
                self._handles.append(module.register_forward_pre_hook(self._input_hook(name)))

    def _record(self, name: str, values: torch.Tensor) -> None:
        if self.mask is None:
            raise RuntimeError("Capture.mask must be set before running the model")
        if name in self.pooled:
            raise SGMError(
                f"module {name} ran twice in one forward pass; cannot pool it per sample"
            )
        self.pooled[name] = pool(values.detach(), self.mask.to(values.device), self.pooling).cpu()

    def _output_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            self._record(name, output)

        return hook

    def _input_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            self._record(name, args[0])

        return hook

    def collect(self, mask: torch.Tensor, run: Any) -> dict[str, torch.Tensor]:
        """Run `run()` (one forward pass) with `mask` and return the pooled responses."""
        self.mask = mask.to(torch.bool)
        self.pooled = {}
        try:
            run()
        finally:
            self.mask = None
        return self.pooled

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
