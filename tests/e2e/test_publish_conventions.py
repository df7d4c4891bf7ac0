"""What users see of a baked folder: the card in the Hub's conventions (checked offline with
huggingface_hub's own parsers), `--json` output, and the push options `hf upload` users expect."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.repocard import metadata_load

from sgm_bake.cli import main
from sgm_bake.publish.card import card_metadata, render_card, validate_metadata
from sgm_bake.publish.refresh import record_evaluation
from sgm_bake.record import read_record
from tests.e2e.test_hardening import snapshot

REPO = Path(__file__).resolve().parents[2]
TOKEN = "hf_sgmTESTtoken0123456789secret"
METRICS = {
    "harmful_rate": 0.475,
    "harmful_rate_by_condition": {"standard": 0.28125, "adversarial": 0.5416, "both": 0.6},
    "benign_accuracy": 0.75,
    "degenerate_share": 0.0,
    "reference_perplexity": 1.31,
    "items": {"eliciting": 80, "benign": 40},
    "items_by_condition": {"standard": 32, "adversarial": 24, "both": 24},
}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, llava_dir, llava_expertise) -> Path:
    """A verified bake named after a Hub base, with an evaluation of three variants recorded in
    run order: base, baked, ecso (not alphabetical)."""
    from click.testing import CliRunner

    out = tmp_path_factory.mktemp("conventions") / "out"
    args = ["-q", "bake", str(llava_dir), str(out), "--expertise", str(llava_expertise)]
    result = CliRunner().invoke(main, [*args, "--base-model", "llava-hf/llava-1.5-7b-hf"])
    assert result.exit_code == 0, result.output
    data = {
        "judge": "keyword",
        "prompt_set": {"name": "builtin:x", "sha256": "0" * 64, "items": 120},
        "variants": {
            "base": {"metrics": METRICS},
            "baked": {"metrics": {**METRICS, "harmful_rate": 0.0, "benign_accuracy": 0.7}},
            "ecso": {"metrics": {**METRICS, "harmful_rate": 0.2}},
        },
    }
    record_evaluation(out, "sgm/eval.json", data)
    return out


def _evaluation(labels: tuple[str, ...]) -> dict:
    """An evaluation report of base and of the rows LABELS (the baked model first)."""
    return {
        "judge": "keyword",
        "prompt_set": {"name": "builtin:x", "sha256": "0" * 64, "items": 120},
        "variants": {
            "base": {"metrics": METRICS},
            labels[0]: {"metrics": {**METRICS, "harmful_rate": 0.0, "benign_accuracy": 0.7}},
            **{label: {"metrics": {**METRICS, "harmful_rate": 0.1}} for label in labels[1:]},
        },
    }


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


# --- the card -----------------------------------------------------------------------------


def test_card_metadata_follows_the_hub_conventions(evaluated):
    path = evaluated / "README.md"
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["base_model"] == "llava-hf/llava-1.5-7b-hf"
    assert data["base_model_relation"] == "finetune"
    assert data["license"] == "unknown"  # the tiny source states none
    # model-index: the baked model's figures, as huggingface_hub parses them back
    results = card.data.eval_results
    assert card.data.model_name == "llava-1.5-7b-hf"
    figures = {r.metric_type: r.metric_value for r in results}
    assert figures == {
        "harmful_rate": 0.0,
        "harmful_rate_standard": 28.12,
        "harmful_rate_adversarial": 54.16,
        "harmful_rate_both": 60.0,
        "benign_accuracy": 70.0,
    }
    assert all(isinstance(r, EvalResult) and r.task_type == "image-text-to-text" for r in results)
    assert metadata_load(path)["model-index"][0]["name"] == "llava-1.5-7b-hf"
    # the parsed metadata builds the same card data again (the round trip the Hub relies on)
    again = ModelCardData(**{k: v for k, v in data.items() if k != "model-index"})
    assert again.to_dict()["base_model_relation"] == "finetune"
    validate_metadata(card_metadata(read_record(evaluated), "llava-1.5-7b-hf"))


def test_card_text_has_no_blank_runs_and_no_pypi_link(evaluated):
    text = (evaluated / "README.md").read_text()
    assert "\n\n\n" not in text
    assert "pypi.org" not in text
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_rerender_keeps_the_run_order_of_variants(runner, evaluated, tmp_path):
    out = _copy(evaluated, tmp_path)
    order = ["base", "baked", "ecso"]

    def card_order() -> list[str]:
        text = (out / "README.md").read_text()
        return re.findall(r"^\| (base|baked|ecso)(?: \(sgm\))? \|", text, re.M)

    assert card_order() == order
    result = runner.invoke(main, ["-q", "inspect", str(out), "--rerender"])
    assert result.exit_code == 0, result.output
    assert card_order() == order
    summary = json.loads(runner.invoke(main, ["inspect", str(out), "--json"]).output)
    assert [v["label"] for v in summary["evaluation"]] == order


@pytest.mark.parametrize("labels", [("sgm-baked", "sgm*-baked"), ("sgm-baked", "sgm*")])
def test_a_record_with_the_old_baked_labels_still_renders_its_rows(evaluated, tmp_path, labels):
    """Records of sgm-bake before the method-neutral names (eval's sgm-baked and sgm*-baked,
    the demo's sgm*): the card shows their rows under the current names, and the model-index
    still holds the baked model's figures."""
    out = _copy(evaluated, tmp_path)
    record_evaluation(out, "sgm/eval.json", _evaluation(labels))
    text = (out / "README.md").read_text().split("## Evaluation")[1].split("\n## ")[0]
    rows = re.findall(r"^\| ([^|]+?) \| \d", text, re.M)
    assert rows == ["base", "baked (sgm)", "baked+ecso (sgm)"]
    figures = {
        r.metric_type: r.metric_value for r in ModelCard.load(out / "README.md").data.eval_results
    }
    assert figures["harmful_rate"] == 0.0 and figures["benign_accuracy"] == 70.0
    assert list(read_record(out).evaluation.ordered()) == ["base", *labels]  # as recorded


def test_the_card_names_the_method_baked(evaluated, tmp_path):
    """A bake of the edit is `baked (edit)` in the card, not an SGM row."""
    out = _copy(evaluated, tmp_path)
    record_path = out / "sgm" / "bake.json"
    data = json.loads(record_path.read_text())
    data["expertise"]["metadata"]["method"] = "edit"
    record_path.write_text(json.dumps(data))
    record = read_record(out)
    assert card_metadata(record)["eval_results"]  # the edit's baked row is the model's own
    text = render_card(out, record)
    assert "| baked (edit) |" in text and "sgm-baked" not in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("      Apache License\n Version 2.0", {"license": "apache-2.0"}),
        ("Permission is hereby granted, free of charge, to any person", {"license": "mit"}),
        (
            "Our own research-only terms.",
            {
                "license": "other",
                "license_name": "base-model-license",
                "license_link": "LICENSE",
            },
        ),
    ],
)
def test_license_comes_from_a_license_file_without_a_card(
    runner, copy_model, llava_dir, llava_expertise, tmp_path, text, expected
):
    source = copy_model(llava_dir)
    (source / "LICENSE").write_text(text)
    out = tmp_path / "out"
    args = ["-q", "bake", str(source), str(out), "--expertise", str(llava_expertise)]
    assert runner.invoke(main, [*args, "--no-verify"]).exit_code == 0
    data = ModelCard.load(out / "README.md").data.to_dict()
    assert {key: data.get(key) for key in expected} == expected
    assert (out / "LICENSE").is_file()  # carried, so license_link resolves on the Hub


# --- --json -------------------------------------------------------------------------------


def test_inspect_json_is_the_only_stdout(runner, evaluated):
    result = runner.invoke(main, ["inspect", str(evaluated), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["intact"] is True and summary["rerendered"] is None
    assert summary["base_model"] == "llava-hf/llava-1.5-7b-hf"
    assert summary["verification"]["passed"] is True
    assert sum(layer["units"] for layer in summary["layers"]) == summary["units"]


def test_inspect_json_reports_a_tampered_folder(runner, evaluated, tmp_path):
    out = _copy(evaluated, tmp_path)
    (out / "config.json").write_text((out / "config.json").read_text() + " ")
    result = runner.invoke(main, ["inspect", str(out), "--json"])
    assert result.exit_code == 4
    summary = json.loads(result.stdout)
    assert summary["intact"] is False and "config.json" in summary["problems"]


def test_plan_json_and_adaptive_units(runner):
    result = runner.invoke(main, ["plan", "organism-plain", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "1.24M parameters" in result.output and "0.00B" not in result.output
    assert "(0M parameters)" not in result.output
    result = runner.invoke(main, ["plan", "organism-plain", "--device", "cpu", "--json"])
    plan = json.loads(result.stdout)
    assert plan["parameters"] == 1235040 and plan["fits"] is True
    assert [s["stage"] for s in plan["stages"]][:2] == ["bake", "verify"]
    assert all(isinstance(s["host_bytes"], int) for s in plan["stages"])


def test_profile_json(runner, llava_dir, tmp_path):
    from tests.helpers import write_set

    profile_set = write_set(tmp_path / "set")
    output = tmp_path / "expertise.safetensors"
    args = ["profile", str(llava_dir), "-o", str(output), "--device", "cpu", "--json"]
    args += ["--profile-set", str(profile_set), "--max-samples", "16", "--top-k", "5"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["output"] == str(output) and output.is_file()
    assert summary["suppressed"] == 5 and summary["rule"] == "aura"
    assert summary["units"] == sum(layer["units"] for layer in summary["layers"])


def test_eval_json(runner, llava_dir, tmp_path):
    rows = [{"condition": "standard", "category": "insult", "prompt": f"say {i}"} for i in range(4)]
    rows += [
        {"condition": "benign", "category": "benign", "prompt": "colour?", "expected": "red"},
    ]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = ["eval", str(llava_dir), "--prompt-set", str(prompts), "--device", "cpu"]
    result = runner.invoke(main, [*args, "-o", str(tmp_path / "r.json"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["report"] == str(tmp_path / "r.json")
    assert [v["label"] for v in report["variants"]] == ["model"]
    assert report["variants"][0]["metrics"]["items_by_condition"] == {"standard": 4}


# --- push ---------------------------------------------------------------------------------


def test_dry_run_shows_the_new_options_and_never_the_token(runner, evaluated, monkeypatch):
    monkeypatch.setattr(HfApi, "create_commit", lambda *a, **k: pytest.fail("uploaded"))
    args = ["push", str(evaluated), "me/model", "--dry-run", "--token", TOKEN]
    result = runner.invoke(main, [*args, "--revision", "detox", "--create-pr", "--private"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "a pull request against detox of me/model" in out
    assert "created private if missing" in out and "upload: one commit" in out
    assert "token: --token" in out and TOKEN not in out
    assert re.search(r"model\.safetensors\s+\d+(\.\d+)? (B|KiB|MiB)", out)
    result = runner.invoke(main, ["push", str(evaluated), "me/model", "--dry-run", "--resumable"])
    assert "resumable: upload_folder" in result.output and "public" in result.output


def test_create_pr_refuses_a_resumable_upload(runner, evaluated):
    args = ["push", str(evaluated), "me/model", "--create-pr", "--resumable", "--dry-run"]
    result = runner.invoke(main, args)
    assert result.exit_code == 2 and "--single-commit" in result.output


def test_resumable_push_uploads_the_folder_then_the_card_and_record(
    runner, evaluated, tmp_path, monkeypatch
):
    out = _copy(evaluated, tmp_path)
    calls: list[tuple[str, dict]] = []
    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **k: calls.append(("repo", k)))
    monkeypatch.setattr(
        HfApi, "create_branch", lambda api, repo_id, **k: calls.append(("branch", k))
    )

    def upload_folder(api, **kwargs):
        calls.append(("folder", {**kwargs, "token": api.token}))

    def create_commit(api, repo_id, operations, commit_message, **kwargs):
        files = sorted(op.path_in_repo for op in operations)
        calls.append(("commit", {"files": files, "token": api.token, **kwargs}))
        return type("Info", (), {"commit_url": "https://huggingface.co/me/model/commit/1"})()

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    args = ["-q", "push", str(out), "me/model", "--resumable", "--revision", "v1"]
    result = runner.invoke(main, [*args, "--token", TOKEN, "--no-private"])
    assert result.exit_code == 0, result.output
    assert [name for name, _ in calls] == ["repo", "branch", "folder", "commit"]
    assert calls[0][1]["private"] is False and calls[1][1]["branch"] == "v1"
    folder = calls[2][1]
    recorded = set(read_record(out).files)
    assert set(folder["allow_patterns"]) == recorded - {"README.md"}
    assert folder["revision"] == "v1" and folder["token"] == TOKEN
    assert calls[3][1]["files"] == ["README.md", "sgm/bake.json"]
    assert TOKEN not in result.output
    assert all(TOKEN.encode() not in p.read_bytes() for p in out.rglob("*") if p.is_file())


def test_an_unreachable_hub_ends_a_push_with_one_line(evaluated, tmp_path):
    out = _copy(evaluated, tmp_path)
    before = snapshot(tmp_path)
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_DISABLE_TELEMETRY": "1"}
    command = [sys.executable, "-m", "sgm_bake", "-q", "push", str(out), "me/model"]
    command += ["--token", TOKEN, "--revision", "v1", "--create-pr", "--private"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "could not push me/model" in lines[0] and TOKEN not in result.stderr + result.stdout
    assert snapshot(tmp_path) == before
