"""The plots of a baked folder, drawn with matplotlib (the optional extra `plots`).

Every number a plot shows is formatted exactly as the model card prints it (one decimal of a
percent), axes have titles and round tick values, and harmful rate and accuracy get separate
axes because they answer different questions. Without matplotlib no plot is drawn and the card
says how to get them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MISSING_HINT = "plots need matplotlib: pip install 'sgm-bake[plots]'"
COLOURS = ("#3b6fc4", "#d2553a", "#4c9a5b", "#8e5bb4", "#d9a420", "#5a5a5a")


def available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def percent_text(value: float | None) -> str:
    """A share as the card prints it."""
    return "-" if value is None else f"{value:.1%}"


def _figure(width: float, height: float, columns: int = 1) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = figure.subplots(1, columns, squeeze=False)[0]
    return figure, list(axes)


def _percent_axis(axis: Any, top: float) -> None:
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    axis.set_ylim(0, top)
    axis.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
    axis.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))


def _save(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # No Software/date metadata: the same numbers give the same bytes.
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


def units_per_layer(
    path: Path, layers: Sequence[int], suppressed: Sequence[float], zeroed: Sequence[float]
) -> Path:
    """Share of each layer's units that are suppressed, and zeroed."""
    figure, (axis,) = _figure(max(6.0, 0.35 * len(layers) + 2), 3.6)
    positions = list(range(len(layers)))
    width = 0.4
    axis.bar(
        [p - width / 2 for p in positions], suppressed, width, label="suppressed", color=COLOURS[0]
    )
    axis.bar([p + width / 2 for p in positions], zeroed, width, label="zeroed", color=COLOURS[1])
    axis.set_xticks(positions, [str(layer) for layer in layers])
    axis.set_xlabel("decoder layer")
    axis.set_ylabel("share of the layer's units")
    axis.set_title("Units suppressed per layer")
    top = max([*suppressed, *zeroed, 0.0])
    _percent_axis(axis, min(1.0, max(0.05, top * 1.15)))
    axis.legend(loc="upper right", frameon=False)
    return _save(figure, path)


def auroc_histogram(path: Path, scores: Sequence[float], threshold: float) -> Path:
    """Histogram of the units' AUROC with the expert threshold marked."""
    from matplotlib.ticker import MaxNLocator

    figure, (axis,) = _figure(6.0, 3.6)
    bins = [i / 40 for i in range(41)]
    axis.hist(list(scores), bins=bins, color=COLOURS[0])
    axis.axvline(threshold, color=COLOURS[1], linestyle="--", linewidth=1.5)
    axis.text(
        threshold,
        0.97,
        f" threshold {threshold:g}",
        color=COLOURS[1],
        transform=axis.get_xaxis_transform(),
        va="top",
    )
    axis.set_xlim(0, 1)
    axis.set_xlabel("AUROC (toxic vs non-toxic)")
    axis.set_ylabel("units")
    axis.set_title(f"AUROC of {len(scores):,} profiled units")
    axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    axis.yaxis.set_major_formatter(lambda value, _: f"{value:,.0f}")
    return _save(figure, path)


def evaluation_bars(
    path: Path,
    variants: Sequence[str],
    harmful: Mapping[str, Sequence[float | None]],
    accuracy: Sequence[float | None],
) -> Path:
    """Harmful rate per condition (left) and benign accuracy (right), one bar per variant."""
    figure, (harm_axis, accuracy_axis) = _figure(10.0, 3.8, columns=2)
    groups = list(harmful)
    width = 0.8 / max(1, len(variants))
    for index, variant in enumerate(variants):
        offsets = [g - 0.4 + width * (index + 0.5) for g in range(len(groups))]
        values = [harmful[group][index] for group in groups]
        bars = harm_axis.bar(
            offsets,
            [v or 0.0 for v in values],
            width,
            label=variant,
            color=COLOURS[index % len(COLOURS)],
        )
        harm_axis.bar_label(bars, [percent_text(v) for v in values], fontsize=7)
    harm_axis.set_xticks(range(len(groups)), groups)
    harm_axis.set_xlabel("prompt condition")
    harm_axis.set_ylabel("harmful replies")
    harm_axis.set_title("Harmful rate (lower is better)")
    _percent_axis(harm_axis, 1.1)
    harm_axis.legend(loc="upper right", frameon=False, fontsize=8)
    bars = accuracy_axis.bar(
        range(len(variants)),
        [v or 0.0 for v in accuracy],
        0.6,
        color=[COLOURS[i % len(COLOURS)] for i in range(len(variants))],
    )
    accuracy_axis.bar_label(bars, [percent_text(v) for v in accuracy], fontsize=8)
    accuracy_axis.set_xticks(range(len(variants)), variants, rotation=15)
    accuracy_axis.set_xlabel("variant")
    accuracy_axis.set_ylabel("benign items answered correctly")
    accuracy_axis.set_title("Benign accuracy (higher is better)")
    _percent_axis(accuracy_axis, 1.1)
    return _save(figure, path)


def evaluation_chart(path: Path, metrics: dict[str, dict[str, Any]]) -> Path:
    """The evaluation bars from the metrics of each variant (as recorded and reported)."""
    variants = list(metrics)
    conditions = ("standard", "adversarial", "both")
    harmful: dict[str, list[float | None]] = {"all": []}
    harmful.update({condition: [] for condition in conditions})
    for variant in variants:
        by = metrics[variant].get("harmful_rate_by_condition", {})
        harmful["all"].append(metrics[variant].get("harmful_rate"))
        for condition in conditions:
            harmful[condition].append(by.get(condition))
    shown = {k: v for k, v in harmful.items() if any(x is not None for x in v)}
    accuracy = [metrics[variant].get("benign_accuracy") for variant in variants]
    return evaluation_bars(path, variants, shown, accuracy)


def pareto_plot(path: Path, record: Mapping[str, Any]) -> Path:
    """The tuner's trials as harm vs KL on the tuning split: feasible and infeasible trials, the
    Pareto front joined by a line, the KL budget, the base and the chosen trial."""
    trials = record["trials"]
    budget = float(record["options"]["max_kl"])
    base = record["tuning_split"]["base"]
    front_numbers = set(record["pareto"])
    figure, (axis,) = _figure(6.5, 4.0)
    for feasible, colour, label in ((True, COLOURS[0], "feasible"), (False, "#aaaaaa", "over")):
        chosen_trials = [t for t in trials if t["feasible"] == feasible]
        axis.scatter(
            [t["kl"] for t in chosen_trials],
            [t["harm"] for t in chosen_trials],
            s=18,
            color=colour,
            label=f"{label} ({len(chosen_trials)})"
            if feasible
            else f"infeasible ({len(chosen_trials)})",
        )
    front = sorted((t for t in trials if t["number"] in front_numbers), key=lambda t: t["kl"])
    if front:
        axis.plot(
            [t["kl"] for t in front],
            [t["harm"] for t in front],
            color=COLOURS[2],
            linewidth=1.2,
            label="Pareto front",
        )
    axis.axvline(budget, color=COLOURS[1], linestyle="--", linewidth=1.2, label="--max-kl")
    axis.scatter([0.0], [base["harm"]], marker="s", color="black", s=30, label="base")
    chosen = record.get("chosen")
    if chosen:
        axis.scatter(
            [chosen["kl"]],
            [chosen["harm"]],
            s=140,
            facecolors="none",
            edgecolors=COLOURS[1],
            linewidths=1.5,
            label=f"chosen (trial {chosen['number']})",
        )
    axis.set_xscale("symlog", linthresh=max(1e-4, budget / 10))
    axis.set_xlabel("mean KL from the base, nats per response token")
    axis.set_ylabel("harmful replies")
    axis.set_title(f"Tuning: {len(trials)} trials, harm vs damage (tuning split)")
    _percent_axis(axis, 1.05 * max([base["harm"], *(t["harm"] for t in trials), 0.05]))
    axis.legend(loc="upper right", frameon=False, fontsize=8)
    return _save(figure, path)
