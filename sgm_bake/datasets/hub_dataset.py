"""Data sets in their own format: Hub datasets and local Parquet/JSONL/CSV files and folders
with their own column names, read with the `datasets` library (`pip install
'sgm-bake[datasets]'`).

A user's data rarely uses sgm-bake's field names: MM-SafetyBench-style rows hold a `question`,
an `answer`, an `is_safe` flag and an image column of PIL images or `{"bytes", "path"}` dicts.
`DataFormat` says which column is which field (`--columns prompt=question,label=is_safe`),
which label values are toxic (`--toxic-label false`), and which split and revision to read. The
rows come out in the field names of `sgm_bake.datasets.profile_set` and
`sgm_bake.datasets.prompt_set`, so both kinds of set are validated by the same code as the
built-in ones.

Images held in a column (bytes or decoded images) are written once to a content-addressed cache
folder (`$XDG_CACHE_HOME/sgm-bake/images/<sha256>.<format>`) and named by their file there: the
rest of sgm-bake reads image files, and a large set never sits decoded in memory. Hub datasets
are downloaded (and cached by `datasets`) unless a row cap is given or the repository is large,
then streamed; local files are always streamed (no Arrow cache is written beside them).

A set's `sha256` is a digest of the rows as read (texts, labels, image digests), so two runs on
the same data agree whatever the source; for a Hub dataset `revision` is the commit it resolved
to, recorded with the expertise.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgm_bake.errors import SGMError
from sgm_bake.io.paths import contained

logger = logging.getLogger(__name__)

DATASET_PREFIX = "hf:"
"""`hf:OWNER/NAME` names a Hub dataset repository (`hf://datasets/...` names one file in it)."""
DATA_SUFFIXES = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
STREAM_ABOVE_BYTES = 2 * 1024**3
"""A Hub dataset larger than this on disk is streamed rather than downloaded whole."""
EXTRA_HINT = "pip install 'sgm-bake[datasets]'"

PROFILE_FIELDS = ("text", "prompt", "response", "label", "image", "id")
PROMPT_FIELDS = (
    "prompt",
    "image",
    "condition",
    "category",
    "policy",
    "expected",
    "reference",
    "over_refusal",
    "label",
    "id",
)
FIELDS = tuple(dict.fromkeys(PROFILE_FIELDS + PROMPT_FIELDS))


@dataclass(frozen=True)
class DataFormat:
    """How a user's data set maps onto sgm-bake's fields (empty: the native field names)."""

    columns: tuple[tuple[str, str], ...] = ()
    """(field, column) pairs: the column that holds each field."""
    toxic_labels: tuple[str, ...] = ()
    """Label values that mean toxic (compared case-insensitively); every other value is
    non-toxic. Empty: the native labels (toxic/1/true, non-toxic/0/false)."""
    split: str | None = None
    revision: str | None = None

    def given(self) -> bool:
        """Whether anything differs from the native format."""
        return bool(self.columns or self.toxic_labels)

    def describe(self) -> dict[str, str]:
        """The format as flat strings, for the expertise metadata and the eval report."""
        described = {}
        if self.columns:
            described["columns"] = ",".join(f"{f}={c}" for f, c in self.columns)
        if self.toxic_labels:
            described["toxic_label"] = ",".join(self.toxic_labels)
        if self.split:
            described["split"] = self.split
        return described

    def apply(self, row: dict[str, Any], where: str) -> dict[str, Any]:
        """A row in sgm-bake's field names, its label mapped when toxic values are given."""
        if self.columns:
            missing = [column for _, column in self.columns if column not in row]
            if missing:
                raise SGMError(
                    f"{where} has no column {missing[0]!r} (columns: {', '.join(map(str, row))}); "
                    "fix --columns"
                )
            mapped = {field: row[column] for field, column in self.columns}
            # Fields not mapped keep their own column when it has the native name.
            used = {column for _, column in self.columns}
            for field in FIELDS:
                if field not in mapped and field in row and field not in used:
                    mapped[field] = row[field]
            row = mapped
        if self.toxic_labels and row.get("label") not in (None, ""):
            toxic = normalized(row["label"]) in {normalized(v) for v in self.toxic_labels}
            row = {**row, "label": "toxic" if toxic else "non-toxic"}
        return row


def normalized(value: Any) -> str:
    """A label value as compared: text, stripped, lower case (so `False`, `false` and a
    Parquet boolean agree)."""
    return str(value).strip().lower()


def parse_columns(text: str | None) -> tuple[tuple[str, str], ...]:
    """`field=column,...`, or a JSON file holding a `{field: column}` mapping."""
    if not text:
        return ()
    if text.endswith(".json"):
        path = Path(text).expanduser()
        try:
            mapping = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SGMError(f"--columns file {path} is not readable ({exc.strerror})") from exc
        except json.JSONDecodeError as exc:
            raise SGMError(f"--columns file {path} is not valid JSON ({exc.msg})") from exc
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
        ):
            raise SGMError(f"--columns file {path} must hold one {{field: column}} object")
        pairs = list(mapping.items())
    else:
        pairs = []
        for part in (p.strip() for p in text.split(",")):
            field, sep, column = part.partition("=")
            if not sep or not field.strip() or not column.strip():
                raise SGMError(
                    f"--columns part {part!r} must look like FIELD=COLUMN, e.g. prompt=question"
                )
            pairs.append((field.strip(), column.strip()))
    for field, _ in pairs:
        if field not in FIELDS:
            raise SGMError(f"--columns field {field!r} is not one of {', '.join(FIELDS)}")
    if len({f for f, _ in pairs}) != len(pairs):
        raise SGMError("--columns names a field twice; give each field one column")
    return tuple(pairs)


def parse_toxic_labels(text: str | None) -> tuple[str, ...]:
    """`VALUE[,VALUE]`: the label values that mean toxic."""
    if not text:
        return ()
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values:
        raise SGMError("--toxic-label needs at least one value, e.g. --toxic-label unsafe")
    return values


def is_dataset_spec(spec: str) -> bool:
    """Whether `spec` is read through `datasets`: `hf:OWNER/NAME`, a Parquet file or a folder."""
    if spec.startswith(DATASET_PREFIX) and not spec.startswith("hf://"):
        return True
    if ":" in spec.split("/")[0] and not Path(spec).exists():
        return False  # builtin:NAME, hf://datasets/...
    path = Path(spec).expanduser()
    return path.is_dir() or path.suffix.lower() == ".parquet"


@dataclass(frozen=True)
class DatasetRows:
    """Rows of a data set read through `datasets`, in sgm-bake's field names."""

    name: str
    """The spec, with the resolved revision for a Hub dataset (`hf:ORG/NAME@<commit>`)."""
    revision: str | None
    sha256: str
    folder: Path
    """The folder image names in the rows are relative to (the image cache)."""
    rows: tuple[dict[str, Any], ...]


def image_cache() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "sgm-bake" / "images"


def _store_image(data: bytes, where: str) -> str:
    """Write image bytes into the cache under their digest; return the file name."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            kind = (opened.format or "img").lower()
    except (UnidentifiedImageError, OSError) as exc:
        raise SGMError(f"{where}: the image column does not hold a readable image") from exc
    name = f"{hashlib.sha256(data).hexdigest()}.{kind}"
    folder = image_cache()
    target = folder / name
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{name}.{os.getpid()}.partial"
        partial.write_bytes(data)
        os.replace(partial, target)
    return name


def _image_bytes(value: Any, local_folder: Path | None, where: str) -> bytes | None:
    """The bytes of an image cell: a decoded image, a `{"bytes", "path"}` dict, raw bytes, or a
    path (relative to a local data set's folder and inside it)."""
    from PIL import Image

    if value is None or value == "":
        return None
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return buffer.getvalue()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
        if not value:
            return None
    if isinstance(value, str):
        if local_folder is None:
            raise SGMError(
                f"{where}: the image column holds a path ({value!r}), which a Hub dataset cannot "
                "resolve; use a dataset whose image column is an Image feature"
            )
        path = contained(local_folder, value, f"{where}: image path")
        if not path.is_file():
            raise SGMError(f"{where}: image {value!r} does not exist next to the data set")
        return path.read_bytes()
    raise SGMError(
        f"{where}: the image column holds {type(value).__name__}; it must hold images, image "
        "bytes or paths"
    )


def _open(
    spec: str, data_format: DataFormat, stream: bool
) -> tuple[Iterable[Any], str | None, Path | None]:
    """The rows iterable, the resolved Hub revision, and a local data set's folder."""
    try:
        import datasets
    except ImportError as exc:
        raise SGMError(f"reading {spec} needs the datasets library: {EXTRA_HINT}") from exc
    datasets.disable_progress_bars()
    split = data_format.split or "train"
    if spec.startswith(DATASET_PREFIX):
        repo_id = spec[len(DATASET_PREFIX) :]
        if repo_id.count("/") > 1 or not repo_id.strip("/"):
            raise SGMError(f"{spec} must look like hf:OWNER/NAME (a Hub dataset repository)")
        revision, size = _hub_revision(repo_id, data_format.revision)
        stream = stream or size > STREAM_ABOVE_BYTES
        try:
            rows = datasets.load_dataset(repo_id, split=split, revision=revision, streaming=stream)
        except ValueError as exc:  # an unknown split names the known ones
            raise SGMError(f"{spec}: {str(exc).splitlines()[0]}; pass --dataset-split") from exc
        except Exception as exc:
            raise SGMError(
                f"{spec} could not be loaded ({type(exc).__name__}: {str(exc)[:160]}); check the "
                "id, --dataset-split and the network"
            ) from exc
        return rows, revision, None
    if data_format.revision:
        raise SGMError(f"--dataset-revision applies to Hub datasets (hf:OWNER/NAME), not {spec}")
    path = Path(spec).expanduser()
    if path.is_dir():
        # datasets reads a folder as it reads a Hub repository: the files' kind picks the
        # builder, and split names in file or folder names (train-*.parquet, test/) the splits.
        files = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES]
        kinds = {DATA_SUFFIXES[p.suffix.lower()] for p in files}
        if len(kinds) != 1:
            found = ", ".join(sorted(kinds)) or "none"
            raise SGMError(
                f"data set folder {path} must hold files of one kind (.parquet, .jsonl or .csv); "
                f"found {found}"
            )
        try:
            rows = datasets.load_dataset(str(path), split=split, streaming=True)
        except ValueError as exc:  # an unknown split names the known ones
            raise SGMError(f"{spec}: {str(exc).splitlines()[0]}; pass --dataset-split") from exc
        except Exception as exc:
            raise SGMError(
                f"data set folder {spec} could not be read ({type(exc).__name__}: {str(exc)[:160]})"
            ) from exc
        return rows, None, path
    if path.is_file():
        builder = DATA_SUFFIXES.get(path.suffix.lower(), "")
        if not builder:
            raise SGMError(f"data set {path} must be a .parquet, .jsonl or .csv file, or a folder")
        if split != "train":
            raise SGMError(
                f"data set {path} is one file (one split); --dataset-split picks a split of a "
                "folder or a Hub dataset"
            )
    else:
        raise SGMError(f"data set {spec} does not exist; pass a file, a folder or hf:OWNER/NAME")
    try:
        rows = datasets.load_dataset(builder, data_files=[str(path)], split="train", streaming=True)
    except Exception as exc:
        raise SGMError(
            f"data set {spec} could not be read as {builder} ({type(exc).__name__}: "
            f"{str(exc)[:160]})"
        ) from exc
    return rows, None, path.parent


def _hub_revision(repo_id: str, revision: str | None) -> tuple[str, int]:
    """The commit a Hub dataset's revision resolves to, and its size on disk in bytes."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from sgm_bake.io.hub import unreachable

    reason = unreachable()
    if reason is not None:
        raise SGMError(f"hf:{repo_id} needs the Hub, and {reason}; pass a local copy instead")
    try:
        info = HfApi().dataset_info(repo_id, revision=revision, files_metadata=True)
    except RevisionNotFoundError as exc:
        raise SGMError(f"hf:{repo_id} has no revision {revision!r}") from exc
    except RepositoryNotFoundError as exc:
        raise SGMError(f"hf:{repo_id} was not found on the Hub; check the id and login") from exc
    except HfHubHTTPError as exc:
        raise SGMError(f"the Hub refused hf:{repo_id} ({type(exc).__name__})") from exc
    size = sum(int(getattr(s, "size", 0) or 0) for s in info.siblings or [])
    return str(info.sha), size


Keep = Callable[[Any], bool]


def _take(rows: Iterable[Any], keep: Keep | None, limit: int | None) -> Iterator[tuple[int, Any]]:
    """Numbered rows, stopping after `limit` kept ones (`keep` may also skip a row)."""
    kept = 0
    for number, row in enumerate(rows, start=1):
        if limit is not None and kept >= limit:
            return
        if keep is not None and not keep(row):
            continue
        kept += 1
        yield number, row


def load_dataset_rows(
    spec: str,
    data_format: DataFormat,
    what: str,
    limit: int | None = None,
    keep: Callable[[dict[str, Any]], bool] | None = None,
) -> DatasetRows:
    """Read a data set through `datasets`, rows mapped to sgm-bake's fields and images cached.

    `limit` caps the rows kept (and makes a Hub dataset stream); `keep`, called on each mapped
    row, may skip rows (the profile loader uses it to fill both classes when capped)."""
    rows_in, revision, local_folder = _open(spec, data_format, stream=limit is not None)
    digest = hashlib.sha256()
    rows: list[dict[str, Any]] = []
    source = spec.removeprefix(DATASET_PREFIX) if spec.startswith(DATASET_PREFIX) else spec
    mapped_rows = (
        (number, data_format.apply(dict(row), f"{what} {source} row {number}"))
        for number, row in enumerate(rows_in, start=1)
    )
    for _, (number, row) in _take(mapped_rows, (lambda r: keep(r[1])) if keep else None, limit):
        where = f"{what} {source} row {number}"
        out = {k: v for k, v in row.items() if k != "image"}
        data = _image_bytes(row.get("image"), local_folder, where)
        if data is not None:
            out["image"] = _store_image(data, where)
        out.setdefault("id", str(number))
        rows.append(out)
        digest.update(json.dumps(out, sort_keys=True, default=str).encode() + b"\n")
    if not rows:
        raise SGMError(f"{what} {spec} holds no rows (split {data_format.split or 'train'})")
    name = f"{spec}@{revision}" if revision else spec
    logger.info("read %d rows of %s", len(rows), name)
    return DatasetRows(name, revision, digest.hexdigest(), image_cache(), tuple(rows))


def refuse_dataset_options(spec: str, data_format: DataFormat) -> None:
    """A split or revision given for a set that is not read through `datasets` would be
    ignored silently; refuse it instead."""
    for option, value in (
        ("--dataset-split", data_format.split),
        ("--dataset-revision", data_format.revision),
    ):
        if value:
            raise SGMError(
                f"{option} applies to data sets read through datasets (hf:OWNER/NAME, Parquet "
                f"files, folders), not {spec}; drop it"
            )
