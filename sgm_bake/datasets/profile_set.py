"""Profile sets: labelled image-text pairs that reveal which units are toxic experts.

Format: a JSONL file (one JSON object a line) or a CSV file with a header. Fields:

| field | required | meaning |
|---|---|---|
| `text` | unless `response` | the text fed with the image |
| `prompt`, `response` | optional | the user's prompt and the reply (the text) |
| `image` | optional | an image path relative to the set file (must stay inside its folder) |
| `render` | optional (JSONL) | an image drawn at load time (`sgm_bake.datasets.render`) |
| `label` | yes | `toxic`/`1` or `non-toxic`/`0` (also `true`/`false`, `nontoxic`) |
| `id` | optional | a name for the row (default: its line number) |

A set is named by a local path, by `builtin:NAME` (a set shipped in `profiles/`), or by
`hf://datasets/ORG/NAME/PATH` (a file in a Hub dataset repo, fetched with huggingface_hub, with
its images fetched next to it).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from sgm_bake.datasets.render import check_image_file, check_render_spec
from sgm_bake.errors import SGMError
from sgm_bake.io.paths import contained, relative_name
from sgm_bake.resources import data_dir

logger = logging.getLogger(__name__)

DEFAULT_SET = "builtin:default"
MIN_PER_CLASS = 4
TOXIC = {"toxic", "1", "true", "yes"}
NON_TOXIC = {"non-toxic", "nontoxic", "non_toxic", "0", "false", "no"}


@dataclass(frozen=True)
class ProfileSample:
    """One labelled image-text pair."""

    id: str
    label: int
    text: str
    prompt: str | None = None
    image_path: Path | None = None
    render: dict[str, Any] | None = None

    def image(self) -> Any | None:
        """The PIL image (opened or drawn), or None for a text-only row."""
        from sgm_bake.datasets.render import load_image

        return load_image(self.render, self.image_path)


@dataclass(frozen=True)
class ProfileSet:
    """A loaded, validated profile set."""

    name: str
    sha256: str
    samples: tuple[ProfileSample, ...]

    @property
    def labels(self) -> list[int]:
        return [sample.label for sample in self.samples]

    def counts(self) -> tuple[int, int]:
        toxic = sum(self.labels)
        return toxic, len(self.samples) - toxic

    def limited(self, max_samples: int | None) -> ProfileSet:
        """At most `max_samples` rows, half from each class, in file order."""
        if max_samples is None or max_samples >= len(self.samples):
            return self
        per_class = max(1, max_samples // 2)
        toxic = [s for s in self.samples if s.label == 1][:per_class]
        benign = [s for s in self.samples if s.label == 0][: max_samples - len(toxic)]
        keep = {id(s) for s in toxic + benign}
        return ProfileSet(self.name, self.sha256, tuple(s for s in self.samples if id(s) in keep))


def _label(value: Any, where: str) -> int:
    text = str(value).strip().lower()
    if text in TOXIC:
        return 1
    if text in NON_TOXIC:
        return 0
    raise SGMError(f"{where}: unknown label {value!r}; use 'toxic'/'1' or 'non-toxic'/'0'")


def _rows(path: Path) -> list[dict[str, Any]]:
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SGMError(f"profile set {path} is not readable UTF-8 text ({exc})") from exc
    if path.suffix.lower() == ".csv":
        return [dict(row) for row in csv.DictReader(raw.splitlines())]
    if path.suffix.lower() not in (".jsonl", ".json"):
        raise SGMError(f"profile set {path} must be a .jsonl or .csv file")
    rows = []
    for number, line in enumerate(raw.splitlines(), start=1):
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


def _image_path(value: str, folder: Path, where: str) -> Path:
    """The image a row names, refused unless it stays inside the set's folder after following
    symlinks (a set must not read files from elsewhere on the machine)."""
    return contained(folder, value, f"{where}: image path")


def parse_rows(rows: list[dict[str, Any]], folder: Path, source: str) -> list[ProfileSample]:
    """Validate rows and turn them into samples (images are checked, not yet decoded)."""
    samples = []
    for number, row in enumerate(rows, start=1):
        where = f"{source} row {number}"
        if "label" not in row or row["label"] in (None, ""):
            raise SGMError(f"{where}: missing 'label'")
        label = _label(row["label"], where)
        response = str(row.get("response") or "").strip()
        text = str(row.get("text") or "").strip() or response
        if not text:
            raise SGMError(f"{where}: empty text; give 'text' or 'response'")
        prompt = str(row.get("prompt") or "").strip() or None
        image_path = None
        render = row.get("render")
        if render is not None:
            check_render_spec(render, where)
        if row.get("image"):
            image_path = _image_path(str(row["image"]), folder, where)
            if not image_path.is_file():
                raise SGMError(
                    f"{where}: image {row['image']!r} does not exist next to the set file"
                )
        samples.append(
            ProfileSample(str(row.get("id") or number), label, text, prompt, image_path, render)
        )
    return samples


def check_images(samples: list[ProfileSample], source: str) -> None:
    """Open every image once, so an unreadable file fails before hours of profiling."""
    for sample in samples:
        if sample.image_path is not None:
            check_image_file(sample.image_path, f"{source} row {sample.id}")


def validate(samples: list[ProfileSample], source: str) -> None:
    toxic = sum(s.label for s in samples)
    benign = len(samples) - toxic
    if toxic == 0 or benign == 0:
        only = "toxic" if benign == 0 else "non-toxic"
        raise SGMError(f"profile set {source} holds only {only} samples; it needs both classes")
    if min(toxic, benign) < MIN_PER_CLASS:
        raise SGMError(
            f"profile set {source} has too few samples ({toxic} toxic, {benign} non-toxic); "
            f"give at least {MIN_PER_CLASS} of each, ideally hundreds"
        )
    if min(toxic, benign) < 50:
        logger.warning(
            "profile set %s is small (%d toxic, %d non-toxic): expertise will be noisy",
            source,
            toxic,
            benign,
        )


def _hub_file(spec: str) -> tuple[Path, str]:
    """Download `hf://datasets/ORG/NAME/PATH` and return the local file and its repo path."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

    parts = spec[len("hf://datasets/") :].split("/")
    if len(parts) < 3:
        raise SGMError(f"{spec} must look like hf://datasets/ORG/NAME/path/to/set.jsonl")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
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
    return Path(local), filename


def _fetch_hub_images(spec: str, rows: list[dict[str, Any]], repo_path: str) -> None:
    """Download the images a Hub set names; they land beside the set file in the cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    repo_id = "/".join(spec[len("hf://datasets/") :].split("/")[:2])
    base = PurePosixPath(repo_path).parent
    for number, row in enumerate(rows, start=1):
        if row.get("image"):
            relative_name(str(row["image"]), f"{spec} row {number}: image path")
            try:
                hf_hub_download(repo_id, str(base / str(row["image"])), repo_type="dataset")
            except EntryNotFoundError as exc:
                raise SGMError(
                    f"{spec} row {number}: image {row['image']!r} is not in the dataset"
                ) from exc


def load_profile_set(spec: str = DEFAULT_SET, check: bool = True) -> ProfileSet:
    """Load and validate a profile set named by a path, `builtin:NAME` or `hf://datasets/...`."""
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        path = data_dir("profiles") / f"{name}.jsonl"
        if not path.is_file():
            known = sorted(p.stem for p in data_dir("profiles").glob("*.jsonl"))
            raise SGMError(f"no built-in profile set {name!r}; built-in sets: {', '.join(known)}")
    elif spec.startswith("hf://datasets/"):
        path, repo_path = _hub_file(spec)
        _fetch_hub_images(spec, _rows(path), repo_path)
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise SGMError(
                f"profile set {spec} does not exist; pass a .jsonl/.csv file, builtin:default or hf://datasets/..."
            )
    rows = _rows(path)
    samples = parse_rows(rows, path.parent, spec)
    validate(samples, spec)
    if check:
        check_images(samples, spec)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return ProfileSet(spec, digest, tuple(samples))
