"""The one reader of single checkpoint tensors, for every step that reads a tensor outside the
bake's stream (verification, unbake's comparison): safetensors shards memory-mapped once, `.bin`
shards loaded through torch."""

from __future__ import annotations

import contextlib
import mmap
import threading
import warnings
from typing import Any

import numpy as np
import torch

from sgm_bake.errors import SGMError
from sgm_bake.io.checkpoint import Checkpoint, load_bin
from sgm_bake.io.safetensors import DTYPES


class TensorSource:
    """Reads single tensors of a checkpoint lazily.

    safetensors shards are memory-mapped once and a tensor is converted straight from the mapped
    pages (file-backed page cache, not process memory) into the dtype asked for: one pass over
    its bytes and no intermediate copy."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.files = checkpoint.tensor_keys()
        self._maps: dict[str, mmap.mmap] = {}
        self._bin_cache: tuple[str, dict[str, Any]] | None = None
        self._lock = threading.Lock()  # the layer reader and the main thread both read

    def __contains__(self, key: str) -> bool:
        return key in self.files

    def shape(self, key: str) -> tuple[int, ...]:
        if self.checkpoint.format == "safetensors":
            return self.checkpoint.headers[self.files[key]].tensors[key].shape
        return tuple(self.read(key).shape)

    def _stored(self, key: str) -> torch.Tensor:
        """The tensor under `key` as stored: a read-only view of the mapped file (safetensors)
        or of the loaded shard (.bin). Never written through."""
        name = self.files[key]
        if self.checkpoint.format != "safetensors":
            # .bin shards are memory-mapped by torch; keep the last one open.
            with self._lock:
                if self._bin_cache is None or self._bin_cache[0] != name:
                    self._bin_cache = (name, load_bin(self.checkpoint.root / name))
                tensor: torch.Tensor = self._bin_cache[1][key]
            return tensor
        info = self.checkpoint.headers[name].tensors[key]
        stored = DTYPES[info.dtype][0]
        if stored is None:
            raise SGMError(f"tensor {key!r} has dtype {info.dtype}, which torch cannot represent")
        raw = np.frombuffer(self._map(name), dtype=np.uint8, count=info.nbytes, offset=info.start)
        with warnings.catch_warnings():  # a read-only view, never written through
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(raw).view(stored).view(info.shape)

    def _map(self, name: str) -> mmap.mmap:
        with self._lock:
            if name not in self._maps:
                with (self.checkpoint.root / name).open("rb") as handle:
                    self._maps[name] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            return self._maps[name]

    def read(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor under `key`, as a new tensor in `dtype` (default: its stored dtype)."""
        stored = self._stored(key)
        return stored.to(dtype or stored.dtype, copy=True)

    def read_into(self, key: str, out: torch.Tensor) -> None:
        """Convert the tensor under `key` into `out` (same shape): one pass over its bytes, into
        memory that is already there (no new pages per layer)."""
        out.copy_(self._stored(key))

    def prefetch(self, key: str) -> None:
        """Ask the kernel to start reading `key`'s bytes from disk now (a cold page cache is then
        read while the layer before it computes); a hint only."""
        if self.checkpoint.format != "safetensors" or not hasattr(mmap, "MADV_WILLNEED"):
            return
        name = self.files[key]
        info = self.checkpoint.headers[name].tensors[key]
        start = info.start - info.start % mmap.PAGESIZE
        with contextlib.suppress(OSError, ValueError):
            self._map(name).madvise(mmap.MADV_WILLNEED, start, info.start + info.nbytes - start)

    def close(self) -> None:
        for mapped in self._maps.values():
            with contextlib.suppress(BufferError):
                mapped.close()
        self._maps.clear()
        self._bin_cache = None
