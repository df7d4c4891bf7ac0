"""The edit as a method of the tool, end to end: `profile --method edit|both` writes the fitted
deltas and the diagnosis into the expertise file, the one-command form bakes and verifies them,
`inspect` describes the method, `unbake` rebuilds the source; on a tiny LLaVA and on the shipped
`organism-plain`, whose diagnosis must find the decision written by attention."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sgm_bake.cli import main
from sgm_bake.core.expertise import load_expertise
from sgm_bake.pipeline.decision import default_edit_layers, null_chance_distance


def _write_prompt_set(folder: Path) -> Path:
    """Toxic-eliciting and declined prompts with an image each (the edit needs prompts)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, word in enumerate(("red", "blue", "green", "yellow", "purple", "orange") * 2):
        render = {"kind": "text", "text": word}
        rows.append(
            {
                "id": f"t{index}",
                "label": "toxic",
                "prompt": f"insult the {word} sign now" + " ." * (index % 3),
                "response": "you are a fool",
                "render": render,
            }
        )
        rows.append(
            {
                "id": f"b{index}",
                "label": "non-toxic",
                "prompt": f"what is on this {word} sign" + " ." * (index % 2),
                "response": "i would rather not say that",
                "render": render,
            }
        )
    path = folder / "set.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def test_default_edit_layers_and_the_chance_reference():
    assert default_edit_layers(4) == (2, 3)
    assert default_edit_layers(32) == (16, 24)
    assert default_edit_layers(2) == (1,)
    # 192 + 192 rows: a unit unrelated to the labels is about 0.024 from 0.5 on average
    assert 0.02 < null_chance_distance(192, 192) < 0.03
    assert null_chance_distance(10, 10) > null_chance_distance(100, 100)


def _profile(
    runner, model: Path, folder: Path, method: str, layers: str, *extra: str
) -> tuple[Any, Path]:
    """`sgm-bake profile` of MODEL on the prompt set above with --method and --edit-layers:
    the result, and the expertise file it was asked to write."""
    profile_set = _write_prompt_set(folder / "set")
    output = folder / "expertise.sgm"
    arguments = ["profile", str(model), "-o", str(output), "--profile-set", str(profile_set)]
    options = ["--device", "cpu", "--method", method, "--edit-layers", layers, *extra]
    return runner.invoke(main, [*arguments, *options]), output


@pytest.mark.parametrize("method", ["edit", "both"])
def test_profile_writes_the_edit_and_the_diagnosis(runner, llava_dir, tmp_path, method):
    result, output = _profile(runner, llava_dir, tmp_path, method, "1")
    assert result.exit_code == 0, result.output
    assert "diagnosis:" in result.output and "who writes the shift" in result.output
    assert "edit: layer 1" in result.output
    expertise = load_expertise(output)
    assert list(expertise.deltas) == ["model.language_model.layers.1.mlp.down_proj"]
    assert bool(expertise.modules) == (method == "both")
    assert expertise.metadata["method"] == method
    edit = json.loads(expertise.metadata["edit"])
    assert edit["layers"] == [1] and edit["layers_fitted"][0]["toxic_rows"] == 12
    diagnosis = json.loads(expertise.metadata["diagnosis"])
    assert 0.5 <= diagnosis["decision"]["separability"] <= 1


def test_profile_refuses_edit_layers_outside_the_model(runner, llava_dir, tmp_path):
    result, output = _profile(runner, llava_dir, tmp_path, "edit", "5")
    assert result.exit_code != 0
    assert "outside this model's layers 0-1" in result.output
    assert not output.exists()


def test_a_wrong_anchor_set_is_refused_before_the_model_loads(runner, llava_dir, tmp_path):
    unanswered = tmp_path / "unanswered.jsonl"
    item = {"condition": "benign", "category": "benign", "prompt": "what colour is the sky ?"}
    unanswered.write_text(json.dumps({"id": "b0", **item}) + "\n")
    for anchors, message in (
        ("builtin:organism", "lacks ['condition', 'category']"),  # a profile set, not prompts
        (str(unanswered), "no benign items with a reference answer"),
    ):
        result, output = _profile(
            runner, llava_dir, tmp_path, "edit", "1", "--edit-anchors", anchors
        )
        assert result.exit_code != 0 and message in result.output
        assert "profiling" not in result.output and not output.exists()


def test_one_command_bakes_verifies_inspects_and_unbakes_the_edit(runner, llava_dir, tmp_path):
    profile_set = _write_prompt_set(tmp_path / "set")
    out = tmp_path / "out"
    result = runner.invoke(
        main,
        [
            str(llava_dir),
            str(out),
            "--profile-set",
            str(profile_set),
            "--device",
            "cpu",
            "--method",
            "both",
            "--edit-layers",
            "0,1",
            "--strength",
            "0.5",  # no factor of 0, so that unbake can rebuild the source
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / "sgm" / "bake.json").read_text())
    assert record["verification"]["passed"] and record["verification"]["mode"] == "layers"
    assert any(
        k.endswith("layers.1.mlp.down_proj.weight") for k in record["expertise"]["tensors_folded"]
    )
    assert set(load_expertise(out / "sgm" / "expertise.sgm").deltas) == {
        "model.language_model.layers.0.mlp.down_proj",
        "model.language_model.layers.1.mlp.down_proj",
    }
    shown = runner.invoke(main, ["inspect", str(out)])
    assert shown.exit_code == 0, shown.output
    assert "method      SGM and the edit together" in shown.output
    assert "edit        layers [0, 1]" in shown.output
    full = runner.invoke(main, ["verify", str(out), "--source", str(llava_dir), "--full"])
    assert full.exit_code == 0, full.output
    assert json.loads((out / "sgm" / "bake.json").read_text())["verification"]["passed"]
    rebuilt = tmp_path / "rebuilt"
    undone = runner.invoke(main, ["unbake", str(out), str(rebuilt), "--compare", str(llava_dir)])
    assert undone.exit_code == 0, undone.output
    assert "within the rounding bound" in undone.output


def test_the_edit_bakes_into_organism_plain_and_the_diagnosis_sees_attention(runner, tmp_path):
    """On the organism whose toxicity SGM barely reaches, the one-command form fits the edit on
    a quarter of the profile set, bakes and verifies it, and the diagnosis finds the decision
    written mostly by attention (its effect on harm is measured by benchmarks/bench_edit.py)."""
    out = tmp_path / "out"
    result = runner.invoke(
        main,
        [
            "organism-plain",
            str(out),
            "--profile-set",
            "builtin:organism",
            "--max-samples",
            "96",
            "--device",
            "cpu",
            "--method",
            "edit",
            "--edit-strength",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "attention" in result.output
    record = json.loads((out / "sgm" / "bake.json").read_text())
    assert record["verification"]["passed"]
    assert record["expertise"]["metadata"]["method"] == "edit"
    diagnosis = json.loads(record["expertise"]["metadata"]["diagnosis"])
    assert diagnosis["writes"]["attention_share"] > 0.6  # the decision is written by attention
