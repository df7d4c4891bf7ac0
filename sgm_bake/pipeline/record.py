"""The bake record, `sgm/bake.json`: a typed, versioned contract written and read only here.

Every stage that adds to the record (bake, verification, evaluation, tuning) fills its typed
section; readers (card, inspect, push, unbake, verify) get a validated `BakeRecord`, never a
dict read by string keys. Reading validates every field and names the first bad one, so a
damaged or hand-edited record is reported clearly instead of failing deep inside a command.

The record also holds the sha256 of every other file of the folder, and only a command that
creates content may record one: the bake hashes the folder it has just built (`write_record`);
a later command that adds to the folder (verification figures and the card, an evaluation
report, a tuning report, a re-rendered card) first checks every file against the record
(`require_intact`, exit code 4 on a changed, missing or unrecorded file) and then records the
files it wrote itself, and no others (`record_files`). Nothing re-hashes and adopts a file
someone else changed.

Fields that differ between two bakes of the same inputs: `created` (a UTC time stamp) and the
`seconds`/peak-memory figures of the stages. Everything else, and every other output file, is
byte-identical.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from sgm_bake.errors import SGMError, TamperedError
from sgm_bake.io.safetensors import file_sha256
from sgm_bake.io.source import Source

SGM_DIR = "sgm"
RECORD_FILE = "bake.json"
RECORD_PATH = f"{SGM_DIR}/{RECORD_FILE}"
RECORD_FORMAT = "sgm-bake-record/2"
# sgm-bake 0.1 wrote the same fields without a format marker; every field added since has a
# default, so such records read as they are and are rewritten in the current format.
LEGACY_FORMAT = "sgm-bake-record/1"
READABLE_FORMATS = (RECORD_FORMAT, LEGACY_FORMAT)


@dataclass
class ToolInfo:
    """The tool that wrote the output."""

    name: str
    version: str


@dataclass
class SourceInfo:
    """Where the source checkpoint came from: a Hub id and commit, or a local folder."""

    id: str
    kind: str
    revision: str | None = None
    path: str | None = None

    @classmethod
    def of(cls, source: Source) -> SourceInfo:
        if source.hub:
            return cls(id=source.id, kind="hub", revision=source.revision)
        return cls(id=source.id, kind="local", path=str(source.path))


@dataclass
class RecipeInfo:
    """The recipe the bake used, with its full definition so a custom recipe is honoured later."""

    model_type: str
    file: str
    checkpoint_layout: str
    layers: list[int]
    definition: dict[str, Any]


@dataclass
class FormatInfo:
    """The weight files of the source and the dtypes of the folded tensors."""

    source: str
    weight_files: list[str]
    folded_dtypes: list[str]


@dataclass
class ModuleCount:
    """How many units of one module the factors touch."""

    layer: int
    side: str
    units: int
    suppressed: int
    zeroed: int
    amplified: int
    min_alpha: float
    mean_alpha: float


@dataclass
class ExpertiseInfo:
    """The factors that were folded: how they were made, and where they act."""

    metadata: dict[str, str]
    modules: dict[str, ModuleCount]
    tensors_folded: list[str]

    @property
    def units(self) -> int:
        return sum(m.units for m in self.modules.values())

    @property
    def suppressed(self) -> int:
        return sum(m.suppressed for m in self.modules.values())


@dataclass
class Verification:
    """Figures comparing the baked model with the hooked source (see pipeline.verify)."""

    passed: bool
    inputs: str
    samples: int
    positions: int
    max_abs_diff: float
    max_rel_diff: float
    intervention_rel_effect: float
    tolerance: float
    compute_dtype: str
    tensors_swapped: int
    mode: str = "full"
    """`full`: logits of the whole model; `layers`: each folded MLP block on its own (see
    pipeline.verify_layers), where the figures are per-unit output differences."""
    top1_agreement: float | None = None
    """Greedy next-token agreement (`full` only)."""
    layers_checked: int | None = None
    worst_layer: int | None = None
    worst_module: str | None = None
    mapping_check: str | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PromptSetInfo:
    """The prompt set an evaluation used."""

    name: str
    sha256: str
    items: int


@dataclass
class Evaluation:
    """Harm, fluency and reasoning figures per evaluated variant (see evaluation.evaluate)."""

    report: str
    judge: str
    prompt_set: PromptSetInfo
    metrics: dict[str, dict[str, Any]]


@dataclass
class Tuning:
    """The knob search that chose the folded setting (see pipeline.tune): what was searched, the
    chosen trial, the Pareto front, and base vs chosen on the tuning and the held-out report
    split (the report split's figures are the ones to quote)."""

    report: str
    knobs: list[str]
    trials_run: int
    chosen: dict[str, Any] | None
    pareto: list[dict[str, Any]]
    splits: dict[str, Any]
    options: dict[str, Any]
    tuning_split: dict[str, dict[str, Any]]
    report_split: dict[str, dict[str, Any]]
    seconds: float
    interrupted: bool = False


@dataclass
class BakeRecord:
    """Everything `sgm/bake.json` holds."""

    tool: ToolInfo
    versions: dict[str, str]
    source: SourceInfo
    recipe: RecipeInfo
    format: FormatInfo
    expertise: ExpertiseInfo
    command: str | None = None
    created: str | None = None
    base_model: str | None = None
    dropped_files: list[str] = field(default_factory=list)
    source_card: dict[str, Any] = field(default_factory=dict)
    verification: Verification | None = None
    evaluation: Evaluation | None = None
    tuning: Tuning | None = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    record_format: str = RECORD_FORMAT

    @property
    def hub_source(self) -> str | None:
        """The Hub id of the base model, if it came from the Hub or was named."""
        if self.base_model:
            return self.base_model
        return self.source.id if self.source.kind == "hub" else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


T = TypeVar("T")


class _Invalid(ValueError):
    """A field that does not have its declared type; carries the field's dotted path."""


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """Check `value` against a type annotation, building dataclasses from mappings."""
    origin = get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (Union, UnionType):
        options = get_args(annotation)
        if value is None and NoneType in options:
            return None
        candidates = [option for option in options if option is not NoneType]
        if len(candidates) == 1:  # an optional field: report the inner problem itself
            return _convert(value, candidates[0], where)
        for option in candidates:
            try:
                return _convert(value, option, where)
            except _Invalid:
                continue
        raise _Invalid(f"{where} has the wrong type ({type(value).__name__})")
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if not isinstance(value, Mapping):
            raise _Invalid(f"{where} must be an object")
        return _build(annotation, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise _Invalid(f"{where} must be a list")
        (item,) = get_args(annotation) or (Any,)
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _Invalid(f"{where} must be an object")
        key_type, item = get_args(annotation) or (str, Any)
        return {
            _convert(k, key_type, f"{where} key"): _convert(v, item, f"{where}.{k}")
            for k, v in value.items()
        }
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(f"{where} must be a number")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"{where} must be an integer")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise _Invalid(f"{where} must be true or false")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise _Invalid(f"{where} must be a string")
        return value
    return value


def _build(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    hints = get_type_hints(cls)
    values = {}
    for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
        path = f"{where}.{spec.name}" if where else spec.name
        if spec.name not in data:
            required = (
                spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
            )
            if required:
                raise _Invalid(f"{path} is missing")
            continue
        values[spec.name] = _convert(data[spec.name], hints[spec.name], path)
    return cls(**values)


def parse_record(data: Any, where: str = RECORD_PATH) -> BakeRecord:
    """Validate a decoded record; a bad field raises SGMError naming it."""
    if not isinstance(data, Mapping):
        raise SGMError(f"{where} is not a JSON object; the output is damaged, bake it again")
    found = data.get("record_format", LEGACY_FORMAT)
    if found not in READABLE_FORMATS:
        raise SGMError(
            f"{where} has record format {found!r}, which this sgm-bake does not read "
            f"({', '.join(READABLE_FORMATS)}); bake it again with this version"
        )
    try:
        record = _build(BakeRecord, data, "")
    except _Invalid as exc:
        raise SGMError(f"{where}: {exc}; the record is damaged, bake it again") from exc
    record.record_format = RECORD_FORMAT
    return record


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


def rewrite_card(folder: Path, record: BakeRecord, written: Iterable[str] = ()) -> None:
    """Re-render the model card from the record, then record the card and the other files the
    calling command wrote (`written`), and nothing else."""
    from sgm_bake.publish.card import CARD_FILE, write_card

    write_card(folder, record)
    record_files(folder, record, [CARD_FILE, *written])


def record_evaluation(folder: Path, report_name: str, data: Mapping[str, Any]) -> BakeRecord:
    """Add an evaluation report's figures to a baked folder's record, chart and card. The report
    (`report_name`, written by the caller) and the files drawn here are recorded; the caller
    checked the folder with `require_intact` before it wrote the report."""
    from sgm_bake.publish.card import write_plots

    record = read_record(folder)
    record.evaluation = Evaluation(
        report=report_name,
        judge=str(data["judge"]),
        prompt_set=PromptSetInfo(**data["prompt_set"]),
        metrics={label: dict(v["metrics"]) for label, v in data["variants"].items()},
    )
    written = write_plots(folder, record)
    if (folder / report_name).is_file():  # the report the caller wrote into the folder
        written.append(report_name)
    rewrite_card(folder, record, written)
    return record
