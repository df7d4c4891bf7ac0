"""Recipe files: every shipped recipe parses, and the layout map is derived, never guessed."""

from __future__ import annotations

import json
import re

import pytest

from sgm_bake.cli import main
from sgm_bake.core.recipes import (
    available_recipes,
    load_recipe,
    parse_recipe,
    recipe_for_config,
    resolve_checkpoint_layout,
)
from sgm_bake.errors import SGMError
from tests.helpers import bake_arguments

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


@pytest.mark.slow
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
    arguments = bake_arguments(llava_dir, out, llava_expertise, "--recipe", str(recipe))
    result = runner.invoke(main, arguments)
    assert result.exit_code == 2, result.output
    assert "maps them wrongly" in result.output


def _write_recipe(tmp_path, **changes):
    data = json.loads(available_recipes()["llava"].read_text())
    data.update(changes)
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"mlpp": "gated"}, "unknown field 'mlpp'"),
        ({"mlp": "gatd"}, "field 'mlp[0].use' names block 'gatd'"),
        ({"mlp": [{"use": "gated", "layers": "most"}]}, "field 'mlp[0].layers'"),
        ({"mlp": [{"use": "gated", "where": "mlp"}]}, "unknown field 'mlp[0].where'"),
        ({"num_layers": 3}, "field 'num_layers' must be a string or a list"),
        ({"layers": {"runtime": ["model.layers"], "checkpoint": ["x.{layer}"]}}, "'layers'"),
        ({"default_hook_points": ["mlp.nope:output"]}, "field 'default_hook_points'"),
        ({"experts": {"count": ["n"]}}, "lacks the required field 'experts.hidden'"),
    ],
)
def test_schema_errors_name_the_file_and_field(tmp_path, changes, fragment):
    path = _write_recipe(tmp_path, **changes)
    with pytest.raises(SGMError, match=re.escape(fragment)) as info:
        load_recipe(path)
    assert str(path) in str(info.value)


def test_stacked_projection_without_expert_sizes_is_refused(tmp_path):
    path = _write_recipe(tmp_path, mlp=[{"use": "experts", "at": "mlp.experts"}])
    with pytest.raises(SGMError, match="no 'experts' field"):
        load_recipe(path)


def test_blocks_expand_to_explicit_projections():
    recipe = load_recipe(available_recipes()["llama4"])
    names = [p.name for p in recipe.projections]
    assert "feed_forward.shared_expert.down_proj" in names
    stacked = recipe.projection("feed_forward.experts.gate_up_proj")
    assert stacked.stacked and stacked.layout == "in_out" and not stacked.required
    assert stacked.per_expert == (
        "feed_forward.experts.{expert}.gate_proj",
        "feed_forward.experts.{expert}.up_proj",
    )
    # The expanded definition is self-contained: bake.json stores it and verify re-parses it.
    assert "mlp" not in recipe.definition
    again = parse_recipe(recipe.definition, recipe.path)
    assert again.projections == recipe.projections


def test_no_shipped_recipe_repeats_a_shared_block():
    for path in available_recipes().values():
        assert "projections" not in json.loads(path.read_text()), path.name


def test_recipes_command_marks_moe_families(runner):
    result = runner.invoke(main, ["recipes"])
    assert result.exit_code == 0
    lines = {line.split()[0]: line for line in result.output.splitlines()}
    for model_type in ("qwen3_vl_moe", "qwen3_5_moe", "glm4v_moe", "llama4"):
        assert " MoE " in lines[model_type], lines[model_type]
    assert " dense " in lines["llava"]


def test_moe_layers_are_read_from_the_checkpoint():
    recipe = load_recipe(available_recipes()["qwen3_vl_moe"])
    config = {
        "model_type": "qwen3_vl_moe",
        "text_config": {
            "num_hidden_layers": 2,
            "num_experts": 4,
            "hidden_size": 32,
            "moe_intermediate_size": 24,
        },
    }
    prefix = "model.language_model.layers"
    shapes = {
        f"{prefix}.0.mlp.gate_proj.weight": (64, 32),
        f"{prefix}.0.mlp.up_proj.weight": (64, 32),
        f"{prefix}.0.mlp.down_proj.weight": (32, 64),
        f"{prefix}.1.mlp.experts.gate_up_proj": (4, 32, 48),  # [E, H, 2I] as on the Hub
        f"{prefix}.1.mlp.experts.down_proj": (4, 24, 32),
    }
    layout = resolve_checkpoint_layout(recipe, config, shapes, shapes)
    dense, stacked = recipe.projection("mlp.gate_proj"), recipe.projection("mlp.experts.down_proj")
    assert layout.has(0, dense) and not layout.has(1, dense)
    assert layout.has(1, stacked) and not layout.has(0, stacked)
    (tensor,) = layout.tensors(1, stacked)
    assert tensor.stacked and tensor.layout == "in_out"
    del shapes[f"{prefix}.1.mlp.experts.down_proj"]
    with pytest.raises(SGMError, match="only partly"):
        resolve_checkpoint_layout(recipe, config, shapes, shapes)
