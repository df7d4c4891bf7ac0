"""Profiling end to end on tiny real LLaVA models: planted experts, pooling, resume, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText

from sgm_bake.cli import main
from sgm_bake.core.capture import pool
from sgm_bake.core.expertise import load_expertise
from tests.helpers import PLANTED, profile_arguments, snapshot, tiny_llava


def _profile(runner, model: Path, output: Path, profile_set: Path, *extra: str):
    return runner.invoke(
        main, profile_arguments(model, output, profile_set, "--batch-size", "8", *extra)
    )


@pytest.mark.slow
def test_planted_experts_rank_at_the_top(runner, planted, tmp_path):
    model, profile_set = planted
    output = tmp_path / "expertise.safetensors"
    result = _profile(
        runner,
        model,
        output,
        profile_set,
        "--keep-responses",
        "--responses-dir",
        str(tmp_path / "store"),
        "--hook-points",
        "mlp.gate_proj:output,mlp.up_proj:output",
        "--pooling",
        "mean",
    )
    assert result.exit_code == 0, result.output
    expertise = load_expertise(output)
    # down_proj outputs are left out: every one of them carries the planted neurons' signal.
    assert not any(name.endswith("down_proj") for name in expertise.modules)
    planted_units = set()
    scores = []
    for name, entry in expertise.modules.items():
        assert entry.auroc is not None and entry.alpha.shape == entry.auroc.shape
        for unit in range(entry.auroc.numel()):
            scores.append((float(entry.auroc[unit]), name, unit))
            if name.endswith(("gate_proj", "up_proj")) and unit in PLANTED:
                planted_units.add((name, unit))
    top = {(name, unit) for _, name, unit in sorted(scores, reverse=True)[: len(planted_units)]}
    recall = len(top & planted_units) / len(planted_units)
    assert recall >= 0.9, recall
    assert expertise.metadata["pooling"] == "mean" and expertise.metadata["samples_toxic"] == "18"
    # with max pooling (the default) the planted units still score the top AUROC, 1.0
    maximum = tmp_path / "max.safetensors"
    result = _profile(runner, model, maximum, profile_set, "--hook-points", "mlp.gate_proj:output")
    assert result.exit_code == 0, result.output
    for entry in load_expertise(maximum).modules.values():
        assert all(float(entry.auroc[unit]) == 1.0 for unit in PLANTED)
    assert "layer" in result.output and "suppressed" in result.output
    assert (tmp_path / "store" / "responses.f32").is_file()


@pytest.mark.slow
def test_a_parquet_set_in_its_own_columns_profiles_like_the_native_set(
    runner, planted, tmp_path, monkeypatch
):
    """The planted set rewritten as Parquet with other column names, an is_safe flag and
    image bytes (the same pixels the render spec draws) gives the same AUROC per unit."""
    pq = pytest.importorskip("pyarrow.parquet")
    import io

    import pyarrow as pa

    from sgm_bake.datasets.render import render

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model, profile_set = planted
    rows = [json.loads(line) for line in profile_set.read_text().splitlines()]
    pictures = []
    for row in rows:
        buffer = io.BytesIO()
        render(row["render"]).save(buffer, format="PNG")
        pictures.append({"bytes": buffer.getvalue(), "path": None})
    table = {
        "answer": [row["response"] for row in rows],
        "is_safe": [row["label"] != "toxic" for row in rows],
        "picture": pictures,
    }
    parquet = tmp_path / "own" / "train.parquet"
    parquet.parent.mkdir()
    pq.write_table(pa.table(table), parquet)
    native, own = tmp_path / "native.safetensors", tmp_path / "own.safetensors"
    common = ("--hook-points", "mlp.gate_proj:output")
    assert _profile(runner, model, native, profile_set, *common).exit_code == 0
    result = _profile(
        runner,
        model,
        own,
        parquet,
        *common,
        "--columns",
        "response=answer,label=is_safe,image=picture",
        "--toxic-label",
        "False",
    )
    assert result.exit_code == 0, result.output
    expected, got = load_expertise(native), load_expertise(own)
    for name, entry in expected.modules.items():
        assert torch.equal(entry.auroc, got.modules[name].auroc)
    assert got.metadata["profile_set"] == str(parquet)
    assert got.metadata["samples_toxic"] == "18"
    assert len(got.metadata["profile_set_sha256"]) == 64


@pytest.mark.slow
def test_neuron_hook_point_finds_the_same_experts(runner, planted, tmp_path):
    model, profile_set = planted
    output = tmp_path / "neurons.safetensors"
    result = _profile(runner, model, output, profile_set, "--neurons", "--pooling", "max")
    assert result.exit_code == 0, result.output
    expertise = load_expertise(output)
    assert all(entry.side == "input" for entry in expertise.modules.values())
    for name, entry in expertise.modules.items():
        assert all(float(entry.auroc[unit]) == 1.0 for unit in PLANTED), name
        if ".layers.0." in name:  # before any leak into other dimensions, only they separate
            assert set(torch.nonzero(entry.auroc > 0.9).flatten().tolist()) == set(PLANTED)


@pytest.mark.slow
def test_resume_after_interruption_is_identical(runner, planted, tmp_path, monkeypatch):
    from sgm_bake.io.response_store import ResponseStore

    model, profile_set = planted
    fresh = tmp_path / "fresh.safetensors"
    assert _profile(runner, model, fresh, profile_set).exit_code == 0

    original = ResponseStore.write_batch
    calls = {"n": 0}

    def interrupted(self, start, responses):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, start, responses)

    store = tmp_path / "store"
    resumed = tmp_path / "resumed.safetensors"
    monkeypatch.setattr(ResponseStore, "write_batch", interrupted)
    result = _profile(runner, model, resumed, profile_set, "--responses-dir", str(store))
    assert result.exit_code == 130 and not resumed.exists()
    assert json.loads((store / "progress.json").read_text())["completed"] == 16
    monkeypatch.setattr(ResponseStore, "write_batch", original)
    result = _profile(runner, model, resumed, profile_set, "--responses-dir", str(store))
    assert result.exit_code == 0, result.output
    first, second = load_expertise(fresh), load_expertise(resumed)
    for name, entry in first.modules.items():
        assert torch.equal(entry.auroc, second.modules[name].auroc)
        assert torch.equal(entry.alpha, second.modules[name].alpha)
    assert not store.exists()  # removed after success unless --keep-responses


def test_pooling_ignores_padding_on_either_side():
    torch.manual_seed(0)
    values = torch.randn(2, 5, 3)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    shifted = values.clone()
    shifted[0, 2:] = values[0, :3]
    shifted[0, :2] = 99.0  # padding garbage
    for pooling in ("mean", "max"):
        torch.testing.assert_close(pool(values, right, pooling), pool(shifted, left, pooling))
    expected = values[0, :3].mean(0)
    torch.testing.assert_close(pool(values, right, "mean")[0], expected)


@pytest.mark.slow
def test_left_and_right_padding_give_the_same_responses(planted):
    from sgm_bake.core.capture import Capture
    from sgm_bake.datasets.profile_set import load_profile_set
    from sgm_bake.pipeline.profile import Inputs

    model_dir, profile_set = planted
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    samples = list(load_profile_set(str(profile_set)).samples[:4])
    inputs = Inputs(model_dir, model.config.to_dict(), "response", multimodal=True)
    name = "model.language_model.layers.1.mlp.up_proj"
    results = {}
    for side in ("left", "right"):
        inputs.tokenizer.padding_side = side
        batch = inputs.build(samples)
        assert (batch["attention_mask"] == 0).any()
        with Capture([(name, model.get_submodule(name), "output")], "mean") as capture:
            results[side] = capture.collect(inputs.mask(batch, "all"), lambda b=batch: model(**b))[
                name
            ]
    torch.testing.assert_close(results["left"], results["right"], atol=1e-4, rtol=1e-4)


def test_text_positions_exclude_image_tokens(planted):
    from sgm_bake.datasets.profile_set import load_profile_set
    from sgm_bake.pipeline.profile import Inputs

    model_dir, profile_set = planted
    config = json.loads((model_dir / "config.json").read_text())
    inputs = Inputs(model_dir, config, "response", multimodal=True)
    batch = inputs.build(list(load_profile_set(str(profile_set)).samples[:2]))
    every, text = inputs.mask(batch, "all"), inputs.mask(batch, "text")
    image_tokens = (batch["input_ids"] == config["image_token_index"]).sum()
    assert image_tokens > 0
    assert int(every.sum() - text.sum()) == int(image_tokens)


@pytest.mark.slow
def test_one_command_profiles_bakes_and_verifies(runner, planted, tmp_path):
    model, profile_set = planted
    out = tmp_path / "out"
    result = runner.invoke(
        main,
        [
            "-q",
            str(model),
            str(out),
            "--profile-set",
            str(profile_set),
            "--rule",
            "det0",
            "--top-k",
            "16",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "verify: PASS" in result.output
    record = json.loads((out / "sgm" / "bake.json").read_text())
    metadata = record["expertise"]["metadata"]
    assert metadata["rule"] == "det0" and metadata["top_k"] == "16"
    assert metadata["profile_set_sha256"]
    zeroed = sum(m["zeroed"] for m in record["expertise"]["modules"].values())
    assert zeroed == 16

    reuse = tmp_path / "reuse"
    result = runner.invoke(
        main,
        [
            "-q",
            str(model),
            str(reuse),
            "--expertise",
            str(out / "sgm" / "expertise.sgm"),
            "--rule",
            "aura",
            "--strength",
            "0.5",
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads((reuse / "sgm" / "bake.json").read_text())
    assert record["expertise"]["metadata"]["rule"] == "aura"
    assert record["expertise"]["metadata"]["strength"] == "0.5"


@pytest.mark.slow
def test_batches_hold_samples_of_similar_length(planted):
    """Samples are batched with an image first, longest first, deterministically: the same
    samples, less padding than the set's own order."""
    from sgm_bake.datasets.profile_set import ProfileSample, load_profile_set
    from sgm_bake.pipeline.profile import Inputs, length_order

    model_dir, profile_set = planted
    config = json.loads((model_dir / "config.json").read_text())
    inputs = Inputs(model_dir, config, "dialogue", multimodal=True)
    samples = list(load_profile_set(str(profile_set)).samples)
    text_only = [ProfileSample(f"text{i}", i % 2, "words " * (i + 1)) for i in range(4)]
    mixed = text_only[:2] + samples + text_only[2:]
    ordered = length_order(mixed, inputs)
    assert ordered == length_order(mixed, inputs)
    assert sorted(s.id for s in ordered) == sorted(s.id for s in mixed)
    assert {s.id for s in ordered[-4:]} == {s.id for s in text_only}  # images first
    lengths = [inputs.length(s) for s in ordered[: len(samples)]]
    assert lengths == sorted(lengths, reverse=True)

    def padding(order) -> int:
        total = 0
        for first in range(0, len(order), 4):
            mask = inputs.build(list(order[first : first + 4]))["attention_mask"]
            total += int(mask.numel() - mask.sum())
        return total

    assert padding(length_order(samples, inputs)) < padding(samples)


@pytest.mark.slow
def test_automatic_batch_size_on_a_cpu_is_the_default_batch(runner, planted, tmp_path):
    model, profile_set = planted
    fixed, automatic = tmp_path / "fixed.safetensors", tmp_path / "auto.safetensors"
    assert _profile(runner, model, fixed, profile_set, "--device", "cpu").exit_code == 0
    # Not quiet: the speed line, which names the batch size, is a status line.
    extra = ("--device", "cpu", "--batch-size", "auto")
    result = runner.invoke(
        main, profile_arguments(model, automatic, profile_set, *extra, quiet=False)
    )
    assert result.exit_code == 0, result.output
    assert "batch 8," in result.output and "found automatically" not in result.output
    assert automatic.read_bytes() == fixed.read_bytes()


# --- the response store: keyed by content, owning only what it made, one run at a time -------


@pytest.mark.slow
def test_a_resume_never_uses_another_models_responses(runner, planted, tmp_path, monkeypatch):
    """Two models in folders of the same name: the second profile is its own, not a resume of
    the first's stored responses."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model, profile_set = planted
    other = tiny_llava(tmp_path / "runB" / "model", hidden=64, intermediate=128, layers=2, seed=5)
    assert other.name == model.name
    first, second, alone = (tmp_path / f"{n}.safetensors" for n in ("a", "b", "b-alone"))
    assert _profile(runner, model, first, profile_set, "--keep-responses").exit_code == 0
    assert _profile(runner, other, second, profile_set, "--keep-responses").exit_code == 0
    store = tmp_path / "own-store"
    assert _profile(runner, other, alone, profile_set, "--responses-dir", str(store)).exit_code == 0
    a, b, b_alone = (load_expertise(path).modules for path in (first, second, alone))
    name = next(iter(a))
    assert not torch.equal(a[name].auroc, b[name].auroc)
    for module, entry in b.items():
        assert torch.equal(entry.auroc, b_alone[module].auroc), module


def test_responses_dir_with_other_files_is_refused(runner, planted, tmp_path):
    model, profile_set = planted
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    before = snapshot(tmp_path)
    output = tmp_path / "expertise.safetensors"
    result = _profile(runner, model, output, profile_set, "--responses-dir", str(mine))
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "not an sgm-bake response store" in result.output
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_an_existing_empty_responses_dir_is_emptied_not_removed(runner, planted, tmp_path):
    model, profile_set = planted
    empty = tmp_path / "empty"
    empty.mkdir()
    output = tmp_path / "expertise.safetensors"
    result = _profile(runner, model, output, profile_set, "--responses-dir", str(empty))
    assert result.exit_code == 0, result.output
    assert empty.is_dir() and list(empty.iterdir()) == []


def test_a_store_in_use_is_refused_and_never_removed(runner, planted, tmp_path):
    """A second run on a store another run holds: one line, and the store stays as it is."""
    from sgm_bake.io.response_store import ResponseStore

    model, profile_set = planted
    store_folder = tmp_path / "shared"
    running = ResponseStore.open(store_folder, {"source": "the first run"}, {"m": 4}, 8)
    try:
        running.write_batch(0, {"m": torch.ones(2, 4).numpy()})
        before = snapshot(tmp_path)
        output = tmp_path / "expertise.safetensors"
        result = _profile(runner, model, output, profile_set, "--responses-dir", str(store_folder))
        assert result.exit_code == 2, result.output
        assert "in use by another sgm-bake run" in result.output
        assert result.output.count("\n") == 1
        from sgm_bake.io.response_store import discard_store

        discard_store(store_folder)  # what a finishing run does: it must not remove it either
        assert snapshot(tmp_path) == before
    finally:
        running.close(remove=True)
    assert not store_folder.exists()  # the store made the folder, so removing it removes both


def test_a_resumed_store_says_so(tmp_path, caplog):
    from sgm_bake.io.response_store import ResponseStore

    folder = tmp_path / "store"
    store = ResponseStore.open(folder, {"source": "model-a"}, {"m": 3}, 4)
    store.write_batch(0, {"m": torch.ones(2, 3).numpy()})
    store.close()
    with caplog.at_level("WARNING", logger="sgm_bake.io.response_store"):
        store = ResponseStore.open(folder, {"source": "model-a"}, {"m": 3}, 4)
    store.close(remove=True)
    assert store.completed == 2 and not folder.exists()
    assert f"resuming the profile of model-a from the response store {folder}" in caplog.text
    assert "2 of 4 samples are already stored" in caplog.text
