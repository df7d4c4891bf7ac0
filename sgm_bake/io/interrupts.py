"""SIGINT and SIGTERM: honoured at any moment, never lost, never half-applied.

Python delivers signals to the main thread only, while a bake folds and hashes on worker
threads. `handling()` (installed by the CLI around every command) turns either signal into an
`Interrupted` exception in the main thread and sets a flag that the workers poll (`check()`)
between blocks, so they stop within a block instead of finishing their shard. Exit codes follow
the shell's convention, 128 + the signal number: 130 for SIGINT, 143 for SIGTERM.

Code that must not be cut in half (the renames that swap a finished output into place) runs
under `shielded()`: a signal arriving there is recorded, the block sees it with `requested()`
and can undo its work, and the exception is raised when the block ends. A second signal while
the first is being handled is recorded, not raised, so cleanup is never cut short.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by SIGINT or SIGTERM (a KeyboardInterrupt, so code that cleans up
    after Ctrl-C cleans up after SIGTERM too)."""

    def __init__(
        self, signum: int = signal.SIGINT, completed: bool = False, note: str = ""
    ) -> None:
        super().__init__(signum)
        self.signum = signum
        # True when the signal came after the output had already been put in place.
        self.completed = completed
        # What the interrupted step kept and how to go on, for the one line the CLI prints.
        self.note = note

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


@dataclass
class _State:
    """What the handler has seen; one per process, since signal handlers are per process."""

    event: threading.Event = field(default_factory=threading.Event)
    signum: int = 0
    shield: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


_STATE = _State()


def _handler(signum: int, frame: FrameType | None) -> None:
    first = not _STATE.event.is_set()
    if first:
        _STATE.signum = signum
        _STATE.event.set()
    if first and _STATE.shield == 0:
        raise Interrupted(signum)


def requested() -> bool:
    """Whether SIGINT or SIGTERM has arrived (safe to call from any thread)."""
    return _STATE.event.is_set()


def check() -> None:
    """Raise `Interrupted` if a signal has arrived; worker threads call this between blocks."""
    if _STATE.event.is_set():
        raise Interrupted(_STATE.signum or signal.SIGINT)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Run a block that must not be cut in half; a signal inside it is raised when it ends."""
    with _STATE.lock:
        _STATE.shield += 1
    try:
        yield
    finally:
        with _STATE.lock:
            _STATE.shield -= 1
    if _STATE.shield == 0:
        check()


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Install the SIGINT and SIGTERM handlers for the block (main thread only; elsewhere, a
    no-op). A signal is remembered only inside the block: code that runs after it in the same
    process (a test session, a notebook) does not see it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _forget()
    previous: dict[signal.Signals, Any] = {}
    for handled in HANDLED:
        previous[handled] = signal.signal(handled, _handler)
    try:
        yield
    finally:
        for handled, handler in previous.items():
            signal.signal(handled, handler)
        _forget()


def _forget() -> None:
    _STATE.event.clear()
    _STATE.signum = 0
    _STATE.shield = 0
