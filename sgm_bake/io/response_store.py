"""The response store: pooled unit responses of every profiled sample, on disk, resumable.

One folder holds `meta.json` (what was profiled: a fingerprint of model, set and capture
options, and each module's unit count and byte offset, listed in storage order),
`responses.f32` (one float32 block [samples, units] per module, back to back, memory-mapped) and
`progress.json` (how many samples, in set order, are complete). Batches are written in order and
progress is recorded only after a batch's rows are flushed, so an interrupted run resumes at the
first incomplete batch and gives the same result as an uninterrupted one.

The folder may be one the user names (`--responses-dir`), so the store owns only what it made:
`sgm-store.json` marks a folder as a store (and says whether the store created the folder), an
existing folder holding anything else is refused, and removing a store deletes its own files and
the folder only if the store created it. A run holds an exclusive lock (`flock` on `.lock`) for
as long as it uses the store: a second run on the same store is refused with one line instead
of reading, resetting or deleting it under the first."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from sgm_bake.errors import SGMError

try:
    import fcntl
except ImportError:  # Windows: no flock; stores are then not protected against a second run
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

META = "meta.json"
DATA = "responses.f32"
PROGRESS = "progress.json"
OWNER = "sgm-store.json"
LOCK = ".lock"
OWNER_TOOL = "sgm-bake response store"
# Every file a store writes (`_write_json` goes through a `.tmp` beside its target).
STORE_FILES = (META, DATA, PROGRESS, "meta.tmp", "progress.tmp", "sgm-store.tmp", OWNER, LOCK)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _layout(modules: dict[str, int], samples: int) -> list[dict[str, Any]]:
    """Each module's block in `responses.f32`, in the order the blocks are stored (the order of
    `modules`), with its byte offset, so the file can be read without this code."""
    layout = []
    offset = 0
    for name, units in modules.items():
        layout.append({"module": name, "units": units, "offset": offset})
        offset += units * samples * np.dtype(np.float32).itemsize
    return layout


def _is_store(folder: Path) -> bool:
    """Whether an existing folder may be used as a store: empty (or holding just the lock of a
    store another run is creating), marked as one, or holding exactly a store's files (stores
    written before the marker existed)."""
    names = {path.name for path in folder.iterdir()}
    if names <= {LOCK}:
        return True
    if OWNER in names:
        try:
            owner = json.loads((folder / OWNER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(owner, dict) and owner.get("tool") == OWNER_TOOL
    return {META, DATA, PROGRESS} <= names <= set(STORE_FILES)


def _lock(folder: Path) -> IO[str] | None:
    """Take the store's exclusive lock, or refuse: another run is using the store."""
    if fcntl is None:
        return None
    while True:
        handle = (folder / LOCK).open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise SGMError(
                f"response store {folder} is in use by another sgm-bake run (process {holder}); "
                "wait for it to finish, or give this run its own --responses-dir"
            ) from None
        try:  # the lock file may have been removed (with its store) while we waited
            same = os.fstat(handle.fileno()).st_ino == (folder / LOCK).stat().st_ino
        except FileNotFoundError:
            same = False
        if same:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            return handle
        handle.close()
        folder.mkdir(parents=True, exist_ok=True)


def _release(handle: IO[str] | None) -> None:
    if handle is not None:
        handle.close()  # closing the descriptor drops the flock


def _remove_files(folder: Path, keep_marker: bool = False) -> None:
    """Delete the store's own files (never anything else) and, when the store made the folder
    and nothing else is in it, the folder."""
    created = False
    with contextlib.suppress(OSError, ValueError):
        created = bool(json.loads((folder / OWNER).read_text(encoding="utf-8")).get("created"))
    for name in STORE_FILES:
        if keep_marker and name in (OWNER, LOCK):
            continue
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    if created and not keep_marker:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty: files someone else put there stay


def check_store_folder(folder: Path) -> None:
    """Refuse, before any model loads, a `--responses-dir` that holds other files or that
    another run is using (the same checks `ResponseStore.open` makes)."""
    if folder.exists() and not folder.is_dir():
        raise SGMError(f"response store {folder} is a file; pass a folder as --responses-dir")
    if not folder.is_dir():
        return
    if not _is_store(folder):
        raise SGMError(
            f"{folder} holds files that are not an sgm-bake response store; pass a new or "
            "empty folder as --responses-dir (sgm-bake deletes only what it created)"
        )
    if (folder / LOCK).is_file():
        _release(_lock(folder))


def discard_store(folder: Path) -> None:
    """Remove a store that is no longer needed, unless another run holds it."""
    if not folder.is_dir() or not _is_store(folder):
        return
    try:
        handle = _lock(folder)
    except SGMError:
        logger.warning("response store %s is in use by another run; left in place", folder)
        return
    try:
        _remove_files(folder)
    finally:
        _release(handle)


@dataclass
class ResponseStore:
    """Memory-mapped pooled responses for a fixed list of modules and samples."""

    folder: Path
    modules: dict[str, int]
    samples: int
    completed: int
    _data: np.memmap
    _lock: IO[str] | None = field(default=None, repr=False)

    @classmethod
    def open(
        cls, folder: Path, fingerprint: dict[str, Any], modules: dict[str, int], samples: int
    ) -> ResponseStore:
        """Resume the store in `folder` if it was made for the same fingerprint; else start anew.

        The store is locked until `close`; a folder holding anything but a store is refused."""
        existed = folder.is_dir()
        check_store_folder(folder)
        folder.mkdir(parents=True, exist_ok=True)
        lock = _lock(folder)
        try:
            if not (folder / OWNER).is_file():
                _write_json(folder / OWNER, {"tool": OWNER_TOOL, "created": not existed})
            return cls._open_locked(folder, fingerprint, modules, samples, lock)
        except BaseException:
            _release(lock)
            raise

    @classmethod
    def _open_locked(
        cls,
        folder: Path,
        fingerprint: dict[str, Any],
        modules: dict[str, int],
        samples: int,
        lock: IO[str] | None,
    ) -> ResponseStore:
        meta = {
            "fingerprint": fingerprint,
            "modules": _layout(modules, samples),
            "samples": samples,
        }
        total = sum(modules.values()) * samples
        existing = folder / META
        if existing.is_file():
            try:
                previous = json.loads(existing.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                previous = None
            progress_file = folder / PROGRESS
            if previous == meta and progress_file.is_file() and (folder / DATA).is_file():
                completed = int(json.loads(progress_file.read_text())["completed"])
                data = np.memmap(folder / DATA, dtype=np.float32, mode="r+", shape=(total,))
                logger.warning(
                    "resuming the profile of %s from the response store %s: %d of %d samples "
                    "are already stored",
                    fingerprint.get("source", "the model"),
                    folder,
                    completed,
                    samples,
                )
                return cls(folder, modules, samples, completed, data, lock)
            logger.warning("response store %s belongs to another run; starting it anew", folder)
            _remove_files(folder, keep_marker=True)
        data = np.memmap(folder / DATA, dtype=np.float32, mode="w+", shape=(max(total, 1),))
        _write_json(folder / META, meta)
        _write_json(folder / PROGRESS, {"completed": 0})
        return cls(folder, modules, samples, 0, data, lock)

    def _block(self, module: str) -> np.ndarray:
        offset = 0
        for name, units in self.modules.items():
            if name == module:
                return self._data[offset : offset + units * self.samples].reshape(
                    self.samples, units
                )
            offset += units * self.samples
        raise KeyError(module)

    def write_batch(self, start: int, responses: dict[str, np.ndarray]) -> None:
        """Store the pooled responses of samples [start, start + batch) and mark them complete."""
        if start != self.completed:
            raise ValueError(f"batch starts at {start}, but {self.completed} samples are complete")
        count = None
        for module, values in responses.items():
            self._block(module)[start : start + values.shape[0]] = values
            count = values.shape[0]
        if count is None or set(responses) != set(self.modules):
            raise ValueError("a batch must hold responses for every module")
        self._data.flush()
        self.completed = start + count
        _write_json(self.folder / PROGRESS, {"completed": self.completed})

    def write_rows(self, module: str, start: int, values: np.ndarray) -> None:
        """Store one module's rows for samples [start, start + len(values)) without marking them
        complete (merging ranks' parts module by module); `mark_completed` follows."""
        self._block(module)[start : start + values.shape[0]] = values

    def mark_completed(self, count: int) -> None:
        """Flush and record that the first `count` samples hold every module's rows."""
        self._data.flush()
        self.completed = count
        _write_json(self.folder / PROGRESS, {"completed": self.completed})

    def responses(self, module: str) -> np.ndarray:
        """[samples, units] responses of one module (a view into the memory map)."""
        if self.completed != self.samples:
            raise ValueError(f"only {self.completed} of {self.samples} samples are profiled")
        return self._block(module)

    def close(self, remove: bool = False) -> None:
        """Flush and unlock; with `remove`, delete the store's files first (and its folder, if
        the store created it)."""
        try:
            self._data.flush()
            del self._data
            if remove:
                _remove_files(self.folder)
        finally:
            _release(self._lock)
            self._lock = None
