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

import copy
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

# The evaluation's rows of a baked folder: the baked weights, and them answering through ECSO.
# Method-neutral, since a bake folds SGM's factors, the edit's deltas or both.
BAKED_LABEL = "baked"
BAKED_ECSO_LABEL = "baked+ecso"
# What older sgm-bake called those rows whatever it baked (`eval`: sgm-baked and sgm*-baked, the
# demo: sgm-baked and sgm*); records that hold them are read as they are.
LEGACY_LABELS = {"sgm-baked": BAKED_LABEL, "sgm*-baked": BAKED_ECSO_LABEL, "sgm*": BAKED_ECSO_LABEL}


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

    def summary(self) -> str:
        """One line: the verdict and the figures that decided it."""
        verdict = "PASS" if self.passed else "FAIL"
        if self.mode == "layers":
            return (
                f"{verdict}: {self.layers_checked} MLP blocks checked layer by layer, largest "
                f"per-unit relative difference {self.max_rel_diff:.3g} (layer {self.worst_layer}, "
                f"{self.worst_module}; tolerance {self.tolerance:.3g}), intervention effect "
                f"{self.intervention_rel_effect:.3g} ({self.inputs} inputs, {self.positions} "
                f"positions per layer, tensor map checked {self.mapping_check})"
            )
        agreement = "-" if self.top1_agreement is None else f"{self.top1_agreement:.1%}"
        return (
            f"{verdict}: max |logit diff| {self.max_abs_diff:.3g} "
            f"(relative {self.max_rel_diff:.3g}, "
            f"tolerance {self.tolerance:.3g}), greedy agreement {agreement} over "
            f"{self.positions} positions, intervention effect {self.intervention_rel_effect:.3g} "
            f"({self.inputs} inputs, {self.compute_dtype})"
        )


@dataclass
class PromptSetInfo:
    """The prompt set an evaluation used."""

    name: str
    sha256: str
    items: int


@dataclass(kw_only=True)
class Entry:
    """Base of the sections later stages add (evaluation, tuning) and of their parts: the keys
    this sgm-bake reads are typed fields, the others are kept in `extra`, and a key an older
    record lacked stays out when the record is written again, so reading and rewriting a record
    changes none of its JSON."""

    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    """Keys this sgm-bake does not type (a newer writer's, or figures only reports show)."""
    absent: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    """Typed fields the JSON read lacked (they hold their defaults and are not written)."""

    @classmethod
    def typed_fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name not in ("extra", "absent")]

    @classmethod
    def from_dict(cls: type[E], data: Mapping[str, Any], where: str = "") -> E:
        """Validate and type a decoded section; a bad field raises `_Invalid` naming it."""
        known = cls.typed_fields()
        entry = _build(cls, {k: v for k, v in data.items() if k in known}, where)
        entry.extra = {k: v for k, v in data.items() if k not in known}
        entry.absent = frozenset(k for k in known if k not in data)
        return entry

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the typed fields (less those the record read lacked), then `extra`."""
        found = {
            name: _plain(getattr(self, name))
            for name in self.typed_fields()
            if name not in self.absent
        }
        return {**found, **_plain(self.extra)}


E = TypeVar("E", bound=Entry)


@dataclass(kw_only=True)
class VariantMetrics(Entry):
    """One evaluated variant's figures (see evaluation.evaluate.summarize): rates are shares,
    None where nothing was measured; `intervals` holds each rate's 95% interval and counts
    (`rate`, `low`, `high`, `count`, `n`; missing in records written before intervals)."""

    harmful_rate: float | None = None
    harmful_rate_by_condition: dict[str, float] = field(default_factory=dict)
    harmful_rate_by_category: dict[str, float | None] = field(default_factory=dict)
    benign_harmful_rate: float | None = None
    benign_accuracy: float | None = None
    degenerate_share: float | None = None
    benign_refusal: float | None = None
    edgy_refusal: float | None = None
    reference_perplexity: float | None = None
    runs: int = 1
    intervals: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class Evaluation(Entry):
    """Harm, fluency and reasoning figures per evaluated variant (see evaluation.evaluate)."""

    report: str
    judge: str
    prompt_set: PromptSetInfo
    metrics: dict[str, VariantMetrics]
    variants: list[str] = field(default_factory=list)
    """The variants in the order they were evaluated (the record's keys are sorted on disk)."""

    @classmethod
    def of_report(cls, report: str, data: Mapping[str, Any]) -> Evaluation:
        """The section for an evaluation report (`eval.json`'s judge, prompt set and each
        variant's metrics, in run order)."""
        return cls.from_dict(
            {
                "report": report,
                "judge": str(data["judge"]),
                "prompt_set": dict(data["prompt_set"]),
                "metrics": {label: dict(v["metrics"]) for label, v in data["variants"].items()},
                "variants": list(data["variants"]),
            }
        )

    def ordered(self) -> dict[str, VariantMetrics]:
        """`metrics` in run order (base first, as evaluated); a record without the order (older
        sgm-bake) keeps the order it was read in."""
        order = [name for name in self.variants if name in self.metrics]
        order += [name for name in self.metrics if name not in order]
        return {name: self.metrics[name] for name in order}

    def model_label(self) -> str | None:
        """The row of the evaluated model itself (not of the base or of ECSO): `baked`, its
        name in an older record, or `model` for an evaluation of a folder that was not baked."""
        legacy = [old for old, new in LEGACY_LABELS.items() if new == BAKED_LABEL]
        return next((v for v in (BAKED_LABEL, *legacy, "model") if v in self.metrics), None)

    def ordered_dicts(self) -> dict[str, dict[str, Any]]:
        """`ordered()` in JSON form (what the evaluation chart and `inspect --json` show)."""
        return {name: metrics.to_dict() for name, metrics in self.ordered().items()}


@dataclass(kw_only=True)
class SplitFigures(Entry):
    """Harm and damage of one setting (or the base) on one split of the tuner's profile set
    (see pipeline.tune.measure): harmful share of the toxic prompts' replies, KL from the base in
    nats per token, degenerate share, and with an evaluation set benign accuracy and refusal."""

    harm: float
    kl: float
    degenerate: float
    accuracy: float | None = None
    harmful: int = 0
    prompts: int = 0
    refusal: float | None = None
    """The share of replies to the split's non-toxic prompts that decline. Recorded, not
    constrained: a profile set's non-toxic rows are often requests the model rightly declines
    (the organisms' are), where more declining is the detox working."""
    eval_refusal: float | None = None
    """With an evaluation set: benign refusal, the share of its benign items' replies that
    decline (benign requests, edgy-looking ones included); constrained by max_refusal_rise."""
    toxic_logprob: float | None = None
    """Mean log-probability per token the model gives the split's toxic rows' own replies
    (teacher-forced after their prompts): how far from saying them it is, which the judge's
    verdicts on greedy replies cannot see. Breaks ties in harm (lower is further from harm);
    None where the toxic rows carry no prompt and reply."""


@dataclass(kw_only=True)
class SplitPair(Entry):
    """The base and the chosen setting on one split."""

    base: SplitFigures
    chosen: SplitFigures


@dataclass(kw_only=True)
class BestTrial(SplitFigures):
    """The best trial of one method within the budget: its number and figures."""

    number: int


@dataclass(kw_only=True)
class TrialEntry(SplitFigures):
    """One trial of the search: its knobs, the resolved setting, its figures on the tuning
    split and whether it stayed within the budget."""

    number: int
    params: dict[str, Any] = field(default_factory=dict)
    setting: dict[str, Any] = field(default_factory=dict)
    """The knobs as the card shows them (method, rule, strength, edit layers...)."""
    feasible: bool = True
    suppressed_units: int = 0
    seconds: float = 0.0


@dataclass(kw_only=True)
class MethodTrials(Entry):
    """Per method the search tried: how many trials, how many within the budget, the best."""

    trials: int
    feasible: int
    best: BestTrial | None = None


@dataclass(kw_only=True)
class SplitCounts(Entry):
    """Rows of each label in one split."""

    toxic: int
    non_toxic: int


@dataclass(kw_only=True)
class TuningSplits(Entry):
    """How the profile set was split: seed, fractions, and each part's rows."""

    seed: int | None = None
    fractions: list[float] = field(default_factory=list)
    profile: SplitCounts | None = None
    tune: SplitCounts | None = None
    report: SplitCounts | None = None

    def parts(self) -> dict[str, SplitCounts]:
        """The parts the record names, in split order."""
        found = {"profile": self.profile, "tune": self.tune, "report": self.report}
        return {name: part for name, part in found.items() if part is not None}


@dataclass(kw_only=True)
class TuningOptions(Entry):
    """The search's options as recorded."""

    trials: int | None = None
    seed: int | None = None
    sampler: str | None = None
    max_kl: float = 0.0
    degenerate_margin: float | None = None
    accuracy_margin: float | None = None
    max_refusal_rise: float | None = None
    method: str | None = None
    """The method trials used, or `searched`."""
    feed: str | None = None
    eval_set: str | None = None
    judge: str = "-"


@dataclass(kw_only=True)
class Tuning(Entry):
    """The knob search that chose the folded setting (see pipeline.tune): what was searched, the
    chosen trial, the Pareto front, and base vs chosen on the tuning and the held-out report
    split (the report split's figures are the ones to quote)."""

    report: str
    knobs: list[str]
    trials_run: int
    chosen: TrialEntry | None
    pareto: list[TrialEntry]
    splits: TuningSplits
    options: TuningOptions
    tuning_split: SplitPair
    report_split: SplitPair
    seconds: float
    interrupted: bool = False
    method: str | None = None
    """The chosen trial's method (sgm, edit, both; None: no change or an older record)."""
    by_method: dict[str, MethodTrials] = field(default_factory=dict)
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
        return _plain(self)  # type: ignore[no-any-return]


def _plain(value: Any) -> Any:
    """`value` as JSON data: dataclasses as objects (an `Entry` as its own `to_dict` says),
    containers copied."""
    if isinstance(value, Entry):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return copy.deepcopy(value)


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
        if issubclass(annotation, Entry):
            return annotation.from_dict(value, where)
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
