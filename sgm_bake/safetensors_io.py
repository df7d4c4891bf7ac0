"""Streaming safetensors reading and writing in the file's own byte layout.

The bake rewrites a shard as: the source header verbatim (names, dtypes, shapes, offsets and
`__metadata__` unchanged), then every tensor's bytes in file order, copied as they are unless the
tensor is targeted, in which case it is folded block by block. Peak memory is one block, not the
shard. The header is parsed here (8-byte little-endian length + JSON) so that a truncated or
corrupt file is caught before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from sgm_bake.errors import SGMError

# safetensors dtype tag -> (torch dtype, bytes per element); tags without a torch dtype are
# carried byte for byte but cannot be folded.
DTYPES: dict[str, tuple[torch.dtype | None, float]] = {
    "BOOL": (torch.bool, 1),
    "U8": (torch.uint8, 1),
    "I8": (torch.int8, 1),
    "I16": (torch.int16, 2),
    "U16": (getattr(torch, "uint16", None), 2),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I32": (torch.int32, 4),
    "U32": (getattr(torch, "uint32", None), 4),
    "F32": (torch.float32, 4),
    "I64": (torch.int64, 8),
    "U64": (getattr(torch, "uint64", None), 8),
    "F64": (torch.float64, 8),
    "F8_E4M3": (getattr(torch, "float8_e4m3fn", None), 1),
    "F8_E5M2": (getattr(torch, "float8_e5m2", None), 1),
    "F8_E8M0": (getattr(torch, "float8_e8m0fnu", None), 1),
    "F4": (None, 0.5),
}
FOLDABLE = {"F16", "BF16", "F32", "F64"}
TORCH_TO_TAG = {dtype: tag for tag, (dtype, _) in DTYPES.items() if dtype is not None}
MAX_HEADER = 100 * 1024 * 1024
COPY_CHUNK = 64 * 1024 * 1024
FOLD_BLOCK_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """One tensor entry of a safetensors header, with absolute file offsets."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Header:
    """A parsed safetensors header."""

    path: Path
    raw: bytes
    metadata: dict[str, str] | None
    tensors: dict[str, TensorInfo]

    @property
    def data_start(self) -> int:
        return len(self.raw)


def _corrupt(path: Path, why: str) -> SGMError:
    return SGMError(
        f"{path} is not a valid safetensors file ({why}); it is truncated or corrupt: "
        "download or copy it again"
    )


def read_header(path: Path) -> Header:
    """Parse and validate a safetensors header, including that the file is complete."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise _corrupt(path, "shorter than its 8-byte header length")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER or 8 + length > size:
                raise _corrupt(path, f"header length {length} exceeds the file")
            header_bytes = handle.read(length)
    except OSError as exc:
        raise SGMError(
            f"cannot read {path} ({exc.strerror}); check the path and permissions"
        ) from exc
    try:
        entries = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, "header is not JSON") from exc
    if not isinstance(entries, dict):
        raise _corrupt(path, "header is not a JSON object")
    metadata = entries.pop("__metadata__", None)
    data_start = 8 + length
    tensors: list[TensorInfo] = []
    for name, entry in entries.items():
        try:
            dtype, shape = entry["dtype"], tuple(int(d) for d in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _corrupt(path, f"bad entry for {name!r}") from exc
        numel = 1
        for dim in shape:
            numel *= dim
        if dtype in DTYPES and dtype != "F4" and numel * DTYPES[dtype][1] != end - begin:
            raise _corrupt(path, f"{name!r} has {end - begin} bytes for shape {list(shape)}")
        tensors.append(TensorInfo(name, dtype, shape, data_start + begin, data_start + end))
    tensors.sort(key=lambda t: (t.start, t.end))
    position = data_start
    for info in tensors:
        if info.start != position or info.end < info.start:
            raise _corrupt(path, f"tensor data of {info.name!r} is not contiguous")
        position = info.end
    if position != size:
        raise _corrupt(path, f"expected {position} bytes, found {size}")
    return Header(path, prefix + header_bytes, metadata, {t.name: t for t in tensors})


class HashingWriter:
    """A binary file writer that keeps the sha256 of everything written."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.sha256 = hashlib.sha256()
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        self._handle.write(view)
        self.sha256.update(view)
        self.written += view.nbytes


def copy_range(source: BinaryIO, start: int, length: int, writer: HashingWriter) -> None:
    """Copy `length` bytes from `source` at `start` into `writer`, in bounded chunks."""
    source.seek(start)
    buffer = bytearray(min(COPY_CHUNK, max(length, 1)))
    remaining = length
    while remaining > 0:
        view = memoryview(buffer)[: min(len(buffer), remaining)]
        got = source.readinto(view)
        if not got:
            raise SGMError(f"{source.name} ended early while copying; it changed while being read")
        writer.write(view[:got])
        remaining -= got


# A fold receives one block of rows (in the stored dtype, shape [rows, ...]) and the index of its
# first row, and returns the block to store (same dtype and shape).
BlockFold = Callable[[torch.Tensor, int], torch.Tensor]


def fold_range(source: BinaryIO, info: TensorInfo, fold: BlockFold, writer: HashingWriter) -> None:
    """Read a tensor in row blocks, fold each and write it, so memory stays bounded."""
    dtype = DTYPES[info.dtype][0]
    if info.dtype not in FOLDABLE or dtype is None:
        raise SGMError(
            f"tensor {info.name!r} is stored as {info.dtype}; only F32, F16 and BF16 weights "
            "can be folded (quantized checkpoints are not supported: use the unquantized model)"
        )
    shape = info.shape if len(info.shape) > 1 else (*info.shape, 1)
    row_elements = 1
    for dim in shape[1:]:
        row_elements *= dim
    item = int(DTYPES[info.dtype][1])
    rows_per_block = max(1, FOLD_BLOCK_BYTES // max(1, row_elements * item))
    source.seek(info.start)
    for first_row in range(0, shape[0], rows_per_block):
        rows = min(rows_per_block, shape[0] - first_row)
        raw = bytearray(rows * row_elements * item)
        if source.readinto(raw) != len(raw):
            raise SGMError(f"{source.name} ended early while reading {info.name!r}")
        block = torch.frombuffer(raw, dtype=dtype).view(rows, *shape[1:])
        folded = fold(block, first_row)
        if folded.dtype != dtype or folded.shape != block.shape:
            raise AssertionError(f"fold changed dtype or shape of {info.name}")
        writer.write(folded.contiguous().view(torch.uint8).numpy())


def rewrite_file(
    header: Header,
    destination: Path,
    folds: dict[str, BlockFold],
    on_bytes: Callable[[int], None] | None = None,
) -> str:
    """Write `header.path` to `destination` with the tensors named in `folds` folded.

    Everything else, the header included, is copied byte for byte. Returns the sha256.
    """
    with header.path.open("rb") as source, destination.open("wb") as out:
        writer = HashingWriter(out)
        writer.write(header.raw)
        if on_bytes is not None:
            on_bytes(len(header.raw))
        for info in header.tensors.values():
            if info.name in folds:
                fold_range(source, info, folds[info.name], writer)
            else:
                copy_range(source, info.start, info.nbytes, writer)
            if on_bytes is not None:
                on_bytes(info.nbytes)
        out.flush()
        os.fsync(out.fileno())
    return writer.sha256.hexdigest()


def write_tensors(
    destination: Path,
    tensors: Iterable[tuple[str, torch.Tensor]],
    metadata: dict[str, str] | None = None,
) -> str:
    """Write named tensors as a safetensors file one tensor at a time; returns the sha256.

    Used for sources stored as PyTorch `.bin` shards. The tensors are iterated twice (header,
    then data), so pass a re-iterable (a list of memory-mapped tensors is fine).
    """
    items = list(tensors)
    entries: dict[str, Any] = {}
    if metadata is not None:
        entries["__metadata__"] = metadata
    offset = 0
    for name, tensor in items:
        if tensor.dtype not in TORCH_TO_TAG:
            raise SGMError(
                f"tensor {name!r} has dtype {tensor.dtype}, which safetensors cannot hold"
            )
        nbytes = tensor.numel() * tensor.element_size()
        entries[name] = {
            "dtype": TORCH_TO_TAG[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    header = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    header += b" " * (-len(header) % 8)
    with destination.open("wb") as out:
        writer = HashingWriter(out)
        writer.write(struct.pack("<Q", len(header)) + header)
        for _, tensor in items:
            flat = tensor.detach().contiguous().reshape(-1)
            if flat.numel():
                writer.write(flat.view(torch.uint8).numpy())
        out.flush()
        os.fsync(out.fileno())
    return writer.sha256.hexdigest()


def read_tensor(header: Header, name: str) -> torch.Tensor:
    """Read one tensor fully into memory (for small tensors and verification)."""
    info = header.tensors[name]
    dtype = DTYPES[info.dtype][0]
    if dtype is None:
        raise SGMError(f"tensor {name!r} has dtype {info.dtype}, which torch cannot represent")
    with header.path.open("rb") as handle:
        handle.seek(info.start)
        raw = bytearray(info.nbytes)
        handle.readinto(raw)
    return (
        torch.frombuffer(raw, dtype=dtype).view(info.shape)
        if raw
        else torch.empty(info.shape, dtype=dtype)
    )


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(COPY_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def iter_headers(paths: Iterable[Path]) -> Iterator[Header]:
    for path in paths:
        yield read_header(path)
