"""Atomic output folders: build in a hidden temporary folder beside the target, rename at the end.

A failed or interrupted run removes its temporary folder and leaves the target as it was; an
existing target is replaced only after the new folder is complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sgm_bake.errors import SGMError


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
    if out.exists() and not out.is_dir():
        raise SGMError(f"output {out} exists and is a file; choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SGMError(f"output {out} exists and is not empty; pass --overwrite to replace it")


@contextlib.contextmanager
def atomic_folder(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder that becomes `out` only if the block finishes."""
    out = out.expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        shutil.rmtree(staging, ignore_errors=True)
        raise SGMError(f"output {out} appeared while baking; pass --overwrite to replace it")
    retired = None
    if out.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        retired.rmdir()
        out.rename(retired)
    try:
        staging.rename(out)
    except BaseException:
        if retired is not None:
            retired.rename(out)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
