"""The expertise file format and the research-code import."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from sgm_bake.cli import main
from sgm_bake.core.expertise import Expertise, ModuleExpertise, load_expertise, save_expertise
from sgm_bake.core.recipes import load_recipe
from sgm_bake.errors import SGMError
from sgm_bake.resources import data_dir
from tests.helpers import load_state


def test_round_trip_with_auroc_and_sides(tmp_path):
    modules = {
        "model.language_model.layers.0.mlp.up_proj": ModuleExpertise(
            "model.language_model.layers.0.mlp.up_proj", "output", torch.rand(8), torch.rand(8)
        ),
        "model.language_model.layers.0.mlp.down_proj": ModuleExpertise(
            "model.language_model.layers.0.mlp.down_proj", "input", torch.rand(8)
        ),
    }
    path = tmp_path / "e.safetensors"
    save_expertise(Expertise(modules, {"rule": "aura"}), path)
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
        assert metadata["side/model.language_model.layers.0.mlp.down_proj"] == "input"
        assert metadata["format"] == "pt" and metadata["rule"] == "aura"
        assert (
            handle.get_tensor("alpha/model.language_model.layers.0.mlp.up_proj").dtype
            == torch.float32
        )
    loaded = load_expertise(path)
    for name, entry in modules.items():
        assert loaded.modules[name].side == entry.side
        assert torch.equal(loaded.modules[name].alpha, entry.alpha)
    assert torch.equal(
        loaded.modules["model.language_model.layers.0.mlp.up_proj"].auroc,
        modules["model.language_model.layers.0.mlp.up_proj"].auroc,
    )


def test_old_and_new_module_names_resolve_to_the_same_units():
    recipe = load_recipe(data_dir("recipes") / "llava.json")
    for name in (
        "model.language_model.layers.3.mlp.down_proj",
        "language_model.model.layers.3.mlp.down_proj",
    ):
        layer, projection = recipe.parse_module(name)
        assert (layer, projection.name) == (3, "mlp.down_proj")
    assert recipe.parse_module("model.vision_tower.vision_model.encoder.layers.3.mlp.fc1") is None
    assert recipe.parse_module("model.language_model.layers.3.self_attn.o_proj") is None


def test_two_namings_of_one_module_are_refused():
    recipe = load_recipe(data_dir("recipes") / "llava.json")
    modules = {
        name: ModuleExpertise(name, "output", torch.ones(4))
        for name in (
            "model.language_model.layers.0.mlp.up_proj",
            "language_model.model.layers.0.mlp.up_proj",
        )
    }
    with pytest.raises(SGMError, match="two namings"):
        Expertise(modules).resolve(recipe, range(2))


def _research_folder(folder, model, shape_3d: bool):
    """Write interventions the way the AurA/SGM research code saves them."""
    folder.mkdir()
    alphas = {}
    for layer in range(2):
        for projection, size in (("gate_proj", 64), ("up_proj", 64), ("down_proj", 32)):
            name = (
                f"language_model.model.layers.{layer}.mlp.{projection}"  # older transformers naming
            )
            alpha = 0.2 + 0.8 * torch.rand(size)
            alphas[name] = alpha
            stored = alpha.unsqueeze(0).unsqueeze(0) if shape_3d else alpha
            torch.save({"alpha": stored}, folder / f"{name}.statedict")
    return alphas


@pytest.mark.slow
@pytest.mark.parametrize("shape_3d", [True, False])
def test_research_code_folder_bakes(runner, llava_dir, tmp_path, shape_3d):
    folder = tmp_path / "interventions"
    alphas = _research_folder(folder, None, shape_3d)
    out = tmp_path / "out"
    result = runner.invoke(
        main, ["-q", "bake", str(llava_dir), str(out), "--expertise", str(folder)]
    )
    assert result.exit_code == 0, result.output
    assert "verify: PASS" in result.output
    source, baked = load_state(llava_dir), load_state(out)
    key = "language_model.model.layers.1.mlp.gate_proj.weight"
    alpha = alphas["language_model.model.layers.1.mlp.gate_proj"]
    assert torch.equal(baked[key], (source[key] * alpha[:, None]))
    stored = load_expertise(out / "sgm" / "expertise.sgm")
    assert "model.language_model.layers.1.mlp.gate_proj" in stored.modules


def test_folder_without_statedicts(tmp_path):
    with pytest.raises(SGMError, match="without"):
        load_expertise(tmp_path)


def test_statedict_without_alpha(tmp_path):
    torch.save({"beta": torch.ones(3)}, tmp_path / "x.statedict")
    with pytest.raises(SGMError, match="no 'alpha'"):
        load_expertise(tmp_path)


def test_pickled_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    (tmp_path / "m.statedict").write_bytes(pickle.dumps({"alpha": Evil()}))
    with pytest.raises(SGMError, match="weights_only"):
        load_expertise(tmp_path)
