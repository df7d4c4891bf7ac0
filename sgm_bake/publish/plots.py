"""Small bar charts drawn with Pillow (no plotting library needed): units suppressed per layer,
AUROC histogram, evaluation bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

PALETTE = [
    (60, 110, 200),
    (220, 90, 60),
    (70, 160, 90),
    (150, 90, 180),
    (230, 170, 40),
    (90, 90, 90),
]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def grouped_bars(
    path: Path,
    title: str,
    groups: list[str],
    series: dict[str, list[float | None]],
    y_max: float | None = None,
    y_label: str = "",
    percent: bool = False,
) -> Path:
    """Write a grouped bar chart: one group of bars per entry of `groups`, one bar per series."""
    width, height = 900, 480
    left, right, top, bottom = 70, 20, 50, 90
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(16), _font(12)
    draw.text((left, 12), title, fill="black", font=font)
    values = [v for vs in series.values() for v in vs if v is not None]
    top_value = y_max if y_max is not None else (max(values) * 1.1 if values else 1.0) or 1.0
    plot_height = height - top - bottom
    draw.line((left, top, left, height - bottom), fill="black")
    draw.line((left, height - bottom, width - right, height - bottom), fill="black")
    for tick in range(5):
        value = top_value * tick / 4
        y = height - bottom - plot_height * tick / 4
        draw.line((left - 4, y, width - right, y), fill=(225, 225, 225))
        label = f"{value:.0%}" if percent else f"{value:.3g}"
        draw.text((8, y - 7), label, fill="black", font=small)
    if y_label:
        draw.text((8, top - 22), y_label, fill="black", font=small)
    group_width = (width - left - right) / max(1, len(groups))
    bar_width = group_width * 0.8 / max(1, len(series))
    for g, group in enumerate(groups):
        x0 = left + g * group_width + group_width * 0.1
        for s, (_, vs) in enumerate(series.items()):
            value = vs[g]
            if value is None:
                continue
            bar_height = plot_height * min(value, top_value) / top_value
            x = x0 + s * bar_width
            draw.rectangle(
                (x, height - bottom - bar_height, x + bar_width - 2, height - bottom),
                fill=PALETTE[s % len(PALETTE)],
            )
            text = f"{value:.0%}" if percent else f"{value:.2g}"
            draw.text((x, height - bottom - bar_height - 14), text, fill="black", font=small)
        draw.text((x0, height - bottom + 6), group[:18], fill="black", font=small)
    for s, name in enumerate(series):
        x = left + s * 180
        draw.rectangle((x, height - 30, x + 14, height - 16), fill=PALETTE[s % len(PALETTE)])
        draw.text((x + 20, height - 31), name[:22], fill="black", font=small)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def pareto_plot(path: Path, record: dict[str, Any]) -> Path:
    """Write the tuner's scatter of harm vs KL: every trial, the Pareto front joined by a line,
    the KL budget as a dashed line, the base at the origin of KL and the chosen trial ringed."""
    width, height = 900, 520
    left, right, top, bottom = 80, 30, 50, 70
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(16), _font(12)
    trials = record["trials"]
    budget = float(record["options"]["max_kl"])
    base = record["tuning_split"]["base"]
    kls = [t["kl"] for t in trials] + [budget]
    kl_max = max(kls) * 1.1 or 1.0
    harm_max = max([t["harm"] for t in trials] + [base["harm"], 0.01]) * 1.1
    plot_w, plot_h = width - left - right, height - top - bottom

    def point(kl: float, harm: float) -> tuple[float, float]:
        return left + plot_w * kl / kl_max, height - bottom - plot_h * harm / harm_max

    title = f"tuning: {len(trials)} trials, harm vs KL on the tuning split"
    draw.text((left, 14), title, fill="black", font=font)
    draw.line((left, top, left, height - bottom), fill="black")
    draw.line((left, height - bottom, width - right, height - bottom), fill="black")
    for tick in range(5):
        harm = harm_max * tick / 4
        y = point(0, harm)[1]
        draw.line((left - 4, y, left, y), fill="black")
        draw.text((8, y - 7), f"{harm:.0%}", fill="black", font=small)
        kl = kl_max * tick / 4
        x = point(kl, 0)[0]
        draw.line((x, height - bottom, x, height - bottom + 4), fill="black")
        draw.text((x - 12, height - bottom + 8), f"{kl:.3g}", fill="black", font=small)
    draw.text((8, top - 22), "harmful rate", fill="black", font=small)
    draw.text(
        (width - right - 220, height - 24), "mean KL vs base (nats/token)", fill="black", font=small
    )
    x_budget = point(budget, 0)[0]
    for y in range(top, height - bottom, 8):
        draw.line((x_budget, y, x_budget, y + 4), fill=PALETTE[1])
    draw.text((x_budget + 4, top), "--max-kl", fill=PALETTE[1], font=small)
    for trial in trials:
        x, y = point(trial["kl"], trial["harm"])
        colour = PALETTE[0] if trial["feasible"] else (170, 170, 170)
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    front = sorted(
        (t for t in trials if t["number"] in set(record["pareto"])), key=lambda t: t["kl"]
    )
    if len(front) > 1:
        draw.line([point(t["kl"], t["harm"]) for t in front], fill=PALETTE[2], width=2)
    x, y = point(0, base["harm"])
    draw.rectangle((x - 4, y - 4, x + 4, y + 4), outline="black")
    draw.text((x + 6, y - 7), "base", fill="black", font=small)
    chosen = record.get("chosen")
    if chosen:
        x, y = point(chosen["kl"], chosen["harm"])
        draw.ellipse((x - 8, y - 8, x + 8, y + 8), outline=PALETTE[1], width=2)
        draw.text((x + 10, y - 7), f"chosen #{chosen['number']}", fill=PALETTE[1], font=small)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
