"""The run-time form of the conditional write: hooks that add `u (vᵀ k)`, the reference a bake
with low-rank deltas must equal.

For each delta, a forward pre-hook (placed first, so it sees the input before any SGM input
scaling of the same module) keeps the module's input `k`, and a forward hook adds
`u (vᵀ k)` to the output. SGM's output hooks are placed first among the forward hooks
(`core.hooks.SGMHooks`), so in whichever order the two are attached the result is
`a_out * (W (a_in * k)) + u (vᵀ k)`, the composition the fold bakes (`core.edit`).

    with SGMHooks(model, expertise), EditHooks(model, deltas):
        logits = model(**inputs).logits
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from sgm_bake.core.edit import LowRankDelta
from sgm_bake.core.expertise import Expertise, ResolvedDelta
from sgm_bake.core.hooks import model_recipe, runtime_prefix, runtime_weight
from sgm_bake.core.recipes import Recipe
from sgm_bake.errors import SGMError


def resolve_deltas(
    model: nn.Module, deltas: Iterable[LowRankDelta], recipe: Recipe | None = None
) -> list[tuple[str, nn.Module, ResolvedDelta]]:
    """(runtime name, module, delta) for every delta, checked against the loaded model."""
    recipe = model_recipe(model, recipe)
    config: dict[str, Any] = model.config.to_dict()  # type: ignore[union-attr, operator]
    template = runtime_prefix(model, recipe, recipe.layers(config))
    expertise = Expertise({}, {}, {delta.module: delta for delta in deltas})
    resolved = []
    for entry in expertise.resolve_deltas(recipe, recipe.all_layers(config)):
        name = recipe.runtime_name(entry.layer, entry.projection, template)
        found = runtime_weight(model, recipe, entry.layer, entry.projection, template)
        if found is None:
            raise SGMError(
                f"a delta names {entry.source_name!r} but this {type(model).__name__} has no "
                f"{name}; it was made for another model"
            )
        module, weight = found
        expected = entry.delta.stored_shape(entry.projection.layout)
        if tuple(weight.shape) != expected:
            raise SGMError(
                f"the delta of {entry.source_name!r} is [{entry.delta.out_features} out] x "
                f"[{entry.delta.in_features} in], which does not fit {name} of shape "
                f"{list(weight.shape)}; it was made for another model"
            )
        resolved.append((name, module, entry))
    return resolved


class _Write:
    """Keeps a module's input and adds the delta's write to its output."""

    def __init__(self, delta: LowRankDelta) -> None:
        self.delta = delta
        self.keys: list[torch.Tensor] = []

    def keep_input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not args or not isinstance(args[0], torch.Tensor):
            raise SGMError(
                f"{type(module).__name__} was called without a positional input tensor; the "
                "edit's hook cannot read its keys"
            )
        self.keys.append(args[0])

    def add_output(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        keys = self.keys.pop()
        return output + self.delta.write(keys).to(output.dtype)


class EditHooks:
    """Hooks adding each low-rank delta's write to its module; a context manager.

    Create it to attach the hooks; `remove()` (or leaving the `with` block) detaches them and
    restores the model exactly."""

    def __init__(
        self, model: nn.Module, deltas: Iterable[LowRankDelta], recipe: Recipe | None = None
    ) -> None:
        self.modules = resolve_deltas(model, deltas, recipe)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for _, module, entry in self.modules:
            write = _Write(entry.delta)
            self._handles.append(module.register_forward_pre_hook(write.keep_input, prepend=True))
            self._handles.append(module.register_forward_hook(write.add_output))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> EditHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
