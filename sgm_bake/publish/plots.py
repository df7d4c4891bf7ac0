"""Small bar charts drawn with Pillow (no plotting library needed): units suppressed per layer,
AUROC histogram, evaluation bars."""

from __future__ import annotations

from pathlib import Path

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
