"""Audit a baked folder: re-check its hashes, summarise it, and rebuild the base weights.

`unbake` divides the folded weights by the stored factors (in float64, rounded once). A rebuilt
weight differs from the base by at most two roundings to its dtype, the fold's and the unfold's
(relative 2u each: u = 2^-24 for fp32, 2^-11 for fp16, 2^-8 for bf16), plus the float32 products
of the fold (a few 2^-24, relative). A weight whose folded value is subnormal was rounded to the
dtype's subnormal spacing s instead (an absolute error of s/2, which the division by the factor
alpha scales to s/(2 alpha)); so the bound for a weight b is

    |rebuilt - b| <= (2u + 6 x 2^-24) |b| + s (1 / (2 alpha) + 1/2)

(s = 2^-149 for fp32, 2^-24 for fp16, 2^-133 for bf16). Units with factor 0 were erased by the
bake and cannot be rebuilt; unbake refuses them and names them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from sgm_bake.core.expertise import Expertise, ModuleExpertise, load_expertise
from sgm_bake.errors import SGMError, TamperedError
from sgm_bake.io.atomic import atomic_folder, check_target
from sgm_bake.io.checkpoint import open_checkpoint
from sgm_bake.io.tensors import TensorSource
from sgm_bake.pipeline.bake import (
    EXPERTISE_FILE,
    TensorEdit,
    copy_other_files,
    expertise_path,
    plan_bake,
    write_weights,
)
from sgm_bake.pipeline.decision import method_summary
from sgm_bake.pipeline.verify import recorded_recipe
from sgm_bake.publish.card import CARD_FILE, write_plots
from sgm_bake.publish.plots import percent_text
from sgm_bake.publish.refresh import rewrite_card
from sgm_bake.record import SGM_DIR, BakeRecord, require_intact
from sgm_bake.record.summary import layer_rows, layer_table

# Unit roundoff and smallest subnormal of each foldable dtype (F64 weights are folded in
# float32, whose precision and range then bound the error).
UNIT_ROUNDOFF = {"F32": 2.0**-24, "F64": 2.0**-24, "F16": 2.0**-11, "BF16": 2.0**-8}
SUBNORMAL = {"F32": 2.0**-149, "F64": 2.0**-149, "F16": 2.0**-24, "BF16": 2.0**-133}
FLOAT32_PRODUCTS = 6 * 2.0**-24  # the fold's float32 products and factor casts
COMPARE_BLOCK = 1 << 20  # elements per block of the comparison (float64: 8 MB each)


def inverse_expertise(expertise: Expertise) -> Expertise:
    """Factors that undo `expertise`; refuses units whose factor is 0 (erased by the bake)."""
    zero = [
        (name, torch.nonzero(entry.alpha == 0).flatten().tolist())
        for name, entry in expertise.modules.items()
    ]
    zero = [(name, units) for name, units in zero if units]
    if zero:
        total = sum(len(units) for _, units in zero)
        name, units = zero[0]
        raise SGMError(
            f"{total} units have factor 0 and cannot be rebuilt (e.g. {name} units "
            f"{units[:5]}): their weights were erased by the bake (det0 or a strength >= 2)"
        )
    modules = {
        name: ModuleExpertise(name, entry.side, 1.0 / entry.alpha.to(torch.float64), entry.auroc)
        for name, entry in expertise.modules.items()
    }
    return Expertise(modules, {"inverse_of": "sgm expertise"})


def stored_expertise(folder: Path) -> Expertise:
    path = expertise_path(folder)
    if not path.is_file():
        raise SGMError(f"{folder} has no {SGM_DIR}/{EXPERTISE_FILE}; it is not an sgm-bake output")
    return load_expertise(path)


def rounding_bound(base: torch.Tensor, inverse: torch.Tensor, dtype: str) -> torch.Tensor:
    """How far a rebuilt weight may lie from `base` (see the module docstring): `inverse` is the
    per-element product of the unfold's factors, 1 / alpha."""
    relative = 2 * UNIT_ROUNDOFF.get(dtype, 2.0**-8) + FLOAT32_PRODUCTS
    spacing = SUBNORMAL.get(dtype, 2.0**-24)
    bound = relative * base.abs() + spacing * (0.5 * inverse.abs() + 0.5)
    return bound * (1 + 2.0**-20)


def compare_weights(rebuilt: Path, base: Path, plan: Any) -> dict[str, Any]:
    """Compare a rebuilt checkpoint with the base: every rebuilt tensor (`plan.edits`, the
    unfold) must lie within `rounding_bound` of the base, element by element, and every other
    tensor must be bit-identical. Also reports the largest relative difference over the base's
    normal-range weights, and the largest difference as a share of its bound."""

    ours, theirs = open_checkpoint(rebuilt), open_checkpoint(base)
    our_keys, their_keys = ours.tensor_keys(), theirs.tensor_keys()
    if set(our_keys) != set(their_keys):
        raise SGMError(
            f"the rebuilt checkpoint and the base {base} hold different tensor names; the base "
            "is another model"
        )
    read_ours, read_theirs = TensorSource(ours).read, TensorSource(theirs).read
    worst_relative, worst_share, within, identical = 0.0, 0.0, True, True
    for key in sorted(their_keys):
        base_tensor, rebuilt_tensor = read_theirs(key), read_ours(key)
        if base_tensor.shape != rebuilt_tensor.shape or base_tensor.dtype != rebuilt_tensor.dtype:
            identical = within = False
            continue
        edit = plan.edits.get(key)
        if edit is None:
            identical &= torch.equal(base_tensor, rebuilt_tensor)
            continue
        tiny = torch.finfo(base_tensor.dtype).tiny
        rows = base_tensor.shape[0] if base_tensor.ndim else 1
        per_row = max(1, base_tensor.numel() // max(1, rows))
        step = max(1, COMPARE_BLOCK // per_row)
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            expected = base_tensor[start:stop].to(torch.float64)
            got = rebuilt_tensor[start:stop].to(torch.float64)
            inverse = edit.fold.scaling().fold_block(torch.ones_like(expected), start)
            difference = (got - expected).abs()
            bound = rounding_bound(expected, inverse, edit.dtype)
            if edit.fold.low_rank:
                # the baked weight held the edit's term too, so its rounding scales with
                # |W| + |U| |V|ᵀ / alpha (the unfold's low-rank factors, already divided; the
                # absolute products, since a rank-r term sums r of them in float32)
                term = torch.zeros_like(expected)
                rank = 0
                for term_rows, term_cols in edit.fold.low_rank:
                    term += term_rows[start:stop].abs() @ term_cols.abs().T
                    rank += term_rows.shape[1]
                roundoff = 2 * UNIT_ROUNDOFF.get(edit.dtype, 2.0**-8) + rank * FLOAT32_PRODUCTS
                bound = bound + roundoff * term
            within &= bool((difference <= bound).all())
            worst_share = max(worst_share, float((difference / bound).max()))
            normal = expected.abs() >= tiny
            if bool(normal.any()):
                relative = difference[normal] / expected.abs()[normal]
                worst_relative = max(worst_relative, float(relative.max()))
    return {
        "max_relative_difference": worst_relative,
        "max_share_of_bound": worst_share,
        "within_bound": within,
        "others_identical": identical,
    }


def unbake(
    out: Path,
    dest: Path,
    overwrite: bool = False,
    progress: bool = True,
    compare_with: Path | None = None,
) -> dict[str, Any]:
    """Rebuild the base checkpoint from a baked folder into `dest` (atomically).

    Every file but the model card and `sgm/` is carried over; the folded tensors are divided by
    their factors in float64 and rounded once to their dtype. OUT must match its record
    (TamperedError otherwise). With `compare_with` (a base checkpoint folder) the rebuilt
    weights are compared with it before DEST is put in place: a failed comparison raises
    TamperedError and leaves DEST as it was.
    """
    from sgm_bake.io.checkpoint import open_checkpoint

    record = require_intact(out)
    check_target(dest, out, overwrite)
    if compare_with is not None:
        open_checkpoint(compare_with)  # a bad base fails before anything is written
    checkpoint = open_checkpoint(out)
    recipe = recorded_recipe(record, checkpoint.config)
    stored = stored_expertise(out)
    inverse_expertise(stored)  # refuses factors of 0 before anything is written
    # the forward plan of the stored expertise, each fold inverted: divide by the factors after
    # subtracting the edit's low-rank terms
    forward = plan_bake(checkpoint, stored, recipe=recipe, compute=torch.float64)
    plan = replace(
        forward,
        edits={
            key: TensorEdit(edit.key, edit.shape, edit.dtype, edit.fold.inverse())
            for key, edit in forward.edits.items()
        },
    )
    figures: dict[str, Any] | None = None
    with atomic_folder(dest, overwrite) as staging:
        copy_other_files(checkpoint, staging, frozenset({CARD_FILE}))
        write_weights(plan, staging, progress)
        if compare_with is not None:
            figures = compare_weights(staging, compare_with, plan)
            if not (figures["within_bound"] and figures["others_identical"]):
                raise TamperedError(
                    f"{out} differs from the base {compare_with} by more than its declared "
                    f"factors (rebuilt weights within the rounding bound: "
                    f"{figures['within_bound']}, largest share of the bound "
                    f"{figures['max_share_of_bound']:.3g}; other tensors identical: "
                    f"{figures['others_identical']}); {dest} was not written"
                )
    return {"tensors_rebuilt": sorted(plan.edits), "source": record.source.id, "compare": figures}


def describe_record(record: BakeRecord) -> list[str]:
    """A human summary of a bake record: source, recipe, rule, per-layer table, checks."""
    source = record.source
    meta = record.expertise.metadata
    lines = [
        f"source      {source.id} @ {source.revision or 'local'}",
        f"recipe      {record.recipe.model_type} ({record.recipe.checkpoint_layout})",
        f"tool        sgm-bake {record.tool.version}; command: {record.command}",
        *method_summary(meta),
    ]
    if meta.get("method", "sgm") != "edit":
        lines += [
            f"rule        {meta.get('rule', '-')} (threshold {meta.get('threshold', '-')}, "
            f"top-k {meta.get('top_k') or '-'}, strength {meta.get('strength', '-')})",
            *layer_table(layer_rows(record.expertise.modules)),
        ]
    lines.append(
        f"profile set {meta.get('profile_set', '-')} {meta.get('profile_set_sha256', '')[:12]}"
    )
    verification = record.verification
    if verification is not None:
        verdict = "PASS" if verification.passed else "FAIL"
        lines.append(
            f"verify      {verdict} ({verification.mode}): relative "
            f"{'per-unit output' if verification.mode == 'layers' else 'logit'} difference "
            f"{verification.max_rel_diff:.3g} (tolerance {verification.tolerance:.3g})"
        )
    else:
        lines.append("verify      not run")
    if record.evaluation is not None:
        for label, metrics in record.evaluation.ordered().items():
            lines.append(
                f"eval        {label}: harmful {percent_text(metrics.harmful_rate)}, "
                f"benign accuracy {percent_text(metrics.benign_accuracy)}"
            )
    return lines


def record_summary(record: BakeRecord) -> dict[str, Any]:
    """The summary `describe_record` prints, for `inspect --json`: stable keys, raw figures."""
    from sgm_bake.record.summary import layer_dicts, layer_rows

    source = record.source
    meta = record.expertise.metadata
    verification = record.verification
    return {
        "source": {"id": source.id, "kind": source.kind, "revision": source.revision},
        "base_model": record.hub_source,
        "recipe": {
            "model_type": record.recipe.model_type,
            "checkpoint_layout": record.recipe.checkpoint_layout,
        },
        "tool": {"name": record.tool.name, "version": record.tool.version},
        "command": record.command,
        "rule": {key: meta.get(key) for key in ("rule", "threshold", "top_k", "strength")},
        "profile_set": {
            "name": meta.get("profile_set"),
            "sha256": meta.get("profile_set_sha256"),
        },
        "layers": layer_dicts(layer_rows(record.expertise.modules)),
        "units": record.expertise.units,
        "suppressed": record.expertise.suppressed,
        "verification": None
        if verification is None
        else {
            "passed": verification.passed,
            "mode": verification.mode,
            "max_rel_diff": verification.max_rel_diff,
            "tolerance": verification.tolerance,
        },
        "evaluation": None
        if record.evaluation is None
        else [
            {"label": label, "metrics": metrics}
            for label, metrics in record.evaluation.ordered_dicts().items()
        ],
        "files": len(record.files),
    }


def rerender_folder(folder: Path, record: BakeRecord) -> list[str]:
    """Redraw the plots and the card from the record and record the files redrawn (the caller
    checked the folder with `require_intact` first)."""
    written = write_plots(folder, record, stored_expertise(folder))
    rewrite_card(folder, record, written)
    return written
