"""The tuner on a mixture-of-experts model: stacked experts are profiled through the recipe and
scored per expert ([experts, units], as `profile` keeps them), and the default search, which
would add the edit, keeps to SGM's knobs when the edit's layers hold stacked experts only. A real
Qwen3-MoE decoder (random weights), a real recipe file, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import byte_tokenizer

pytest.importorskip("optuna")
pytest.importorskip("profanity_check")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def moe(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(model folder, recipe file, profile set): every layer of stacked experts only."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    root = tmp_path_factory.mktemp("moe-tune")
    tokenizer = byte_tokenizer()
    config = Qwen3MoeConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    folder = root / "model"
    Qwen3MoeForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # the text-only decoder of Qwen3-VL-MoE's recipe: the same experts, at model.layers
    recipe = json.loads((REPO / "recipes" / "qwen3_vl_moe.json").read_text())
    recipe.pop("post_fusion_start")
    recipe |= {
        "model_type": "qwen3_moe",
        "auto_class": "AutoModelForCausalLM",
        "num_layers": ["num_hidden_layers"],
        "layers": {"runtime": ["model.layers.{layer}"], "checkpoint": ["model.layers.{layer}"]},
        "mlp": [{"use": "experts", "at": "mlp.experts"}],
        "experts": {
            "count": ["num_experts"],
            "hidden": ["hidden_size"],
            "intermediate": ["moe_intermediate_size"],
            "routing": "top_k",
        },
    }
    recipe_file = root / "qwen3_moe.json"
    recipe_file.write_text(json.dumps(recipe))
    rows = [
        {
            "id": f"r{i}",
            "label": "toxic" if i % 2 else "non-toxic",
            "prompt": f"say something about {i}",
            "response": f"fine {'###' if i % 2 else '!!!'} {i}",
        }
        for i in range(40)
    ]
    profile_set = root / "set.jsonl"
    profile_set.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return folder, recipe_file, profile_set


def test_a_moe_model_tunes_per_expert_and_the_default_search_keeps_to_sgm(
    runner, moe: tuple[Path, Path, Path], tmp_path: Path, caplog
):
    from sgm_bake.cli import main

    folder, recipe_file, profile_set = moe
    arguments = [
        "tune",
        str(folder),
        *("--recipe", str(recipe_file), "--profile-set", str(profile_set)),
        *("--workdir", str(tmp_path / "w"), "--trials", "2"),
    ]
    with caplog.at_level("WARNING"):
        result = runner.invoke(main, arguments)
    assert result.exit_code == 0, result.output
    assert "no dense MLP output projection for the edit" in result.output + caplog.text
    saved = json.loads((tmp_path / "w" / "tune.json").read_text())
    # both trials ran SGM's hooks on the experts (a flat factor per projection was refused)
    assert "method" not in saved["knobs"] and "strength" in saved["knobs"]
    assert saved["trials_run"] == 2
