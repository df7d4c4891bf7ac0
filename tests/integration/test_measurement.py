"""Measuring never stops a run: a torch.cuda whose memory statistics fail (as torch 2.11+cu130
raised "Invalid device argument" from `reset_peak_memory_stats` before CUDA was initialised)
costs the record its GPU figures, not the profile, the bake or the verification."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from sgm_bake.cli import main
from sgm_bake.runtime.memory import PeakMemory, measured
from tests.helpers import write_set


def _broken(*args: object, **kwargs: object) -> None:
    raise RuntimeError("Invalid device argument")


@pytest.fixture
def broken_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA that claims to be present and initialised, whose every statistic call fails."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name in (
        "reset_peak_memory_stats",
        "max_memory_allocated",
        "max_memory_reserved",
        "memory_allocated",
        "memory_reserved",
        "mem_get_info",
    ):
        monkeypatch.setattr(torch.cuda, name, _broken)


def test_peak_memory_survives_failing_gpu_statistics(broken_cuda, caplog):
    caplog.set_level(logging.WARNING, logger="sgm_bake.runtime.memory")
    with PeakMemory("stage") as memory:
        block = torch.ones(4 * 2**20)  # 16 MiB, so the host peak moves
    del block
    record = memory.record()
    assert record["gpu_peak_allocated_bytes"] == {}
    assert record["host_peak_rss_anon_bytes"] >= record["host_start_rss_anon_bytes"] > 0
    assert "Invalid device argument" in caplog.text


def test_peak_memory_survives_a_failing_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", _broken)
    with PeakMemory("stage") as memory:
        pass
    assert memory.record()["gpu_peak_allocated_bytes"] == {}


def test_measured_returns_the_default_and_logs(caplog):
    caplog.set_level(logging.WARNING, logger="sgm_bake.runtime.memory")
    assert measured("read a figure", lambda: 1 // 0, 7) == 7
    assert "could not read a figure" in caplog.text


@pytest.mark.slow
def test_profile_bake_and_verify_run_with_failing_gpu_statistics(
    broken_cuda, runner, llava_dir, tmp_path
):
    """The one-command form and `profile`, on the CPU, with every CUDA statistic failing."""
    profile_set = write_set(tmp_path / "set")
    expertise = tmp_path / "expertise.safetensors"
    common = ["--profile-set", str(profile_set), "--max-samples", "16", "--batch-size", "8"]
    result = runner.invoke(
        main, ["-q", "profile", str(llava_dir), "-o", str(expertise), "--device", "cpu", *common]
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    result = runner.invoke(main, ["-q", str(llava_dir), str(out), "--device", "cpu", *common])
    assert result.exit_code == 0, result.output
    record = json.loads((Path(out) / "sgm" / "bake.json").read_text())
    assert record["verification"]["passed"]
    for stage in ("profile", "bake", "verify"):
        assert record["stages"][stage]["gpu_peak_allocated_bytes"] == {}
        assert record["stages"][stage]["host_peak_rss_anon_bytes"] > 0
