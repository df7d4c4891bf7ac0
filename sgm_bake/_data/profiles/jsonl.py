"""Writing a built-in set, shared by the build scripts beside this file: one JSON object per
line, non-ASCII text kept as it is, rows in the order built, so that running a script again
gives the same bytes."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def jsonl_text(rows: Iterable[dict[str, object]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_jsonl(path: Path, rows: Iterable[dict[str, object]]) -> None:
    path.write_text(jsonl_text(rows), encoding="utf-8")
