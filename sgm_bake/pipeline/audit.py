"""Audit a baked folder: re-check its hashes, summarise it, and rebuild the base weights.

`unbake` divides the folded weights by the stored factors. For fp32 weights the result equals
the base up to one rounding of the division after the one of the fold (relative error at most
2 x 2^-24: the fold's rounding and the unfold's, computed in float64 and rounded once); for
fp16/bf16 likewise within a relative 2u of the base (u = 2^-11 for fp16, 2^-8 for bf16).
Units with factor 0 were erased by the bake and cannot be rebuilt; unbake refuses them and
names them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sgm_bake.core.expertise import Expertise, ModuleExpertise, load_expertise
from sgm_bake.errors import SGMError
from sgm_bake.io.safetensors import file_sha256
from sgm_bake.pipeline.bake import EXPERTISE_FILE, expertise_path
from sgm_bake.pipeline.record import RECORD_PATH, SGM_DIR, BakeRecord, read_record

RELATIVE_ERROR = {
    "F32": 2 * 2.0**-24,
    "F64": 2 * 2.0**-53,
    "F16": 2 * 2.0**-11,
    "BF16": 2 * 2.0**-8,
}


@dataclass(frozen=True)
class HashCheck:
    """Files whose bytes no longer match the record, and files the record does not know."""

    mismatched: list[str]
    missing: list[str]
    unexpected: list[str]

    @property
    def ok(self) -> bool:
        return not (self.mismatched or self.missing or self.unexpected)

    def describe(self) -> str:
        parts = []
        if self.mismatched:
            parts.append(f"changed: {', '.join(self.mismatched[:5])}")
        if self.missing:
            parts.append(f"missing: {', '.join(self.missing[:5])}")
        if self.unexpected:
            parts.append(f"not in the record: {', '.join(self.unexpected[:5])}")
        return "; ".join(parts)


def check_hashes(folder: Path, record: BakeRecord | None = None) -> HashCheck:
    """Compare every file with the sha256 in sgm/bake.json."""
    record = record or read_record(folder)
    recorded = record.files
    present = {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).as_posix() != RECORD_PATH
    }
    mismatched = sorted(
        name
        for name in recorded
        if name in present and file_sha256(folder / name) != recorded[name]
    )
    missing = sorted(set(recorded) - present)
    unexpected = sorted(present - set(recorded))
    return HashCheck(mismatched, missing, unexpected)


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


def compare_weights(rebuilt: Path, base: Path, keys: list[str]) -> dict[str, Any]:
    """Largest relative difference of the rebuilt tensors from the base, and whether every
    tensor is within its dtype's bound; every other tensor must be bit-identical."""
    from sgm_bake.io.checkpoint import open_checkpoint
    from sgm_bake.io.safetensors import read_tensor

    ours, theirs = open_checkpoint(rebuilt), open_checkpoint(base)
    our_keys, their_keys = ours.tensor_keys(), theirs.tensor_keys()
    if set(our_keys) != set(their_keys):
        raise SGMError("the rebuilt checkpoint and the base hold different tensor names")
    worst, within, identical = 0.0, True, True
    for key, name in their_keys.items():
        header = theirs.headers[name]
        base_tensor = read_tensor(header, key)
        rebuilt_tensor = read_tensor(ours.headers[our_keys[key]], key)
        if key not in keys:
            identical &= torch.equal(base_tensor, rebuilt_tensor)
            continue
        scale = base_tensor.float().abs().clamp_min(torch.finfo(torch.float32).tiny)
        relative = float(((rebuilt_tensor.float() - base_tensor.float()).abs() / scale).max())
        worst = max(worst, relative)
        within &= relative <= RELATIVE_ERROR.get(header.tensors[key].dtype, 1e-2) * 1.0001
    return {
        "max_relative_difference": worst,
        "within_one_rounding": within,
        "others_identical": identical,
    }


def unbake(out: Path, dest: Path, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Rebuild the base checkpoint from a baked folder into `dest` (atomically).

    Every file but the model card and `sgm/` is carried over; the folded tensors are divided by
    their factors in float64 and rounded once to their dtype.
    """
    from sgm_bake.io.atomic import atomic_folder, check_target
    from sgm_bake.io.checkpoint import open_checkpoint
    from sgm_bake.pipeline.bake import copy_other_files, plan_bake, write_weights
    from sgm_bake.pipeline.verify import recorded_recipe
    from sgm_bake.publish.card import CARD_FILE

    record = read_record(out)
    check = check_hashes(out, record)
    if not check.ok:
        raise SGMError(
            f"{out} does not match its record ({check.describe()}); it was changed after baking"
        )
    check_target(dest, out, overwrite)
    checkpoint = open_checkpoint(out)
    recipe = recorded_recipe(record, checkpoint.config)
    inverse = inverse_expertise(stored_expertise(out))
    plan = plan_bake(checkpoint, inverse, recipe=recipe, compute=torch.float64)
    with atomic_folder(dest, overwrite) as staging:
        copy_other_files(checkpoint, staging, frozenset({CARD_FILE}))
        write_weights(plan, staging, progress)
    return {"tensors_rebuilt": sorted(plan.edits), "source": record.source.id}


def describe_record(record: BakeRecord) -> list[str]:
    """A human summary of a bake record: source, recipe, rule, per-layer table, checks."""
    from sgm_bake.pipeline.summary import layer_rows, layer_table
    from sgm_bake.publish.plots import percent_text

    source = record.source
    meta = record.expertise.metadata
    lines = [
        f"source      {source.id} @ {source.revision or 'local'}",
        f"recipe      {record.recipe.model_type} ({record.recipe.checkpoint_layout})",
        f"tool        sgm-bake {record.tool.version}; command: {record.command}",
        f"rule        {meta.get('rule', '-')} (threshold {meta.get('threshold', '-')}, "
        f"top-k {meta.get('top_k') or '-'}, strength {meta.get('strength', '-')})",
        f"profile set {meta.get('profile_set', '-')} {meta.get('profile_set_sha256', '')[:12]}",
        *layer_table(layer_rows(record.expertise.modules)),
    ]
    verification = record.verification
    if verification is not None:
        verdict = "PASS" if verification.passed else "FAIL"
        lines.append(
            f"verify      {verdict} ({verification.mode}): relative logit difference "
            f"{verification.max_rel_diff:.3g} (tolerance {verification.tolerance:.3g})"
        )
    else:
        lines.append("verify      not run")
    if record.evaluation is not None:
        for label, metrics in record.evaluation.metrics.items():
            lines.append(
                f"eval        {label}: harmful {percent_text(metrics.get('harmful_rate'))}, "
                f"benign accuracy {percent_text(metrics.get('benign_accuracy'))}"
            )
    return lines


def rerender_folder(folder: Path, record: BakeRecord) -> list[str]:
    """Redraw the plots and the card from the record, and refresh its hashes."""
    from sgm_bake.pipeline.record import refresh
    from sgm_bake.publish.card import write_plots

    written = write_plots(folder, record, stored_expertise(folder))
    refresh(folder, record)
    return written
