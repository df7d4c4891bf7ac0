"""Architecture recipes: where a model's post-fusion language MLP projections live.

A recipe is a JSON file in `recipes/` named after the config `model_type`. It is data, not code:
adding a model family is adding a file. A recipe names

- the dotted config path(s) of the language layer count, and the first post-fusion layer;
- the layer-prefix templates, with `{layer}`, as transformers names modules at run time
  (`runtime`) and as checkpoint files store tensors (`checkpoint`), newest naming first;
- the MLP projections inside a layer, their weight layout and the hook points used by default.

This module parses recipes and maps between runtime module names and checkpoint keys. The map is
derived from the checkpoint's own keys and refused when it is missing or ambiguous: never guessed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from sgm_bake.errors import SGMError
from sgm_bake.resources import data_dir

Layout = Literal["out_in", "in_out"]
Side = Literal["output", "input"]
LAYOUTS: tuple[str, ...] = ("out_in", "in_out")
SIDES: tuple[str, ...] = ("output", "input")
RECIPE_PATH_ENV = "SGM_BAKE_RECIPES"


@dataclass(frozen=True)
class Projection:
    """One MLP linear projection inside a decoder layer."""

    name: str
    """Module path relative to the layer as transformers names it, e.g. ``mlp.down_proj``."""
    checkpoint_name: str
    """The same module's path relative to the layer in checkpoint keys (usually `name`)."""
    layout: Layout
    """``out_in``: weight stored [out, in] (nn.Linear); ``in_out``: [in, out] (GPT-2 Conv1D)."""
    kind: str
    """What the projection computes: gate, up, down, gate_up (fused, gate rows first), fc_in..."""


@dataclass(frozen=True)
class HookPoint:
    """A projection plus which of its channels are the units: its outputs or its inputs."""

    projection: str
    side: Side

    @classmethod
    def parse(cls, text: str) -> HookPoint:
        name, _, side = text.partition(":")
        side = side or "output"
        if side not in SIDES:
            raise SGMError(
                f"hook point {text!r} has side {side!r}; use 'output' or 'input', "
                "e.g. 'mlp.down_proj:input'"
            )
        return cls(name, side)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.projection}:{self.side}"


def _template_regex(template: str) -> str:
    if template.count("{layer}") != 1:
        raise ValueError(f"layer template {template!r} must contain '{{layer}}' exactly once")
    return re.escape(template).replace(re.escape("{layer}"), r"(\d+)")


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe file."""

    model_type: str
    description: str
    auto_class: str
    num_layers: tuple[str, ...]
    post_fusion_start: int | str
    runtime_prefixes: tuple[str, ...]
    checkpoint_prefixes: tuple[str, ...]
    projections: tuple[Projection, ...]
    default_hook_points: tuple[HookPoint, ...]
    neuron_hook_points: tuple[HookPoint, ...]
    path: Path
    definition: dict[str, Any] = field(compare=False, repr=False, hash=False)

    def projection(self, name: str) -> Projection:
        for projection in self.projections:
            if projection.name == name:
                return projection
        known = ", ".join(p.name for p in self.projections)
        raise SGMError(
            f"{name!r} is not an MLP projection of recipe {self.model_type!r} (known: {known})"
        )

    @cached_property
    def _module_patterns(self) -> list[tuple[re.Pattern[str], Projection]]:
        # Runtime namings first (current, then older transformers), then checkpoint namings;
        # the first match wins, so a runtime name is never read as a checkpoint name.
        patterns = []
        for templates, checkpoint in (
            (self.runtime_prefixes, False),
            (self.checkpoint_prefixes, True),
        ):
            for template in templates:
                for projection in self.projections:
                    leaf = projection.checkpoint_name if checkpoint else projection.name
                    regex = f"^{_template_regex(template)}\\.{re.escape(leaf)}$"
                    patterns.append((re.compile(regex), projection))
        return patterns

    def parse_module(self, module_name: str) -> tuple[int, Projection] | None:
        """Return (layer, projection) for a module name in any naming the recipe knows."""
        for pattern, projection in self._module_patterns:
            match = pattern.match(module_name)
            if match:
                return int(match.group(1)), projection
        return None

    def runtime_name(self, layer: int, projection: Projection, template: str | None = None) -> str:
        """Module name as transformers names it (newest naming unless `template` is given)."""
        prefix = (template or self.runtime_prefixes[0]).format(layer=layer)
        return f"{prefix}.{projection.name}"

    def layers(self, config: Mapping[str, Any]) -> range:
        """The post-fusion language layers of a model with this config."""
        total = _config_int(config, self.num_layers, self.model_type, "layer count")
        if isinstance(self.post_fusion_start, int):
            start = self.post_fusion_start
        else:
            value = _config_lookup(config, self.post_fusion_start)
            if not isinstance(value, list) or not value:
                raise SGMError(
                    f"config key {self.post_fusion_start!r} (first fused layer of "
                    f"{self.model_type!r}) is missing or empty; check config.json"
                )
            start = min(int(v) for v in value)
        return range(start, total)


def _config_lookup(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _config_int(config: Mapping[str, Any], paths: Iterable[str], model_type: str, what: str) -> int:
    for path in paths:
        value = _config_lookup(config, path)
        if isinstance(value, int):
            return value
    raise SGMError(
        f"config.json of this {model_type!r} model has none of {list(paths)} ({what}); "
        "the checkpoint's config does not match its recipe"
    )


def _require(data: Mapping[str, Any], key: str, path: Path) -> Any:
    if key not in data:
        raise SGMError(f"recipe {path} lacks the required key {key!r}; see recipes/README.md")
    return data[key]


def load_recipe(path: Path) -> Recipe:
    """Parse and validate one recipe file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SGMError(f"recipe {path} is not readable JSON ({exc}); fix or remove it") from exc
    return parse_recipe(data, path)


def parse_recipe(data: dict[str, Any], path: Path) -> Recipe:
    """Build a recipe from its JSON data (`path` names it in messages)."""
    if not isinstance(data, dict):
        raise SGMError(f"recipe {path} is not a JSON object; see recipes/README.md")
    layers = _require(data, "layers", path)
    projections = []
    for entry in _require(data, "projections", path):
        layout = entry.get("layout", "out_in")
        if layout not in LAYOUTS:
            raise SGMError(f"recipe {path}: layout {layout!r} is not one of {LAYOUTS}")
        projections.append(
            Projection(
                name=entry["name"],
                checkpoint_name=entry.get("checkpoint_name", entry["name"]),
                layout=layout,
                kind=entry.get("kind", ""),
            )
        )
    num_layers = _require(data, "num_layers", path)
    recipe = Recipe(
        model_type=_require(data, "model_type", path),
        description=data.get("description", ""),
        auto_class=data.get("auto_class", "AutoModelForImageTextToText"),
        num_layers=tuple([num_layers] if isinstance(num_layers, str) else num_layers),
        post_fusion_start=data.get("post_fusion_start", 0),
        runtime_prefixes=tuple(_require(layers, "runtime", path)),
        checkpoint_prefixes=tuple(_require(layers, "checkpoint", path)),
        projections=tuple(projections),
        default_hook_points=tuple(HookPoint.parse(h) for h in data.get("default_hook_points", [])),
        neuron_hook_points=tuple(HookPoint.parse(h) for h in data.get("neuron_hook_points", [])),
        path=path,
        definition=data,
    )
    for template in recipe.runtime_prefixes + recipe.checkpoint_prefixes:
        try:
            _template_regex(template)
        except ValueError as exc:
            raise SGMError(f"recipe {path}: {exc}") from exc
    for hook_point in recipe.default_hook_points + recipe.neuron_hook_points:
        recipe.projection(hook_point.projection)
    return recipe


def recipe_dirs() -> list[Path]:
    """Folders searched for recipes: `$SGM_BAKE_RECIPES` entries first, then the shipped ones."""
    extra = [Path(p) for p in os.environ.get(RECIPE_PATH_ENV, "").split(os.pathsep) if p]
    return [*extra, data_dir("recipes")]


def available_recipes() -> dict[str, Path]:
    """model_type -> recipe file, earlier folders winning."""
    found: dict[str, Path] = {}
    for folder in reversed(recipe_dirs()):
        for path in sorted(folder.glob("*.json")):
            found[path.stem] = path
    return dict(sorted(found.items()))


def recipe_for_config(config: Mapping[str, Any], recipe_file: Path | None = None) -> Recipe:
    """The recipe for a model config (an explicit `recipe_file` wins)."""
    if recipe_file is not None:
        return load_recipe(recipe_file)
    model_type = config.get("model_type")
    if not model_type:
        raise SGMError("config.json has no 'model_type'; pass --recipe FILE to name the layout")
    recipes = available_recipes()
    if model_type not in recipes:
        raise SGMError(
            f"no recipe for model_type {str(model_type)[:60]!r}; 'sgm-bake recipes' lists the "
            "supported families; for another, pass --recipe FILE (see recipes/README.md)"
        )
    return load_recipe(recipes[model_type])


@dataclass(frozen=True)
class CheckpointLayout:
    """The derived map from (layer, projection) to checkpoint tensor keys."""

    recipe: Recipe
    prefix_template: str
    layers: range

    def weight_key(self, layer: int, projection: Projection) -> str:
        return f"{self.prefix_template.format(layer=layer)}.{projection.checkpoint_name}.weight"

    def bias_key(self, layer: int, projection: Projection) -> str:
        return f"{self.prefix_template.format(layer=layer)}.{projection.checkpoint_name}.bias"


def resolve_checkpoint_layout(
    recipe: Recipe, config: Mapping[str, Any], keys: Iterable[str]
) -> CheckpointLayout:
    """Find which checkpoint prefix template this checkpoint uses, checking every layer.

    Exactly one of the recipe's templates must name a weight for every post-fusion layer and
    every projection; otherwise the layout is unknown or ambiguous and we refuse.
    """
    key_set = set(keys)
    layers = recipe.layers(config)
    complete: list[str] = []
    partial: list[tuple[str, str]] = []
    for template in recipe.checkpoint_prefixes:
        layout = CheckpointLayout(recipe, template, layers)
        wanted = [layout.weight_key(i, p) for i in layers for p in recipe.projections]
        missing = [k for k in wanted if k not in key_set]
        if not missing:
            complete.append(template)
        elif len(missing) < len(wanted):
            partial.append((template, missing[0]))
    if len(complete) == 1:
        return CheckpointLayout(recipe, complete[0], layers)
    if len(complete) > 1:
        raise SGMError(
            f"checkpoint holds MLP weights under several layouts {complete} of recipe "
            f"{recipe.model_type!r}; remove the duplicate tensors or pass --recipe with one layout"
        )
    if partial:
        template, missing_key = partial[0]
        raise SGMError(
            f"checkpoint matches recipe {recipe.model_type!r} layout {template!r} only partly "
            f"(missing {missing_key!r}); the checkpoint is incomplete or its config's layer "
            "count is wrong"
        )
    example = next(iter(sorted(k for k in key_set if "mlp" in k)), "none")
    raise SGMError(
        f"no checkpoint key matches recipe {recipe.model_type!r} (tried "
        f"{list(recipe.checkpoint_prefixes)}; an MLP key here is {example!r}); add this naming "
        f"to {recipe.path.name} or pass --recipe FILE"
    )
