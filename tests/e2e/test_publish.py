"""Model cards, provenance, inspect, unbake and push."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import HfApi, ModelCard

from sgm_bake.cli import main
from sgm_bake.core.expertise import Expertise, ModuleExpertise, load_expertise, save_expertise
from sgm_bake.record import read_record
from tests.helpers import bake_arguments, load_state, snapshot

REPO = Path(__file__).resolve().parents[2]

TOKEN = "hf_sgmTESTtoken0123456789secret"


@pytest.fixture(scope="module")
def baked(tmp_path_factory, llava_dir, llava_expertise) -> Path:
    """A verified bake of the tiny LLaVA (shared read-only; tests that change it copy it)."""
    from click.testing import CliRunner

    out = tmp_path_factory.mktemp("published") / "out"
    arguments = bake_arguments(llava_dir, out, llava_expertise)
    result = CliRunner().invoke(main, [*arguments, "--base-model", "llava-hf/llava-1.5-7b-hf"])
    assert result.exit_code == 0, result.output
    return out


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


@pytest.mark.slow
def test_card_parses_and_its_metadata_validates(baked):
    card = ModelCard.load(baked / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "llava-hf/llava-1.5-7b-hf"
    assert {"sgm", "detoxification"} <= set(data["tags"])
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "image-text-to-text"
    text = card.text
    for heading in (
        "## What was changed",
        "## Verification",
        "## How to use",
        "## Limitations",
        "## Citation",
    ):
        assert heading in text
    assert "passed" in text and "AutoModelForImageTextToText" in text
    assert "2512.15052" in text and "suau2024aura" in text
    assert "sgm/units_per_layer.png" in text and (baked / "sgm" / "units_per_layer.png").is_file()
    assert str(baked.parent) not in card.content  # cards name Hub ids, never local paths


@pytest.mark.slow
def test_card_inherits_license_tags_and_text_and_omits_local_base(
    runner, copy_model, llava_dir, llava_expertise, tmp_path
):
    source = copy_model(llava_dir)
    (source / "README.md").write_text(
        "---\nlicense: apache-2.0\npipeline_tag: image-text-to-text\ntags:\n- vision\n- sgm\n"
        "---\n# base\n\nThe base model's own words.\n"
    )
    out = tmp_path / "out"
    result = runner.invoke(
        main, ["-q", "bake", str(source), str(out), "--expertise", str(llava_expertise)]
    )
    assert result.exit_code == 0, result.output
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0"
    assert "base_model" not in data and "base_model_relation" not in data
    # the source's tags first, then ours, each once
    assert data["tags"] == ["vision", "sgm", "detoxification", "safety", "sgm-bake", "llava"]
    # its text is kept, below the card's own introduction and sections
    text = card.text
    assert text.index("## What was changed") < text.index("## The base model's card")
    assert text.index("## The base model's card") < text.index("The base model's own words.")
    assert source.name not in card.content and "a local llava checkpoint" in text


def test_record_holds_provenance(baked):
    record = json.loads((baked / "sgm" / "bake.json").read_text())
    assert record["command"].startswith("sgm-bake -q bake")
    assert record["tool"]["name"] == "sgm-bake" and record["tool"]["version"]
    for library in ("torch", "transformers", "safetensors", "huggingface-hub", "numpy"):
        assert record["versions"][library]
    assert record["verification"]["passed"]
    files = {p.relative_to(baked).as_posix() for p in baked.rglob("*") if p.is_file()}
    assert set(record["files"]) == files - {"sgm/bake.json"}


def test_inspect_passes_then_detects_a_modified_byte(runner, baked, tmp_path):
    out = _copy(baked, tmp_path)
    result = runner.invoke(main, ["inspect", str(out)])
    assert result.exit_code == 0, result.output
    assert "files match their recorded sha256" in result.output and "PASS" in result.output
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    record_before = (out / "sgm" / "bake.json").read_bytes()
    result = runner.invoke(main, ["inspect", str(out)])
    assert result.exit_code == 4
    assert "changed: model.safetensors" in result.output
    assert (out / "sgm" / "bake.json").read_bytes() == record_before


def test_unbake_restores_an_fp32_source_within_one_rounding(runner, baked, llava_dir, tmp_path):
    dest = tmp_path / "rebuilt"
    result = runner.invoke(
        main, ["-q", "unbake", str(baked), str(dest), "--compare", str(llava_dir)]
    )
    assert result.exit_code == 0, result.output
    assert "within the rounding bound" in result.output
    assert "every other tensor is identical" in result.output
    source, rebuilt = load_state(llava_dir), load_state(dest)
    assert source.keys() == rebuilt.keys()
    for key, tensor in source.items():
        ulp = torch.finfo(torch.float32).eps * tensor.abs()
        assert ((rebuilt[key] - tensor).abs() <= 2 * ulp + 1e-45).all(), key
    assert not (dest / "sgm").exists() and not (dest / "README.md").exists()


@pytest.mark.slow
def test_unbake_compare_holds_for_subnormal_half_precision_weights(runner, tmp_path):
    """An honest fp16 bake passes --compare even where the folded weights are subnormal (there
    the fold rounds to the subnormal spacing, not to a relative error)."""
    from safetensors.torch import save_file

    from tests.helpers import file_metadata, synthetic_expertise, tiny_llava

    source = tiny_llava(tmp_path / "fp16", dtype=torch.float16)
    weights = source / "model.safetensors"
    state = load_state(source)
    tiny = [key for key in state if key.endswith("mlp.up_proj.weight")]
    generator = torch.Generator().manual_seed(5)
    for key in tiny:  # a quarter of each row below fp16's smallest normal (6.1e-5)
        values = state[key].float()
        values[:, ::4] = torch.randn(values[:, ::4].shape, generator=generator) * 2e-5
        state[key] = values.to(torch.float16)
    save_file(state, str(weights), metadata=file_metadata(weights))
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(source)
    expertise = synthetic_expertise(model, seed=7, share=0.6)
    save_expertise(expertise, tmp_path / "expertise.safetensors")
    out = tmp_path / "out"
    bake = bake_arguments(source, out, tmp_path / "expertise.safetensors", "--no-verify")
    assert runner.invoke(main, bake).exit_code == 0
    dest = tmp_path / "rebuilt"
    result = runner.invoke(main, ["-q", "unbake", str(out), str(dest), "--compare", str(source)])
    assert result.exit_code == 0, result.output
    assert "within the rounding bound" in result.output


def test_a_failed_compare_writes_no_destination(runner, baked, tmp_path):
    """Compared with another model, unbake exits 4 and leaves DEST as it was (absent)."""
    from tests.helpers import tiny_llava

    other = tiny_llava(tmp_path / "other", seed=11)
    dest = tmp_path / "rebuilt"
    result = runner.invoke(main, ["-q", "unbake", str(baked), str(dest), "--compare", str(other)])
    assert result.exit_code == 4, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "differs from the base" in lines[0], result.output
    assert not dest.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rebuilt.")]


@pytest.mark.slow
def test_unbake_refuses_erased_units(runner, llava_dir, llava_expertise, tmp_path):
    expertise = load_expertise(llava_expertise)
    name = "model.language_model.layers.0.mlp.up_proj"
    alpha = expertise.modules[name].alpha.clone()
    alpha[[3, 9]] = 0.0
    expertise.modules[name] = ModuleExpertise(name, "output", alpha)
    path = tmp_path / "det0.safetensors"
    save_expertise(Expertise(expertise.modules), path)
    out = tmp_path / "out"
    assert (
        runner.invoke(
            main, ["-q", "bake", str(llava_dir), str(out), "--expertise", str(path)]
        ).exit_code
        == 0
    )
    result = runner.invoke(main, ["unbake", str(out), str(tmp_path / "dest")])
    assert result.exit_code == 2
    assert (
        "2 units have factor 0" in result.output
        and name in result.output
        and "[3, 9]" in result.output
    )
    assert not (tmp_path / "dest").exists()


class _Hub:
    """Records what the real huggingface_hub client would send (interception at its boundary)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def install(self, monkeypatch) -> None:
        def create_repo(api, repo_id, **kwargs):
            self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

        def create_branch(api, repo_id, **kwargs):
            self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

        def create_commit(api, repo_id, operations, commit_message, **kwargs):
            self.calls.append(
                (
                    "create_commit",
                    {
                        "repo_id": repo_id,
                        "files": sorted(op.path_in_repo for op in operations),
                        "commit_message": commit_message,
                        "token": api.token,
                        **kwargs,
                    },
                )
            )
            return type(
                "Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"}
            )()

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_branch", create_branch)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)


def test_push_sends_exactly_the_verified_files(runner, baked, tmp_path, monkeypatch, caplog):
    out = _copy(baked, tmp_path)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub = _Hub()
    hub.install(monkeypatch)
    result = runner.invoke(
        main,
        [
            "-v",
            "push",
            str(out),
            "my-org/llava-sgm",
            "--private",
            "--branch",
            "detox",
            "--commit-message",
            "detox v1",
        ],
    )
    assert result.exit_code == 0, result.output
    names = [name for name, _ in hub.calls]
    assert names == ["create_repo", "create_branch", "create_commit"]
    assert hub.calls[0][1]["repo_id"] == "my-org/llava-sgm" and hub.calls[0][1]["private"] is True
    commit = hub.calls[2][1]
    assert commit["commit_message"] == "detox v1" and commit["revision"] == "detox"
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert set(commit["files"]) == files
    assert "README.md" in files and "sgm/bake.json" in files
    assert 'from_pretrained("my-org/llava-sgm")' in (out / "README.md").read_text()
    # the token reaches the client, and nowhere else
    assert commit["token"] is None or commit["token"] == TOKEN
    assert TOKEN not in result.output and TOKEN not in caplog.text
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_push_dry_run_lists_and_sends_nothing(runner, baked, monkeypatch):
    hub = _Hub()
    hub.install(monkeypatch)
    result = runner.invoke(main, ["push", str(baked), "me/model", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert (
        "model.safetensors" in result.output
        and "sgm/bake.json" in result.output
        and "public" in result.output
    )
    assert hub.calls == []


@pytest.mark.slow
def test_push_refuses_tampered_and_unverified_outputs(
    runner, baked, llava_dir, llava_expertise, tmp_path, monkeypatch
):
    hub = _Hub()
    hub.install(monkeypatch)
    out = _copy(baked, tmp_path)
    (out / "config.json").write_text((out / "config.json").read_text() + " ")
    result = runner.invoke(main, ["push", str(out), "me/model"])
    assert result.exit_code == 4 and "changed: config.json" in result.output
    unverified = tmp_path / "unverified"
    bake = bake_arguments(llava_dir, unverified, llava_expertise, "--no-verify")
    assert runner.invoke(main, bake).exit_code == 0
    result = runner.invoke(main, ["push", str(unverified), "me/model"])
    assert result.exit_code == 2 and "not been verified" in result.output
    assert hub.calls == []


def test_baked_model_loads_with_the_auto_class(baked):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    _model, info = AutoModelForImageTextToText.from_pretrained(baked, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    processor = AutoProcessor.from_pretrained(baked)
    assert processor.chat_template


# --- push against a loopback Hub: nothing is written before the commit succeeds ---------------


class _LoopbackHub(BaseHTTPRequestHandler):
    """Just enough of the Hub's HTTP API for create_repo and create_commit: it records every
    committed file; with `stall` set it accepts the commit's body and never answers."""

    stall: ClassVar[threading.Event | None] = None
    committed: ClassVar[list[str]] = []

    def _reply(self, data: dict) -> None:
        raw = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        base = f"http://{self.headers['Host']}"
        if self.path == "/api/repos/create":
            return self._reply({"url": f"{base}/me/model", "name": "me/model"})
        if self.path == "/api/validate-yaml":
            return self._reply({})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            plain = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
            ]
            return self._reply({"files": plain})
        if "/commit/" in self.path:
            if _LoopbackHub.stall is not None:
                _LoopbackHub.stall.wait(120)
                return None
            for line in body.splitlines():
                entry = json.loads(line)
                if entry["key"] == "file":
                    _LoopbackHub.committed.append(entry["value"]["path"])
            return self._reply({"commitUrl": f"{base}/me/model/commit/1", "commitOid": "1" * 40})
        self.send_error(404)

    def do_GET(self):
        self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def loopback_hub():
    """(endpoint, handler class); `stall_hub` makes its commits hang."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LoopbackHub)
    _LoopbackHub.committed = []
    _LoopbackHub.stall = None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    if _LoopbackHub.stall is not None:
        _LoopbackHub.stall.set()
    server.shutdown()


def _push(out: Path, endpoint: str, *extra: str, repo: str = "me/model", quiet: bool = True):
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_TOKEN": TOKEN,
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    command = [sys.executable, "-m", "sgm_bake", *(["-q"] if quiet else []), "push", str(out)]
    command += [repo, *extra]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def _one_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.slow
def test_push_writes_the_card_only_after_the_commit(baked, loopback_hub, tmp_path):
    out = _copy(baked, tmp_path)
    result = _push(out, loopback_hub)
    assert result.returncode == 0, result.stderr
    assert sorted(_LoopbackHub.committed) == sorted([*read_record(out).files, "sgm/bake.json"])
    assert 'from_pretrained("me/model")' in (out / "README.md").read_text()
    inspected = CliRunner().invoke(main, ["inspect", str(out)])
    assert inspected.exit_code == 0, inspected.output  # the record holds the new card's sha256


@pytest.mark.slow
def test_a_failed_push_leaves_the_folder_as_it_was(baked, tmp_path):
    out = _copy(baked, tmp_path)
    before = snapshot(tmp_path)
    result = _push(out, "http://127.0.0.1:9")  # nothing listens there
    assert result.returncode == 2
    assert "could not push me/model" in _one_line(result)
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_a_stalling_hub_times_out(baked, loopback_hub, tmp_path):
    _LoopbackHub.stall = threading.Event()
    out = _copy(baked, tmp_path)
    before = snapshot(tmp_path)
    result = _push(out, loopback_hub, "--timeout", "1")
    assert result.returncode == 2
    assert "no answer within the timeout" in _one_line(result)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("repo", ["me/model\n<b>x</b>", "me/model\nlicense: mit", "../model"])
def test_a_bad_repo_id_is_refused_before_anything(runner, baked, tmp_path, repo):
    out = _copy(baked, tmp_path)
    before = snapshot(tmp_path)
    for extra in ([], ["--dry-run"]):
        result = runner.invoke(main, ["-q", "push", str(out), repo, *extra])
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and "is not a Hub repository id" in result.output
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_a_read_only_folder_can_be_pushed(baked, loopback_hub, tmp_path):
    out = _copy(baked, tmp_path)
    folders = [out, *(p for p in out.rglob("*") if p.is_dir())]
    files = [p for p in out.rglob("*") if p.is_file()]
    if subprocess.run(["chattr", "+i", *map(str, files + folders)], capture_output=True).returncode:
        pytest.skip("chattr +i (an immutable folder, read-only even for root) is not available")
    try:
        before = snapshot(tmp_path)
        result = _push(out, loopback_hub, quiet=False)
        assert result.returncode == 0, result.stderr
        assert snapshot(tmp_path) == before
        assert "could not be updated" in result.stderr
    finally:
        subprocess.run(["chattr", "-i", *map(str, files + folders)], check=True)
