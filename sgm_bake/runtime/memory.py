"""Memory budgets and measured peaks: `--max-memory` parsing, sizes, and a peak tracker.

Budgets use accelerate's size syntax and meaning (`70GiB` = 70 * 2^30 bytes, `70GB` = 70 * 10^9),
so a `--max-memory` that sgm-bake accepts is exactly what accelerate's device maps receive.

Peaks are measured, not estimated: host memory as the process's anonymous resident memory
(`RssAnon` in /proc/self/status: what the process itself allocated, excluding the page cache of
memory-mapped checkpoint files, which the kernel can drop at will) sampled on a background thread,
and GPU memory as torch's own `max_memory_allocated` per device.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from sgm_bake.errors import SGMError

logger = logging.getLogger(__name__)

STATUS_FILE = Path("/proc/self/status")
SAMPLE_SECONDS = 0.02


def parse_size(text: str) -> int:
    """`500M`, `5G`, `70GiB`, `70GB` or a plain byte count -> bytes (accelerate's meaning)."""
    from accelerate.utils import convert_file_size_to_int

    cleaned = text.strip()
    if cleaned.isdigit():
        return int(cleaned)
    if cleaned[-1:].upper() in "KMGT" and cleaned[-1:].isalpha():
        cleaned = f"{cleaned}iB"  # a bare suffix (5G) means binary units, as du and free do
    try:
        return int(convert_file_size_to_int(cleaned))
    except (ValueError, TypeError) as exc:
        raise SGMError(f"{text!r} is not a size; write it like 500MiB, 70GiB or 1TB") from exc


def parse_max_memory(text: str | None) -> dict[int | str, int]:
    """`0=70GiB,1=70GiB,cpu=200GiB` -> {0: bytes, 1: bytes, 'cpu': bytes} (accelerate's form).

    Keys are GPU indices, `cpu` or `mps`; `disk` is not a budget (offloading to disk needs only
    --offload-folder)."""
    budgets: dict[int | str, int] = {}
    if not text:
        return budgets
    for part in text.split(","):
        device, sep, size = part.strip().partition("=")
        device = device.strip().lower()
        if not sep or not size.strip():
            raise SGMError(
                f"--max-memory entry {part.strip()!r} is not DEVICE=SIZE; write it like "
                "0=70GiB,1=70GiB,cpu=200GiB"
            )
        key: int | str
        if device.isdigit():
            key = int(device)
        elif device.startswith("cuda:") and device[5:].isdigit():
            key = int(device[5:])
        elif device in ("cpu", "mps"):
            key = device
        else:
            raise SGMError(
                f"--max-memory names device {device!r}; use GPU indices (0, 1, ...), cpu or mps"
            )
        if key in budgets:
            raise SGMError(f"--max-memory names device {device!r} twice; give each device once")
        budgets[key] = parse_size(size)
    return budgets


def format_bytes(count: float) -> str:
    """Bytes in binary units with about three significant figures (`13.5 GiB`)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            if unit == "B" or abs(count) >= 100:
                return f"{count:.0f} {unit}"
            return f"{count:.1f} {unit}" if abs(count) >= 10 else f"{count:.2f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def rss_anon() -> int | None:
    """The process's anonymous resident memory in bytes (Linux), or None elsewhere."""
    try:
        for line in STATUS_FILE.read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class PeakMemory:
    """Tracks the peak host RssAnon and per-GPU allocation while a stage runs; a context manager.

    Host memory is sampled every 20 ms on a daemon thread (allocations that live shorter than
    that can be missed; the tensors that set a stage's peak live far longer). GPU peaks come from
    torch's allocator statistics, reset on entry.
    """

    stage: str
    seconds: float = 0.0
    host_peak: int = 0
    host_start: int = 0
    gpu_peaks: dict[str, int] = field(default_factory=dict)
    _started: float = field(default=0.0, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            current = rss_anon()
            if current is not None and current > self.host_peak:
                self.host_peak = current

    def __enter__(self) -> PeakMemory:
        self._started = time.perf_counter()
        self.host_start = rss_anon() or 0
        self.host_peak = self.host_start
        cuda = _cuda()
        if cuda is not None:
            for index in range(cuda.device_count()):
                cuda.reset_peak_memory_stats(index)
        self._thread = threading.Thread(target=self._sample, name="sgm-peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.seconds = time.perf_counter() - self._started
        current = rss_anon()
        if current is not None:
            self.host_peak = max(self.host_peak, current)
        cuda = _cuda()
        if cuda is not None:
            for index in range(cuda.device_count()):
                self.gpu_peaks[f"cuda:{index}"] = int(cuda.max_memory_allocated(index))
        logger.info("%s: peak host RssAnon %s", self.stage, format_bytes(self.host_peak))

    def record(self) -> dict[str, Any]:
        """The JSON form stored in the bake record under `memory.<stage>`."""
        return {
            "seconds": round(self.seconds, 3),
            "host_peak_rss_anon_bytes": self.host_peak,
            "host_start_rss_anon_bytes": self.host_start,
            "gpu_peak_allocated_bytes": dict(self.gpu_peaks),
        }


def _cuda() -> Any:
    """torch.cuda when torch is imported and CUDA is present, else None (never imports torch)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda
