"""Reading and writing `sgm/bake.json`, and the sha256 of every file of a baked folder.

The record holds the sha256 of every other file of the folder, and only a command that creates
content may record one: the bake hashes the folder it has just built (`write_record`); a later
command that adds to the folder (verification figures and the card, an evaluation report, a
tuning report, a re-rendered card) first checks every file against the record (`require_intact`,
exit code 4 on a changed, missing or unrecorded file) and then records the files it wrote
itself, and no others (`record_files`). Nothing re-hashes and adopts a file someone else
changed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sgm_bake.errors import SGMError, TamperedError
from sgm_bake.io.safetensors import file_sha256
from sgm_bake.record.schema import RECORD_FILE, RECORD_PATH, SGM_DIR, BakeRecord, parse_record


def read_record(folder: Path) -> BakeRecord:
    """Load and validate `sgm/bake.json` of a baked folder."""
    path = folder / SGM_DIR / RECORD_FILE
    if not path.is_file():
        raise SGMError(f"{folder} has no {RECORD_PATH}; it is not an sgm-bake output")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SGMError(f"{path} is not valid JSON; the output is damaged, bake it again") from exc
    return parse_record(data, str(path))


def output_hashes(
    folder: Path, skip: set[str] | None = None, known: dict[str, str] | None = None
) -> dict[str, str]:
    """sha256 of every file in `folder`, keyed by relative path; `known` digests (computed while
    the file was written) are reused rather than reading multi-GB shards again."""
    skip = skip or set()
    known = known or {}
    hashes = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and not path.is_symlink() and name not in skip:
            hashes[name] = known.get(name) or file_sha256(path)
    return hashes


@dataclass(frozen=True)
class HashCheck:
    """Files whose bytes no longer match the record, and files the record does not know."""

    mismatched: list[str]
    missing: list[str]
    unexpected: list[str]

    @property
    def ok(self) -> bool:
        return not (self.mismatched or self.missing or self.unexpected)

    def describe(self) -> str:
        parts = []
        if self.mismatched:
            parts.append(f"changed: {', '.join(self.mismatched[:5])}")
        if self.missing:
            parts.append(f"missing: {', '.join(self.missing[:5])}")
        if self.unexpected:
            parts.append(f"not in the record: {', '.join(self.unexpected[:5])}")
        return "; ".join(parts)


def check_hashes(folder: Path, record: BakeRecord | None = None) -> HashCheck:
    """Compare every file of a baked folder with the sha256 its record holds."""
    record = record or read_record(folder)
    recorded = record.files
    present = {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).as_posix() != RECORD_PATH
    }
    mismatched = sorted(
        name
        for name in recorded
        if name in present and file_sha256(folder / name) != recorded[name]
    )
    missing = sorted(set(recorded) - present)
    unexpected = sorted(present - set(recorded))
    return HashCheck(mismatched, missing, unexpected)


def require_intact(folder: Path, record: BakeRecord | None = None) -> BakeRecord:
    """The validated record of a baked folder whose files all match it; a changed, missing or
    unrecorded file raises TamperedError (exit code 4) naming them.

    Every command that reads or adds to a baked folder (verify, eval, tune's record, inspect,
    unbake, push) calls this before it writes anything, so a tampered folder is reported, never
    worked on or re-recorded."""
    record = record or read_record(folder)
    check = check_hashes(folder, record)
    if not check.ok:
        raise TamperedError(
            f"{folder} no longer matches its recorded sha256 ({check.describe()}): it was "
            "changed after baking, or copied incompletely; bake it again"
        )
    return record


def record_text(record: BakeRecord) -> str:
    """`sgm/bake.json` as written: sorted keys, two-space indent, a final newline."""
    return json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n"


def _replace_record(folder: Path, record: BakeRecord) -> None:
    record_path = folder / SGM_DIR / RECORD_FILE
    tmp = record_path.with_suffix(".json.tmp")
    tmp.write_text(record_text(record), encoding="utf-8")
    os.replace(tmp, record_path)


def write_record(folder: Path, record: BakeRecord, known: dict[str, str] | None = None) -> None:
    """Write sgm/bake.json with the sha256 of every other file of a folder the caller has just
    created in full (the bake's temporary folder): the only place that hashes a whole folder.

    `known` digests are reused for weight shards only (computed while they were written); every
    other file is small and hashed afresh.
    """
    shards = {
        name: digest
        for name, digest in (known or {}).items()
        if name.endswith(".safetensors") and not name.startswith(f"{SGM_DIR}/")
    }
    record.files = output_hashes(folder, {RECORD_PATH}, shards)
    _replace_record(folder, record)


def record_files(folder: Path, record: BakeRecord, written: Iterable[str]) -> None:
    """Rewrite sgm/bake.json after a command added to a baked folder: the sha256 of `written`,
    the files that command created or replaced itself, is (re)computed; every other entry keeps
    the digest it had. A file someone else changed or added is therefore never adopted: it
    still fails the next check (`require_intact`, `inspect`, `push`)."""
    for name in sorted(set(written)):
        path = folder / name
        if name == RECORD_PATH or not path.is_file():
            raise ValueError(f"{name} is not a file this command wrote into {folder}")
        record.files[name] = file_sha256(path)
    _replace_record(folder, record)
