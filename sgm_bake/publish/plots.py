"""The plots of a baked folder, drawn with matplotlib (the optional extra `plots`).

Every number a plot shows is formatted exactly as the model card prints it (one decimal of a
percent), axes have titles and round tick values, and harmful rate and accuracy get separate
axes because they answer different questions. Without matplotlib no plot is drawn and the card
says how to get them.
"""

from __future__ import annotations

import logging
import math
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


def _percent_axis(axis: Any, top: float, decimals: int = 0) -> None:
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    axis.set_ylim(0, top)
    axis.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
    axis.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=decimals))


def _save(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # No Software/date metadata: the same numbers give the same bytes.
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


def _legend_above(figure: Any, axis: Any, columns: int) -> None:
    """The legend in a row above the axes, where it cannot cover a bar or a point; none when
    there is a single series (the title names it)."""
    handles, labels = axis.get_legend_handles_labels()
    if len(handles) > 1:
        figure.legend(
            handles, labels, loc="outside upper center", ncols=columns, frameon=False, fontsize=8
        )


def units_per_layer(
    path: Path, layers: Sequence[int], suppressed: Sequence[float], zeroed: Sequence[float]
) -> Path:
    """Share of each layer's units that are suppressed, and of those zeroed: one bar per layer
    when the two are the same (det0 zeroes every unit it suppresses) or nothing is zeroed."""
    # At most 9 inches (900 px): a card shows images at its column's width, about that, and a
    # wider figure would be scaled down until its text cannot be read.
    figure, (axis,) = _figure(min(9.0, max(6.0, 0.3 * len(layers) + 2)), 3.6)
    positions = list(range(len(layers)))
    labelled = len(layers) <= 16  # a value over every bar while they are wide enough
    all_zeroed = any(suppressed) and list(zeroed) == list(suppressed)
    if all_zeroed or not any(zeroed):
        label = "suppressed (all zeroed)" if all_zeroed else "suppressed (none zeroed)"
        bars = axis.bar(positions, suppressed, 0.6, label=label, color=COLOURS[0])
        if labelled:
            axis.bar_label(bars, [percent_text(v) for v in suppressed], fontsize=8, padding=2)
        title = f"Units {'zeroed' if all_zeroed else 'suppressed'} per layer"
    else:
        width = 0.4
        axis.bar(
            [p - width / 2 for p in positions],
            suppressed,
            width,
            label="suppressed",
            color=COLOURS[0],
        )
        axis.bar(
            [p + width / 2 for p in positions],
            zeroed,
            width,
            label="of which zeroed",
            color=COLOURS[1],
        )
        title = "Units suppressed and zeroed per layer"
    step = math.ceil(len(layers) / 24)  # at most 24 tick labels
    axis.set_xticks(positions[::step], [str(layer) for layer in layers][::step])
    axis.set_xlim(-0.6, len(layers) - 0.4)
    axis.set_xlabel("decoder layer")
    axis.set_ylabel("share of the layer's units")
    axis.set_title(title)
    top = max([*suppressed, *zeroed, 0.0])
    _percent_axis(axis, min(1.0, max(0.05, top * 1.15)), decimals=1 if top < 0.05 else 0)
    _legend_above(figure, axis, 2)
    return _save(figure, path)


def auroc_histogram(
    path: Path,
    scores: Sequence[float],
    suppressed: Sequence[bool],
    threshold: float,
    top_k: int | None = None,
) -> Path:
    """Histogram of the units' AUROC, the suppressed units stacked in their own colour, with the
    effective cut marked: the threshold, or with top-k the lowest AUROC the rule suppressed
    (where it lies is what decides which units are changed, not the nominal 0.5)."""
    from matplotlib.ticker import MaxNLocator

    figure, (axis,) = _figure(6.0, 3.8)
    bins = [i / 40 for i in range(41)]
    kept = [s for s, hit in zip(scores, suppressed, strict=True) if not hit]
    hit = [s for s, flag in zip(scores, suppressed, strict=True) if flag]
    axis.hist(
        [kept, hit],
        bins=bins,
        stacked=True,
        color=[COLOURS[5], COLOURS[1]],
        label=[f"kept ({len(kept):,})", f"suppressed ({len(hit):,})"],
    )
    if hit:
        cut = min(hit)
        text = f"cut: top {top_k:,} (AUROC {cut:.3f})" if top_k else f"threshold {threshold:g}"
        axis.axvline(
            cut if top_k else threshold, color="black", linestyle="--", linewidth=1.2, label=text
        )
    axis.set_xlim(0, 1)
    axis.set_xlabel("AUROC (toxic vs non-toxic)")
    axis.set_ylabel("units")
    heights = _bin_heights(scores, bins)
    if heights and max(heights) > 50 * max(1, min(h for h in heights if h)):
        axis.set_yscale("symlog", linthresh=1)
        axis.set_ylabel("units (log scale)")
    else:
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    axis.yaxis.set_major_formatter(lambda value, _: f"{value:,.0f}")
    axis.set_title(f"AUROC of {len(scores):,} profiled units")
    _legend_above(figure, axis, 3)
    return _save(figure, path)


def _bin_heights(scores: Sequence[float], bins: Sequence[float]) -> list[int]:
    heights = [0] * (len(bins) - 1)
    width = bins[1] - bins[0]
    for score in scores:
        heights[min(len(heights) - 1, max(0, int(score / width)))] += 1
    return heights


def evaluation_bars(
    path: Path,
    variants: Sequence[str],
    harmful: Mapping[str, Sequence[float | None]],
    accuracy: Sequence[float | None],
    counts: Mapping[str, int | None] | None = None,
    intervals: Mapping[str, Sequence[Interval]] | None = None,
) -> Path:
    """Harmful rate per condition (left) and benign accuracy (right), one bar per variant, each
    labelled with its value; a 0% bar, often the headline, is drawn as a visible stub. `counts`
    gives the items behind each group (`benign` for the accuracy); `intervals` the 95% interval
    of each bar (same keys as `harmful`, plus `benign` for the accuracy), drawn as error bars
    so that two rates a few points apart are not read as an effect."""
    counts = counts or {}
    intervals = intervals or {}
    figure, (harm_axis, accuracy_axis) = _figure(9.0, 4.2, columns=2)
    groups = list(harmful)
    width = 0.8 / max(1, len(variants))
    stub = 0.012  # of the axis: a zero stays visible
    for index, variant in enumerate(variants):
        offsets = [g - 0.4 + width * (index + 0.5) for g in range(len(groups))]
        values = [harmful[group][index] for group in groups]
        spans = [_nth(intervals.get(group), index) for group in groups]
        harm_axis.bar(
            offsets,
            [stub if v == 0 else (v or 0.0) for v in values],
            width * 0.92,
            label=variant,
            color=COLOURS[index % len(COLOURS)],
            yerr=_error_bars(values, spans),
            error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#333333"},
        )
        _label_bars(harm_axis, offsets, values, spans, rotation=90)
    harm_axis.set_xticks(range(len(groups)), [_counted(g, counts.get(g)) for g in groups])
    harm_axis.set_xlabel("prompt condition (toxic-eliciting items)")
    harm_axis.set_ylabel("harmful replies")
    whiskers = any(span is not None for spans in intervals.values() for span in spans)
    note = "; whiskers: 95% interval" if whiskers else ""
    harm_axis.set_title(f"Harmful rate (lower is better{note})", fontsize=11)
    tops = [v for values in harmful.values() for v in values if v is not None]
    tops += [span[1] for spans in intervals.values() for span in spans if span is not None]
    highest = max([*tops, 0.0])
    _percent_axis(harm_axis, min(1.2, highest + 0.2))  # room for the vertical labels
    spans = [_nth(intervals.get("benign"), i) for i in range(len(variants))]
    accuracy_axis.bar(
        range(len(variants)),
        [stub if v == 0 else (v or 0.0) for v in accuracy],
        0.6,
        color=[COLOURS[i % len(COLOURS)] for i in range(len(variants))],
        yerr=_error_bars(list(accuracy), spans),
        error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#333333"},
    )
    _label_bars(accuracy_axis, list(range(len(variants))), list(accuracy), spans)
    accuracy_axis.set_xticks(range(len(variants)), variants)
    benign = counts.get("benign")
    accuracy_axis.set_xlabel("variant" if benign is None else f"variant ({benign:,} benign items)")
    accuracy_axis.set_ylabel("benign items answered correctly")
    accuracy_axis.set_title(f"Benign accuracy (higher is better{note})", fontsize=11)
    _percent_axis(accuracy_axis, 1.12)
    accuracy_axis.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    _legend_above(figure, harm_axis, len(variants))
    return _save(figure, path)


Interval = tuple[float, float] | None
"""A 95% interval (low, high) of a rate, or None where the report has none."""


def _nth(spans: Sequence[Interval] | None, index: int) -> Interval:
    return spans[index] if spans is not None and index < len(spans) else None


def _error_bars(values: Sequence[float | None], spans: Sequence[Interval]) -> Any:
    """matplotlib's asymmetric `yerr` (distances below and above each bar), or None when no bar
    has an interval."""
    if all(span is None for span in spans):
        return None
    below, above = [], []
    for value, span in zip(values, spans, strict=True):
        if span is None or value is None:
            below.append(0.0)
            above.append(0.0)
        else:
            below.append(max(0.0, value - span[0]))
            above.append(max(0.0, span[1] - value))
    return [below, above]


def _label_bars(
    axis: Any,
    positions: Sequence[float],
    values: Sequence[float | None],
    spans: Sequence[Interval],
    rotation: int = 0,
) -> None:
    """Each bar's value just above the bar or, when it has one, above its interval's top."""
    for x, value, span in zip(positions, values, spans, strict=True):
        top = max(value or 0.0, span[1] if span is not None else 0.0)
        axis.annotate(
            percent_text(value),
            (x, top),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            rotation=rotation,
            fontsize=8,
        )


def _span(figure: Mapping[str, Any] | None) -> Interval:
    if not figure or "low" not in figure or "high" not in figure:
        return None
    return (float(figure["low"]), float(figure["high"]))


def _counted(label: str, count: int | None) -> str:
    return label if count is None else f"{label}\n(n={count:,})"


def evaluation_chart(path: Path, metrics: Mapping[str, Mapping[str, Any]]) -> Path:
    """The evaluation bars from the metrics of each variant (as recorded and reported, in run
    order)."""
    variants = list(metrics)
    conditions = ("standard", "adversarial", "both")
    harmful: dict[str, list[float | None]] = {"all": []}
    harmful.update({condition: [] for condition in conditions})
    spans: dict[str, list[Interval]] = {key: [] for key in (*harmful, "benign")}
    for variant in variants:
        by = metrics[variant].get("harmful_rate_by_condition", {})
        harmful["all"].append(metrics[variant].get("harmful_rate"))
        found = metrics[variant].get("intervals") or {}
        by_found = found.get("harmful_rate_by_condition") or {}
        spans["all"].append(_span(found.get("harmful_rate")))
        spans["benign"].append(_span(found.get("benign_accuracy")))
        for condition in conditions:
            harmful[condition].append(by.get(condition))
            spans[condition].append(_span(by_found.get(condition)))
    shown = {k: v for k, v in harmful.items() if any(x is not None for x in v)}
    accuracy = [metrics[variant].get("benign_accuracy") for variant in variants]
    first = metrics[variants[0]] if variants else {}
    items = first.get("items") or {}
    counts: dict[str, int | None] = {
        "all": items.get("eliciting"),
        "benign": items.get("benign"),
        **(first.get("items_by_condition") or {}),
    }
    return evaluation_bars(path, variants, shown, accuracy, counts, spans)


def pareto_front(trials: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The trials within the KL budget that no other such trial beats on both harm and KL,
    in KL order: the front the chosen trial lies on (a trial over budget is never on it)."""
    feasible = sorted((t for t in trials if t["feasible"]), key=lambda t: (t["kl"], t["harm"]))
    front: list[Mapping[str, Any]] = []
    for trial in feasible:
        if not front or trial["harm"] < front[-1]["harm"]:
            front.append(trial)
    return front


def pareto_plot(path: Path, record: Mapping[str, Any]) -> Path:
    """The tuner's trials as harm vs KL on the tuning split: trials within and over the KL
    budget, the front of the trials within it joined by a step line, the budget, the base and
    the chosen trial."""
    from matplotlib.ticker import FuncFormatter, SymmetricalLogLocator

    trials = record["trials"]
    budget = float(record["options"]["max_kl"])
    base = record["tuning_split"]["base"]
    figure, (axis,) = _figure(6.5, 4.4)
    for feasible, colour, label in (
        (True, COLOURS[0], "within budget"),
        (False, "#aaaaaa", "over budget"),
    ):
        chosen_trials = [t for t in trials if t["feasible"] == feasible]
        if chosen_trials:
            axis.scatter(
                [t["kl"] for t in chosen_trials],
                [t["harm"] for t in chosen_trials],
                s=18,
                color=colour,
                label=f"{label} ({len(chosen_trials)})",
                zorder=2,
            )
    front = pareto_front(trials)
    if len(front) > 1:
        axis.step(
            [t["kl"] for t in front],
            [t["harm"] for t in front],
            where="post",
            color=COLOURS[2],
            linewidth=1.2,
            label="Pareto front",
            zorder=1,
        )
    axis.axvline(budget, color=COLOURS[1], linestyle="--", linewidth=1.2, label="--max-kl")
    axis.scatter([0.0], [base["harm"]], marker="s", color="black", s=30, label="base", zorder=3)
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
            zorder=4,
        )
    largest = max([budget, *(t["kl"] for t in trials)])
    smallest = min([budget / 10, *(t["kl"] for t in trials if t["kl"] > 0)])
    # Linear below the smallest trial's decade (the base sits at 0), logarithmic above it,
    # with ticks at 1-2-5 steps while that leaves at most a dozen of them.
    threshold = 10 ** math.floor(math.log10(max(1e-6, smallest)))
    decades = math.log10(largest / threshold)
    subs = [1.0, 2.0, 5.0] if decades <= 3.5 else [1.0, 3.0] if decades <= 5 else [1.0]
    axis.set_xscale("symlog", linthresh=threshold, linscale=0.5)
    axis.xaxis.set_major_locator(SymmetricalLogLocator(base=10, linthresh=threshold, subs=subs))
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_xlim(-threshold / 2, largest * 1.5)  # the base, at 0, is drawn whole
    axis.set_xlabel("mean KL from the base, nats per response token (symlog)")
    axis.set_ylabel("harmful replies")
    axis.set_title(f"Tuning: {len(trials)} trials, harm vs damage (tuning split)")
    _percent_axis(axis, 1.05 * max([base["harm"], *(t["harm"] for t in trials), 0.05]))
    _legend_above(figure, axis, 3)
    return _save(figure, path)
