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

Other fields are ignored (the built-in sets carry `category`, `image_kind` and `jailbreak` for
readers and for their tests).

Sets are found and read by `sgm_bake.datasets.loader` (a local path, `builtin:NAME` or
`hf://datasets/ORG/NAME/PATH`), like prompt sets. Data sets in their own format (Hub datasets
`hf:OWNER/NAME`, Parquet files, folders, or any file with other column names) are read by
`sgm_bake.datasets.hub_dataset` with a `DataFormat` that maps their columns onto these fields.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgm_bake.datasets.hub_dataset import (
    DataFormat,
    is_dataset_spec,
    load_dataset_rows,
    refuse_dataset_options,
)
from sgm_bake.datasets.loader import image_path as resolve_image
from sgm_bake.datasets.loader import load_set_file
from sgm_bake.datasets.render import check_image_file, check_render_spec
from sgm_bake.errors import SGMError
from sgm_bake.options import DEFAULT_PROFILE_SET

logger = logging.getLogger(__name__)

DEFAULT_SET = DEFAULT_PROFILE_SET
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
    revision: str | None = None
    """The commit a Hub dataset resolved to (None: a file, whose sha256 says what it held)."""

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
        return ProfileSet(
            self.name,
            self.sha256,
            tuple(s for s in self.samples if id(s) in keep),
            self.revision,
        )


def _label(value: Any, where: str) -> int:
    text = str(value).strip().lower()
    if text in TOXIC:
        return 1
    if text in NON_TOXIC:
        return 0
    raise SGMError(f"{where}: unknown label {value!r}; use 'toxic'/'1' or 'non-toxic'/'0'")


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
            image_path = resolve_image(str(row["image"]), folder, where)
        samples.append(
            ProfileSample(str(row.get("id") or number), label, text, prompt, image_path, render)
        )
    return samples


def check_images(samples: list[ProfileSample], source: str) -> None:
    """Open every image once, so an unreadable or oversized file fails before the model loads."""
    for sample in samples:
        if sample.image_path is not None:
            check_image_file(sample.image_path, f"{source} row {sample.id}")


def validate(samples: list[ProfileSample], source: str, minimum: int = MIN_PER_CLASS) -> None:
    """Both classes, at least `minimum` rows each (a capped stream asks for its cap's half)."""
    toxic = sum(s.label for s in samples)
    benign = len(samples) - toxic
    if toxic == 0 or benign == 0:
        only = "toxic" if benign == 0 else "non-toxic"
        raise SGMError(f"profile set {source} holds only {only} samples; it needs both classes")
    if min(toxic, benign) < minimum:
        raise SGMError(
            f"profile set {source} has too few samples ({toxic} toxic, {benign} non-toxic); "
            f"give at least {minimum} of each, ideally hundreds"
        )
    if min(toxic, benign) < 50:
        logger.warning(
            "profile set %s is small (%d toxic, %d non-toxic): expertise will be noisy",
            source,
            toxic,
            benign,
        )


def load_profile_set(
    spec: str = DEFAULT_SET,
    check: bool = True,
    data_format: DataFormat | None = None,
    max_samples: int | None = None,
) -> ProfileSet:
    """Load and validate a profile set named by a path, `builtin:NAME`, `hf://datasets/...` or
    (through `datasets`) `hf:OWNER/NAME`, a Parquet file or a folder, its columns mapped by
    `data_format`. With `max_samples`, a streamed data set is read only until both classes have
    their half (`ProfileSet.limited` then keeps the same rows)."""
    data_format = data_format or DataFormat()
    if is_dataset_spec(spec):
        read = load_dataset_rows(
            spec, data_format, "profile set", max_samples, _class_filler(max_samples)
        )
        rows, folder, name, digest, revision = (
            list(read.rows),
            read.folder,
            read.name,
            read.sha256,
            read.revision,
        )
    else:
        refuse_dataset_options(spec, data_format)
        set_file = load_set_file(spec, "profile set")
        where = f"profile set {spec}"
        rows = [
            data_format.apply(row, f"{where} row {n}") for n, row in enumerate(set_file.rows, 1)
        ]
        folder, name, digest, revision = set_file.folder, spec, set_file.sha256, None
    samples = parse_rows(rows, folder, name)
    minimum = MIN_PER_CLASS
    if max_samples is not None and is_dataset_spec(spec):  # read only up to the cap
        minimum = min(MIN_PER_CLASS, max(1, max_samples - max(1, max_samples // 2)))
    validate(samples, name, minimum)
    if check:
        check_images(samples, name)
    return ProfileSet(name, digest, tuple(samples), revision)


def _class_filler(max_samples: int | None) -> Callable[[dict[str, Any]], bool] | None:
    """A row filter that keeps rows of a class until it has its share of `max_samples` (as
    `ProfileSet.limited` splits it), so a capped stream ends with both classes."""
    if max_samples is None:
        return None
    per_class = max(1, max_samples // 2)
    wanted = {1: per_class, 0: max_samples - per_class}
    seen = {1: 0, 0: 0}

    def keep(row: dict[str, Any]) -> bool:
        try:
            label = _label(row.get("label"), "row")
        except SGMError:
            return True  # parse_rows names the bad row
        if seen[label] >= wanted[label]:
            return False
        seen[label] += 1
        return True

    return keep
