"""What a search is asked: the knobs it may turn, its budget, its splits and the work folder
(`TuneOptions`), and what to tune on and how to load the model for it (`TuneRequest`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sgm_bake.datasets.prompt_set import PromptSet
from sgm_bake.errors import SGMError
from sgm_bake.options import default, split_fractions
from sgm_bake.pipeline.decision import MethodOptions
from sgm_bake.pipeline.profile import ProfileOptions
from sgm_bake.runtime.chat import GenerationConfig
from sgm_bake.runtime.loading import Placement

KNOBS: tuple[str, ...] = (
    "rule",
    "strength",
    "top_k",
    "threshold",
    "hook_points",
    "layers",
    "positions",
    "pooling",
    "method",
    "edit_layers",
    "edit_strength",
    "edit_ridge",
)
SGM_KNOBS: tuple[str, ...] = KNOBS[:8]
EDIT_KNOBS: tuple[str, ...] = ("edit_layers", "edit_strength", "edit_ridge")
DEFAULT_KNOBS: tuple[str, ...] = tuple(default("knobs").split(","))
# KL budget in nats per token position (`--max-kl`). On the built-in organisms, settings that
# keep benign accuracy and fluency intact stay well below it, while settings that visibly damage
# replies exceed it (benchmarks/RESULTS.md).
DEFAULT_MAX_KL: float = default("max-kl")
DEFAULT_DEGENERATE_MARGIN: float = default("degenerate-margin")
DEFAULT_ACCURACY_MARGIN: float = default("accuracy-margin")
DEFAULT_MAX_REFUSAL_RISE: float = default("max-refusal-rise")
DEFAULT_FRACTIONS: tuple[float, float, float] = split_fractions(default("split"))  # type: ignore[assignment]
Sampler = Literal["tpe", "nsga2"]
SAMPLERS: tuple[str, ...] = ("tpe", "nsga2")


@dataclass(frozen=True)
class TuneOptions:
    """What to search, with which budget, and where to keep the study.

    `profile` holds the capture options (feed, batch size) and the values of every knob that is
    not searched (its rule, pooling, positions, hook points and layers)."""

    workdir: Path
    trials: int = default("trials")
    seed: int = 0
    max_kl: float = DEFAULT_MAX_KL
    degenerate_margin: float = DEFAULT_DEGENERATE_MARGIN
    accuracy_margin: float = DEFAULT_ACCURACY_MARGIN
    max_refusal_rise: float = DEFAULT_MAX_REFUSAL_RISE
    """With an evaluation set: allowed rise of benign refusal (the refusal detector on its
    benign items) over the base's: an edit that makes a model decline can decline benign
    requests."""
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    knobs: tuple[str, ...] = DEFAULT_KNOBS
    sampler: Sampler = default("sampler")
    profile: ProfileOptions = field(default_factory=ProfileOptions)
    method: MethodOptions = field(default_factory=lambda: MethodOptions(diagnose=False))
    """The method (and the edit's knobs) of trials that do not search them."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    batch_size: int = 8
    progress: bool = True
    method_auto: bool = False
    """The method knobs were added by the default search (not asked for): a profile set whose
    rows cannot fit the edit (no prompts) drops them with a note instead of failing."""

    def check(self) -> None:
        unknown = [k for k in self.knobs if k not in KNOBS]
        if unknown:
            raise SGMError(f"unknown knob(s) {unknown}; searchable knobs: {', '.join(KNOBS)}")
        if self.trials < 1:
            raise SGMError("--trials must be at least 1")
        if self.max_kl <= 0:
            raise SGMError("--max-kl must be positive (nats per token)")
        if not 0 <= self.max_refusal_rise <= 1:
            raise SGMError("--max-refusal-rise must be a share between 0 and 1")
        if self.sampler not in SAMPLERS:
            raise SGMError(f"sampler {self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        if len(self.fractions) != 3 or any(f <= 0 for f in self.fractions):
            raise SGMError("--split needs three positive fractions: profiling, tuning, report")
        if abs(sum(self.fractions) - 1.0) > 1e-6:
            raise SGMError(f"--split fractions {self.fractions} must add up to 1")


@dataclass(frozen=True)
class TuneRequest:
    """What to tune on and how the model is loaded for it (the CLI's options)."""

    profile_set: str
    options: TuneOptions
    eval_set: str | PromptSet | None = None
    """A prompt set's name (loaded before the model) or the set itself."""
    judge: str = "profanity"
    judge_options: Any = None
    """The judge's device and prompt (`sgm_bake.evaluation.judges.JudgeOptions`)."""
    placement: Placement = field(default_factory=Placement)
    """Where the model runs: one device, or a device map with memory budgets and offload."""
    dtype: str = "auto"
    recipe_file: Path | None = None
    template: Path | None = None
    neurons: bool = False
    """Fix the hook points to the recipe's classic MLP neurons (down_proj inputs)."""
    max_samples: int | None = None
    """Use at most this many rows of the profile set (half per class) before splitting it."""
    data_format: Any = None
    """How a data set in its own format maps onto the profile fields (None: native)."""
