"""End-to-end bakes of tiny real LLaVA checkpoints through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForImageTextToText

from sgm_bake import SGMHooks, load_expertise
from sgm_bake.cli import main
from tests.helpers import file_metadata, load_state, rename_keys, tiny_llava

NEW_NAMING = [
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
]


def _bake(runner: CliRunner, source: Path, out: Path, expertise: Path, *extra: str):
    return runner.invoke(
        main, ["-q", "bake", str(source), str(out), "--expertise", str(expertise), *extra]
    )


def _targeted(out: Path) -> set[str]:
    record = json.loads((out / "sgm" / "bake.json").read_text())
    return set(record["expertise"]["tensors_folded"])


@pytest.mark.slow
def test_bake_changes_only_targeted_tensors(runner, llava_dir, llava_expertise, tmp_path):
    out = tmp_path / "out"
    result = _bake(runner, llava_dir, out, llava_expertise)
    assert result.exit_code == 0, result.output
    assert "verify: PASS" in result.output
    source, baked = load_state(llava_dir), load_state(out)
    assert source.keys() == baked.keys()
    targeted = _targeted(out)
    # gate/up/down of both layers (layer 1 down_proj by its input columns).
    assert targeted == {
        f"language_model.model.layers.{i}.mlp.{p}.weight"
        for i in range(2)
        for p in ("gate_proj", "up_proj", "down_proj")
    }
    for key, tensor in source.items():
        assert baked[key].dtype == tensor.dtype and baked[key].shape == tensor.shape
        if key in targeted:
            assert not torch.equal(baked[key], tensor), key
        else:
            assert torch.equal(baked[key], tensor), key
    assert file_metadata(out / "model.safetensors") == file_metadata(
        llava_dir / "model.safetensors"
    )
    # exactly the source's file set plus the model card and sgm/: what converters and loaders see
    source_files = {p.name for p in llava_dir.iterdir()}
    assert {p.name for p in out.iterdir()} == source_files | {"sgm", "README.md"}
    for name in source_files - {"model.safetensors", "README.md"}:
        assert (out / name).read_bytes() == (llava_dir / name).read_bytes(), name


@pytest.mark.slow
def test_baked_logits_equal_hooked_logits(runner, llava_dir, llava_expertise, tmp_path):
    out = tmp_path / "out"
    assert _bake(runner, llava_dir, out, llava_expertise, "--no-verify").exit_code == 0
    torch.manual_seed(0)
    ids = torch.randint(10, 200, (2, 9))
    reference_model = AutoModelForImageTextToText.from_pretrained(llava_dir)
    with SGMHooks(reference_model, load_expertise(llava_expertise)), torch.no_grad():
        reference = reference_model(input_ids=ids).logits
    baked_model, info = AutoModelForImageTextToText.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        baked = baked_model(input_ids=ids).logits
        plain = reference_model(input_ids=ids).logits
    assert (baked - reference).abs().max() <= 1e-4
    assert (plain - reference).abs().max() > 1e-2  # hooks removed, and the edit is not a no-op


@pytest.mark.slow
def test_verify_records_figures(runner, llava_dir, llava_expertise, tmp_path):
    out = tmp_path / "out"
    assert _bake(runner, llava_dir, out, llava_expertise, "--no-verify").exit_code == 0
    result = runner.invoke(main, ["verify", str(out), "--device", "cpu", "--full"])
    assert result.exit_code == 0, result.output
    verification = json.loads((out / "sgm" / "bake.json").read_text())["verification"]
    assert verification["passed"] and verification["inputs"] == "image+text"
    assert verification["mode"] == "full"
    assert verification["max_abs_diff"] <= 1e-4
    assert verification["top1_agreement"] == 1.0
    assert verification["intervention_rel_effect"] > 100 * verification["max_rel_diff"]
    # The default is the layer-streamed check.
    result = runner.invoke(main, ["verify", str(out)])
    assert result.exit_code == 0, result.output
    verification = json.loads((out / "sgm" / "bake.json").read_text())["verification"]
    assert verification["passed"] and verification["mode"] == "layers"
    assert verification["layers_checked"] == 2 and verification["max_rel_diff"] <= 1e-5
    assert verification["intervention_rel_effect"] > 100 * verification["max_rel_diff"]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_sources_keep_dtype(runner, tmp_path, llava_expertise, dtype):
    source = tiny_llava(tmp_path / "src", dtype=dtype)
    out = tmp_path / "out"
    result = _bake(runner, source, out, llava_expertise)
    assert result.exit_code == 0, result.output
    before, after = load_state(source), load_state(out)
    for key, tensor in before.items():
        assert after[key].dtype == tensor.dtype
    # one rounding: the stored value is the float32 product rounded to the source dtype
    expertise = load_expertise(llava_expertise)
    alpha = expertise.modules["model.language_model.layers.0.mlp.up_proj"].alpha
    key = "language_model.model.layers.0.mlp.up_proj.weight"
    expected = (before[key].float() * alpha[:, None]).to(dtype)
    assert torch.equal(after[key], expected)


@pytest.mark.slow
def test_sharded_source_keeps_shards_and_index(runner, tmp_path, llava_dir, llava_expertise):
    model = AutoModelForImageTextToText.from_pretrained(llava_dir)
    source = tmp_path / "sharded"
    model.save_pretrained(source, max_shard_size="60KB")
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
        "chat_template.jinja",
    ):
        (source / name).write_bytes((llava_dir / name).read_bytes())
    shards = sorted(p.name for p in source.glob("*.safetensors"))
    assert len(shards) > 1
    out = tmp_path / "out"
    result = _bake(runner, source, out, llava_expertise)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.safetensors")) == shards
    index = "model.safetensors.index.json"
    assert (out / index).read_bytes() == (source / index).read_bytes()
    for shard in shards:
        with_keys = load_state(source).keys()
        assert with_keys == load_state(out).keys()
        assert file_metadata(out / shard) == file_metadata(source / shard)


@pytest.mark.slow
def test_new_style_keys_are_preserved(runner, copy_model, llava_dir, llava_expertise, tmp_path):
    source = copy_model(llava_dir)
    rename_keys(source, NEW_NAMING)
    out = tmp_path / "out"
    result = _bake(runner, source, out, llava_expertise)
    assert result.exit_code == 0, result.output
    assert "model.language_model.layers.0.mlp.gate_proj.weight" in _targeted(out)
    assert load_state(out).keys() == load_state(source).keys()
    _, info = AutoModelForImageTextToText.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


@pytest.mark.slow
def test_bin_source_is_written_as_safetensors(
    runner, copy_model, llava_dir, llava_expertise, tmp_path
):
    source = copy_model(llava_dir)
    state = load_state(source)
    (source / "model.safetensors").unlink()
    torch.save(state, source / "pytorch_model.bin")
    out = tmp_path / "out"
    result = _bake(runner, source, out, llava_expertise)
    assert result.exit_code == 0, result.output
    assert not (out / "pytorch_model.bin").exists()
    baked = load_state(out)
    assert baked.keys() == state.keys()
    assert file_metadata(out / "model.safetensors") == {"format": "pt"}
    for key in set(state) - _targeted(out):
        assert torch.equal(baked[key], state[key])


def test_unbaked_weight_copies_are_left_out(
    runner, copy_model, llava_dir, llava_expertise, tmp_path
):
    source = copy_model(llava_dir)
    torch.save(load_state(source), source / "pytorch_model.bin")
    out = tmp_path / "out"
    result = runner.invoke(
        main, ["bake", str(source), str(out), "--expertise", str(llava_expertise), "--no-verify"]
    )
    assert result.exit_code == 0, result.output
    assert not (out / "pytorch_model.bin").exists()
    record = json.loads((out / "sgm" / "bake.json").read_text())
    assert record["dropped_files"] == ["pytorch_model.bin"]


@pytest.mark.slow
def test_record_lists_every_output_file_hash(runner, llava_dir, llava_expertise, tmp_path):
    import hashlib

    out = tmp_path / "out"
    assert _bake(runner, llava_dir, out, llava_expertise).exit_code == 0
    record = json.loads((out / "sgm" / "bake.json").read_text())
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert set(record["files"]) == files - {"sgm/bake.json"}
    for name, digest in record["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert record["source"]["kind"] == "local"
    assert record["recipe"]["model_type"] == "llava"
    modules = record["expertise"]["modules"]
    assert modules["model.language_model.layers.1.mlp.down_proj"]["side"] == "input"
    baked_expertise = load_expertise(out / "sgm" / "expertise.sgm")
    assert set(baked_expertise.modules) == set(modules)


@pytest.mark.slow
def test_sharded_bin_source_gets_a_safetensors_index(
    runner, copy_model, llava_dir, llava_expertise, tmp_path
):
    source = copy_model(llava_dir)
    state = load_state(source)
    (source / "model.safetensors").unlink()
    keys = sorted(state)
    halves = {
        "pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
        "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :],
    }
    weight_map = {}
    for name, part in halves.items():
        torch.save({k: state[k] for k in part}, source / name)
        weight_map.update(dict.fromkeys(part, name))
    (source / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    out = tmp_path / "out"
    result = _bake(runner, source, out, llava_expertise)
    assert result.exit_code == 0, result.output
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    }
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in state.values()
    )
    assert not list(out.glob("*.bin")) and not (out / "pytorch_model.bin.index.json").exists()
    assert load_state(out).keys() == state.keys()


def _unusual_layouts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same values stored as `torch.save` keeps odd tensors: transposed (non-contiguous)
    views, views of one shared storage, a view at an offset into a larger storage, and an
    expanded (stride 0) vector."""
    odd = dict(state)
    gate = "language_model.model.layers.0.mlp.gate_proj.weight"
    up = "language_model.model.layers.0.mlp.up_proj.weight"
    down = "language_model.model.layers.1.mlp.down_proj.weight"
    norm = "language_model.model.layers.1.post_attention_layernorm.weight"
    shared = torch.cat([state[gate], state[up]])  # gate and up: two views of one storage
    odd[gate], odd[up] = shared[: len(state[gate])], shared[len(state[gate]) :]
    odd[down] = state[down].t().contiguous().t()  # transposed view of [in, out] storage
    padded = torch.cat([torch.full((7,), 9.0), state[norm].flatten()])
    odd[norm] = padded[7:]  # offset 7 into a longer storage
    final = "language_model.model.norm.weight"  # all ones, as initialised
    assert bool((state[final] == 1).all())
    odd[final] = torch.ones(1).expand(state[final].shape)  # stride 0: one stored value
    assert not odd[down].is_contiguous() and odd[up].storage_offset() > 0
    assert odd[gate].untyped_storage().data_ptr() == odd[up].untyped_storage().data_ptr()
    return odd


@pytest.mark.slow
def test_bin_tensors_in_unusual_layouts_bake_like_plain_ones(
    runner, copy_model, llava_dir, llava_expertise, tmp_path
):
    """A `.bin` holding views (shared, transposed, offset) bakes to exactly the bytes a plain
    safetensors source of the same values bakes to, and verifies."""
    plain = copy_model(llava_dir)
    odd = tmp_path / "odd"
    shutil.copytree(plain, odd)
    state = load_state(plain)
    (odd / "model.safetensors").unlink()
    torch.save(_unusual_layouts(state), odd / "pytorch_model.bin")
    for source, out in ((plain, tmp_path / "plain-out"), (odd, tmp_path / "odd-out")):
        result = _bake(runner, source, out, llava_expertise)
        assert result.exit_code == 0, result.output
        assert "PASS" in result.output
    expected, baked = load_state(tmp_path / "plain-out"), load_state(tmp_path / "odd-out")
    assert expected.keys() == baked.keys()
    for key, tensor in expected.items():
        assert torch.equal(baked[key], tensor), key
