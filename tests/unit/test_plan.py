"""The memory plan: read from config and safetensors headers only; refuses what cannot fit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sgm_bake.errors import SGMError
from sgm_bake.pipeline.plan import PlanOptions, model_facts, plan, plan_stages
from sgm_bake.runtime.memory import format_bytes, parse_max_memory, parse_size
from tests.helpers import load_state

CONFIGS = Path(__file__).resolve().parents[2] / "benchmarks" / "model_configs"


def test_parse_max_memory():
    budgets = parse_max_memory("0=70GiB, 1=70GiB,cpu=200GiB")
    assert budgets == {0: 70 * 2**30, 1: 70 * 2**30, "cpu": 200 * 2**30}
    assert parse_max_memory("cuda:1=5G") == {1: 5 * 2**30}
    assert parse_max_memory(None) == {}
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("1024") == 1024
    for bad in ("0:70GiB", "gpu=1GiB", "0=lots", "0=1GiB,0=2GiB"):
        with pytest.raises(SGMError):
            parse_max_memory(bad)
    assert format_bytes(1536 * 2**20) == "1.50 GiB"
    assert format_bytes(1010 * 2**20) == "1010 MiB"


@pytest.mark.slow
def test_facts_from_headers_match_config_alone(llava_dir: Path, tmp_path: Path) -> None:
    state = load_state(llava_dir)
    with_weights = model_facts(str(llava_dir))
    assert with_weights.counted_from == "safetensors headers"
    assert with_weights.params == sum(t.numel() for t in state.values())
    assert with_weights.largest_tensor_bytes == max(
        t.numel() * t.element_size() for t in state.values()
    )
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copyfile(llava_dir / "config.json", config_only / "config.json")
    alone = model_facts(str(config_only))
    assert alone.counted_from.startswith("config.json alone")
    assert alone.params == with_weights.params
    assert alone.block_params == 3 * 32 * 64  # gate, up, down of hidden 32, intermediate 64
    assert alone.units == 2 * (64 + 64 + 32)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "published"), [("llava-1.5-7b", 7.06e9), ("Qwen2-VL-72B", 73.4e9)]
)
def test_published_models_from_config(name: str, published: float) -> None:
    result = plan(str(CONFIGS / name), PlanOptions(max_memory=parse_max_memory("0=80GiB")))
    assert abs(result.facts.params - published) / published < 0.005
    stages = {stage.stage: stage for stage in result.stages}
    # The streamed stages do not grow with the model: under 4 GiB even for 72B.
    assert stages["bake"].host_bytes < 2**30
    assert stages["verify"].host_bytes < 4 * 2**30
    whole = stages["verify --full"]
    assert whole.gpus * 80 * 2**30 >= result.facts.params * 2
    assert result.fits == (name == "llava-1.5-7b")


def test_refuses_what_does_not_fit(llava_dir: Path) -> None:
    facts = model_facts(str(llava_dir))
    tight = plan_stages(facts, PlanOptions(max_memory=parse_max_memory("0=100KiB")))
    assert not tight.fits
    refused = [stage.stage for stage in tight.stages if not stage.fits]
    assert refused == ["verify --full", "profile", "eval/generate"]
    assert "--max-memory gives 1" in tight.stages[2].note
    spill = plan_stages(facts, PlanOptions(max_memory=parse_max_memory("0=100KiB,cpu=64GiB")))
    assert spill.fits and "offloaded to the CPU" in spill.stages[2].note
    host = plan_stages(facts, PlanOptions(max_memory=parse_max_memory("cpu=100MiB")))
    assert [stage.stage for stage in host.stages if not stage.fits] == [
        s.stage for s in host.stages
    ]
    text = "\n".join(tight.lines())
    assert "NO" in text and "bake" in text


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["qwen3_vl_moe", "blip-2"])
def test_plan_of_layers_verified_whole(model_type: str, tmp_path: Path) -> None:
    """Mixture-of-experts and layer-level projections: the default verification loads the whole
    model, and the plan says so instead of claiming one block."""
    from tests.tiny_configs import tiny_config

    tiny_config(model_type).save_pretrained(tmp_path)
    result = plan(str(tmp_path), PlanOptions())
    assert not result.facts.streamed and result.facts.units > 0
    verify = next(stage for stage in result.stages if stage.stage == "verify")
    assert verify.note.startswith("whole model") and verify.gpus >= 1
