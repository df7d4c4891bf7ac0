"""The bake record, `sgm/bake.json`: a typed, versioned contract, its types and its validation.

Every stage that adds to the record (bake, verification, evaluation, tuning) fills its typed
section; readers (card, inspect, push, unbake, verify) get a validated `BakeRecord`, never a
dict read by string keys. Reading validates every field and names the first bad one, so a
damaged or hand-edited record is reported clearly instead of failing deep inside a command.
Reading and writing the file, and the sha256 of the folder, are in `record.store`.

Fields that differ between two bakes of the same inputs: `created` (a UTC time stamp) and the
`seconds`/peak-memory figures of the stages. Everything else, and every other output file, is
byte-identical.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import NoneType, UnionType
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from sgm_bake.errors import SGMError
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


@dataclass(frozen=True)
class LayerCheck:
    """The figures of one layer's block in a layer-by-layer verification."""

    layer: int
    block: str
    max_rel_diff: float
    worst_module: str
    block_rel_diff: float
    block_abs_diff: float
    intervention_rel_effect: float
    passed: bool


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
    layers: list[LayerCheck] = field(default_factory=list)
    """Per-layer figures (`layers` only)."""


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
    variants: list[str] = field(default_factory=list)
    """The variants in the order they were evaluated (the record's keys are sorted on disk)."""

    def ordered(self) -> dict[str, dict[str, Any]]:
        """`metrics` in run order (base first, as evaluated); a record without the order (older
        sgm-bake) keeps the order it was read in."""
        order = [name for name in self.variants if name in self.metrics]
        order += [name for name in self.metrics if name not in order]
        return {name: self.metrics[name] for name in order}


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
    method: str | None = None
    """The chosen trial's method (sgm, edit, both; None: no change or an older record)."""
    by_method: dict[str, Any] = field(default_factory=dict)
    """Per method tried: trials, trials within the budget, the best of those with its figures."""


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
    settings: dict[str, Any] = field(default_factory=dict)
    """The command's effective options (`values`) and, for those not from the command line or
    the default, where they came from (`sources`: config file or environment)."""
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
