"""Bad input through the CLI: one-line error, non-zero exit, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sgm_bake.cli import main
from sgm_bake.core.expertise import Expertise, ModuleExpertise, load_expertise, save_expertise
from tests.helpers import write_json


def _assert_clean_failure(result, out: Path, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    leftovers = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert not leftovers


def _bake(runner, source: Path, out: Path, expertise: Path, *extra: str):
    return runner.invoke(
        main, ["-q", "bake", str(source), str(out), "--expertise", str(expertise), *extra]
    )


def _edited_expertise(path: Path, source: Path, edit) -> Path:
    expertise = load_expertise(source)
    modules = dict(expertise.modules)
    edit(modules)
    target = path / "edited.safetensors"
    save_expertise(Expertise(modules, expertise.metadata), target)
    return target


@pytest.mark.slow
def test_missing_source(runner, tmp_path, llava_expertise):
    out = tmp_path / "out"
    result = _bake(runner, tmp_path / "nowhere", out, llava_expertise)
    _assert_clean_failure(result, out, "does not exist locally")
    assert not out.exists()


def test_folder_without_config(runner, tmp_path, llava_expertise):
    source = tmp_path / "empty"
    source.mkdir()
    out = tmp_path / "out"
    _assert_clean_failure(_bake(runner, source, out, llava_expertise), out, "no config.json")


def test_folder_without_weights(runner, copy_model, llava_dir, llava_expertise, tmp_path):
    source = copy_model(llava_dir)
    (source / "model.safetensors").unlink()
    out = tmp_path / "out"
    _assert_clean_failure(_bake(runner, source, out, llava_expertise), out, "no weights")


def test_unknown_model_type(runner, copy_model, llava_dir, llava_expertise, tmp_path):
    source = copy_model(llava_dir)
    config = json.loads((source / "config.json").read_text())
    config["model_type"] = "frobnicator"
    write_json(source / "config.json", config)
    out = tmp_path / "out"
    result = _bake(runner, source, out, llava_expertise)
    _assert_clean_failure(
        result, out, "no recipe for model_type 'frobnicator'", "sgm-bake recipes", "--recipe"
    )


@pytest.mark.parametrize("method", ["gptq", "awq", "bitsandbytes", "fp8"])
def test_quantized_checkpoint(runner, copy_model, llava_dir, llava_expertise, tmp_path, method):
    source = copy_model(llava_dir)
    config = json.loads((source / "config.json").read_text())
    config["quantization_config"] = {"quant_method": method, "bits": 4}
    write_json(source / "config.json", config)
    out = tmp_path / "out"
    result = _bake(runner, source, out, llava_expertise)
    _assert_clean_failure(result, out, "quantized", method)


@pytest.mark.parametrize("cut", ["header", "data"])
def test_truncated_safetensors(runner, copy_model, llava_dir, llava_expertise, tmp_path, cut):
    source = copy_model(llava_dir)
    weights = source / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:20] if cut == "header" else data[:-1000])
    out = tmp_path / "out"
    _assert_clean_failure(_bake(runner, source, out, llava_expertise), out, "truncated or corrupt")


def test_corrupt_header(runner, copy_model, llava_dir, llava_expertise, tmp_path):
    source = copy_model(llava_dir)
    weights = source / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:12] = b"@@@@"
    weights.write_bytes(bytes(data))
    out = tmp_path / "out"
    _assert_clean_failure(_bake(runner, source, out, llava_expertise), out, "not JSON")


VISION_MODULE = "model.vision_tower.vision_model.encoder.layers.0.mlp.fc1"


@pytest.mark.parametrize(
    ("name", "units", "fragments"),
    [
        # a language module with one unit too few
        ("model.language_model.layers.0.mlp.gate_proj", 63, ("63 output units", "another model")),
        # a module of the vision tower
        (VISION_MODULE, 64, (VISION_MODULE, "not a language-layer MLP projection")),
        # a layer the model does not have
        ("model.language_model.layers.7.mlp.gate_proj", 64, ("layer 7",)),
    ],
    ids=["unit-count", "vision-tower", "layer-out-of-range"],
)
def test_a_module_this_model_lacks_is_refused(
    runner, llava_dir, llava_expertise, tmp_path, name, units, fragments
):
    def put(modules):
        modules[name] = ModuleExpertise(name, "output", torch.full((units,), 0.5))

    expertise = _edited_expertise(tmp_path, llava_expertise, put)
    out = tmp_path / "out"
    _assert_clean_failure(_bake(runner, llava_dir, out, expertise), out, *fragments)


@pytest.mark.parametrize(("value", "fragment"), [(float("nan"), "non-finite"), (-0.5, "negative")])
def test_bad_alpha_values(runner, llava_dir, tmp_path, value, fragment):
    from safetensors.torch import save_file

    alpha = torch.ones(64)
    alpha[3] = value
    path = tmp_path / "bad.safetensors"
    save_file({"alpha/model.language_model.layers.0.mlp.up_proj": alpha}, str(path))
    out = tmp_path / "out"
    _assert_clean_failure(_bake(runner, llava_dir, out, path), out, fragment)


def test_not_an_expertise_file(runner, llava_dir, tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("hello")
    out = tmp_path / "out"
    _assert_clean_failure(_bake(runner, llava_dir, out, path), out, "not a readable expertise")


def test_missing_expertise(runner, llava_dir, tmp_path):
    out = tmp_path / "out"
    result = _bake(runner, llava_dir, out, tmp_path / "missing.safetensors")
    _assert_clean_failure(result, out, "does not exist")


def test_out_inside_source(runner, copy_model, llava_dir, llava_expertise):
    source = copy_model(llava_dir)
    for out in (source, source / "baked"):
        result = _bake(runner, source, out, llava_expertise)
        assert result.exit_code == 2 and "inside the source" in result.output
    assert not (source / "baked").exists()


@pytest.mark.slow
def test_existing_output_is_refused_then_replaced(runner, llava_dir, llava_expertise, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = _bake(runner, llava_dir, out, llava_expertise)
    _assert_clean_failure(result, out, "--overwrite")
    assert (out / "keep.txt").read_text() == "precious"
    result = _bake(runner, llava_dir, out, llava_expertise, "--overwrite", "--no-verify")
    assert result.exit_code == 0, result.output
    assert not (out / "keep.txt").exists() and (out / "sgm" / "bake.json").is_file()


@pytest.mark.slow
def test_failed_overwrite_keeps_previous_output(runner, llava_dir, llava_expertise, tmp_path):
    out = tmp_path / "out"
    assert _bake(runner, llava_dir, out, llava_expertise, "--no-verify").exit_code == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    name = "model.language_model.layers.0.mlp.gate_proj"

    def shrink(modules):
        modules[name] = ModuleExpertise(name, "output", torch.full((5,), 0.5))

    bad = _edited_expertise(tmp_path, llava_expertise, shrink)
    result = _bake(runner, llava_dir, out, bad, "--overwrite")
    _assert_clean_failure(result, out, "5 output units")
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_interrupted_bake_leaves_nothing(runner, llava_dir, llava_expertise, tmp_path, monkeypatch):
    import sgm_bake.io.safetensors as io

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "fold_range", interrupt)
    out = tmp_path / "out"
    result = _bake(runner, llava_dir, out, llava_expertise)
    assert result.exit_code == 130
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def _unbaked_weight(out: Path, source: Path) -> None:
    """Put the source's (unfolded) up_proj of layer 1 back into a baked folder."""
    from safetensors.torch import save_file

    from tests.helpers import file_metadata, load_state

    state = load_state(out)
    key = "language_model.model.layers.1.mlp.up_proj.weight"
    state[key] = load_state(source)[key]
    save_file(
        state, str(out / "model.safetensors"), metadata=file_metadata(out / "model.safetensors")
    )


@pytest.mark.slow
def test_verify_fails_on_a_wrong_fold(runner, llava_dir, llava_expertise, tmp_path):
    """A bake that wrote a wrong weight and recorded it (a bug, not tampering) fails verify."""
    from sgm_bake.record import read_record, record_files

    out = tmp_path / "out"
    assert _bake(runner, llava_dir, out, llava_expertise, "--no-verify").exit_code == 0
    _unbaked_weight(out, llava_dir)
    record_files(out, read_record(out), ["model.safetensors"])
    result = runner.invoke(main, ["verify", str(out), "--device", "cpu"])
    assert result.exit_code == 3, result.output
    assert "FAIL" in result.output


@pytest.mark.slow
def test_verify_refuses_a_tampered_weight_and_writes_nothing(
    runner, llava_dir, llava_expertise, tmp_path
):
    from tests.helpers import snapshot

    out = tmp_path / "out"
    assert _bake(runner, llava_dir, out, llava_expertise, "--no-verify").exit_code == 0
    _unbaked_weight(out, llava_dir)
    before = snapshot(out)
    result = runner.invoke(main, ["-q", "verify", str(out), "--device", "cpu"])
    assert result.exit_code == 4, result.output
    assert result.output.count("\n") == 1 and "changed: model.safetensors" in result.output
    assert snapshot(out) == before


# --- the built-in model names and an unreachable Hub ------------------------------------------


@pytest.mark.slow
def test_every_command_takes_the_organism_names(runner, tmp_path, monkeypatch):
    """`bake`, `verify --source`, `unbake --compare` and `plan` resolve `organism` as `eval`,
    `generate`, `profile` and `tune` do (offline: nothing is fetched)."""
    import huggingface_hub.constants
    from transformers import AutoModelForImageTextToText

    from sgm_bake.runtime.loading import resolve_model_source
    from tests.helpers import synthetic_expertise

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    folder = resolve_model_source("organism", progress=False).path
    model = AutoModelForImageTextToText.from_pretrained(folder)
    for entry in (expertise := synthetic_expertise(model, seed=4)).modules.values():
        entry.alpha.clamp_(min=0.1)  # unbake needs every unit rebuildable
    save_expertise(expertise, tmp_path / "expertise.safetensors")
    out = tmp_path / "out"
    commands = [
        ["bake", "organism", str(out), "--expertise", str(tmp_path / "expertise.safetensors")],
        ["verify", str(out), "--source", "organism-plain"],  # another model: verify fails, 3
        ["verify", str(out), "--source", "organism"],
        ["unbake", str(out), str(tmp_path / "dest"), "--compare", "organism"],
        ["plan", "organism"],
        ["plan", "organism-plain"],
    ]
    for command in commands:
        result = runner.invoke(main, ["-q", *command])
        expected = 3 if "organism-plain" in command and command[0] == "verify" else 0
        assert result.exit_code == expected, (command, result.output)


def _offline_run(*args: str, **env: str):
    import os
    import subprocess
    import sys

    from tests.helpers import REPO

    command = [sys.executable, "-m", "sgm_bake", "-q", *args]
    environment = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1"}
    environment.pop("HF_HUB_OFFLINE", None)
    environment.update(env)
    return subprocess.run(
        command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=120
    )


HUB_SET = "hf://datasets/some-org/sets/set.jsonl"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["plan", "some-org/some-model"], {"HF_ENDPOINT": "http://127.0.0.1:9"}, "refused"),
        (["plan", "some-org/some-model"], {"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
        (
            ["profile", "organism", "-o", "x.safetensors", "--profile-set", HUB_SET],
            {"HF_ENDPOINT": "http://127.0.0.1:9"},
            "refused",
        ),
        (
            ["bake", "some-org/some-model", "out", "--expertise", "{expertise}"],
            {"HF_ENDPOINT": "http://127.0.0.1:9"},
            "refused",
        ),
    ],
    ids=["plan-unreachable", "plan-offline", "hub-set-unreachable", "bake-unreachable"],
)
def test_an_unreachable_hub_is_one_line_naming_it(tmp_path, llava_expertise, args, env, fragment):
    """No retries (one line, not twenty), and the cause named: the Hub, not a missing file."""
    args = [arg.format(expertise=llava_expertise) for arg in args]
    result = _offline_run(*args, HF_HOME=str(tmp_path / "hf"), **env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert "cache" in lines[0] or "HF_HUB_OFFLINE" in lines[0] or "network" in lines[0]
