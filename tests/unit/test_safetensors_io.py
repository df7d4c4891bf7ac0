"""Streaming safetensors I/O against the reference safetensors library."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sgm_bake.errors import SGMError
from sgm_bake.io.checkpoint import Checkpoint
from sgm_bake.io.safetensors import read_header, rewrite_file, write_tensors
from sgm_bake.io.tensors import TensorSource


@pytest.fixture
def sample(tmp_path):
    tensors = {
        "b.weight": torch.randn(33, 17).to(torch.bfloat16),
        "a.bias": torch.randn(33),
        "c.ids": torch.arange(10, dtype=torch.int64),
        "d.half": torch.randn(4, 4).to(torch.float16),
    }
    path = tmp_path / "sample.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "note": "kept"})
    return path, tensors


def test_header_matches_library(sample):
    path, tensors = sample
    header = read_header(path)
    assert header.metadata == {"format": "pt", "note": "kept"}
    assert set(header.tensors) == set(tensors)
    checkpoint = Checkpoint(path.parent, {}, "safetensors", (path.name,), None)
    reader = TensorSource(checkpoint)
    for name, tensor in tensors.items():
        assert header.tensors[name].shape == tuple(tensor.shape)
        assert torch.equal(reader.read(name), tensor)
        assert reader.read(name).dtype == tensor.dtype


def test_rewrite_without_folds_is_byte_identical(sample, tmp_path):
    path, _ = sample
    out = tmp_path / "copy.safetensors"
    digest = rewrite_file(read_header(path), out, {})
    assert out.read_bytes() == path.read_bytes()
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_rewrite_folds_in_blocks(sample, tmp_path, monkeypatch):
    import sgm_bake.io.safetensors as io

    monkeypatch.setattr(io, "FOLD_BLOCK_BYTES", 64)  # force many blocks
    path, tensors = sample
    scale = torch.linspace(0, 1, 33)
    seen = []

    def fold(block, first_row):
        seen.append(first_row)
        rows = scale[first_row : first_row + block.shape[0]]
        return (block.float() * rows[:, None]).to(block.dtype)

    out = tmp_path / "folded.safetensors"
    rewrite_file(read_header(path), out, {"b.weight": fold})
    assert len(seen) > 3
    with safe_open(str(out), "pt") as handle:
        assert handle.metadata() == {"format": "pt", "note": "kept"}
        expected = (tensors["b.weight"].float() * scale[:, None]).to(torch.bfloat16)
        assert torch.equal(handle.get_tensor("b.weight"), expected)
        for name in ("a.bias", "c.ids", "d.half"):
            assert torch.equal(handle.get_tensor(name), tensors[name])


def test_write_tensors_is_readable_by_library(tmp_path):
    tensors = [("x", torch.randn(3, 5)), ("y", torch.ones(2, dtype=torch.bfloat16))]
    path = tmp_path / "w.safetensors"
    write_tensors(path, tensors, {"format": "pt"})
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"format": "pt"}
        for name, tensor in tensors:
            assert torch.equal(handle.get_tensor(name), tensor)


def test_trailing_garbage_is_corrupt(sample):
    path, _ = sample
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(SGMError, match="truncated or corrupt"):
        read_header(path)


def test_overlapping_offsets_are_corrupt(tmp_path):
    import json
    import struct

    header = json.dumps(
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        }
    ).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 12)
    with pytest.raises(SGMError, match="not contiguous"):
        read_header(path)
