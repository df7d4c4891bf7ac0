"""Memory budgets and measured peaks: `--max-memory` parsing, sizes, and a peak tracker.

Budgets use accelerate's size syntax and meaning (`70GiB` = 70 * 2^30 bytes, `70GB` = 70 * 10^9),
so a `--max-memory` that sgm-bake accepts is exactly what accelerate's device maps receive.

Peaks are measured, not estimated: host memory as the process's anonymous resident memory
(`RssAnon` in /proc/self/status: what the process itself allocated, excluding the page cache of
memory-mapped checkpoint files, which the kernel can drop at will) sampled on a background thread,
and GPU memory as torch's own allocator statistics per device.

Measuring never stops the work it measures: every call into /proc or torch.cuda here is wrapped
(`measured`), so a failure (a CUDA build whose statistics cannot be reset, a kernel without
RssAnon) logs a warning and the figure is left out, while the stage runs on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from sgm_bake.errors import SGMError

logger = logging.getLogger(__name__)

STATUS_FILE = Path("/proc/self/status")
SAMPLE_SECONDS = 0.02
T = TypeVar("T")


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


def measured(what: str, call: Callable[[], T], default: T) -> T:
    """`call()`, or `default` when it fails: a measurement or log figure never stops a run.

    The failure is logged as a warning naming what could not be measured (and the cause), so a
    broken measurement is visible without costing the user the work it was measuring."""
    try:
        return call()
    except Exception as exc:  # any failure of a measurement only loses that figure
        logger.warning(
            "could not %s (%s: %s); going on without that figure", what, type(exc).__name__, exc
        )
        return default


def rss_anon() -> int | None:
    """The process's anonymous resident memory in bytes (Linux), or None elsewhere."""
    try:
        for line in STATUS_FILE.read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class PeakMemory:
    """Tracks the peak host RssAnon and per-GPU memory while a stage runs; a context manager.

    Host memory is sampled every 20 ms on a daemon thread (allocations that live shorter than
    that can be missed; the tensors that set a stage's peak live far longer). GPU peaks come from
    torch's allocator statistics, reset on entry when CUDA is already initialised (before that
    nothing is allocated, so the counters that start at CUDA's initialisation are the stage's
    own); a device whose statistics cannot be reset is left out of the record.

    Both the start and the peak are recorded, so a stage that starts with memory held by an
    earlier one (the one-command form runs several stages in one process) reports what it added
    on top (`*_above_start_bytes`) as well as the process's absolute peak.
    """

    stage: str
    seconds: float = 0.0
    host_peak: int = 0
    host_start: int = 0
    gpu_peaks: dict[str, int] = field(default_factory=dict)
    gpu_reserved_peaks: dict[str, int] = field(default_factory=dict)
    gpu_starts: dict[str, int] = field(default_factory=dict)
    gpu_context: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    """Figures a stage adds to its record (throughput, batch size)."""
    _started: float = field(default=0.0, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _skipped: set[int] = field(default_factory=set, repr=False)

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            current = rss_anon()
            if current is not None and current > self.host_peak:
                self.host_peak = current

    def __enter__(self) -> PeakMemory:
        self._started = time.perf_counter()
        self.host_start = measured("read the process's memory", lambda: rss_anon() or 0, 0)
        self.host_peak = self.host_start
        measured("reset the GPU memory statistics", self._reset_gpus, None)

        def start_sampler() -> None:
            self._thread = threading.Thread(
                target=self._sample, name="sgm-peak-memory", daemon=True
            )
            self._thread.start()

        measured("start the memory sampler", start_sampler, None)
        return self

    def _reset_gpus(self) -> None:
        cuda = _cuda(initialised=True)
        if cuda is None:
            return  # nothing allocated on a GPU yet: the counters start at zero
        for index in range(cuda.device_count()):
            try:
                cuda.reset_peak_memory_stats(index)
                self.gpu_starts[f"cuda:{index}"] = int(cuda.memory_allocated(index))
            except Exception as exc:  # this device's figures are left out, the stage runs on
                self._skipped.add(index)
                logger.warning(
                    "could not reset the memory statistics of cuda:%d (%s: %s); its peak is "
                    "left out of the %s record",
                    index,
                    type(exc).__name__,
                    exc,
                    self.stage,
                )

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            measured("stop the memory sampler", self._thread.join, None)
        self.seconds = time.perf_counter() - self._started
        current = measured("read the process's memory", rss_anon, None)
        if current is not None:
            self.host_peak = max(self.host_peak, current)
        measured("read the GPU memory statistics", self._read_gpus, None)
        logger.info("%s: peak host RssAnon %s", self.stage, format_bytes(self.host_peak))

    def _read_gpus(self) -> None:
        cuda = _cuda(initialised=True)
        if cuda is None:
            return
        for index in range(cuda.device_count()):
            if index in self._skipped:
                continue
            name = f"cuda:{index}"
            try:
                self.gpu_peaks[name] = int(cuda.max_memory_allocated(index))
                self.gpu_reserved_peaks[name] = int(cuda.max_memory_reserved(index))
                if self.gpu_reserved_peaks[name]:  # asking an unused GPU would open a context
                    free, total = cuda.mem_get_info(index)
                    # What the device holds beyond torch's cache: the CUDA context (and, on a
                    # shared GPU, other processes).
                    self.gpu_context[name] = max(
                        0, int(total) - int(free) - int(cuda.memory_reserved(index))
                    )
            except Exception as exc:  # this device's figures are left out, the stage runs on
                self.gpu_peaks.pop(name, None)
                self.gpu_reserved_peaks.pop(name, None)
                logger.warning(
                    "could not read the memory statistics of %s (%s: %s); left out of the %s "
                    "record",
                    name,
                    type(exc).__name__,
                    exc,
                    self.stage,
                )

    def record(self) -> dict[str, Any]:
        """The JSON form stored in the bake record under `stages.<stage>`."""
        return {
            "seconds": round(self.seconds, 3),
            "host_peak_rss_anon_bytes": self.host_peak,
            "host_start_rss_anon_bytes": self.host_start,
            "host_peak_above_start_bytes": max(0, self.host_peak - self.host_start),
            "gpu_peak_allocated_bytes": dict(self.gpu_peaks),
            "gpu_start_allocated_bytes": {
                name: self.gpu_starts.get(name, 0) for name in self.gpu_peaks
            },
            "gpu_peak_above_start_bytes": {
                name: max(0, peak - self.gpu_starts.get(name, 0))
                for name, peak in self.gpu_peaks.items()
            },
            "gpu_peak_reserved_bytes": dict(self.gpu_reserved_peaks),
            "gpu_context_bytes": dict(self.gpu_context),
            **self.extra,
        }


def _cuda(initialised: bool = False) -> Any:
    """torch.cuda when torch is imported and CUDA is present (and, with `initialised`, already
    initialised in this process), else None. Never imports torch, never initialises CUDA."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        if initialised and not torch.cuda.is_initialized():
            return None
    except Exception as exc:  # a broken CUDA install: no GPU figures
        logger.warning("CUDA state unreadable (%s: %s); no GPU figures", type(exc).__name__, exc)
        return None
    return torch.cuda
