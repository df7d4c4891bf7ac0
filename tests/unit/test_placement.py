"""Where a model runs: the device comparison that decides whether `--verify full` reuses the
profiling model, and the placement a reuse is checked against."""

from __future__ import annotations

from pathlib import Path

import torch

from sgm_bake.core.recipes import recipe_for_config
from sgm_bake.io.source import Source
from sgm_bake.pipeline.run import reusable_for_full
from sgm_bake.runtime.loading import CPU, LoadedModel, Placement, same_device


def test_a_device_without_index_is_the_first_one():
    # A placement names `cuda` (pick_device("auto") on a GPU machine) while a loaded model's
    # parameters report `cuda:0`: the same GPU, which a plain comparison of the two misses.
    assert torch.device("cuda") != torch.device("cuda:0")
    assert same_device(torch.device("cuda"), torch.device("cuda:0"))
    assert same_device("cuda:0", "cuda")
    assert same_device("mps", "mps:0")
    assert same_device("cpu", torch.device("cpu"))
    assert not same_device("cuda", "cuda:1")
    assert not same_device("cuda:0", "cpu")
    assert not same_device("mps", "cuda")


def test_the_profiling_model_is_reused_only_on_the_same_device_and_dtype():
    recipe = recipe_for_config({"model_type": "llava"})
    source = Source(Path("tiny"), "tiny", None, False)
    on_cpu = LoadedModel(None, source, recipe, torch.device("cpu"), torch.float32)
    assert reusable_for_full(on_cpu, "float32", CPU)
    assert reusable_for_full(on_cpu, "float32", Placement(device_map="cpu"))
    assert not reusable_for_full(on_cpu, "bfloat16", CPU)
    on_gpu = LoadedModel(None, source, recipe, torch.device("cuda", 0), torch.float32)
    assert not reusable_for_full(on_gpu, "float32", CPU)
