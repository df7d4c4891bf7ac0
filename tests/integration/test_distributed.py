"""Data-parallel profiling under torchrun (gloo on the CPU): the expertise file is byte-identical
to a single-process run, with an odd number of samples and after an interrupted rank resumes."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sgm_bake.cli import main
from sgm_bake.errors import SGMError
from sgm_bake.io.response_store import ResponseStore
from sgm_bake.runtime.distributed import rank_gpu, rank_share
from tests.helpers import profile_arguments

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = "11"  # odd: with batches of 4, rank 0 profiles 4 samples and rank 1 profiles 7
BATCH = "4"


def _arguments(model: Path, output: Path, profile_set: Path, *extra: str) -> list[str]:
    sizes = ("--max-samples", SAMPLES, "--batch-size", BATCH, "--device", "cpu")
    return profile_arguments(model, output, profile_set, *sizes, *extra)


def _torchrun(arguments: list[str]) -> subprocess.CompletedProcess[str]:
    torchrun = shutil.which("torchrun") or ""
    command = [sys.executable, "-m", "torch.distributed.run"] if not torchrun else [torchrun]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [*command, "--standalone", "--nproc-per-node", "2", "-m", "sgm_bake", *arguments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_rank_shares_are_whole_batches():
    assert rank_share(11, 4, 2, 0) == (0, 4)
    assert rank_share(11, 4, 2, 1) == (4, 11)
    assert rank_share(3, 4, 2, 0) == (0, 0)  # fewer batches than ranks: rank 0 idles
    assert rank_share(3, 4, 2, 1) == (0, 3)
    shares = [rank_share(101, 8, 3, rank) for rank in range(3)]
    assert shares[0][0] == 0 and shares[-1][1] == 101
    assert all(a[1] == b[0] for a, b in itertools.pairwise(shares))


@pytest.mark.slow
def test_torchrun_profile_is_byte_identical_and_resumes(runner, planted, tmp_path):
    model, profile_set = planted
    single = tmp_path / "single.safetensors"
    result = runner.invoke(main, _arguments(model, single, profile_set))
    assert result.exit_code == 0, result.output

    store = tmp_path / "store"
    distributed = tmp_path / "distributed.safetensors"
    extra = ("--responses-dir", str(store), "--keep-responses")
    run = _torchrun(_arguments(model, distributed, profile_set, *extra))
    assert run.returncode == 0, run.stderr[-6000:]
    assert distributed.read_bytes() == single.read_bytes()

    # Rank 1 interrupted after its first batch: its progress says 4 of its 7 samples, the rows
    # after them never made it to disk (NaN here, so a run that skipped them would fail), and
    # rank 0 never merged.
    part = tmp_path / "store.rank1-of-2"
    meta = json.loads((part / "meta.json").read_text())
    assert json.loads((part / "progress.json").read_text())["completed"] == 7
    targets = _targets(model)
    interrupted = ResponseStore.open(part, meta["fingerprint"], targets, meta["samples"])
    assert interrupted.completed == 7  # the same store, resumed rather than started anew
    for name, units in targets.items():
        interrupted.write_rows(name, 4, np.full((3, units), np.nan, dtype=np.float32))
    interrupted.mark_completed(4)
    interrupted.close()
    shutil.rmtree(store)
    resumed = tmp_path / "resumed.safetensors"
    run = _torchrun(_arguments(model, resumed, profile_set, "--responses-dir", str(store)))
    assert run.returncode == 0, run.stderr[-6000:]
    assert resumed.read_bytes() == single.read_bytes()
    assert not part.exists() and not store.exists()  # removed after success


def _targets(model: Path) -> dict[str, int]:
    """The profiled modules and their unit counts, in the order the store lays them out."""
    from sgm_bake.pipeline.profile import ProfileOptions, profile_targets
    from sgm_bake.runtime.loading import Placement, load_model

    recipe = model_recipe_for(model)
    loaded = load_model(model, recipe, torch.float32, Placement("cpu"))
    return {t.name: t.units for t in profile_targets(loaded, recipe, ProfileOptions())}


def model_recipe_for(folder: Path):
    from sgm_bake.core.recipes import recipe_for_config
    from sgm_bake.io.checkpoint import open_checkpoint

    return recipe_for_config(open_checkpoint(folder).config)


def test_a_rank_without_a_gpu_is_one_clear_error():
    assert rank_gpu(0, 2, 2) == 0 and rank_gpu(1, 2, 2) == 1
    assert rank_gpu(1, 2, 4) == 2  # two GPUs per rank
    with pytest.raises(SGMError, match=r"LOCAL_RANK 1 of 2.*has no GPU.*--nproc-per-node 1"):
        rank_gpu(1, 2, 1)
    with pytest.raises(SGMError, match="LOCAL_RANK 3"):
        rank_gpu(3, 4, 2)


def test_joining_as_a_rank_without_a_gpu_stops_before_any_cuda_call(monkeypatch):
    """torchrun with two ranks on a one-GPU machine: rank 1 is refused by name (exit 2 in the
    CLI) before it touches CUDA or the rendezvous."""
    import torch.distributed as dist

    from sgm_bake.runtime.distributed import from_env

    def no_call(*args, **kwargs):
        raise AssertionError("called past the check")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", no_call)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    monkeypatch.setattr(dist, "init_process_group", no_call)
    environ = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    with pytest.raises(SGMError, match=r"LOCAL_RANK 1 of 2 on this machine\) has no GPU"):
        from_env(environ)
