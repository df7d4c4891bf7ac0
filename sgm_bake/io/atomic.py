"""Atomic output folders: build in a hidden temporary folder beside the target, rename at the end.

A failed or interrupted run removes its temporary folder and leaves the target as it was; an
existing target is replaced only after the new folder is complete. The swap runs shielded from
SIGINT/SIGTERM (see `sgm_bake.io.interrupts`): a signal during it undoes it.

A run killed outright (SIGKILL, power loss) cannot clean up. Each temporary folder therefore has
a marker file beside it (`.OUT.XXXXXXXX.partial.sgm-bake`, naming the folder, its output, the
process and the host), written in the same shielded step that creates the folder, and the next
run on the same OUT removes the folders so marked, and only those, unless the process that made
them is still running. A marked `.old` folder (the previous OUT, moved aside during the swap) is
put back if OUT is missing. Names are matched exactly, so the temporary folders of an output
`a.b` are never taken for those of `a`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sgm_bake.errors import SGMError
from sgm_bake.io import interrupts

logger = logging.getLogger(__name__)

MARKER_SUFFIX = ".sgm-bake"
# `.OUT.` + the 8 characters of tempfile.mkdtemp's random name + `.partial` or `.old`.
TEMPORARY_NAME = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.(?:partial|old)")
MARKER_TOOL = "sgm-bake temporary folder"
OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or choose another location",
    errno.EDQUOT: "the disk quota is exhausted: free some space or choose another location",
    errno.EFBIG: "the file size limit was reached: raise the limit or choose another location",
    errno.EROFS: "the file system is read-only: choose a writable location",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter output path",
    errno.ENOTDIR: "a parent of the path is a file, not a folder: choose another path",
    errno.EEXIST: "a parent of the path is a file, not a folder: choose another path",
    errno.EACCES: "permission denied: choose a location you can write to",
    errno.EPERM: "operation not permitted: choose a location you can write to",
}


def describe_os_error(exc: OSError, path: Path) -> str:
    """One line naming the path and the cause of an operating-system failure."""
    where = exc.filename if exc.filename is not None else path
    cause = exc.strerror or type(exc).__name__
    hint = OS_HINTS.get(exc.errno or 0, "check the path, the free space and the permissions")
    return f"{where}: {cause}; {hint} (nothing was left behind)"


def _marker(folder: Path) -> Path:
    return folder.with_name(folder.name + MARKER_SUFFIX)


def _mark(folder: Path, out: Path) -> None:
    """Claim a temporary folder (it need not exist yet) of the output `out` as ours."""
    record: dict[str, object] = {"tool": MARKER_TOOL, "folder": folder.name, "target": out.name}
    record.update(pid=os.getpid(), host=socket.gethostname())
    _marker(folder).write_text(json.dumps(record) + "\n", encoding="utf-8")


def _temporary(out: Path, suffix: str) -> Path:
    """Create and mark a temporary folder beside `out`. Callers run this under
    `interrupts.shielded()` and keep the result in a variable inside that block: a signal that
    arrived between creating and marking the folder (or before the caller holds it) would leave
    a folder without its marker, which no later run removes."""
    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent))
    try:
        _mark(folder, out)
    except BaseException:  # a full disk: the folder is empty and ours, remove it
        folder.rmdir()
        _unmark(folder)
        raise
    return folder


def _belongs_to(name: str, out: Path) -> bool:
    """Whether `name` is a temporary folder of exactly `out` (`.OUT.XXXXXXXX.partial` or `.old`,
    with the 8 characters `tempfile.mkdtemp` draws): the folders of an output `a.b` are never
    taken for those of `a`."""
    match = TEMPORARY_NAME.fullmatch(name)
    return match is not None and match.group(1) == out.name


def _unmark(folder: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        _marker(folder).unlink()


def _alive(record: dict[str, object]) -> bool:
    """Whether the run that wrote a marker is still running (on this host)."""
    pid = record.get("pid")
    if record.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(out: Path) -> list[str]:
    """Remove what killed runs on `out` left behind (only folders we marked); return names."""
    out = out.expanduser().resolve()
    if not out.parent.is_dir():
        return []
    cleaned = []
    for marker in sorted(out.parent.iterdir()):
        name = marker.name
        if not name.endswith(MARKER_SUFFIX):
            continue
        folder = marker.with_name(name[: -len(MARKER_SUFFIX)])
        if not _belongs_to(folder.name, out):
            continue
        try:
            record = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (
            not isinstance(record, dict)
            or record.get("tool") != MARKER_TOOL
            or record.get("folder") != folder.name
            or record.get("target", out.name) != out.name
            or _alive(record)
        ):
            continue
        if folder.name.endswith(".old") and folder.is_dir() and not out.exists():
            folder.rename(out)
            logger.warning("restored %s from an interrupted swap (%s)", out, folder.name)
        elif folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
            logger.warning("removed %s, left by an interrupted run", folder)
        marker.unlink(missing_ok=True)
        cleaned.append(folder.name)
    return cleaned


def _first_missing(folder: Path) -> Path | None:
    """The outermost ancestor of `folder` (or itself) that does not exist, refusing a file on
    the way."""
    missing = None
    for candidate in (folder, *folder.parents):
        if candidate.is_dir():
            return missing
        if candidate.exists() or candidate.is_symlink():
            raise SGMError(
                f"cannot write {folder}: {candidate} is a file, not a folder; choose another path"
            )
        missing = candidate
    return missing


def check_target(out: Path, source: Path | None, overwrite: bool) -> None:
    """Refuse targets that would damage the source or an existing output."""
    out = out.expanduser().resolve()
    if source is not None:
        source = source.resolve()
        if out == source or out.is_relative_to(source):
            raise SGMError(
                f"output {out} is inside the source {source}; choose a folder outside it"
            )
        if source.is_relative_to(out):
            raise SGMError(f"output {out} contains the source {source}; choose another folder")
    _first_missing(out.parent)
    try:
        recover(out)
        if out.exists() and not out.is_dir():
            raise SGMError(f"output {out} exists and is a file; choose a folder path")
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise SGMError(f"output {out} exists and is not empty; pass --overwrite to replace it")
    except OSError as exc:
        raise SGMError(describe_os_error(exc, out)) from exc


def _swap(staging: Path, out: Path) -> None:
    """Put `staging` in place of `out`; undone if a signal arrives before it is complete."""
    retired = None
    committed = False
    try:
        with interrupts.shielded():
            if out.exists():
                retired = _temporary(out, ".old")
                retired.rmdir()
                out.rename(retired)
            try:
                staging.rename(out)
            except BaseException:
                if retired is not None:
                    retired.rename(out)
                    _unmark(retired)
                raise
            if interrupts.requested():  # arrived during the swap: undo it, then raise
                out.rename(staging)
                if retired is not None:
                    retired.rename(out)
                    _unmark(retired)
                return
            committed = True
            _unmark(staging)
            if retired is not None:
                shutil.rmtree(retired, ignore_errors=True)
                _unmark(retired)
    except interrupts.Interrupted as exc:
        if committed:  # the signal came after the new output was in place
            raise interrupts.Interrupted(exc.signum, completed=True) from None
        raise


@contextlib.contextmanager
def atomic_folder(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder that becomes `out` only if the block finishes.

    Operating-system failures (disk full, read-only file system, name too long, a file where a
    folder should be, permission denied) become one SGMError naming the path and the cause, and
    leave nothing behind, not even the parent folders this call created.
    """
    out = out.expanduser().resolve()
    created = _first_missing(out.parent)
    staging: Path | None = None
    try:
        recover(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with interrupts.shielded():  # created, marked and held as one step
            staging = _temporary(out, ".partial")
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
        yield staging
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise SGMError(f"output {out} appeared while baking; pass --overwrite to replace it")
        interrupts.check()
        _swap(staging, out)
        staging = None
    except BaseException as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
            _unmark(staging)
        if created is not None and not out.exists():
            with contextlib.suppress(OSError):
                for folder in (out.parent, *out.parent.parents):
                    if not folder.is_relative_to(created):
                        break
                    folder.rmdir()  # only empty folders: ours
        if isinstance(exc, OSError):
            raise SGMError(describe_os_error(exc, out)) from exc
        raise
