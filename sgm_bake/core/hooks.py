"""The runtime form of SGM: forward hooks that scale units, the reference the bake must equal.

Output units: a forward hook returns `output * alpha` (as the SGM research code does). Input
units: a forward pre-hook scales the module's input, `x * alpha`, before the projection.

    with SGMHooks(model, load_expertise("expertise.safetensors")):
        logits = model(**inputs).logits
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sgm_bake.core.expertise import Expertise, ResolvedUnits
from sgm_bake.core.fold import unit_axis
from sgm_bake.core.recipes import Recipe, recipe_for_config
from sgm_bake.errors import SGMError


def model_recipe(model: nn.Module, recipe: Recipe | None = None) -> Recipe:
    """The recipe of a loaded transformers model (from its config's model_type)."""
    if recipe is not None:
        return recipe
    config = getattr(model, "config", None)
    if config is None:
        raise SGMError("the model has no transformers config; pass the recipe explicitly")
    return recipe_for_config(config.to_dict())


def runtime_prefix(model: nn.Module, recipe: Recipe, layers: range) -> str:
    """Which of the recipe's layer-name templates this transformers version uses."""
    names = {name for name, _ in model.named_modules()}
    probe = recipe.projections[0]
    for template in dict.fromkeys(recipe.runtime_prefixes + recipe.checkpoint_prefixes):
        if recipe.runtime_name(layers.start, probe, template) in names:
            return template
    raise SGMError(
        f"none of recipe {recipe.model_type!r}'s module names {list(recipe.runtime_prefixes)} "
        f"exist in this {type(model).__name__}; add its naming to {recipe.path.name}"
    )


def resolve_modules(
    model: nn.Module, expertise: Expertise, recipe: Recipe | None = None
) -> list[tuple[str, nn.Module, ResolvedUnits]]:
    """(module name, module, units) for every expertise entry, checked against the model."""
    recipe = model_recipe(model, recipe)
    layers = recipe.layers(model.config.to_dict())
    template = runtime_prefix(model, recipe, layers)
    resolved = []
    for units in expertise.resolve(recipe, layers):
        name = recipe.runtime_name(units.layer, units.projection, template)
        module = model.get_submodule(name)
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
            raise SGMError(f"module {name} has no 2-D weight; recipe {recipe.path.name} is wrong")
        expected = weight.shape[unit_axis(units.projection.layout, units.side)]
        if units.entry.alpha.numel() != expected:
            raise SGMError(
                f"expertise for {units.source_name!r} has {units.entry.alpha.numel()} units but "
                f"module {name} has {expected} {units.side} units; it was made for another model"
            )
        resolved.append((name, module, units))
    return resolved


class _Scale:
    """Multiplies a module's output (or input) by per-unit factors along the last axis."""

    def __init__(self, alpha: torch.Tensor) -> None:
        self.alpha = alpha

    def _scaled(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor * self.alpha.to(device=tensor.device, dtype=tensor.dtype)

    def output_hook(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        return self._scaled(output)

    def input_hook(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (self._scaled(args[0]), *args[1:])


class SGMHooks:
    """Forward hooks applying an expertise file to a model; a context manager.

    Create it to attach the hooks; `remove()` (or leaving the `with` block) detaches them and
    restores the model exactly.
    """

    def __init__(
        self, model: nn.Module, expertise: Expertise, recipe: Recipe | None = None
    ) -> None:
        self.modules = resolve_modules(model, expertise, recipe)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for _, module, units in self.modules:
            scale = _Scale(units.entry.alpha.to(module.weight.device))
            if units.side == "output":
                self._handles.append(module.register_forward_hook(scale.output_hook))
            else:
                self._handles.append(module.register_forward_pre_hook(scale.input_hook))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> SGMHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def apply_hooks(model: nn.Module, expertise: Expertise, recipe: Recipe | None = None) -> SGMHooks:
    """Attach SGM hooks to `model`; call `.remove()` on the result to take them off."""
    return SGMHooks(model, expertise, recipe)
