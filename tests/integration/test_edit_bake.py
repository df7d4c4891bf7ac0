"""The edit's deltas through the whole bake: folded by the streaming writer (rounded once),
verified block by block and on the whole model against the hook reference that adds
`u (vᵀ k)`, and subtracted again by `unbake`. A bake that drops a delta must fail both
verifications."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sgm_bake.core.edit import LowRankDelta
from sgm_bake.core.expertise import Expertise, load_expertise
from sgm_bake.core.hooks import SGMHooks, model_recipe
from sgm_bake.errors import SGMError
from sgm_bake.io.source import resolve_source
from sgm_bake.pipeline.audit import unbake
from sgm_bake.pipeline.bake import BakeOptions, bake, expertise_path
from sgm_bake.pipeline.verify import verify
from sgm_bake.pipeline.verify_layers import verify_layers
from sgm_bake.runtime.loading import CPU
from tests.helpers import file_metadata, load_state, synthetic_deltas, synthetic_expertise
from tests.tiny_configs import build_tiny_model


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
@pytest.mark.parametrize("with_factors", [True, False])
def test_edit_bakes_verifies_and_unbakes(
    model_type: str, with_factors: bool, tmp_path: Path
) -> None:
    model = build_tiny_model(model_type, seed=3)
    source = tmp_path / "source"
    model.save_pretrained(source)
    factors = synthetic_expertise(model, seed=4, share=0.5)
    # rank 3 with factors, rank 1 without: both orders of the term and both file formats
    rank = 3 if with_factors else 1
    expertise = Expertise(
        factors.modules if with_factors else {},
        {"method": "edit"},
        synthetic_deltas(model, 5, rank, scale=0.2),
    )
    out = tmp_path / "out"
    record = bake(resolve_source(str(source)), out, expertise, BakeOptions(progress=False))
    stored = load_expertise(expertise_path(out))
    assert set(stored.deltas) == set(expertise.deltas)
    assert all(d.rank == rank for d in stored.deltas.values())
    down_keys = [
        k
        for k in record.expertise.tensors_folded
        if k.endswith(("mlp.down_proj.weight", "mlp.c_proj.weight"))
    ]
    assert down_keys

    # the baked weights equal the source with hooks (factors and deltas) on real inputs
    baked_model = type(model).from_pretrained(out).eval()
    ids = torch.randint(
        0, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad(), SGMHooks(model.eval(), expertise):
        hooked = model(input_ids=ids).logits
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        baked = baked_model(input_ids=ids).logits
    assert (hooked - plain).abs().max() > 1e-3  # the edit changes the model
    torch.testing.assert_close(baked, hooked, rtol=1e-4, atol=1e-4)

    assert verify_layers(out, source).passed
    assert verify(out, source, torch.float32, CPU).passed

    rebuilt = tmp_path / "rebuilt"
    result = unbake(out, rebuilt, progress=False, compare_with=source)
    assert result["compare"]["within_bound"] and result["compare"]["others_identical"]
    # within the rounding bound element by element (a factor near 0 magnifies the baked
    # term's rounding, which the bound accounts for); far from the baked weights
    original, baked_state = load_state(source), load_state(out)
    for key in down_keys:
        rebuilt_tensor = load_state(rebuilt)[key]
        assert (rebuilt_tensor - original[key]).abs().max() < 1e-3
        assert (baked_state[key] - original[key]).abs().max() > 1e-2


def test_a_bake_without_its_delta_fails_verification(tmp_path: Path) -> None:
    model = build_tiny_model("llama", seed=3)
    source = tmp_path / "source"
    model.save_pretrained(source)
    deltas = synthetic_deltas(model, 5, scale=0.2)
    out = tmp_path / "out"
    bake(resolve_source(str(source)), out, Expertise({}, {}, deltas), BakeOptions(progress=False))
    # put one layer's source weight back: the delta is missing from the baked file
    path = out / "model.safetensors"
    state = load_state(out)
    key = next(k for k in sorted(state) if k.endswith("layers.0.mlp.down_proj.weight"))
    state[key] = load_state(source)[key]
    save_file(state, str(path), metadata=file_metadata(path))
    assert not verify_layers(out, source, record=False).passed
    assert not verify(out, source, torch.float32, CPU, record=False).passed


def test_a_delta_on_stacked_experts_is_refused(tmp_path: Path) -> None:
    model = build_tiny_model("qwen3_vl_moe", seed=3)
    recipe = model_recipe(model)
    stacked = next(p for p in recipe.projections if p.stacked and p.kind == "down")
    name = recipe.runtime_name(recipe.layers(model.config.to_dict()).start, stacked)
    delta = LowRankDelta(name, torch.ones(4), torch.ones(4))
    source = tmp_path / "source"
    model.save_pretrained(source)
    with pytest.raises(SGMError, match="per-expert edits are not supported"):
        bake(
            resolve_source(str(source)),
            tmp_path / "out",
            Expertise({}, {}, {name: delta}),
            BakeOptions(progress=False),
        )
    assert not (tmp_path / "out").exists()
