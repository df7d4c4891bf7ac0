"""Low-rank deltas in the expertise file (format expertise/2 for rank 1, expertise/3 for higher
ranks); old files read unchanged."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sgm_bake.core.edit import LowRankDelta
from sgm_bake.core.expertise import (
    FORMAT_KEY,
    Expertise,
    ModuleExpertise,
    load_expertise,
    save_expertise,
)
from sgm_bake.core.recipes import load_recipe
from sgm_bake.errors import SGMError
from sgm_bake.resources import data_dir

DOWN = "model.language_model.layers.{}.mlp.down_proj"
UP = "model.language_model.layers.{}.mlp.up_proj"


def _delta(name: str, out_features: int = 6, in_features: int = 10) -> LowRankDelta:
    generator = torch.Generator().manual_seed(len(name))
    u = torch.randn(out_features, generator=generator)
    return LowRankDelta(name, u, torch.randn(in_features, generator=generator))


def _recipe(model_type: str = "llava"):
    return load_recipe(data_dir("recipes") / f"{model_type}.json")


def test_deltas_round_trip_as_format_2(tmp_path):
    up = ModuleExpertise(UP.format(0), "output", torch.rand(10), torch.rand(10))
    deltas = {DOWN.format(2): _delta(DOWN.format(2)), DOWN.format(3): _delta(DOWN.format(3))}
    path = tmp_path / "e.safetensors"
    save_expertise(Expertise({UP.format(0): up}, {"method": "both"}, deltas), path)
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata()[FORMAT_KEY] == "expertise/2"
        assert handle.get_tensor(f"delta_u/{DOWN.format(2)}").shape == (6,)
        assert handle.get_tensor(f"delta_v/{DOWN.format(2)}").dtype == torch.float32
    loaded = load_expertise(path)
    assert set(loaded.deltas) == set(deltas) and set(loaded.modules) == {UP.format(0)}
    for name, delta in deltas.items():
        assert torch.equal(loaded.deltas[name].u, delta.u)
        assert torch.equal(loaded.deltas[name].v, delta.v)
    assert loaded.metadata["method"] == "both"


def test_higher_ranks_round_trip_as_format_3_and_rank_1_stays_format_2(tmp_path):
    generator = torch.Generator().manual_seed(0)
    ranked = LowRankDelta(
        DOWN.format(2),
        torch.randn(6, 3, generator=generator),
        torch.randn(10, 3, generator=generator),
    )
    deltas = {DOWN.format(2): ranked, DOWN.format(3): _delta(DOWN.format(3))}
    path = tmp_path / "e.safetensors"
    save_expertise(Expertise({}, {"method": "edit"}, deltas), path)
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata()[FORMAT_KEY] == "expertise/3"
        assert handle.get_tensor(f"delta_u/{DOWN.format(2)}").shape == (6, 3)
        assert handle.get_tensor(f"delta_v/{DOWN.format(2)}").shape == (10, 3)
        assert handle.get_tensor(f"delta_u/{DOWN.format(3)}").shape == (6,)  # rank 1: a vector
    loaded = load_expertise(path)
    assert loaded.deltas[DOWN.format(2)].rank == 3 and loaded.deltas[DOWN.format(3)].rank == 1
    for name, delta in deltas.items():
        assert torch.equal(loaded.deltas[name].matrix("out_in"), delta.matrix("out_in"))
    rank_one = tmp_path / "rank1.safetensors"
    save_expertise(Expertise({}, {}, {DOWN.format(3): deltas[DOWN.format(3)]}), rank_one)
    with safe_open(str(rank_one), "pt") as handle:
        assert handle.metadata()[FORMAT_KEY] == "expertise/2"


def test_a_delta_whose_halves_differ_in_rank_is_refused(tmp_path):
    path = tmp_path / "e.safetensors"
    save_file(
        {
            f"delta_u/{DOWN.format(2)}": torch.ones(6, 2),
            f"delta_v/{DOWN.format(2)}": torch.ones(10, 3),
        },
        str(path),
        metadata={FORMAT_KEY: "expertise/3"},
    )
    with pytest.raises(SGMError, match="same number of columns"):
        load_expertise(path)


def test_files_without_deltas_stay_format_1_and_old_files_read(tmp_path):
    path = tmp_path / "e.safetensors"
    save_expertise(
        Expertise({UP.format(0): ModuleExpertise(UP.format(0), "output", torch.ones(4))}), path
    )
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata()[FORMAT_KEY] == "expertise/1"
    old = tmp_path / "old.safetensors"  # as an earlier sgm-bake (or another tool) wrote it
    save_file({f"alpha/{UP.format(1)}": torch.full((4,), 0.5)}, str(old), {"format": "pt"})
    loaded = load_expertise(old)
    assert loaded.deltas == {} and torch.equal(
        loaded.modules[UP.format(1)].alpha, torch.full((4,), 0.5)
    )


def test_a_file_of_deltas_only_loads_and_resolves(tmp_path):
    path = tmp_path / "edit.safetensors"
    save_expertise(Expertise({}, {}, {DOWN.format(1): _delta(DOWN.format(1))}), path)
    loaded = load_expertise(path)
    assert loaded.modules == {}
    (entry,) = loaded.resolve_deltas(_recipe(), range(4))
    assert (entry.layer, entry.projection.name, entry.projection.layout) == (
        1,
        "mlp.down_proj",
        "out_in",
    )


def test_factors_are_not_applied_while_deltas_would_be_dropped():
    expertise = Expertise(
        {UP.format(0): ModuleExpertise(UP.format(0), "output", torch.ones(4))},
        {},
        {DOWN.format(1): _delta(DOWN.format(1))},
    )
    with pytest.raises(SGMError, match="low-rank edits"):
        expertise.resolve(_recipe(), range(4))
    (units,) = expertise.scaling_only().resolve(_recipe(), range(4))
    assert units.layer == 0


def test_delta_halves_and_versions_are_checked(tmp_path):
    half = tmp_path / "half.safetensors"
    save_file({f"delta_u/{DOWN.format(0)}": torch.ones(3)}, str(half), {"format": "pt"})
    with pytest.raises(SGMError, match="without its other half"):
        load_expertise(half)
    bad = tmp_path / "bad.safetensors"
    save_file(
        {
            f"delta_u/{DOWN.format(0)}": torch.ones(3),
            f"delta_v/{DOWN.format(0)}": torch.ones(2, 2, 2),
        },
        str(bad),
        {"format": "pt"},
    )
    with pytest.raises(SGMError, match=r"float vector \[units\] or matrix"):
        load_expertise(bad)
    future = tmp_path / "future.safetensors"
    save_file({f"alpha/{UP.format(0)}": torch.ones(3)}, str(future), {FORMAT_KEY: "expertise/9"})
    with pytest.raises(SGMError, match="upgrade sgm-bake"):
        load_expertise(future)


def test_deltas_outside_the_language_mlp_or_on_stacked_experts_are_refused():
    vision = "model.vision_tower.vision_model.encoder.layers.0.mlp.fc2"
    with pytest.raises(SGMError, match="not a language-layer MLP projection"):
        Expertise({}, {}, {vision: _delta(vision)}).resolve_deltas(_recipe(), range(4))
    with pytest.raises(SGMError, match="outside the language layers"):
        Expertise({}, {}, {DOWN.format(7): _delta(DOWN.format(7))}).resolve_deltas(
            _recipe(), range(4)
        )
    experts = "model.language_model.layers.1.mlp.experts.down_proj"
    with pytest.raises(SGMError, match="stacked experts parameter; per-expert edits"):
        Expertise({}, {}, {experts: _delta(experts)}).resolve_deltas(
            _recipe("qwen3_vl_moe"), range(4)
        )
    dense = DOWN.format(0)  # a dense layer beside MoE layers is an ordinary projection
    (entry,) = Expertise({}, {}, {dense: _delta(dense)}).resolve_deltas(
        _recipe("qwen3_vl_moe"), range(4)
    )
    assert not entry.projection.stacked
    legacy = "language_model.model.layers.0.mlp.down_proj"
    with pytest.raises(SGMError, match="same module under two namings"):
        Expertise({}, {}, {dense: _delta(dense), legacy: _delta(legacy)}).resolve_deltas(
            _recipe(), range(4)
        )
