"""The one-command form hands over between stages: the profiling model is released before the
bake (its hidden states kept for the layer check), or kept when `--verify full` reuses it; every
stage's record says what it started with and what it added, and the profile its throughput."""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path

import pytest

from sgm_bake.cli import main
from sgm_bake.core.expertise import load_expertise
from sgm_bake.core.recipes import recipe_for_config
from sgm_bake.io.checkpoint import open_checkpoint
from sgm_bake.io.source import resolve_source
from sgm_bake.pipeline.run import hand_over
from sgm_bake.runtime.loading import CPU, load
from tests.helpers import write_set


def _run(runner, model: Path, out: Path, profile_set: Path, *extra: str):
    return runner.invoke(
        main,
        [
            str(model),
            str(out),
            "--profile-set",
            str(profile_set),
            "--max-samples",
            "16",
            "--device",
            "cpu",
            *extra,
        ],
    )


@pytest.mark.slow
def test_the_profiling_model_is_released_before_the_bake(runner, llava_dir, tmp_path):
    profile_set = write_set(tmp_path / "set")
    out = tmp_path / "out"
    result = _run(runner, llava_dir, out, profile_set)
    assert result.exit_code == 0, result.output
    assert "the profiling model is released before the bake" in result.output
    assert f"profile set: {profile_set}" in result.output
    assert "profiled 16 samples" in result.output and "tokens/s (batch 8" in result.output
    record = json.loads((out / "sgm" / "bake.json").read_text())
    verification = record["verification"]
    assert verification["passed"] and verification["mode"] == "layers"
    # The layer check still ran on the profiling model's hidden states and checked the recipe
    # map against it, although the model was gone by then.
    assert verification["inputs"].startswith("captured")
    assert verification["mapping_check"] == "exactly against the loaded model"
    for stage in ("profile", "bake", "verify"):
        figures = record["stages"][stage]
        assert figures["host_peak_above_start_bytes"] == max(
            0, figures["host_peak_rss_anon_bytes"] - figures["host_start_rss_anon_bytes"]
        )
    throughput = record["stages"]["profile"]["throughput"]
    assert throughput["samples"] == 16 and throughput["batch_size"] == 8
    assert throughput["tokens_per_second"] > 0 and 0 <= throughput["padding_share"] < 1
    assert "matrix_rate_share" not in throughput  # a CPU: tokens/s only


@pytest.mark.slow
def test_verify_full_reuses_the_profiling_model(runner, llava_dir, tmp_path):
    profile_set = write_set(tmp_path / "set")
    out = tmp_path / "out"
    result = _run(runner, llava_dir, out, profile_set, "--verify", "full")
    assert result.exit_code == 0, result.output
    assert "the profiling model stays loaded" in result.output
    record = json.loads((out / "sgm" / "bake.json").read_text())
    assert record["verification"]["passed"] and record["verification"]["mode"] == "full"


@pytest.mark.slow
def test_hand_over_frees_the_model(llava_dir, llava_expertise):
    source = resolve_source(str(llava_dir))
    loaded = load(source, CPU, "float32")
    recipe = recipe_for_config(open_checkpoint(llava_dir).config)
    model = weakref.ref(loaded.model)
    handoff = hand_over(
        loaded, llava_dir, recipe, load_expertise(llava_expertise), "layers", "float32", CPU
    )
    gc.collect()
    assert model() is None and handoff.loaded is None
    assert handoff.evidence is not None and handoff.evidence.exact_map
    assert sorted(handoff.evidence.hidden) == [0, 1]  # the layers the expertise folds
