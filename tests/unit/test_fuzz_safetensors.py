"""Property-based fuzzing of the readers of untrusted checkpoint files.

Whatever bytes a safetensors file or an index holds, `read_header` and `open_checkpoint` either
load it or raise SGMError: never another exception, and never a header that the safetensors
library itself would refuse or whose offsets leave the file.
"""

from __future__ import annotations

import contextlib
import json
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from sgm_bake.errors import SGMError
from sgm_bake.io.checkpoint import open_checkpoint
from sgm_bake.io.safetensors import DTYPES, read_header

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# JSON values that a hostile header might put anywhere.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
small_ints = st.one_of(st.integers(min_value=-2, max_value=40), st.sampled_from([True, 2**64]))
dtypes = st.one_of(st.sampled_from(sorted(DTYPES)), st.text(max_size=4), json_values)


@st.composite
def entries(draw: st.DrawFn) -> object:
    """A tensor entry: usually well-formed in shape, often wrong in some field."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    entry: dict[str, object] = {
        "dtype": draw(dtypes),
        "shape": draw(st.one_of(st.lists(small_ints, max_size=3), json_values)),
        "data_offsets": draw(st.one_of(st.lists(small_ints, min_size=2, max_size=2), json_values)),
    }
    if draw(st.booleans()):
        entry.pop(draw(st.sampled_from(sorted(entry))))
    return entry


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    """A whole file: a drawn header, a drawn length prefix and drawn data."""
    header = draw(st.dictionaries(st.text(max_size=6), entries(), max_size=4))
    if draw(st.booleans()):
        header["__metadata__"] = draw(
            st.one_of(st.dictionaries(st.text(max_size=4), st.text(max_size=4)), json_values)
        )
    text = json.dumps(header, allow_nan=True).encode()
    mode = draw(st.integers(0, 5))
    if mode == 0:  # raw garbage instead of JSON
        text = draw(st.binary(max_size=64))
    elif mode == 1 and text:  # a byte flipped
        position = draw(st.integers(0, len(text) - 1))
        text = text[:position] + bytes([draw(st.integers(0, 255))]) + text[position + 1 :]
    length = len(text)
    if draw(st.integers(0, 4)) == 0:
        length = draw(st.integers(0, 2**64 - 1))
    data = b"\0" * draw(st.integers(0, 96))
    return struct.pack("<Q", length) + text + data


@st.composite
def near_valid(draw: st.DrawFn) -> bytes:
    """A valid file (tensors packed in drawn order), then at most one field or byte changed."""
    names = draw(st.lists(st.text(min_size=1, max_size=6), max_size=4, unique=True))
    header: dict[str, object] = {}
    offset = 0
    for name in names:
        dtype = draw(st.sampled_from(["F32", "F16", "BF16", "U8", "I64", "F4"]))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        count = 1
        for dim in shape:
            count *= dim
        size = count * int(DTYPES[dtype][1] * 8) // 8
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    if draw(st.booleans()):
        header["__metadata__"] = {"format": "pt"}
    if names and draw(st.booleans()):
        entry = header[draw(st.sampled_from(names))]
        entry[draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(json_values)  # type: ignore[index]
    text = json.dumps(header).encode()
    data = b"\1" * (offset + draw(st.sampled_from([0, 0, 0, 1, -1])))
    return struct.pack("<Q", len(text)) + text + data[: max(0, len(data))]


def _check_loaded(path: Path) -> None:
    header = read_header(path)
    size = path.stat().st_size
    for info in header.tensors.values():
        assert header.data_start <= info.start <= info.end <= size
    with safe_open(str(path), "pt") as handle:  # what we accept, the library accepts
        assert set(handle.keys()) == set(header.tensors)


@pytest.mark.slow
@SETTINGS
@given(blob=st.one_of(near_valid(), headers(), st.binary(max_size=80)))
def test_read_header_loads_or_refuses(blob: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        path.write_bytes(blob)
        with contextlib.suppress(SGMError):
            _check_loaded(path)


def _valid_file(path: Path, names: list[str]) -> None:
    header = {}
    for number, name in enumerate(names):
        header[name] = {"dtype": "F32", "shape": [1], "data_offsets": [4 * number, 4 * number + 4]}
    text = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * (4 * len(names)))


shard_names = st.one_of(
    st.sampled_from(
        [
            "model-1.safetensors",
            "sub/model-2.safetensors",
            "../model-1.safetensors",
            "/etc/passwd",
            "sub/../../x.safetensors",
            "..\\x.safetensors",
            "C:/x.safetensors",
            "",
            ".",
            "sub/",
            "a\x00b",
        ]
    ),
    st.text(max_size=12),
    json_values,
)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
@SETTINGS
@given(
    weight_map=st.one_of(
        st.dictionaries(st.text(max_size=6), shard_names, max_size=4), json_values
    ),
    extra=st.dictionaries(st.text(max_size=6), json_values, max_size=2),
)
def test_index_loads_or_refuses(weight_map: object, extra: dict[str, object]) -> None:
    with tempfile.TemporaryDirectory() as parent:
        root = Path(parent) / "model"
        root.mkdir()
        (root / "config.json").write_text(json.dumps({"model_type": "llava"}))
        _valid_file(root / "model-1.safetensors", ["a", "b"])
        _valid_file(root / "sub" / "model-2.safetensors", ["c"])
        _valid_file(Path(parent) / "x.safetensors", ["outside"])
        index = {**extra, "weight_map": weight_map}
        (root / "model.safetensors.index.json").write_text(json.dumps(index))
        try:
            checkpoint = open_checkpoint(root)
        except SGMError:
            return
        for name in checkpoint.weight_files:
            assert (root / name).resolve().is_relative_to(root.resolve())
        checkpoint.tensor_keys()
