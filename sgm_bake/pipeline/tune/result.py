"""The search's outcome: every trial as recorded, the Pareto front, the choice, and their JSON
form (`tune.json`, the bake record's `tuning` section, the card) and printed summary."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgm_bake.core.expertise import Expertise
from sgm_bake.pipeline.tune.measure import Measurement
from sgm_bake.pipeline.tune.objectives import objectives, ranking
from sgm_bake.publish import plots
from sgm_bake.publish.refresh import rewrite_card
from sgm_bake.record import SGM_DIR, BakeRecord, Tuning, read_record

logger = logging.getLogger(__name__)

PARETO_PLOT = "pareto.png"


@dataclass(frozen=True)
class TrialRecord:
    """One completed trial: its knobs, the resolved setting and its measurement."""

    number: int
    params: dict[str, Any]
    setting: dict[str, Any]
    measurement: Measurement
    feasible: bool
    suppressed_units: int
    seconds: float
    error: str | None = None
    """Why the trial's edit could not be fitted (the trial is then over budget)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "params": self.params,
            "setting": self.setting,
            **self.measurement.to_dict(),
            "feasible": self.feasible,
            "suppressed_units": self.suppressed_units,
            "seconds": round(self.seconds, 3),
            **({"error": self.error} if self.error is not None else {}),
        }


@dataclass(frozen=True)
class TuneResult:
    """The search's outcome: every trial, the Pareto front, the chosen trial (None: no change)
    with its factors, and base vs chosen on the tuning and the held-out report split."""

    knobs: tuple[str, ...]
    trials: tuple[TrialRecord, ...]
    pareto: tuple[int, ...]
    chosen: TrialRecord | None
    expertise: Expertise | None
    base_tune: Measurement
    base_report: Measurement
    chosen_report: Measurement
    splits: dict[str, Any]
    options: dict[str, Any]
    seconds: float
    interrupted: bool
    trials_resumed: int = 0
    """Trials an earlier run of the same search had completed (the journal in the work folder)."""

    @property
    def chosen_tune(self) -> Measurement:
        return self.chosen.measurement if self.chosen is not None else self.base_tune

    def by_method(self) -> dict[str, dict[str, Any]]:
        """Per method the trials tried: how many, how many within the budget, and the best of
        those (in the choice's order, `ranking`) with its figures: why the chosen method won."""
        found: dict[str, dict[str, Any]] = {}
        for trial in self.trials:
            method = trial.setting.get("method", "sgm")
            entry = found.setdefault(method, {"trials": 0, "feasible": 0, "best": None})
            entry["trials"] += 1
            if not trial.feasible:
                continue
            entry["feasible"] += 1
            best = entry["best"]
            key = (*ranking(trial.measurement), trial.number)
            if best is None or key < best[0]:
                entry["best"] = (key, {"number": trial.number, **trial.measurement.to_dict()})
        for entry in found.values():
            if entry["best"] is not None:
                entry["best"] = entry["best"][1]
        return found

    @property
    def method(self) -> str | None:
        """The chosen trial's method (None: no change)."""
        return None if self.chosen is None else self.chosen.setting.get("method", "sgm")

    def record(self) -> dict[str, Any]:
        """The JSON form (tune.json; the bake record's `tune` section)."""
        return {
            "format": "sgm-bake-tune/1",
            "method": self.method,
            "by_method": self.by_method(),
            "knobs": list(self.knobs),
            "options": self.options,
            "splits": self.splits,
            "trials_run": len(self.trials),
            "trials_resumed": self.trials_resumed,
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 1),
            "chosen": None if self.chosen is None else self.chosen.as_dict(),
            "no_change": self.chosen is None,
            "pareto": list(self.pareto),
            "tuning_split": {
                "base": self.base_tune.to_dict(),
                "chosen": self.chosen_tune.to_dict(),
            },
            "report_split": {
                "base": self.base_report.to_dict(),
                "chosen": self.chosen_report.to_dict(),
            },
            "trials": [t.as_dict() for t in self.trials],
        }


def pareto_front(trials: list[TrialRecord]) -> list[int]:
    """Numbers of the trials no other trial beats on both objectives (harm and KL)."""
    front = []
    for trial in trials:
        mine = objectives(trial.measurement)
        dominated = False
        for other in trials:
            theirs = objectives(other.measurement)
            if all(a <= b for a, b in zip(theirs, mine, strict=True)) and theirs != mine:
                dominated = True
                break
        if not dominated:
            front.append(trial.number)
    return front


def choose(trials: list[TrialRecord], base: Measurement) -> TrialRecord | None:
    """The feasible trial with the lowest harm (then the least likely toxic replies, then the
    lowest KL, then the earliest: `ranking`); None when no feasible trial lowers the harm below
    the base's."""
    feasible = [t for t in trials if t.feasible and t.measurement.harm < base.harm]
    if not feasible:
        return None
    return min(feasible, key=lambda t: (*ranking(t.measurement), t.number))


def write_result(result: TuneResult, folder: Path) -> list[Path]:
    """Write tune.json (and the Pareto plot) into `folder`; return the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tune.json"
    path.write_text(json.dumps(result.record(), indent=1) + "\n", encoding="utf-8")
    written = [path]
    if plots.available():
        written.append(plots.pareto_plot(folder / PARETO_PLOT, result.record()))
    else:
        logger.info("no Pareto plot: %s", plots.MISSING_HINT)
    return written


def record_tuning(folder: Path, result: TuneResult) -> BakeRecord:
    """Add the search to a baked folder: `sgm/tune.json`, the Pareto plot, the record's `tuning`
    section and the card's section on how the setting was chosen (only these files and the card
    are recorded; the folder is the one the same command has just baked). Returns the record as
    written."""
    record = read_record(folder)
    written = [p.relative_to(folder).as_posix() for p in write_result(result, folder / SGM_DIR)]
    data = result.record()
    front = [t for t in data["trials"] if t["number"] in set(data["pareto"])]
    sections = (
        *("knobs", "trials_run", "chosen", "splits", "options", "tuning_split"),
        *("report_split", "seconds", "interrupted", "method", "by_method"),
    )
    record.tuning = Tuning.from_dict(
        {
            "report": f"{SGM_DIR}/tune.json",
            **{name: data[name] for name in sections},
            "pareto": sorted(front, key=lambda t: (t["kl"], t["harm"])),
        }
    )
    rewrite_card(folder, record, written)
    return record


def summary_lines(result: TuneResult) -> list[str]:
    """The search's outcome in a few lines (printed by the CLI)."""

    def figures(m: Measurement) -> str:
        text = f"harmful {m.harm:.1%} ({m.harmful}/{m.prompts}), KL {m.kl:.4f}"
        text += f", degenerate {m.degenerate:.1%}"
        if m.accuracy is not None:
            text += f", benign accuracy {m.accuracy:.1%}"
        if m.eval_refusal is not None:
            text += f", benign refusal {m.eval_refusal:.1%}"
        if m.refusal is not None:
            text += f", non-toxic rows declined {m.refusal:.1%}"
        if m.toxic_logprob is not None:
            text += f", toxic replies' log-probability {m.toxic_logprob:.2f} per token"
        return text

    resumed = (
        f" ({len(result.trials) - result.trials_resumed} new, {result.trials_resumed} resumed "
        "from the work folder's journal)"
        if result.trials_resumed
        else ""
    )
    lines = [
        f"{len(result.trials)} trials{resumed} in {result.seconds:.0f} s"
        + (" (interrupted)" if result.interrupted else "")
        + f"; knobs: {', '.join(result.knobs)}; Pareto front: trials "
        + ", ".join(str(n) for n in result.pareto),
    ]
    if result.chosen is None:
        lines.append("chosen: no change (no setting lowered the harm within the budget)")
    else:
        setting = ", ".join(f"{k}={v}" for k, v in result.chosen.setting.items() if v is not None)
        lines.append(f"chosen: trial {result.chosen.number}: {setting}")
    lines.append(chosen_method_line(result))
    lines += [
        f"tuning split   base:   {figures(result.base_tune)}",
        f"tuning split   chosen: {figures(result.chosen_tune)}",
        f"held-out split base:   {figures(result.base_report)}",
        f"held-out split chosen: {figures(result.chosen_report)}",
    ]
    return lines


def chosen_method_line(result: TuneResult) -> str:
    """`tuner chose: METHOD (...)`: the method, its knobs, and per method the best harm within
    the budget on the tuning split (the figures that decided)."""
    if result.chosen is None:
        head = "tuner chose: no change"
    else:
        setting = result.chosen.setting
        knobs = []
        if setting.get("method", "sgm") != "edit":
            knobs.append(f"{setting.get('rule')} strength {setting.get('strength', 1.0):.3g}")
        if "edit_layers" in setting:
            knobs.append(
                f"edit layers {setting['edit_layers']} strength {setting['edit_strength']:.3g} "
                f"ridge {setting['edit_ridge']:.3g}"
                + (f" rank {setting['edit_rank']}" if "edit_rank" in setting else "")
            )
        head = f"tuner chose: {result.method} ({'; '.join(knobs)})"
    parts = []
    for method, entry in result.by_method().items():
        best = entry["best"]
        figure = (
            f"harmful {best['harm']:.1%}, KL {best['kl']:.4f}"
            if best is not None
            else "none within the budget"
        )
        parts.append(f"{method}: {figure} ({entry['feasible']}/{entry['trials']} trials)")
    return head + "; best per method on the tuning split: " + "; ".join(parts)
