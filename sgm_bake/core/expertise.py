"""The expertise file: per-unit suppression factors, the contract between profiling and baking.

Format (a safetensors file; any tool may write it):

- `alpha/<module>`: float32 [units], the factor each unit of `<module>` is multiplied by; for
  stacked experts float32 [experts, units], row e holding expert e's factors;
- `auroc/<module>` (optional): float32, the same shape, the expertise the factors came from;
- header metadata `side/<module>`: `output` when the units are the module's output channels (the
  SGM reference's hook point) or `input` when they are its input channels (the classic MLP neuron
  before `down_proj`); `output` when absent. Other metadata keys record how it was made;
- format `expertise/2` adds optional low-rank deltas (the conditional write of `core.edit`):
  `delta_u/<module>` float32 [out units] and `delta_v/<module>` float32 [in units], the term
  `u vᵀ` added to the module's weight (`v uᵀ` where the weight is stored [in, out]), after its
  SGM factors: `W' = diag(a_out) W diag(a_in) + u vᵀ`. A delta may name a module that has no
  factors, and a file may hold deltas only. A delta on a stacked experts parameter is refused
  when resolved (per-expert edits are not supported; a shared expert is an ordinary projection).
  Files without deltas are written as `expertise/1`, as before, and both versions are read;
- format `expertise/3` lets a delta have rank r > 1: `delta_u/<module>` float32 [out units, r]
  and `delta_v/<module>` [in units, r], the term `U Vᵀ` (the conditional write with `--edit-rank`
  above 1). Rank-1 deltas are still written as the vectors of `expertise/2`, so a file only
  needs the new version when it holds a higher rank; all three versions are read.

`<module>` is the module name in the loaded transformers model, e.g.
`model.language_model.layers.3.mlp.down_proj`; stacked experts, which are parameters of an
experts module rather than modules, are named by the parameter path, e.g.
`model.language_model.layers.1.mlp.experts.gate_up_proj` (output side: each expert's output
channels, gate rows then up rows; input side: its input channels). Older namings of the same
module are accepted and mapped through the recipe. The research code's interventions (a folder of
`<module>.statedict` files, each a torch-saved dict with an `alpha` that multiplies the output)
load too.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from sgm_bake.core.edit import LowRankDelta
from sgm_bake.core.recipes import SIDES, Projection, Recipe, Side
from sgm_bake.errors import SGMError

FORMAT_KEY = "sgm_bake.format"
FORMAT_VERSION = "expertise/1"
FORMAT_VERSION_DELTAS = "expertise/2"
FORMAT_VERSION_RANK = "expertise/3"
READABLE_FORMATS = (FORMAT_VERSION, FORMAT_VERSION_DELTAS, FORMAT_VERSION_RANK)
STATEDICT_SUFFIX = ".statedict"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModuleExpertise:
    """Suppression factors (and optionally AUROC scores) for the units of one module."""

    module: str
    side: Side
    alpha: torch.Tensor
    auroc: torch.Tensor | None = None

    @property
    def suppressed(self) -> int:
        """Units whose factor is below one (scaled down or switched off)."""
        return int((self.alpha < 1).sum())


@dataclass(frozen=True)
class Expertise:
    """Factors for a set of modules, optional low-rank deltas, and free-form string metadata."""

    modules: dict[str, ModuleExpertise]
    metadata: dict[str, str] = field(default_factory=dict)
    deltas: dict[str, LowRankDelta] = field(default_factory=dict)

    def scaling_only(self) -> Expertise:
        """The same expertise without its deltas (the SGM factors alone)."""
        return Expertise(self.modules, self.metadata)

    def resolve(self, recipe: Recipe, layers: range) -> list[ResolvedUnits]:
        """Map every module onto (layer, projection) of `recipe`, refusing anything else.

        This is the guard that keeps vision towers, projectors and audio encoders untouched:
        a module that is not a recipe projection in one of `layers` is an error. Factors of
        stacked experts must be [experts, units], of any other projection [units].

        An expertise with deltas is refused here, so that no step applies its factors and
        silently drops its deltas: a step that applies both resolves `scaling_only()` and
        `resolve_deltas`.
        """
        if self.deltas:
            raise SGMError(
                f"this expertise holds low-rank edits ({len(self.deltas)} delta_u/delta_v "
                f"pairs, format {FORMAT_VERSION_DELTAS}), which this step does not apply yet; "
                "use an expertise file without edits"
            )
        resolved: dict[tuple[int, str, str], ResolvedUnits] = {}
        for name, entry in self.modules.items():
            layer, projection = _locate(recipe, layers, name, "module")
            dims = 2 if projection.stacked else 1
            if entry.alpha.ndim != dims:
                raise SGMError(
                    f"expertise for {name!r} has shape {list(entry.alpha.shape)}; "
                    + (
                        "stacked experts need [experts, units] factors"
                        if projection.stacked
                        else "this projection needs one factor per unit, [units]"
                    )
                )
            key = (layer, projection.name, entry.side)
            if key in resolved:
                raise SGMError(
                    f"expertise names {name!r} and {resolved[key].source_name!r}, the same "
                    "module under two namings; keep one"
                )
            resolved[key] = ResolvedUnits(layer, projection, entry.side, entry, name)
        return [resolved[k] for k in sorted(resolved)]

    def resolve_deltas(self, recipe: Recipe, layers: range) -> list[ResolvedDelta]:
        """Map every delta onto (layer, projection) of `recipe`, as `resolve` does for factors;
        a delta on a stacked experts parameter is refused."""
        resolved: dict[tuple[int, str], ResolvedDelta] = {}
        for name, delta in self.deltas.items():
            layer, projection = _locate(recipe, layers, name, "delta")
            if projection.stacked:
                raise SGMError(
                    f"expertise holds a low-rank delta on {name!r}, a stacked experts "
                    "parameter; per-expert edits are not supported: edit a dense layer's or a "
                    "shared expert's projection"
                )
            key = (layer, projection.name)
            if key in resolved:
                raise SGMError(
                    f"expertise has deltas on {name!r} and {resolved[key].source_name!r}, the "
                    "same module under two namings; keep one"
                )
            resolved[key] = ResolvedDelta(layer, projection, delta, name)
        return [resolved[k] for k in sorted(resolved)]


def _locate(recipe: Recipe, layers: range, name: str, what: str) -> tuple[int, Projection]:
    """(layer, projection) of an expertise entry's module name, or a clear refusal."""
    parsed = recipe.parse_module(name)
    if parsed is None:
        raise SGMError(
            f"expertise {what} {name!r} is not a language-layer MLP projection of "
            f"recipe {recipe.model_type!r}; it belongs to another model or another part "
            "of this one (vision tower, projector): profile this model again"
        )
    layer, projection = parsed
    if layer not in layers:
        raise SGMError(
            f"expertise {what} {name!r} is in layer {layer}, outside the language "
            f"layers {layers.start}-{layers.stop - 1} of this model; it was made for a "
            "different model"
        )
    return layer, projection


def language_units(
    expertise: Expertise, recipe: Recipe, config: Mapping[str, Any], warn: bool = True
) -> list[ResolvedUnits]:
    """The expertise mapped onto the model's language layers: one rule for every family and
    every step (bake, verify, hooks). Profiling picks post-fusion layers only, but an expertise
    written elsewhere may also name earlier language layers (the research code's own expertise
    for Llama 3.2 Vision hooks every layer): those are accepted, with a warning saying what
    they are (`warn`: the bake and the verification warn; hooks, which verification applies
    block by block, do not repeat it). A layer beyond the language layers is refused."""
    units = expertise.resolve(recipe, recipe.all_layers(config))
    start = recipe.fusion_start(config)
    early = sorted({unit.layer for unit in units if unit.layer < start})
    if early and warn:
        logger.warning(
            "the expertise names language layers %s, before layer %d, %s (where the image "
            "enters): those layers never see the image; they are folded as given",
            early,
            start,
            recipe.fusion_layer,
        )
    return units


@dataclass(frozen=True)
class ResolvedUnits:
    """An expertise entry tied to a recipe projection in a given layer."""

    layer: int
    projection: Projection
    side: Side
    entry: ModuleExpertise
    source_name: str


@dataclass(frozen=True)
class ResolvedDelta:
    """A low-rank delta tied to a (non-stacked) recipe projection in a given layer."""

    layer: int
    projection: Projection
    delta: LowRankDelta
    source_name: str


def _check_vector(name: str, what: str, tensor: torch.Tensor, source: Path) -> torch.Tensor:
    if tensor.ndim not in (1, 2) or not tensor.is_floating_point():
        raise SGMError(
            f"{what} of {name!r} in {source} has shape {list(tensor.shape)} and dtype "
            f"{tensor.dtype}; it must be a float tensor, one value per unit ([units], or "
            "[experts, units] for stacked experts)"
        )
    tensor = tensor.to(torch.float32)
    if not torch.isfinite(tensor).all():
        raise SGMError(f"{what} of {name!r} in {source} has non-finite values; recompute it")
    return tensor


def validate_alpha(name: str, alpha: torch.Tensor, source: Path) -> torch.Tensor:
    """Factors must be finite and non-negative: a negative factor flips a unit, never intended."""
    alpha = _check_vector(name, "alpha", alpha, source)
    if (alpha < 0).any():
        worst = float(alpha.min())
        raise SGMError(
            f"alpha of {name!r} in {source} has negative values (min {worst:.4g}); factors must "
            "be >= 0 (a --strength above 1 can cause this)"
        )
    return alpha


def _load_safetensors(path: Path) -> Expertise:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise SGMError(
            f"{path} is not a readable expertise file ({exc}); pass the file written by "
            "'sgm-bake profile' or a folder of .statedict files"
        ) from exc
    version = metadata.get(FORMAT_KEY)
    if version is not None and version not in READABLE_FORMATS:
        raise SGMError(
            f"{path} is in expertise format {version!r}; this sgm-bake reads "
            f"{', '.join(READABLE_FORMATS)}: upgrade sgm-bake"
        )
    modules: dict[str, ModuleExpertise] = {}
    for key, tensor in tensors.items():
        kind, _, module = key.partition("/")
        if kind != "alpha" or not module:
            continue
        side = metadata.get(f"side/{module}", "output")
        if side not in SIDES:
            raise SGMError(f"{path}: side/{module} is {side!r}; it must be 'output' or 'input'")
        alpha = validate_alpha(module, tensor, path)
        auroc = tensors.get(f"auroc/{module}")
        if auroc is not None:
            auroc = _check_vector(module, "auroc", auroc, path)
            if auroc.shape != alpha.shape:
                raise SGMError(f"{path}: auroc and alpha of {module!r} differ in length")
        modules[module] = ModuleExpertise(module, side, alpha, auroc)
    deltas = _load_deltas(tensors, path)
    if not modules and not deltas:
        raise SGMError(f"{path} holds no 'alpha/<module>' tensors; it is not an expertise file")
    return Expertise(modules, metadata, deltas)


def _load_deltas(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, LowRankDelta]:
    """The `delta_u/<module>` and `delta_v/<module>` pairs of an expertise/2 or /3 file."""
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        kind, _, module = key.partition("/")
        if kind in ("delta_u", "delta_v") and module:
            halves.setdefault(module, {})[kind] = tensor
    deltas = {}
    for module, pair in sorted(halves.items()):
        if set(pair) != {"delta_u", "delta_v"}:
            present = next(iter(pair))
            raise SGMError(
                f"{path} holds {present}/{module} without its other half; a delta needs both "
                "delta_u and delta_v"
            )
        try:
            deltas[module] = LowRankDelta(module, pair["delta_u"], pair["delta_v"])
        except ValueError as exc:
            raise SGMError(f"{path}: {exc}; recompute the edit") from exc
    return deltas


def _load_statedict_folder(path: Path) -> Expertise:
    files = sorted(path.glob(f"*{STATEDICT_SUFFIX}"))
    if not files:
        raise SGMError(
            f"{path} is a folder without *{STATEDICT_SUFFIX} files; pass an expertise "
            "safetensors file or the AurA/SGM research code's interventions folder"
        )
    modules: dict[str, ModuleExpertise] = {}
    for file in files:
        module = file.name[: -len(STATEDICT_SUFFIX)]
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise SGMError(
                f"{file} is not a loadable torch state dict ({type(exc).__name__}); only plain "
                "tensors are accepted (weights_only)"
            ) from exc
        if not isinstance(state, dict) or "alpha" not in state:
            raise SGMError(f"{file} has no 'alpha' entry; it is not an AurA/SGM intervention")
        alpha = torch.as_tensor(state["alpha"])
        if alpha.ndim > 1 and math.prod(alpha.shape[:-1]) == 1:
            alpha = alpha.reshape(-1)
        modules[module] = ModuleExpertise(module, "output", validate_alpha(module, alpha, file))
    return Expertise(modules, {"imported_from": "aura-statedict"})


def load_expertise(path: Path | str) -> Expertise:
    """Load an expertise safetensors file or a research-code folder of `.statedict` files."""
    path = Path(path)
    if not path.exists():
        raise SGMError(f"expertise {path} does not exist; check the --expertise path")
    if path.is_dir():
        return _load_statedict_folder(path)
    return _load_safetensors(path)


def save_expertise(expertise: Expertise, path: Path | str) -> None:
    """Write an expertise file (see the module docstring for the format)."""
    tensors: dict[str, torch.Tensor] = {}
    version = FORMAT_VERSION
    if expertise.deltas:
        ranked = any(delta.rank > 1 for delta in expertise.deltas.values())
        version = FORMAT_VERSION_RANK if ranked else FORMAT_VERSION_DELTAS
    metadata = {"format": "pt", **expertise.metadata, FORMAT_KEY: version}
    for name, entry in expertise.modules.items():
        tensors[f"alpha/{name}"] = entry.alpha.to(torch.float32).contiguous()
        if entry.auroc is not None:
            tensors[f"auroc/{name}"] = entry.auroc.to(torch.float32).contiguous()
        metadata[f"side/{name}"] = entry.side
    for name, delta in expertise.deltas.items():
        # rank 1 keeps the vectors of expertise/2, readable by the releases before ranks
        u, v = (delta.u[:, 0], delta.v[:, 0]) if delta.rank == 1 else (delta.u, delta.v)
        tensors[f"delta_u/{name}"] = u.contiguous()
        tensors[f"delta_v/{name}"] = v.contiguous()
    Path(path).write_bytes(_canonical(save(tensors, metadata=metadata)))


def _canonical(blob: bytes) -> bytes:
    """The same safetensors file with its header's keys sorted: the library writes metadata in
    hash order, which differs from run to run, and two bakes must give identical files."""
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob[8 + length :]
