"""Recipe files: every shipped recipe parses, and the layout map is derived, never guessed."""

from __future__ import annotations

import json

import pytest

from sgm_bake.cli import main
from sgm_bake.core.recipes import (
    available_recipes,
    load_recipe,
    recipe_for_config,
    resolve_checkpoint_layout,
)
from sgm_bake.errors import SGMError

LLAVA_CONFIG = {"model_type": "llava", "text_config": {"num_hidden_layers": 2}}


@pytest.mark.parametrize("model_type", sorted(available_recipes()))
def test_shipped_recipe_is_valid(model_type):
    recipe = load_recipe(available_recipes()[model_type])
    assert recipe.model_type == model_type
    assert recipe.default_hook_points, "a recipe must name default hook points"
    assert recipe.runtime_prefixes and recipe.checkpoint_prefixes
    for point in recipe.default_hook_points:
        recipe.projection(point.projection)


def test_layout_is_derived_from_the_keys():
    recipe = recipe_for_config(LLAVA_CONFIG)
    for prefix in ("language_model.model.layers", "model.language_model.layers"):
        keys = [
            f"{prefix}.{i}.mlp.{p}.weight"
            for i in range(2)
            for p in ("gate_proj", "up_proj", "down_proj")
        ]
        keys.append("vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight")
        layout = resolve_checkpoint_layout(recipe, LLAVA_CONFIG, keys)
        assert layout.prefix_template == prefix + ".{layer}"


def test_ambiguous_layout_is_refused():
    recipe = recipe_for_config(LLAVA_CONFIG)
    keys = [
        f"{prefix}.{i}.mlp.{p}.weight"
        for prefix in ("language_model.model.layers", "model.language_model.layers")
        for i in range(2)
        for p in ("gate_proj", "up_proj", "down_proj")
    ]
    with pytest.raises(SGMError, match="several layouts"):
        resolve_checkpoint_layout(recipe, LLAVA_CONFIG, keys)


def test_partial_layout_is_refused():
    recipe = recipe_for_config(LLAVA_CONFIG)
    keys = [
        f"language_model.model.layers.0.mlp.{p}.weight"
        for p in ("gate_proj", "up_proj", "down_proj")
    ]
    with pytest.raises(SGMError, match="only partly"):
        resolve_checkpoint_layout(recipe, LLAVA_CONFIG, keys)


def test_unknown_layout_is_refused():
    recipe = recipe_for_config(LLAVA_CONFIG)
    with pytest.raises(SGMError, match="no checkpoint key matches"):
        resolve_checkpoint_layout(recipe, LLAVA_CONFIG, ["transformer.blocks.0.ffn.w1.weight"])


def test_recipe_folder_from_environment(tmp_path, monkeypatch):
    data = json.loads(available_recipes()["llama"].read_text())
    data["model_type"] = "my_llama"
    (tmp_path / "my_llama.json").write_text(json.dumps(data))
    monkeypatch.setenv("SGM_BAKE_RECIPES", str(tmp_path))
    assert recipe_for_config({"model_type": "my_llama"}).model_type == "my_llama"


def test_broken_recipe_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{not json")
    with pytest.raises(SGMError, match="not readable JSON"):
        load_recipe(path)
    path.write_text(json.dumps({"model_type": "x"}))
    with pytest.raises(SGMError, match="lacks the required field 'num_layers'"):
        load_recipe(path)


def test_recipes_command_lists_supported(runner):
    result = runner.invoke(main, ["recipes"])
    assert result.exit_code == 0
    for model_type in available_recipes():
        assert model_type in result.output


def test_wrong_recipe_mapping_is_caught_by_verify(runner, llava_dir, llava_expertise, tmp_path):
    data = load_recipe(available_recipes()["llava"]).definition  # blocks expanded
    for entry in data["projections"]:
        if entry["name"] == "mlp.gate_proj":
            entry["checkpoint_name"] = "mlp.up_proj"
        elif entry["name"] == "mlp.up_proj":
            entry["checkpoint_name"] = "mlp.gate_proj"
    recipe = tmp_path / "swapped.json"
    recipe.write_text(json.dumps(data))
    out = tmp_path / "out"
    result = runner.invoke(
        main,
        [
            "-q",
            "bake",
            str(llava_dir),
            str(out),
            "--expertise",
            str(llava_expertise),
            "--recipe",
            str(recipe),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "maps them wrongly" in result.output
