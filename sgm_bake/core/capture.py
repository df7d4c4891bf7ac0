"""Capture hooks: pool each unit's activation over a sample's token positions.

A forward hook (output units) or pre-hook (input units) on every profiled module reduces the
[batch, positions, units] activation to [batch, units] with `mean` (SGM's choice) or `max`
(AurA's choice for text) over the positions selected by a mask: every non-padding position by
default (image tokens included, as the SGM code does), or text positions only. The mask comes
from the attention mask, so left and right padding pool the same way.

Stacked experts: a unit is one channel of one expert, and its response to a sample is pooled over
the sample's selected positions that the router sent to that expert. A sample that routes no
selected token to an expert contributes 0 for every unit of that expert (mean and max alike): the
expert did not respond to it. The experts module runs expert by expert while capturing
(`core.experts.ExpertsPatch`), whatever experts implementation the model was loaded with, and the
pooled responses come back as [batch, experts * units] (expert-major), to be scored like any
other module's and reshaped to [experts, units].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    # The maximum is one of the values, so it is taken in the activation's own dtype and only
    # the [batch, units] result is widened: the same numbers as widening first, with a third of
    # the memory traffic on a half-precision model.
    masked = values.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    return masked.amax(dim=1).to(torch.float32)


@dataclass(frozen=True)
class ExpertTarget:
    """One stacked-expert hook point to capture: `kind` is `gate_up` or `down`."""

    name: str
    kind: str
    side: str
    experts: int
    units: int


PatchFactory = Callable[[nn.Module, Callable[..., None]], Any]
"""Builds an `ExpertsPatch` running `module` with a tap (see `core.hooks.patch_experts`)."""


class _ExpertPool:
    """Running per-sample, per-expert pooling of one expert hook point within a forward pass."""

    def __init__(self, target: ExpertTarget, batch: int, pooling: Pooling) -> None:
        self.target = target
        self.pooling = pooling
        shape = (batch, target.experts, target.units)
        if pooling == "mean":
            self.values = torch.zeros(shape, dtype=torch.float32)
        else:
            self.values = torch.full(shape, float("-inf"), dtype=torch.float32)
        self.counts = torch.zeros(batch, target.experts, dtype=torch.float32)
        self.seen: set[int] = set()

    def add(self, expert: int, sample: torch.Tensor, values: torch.Tensor) -> None:
        if expert in self.seen:
            raise SGMError(
                f"expert {expert} of {self.target.name} ran twice in one forward pass; cannot "
                "pool it per sample"
            )
        self.seen.add(expert)
        values = values.detach().to(torch.float32).cpu()
        sample = sample.cpu()
        self.counts[:, expert].index_add_(0, sample, torch.ones(sample.numel()))
        if self.pooling == "mean":
            self.values[:, expert].index_add_(0, sample, values)
        else:
            index = sample[:, None].expand_as(values)
            self.values[:, expert].scatter_reduce_(0, index, values, "amax")

    def result(self) -> torch.Tensor:
        routed = (self.counts > 0).unsqueeze(-1)
        if self.pooling == "mean":
            pooled = self.values / self.counts.clamp(min=1).unsqueeze(-1)
        else:
            pooled = self.values
        pooled = torch.where(routed, pooled, torch.zeros(()))
        return pooled.reshape(pooled.shape[0], -1)


def _to_cpu(pooled: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every pooled [batch, units] tensor on the CPU, in one copy per device (a copy per module
    would make the host wait for the device once per module)."""
    by_device: dict[torch.device, list[str]] = {}
    for name, values in pooled.items():
        by_device.setdefault(values.device, []).append(name)
    moved: dict[str, torch.Tensor] = {}
    for device, names in by_device.items():
        if device.type == "cpu":
            moved.update((name, pooled[name]) for name in names)
            continue
        widths = [pooled[name].shape[1] for name in names]
        joined = torch.cat([pooled[name] for name in names], dim=1).cpu()
        moved.update(zip(names, torch.split(joined, widths, dim=1), strict=True))
    return {name: moved[name] for name in pooled}


class Capture:
    """Hooks that pool the responses of named modules for the batch being run."""

    def __init__(
        self,
        modules: Sequence[tuple[str, nn.Module, str]],
        pooling: Pooling,
        experts: list[tuple[nn.Module, list[ExpertTarget]]] | None = None,
        patch: PatchFactory | None = None,
    ) -> None:
        """`modules`: (name, module, side) of linear projections; `experts`: each experts module
        with the hook points captured on it, run through `patch` (required with `experts`)."""
        if pooling not in POOLINGS:
            raise SGMError(f"pooling {pooling!r} is not one of {POOLINGS}")
        self.pooling = pooling
        self.mask: torch.Tensor | None = None
        self.pooled: dict[str, torch.Tensor] = {}
        self._masks: dict[torch.device, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._pools: dict[str, _ExpertPool] = {}
        for name, module, side in modules:
            if side == "output":
                self._handles.append(module.register_forward_hook(self._output_hook(name)))
            else:
                self._handles.append(module.register_forward_pre_hook(self._input_hook(name)))
        self._expert_targets = [t for _, targets in experts or [] for t in targets]
        for module, targets in experts or []:
            if patch is None:
                raise ValueError("capturing experts needs a patch factory")
            self._handles.append(patch(module, self._expert_tap(targets)))

    def _expert_tap(self, targets: list[ExpertTarget]) -> Callable[..., None]:
        by_point = {(t.kind, t.side): t for t in targets}

        def tap(
            kind: str, side: str, expert: int, tokens: torch.Tensor, values: torch.Tensor
        ) -> None:
            target = by_point.get((kind, side))
            if target is None:
                return
            mask = self._mask_on(tokens.device)
            batch, positions = mask.shape
            flat = mask.reshape(-1)
            if tokens.numel() and int(tokens.max()) >= flat.numel():
                raise SGMError(
                    f"{target.name} saw more token positions than the input has: this model "
                    "changes the sequence inside; use --positions all or another model"
                )
            selected = flat[tokens]
            pool = self._pools.setdefault(
                target.name,
                _ExpertPool(target, batch, self.pooling),
            )
            pool.add(expert, tokens[selected] // positions, values[selected])

        return tap

    def _mask_on(self, device: torch.device) -> torch.Tensor:
        """The batch's mask on `device`, copied there once per batch (not once per module)."""
        if self.mask is None:
            raise RuntimeError("Capture.mask must be set before running the model")
        if device not in self._masks:
            self._masks[device] = self.mask.to(device)
        return self._masks[device]

    def _record(self, name: str, values: torch.Tensor) -> None:
        if name in self.pooled:
            raise SGMError(
                f"module {name} ran twice in one forward pass; cannot pool it per sample"
            )
        # Pooled where the activation lives; moved to the CPU once per batch in `collect`, so
        # the hooks never wait for the device and the forward pass runs ahead.
        self.pooled[name] = pool(values.detach(), self._mask_on(values.device), self.pooling)

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
        self._pools = {}
        self._masks = {}
        try:
            run()
            self.pooled = _to_cpu(self.pooled)
            for target in self._expert_targets:
                pool = self._pools.get(target.name)
                if pool is None:  # no token reached any expert of this module
                    pool = _ExpertPool(target, mask.shape[0], self.pooling)
                self.pooled[target.name] = pool.result()
        finally:
            self.mask = None
            self._pools = {}
            self._masks = {}
        return self.pooled

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
