"""The per-layer summary of a set of factors: units, and how many are suppressed, zeroed or
amplified. Computed here once and shown by the CLI, the model card and the plots alike."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sgm_bake.core.expertise import Expertise
from sgm_bake.core.recipes import Recipe
from sgm_bake.record.schema import ModuleCount


@dataclass(frozen=True)
class LayerRow:
    """Totals of one decoder layer."""

    layer: int
    units: int
    suppressed: int
    zeroed: int
    amplified: int

    @property
    def share(self) -> float:
        """Share of the layer's units that are suppressed."""
        return self.suppressed / self.units if self.units else 0.0


def count_module(layer: int, side: str, alpha: object) -> ModuleCount:
    """Counts of one module's factors (a float tensor of any shape)."""
    import torch

    assert isinstance(alpha, torch.Tensor)
    return ModuleCount(
        layer=layer,
        side=side,
        units=alpha.numel(),
        suppressed=int((alpha < 1).sum()),
        zeroed=int((alpha == 0).sum()),
        amplified=int((alpha > 1).sum()),
        min_alpha=float(alpha.min()) if alpha.numel() else 1.0,
        mean_alpha=float(alpha.mean()) if alpha.numel() else 1.0,
    )


def expertise_counts(expertise: Expertise, recipe: Recipe) -> dict[str, ModuleCount]:
    """Counts per module of an expertise file, before it is baked."""
    counts = {}
    for name, entry in expertise.modules.items():
        parsed = recipe.parse_module(name)
        counts[name] = count_module(parsed[0] if parsed else -1, entry.side, entry.alpha)
    return counts


def layer_rows(modules: Mapping[str, ModuleCount]) -> list[LayerRow]:
    """Per-layer totals, in layer order."""
    totals: dict[int, list[int]] = {}
    for entry in modules.values():
        row = totals.setdefault(entry.layer, [0, 0, 0, 0])
        row[0] += entry.units
        row[1] += entry.suppressed
        row[2] += entry.zeroed
        row[3] += entry.amplified
    return [LayerRow(layer, *totals[layer]) for layer in sorted(totals)]


def layer_table(rows: list[LayerRow]) -> list[str]:
    """The summary as aligned text lines, with a total line."""
    from sgm_bake.text import table

    lines = table(
        ("layer", "units", "suppressed", "share", "zeroed", "amplified"),
        [
            (row.layer, row.units, row.suppressed, f"{row.share:.1%}", row.zeroed, row.amplified)
            for row in rows
        ],
    )
    units = sum(r.units for r in rows)
    suppressed = sum(r.suppressed for r in rows)
    share = suppressed / units if units else 0.0
    lines.append(f"total  {units:,} units, {suppressed:,} suppressed ({share:.2%})")
    return lines


def layer_dicts(rows: list[LayerRow]) -> list[dict[str, int]]:
    """The summary for `--json`."""
    return [
        {
            "layer": row.layer,
            "units": row.units,
            "suppressed": row.suppressed,
            "zeroed": row.zeroed,
            "amplified": row.amplified,
        }
        for row in rows
    ]
