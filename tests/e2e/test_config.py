"""Options from a config file (`--config FILE`, TOML) and from `SGM_BAKE_<OPTION>` environment
variables: the command line wins over the environment, the environment over the file, and the
effective settings, with where each came from, are recorded in the bake record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sgm_bake.cli import main
from sgm_bake.core.expertise import save_expertise
from sgm_bake.runtime.loading import resolve_model_source
from tests.helpers import synthetic_expertise


@pytest.fixture(scope="module")
def organism_expertise(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(resolve_model_source("organism").path)
    path = tmp_path_factory.mktemp("config") / "expertise.sgm"
    save_expertise(synthetic_expertise(model, seed=3), path)
    return path


def _bake(config: Path, out: Path, expertise: Path, *extra: str, env=None):
    arguments = ["-q", "--config", str(config), "bake", "organism", str(out)]
    arguments += ["--expertise", str(expertise), "--no-verify", *extra]
    return CliRunner().invoke(main, arguments, env=env)


@pytest.mark.slow
def test_command_line_beats_environment_beats_config_file(tmp_path, organism_expertise):
    config = tmp_path / "sgm.toml"
    config.write_text('verify-dtype = "bfloat16"\nbase_model = "org/from-config"\n')
    environment = {"SGM_BAKE_VERIFY_DTYPE": "float16"}

    result = _bake(config, tmp_path / "a", organism_expertise, env=environment)
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "a" / "sgm" / "bake.json").read_text())["settings"]
    assert settings["values"]["verify_dtype"] == "float16"
    assert settings["sources"]["verify_dtype"] == "environment"
    assert settings["values"]["base_model"] == "org/from-config"
    assert settings["sources"]["base_model"] == f"config {config}"
    assert settings["values"]["device"] == "auto" and "device" not in settings["sources"]

    result = _bake(
        config, tmp_path / "b", organism_expertise, "--verify-dtype", "float32", env=environment
    )
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "b" / "sgm" / "bake.json").read_text())["settings"]
    assert settings["values"]["verify_dtype"] == "float32"
    assert "verify_dtype" not in settings["sources"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("top-kk = 5\n", "'top-kk' is not an option of any command"),
        ("top-kk = 5\n", "did you mean top-k"),
        ("[bake]\ndevice = 'cpu'\n", "'bake' is not an option of any command"),
        ("top-k = \n", "is not valid TOML"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_key(tmp_path, text, fragment):
    config = tmp_path / "sgm.toml"
    config.write_text(text)
    result = CliRunner().invoke(main, ["--config", str(config), "recipes"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: config file"), result.output
    assert fragment in lines[0]


def test_a_config_value_of_the_wrong_type_is_refused_by_its_option(tmp_path):
    config = tmp_path / "sgm.toml"
    config.write_text('top-k = "many"\n')
    result = CliRunner().invoke(main, ["--config", str(config), "profile", "m", "-o", "x"])
    assert result.exit_code == 2 and "top-k" in result.output
