"""One loader for every data set sgm-bake reads: profile sets and prompt sets.

A set is named by a local path, by `builtin:NAME` (a set shipped in `sgm_bake/_data/profiles/`),
or by `hf://datasets/ORG/NAME/PATH` (a file in a Hub dataset repository, fetched with
huggingface_hub, with the images its rows name fetched next to it). Files are JSONL (one JSON
object a line) or CSV with a header row. Image paths in rows are relative to the set's file and
must stay inside its folder: the same rule for every kind of set.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from sgm_bake.errors import SGMError
from sgm_bake.io.paths import contained, relative_name
from sgm_bake.resources import data_dir

logger = logging.getLogger(__name__)

BUILTIN = "builtin:"
HUB = "hf://datasets/"
SUFFIXES = (".jsonl", ".json", ".csv")


@dataclass(frozen=True)
class SetFile:
    """The rows of a data set file, with where they came from."""

    spec: str
    path: Path
    sha256: str
    rows: tuple[dict[str, Any], ...]

    @property
    def folder(self) -> Path:
        """The folder image paths are relative to."""
        return self.path.parent


def builtin_sets() -> list[str]:
    """Names of the sets shipped with sgm-bake."""
    return sorted(p.stem for p in data_dir("profiles").glob("*.jsonl"))


# Byte-order marks editors and spreadsheets write, longest first (UTF-32 LE starts like UTF-16 LE).
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def decode_text(raw: bytes, path: Path) -> str:
    """A data set file's text: UTF-8, or any Unicode encoding announced by a byte-order mark (as
    Windows editors and "CSV UTF-8" or "Unicode text" exports write them). Anything else, a
    legacy code page such as cp1252 included, is refused naming where it stops being UTF-8:
    guessing a code page would change the texts silently."""
    for bom, encoding in BOMS:
        if raw.startswith(bom):
            try:
                return raw[len(bom) :].decode(encoding)
            except UnicodeDecodeError as exc:
                raise SGMError(
                    f"data set {path} starts with a {encoding} byte-order mark but is not "
                    f"{encoding} text (at byte {exc.start}); save it again as UTF-8"
                ) from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SGMError(
            f"data set {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}: a "
            "legacy encoding such as Windows-1252?); save it as UTF-8 (spreadsheets: "
            "'CSV UTF-8')"
        ) from exc


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL or CSV file; every JSONL line must be a JSON object.

    Lines end at a line feed (with or without a carriage return) and nowhere else: Unicode's
    other line breaks (U+2028, U+2029, NEL), which JSON strings may hold as they are, stay
    inside their row. CSV fields may hold quoted line breaks."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SGMError(f"data set {path} is not readable ({exc.strerror})") from exc
    text = decode_text(raw, path)
    if path.suffix.lower() == ".csv":
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""))
            rows = [dict(row) for row in reader]
        except csv.Error as exc:
            raise SGMError(f"data set {path} is not valid CSV ({exc})") from exc
        for number, row in enumerate(rows, start=2):
            if None in row:
                raise SGMError(
                    f"{path}:{number} has more fields than the header; quote fields that hold "
                    "commas"
                )
        return [{str(k).strip(): v for k, v in row.items()} for row in rows]
    if path.suffix.lower() not in (".jsonl", ".json"):
        raise SGMError(f"data set {path} must be a .jsonl or .csv file")
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SGMError(
                f"{path}:{number} is not valid JSON ({exc.msg}); one object per line"
            ) from exc
        if not isinstance(row, dict):
            raise SGMError(f"{path}:{number} is not a JSON object")
        rows.append(row)
    return rows


def image_path(value: str, folder: Path, where: str) -> Path:
    """An image named by a row: relative to the set's folder and inside it, also after following
    symlinks (a set must not read files from elsewhere on the machine)."""
    path = contained(folder, value, f"{where}: image path")
    if not path.is_file():
        raise SGMError(f"{where}: image {value!r} does not exist next to the set file")
    return path


def _hub_file(spec: str) -> tuple[Path, str, bool]:
    """Download `hf://datasets/ORG/NAME/PATH`; return the local file, its repo path, and whether
    it came from the local cache because the Hub cannot be reached."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

    from sgm_bake.io.hub import unreachable

    parts = spec[len(HUB) :].split("/")
    if len(parts) < 3 or not all(parts):
        raise SGMError(f"{spec} must look like hf://datasets/ORG/NAME/path/to/set.jsonl")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    reason = unreachable()
    if reason is not None:  # at once, not after huggingface_hub's retries
        try:
            local = hf_hub_download(repo_id, filename, repo_type="dataset", local_files_only=True)
        except Exception as exc:
            raise SGMError(
                f"{spec} is not in the local cache, and {reason}: check the network, or pass a "
                "local file"
            ) from exc
        logger.warning("%s; using the cached copy of %s", reason, spec)
        return Path(local), filename, True
    try:
        local = hf_hub_download(repo_id, filename, repo_type="dataset")
    except (RepositoryNotFoundError, EntryNotFoundError) as exc:
        raise SGMError(f"{spec} was not found on the Hub; check the dataset id and path") from exc
    except HfHubHTTPError as exc:
        raise SGMError(
            f"the Hub refused {spec} ({type(exc).__name__}); check the id and login"
        ) from exc
    except Exception as exc:  # no network (httpx errors, offline mode)
        raise SGMError(
            f"could not download {spec} ({type(exc).__name__}); check the network"
        ) from exc
    return Path(local), filename, False


def _fetch_hub_images(spec: str, rows: list[dict[str, Any]], repo_path: str, cached: bool) -> None:
    """Download the images a Hub set names; they land beside the set file in the cache (with
    `cached`, the Hub cannot be reached: they must be in the cache already)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    repo_id = "/".join(spec[len(HUB) :].split("/")[:2])
    base = PurePosixPath(repo_path).parent
    for number, row in enumerate(rows, start=1):
        if row.get("image"):
            relative = relative_name(str(row["image"]), f"{spec} row {number}: image path")
            where = f"{spec} row {number}: image {row['image']!r}"
            try:
                hf_hub_download(
                    repo_id, str(base / relative), repo_type="dataset", local_files_only=cached
                )
            except EntryNotFoundError as exc:
                raise SGMError(f"{where} is not in the dataset") from exc
            except Exception as exc:  # not cached while offline, or the network dropped
                raise SGMError(
                    f"{where} could not be fetched ({type(exc).__name__}); check the network"
                ) from exc


def load_set_file(spec: str, what: str = "data set") -> SetFile:
    """Find, fetch if needed, and read the rows of the set named by `spec`."""
    if spec.startswith(BUILTIN):
        name = spec[len(BUILTIN) :]
        path = data_dir("profiles") / f"{name}.jsonl"
        if not name or "/" in name or not path.is_file():
            raise SGMError(
                f"no built-in {what} {name!r}; built-in sets: {', '.join(builtin_sets())}"
            )
    elif spec.startswith(HUB):
        path, repo_path, cached = _hub_file(spec)
        rows = read_rows(path)
        _fetch_hub_images(spec, rows, repo_path, cached)
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise SGMError(
                f"{what} {spec} does not exist; pass a .jsonl/.csv file, builtin:NAME or "
                "hf://datasets/ORG/NAME/FILE"
            )
    rows = read_rows(path)
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise SGMError(f"{what} {path} is not readable ({exc.strerror})") from exc
    return SetFile(spec, path, digest, tuple(rows))
