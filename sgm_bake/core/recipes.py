"""Architecture recipes: where a model's post-fusion language MLP projections live.

A recipe is a JSON file in `recipes/` named after the config `model_type`. It is data, not code:
adding a model family is adding a file. A recipe names

- the dotted config path(s) of the language layer count, and the first post-fusion layer;
- the layer-prefix templates, with `{layer}`, as transformers names modules at run time
  (`runtime`) and as checkpoint files store tensors (`checkpoint`), newest naming first;
- the MLP blocks inside a layer (`"mlp"`), each a reference to a shared block of
  `recipes/_blocks.json` (gated gate/up/down, fused gate_up, GPT-2 Conv1D, fc1/fc2, stacked
  experts) placed at a module path, or explicit `projections` for an unusual layout.

A mixture-of-experts layer holds a stacked experts module: one parameter per projection,
[experts, out, in] or [experts, in, out], whose units are one channel of one expert. Blocks that
only some layers hold (dense layers beside MoE layers, shared experts) are marked
`"layers": "some"`; which layers hold them is read from the checkpoint keys or the loaded model,
never from a guess.

This module parses and validates recipes (errors name the file and the field) and maps between
runtime names and checkpoint keys. The map is derived from the checkpoint's own keys and shapes
and refused when it is missing or ambiguous.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch

from sgm_bake.errors import SGMError
from sgm_bake.resources import data_dir

logger = logging.getLogger(__name__)

Layout = Literal["out_in", "in_out"]
Side = Literal["output", "input"]
Routing = Literal["top_k", "prescaled"]
LAYOUTS: tuple[str, ...] = ("out_in", "in_out")
SIDES: tuple[str, ...] = ("output", "input")
ROUTINGS: tuple[str, ...] = ("top_k", "prescaled")
RECIPE_PATH_ENV = "SGM_BAKE_RECIPES"
BLOCKS_FILE = "_blocks.json"
EXPERT_FIELD = "{expert}"


@dataclass(frozen=True)
class Projection:
    """One MLP projection inside a decoder layer: a linear module, or a stacked expert parameter."""

    name: str
    """Path relative to the layer as transformers names it, e.g. ``mlp.down_proj``; for stacked
    experts the parameter path, e.g. ``mlp.experts.gate_up_proj``."""
    checkpoint_name: str
    """The same path relative to the layer in checkpoint keys (usually `name`)."""
    layout: Layout
    """``out_in``: weight stored [out, in] (nn.Linear); ``in_out``: [in, out] (GPT-2 Conv1D).
    For stacked experts, the orientation of each expert's matrix in the runtime parameter."""
    kind: str
    """What the projection computes: gate, up, down, gate_up (fused, gate rows first), fc_in..."""
    stacked: bool = False
    """True for an experts parameter [experts, ., .] of an experts module (no nn.Linear)."""
    per_expert: tuple[str, ...] = ()
    """Checkpoint leaves (relative to the layer, with ``{expert}``) of the per-expert linear
    weights that transformers stacks at load time, concatenated along the output channels in
    this order (gate then up for gate_up)."""
    group: str = ""
    """The module path of the block this projection belongs to (``mlp``, ``mlp.experts``)."""
    required: bool = True
    """False when only some layers hold this projection's block (MoE next to dense layers)."""

    @property
    def module_name(self) -> str:
        """Path of the module that runs this projection (the experts module when stacked)."""
        return self.name.rpartition(".")[0] if self.stacked else self.name

    @property
    def parameter_name(self) -> str:
        """Attribute of `module_name` holding the weight."""
        return self.name.rpartition(".")[2] if self.stacked else "weight"


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


@dataclass(frozen=True)
class ExpertsSpec:
    """How a recipe's stacked experts are sized and called (config paths are dotted)."""

    count: tuple[str, ...]
    hidden: tuple[str, ...]
    intermediate: tuple[str, ...]
    routing: Routing
    """``top_k``: the experts module is called as (hidden [T, H], top_k_index [T, K],
    top_k_weights [T, K]); ``prescaled``: as (inputs [E * T, H]) where every expert sees every
    token multiplied by its router score, zero for experts outside the token's top k (Llama 4)."""
    checkpoint_layout: Layout | None = None
    """How the checkpoint stores a stacked expert matrix whose shape cannot tell (a square one,
    when 2 x the expert intermediate size equals the hidden size): ``out_in`` [E, out, in] or
    ``in_out`` [E, in, out]. Set by `--expert-layout`; None: read from the other expert tensor
    of the same layer, or refused."""


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
    """The recipe with its block references expanded: self-contained, stored in bake.json."""
    experts: ExpertsSpec | None = None
    text_forward: str | None = None
    """Submodule that runs text-only inputs, for a family whose top-level forward cannot run
    them (BLIP-2 requires pixel_values; Llama 4 in transformers 5.24 fails building its
    output); None otherwise."""
    fusion_layer: str = "the first language layer that sees the image"
    """What the first post-fusion layer is, in words, for messages about earlier layers (Mllama:
    the first cross-attention layer)."""

    @property
    def is_moe(self) -> bool:
        """Whether the family has stacked experts."""
        return any(p.stacked for p in self.projections)

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
        """Name as transformers names it (newest naming unless `template` is given): the module
        for a linear projection, the parameter for stacked experts."""
        prefix = (template or self.runtime_prefixes[0]).format(layer=layer)
        return f"{prefix}.{projection.name}"

    def runtime_module_name(
        self, layer: int, projection: Projection, template: str | None = None
    ) -> str:
        """Name of the module that runs `projection` (the experts module when stacked)."""
        prefix = (template or self.runtime_prefixes[0]).format(layer=layer)
        return f"{prefix}.{projection.module_name}"

    def total_layers(self, config: Mapping[str, Any]) -> int:
        """The language layer count of a model with this config."""
        return _config_int(config, self.num_layers, self.model_type, "layer count")

    def fusion_start(self, config: Mapping[str, Any]) -> int:
        """The first language layer that sees the image."""
        if isinstance(self.post_fusion_start, int):
            return self.post_fusion_start
        value = _config_lookup(config, self.post_fusion_start)
        if not isinstance(value, list) or not value:
            raise SGMError(
                f"config key {self.post_fusion_start!r} (first fused layer of "
                f"{self.model_type!r}) is missing or empty; check config.json"
            )
        return min(int(v) for v in value)

    def layers(self, config: Mapping[str, Any]) -> range:
        """The post-fusion language layers of a model with this config."""
        return range(self.fusion_start(config), self.total_layers(config))

    def all_layers(self, config: Mapping[str, Any]) -> range:
        """Every language layer, the pre-fusion ones included (explicit expertise may name
        them; profiling defaults to `layers`)."""
        return range(0, self.total_layers(config))

    def hook_points_for(
        self, points: Iterable[HookPoint], present: Callable[[Projection], bool]
    ) -> list[tuple[HookPoint, Projection]]:
        """The hook points whose projection `present` says a layer holds."""
        chosen = []
        for point in points:
            projection = self.projection(point.projection)
            if present(projection):
                chosen.append((point, projection))
        return chosen

    def expert_dims(self, config: Mapping[str, Any]) -> tuple[int, int, int]:
        """(experts, hidden, intermediate) of the stacked experts, from the config."""
        if self.experts is None:
            raise SGMError(f"recipe {self.path.name} has stacked experts but no 'experts' sizes")
        spec = self.experts
        return (
            _config_int(config, spec.count, self.model_type, "expert count"),
            _config_int(config, spec.hidden, self.model_type, "hidden size"),
            _config_int(config, spec.intermediate, self.model_type, "expert intermediate size"),
        )


def expert_unit_counts(projection: Projection, hidden: int, intermediate: int) -> tuple[int, int]:
    """(output units, input units) of one expert's matrix of a stacked projection."""
    if projection.kind == "gate_up":
        return 2 * intermediate, hidden
    if projection.kind in ("down", "fc_out"):
        return hidden, intermediate
    return intermediate, hidden


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
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise SGMError(
        f"config.json of this {model_type!r} model has none of {list(paths)} ({what}); "
        "the checkpoint's config does not match its recipe"
    )


# --- Schema ---------------------------------------------------------------------------------

_RECIPE_KEYS = {
    "model_type": (str, True),
    "description": (str, False),
    "auto_class": (str, False),
    "num_layers": ((str, list), True),
    "post_fusion_start": ((int, str), False),
    "layers": (dict, True),
    "mlp": ((str, list), False),
    "projections": (list, False),
    "default_hook_points": (list, False),
    "neuron_hook_points": (list, False),
    "experts": (dict, False),
    "text_forward": (str, False),
    "fusion_layer": (str, False),
}
_LAYER_KEYS = {"runtime": (list, True), "checkpoint": (list, True)}
_USE_KEYS = {"use": (str, True), "at": (str, False), "layers": (str, False)}
_BLOCK_KEYS = {
    "description": (str, False),
    "projections": (list, True),
    "default_hook_points": (list, False),
    "neuron_hook_points": (list, False),
}
_PROJECTION_KEYS = {
    "name": (str, True),
    "checkpoint_name": (str, False),
    "layout": (str, False),
    "kind": (str, False),
    "stacked": (bool, False),
    "per_expert": (list, False),
}
_EXPERTS_KEYS = {
    "count": ((str, list), True),
    "hidden": ((str, list), True),
    "intermediate": ((str, list), True),
    "routing": (str, False),
    "checkpoint_layout": (str, False),
}
_TYPE_NAMES = {str: "a string", list: "a list", dict: "an object", int: "an integer"}


def _type_name(kind: Any) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)


def _check_object(
    data: Any, schema: Mapping[str, tuple[Any, bool]], where: str, source: Path
) -> dict[str, Any]:
    """Check keys and value types of one JSON object; errors name the file and the field."""
    if not isinstance(data, dict):
        raise SGMError(f"recipe {source}: {where or 'the file'} must be a JSON object")
    for key, value in data.items():
        if key not in schema:
            raise SGMError(
                f"recipe {source}: unknown field {_join(where, key)!r} (known: "
                f"{', '.join(sorted(schema))}); see recipes/README.md"
            )
        kind = schema[key][0]
        if isinstance(value, bool) and kind is not bool and bool not in _as_tuple(kind):
            raise SGMError(
                f"recipe {source}: field {_join(where, key)!r} must be {_type_name(kind)}"
            )
        if not isinstance(value, kind):
            raise SGMError(
                f"recipe {source}: field {_join(where, key)!r} must be {_type_name(kind)}, "
                f"not {type(value).__name__}"
            )
    for key, (_, required) in schema.items():
        if required and key not in data:
            raise SGMError(
                f"recipe {source} lacks the required field {_join(where, key)!r}; "
                "see recipes/README.md"
            )
    return data


def _as_tuple(kind: Any) -> tuple[Any, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _join(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def _string_list(value: Any, where: str, source: Path) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values) or not values:
        raise SGMError(f"recipe {source}: field {where!r} must be a non-empty list of strings")
    return values


@dataclass(frozen=True)
class _Block:
    projections: list[dict[str, Any]]
    default_hook_points: list[str]
    neuron_hook_points: list[str]


def _blocks_path() -> Path:
    return data_dir("recipes") / BLOCKS_FILE


def load_blocks(paths: Iterable[Path] | None = None) -> dict[str, tuple[dict[str, Any], Path]]:
    """Shared MLP blocks: name -> (definition, file). `$SGM_BAKE_RECIPES` folders may add or
    override blocks with their own `_blocks.json`."""
    files = list(paths) if paths is not None else _block_files()
    blocks: dict[str, tuple[dict[str, Any], Path]] = {}
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise SGMError(f"recipe blocks {path} are not readable JSON ({exc}); fix it") from exc
        if not isinstance(data, dict):
            raise SGMError(f"recipe blocks {path} must be a JSON object of named blocks")
        for name, block in data.items():
            if name.startswith("$"):
                continue
            _check_object(block, _BLOCK_KEYS, name, path)
            blocks[name] = (block, path)
    return blocks


def _block_files() -> list[Path]:
    files = [_blocks_path()]
    for folder in reversed(recipe_dirs()[:-1]):
        candidate = folder / BLOCKS_FILE
        if candidate.is_file():
            files.append(candidate)
    return files


def _relative_point(text: str, at: str, where: str, source: Path) -> str:
    if not isinstance(text, str):
        raise SGMError(f"recipe {source}: field {where!r} must hold strings such as 'down_proj'")
    return f"{at}.{text}" if at else text


def _expand_mlp(data: dict[str, Any], source: Path) -> dict[str, Any]:
    """Replace `mlp` block references by explicit projections and hook points."""
    uses = data["mlp"]
    if isinstance(uses, str):
        uses = [{"use": uses}]
    blocks = load_blocks()
    projections: list[dict[str, Any]] = []
    defaults: list[str] = []
    neurons: list[str] = []
    for index, use in enumerate(uses):
        where = _join("mlp", index)
        if isinstance(use, str):
            use = {"use": use}
        _check_object(use, _USE_KEYS, where, source)
        if use["use"] not in blocks:
            raise SGMError(
                f"recipe {source}: field {where + '.use'!r} names block {use['use']!r}, which "
                f"{BLOCKS_FILE} does not define (known: {', '.join(sorted(blocks))})"
            )
        presence = use.get("layers", "all")
        if presence not in ("all", "some"):
            raise SGMError(f"recipe {source}: field {where + '.layers'!r} must be 'all' or 'some'")
        block, block_file = blocks[use["use"]]
        at = use.get("at", "mlp")
        for number, entry in enumerate(block["projections"]):
            entry_where = f"{use['use']}.projections[{number}]"
            _check_object(entry, _PROJECTION_KEYS, entry_where, block_file)
            expanded = copy.deepcopy(entry)
            expanded["name"] = f"{at}.{entry['name']}" if at else entry["name"]
            if "checkpoint_name" in entry:
                expanded["checkpoint_name"] = (
                    f"{at}.{entry['checkpoint_name']}" if at else entry["checkpoint_name"]
                )
            if "per_expert" in entry:
                expanded["per_expert"] = [
                    f"{at}.{leaf}" if at else leaf for leaf in entry["per_expert"]
                ]
            expanded["group"] = at
            expanded["required"] = presence == "all"
            projections.append(expanded)
        defaults += [
            _relative_point(p, at, f"{use['use']}.default_hook_points", block_file)
            for p in block.get("default_hook_points", [])
        ]
        neurons += [
            _relative_point(p, at, f"{use['use']}.neuron_hook_points", block_file)
            for p in block.get("neuron_hook_points", [])
        ]
    expanded_recipe = {k: v for k, v in data.items() if k != "mlp"}
    expanded_recipe["projections"] = projections + list(data.get("projections", []))
    expanded_recipe.setdefault("default_hook_points", defaults)
    expanded_recipe.setdefault("neuron_hook_points", neurons)
    return expanded_recipe


def load_recipe(path: Path) -> Recipe:
    """Parse and validate one recipe file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SGMError(f"recipe {path} is not readable JSON ({exc}); fix or remove it") from exc
    return parse_recipe(data, path)


def _parse_projection(entry: Any, where: str, source: Path) -> Projection:
    schema = {**_PROJECTION_KEYS, "group": (str, False), "required": (bool, False)}
    _check_object(entry, schema, where, source)
    layout = entry.get("layout", "out_in")
    if layout not in LAYOUTS:
        raise SGMError(
            f"recipe {source}: field {where + '.layout'!r} is {layout!r}; use one of {LAYOUTS}"
        )
    per_expert = tuple(entry.get("per_expert", ()))
    for leaf in per_expert:
        if not isinstance(leaf, str) or leaf.count(EXPERT_FIELD) != 1:
            raise SGMError(
                f"recipe {source}: field {where + '.per_expert'!r} entries must contain "
                f"'{EXPERT_FIELD}' exactly once"
            )
    stacked = bool(entry.get("stacked", False))
    if per_expert and not stacked:
        raise SGMError(f"recipe {source}: field {where + '.per_expert'!r} needs 'stacked': true")
    if stacked and "." not in entry["name"]:
        raise SGMError(
            f"recipe {source}: field {where + '.name'!r} of stacked experts must be a parameter "
            "path such as 'mlp.experts.gate_up_proj'"
        )
    name = entry["name"]
    return Projection(
        name=name,
        checkpoint_name=entry.get("checkpoint_name", name),
        layout=layout,
        kind=entry.get("kind", ""),
        stacked=stacked,
        per_expert=per_expert,
        group=entry.get("group", name.rpartition(".")[0]),
        required=bool(entry.get("required", True)),
    )


def parse_recipe(data: dict[str, Any], path: Path) -> Recipe:
    """Build a recipe from its JSON data (`path` names it in messages). Block references
    (`"mlp"`) are expanded; the expanded form is kept as `Recipe.definition`."""
    _check_object(data, _RECIPE_KEYS, "", path)
    if "mlp" in data:
        data = _expand_mlp(data, path)
    if not data.get("projections"):
        raise SGMError(f"recipe {path} declares no MLP projections; add 'mlp' or 'projections'")
    layers = _check_object(data["layers"], _LAYER_KEYS, "layers", path)
    projections = tuple(
        _parse_projection(entry, _join("projections", i), path)
        for i, entry in enumerate(data["projections"])
    )
    names = [p.name for p in projections]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SGMError(f"recipe {path}: projection {duplicates[0]!r} is declared twice")
    experts = None
    if "experts" in data:
        spec = _check_object(data["experts"], _EXPERTS_KEYS, "experts", path)
        routing = spec.get("routing", "top_k")
        if routing not in ROUTINGS:
            raise SGMError(f"recipe {path}: field 'experts.routing' must be one of {ROUTINGS}")
        checkpoint_layout = spec.get("checkpoint_layout")
        if checkpoint_layout is not None and checkpoint_layout not in LAYOUTS:
            raise SGMError(
                f"recipe {path}: field 'experts.checkpoint_layout' must be one of {LAYOUTS}"
            )
        experts = ExpertsSpec(
            count=tuple(_string_list(spec["count"], "experts.count", path)),
            hidden=tuple(_string_list(spec["hidden"], "experts.hidden", path)),
            intermediate=tuple(_string_list(spec["intermediate"], "experts.intermediate", path)),
            routing=routing,
            checkpoint_layout=checkpoint_layout,
        )
    if any(p.stacked for p in projections) and experts is None:
        raise SGMError(
            f"recipe {path} has stacked expert projections but no 'experts' field naming the "
            "config paths of the expert count, hidden size and expert intermediate size"
        )
    hook_points = {}
    for key in ("default_hook_points", "neuron_hook_points"):
        values = data.get(key, [])
        if not all(isinstance(v, str) for v in values):
            raise SGMError(f"recipe {path}: field {key!r} must be a list of strings")
        hook_points[key] = tuple(HookPoint.parse(h) for h in values)
    post_fusion_start = data.get("post_fusion_start", 0)
    recipe = Recipe(
        model_type=data["model_type"],
        description=data.get("description", ""),
        auto_class=data.get("auto_class", "AutoModelForImageTextToText"),
        num_layers=tuple(_string_list(data["num_layers"], "num_layers", path)),
        post_fusion_start=post_fusion_start,
        runtime_prefixes=tuple(_string_list(layers["runtime"], "layers.runtime", path)),
        checkpoint_prefixes=tuple(_string_list(layers["checkpoint"], "layers.checkpoint", path)),
        projections=projections,
        default_hook_points=hook_points["default_hook_points"],
        neuron_hook_points=hook_points["neuron_hook_points"],
        path=path,
        definition=data,
        experts=experts,
        text_forward=data.get("text_forward"),
        **({"fusion_layer": data["fusion_layer"]} if "fusion_layer" in data else {}),
    )
    for template in recipe.runtime_prefixes + recipe.checkpoint_prefixes:
        try:
            _template_regex(template)
        except ValueError as exc:
            raise SGMError(f"recipe {path}: field 'layers': {exc}") from exc
    for key, points in (
        ("default_hook_points", recipe.default_hook_points),
        ("neuron_hook_points", recipe.neuron_hook_points),
    ):
        for hook_point in points:
            try:
                recipe.projection(hook_point.projection)
            except SGMError as exc:
                raise SGMError(f"recipe {path}: field {key!r}: {exc}") from exc
    return recipe


def recipe_dirs() -> list[Path]:
    """Folders searched for recipes: `$SGM_BAKE_RECIPES` entries first, then the shipped ones."""
    extra = [Path(p) for p in os.environ.get(RECIPE_PATH_ENV, "").split(os.pathsep) if p]
    return [*extra, data_dir("recipes")]


def available_recipes() -> dict[str, Path]:
    """model_type -> recipe file, earlier folders winning (`_`-prefixed files are not recipes)."""
    found: dict[str, Path] = {}
    for folder in reversed(recipe_dirs()):
        for path in sorted(folder.glob("*.json")):
            if not path.name.startswith("_"):
                found[path.stem] = path
    return dict(sorted(found.items()))


@dataclass(frozen=True)
class RecipeSummary:
    """One line of `sgm-bake recipes`."""

    model_type: str
    moe: bool
    blocks: str
    """The MLP blocks of a layer, e.g. ``mlp: gate_proj up_proj down_proj; mlp.experts:
    gate_up_proj down_proj (stacked, some layers)``."""
    file: str


def recipe_summaries() -> list[RecipeSummary]:
    """Every available recipe, parsed (so a broken one fails here, naming its file)."""
    summaries = []
    for model_type, path in available_recipes().items():
        recipe = load_recipe(path)
        groups: dict[str, list[Projection]] = {}
        for projection in recipe.projections:
            groups.setdefault(projection.group, []).append(projection)
        parts = []
        for group, members in groups.items():
            leaves = " ".join(p.name[len(group) + 1 :] if group else p.name for p in members)
            notes = [
                note
                for note, flag in (
                    ("stacked", members[0].stacked),
                    ("some layers", not members[0].required),
                )
                if flag
            ]
            suffix = f" ({', '.join(notes)})" if notes else ""
            parts.append(f"{group or '<layer>'}: {leaves}{suffix}")
        summaries.append(RecipeSummary(model_type, recipe.is_moe, "; ".join(parts), path.name))
    return summaries


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


# --- Checkpoint layout ----------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointTensor:
    """One checkpoint tensor holding (part of) a projection's weight.

    A dense projection is one 2-D tensor. Stacked experts are one 3-D tensor [E, a, b] in the
    orientation `layout` (which may differ from the runtime parameter's), or per-expert 2-D
    nn.Linear weights; a per-expert gate/up pair holds output channels
    [offset, offset + rows) of that expert's fused gate_up units.
    """

    key: str
    layout: Layout
    expert: int | None = None
    offset: int = 0
    stacked: bool = False


@dataclass(frozen=True)
class CheckpointLayout:
    """The derived map from (layer, projection) to checkpoint tensor keys."""

    recipe: Recipe
    prefix_template: str
    layers: range
    present: Mapping[int, frozenset[str]] | None = None
    """Projections each layer holds (None: every projection in every layer)."""
    expert_forms: Mapping[tuple[int, str], tuple[str, Layout]] = field(default_factory=dict)
    """(layer, projection) -> ("stacked" | "per_expert", orientation of stacked tensors)."""
    expert_dims: tuple[int, int, int] = (0, 0, 0)
    """(experts, hidden, intermediate) of the stacked experts, from the config."""

    def has(self, layer: int, projection: Projection) -> bool:
        """Whether the checkpoint holds `projection` in `layer`."""
        return self.present is None or projection.name in self.present.get(layer, frozenset())

    def weight_key(self, layer: int, projection: Projection) -> str:
        if projection.stacked:
            return f"{self.prefix_template.format(layer=layer)}.{projection.checkpoint_name}"
        return f"{self.prefix_template.format(layer=layer)}.{projection.checkpoint_name}.weight"

    def bias_key(self, layer: int, projection: Projection) -> str:
        return f"{self.prefix_template.format(layer=layer)}.{projection.checkpoint_name}.bias"

    def tensors(self, layer: int, projection: Projection) -> list[CheckpointTensor]:
        """The checkpoint tensors holding `projection`'s weight in `layer`."""
        if not projection.stacked:
            return [CheckpointTensor(self.weight_key(layer, projection), projection.layout)]
        form, orientation = self.expert_forms[(layer, projection.name)]
        if form == "stacked":
            key = self.weight_key(layer, projection)
            return [CheckpointTensor(key, orientation, stacked=True)]
        prefix = self.prefix_template.format(layer=layer)
        out_units, _ = expert_unit_counts(projection, *self.expert_dims[1:])
        rows = out_units // len(projection.per_expert)
        return [
            CheckpointTensor(
                f"{prefix}.{leaf.replace(EXPERT_FIELD, str(expert))}.weight",
                "out_in",
                expert=expert,
                offset=part * rows,
            )
            for expert in range(self.expert_dims[0])
            for part, leaf in enumerate(projection.per_expert)
        ]

    def runtime_weight(
        self, layer: int, projection: Projection, read: Callable[[str], torch.Tensor]
    ) -> torch.Tensor:
        """The projection's weight as the loaded transformers model holds it, assembled from
        the checkpoint tensors (`read(key)` returns one): per-expert weights are stacked and
        concatenated, and a stacked tensor stored in the other orientation is transposed."""
        if not projection.stacked:
            return read(self.weight_key(layer, projection))
        form, orientation = self.expert_forms[(layer, projection.name)]
        if form == "stacked":
            value = read(self.weight_key(layer, projection))
        else:
            prefix = self.prefix_template.format(layer=layer)
            value = torch.stack(
                [
                    torch.cat(
                        [
                            read(f"{prefix}.{leaf.replace(EXPERT_FIELD, str(e))}.weight")
                            for leaf in projection.per_expert
                        ],
                        dim=0,
                    )
                    for e in range(self.expert_dims[0])
                ]
            )
            orientation = "out_in"
        if orientation != projection.layout:
            value = value.transpose(1, 2)
        return value


def _configured_expert_dims(recipe: Recipe, config: Mapping[str, Any]) -> tuple[int, int, int]:
    """The expert dimensions, or zeros when the family has experts but this model's config
    declares none (Gemma 4 dense shares its recipe with the MoE variant)."""
    if not recipe.is_moe:
        return (0, 0, 0)
    try:
        return recipe.expert_dims(config)
    except SGMError:
        return (0, 0, 0)


def _per_expert_keys(prefix: str, projection: Projection, experts: int) -> list[str]:
    return [
        f"{prefix}.{leaf.replace(EXPERT_FIELD, str(e))}.weight"
        for e in range(experts)
        for leaf in projection.per_expert
    ]


def _stacked_orientation(
    recipe: Recipe,
    projection: Projection,
    key: str,
    shape: tuple[int, ...] | None,
    dims: tuple[int, int, int],
) -> Layout | None:
    """The orientation of a stacked checkpoint tensor, derived from the config's dimensions;
    None when the shape cannot tell (a square expert matrix, out == in: the caller decides
    from the other expert tensor of the layer, or from `--expert-layout`)."""
    experts, hidden, intermediate = dims
    out_units, in_units = expert_unit_counts(projection, hidden, intermediate)
    if shape is None:
        return projection.layout
    if len(shape) != 3 or shape[0] != experts:
        raise SGMError(
            f"checkpoint tensor {key!r} has shape {list(shape)}; expected [{experts}, "
            f"{out_units}, {in_units}] or [{experts}, {in_units}, {out_units}] (experts from "
            f"the config of recipe {recipe.model_type!r})"
        )
    if out_units == in_units:
        if shape[1:] != (out_units, in_units):
            raise SGMError(f"checkpoint tensor {key!r} has shape {list(shape)}; it fits no layout")
        return None
    if shape[1:] == (out_units, in_units):
        return "out_in"
    if shape[1:] == (in_units, out_units):
        return "in_out"
    raise SGMError(
        f"checkpoint tensor {key!r} has shape {list(shape)}, which fits neither [E, out, in] = "
        f"[{experts}, {out_units}, {in_units}] nor [E, in, out]; the config does not match it"
    )


def _settle_square(
    recipe: Recipe,
    layer: int,
    forms: dict[tuple[int, str], tuple[str, Layout | None]],
    keys: dict[str, str],
    shapes: Mapping[str, tuple[int, ...]],
) -> None:
    """Decide the orientation of the layer's square stacked tensors: `--expert-layout` (the
    recipe's `experts.checkpoint_layout`) when given, else the orientation the other stacked
    tensor of the same experts block shows (a checkpoint stores a block's tensors alike:
    transposed together or not at all), else refuse naming the option."""
    chosen = recipe.experts.checkpoint_layout if recipe.experts is not None else None
    for projection in recipe.projections:
        form = forms.get((layer, projection.name))
        if form is None or form != ("stacked", None):
            continue
        key = keys[projection.name]
        if chosen is not None:
            forms[(layer, projection.name)] = ("stacked", chosen)
            continue
        evidence = [
            (other.name, forms[(layer, other.name)][1])
            for other in recipe.projections
            if other.stacked
            and other.group == projection.group
            and other.name != projection.name
            and forms.get((layer, other.name), ("", None))[0] == "stacked"
            and forms[(layer, other.name)][1] is not None
        ]
        if not evidence:
            raise SGMError(
                f"checkpoint tensor {key!r} is square {list(shapes[key])} (2 x the expert "
                "intermediate size equals the hidden size), so its shape does not tell whether "
                "it is stored [experts, out, in] or [experts, in, out], and no other expert "
                f"tensor of layer {layer} settles it; pass --expert-layout out_in or in_out, "
                "as the checkpoint's publisher documents it"
            )
        other_name, orientation = evidence[0]
        logger.info(
            "%s is square; its orientation (%s) is read from %s of the same layer",
            key,
            orientation,
            other_name,
        )
        forms[(layer, projection.name)] = ("stacked", orientation)


def with_expert_layout(recipe: Recipe, layout: str) -> Recipe:
    """The recipe with `experts.checkpoint_layout` set (`--expert-layout`); the setting is part
    of the recipe's definition, so the bake record carries it to verify and unbake."""
    if layout not in LAYOUTS:
        raise SGMError(f"--expert-layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if recipe.experts is None:
        raise SGMError(
            f"--expert-layout applies to mixture-of-experts models; recipe {recipe.model_type!r} "
            "has no stacked experts"
        )
    definition = copy.deepcopy(recipe.definition)
    definition["experts"]["checkpoint_layout"] = layout
    return parse_recipe(definition, recipe.path)


def resolve_checkpoint_layout(
    recipe: Recipe,
    config: Mapping[str, Any],
    keys: Iterable[str],
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    layers: range | None = None,
) -> CheckpointLayout:
    """Find which checkpoint prefix template this checkpoint uses, checking every layer.

    Exactly one of the recipe's templates must name a weight for every post-fusion layer (or
    every layer of `layers`) and every required projection, and every layer must hold at least
    one MLP block; otherwise the layout is unknown or ambiguous and we refuse. Stacked experts
    may be stored stacked (in either orientation, read from `shapes` and the config) or as
    per-expert weights.
    """
    key_set = set(keys)
    layers = layers if layers is not None else recipe.layers(config)
    dims = _configured_expert_dims(recipe, config)
    complete: list[CheckpointLayout] = []
    partial: list[tuple[str, str]] = []
    for template in recipe.checkpoint_prefixes:
        probe = CheckpointLayout(recipe, template, layers)
        present: dict[int, frozenset[str]] = {}
        forms: dict[tuple[int, str], tuple[str, Layout | None]] = {}
        missing: list[str] = []
        found = 0
        for layer in layers:
            prefix = template.format(layer=layer)
            held: set[str] = set()
            groups: dict[str, list[bool]] = {}
            stacked_keys: dict[str, str] = {}
            for projection in recipe.projections:
                stacked_key = probe.weight_key(layer, projection)
                stacked_keys[projection.name] = stacked_key
                if projection.stacked:
                    per_keys = _per_expert_keys(prefix, projection, dims[0])
                    if stacked_key in key_set and not dims[0]:
                        raise SGMError(
                            f"checkpoint holds stacked experts {stacked_key!r} but config.json "
                            f"has none of {list(recipe.experts.count) if recipe.experts else []}"
                            " (expert count); the config does not match the checkpoint"
                        )
                    if stacked_key in key_set:
                        orientation = _stacked_orientation(
                            recipe, projection, stacked_key, (shapes or {}).get(stacked_key), dims
                        )
                        forms[(layer, projection.name)] = ("stacked", orientation)
                        ok = True
                    elif per_keys and all(k in key_set for k in per_keys):
                        forms[(layer, projection.name)] = ("per_expert", "out_in")
                        ok = True
                    else:
                        ok = False
                        if per_keys and any(k in key_set for k in per_keys):
                            missing.append(next(k for k in per_keys if k not in key_set))
                else:
                    ok = stacked_key in key_set
                groups.setdefault(projection.group, []).append(ok)
                if ok:
                    held.add(projection.name)
                    found += 1
                elif projection.required:
                    missing.append(stacked_key)
            for group, flags in groups.items():
                if any(flags) and not all(flags):
                    absent = [
                        p.name
                        for p in recipe.projections
                        if p.group == group and p.name not in held
                    ]
                    missing.append(f"{prefix}.{absent[0]}")
            if not held:
                missing.append(f"{prefix}.<any MLP block>")
            present[layer] = frozenset(held)
            if not missing:
                _settle_square(recipe, layer, forms, stacked_keys, shapes or {})
        if not missing:
            complete.append(
                CheckpointLayout(
                    recipe,
                    template,
                    layers,
                    present if not all(p.required for p in recipe.projections) else None,
                    {k: (form, o or "out_in") for k, (form, o) in forms.items()},
                    dims,
                )
            )
        elif found:
            partial.append((template, missing[0]))
    if len(complete) == 1:
        return complete[0]
    if len(complete) > 1:
        raise SGMError(
            f"checkpoint holds MLP weights under several layouts "
            f"{[c.prefix_template for c in complete]} of recipe {recipe.model_type!r}; remove "
            "the duplicate tensors or pass --recipe with one layout"
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
