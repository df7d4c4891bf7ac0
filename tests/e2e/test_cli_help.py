"""What users meet first: help on every option, command summaries that are whole sentences, the
one-command form's options in sections, -q/-v after the command, a mistyped command named at
once (without trying the Hub)."""

from __future__ import annotations

import click
from click.testing import CliRunner

from sgm_bake.cli import main
from sgm_bake.options import GROUPS


def test_every_option_of_every_command_has_help():
    missing = [
        f"{name} {param.opts}"
        for name, command in main.commands.items()
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden and not param.help
    ]
    assert missing == []


def test_command_summaries_are_not_cut():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    commands = result.output.split("Commands:")[1]
    assert "..." not in commands
    assert "write the\n            checkpoint to OUT." in commands


def test_run_help_is_in_sections():
    result = CliRunner().invoke(main, ["run", "--help"])
    assert result.exit_code == 0
    headers = [line[:-1] for line in result.output.splitlines() if line.endswith(" options:")]
    wanted = ["input", "profiling", "rule", "bake", "verification", "placement", "publishing"]
    assert [h.split()[0].lower() for h in headers][: len(wanted)] == wanted
    assert all(h.split()[0].lower() in (*GROUPS, "other") for h in headers)
    rule = result.output.split("Rule options:")[1].split("options:")[0]
    assert "--top-k" in rule and "--strength" in rule and "--device" not in rule


def test_quiet_and_verbose_work_after_the_command(tmp_path):
    runner = CliRunner()
    before = runner.invoke(main, ["-q", "recipes"])
    after = runner.invoke(main, ["recipes", "-q"])
    assert before.exit_code == after.exit_code == 0
    assert after.output == before.output
    assert runner.invoke(main, ["recipes", "-vv"]).exit_code == 0


def test_a_mistyped_command_is_named_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["inspec", "out"])
    assert result.exit_code == 2
    assert "'inspec' is not a command; did you mean 'inspect'?" in result.output
    # A folder of that name is a model, never a typo.
    (tmp_path / "inspec").mkdir()
    result = CliRunner().invoke(main, ["inspec", "out"])
    assert "did you mean" not in result.output
