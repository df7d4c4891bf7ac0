"""The bake record cannot be re-blessed: every command that reads or adds to a baked folder checks
every file against the recorded sha256 first (exit 4, nothing written), and a command that adds
content records the files it wrote itself and no others."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sgm_bake.cli import main
from sgm_bake.record import read_record
from tests.helpers import snapshot


@pytest.fixture(scope="module")
def verified(tmp_path_factory, llava_dir, llava_expertise) -> Path:
    from click.testing import CliRunner

    out = tmp_path_factory.mktemp("verified") / "out"
    result = CliRunner().invoke(
        main, ["-q", "bake", str(llava_dir), str(out), "--expertise", str(llava_expertise)]
    )
    assert result.exit_code == 0, result.output
    return out


def tamper(out: Path, source: Path) -> None:
    """The attack of issue 17: an unbaked copy of the weights under another name, and an
    edited config."""
    shutil.copyfile(source / "model.safetensors", out / "model-unbaked.safetensors")
    config = json.loads((out / "config.json").read_text())
    config["note"] = "edited after baking"
    (out / "config.json").write_text(json.dumps(config))


COMMANDS = {
    "verify": ["verify", "{out}", "--device", "cpu"],
    "verify-full": ["verify", "{out}", "--full", "--device", "cpu"],
    "push-dry-run": ["push", "{out}", "me/model", "--dry-run"],
    "push": ["push", "{out}", "me/model"],
    "eval": ["eval", "{out}", "--device", "cpu", "--no-base"],
    "inspect-rerender": ["inspect", "{out}", "--rerender"],
    "unbake": ["unbake", "{out}", "{tmp}/dest"],
    "unbake-compare": ["unbake", "{out}", "{tmp}/dest", "--compare", "{source}"],
}


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_tampered_folder_is_refused_and_left_alone(
    command, runner, verified, llava_dir, tmp_path
):
    out = tmp_path / "out"
    shutil.copytree(verified, out)
    tamper(out, llava_dir)
    before = snapshot(tmp_path)
    values = {"out": out, "tmp": tmp_path, "source": llava_dir}
    args = [a.format(**values) for a in COMMANDS[command]]
    result = runner.invoke(main, ["-q", *args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 4, result.output
    assert "Traceback" not in result.output
    if command != "inspect-rerender":  # inspect prints its summary first
        assert len(lines) == 1, result.output
    assert "config.json" in lines[-1] and "model-unbaked.safetensors" in lines[-1]
    assert "model-unbaked" not in "".join(lines[:-1])  # never listed for upload
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_adding_content_records_only_the_files_written(runner, verified, llava_dir, tmp_path):
    """A file changed while verify runs (after its check) is not adopted by its record."""
    from sgm_bake.pipeline.verify_layers import verify_layers

    out = tmp_path / "out"
    shutil.copytree(verified, out)
    before = read_record(out).files
    (out / "config.json").write_text((out / "config.json").read_text() + " ")
    (out / "extra.txt").write_text("not baked")
    assert verify_layers(out, llava_dir).passed
    after = read_record(out).files
    assert set(after) == set(before)  # the added file is not adopted
    assert {name for name in after if after[name] != before[name]} <= {"README.md"}
    result = runner.invoke(main, ["inspect", str(out)])
    assert result.exit_code == 4, result.output
    assert "changed: config.json" in result.output
    assert "not in the record: extra.txt" in result.output
