"""The response store: pooled unit responses of every profiled sample, on disk, resumable.

One folder holds `meta.json` (what was profiled: a fingerprint of model, set and capture
options, and each module's unit count and byte offset, listed in storage order),
`responses.f32` (one float32 block [samples, units] per module, back to back, memory-mapped) and
`progress.json` (how many samples, in set order, are complete). Batches are written in order and
progress is recorded only after a batch's rows are flushed, so an interrupted run resumes at the
first incomplete batch and gives the same result as an uninterrupted one."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

META = "meta.json"
DATA = "responses.f32"
PROGRESS = "progress.json"


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


@dataclass
class ResponseStore:
    """Memory-mapped pooled responses for a fixed list of modules and samples."""

    folder: Path
    modules: dict[str, int]
    samples: int
    completed: int
    _data: np.memmap

    @classmethod
    def open(
        cls, folder: Path, fingerprint: dict[str, Any], modules: dict[str, int], samples: int
    ) -> ResponseStore:
        """Resume the store in `folder` if it was made for the same fingerprint; else start anew."""
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
                logger.info("resuming profile at sample %d of %d", completed, samples)
                return cls(folder, modules, samples, completed, data)
            logger.warning("response store %s belongs to another run; starting it anew", folder)
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = np.memmap(folder / DATA, dtype=np.float32, mode="w+", shape=(max(total, 1),))
        _write_json(folder / META, meta)
        _write_json(folder / PROGRESS, {"completed": 0})
        return cls(folder, modules, samples, 0, data)

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

    def responses(self, module: str) -> np.ndarray:
        """[samples, units] responses of one module (a view into the memory map)."""
        if self.completed != self.samples:
            raise ValueError(f"only {self.completed} of {self.samples} samples are profiled")
        return self._block(module)

    def close(self) -> None:
        self._data.flush()
        del self._data
