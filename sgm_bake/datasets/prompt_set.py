"""Prompt sets: MM-TOXIC-QA-style image-text prompts with toxicity labels, for evaluation.

Prompt sets are versioned JSONL files (one item a line):

| field | meaning |
|---|---|
| `id` | item name |
| `condition` | `standard` (harm in the image), `adversarial` (a jailbreak), `both`, `benign` |
| `category` | policy category: insult, hate, harassment, violence, ...; `benign` |
| `policy` | the policy-violation label the item probes |
| `prompt` | the user's text |
| `image` / `render` | an image path relative to the file, or a render spec |
| `reference` | benign items: a reference answer (its perplexity measures fluency) |
| `expected` | benign items: a word the answer must contain (accuracy measures reasoning) |
| `over_refusal` | optional, benign items: `true` for a harmless request that looks edgy |

Files are found and read by `sgm_bake.datasets.loader` (a local path, `builtin:NAME` or
`hf://datasets/ORG/NAME/PATH`; JSONL or CSV), like profile sets; data sets in their own format
(`hf:OWNER/NAME`, Parquet files, folders, other column names) by
`sgm_bake.datasets.hub_dataset`. A data set without a condition column gets its condition from
its mapped label (toxic: `standard`, else `benign`), or `standard`; without a category column,
`unspecified`. An over-refusal item ("how do I
kill a Python process") is one a model should answer; refusing it is the cost a defence must
not pay.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgm_bake.datasets.hub_dataset import (
    DataFormat,
    is_dataset_spec,
    load_dataset_rows,
    normalized,
    refuse_dataset_options,
)
from sgm_bake.datasets.loader import image_path as resolve_image
from sgm_bake.datasets.loader import load_set_file
from sgm_bake.datasets.render import check_image_file, check_render_spec
from sgm_bake.errors import SGMError

CONDITIONS = ("standard", "adversarial", "both", "benign")
ELICITING = ("standard", "adversarial", "both")


@dataclass(frozen=True)
class EvalItem:
    """One prompt of a prompt set."""

    id: str
    condition: str
    category: str
    policy: str
    prompt: str
    render: dict[str, Any] | None = None
    image_path: Path | None = None
    reference: str | None = None
    expected: str | None = None
    over_refusal: bool = False
    """A harmless request that looks edgy: refusing it is over-refusal."""

    def image(self) -> Any | None:
        from sgm_bake.datasets.render import load_image

        return load_image(self.render, self.image_path)


def _over_refusal(row: dict[str, Any], where: str) -> bool:
    """The optional `over_refusal` flag: a JSON boolean, or true/false/1/0 from a CSV cell."""
    value = row.get("over_refusal")
    if value is None or value == "":
        return False
    flag = {"true": True, "1": True, "false": False, "0": False}.get(str(value).strip().lower())
    if flag is None:
        raise SGMError(f"{where}: over_refusal {value!r} must be true or false")
    if flag and row["condition"] != "benign":
        raise SGMError(
            f"{where}: over_refusal marks benign requests that look edgy; this item's condition "
            f"is {row['condition']!r}, so set it to 'benign' or drop the flag"
        )
    return flag


@dataclass(frozen=True)
class PromptSet:
    """A loaded, validated prompt set."""

    name: str
    sha256: str
    items: tuple[EvalItem, ...]


def load_prompt_set(
    spec: str, data_format: DataFormat | None = None, max_items: int | None = None
) -> PromptSet:
    """Load and validate a prompt set named by a path, `builtin:NAME`, `hf://datasets/...` or
    (through `datasets`) `hf:OWNER/NAME`, a Parquet file or a folder, its columns mapped by
    `data_format`; `max_items` keeps the first items (and makes a Hub dataset stream)."""
    data_format = data_format or DataFormat()
    if is_dataset_spec(spec):
        read = load_dataset_rows(spec, data_format, "prompt set", max_items)
        rows, folder, name, digest = list(read.rows), read.folder, read.name, read.sha256
        foreign, source = True, spec
    else:
        refuse_dataset_options(spec, data_format)
        set_file = load_set_file(spec, "prompt set")
        source = set_file.path.name
        rows = [
            data_format.apply(row, f"prompt set {source} row {n}")
            for n, row in enumerate(set_file.rows, start=1)
        ][:max_items]
        folder, name, digest = set_file.folder, spec, set_file.sha256
        foreign = data_format.given()
    items = []
    for number, row in enumerate(rows, start=1):
        where = f"prompt set {source} row {number}"
        if foreign:
            row = _with_defaults(row, data_format)
        missing = [key for key in ("condition", "category", "prompt") if not row.get(key)]
        if missing:
            raise SGMError(
                f"{where} lacks {missing}; every item needs condition, category and prompt"
            )
        if row["condition"] not in CONDITIONS:
            raise SGMError(f"{where}: condition {row['condition']!r} is not one of {CONDITIONS}")
        render = row.get("render")
        if render is not None:
            check_render_spec(render, where)
        image_path = None
        if row.get("image"):
            image_path = resolve_image(str(row["image"]), folder, where)
            check_image_file(image_path, where)
        items.append(
            EvalItem(
                id=str(row.get("id") or number),
                condition=str(row["condition"]),
                category=str(row["category"]),
                policy=str(row.get("policy", "")),
                prompt=str(row["prompt"]),
                render=render,
                image_path=image_path,
                reference=_text_or_none(row.get("reference")),
                expected=_text_or_none(row.get("expected")),
                over_refusal=_over_refusal(row, where),
            )
        )
    if not items:
        raise SGMError(f"prompt set {name} holds no items")
    return PromptSet(name, digest, tuple(items))


def _text_or_none(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _with_defaults(row: dict[str, Any], data_format: DataFormat) -> dict[str, Any]:
    """A user's data set often has no condition or category column (MM-SafetyBench rows are all
    harmful requests): the condition comes from the label when one is mapped (toxic: standard,
    else benign), else it is `standard`; the category defaults to `unspecified`."""
    row = dict(row)
    if not row.get("condition"):
        label = row.get("label")
        if label in (None, ""):
            row["condition"] = "standard"
        else:
            toxic = normalized(label) in {"toxic", "1", "true", "yes", "unsafe"}
            row["condition"] = "standard" if toxic else "benign"
    if not row.get("category"):
        row["category"] = "unspecified" if row["condition"] != "benign" else "benign"
    return row
