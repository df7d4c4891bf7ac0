"""Streaming safetensors reading and writing in the file's own byte layout.

The bake rewrites a shard as: the source header verbatim (names, dtypes, shapes, offsets and
`__metadata__` unchanged), then every tensor's bytes in file order, copied as they are unless the
tensor is targeted, in which case it is folded block by block. Peak memory is a few chunks, not
the shard. The header is parsed here (8-byte little-endian length + JSON) so that a truncated or
corrupt file is caught before anything is written.

The source is read with `pread` into buffers, never through a memory map: a shard that another
process truncates while it is baked would make every touched page past its new end a SIGBUS
that kills the process without a word. A short read, or a file whose identity (device, inode,
size, modification time) differs from the one its header was read from, is one error naming the
file instead; the check runs before the first byte and between chunks.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from sgm_bake.errors import SGMError
from sgm_bake.io import interrupts

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
COPY_CHUNK = 16 * 1024 * 1024
FOLD_BLOCK_BYTES = 1024 * 1024
WRITE_CHUNK_BYTES = 16 * 1024 * 1024


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


FileIdentity = tuple[int, int, int, int]
"""(device, inode, size, modification time in ns) of a file when its header was read."""


def file_identity(stat: os.stat_result) -> FileIdentity:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class Header:
    """A parsed safetensors header."""

    path: Path
    raw: bytes
    metadata: dict[str, str] | None
    tensors: dict[str, TensorInfo]
    identity: FileIdentity | None = None
    """The file as it was when the header was read; a bake refuses it if it changed since."""

    @property
    def data_start(self) -> int:
        return len(self.raw)


def _corrupt(path: Path, why: str) -> SGMError:
    return SGMError(
        f"{path} is not a valid safetensors file ({why}); it is truncated or corrupt: "
        "download or copy it again"
    )


def unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object hook that refuses a key given twice (json keeps the last one silently,
    which in a header would hide a tensor)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the name {key[:80]!r} appears twice")
        result[key] = value
    return result


def _whole(value: Any) -> bool:
    """A JSON integer that is not a boolean (json turns `true` into True, an int subclass)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(path: Path, name: str, entry: Any, data_start: int) -> TensorInfo:
    """One header entry, every field checked before it is used."""
    if not isinstance(entry, dict):
        raise _corrupt(path, f"entry for {name[:80]!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise _corrupt(path, f"{name[:80]!r} has unknown dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or not all(_whole(d) and d >= 0 for d in shape):
        raise _corrupt(path, f"{name[:80]!r} has a shape that is not a list of whole numbers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_whole(o) and o >= 0 for o in offsets)
        or offsets[1] < offsets[0]
    ):
        raise _corrupt(path, f"{name[:80]!r} has data_offsets that are not [begin, end]")
    numel = 1
    for dim in shape:
        numel *= dim
    bits = numel * int(DTYPES[dtype][1] * 8)  # integer arithmetic: shapes may be absurdly large
    if bits % 8 or bits // 8 != offsets[1] - offsets[0]:
        raise _corrupt(
            path, f"{name[:80]!r} has {offsets[1] - offsets[0]} bytes for shape {shape[:8]}"
        )
    return TensorInfo(name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def read_header(path: Path) -> Header:
    """Parse and validate a safetensors header, including that the file is complete.

    Every field is checked before it is used (a known dtype, a shape of whole numbers, offsets
    that match dtype and shape and tile the data without gaps, a string-to-string
    `__metadata__`, no name twice), so a damaged file is refused before any output is written.
    """
    try:
        with path.open("rb") as handle:
            identity = file_identity(os.fstat(handle.fileno()))
            size = identity[2]
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
        entries = json.loads(header_bytes.decode("utf-8"), object_pairs_hook=unique_object)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, duplicates
        reason = str(exc).splitlines()[0][:100] if isinstance(exc, ValueError) else "nested"
        raise _corrupt(path, f"header is not JSON: {reason}") from exc
    if not isinstance(entries, dict):
        raise _corrupt(path, "header is not a JSON object")
    metadata = entries.pop("__metadata__", None)
    if metadata is not None and (
        not isinstance(metadata, dict)
        or not all(isinstance(value, str) for value in metadata.values())
    ):
        raise _corrupt(path, "__metadata__ is not a map of strings to strings")
    data_start = 8 + length
    tensors = [_entry(path, name, entry, data_start) for name, entry in entries.items()]
    tensors.sort(key=lambda t: (t.start, t.end))
    position = data_start
    for info in tensors:
        if info.start != position:
            raise _corrupt(path, f"tensor data of {info.name[:80]!r} is not contiguous")
        position = info.end
    if position != size:
        raise _corrupt(path, f"expected {position} bytes, found {size}")
    return Header(path, prefix + header_bytes, metadata, {t.name: t for t in tensors}, identity)


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


class BackgroundHasher:
    """sha256 of a byte stream fed in order, computed on a second thread.

    hashlib releases the GIL on large buffers, so hashing overlaps with the reading, folding and
    writing done by the caller. The queue is bounded; fed buffers must not change afterwards.
    """

    def __init__(self, depth: int = 8) -> None:
        self._queue: queue.Queue[memoryview | None] = queue.Queue(maxsize=depth)
        self._digest = hashlib.sha256()
        self._thread = threading.Thread(target=self._run, name="sgm-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._digest.update(item)
            item.release()

    def feed(self, data: memoryview) -> None:
        self._queue.put(data)

    def hexdigest(self) -> str:
        self._queue.put(None)
        self._thread.join()
        return self._digest.hexdigest()

    def abandon(self) -> None:
        """Stop the thread after an error, dropping what is queued."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item.release()
        self._queue.put(None)
        self._thread.join()


# A fold receives a block of rows of a tensor (stored dtype, shape [rows, ...]) and the index of
# its first row, and returns the scaled block (any float dtype); the writer rounds it once to the
# stored dtype.
BlockFold = Callable[[torch.Tensor, int], torch.Tensor]


def _changed(header: Header) -> SGMError:
    return SGMError(
        f"{header.path} changed while it was being read (another process is writing, moving or "
        "truncating it): nothing was written; wait until it is complete, then bake again"
    )


def _check_unchanged(source: int, header: Header) -> None:
    """Refuse a source file that is no longer the one whose header was read."""
    if header.identity is not None and file_identity(os.fstat(source)) != header.identity:
        raise _changed(header)


def _read_into(source: int, buffer: memoryview, offset: int, header: Header) -> None:
    """Fill `buffer` from `offset` of the source file; a short read means it was truncated."""
    done = 0
    while done < buffer.nbytes:
        if hasattr(os, "preadv"):
            count = os.preadv(source, [buffer[done:]], offset + done)
        else:  # no preadv (some macOS builds): read, then copy into the buffer
            data = os.pread(source, buffer.nbytes - done, offset + done)
            count = len(data)
            buffer[done : done + count] = data
        if count <= 0:
            raise _changed(header)
        done += count


def _write_all(destination: int, data: memoryview) -> None:
    while data.nbytes:
        written = os.write(destination, data)
        data = data[written:]


def _copy_range(
    source: int, destination: int, info: TensorInfo, header: Header, hasher: BackgroundHasher
) -> None:
    """Copy a tensor's bytes in chunks read with `pread` (a truncated source is a short read, not
    a SIGBUS), hashing each chunk as it is written."""
    position = info.start
    while position < info.end:
        interrupts.check()  # chunks of COPY_CHUNK: a signal stops a worker within one
        _check_unchanged(source, header)
        chunk = memoryview(bytearray(min(COPY_CHUNK, info.end - position)))
        _read_into(source, chunk, position, header)
        _write_all(destination, chunk)
        hasher.feed(chunk)
        position += chunk.nbytes


def _row_shape(info: TensorInfo) -> tuple[int, ...]:
    """The shape a tensor streams in: rows along its first axis. A bias [n] streams as [n, 1];
    stacked experts [E, a, b] as rows of [E * a, b], so a block never has to hold a whole expert
    matrix (tens of MB in the largest MoE models)."""
    if len(info.shape) == 1:
        return (*info.shape, 1)
    if len(info.shape) == 3:
        return (info.shape[0] * info.shape[1], info.shape[2])
    return info.shape


def fold_range(
    source: int,
    info: TensorInfo,
    fold: BlockFold,
    out: int,
    hasher: BackgroundHasher,
    header: Header,
) -> None:
    """Fold a tensor in cache-sized row blocks, writing each output chunk as it fills.

    Each chunk of rows is read with `pread` into a fresh buffer, folded block by block in place
    (small blocks, about 1 MB, keep the float32 intermediate in cache, which makes the fold
    several times faster than converting whole tensors), then written and hashed.
    """
    dtype = DTYPES[info.dtype][0]
    if info.dtype not in FOLDABLE or dtype is None:
        raise SGMError(
            f"tensor {info.name!r} is stored as {info.dtype}; only F32, F16 and BF16 weights "
            "can be folded (quantized checkpoints are not supported: use the unquantized model)"
        )
    shape = _row_shape(info)
    rows = shape[0]
    row_bytes = max(1, info.nbytes // max(1, rows))
    block_rows = max(1, FOLD_BLOCK_BYTES // row_bytes)
    chunk_rows = max(block_rows, (WRITE_CHUNK_BYTES // row_bytes) // block_rows * block_rows)
    for chunk_start in range(0, rows, chunk_rows):
        interrupts.check()
        _check_unchanged(source, header)
        chunk_stop = min(rows, chunk_start + chunk_rows)
        raw = bytearray((chunk_stop - chunk_start) * row_bytes)
        data = memoryview(raw)
        _read_into(source, data, info.start + chunk_start * row_bytes, header)
        chunk = torch.frombuffer(raw, dtype=dtype).view(chunk_stop - chunk_start, *shape[1:])
        for block_start in range(chunk_start, chunk_stop, block_rows):
            block_stop = min(chunk_stop, block_start + block_rows)
            rows_in_chunk = slice(block_start - chunk_start, block_stop - chunk_start)
            folded = fold(chunk[rows_in_chunk], block_start)
            if folded.shape != (block_stop - block_start, *shape[1:]):
                raise AssertionError(f"fold changed the shape of {info.name}")
            chunk[rows_in_chunk] = folded
        _write_all(out, data)
        hasher.feed(data)


def rewrite_file(
    header: Header,
    destination: Path,
    folds: dict[str, BlockFold],
    on_bytes: Callable[[int], None] | None = None,
) -> str:
    """Write `header.path` to `destination` with the tensors named in `folds` folded.

    Everything else, the header included, is copied byte for byte. Returns the sha256. A source
    that changes while it is read (truncated, rewritten, replaced) is refused with one error.
    """
    interrupts.check()  # a queued shard does not start after a signal
    with header.path.open("rb") as source, destination.open("wb", buffering=0) as out:
        _check_unchanged(source.fileno(), header)
        hasher = BackgroundHasher()
        try:
            out.write(header.raw)
            hasher.feed(memoryview(header.raw))
            if on_bytes is not None:
                on_bytes(header.data_start)
            for info in header.tensors.values():
                if info.name in folds:
                    fold_range(
                        source.fileno(), info, folds[info.name], out.fileno(), hasher, header
                    )
                else:
                    _copy_range(source.fileno(), out.fileno(), info, header, hasher)
                if on_bytes is not None:
                    on_bytes(info.nbytes)
            _check_unchanged(source.fileno(), header)
            digest = hasher.hexdigest()
        except BaseException:
            hasher.abandon()
            raise
    return digest


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
                writer.write(flat.view(torch.uint8).numpy().data)
        out.flush()
        os.fsync(out.fileno())
    return writer.sha256.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(COPY_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
