"""Big-model loading: a device map forced to offload every layer to disk profiles a tiny model
to exactly the AUROC of a plain load (accelerate moves each layer in for its forward pass)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sgm_bake.cli import main
from sgm_bake.core.expertise import load_expertise
from sgm_bake.runtime.loading import Placement, input_device, load_model
from sgm_bake.runtime.memory import parse_max_memory
from tests.helpers import profile_arguments


def _profile(runner, model: Path, output: Path, profile_set: Path, *extra: str):
    sizes = ("--max-samples", "12", "--device", "cpu")
    return runner.invoke(main, profile_arguments(model, output, profile_set, *sizes, *extra))


@pytest.mark.slow
def test_offloaded_profile_equals_plain(runner, planted, tmp_path):
    from sgm_bake.io.source import resolve_source
    from sgm_bake.pipeline.profile import ProfileOptions
    from sgm_bake.pipeline.run import ProfileRequest, profile_source

    model, profile_set = planted
    plain = tmp_path / "plain.safetensors"
    assert _profile(runner, model, plain, profile_set).exit_code == 0
    request = ProfileRequest(
        profile_set=str(profile_set),
        max_samples=12,
        options=ProfileOptions(progress=False),
        placement=Placement(
            device="cpu",
            max_memory=parse_max_memory("cpu=100KB"),
            offload_folder=tmp_path / "offload",
        ),
    )
    outcome = profile_source(resolve_source(str(model)), request)
    # Every layer lived on disk and was brought in only for its forward pass.
    assert set(outcome.loaded.model.hf_device_map.values()) == {"disk"}
    first, second = load_expertise(plain), outcome.expertise
    assert second is not None and first.modules.keys() == second.modules.keys()
    for name, entry in first.modules.items():
        assert torch.equal(entry.auroc, second.modules[name].auroc), name
        assert torch.equal(entry.alpha, second.modules[name].alpha), name
    # The CLI takes the same options.
    offloaded = tmp_path / "offloaded.safetensors"
    result = _profile(
        runner,
        model,
        offloaded,
        profile_set,
        "--max-memory",
        "cpu=100KB",
        "--offload-folder",
        str(tmp_path / "offload"),
    )
    assert result.exit_code == 0, result.output
    assert offloaded.read_bytes() == plain.read_bytes()


@pytest.mark.slow
def test_placement_resolves_device_maps(planted, tmp_path):
    from sgm_bake.core.hooks import model_recipe

    assert Placement(device="cpu").device_map_argument() == "cpu"
    assert Placement(max_memory=parse_max_memory("cpu=1GiB")).device_map_argument() == "auto"
    assert Placement(device_map="sequential").device_map_argument() == "sequential"
    budgets = Placement(device_map="auto", max_memory=parse_max_memory("cpu=100KB"))
    assert budgets.main_device() == torch.device("cpu")
    model_dir, _ = planted
    plain = load_model(model_dir, model_recipe_of(model_dir), torch.float32, Placement("cpu"))
    assert input_device(plain) == torch.device("cpu")
    offloaded = load_model(
        model_dir,
        model_recipe(plain),
        torch.bfloat16,
        Placement(
            device_map="auto",
            max_memory=parse_max_memory("cpu=100KB"),
            offload_folder=tmp_path / "off",
        ),
    )
    assert set(offloaded.hf_device_map.values()) == {"disk"}
    assert input_device(offloaded) == torch.device("cpu")


def model_recipe_of(folder: Path):
    from sgm_bake.core.recipes import recipe_for_config
    from sgm_bake.io.checkpoint import open_checkpoint

    return recipe_for_config(open_checkpoint(folder).config)
