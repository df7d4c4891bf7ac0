"""Stacked experts run one expert at a time, with per-expert unit scaling and taps.

In transformers 5 a mixture-of-experts layer keeps its experts as parameters of one module
(`gate_up_proj` [E, 2I, H] or [E, H, 2I], `down_proj` [E, H, I] or [E, I, H]); there is no
nn.Linear per expert to hook. `ExpertsPatch` replaces such a module's `forward` (on the instance,
undone by `remove`) with the same computation written out per expert, so that

- the SGM reference can multiply expert e's projection output (or input) by `alpha[e]` on the
  activations, exactly as a forward hook does for a dense projection, and
- profiling can see each expert's activations together with the tokens routed to it.

Two call conventions exist (the recipe's `experts.routing`): `top_k`, where the module receives
the tokens [T, H] with each token's top-k expert indices and weights and adds up
`weight * expert(token)`; and `prescaled` (Llama 4), where it receives [E * T, H], every expert
seeing every token already multiplied by its router score (zero outside the token's top k), and
returns the per-expert outputs [E * T, H] for the caller to sum. Under `prescaled` a token is
routed to an expert when its scaled input row is not all zeros.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from sgm_bake.core.recipes import Layout, Projection, Routing, Side
from sgm_bake.errors import SGMError

Tap = Callable[[str, Side, int, torch.Tensor, torch.Tensor], None]
"""Called as tap(projection kind, side, expert, token indices [n], activations [n, units])."""


@dataclass
class ExpertScales:
    """Per-expert factors of one experts module, keyed by (projection kind, side): `gate_up` or
    `down`, `output` or `input`; each [E, units]."""

    factors: dict[tuple[str, Side], torch.Tensor]

    def get(self, kind: str, side: Side) -> torch.Tensor | None:
        return self.factors.get((kind, side))


def _apply(matrix: torch.Tensor, inputs: torch.Tensor, layout: Layout) -> torch.Tensor:
    """One expert's matrix applied to rows of inputs, for either stored orientation."""
    if layout == "out_in":
        return functional.linear(inputs, matrix)
    result: torch.Tensor = inputs @ matrix
    return result


def _parameter(module: nn.Module, name: str) -> torch.Tensor:
    value = getattr(module, name)
    if not isinstance(value, torch.Tensor):
        raise SGMError(f"{type(module).__name__}.{name} is not a tensor")
    return value


def _scale(values: torch.Tensor, factors: torch.Tensor | None, expert: int) -> torch.Tensor:
    if factors is None:
        return values
    return values * factors[expert].to(device=values.device, dtype=values.dtype)


class ExpertsPatch:
    """Runs an experts module expert by expert, scaling units and reporting activations."""

    def __init__(
        self,
        module: nn.Module,
        gate_up: Projection,
        down: Projection,
        routing: Routing,
        scales: ExpertScales | None = None,
        tap: Tap | None = None,
    ) -> None:
        for attribute in ("gate_up_proj", "down_proj", "act_fn"):
            if not hasattr(module, attribute):
                raise SGMError(
                    f"experts module {type(module).__name__} has no {attribute}; its layout is "
                    "not the stacked gate_up/down form this recipe declares"
                )
        if getattr(module, "has_bias", False) or not getattr(module, "is_concatenated", True):
            raise SGMError(
                f"experts module {type(module).__name__} uses biases or interleaved gate/up "
                "rows, which sgm-bake does not support yet"
            )
        self.module = module
        self.gate_up = gate_up
        self.down = down
        self.routing = routing
        self.scales = scales
        self.tap = tap
        self._previous: Any = module.__dict__.get("forward")
        module.__dict__["forward"] = self.forward

    def remove(self) -> None:
        """Give the module its own forward back."""
        if self._previous is not None:
            self.module.__dict__["forward"] = self._previous
        else:
            del self.module.__dict__["forward"]

    def _factor(self, kind: str, side: Side) -> torch.Tensor | None:
        return None if self.scales is None else self.scales.get(kind, side)

    def expert(self, expert: int, tokens: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Expert `expert` on the rows `inputs` (the tokens `tokens` of the flat sequence)."""
        act: Callable[[torch.Tensor], torch.Tensor] = self.module.act_fn  # type: ignore[assignment]
        gate_up = self._project("gate_up", self.gate_up.layout, expert, tokens, inputs)
        gate, up = gate_up.chunk(2, dim=-1)
        return self._project("down", self.down.layout, expert, tokens, act(gate) * up)

    def _project(
        self, kind: str, layout: Layout, expert: int, tokens: torch.Tensor, inputs: torch.Tensor
    ) -> torch.Tensor:
        """One projection of one expert, as a hooked nn.Linear would run it: its input scaled
        and reported, the expert's matrix applied, its output scaled and reported."""
        inputs = _scale(inputs, self._factor(kind, "input"), expert)
        if self.tap is not None:
            self.tap(kind, "input", expert, tokens, inputs)
        out = _apply(_parameter(self.module, f"{kind}_proj")[expert], inputs, layout)
        out = _scale(out, self._factor(kind, "output"), expert)
        if self.tap is not None:
            self.tap(kind, "output", expert, tokens, out)
        return out

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.routing == "prescaled":
            return self._forward_prescaled(*args, **kwargs)
        return self._forward_top_k(*args, **kwargs)

    def _forward_top_k(
        self,
        hidden_states: torch.Tensor,
        top_k_index: torch.Tensor,
        top_k_weights: torch.Tensor,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        experts = _parameter(self.module, "gate_up_proj").shape[0]
        final = torch.zeros_like(hidden_states)
        for expert in range(experts):
            token_index, slot = torch.where(top_k_index == expert)
            if token_index.numel() == 0:
                continue
            out = self.expert(expert, token_index, hidden_states[token_index])
            out = out * top_k_weights[token_index, slot, None]
            final.index_add_(0, token_index, out.to(final.dtype))
        return final

    def _forward_prescaled(
        self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        experts = _parameter(self.module, "gate_up_proj").shape[0]
        per_expert = hidden_states.view(experts, -1, hidden_states.shape[-1])
        outputs = []
        for expert in range(experts):
            rows = per_expert[expert]
            routed = torch.nonzero(rows.abs().amax(dim=-1) > 0).squeeze(-1)
            if self.tap is None or routed.numel() == rows.shape[0]:
                outputs.append(self.expert(expert, torch.arange(rows.shape[0]), rows))
                continue
            # Profiling: run only the routed rows, so that unrouted tokens report nothing;
            # the rest stay zero, which is what the expert computes for a zero input.
            out = rows.new_zeros(rows.shape[0], self._output_width())
            if routed.numel():
                out[routed] = self.expert(expert, routed, rows[routed]).to(out.dtype)
            outputs.append(out)
        return torch.cat(outputs, dim=0)

    def _output_width(self) -> int:
        down = _parameter(self.module, "down_proj")
        return int(down.shape[1] if self.down.layout == "out_in" else down.shape[2])
