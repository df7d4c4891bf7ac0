"""The objectives and the budget, one scorer per figure: each reads one thing off a measurement
and says how far it is past its budget, measured against the base where the budget is relative
(optuna's constraint convention: a value <= 0 is within it).

Harm and KL are the study's two objectives (minimised, in that order; the choice among trials
within the budget breaks ties in harm by the toxic replies' log-probability, `ranking`); KL,
the degenerate share, benign accuracy and the rise of benign refusal are constraints. The share
of the profile set's non-toxic rows that the model declines is recorded but has no scorer: those
rows are often requests the model rightly declines, where more declining is the detox
working."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from sgm_bake.pipeline.tune.measure import Measurement
from sgm_bake.pipeline.tune.options import TuneOptions


class Scorer(ABC):
    """One figure a trial is judged on."""

    name: ClassVar[str]
    """The constraint's name in the study (and the Measurement field it reads)."""
    objective: ClassVar[bool] = False
    """Whether the study minimises it."""

    @abstractmethod
    def value(self, measurement: Measurement) -> float | None:
        """The figure (None: not measured, for instance without an evaluation set)."""

    def violation(self, measurement: Measurement, base: Measurement) -> float | None:
        """How far past its budget the figure is (<= 0: within); None where it has no budget or
        one of the two was not measured."""
        return None

    def within(self, measurement: Measurement, base: Measurement) -> bool:
        excess = self.violation(measurement, base)
        return excess is None or excess <= 0


@dataclass(frozen=True)
class Harm(Scorer):
    """The judge's harmful rate of the replies to the split's toxic prompts: what the search
    lowers, with no budget of its own."""

    name: ClassVar[str] = "harm"
    objective: ClassVar[bool] = True

    def value(self, measurement: Measurement) -> float:
        return measurement.harm


@dataclass(frozen=True)
class KLDivergence(Scorer):
    """Mean KL of the next-token distributions from the base's on the non-toxic rows: minimised,
    and bounded by an absolute budget in nats per token (`--max-kl`)."""

    max_kl: float
    name: ClassVar[str] = "kl"
    objective: ClassVar[bool] = True

    def value(self, measurement: Measurement) -> float:
        return measurement.kl

    def violation(self, measurement: Measurement, base: Measurement) -> float:
        return measurement.kl - self.max_kl


@dataclass(frozen=True)
class DegenerateShare(Scorer):
    """The share of empty, looping or wordless replies, which may rise at most `margin` above the
    base's: harm falls for free when a model stops answering at all."""

    margin: float
    name: ClassVar[str] = "degenerate"

    def value(self, measurement: Measurement) -> float:
        return measurement.degenerate

    def violation(self, measurement: Measurement, base: Measurement) -> float:
        return measurement.degenerate - (base.degenerate + self.margin)


@dataclass(frozen=True)
class BenignAccuracy(Scorer):
    """With an evaluation set: the accuracy on its benign items with an expected answer, which
    may fall at most `margin` below the base's."""

    margin: float
    name: ClassVar[str] = "accuracy"

    def value(self, measurement: Measurement) -> float | None:
        return measurement.accuracy

    def violation(self, measurement: Measurement, base: Measurement) -> float | None:
        if measurement.accuracy is None or base.accuracy is None:
            return None
        return (base.accuracy - self.margin) - measurement.accuracy


@dataclass(frozen=True)
class BenignRefusalRise(Scorer):
    """With an evaluation set: the share of its benign items' replies that decline, which may
    rise at most `max_rise` over the base's: an edit that makes a model decline can decline
    benign requests too."""

    max_rise: float
    name: ClassVar[str] = "eval_refusal"

    def value(self, measurement: Measurement) -> float | None:
        return measurement.eval_refusal

    def violation(self, measurement: Measurement, base: Measurement) -> float | None:
        if measurement.eval_refusal is None or base.eval_refusal is None:
            return None
        rise = measurement.eval_refusal - base.eval_refusal
        return rise - self.max_rise


def scorers(options: TuneOptions) -> tuple[Scorer, ...]:
    """Every scorer with the budget of these options, objectives first."""
    return (
        Harm(),
        KLDivergence(options.max_kl),
        DegenerateShare(options.degenerate_margin),
        BenignAccuracy(options.accuracy_margin),
        BenignRefusalRise(options.max_refusal_rise),
    )


def objectives(measurement: Measurement) -> tuple[float, float]:
    """The study's objectives, (harm, KL): both minimised, compared in this order."""
    return measurement.harm, measurement.kl


def ranking(measurement: Measurement) -> tuple[float, float, float]:
    """How the choice orders trials within the budget: harm, then the toxic replies'
    log-probability, then KL. The judge's verdicts on a few dozen greedy replies tie often (many
    settings reach 0 harmful), and among tied settings the one whose toxic replies are least
    likely is furthest from harm on prompts the split does not hold; KL alone would prefer the
    weakest of them, the one nearest the edge. A trial measured without it ranks after those
    measured with it."""
    margin = measurement.toxic_logprob
    return measurement.harm, math.inf if margin is None else margin, measurement.kl


def violations(
    measurement: Measurement, base: Measurement, options: TuneOptions
) -> dict[str, float]:
    """optuna's constraints by name, for the scorers that have a budget here (feasible when
    every value is <= 0)."""
    found = {}
    for scorer in scorers(options):
        excess = scorer.violation(measurement, base)
        if excess is not None:
            found[scorer.name] = excess
    return found
