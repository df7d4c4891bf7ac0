"""The tuner's scorers: which figures are objectives, which budgets are absolute and which are
relative to the base, and that a figure one run did not measure sets no constraint."""

from __future__ import annotations

from pathlib import Path

from sgm_bake.pipeline.tune import (
    BenignAccuracy,
    DegenerateShare,
    Measurement,
    TrialRecord,
    TuneOptions,
    choose,
    pareto_front,
    ranking,
    scorers,
    violations,
)

BASE = Measurement(harm=0.5, kl=0.0, degenerate=0.10, accuracy=0.80, eval_refusal=0.0)


def test_harm_and_kl_are_the_objectives_in_that_order(tmp_path: Path):
    names = [s.name for s in scorers(TuneOptions(workdir=tmp_path)) if s.objective]
    assert names == ["harm", "kl"]


def test_the_kl_budget_is_absolute_and_the_margins_are_relative_to_the_base(tmp_path: Path):
    options = TuneOptions(workdir=tmp_path, max_kl=0.1, degenerate_margin=0.05)
    trial = Measurement(harm=0.1, kl=0.15, degenerate=0.14, accuracy=0.79, eval_refusal=0.0)
    found = violations(trial, BASE, options)
    assert list(found) == ["kl", "degenerate", "accuracy", "eval_refusal"]
    assert found["kl"] > 0  # 0.15 nats is past 0.1, whatever the base's KL
    assert found["degenerate"] < 0  # 0.14 is within 0.10 + 0.05
    assert DegenerateShare(0.03).within(trial, BASE) is False
    assert BenignAccuracy(0.02).within(trial, BASE) is True  # 0.79 >= 0.80 - 0.02
    assert BenignAccuracy(0.0).within(trial, BASE) is False


def test_a_figure_not_measured_sets_no_constraint(tmp_path: Path):
    trial = Measurement(harm=0.1, kl=0.01, degenerate=0.0)
    assert list(violations(trial, BASE, TuneOptions(workdir=tmp_path))) == ["kl", "degenerate"]


def test_the_choice_is_the_feasible_trial_with_least_harm_then_kl_and_the_front_is_pareto():
    def trial(number: int, harm: float, kl: float, feasible: bool = True) -> TrialRecord:
        return TrialRecord(
            number, {}, {}, Measurement(harm=harm, kl=kl, degenerate=0.0), feasible, 0, 1.0
        )

    trials = [trial(0, 0.2, 0.05), trial(1, 0.2, 0.01), trial(2, 0.0, 0.5, False), trial(3, 0.3, 0)]
    assert choose(trials, BASE) == trials[1]
    assert pareto_front(trials) == [1, 2, 3]
    assert choose(trials, Measurement(harm=0.2, kl=0.0, degenerate=0.0)) is None


def test_a_tie_in_harm_goes_to_the_least_likely_toxic_replies_before_kl():
    """Many settings reach 0 harmful on a few dozen greedy replies; among them the one whose
    toxic replies are least likely wins, whatever its KL (within the budget); a trial measured
    without the figure ranks after those measured with it."""

    def trial(number: int, harm: float, kl: float, logprob: float | None) -> TrialRecord:
        measured = Measurement(harm=harm, kl=kl, degenerate=0.0, toxic_logprob=logprob)
        return TrialRecord(number, {}, {}, measured, True, 0, 1.0)

    trials = [trial(0, 0.0, 0.01, -3.0), trial(1, 0.0, 0.08, -6.0), trial(2, 0.0, 0.0, None)]
    assert choose(trials, BASE) == trials[1]
    assert ranking(trials[2].measurement) > ranking(trials[0].measurement)
    assert choose([trial(0, 0.1, 0.0, -9.0), trial(1, 0.0, 0.05, -1.0)], BASE).number == 1
    assert choose([trial(0, 0.0, 0.05, None), trial(1, 0.0, 0.01, None)], BASE).number == 1
