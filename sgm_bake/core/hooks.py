"""The runtime form of SGM: forward hooks that scale units, the reference the bake must equal.

Output units: a forward hook returns `output * alpha` (as the SGM research code does). Input
units: a forward pre-hook scales the module's input, `x * alpha`, before the projection.
Stacked experts have no module per expert to hook: their experts module runs expert by expert
(`core.experts.ExpertsPatch`) and multiplies expert e's projection output (or input) by
`alpha[e]` on the activations, the same intervention a hook makes on a dense projection.

    with SGMHooks(model, load_expertise("expertise.safetensors")):
        logits = model(**inputs).logits
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sgm_bake.core.expertise import Expertise, ResolvedUnits, language_units
from sgm_bake.core.experts import ExpertScales, ExpertsPatch
from sgm_bake.core.fold import unit_axis
from sgm_bake.core.recipes import Projection, Recipe, recipe_for_config
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
    for template in dict.fromkeys(recipe.runtime_prefixes + recipe.checkpoint_prefixes):
        for layer in layers:
            for projection in recipe.projections:
                if recipe.runtime_module_name(layer, projection, template) in names:
                    return template
    raise SGMError(
        f"none of recipe {recipe.model_type!r}'s module names {list(recipe.runtime_prefixes)} "
        f"exist in this {type(model).__name__}; add its naming to {recipe.path.name}"
    )


def runtime_weight(
    model: nn.Module, recipe: Recipe, layer: int, projection: Projection, template: str
) -> tuple[nn.Module, torch.Tensor] | None:
    """(module, weight) of `projection` in `layer` of a loaded model, or None when this layer
    does not hold it (a dense layer beside MoE layers)."""
    try:
        module = model.get_submodule(recipe.runtime_module_name(layer, projection, template))
    except AttributeError:
        return None
    weight = getattr(module, projection.parameter_name, None)
    if not isinstance(weight, torch.Tensor):
        return None
    return module, weight


def unit_count(projection: Projection, weight: torch.Tensor, side: str) -> tuple[int, ...]:
    """The shape of a hook point's factors: [units], or [experts, units] when stacked."""
    axis = unit_axis(projection.layout, side)  # type: ignore[arg-type]
    if projection.stacked:
        return (weight.shape[0], weight.shape[1 + axis])
    return (weight.shape[axis],)


def resolve_modules(
    model: nn.Module, expertise: Expertise, recipe: Recipe | None = None
) -> list[tuple[str, nn.Module, ResolvedUnits]]:
    """(name, module, units) for every expertise entry, checked against the model; for stacked
    experts the name is the parameter path and the module the experts module."""
    recipe = model_recipe(model, recipe)
    config: dict[str, Any] = model.config.to_dict()  # type: ignore[union-attr, operator]
    template = runtime_prefix(model, recipe, recipe.layers(config))
    resolved = []
    for units in language_units(expertise, recipe, config, warn=False):
        name = recipe.runtime_name(units.layer, units.projection, template)
        found = runtime_weight(model, recipe, units.layer, units.projection, template)
        if found is None:
            raise SGMError(
                f"expertise names {units.source_name!r} but this {type(model).__name__} has no "
                f"{name} (a dense layer beside MoE layers, or another model)"
            )
        module, weight = found
        if weight.ndim != (3 if units.projection.stacked else 2):
            raise SGMError(
                f"{name} has shape {list(weight.shape)}; recipe {recipe.path.name} is wrong"
            )
        expected = unit_count(units.projection, weight, units.side)
        if tuple(units.entry.alpha.shape) != expected:
            raise SGMError(
                f"expertise for {units.source_name!r} has shape {list(units.entry.alpha.shape)} "
                f"but {name} has {list(expected)} {units.side} units; it was made for another "
                "model"
            )
        resolved.append((name, module, units))
    return resolved


def patch_experts(
    recipe: Recipe,
    module: nn.Module,
    group: str,
    scales: ExpertScales | None = None,
    tap: Any = None,
) -> ExpertsPatch:
    """Run the experts module of recipe block `group` expert by expert (see core.experts)."""
    members = {p.kind: p for p in recipe.projections if p.stacked and p.group == group}
    if set(members) != {"gate_up", "down"} or recipe.experts is None:
        raise SGMError(
            f"recipe {recipe.path.name} block {group!r} must declare stacked gate_up and down "
            "projections and an 'experts' field"
        )
    return ExpertsPatch(
        module, members["gate_up"], members["down"], recipe.experts.routing, scales, tap
    )


def _beside(alpha: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The factors on the weight's device; a weight offloaded by accelerate (on the meta device
    until its forward pass) leaves them on the CPU, and the hook moves them to the activation."""
    return alpha if weight.device.type == "meta" else alpha.to(weight.device)


def _weight(module: nn.Module) -> torch.Tensor:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise SGMError(f"module {type(module).__name__} has no weight tensor")
    return weight


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
    """Forward hooks applying an expertise file to a model (its factors, and its edit's low-rank
    deltas through `core.edit_hooks.EditHooks`); a context manager.

    Create it to attach the hooks; `remove()` (or leaving the `with` block) detaches them and
    restores the model exactly.
    """

    def __init__(
        self, model: nn.Module, expertise: Expertise, recipe: Recipe | None = None
    ) -> None:
        recipe = model_recipe(model, recipe)
        self.modules = resolve_modules(model, expertise.scaling_only(), recipe)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._patches: list[ExpertsPatch] = []
        self._edit: Any = None
        if expertise.deltas:
            # the edit's reference, `u (vᵀ k)` added after the factors (core.edit_hooks);
            # imported here because that module builds on this one
            from sgm_bake.core.edit_hooks import EditHooks

            self._edit = EditHooks(model, expertise.deltas.values(), recipe)
        experts: dict[int, tuple[nn.Module, str, dict[tuple[str, Any], torch.Tensor]]] = {}
        for _, module, units in self.modules:
            if units.projection.stacked:
                entry = experts.setdefault(id(module), (module, units.projection.group, {}))
                weight: torch.Tensor = getattr(module, units.projection.parameter_name)
                entry[2][(units.projection.kind, units.side)] = _beside(units.entry.alpha, weight)
                continue
            scale = _Scale(_beside(units.entry.alpha, _weight(module)))
            if units.side == "output":
                # first among the forward hooks: an edit's write (core.edit_hooks) is added
                # after the scaling, whichever is attached first
                self._handles.append(module.register_forward_hook(scale.output_hook, prepend=True))
            else:
                self._handles.append(module.register_forward_pre_hook(scale.input_hook))
        for module, group, factors in experts.values():
            self._patches.append(patch_experts(recipe, module, group, ExpertScales(factors)))

    def edited(self) -> list[tuple[str, nn.Module, Any]]:
        """(runtime name, module, resolved delta) of every module an edit's delta writes into."""
        return [] if self._edit is None else list(self._edit.modules)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for patch in self._patches:
            patch.remove()
        self._patches.clear()
        if self._edit is not None:
            self._edit.remove()
            self._edit = None

    def __enter__(self) -> SGMHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def apply_hooks(model: nn.Module, expertise: Expertise, recipe: Recipe | None = None) -> SGMHooks:
    """Attach SGM hooks to `model`; call `.remove()` on the result to take them off."""
    return SGMHooks(model, expertise, recipe)
