"""Layer-streamed verification: passes a correct bake and catches wrong folds in every family.

Each family's tiny model is saved, baked with random factors, and verified block by block. Two
deliberate mistakes are then written into the baked file: one folded row scaled by its factor a
second time, and the gate and up factors exchanged (the two halves of a fused gate_up projection,
or the separate gate and up projections). Both must fail; restoring the correct bake must pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from sgm_bake.core.expertise import load_expertise
from sgm_bake.core.fold import fold_weight
from sgm_bake.core.hooks import model_recipe
from sgm_bake.core.recipes import available_recipes
from sgm_bake.io.source import resolve_source
from sgm_bake.pipeline.bake import BakeOptions, bake, expertise_path
from sgm_bake.pipeline.run import verify_output
from sgm_bake.pipeline.verify_layers import block_path, streaming_unsupported, verify_layers
from sgm_bake.record import read_record
from sgm_bake.runtime.loading import CPU
from tests.helpers import file_metadata, load_state, synthetic_expertise
from tests.tiny_configs import TINY_FAMILIES


def _write(out: Path, state: dict[str, torch.Tensor]) -> None:
    path = out / "model.safetensors"
    save_file(state, str(path), metadata=file_metadata(path))


def _alpha_of(expertise, recipe, layer: int, kind: str) -> tuple[str, torch.Tensor] | None:
    for projection in recipe.projections:
        if projection.kind == kind:
            name = recipe.runtime_name(layer, projection)
            entry = expertise.modules.get(name)
            if entry is not None and entry.side == "output":
                return name, entry.alpha
    return None


def test_block_path():
    assert block_path(["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]) == "mlp"
    assert block_path(["feed_forward.w1", "feed_forward.w2"]) == "feed_forward"
    assert block_path(["a.b.c", "a.b.d", "a.e"]) == "a"


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(TINY_FAMILIES))
def test_streamed_verification_catches_wrong_folds(
    model_type: str, tiny_family: Any, tmp_path: Path
) -> None:
    assert model_type in available_recipes()
    model, source = tiny_family(model_type)
    expertise = synthetic_expertise(model, seed=8, share=0.6)
    out = tmp_path / "out"
    bake(resolve_source(str(source)), out, expertise, BakeOptions(progress=False))
    recipe = model_recipe(model)
    if streaming_unsupported(recipe) is not None:
        # Mixture-of-experts and layer-level projections: the default verification falls back
        # to the whole model (their wrong folds are caught there, see test_moe and test_families).
        report = verify_output(out, source, "float32", CPU)
        assert report.passed and read_record(out).verification.mode == "full", report.summary()
        return

    report = verify_layers(out, source)
    assert report.passed, report.summary()
    assert report.max_rel_diff <= 1e-5
    assert report.intervention_rel_effect > 0.1
    assert report.mapping_check.startswith("exactly against transformers"), report.mapping_check
    record = read_record(out)
    assert record.verification.mode == "layers"
    # Each stage's measured peak host memory is recorded beside its figures.
    for stage in ("bake", "verify"):
        assert record.stages[stage]["host_peak_rss_anon_bytes"] > 0
        assert record.stages[stage]["seconds"] > 0

    template = read_record(out).recipe.checkpoint_layout
    layers = recipe.layers(model.config.to_dict())
    # The two mistakes go into different layers when there are two, so one run checks both.
    row_layer, swap_layer = layers[-1], layers[0]
    baked_state = load_state(out)
    source_state = load_state(source)
    canonical = load_expertise(expertise_path(out))
    wrong = dict(baked_state)

    def key_of(layer: int, projection) -> str:
        return f"{template.format(layer=layer)}.{projection.checkpoint_name}.weight"

    # 1. One row of a folded weight scaled by its factor twice.
    first = recipe.projections[0]
    alpha = canonical.modules[recipe.runtime_name(row_layer, first)].alpha
    row = int(torch.nonzero((alpha > 0.2) & (alpha < 0.8))[0])
    weight = wrong[key_of(row_layer, first)].clone()
    if first.layout == "out_in":
        weight[row] = (weight[row].float() * alpha[row]).to(weight.dtype)
    else:
        weight[:, row] = (weight[:, row].float() * alpha[row]).to(weight.dtype)
    wrong[key_of(row_layer, first)] = weight

    # 2. Gate and up factors exchanged.
    if swap_layer == row_layer:
        _write(out, wrong)
        report = verify_layers(out, source, record=False)
        assert not report.passed and report.worst_layer == row_layer, report.summary()
        wrong = dict(baked_state)
    fused = _alpha_of(canonical, recipe, swap_layer, "gate_up")
    gate = _alpha_of(canonical, recipe, swap_layer, "gate")
    up = _alpha_of(canonical, recipe, swap_layer, "up")
    if fused is not None:
        name, alpha = fused
        projection = recipe.parse_module(name)[1]
        half = alpha.numel() // 2
        exchanged = torch.cat([alpha[half:], alpha[:half]])
        wrong[key_of(swap_layer, projection)] = fold_weight(
            source_state[key_of(swap_layer, projection)], exchanged
        )
    elif gate is not None and up is not None:
        for (name, _), (_, other_alpha) in ((gate, up), (up, gate)):
            projection = recipe.parse_module(name)[1]
            wrong[key_of(swap_layer, projection)] = fold_weight(
                source_state[key_of(swap_layer, projection)], other_alpha
            )
    else:  # GPT-2 and Phi: fc_in/fc_out, no gate/up pair; the row check covers them
        assert {p.kind for p in recipe.projections} == {"fc_in", "fc_out"}
    _write(out, wrong)
    report = verify_layers(out, source, record=False)
    assert not report.passed, report.summary()
    failed = {check.layer for check in report.layers if not check.passed}
    expected = {row_layer} if swap_layer == row_layer else {row_layer, swap_layer}
    if fused is None and (gate is None or up is None):
        expected = {row_layer}
    assert failed == expected, report.summary()
