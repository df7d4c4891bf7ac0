"""Images drawn at load time, so profile and evaluation sets ship as text, not pictures.

Two kinds: typographic images of a phrase (the attack surface of multimodal jailbreak
benchmarks, where the harmful content is written in the picture) and simple scenes of coloured
shapes. Both are deterministic: the same spec always gives the same pixels.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from sgm_bake.errors import SGMError

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (240, 140, 30),
    "black": (20, 20, 20),
    "white": (250, 250, 250),
    "grey": (128, 128, 128),
    "pink": (240, 130, 180),
    "brown": (130, 80, 40),
}
SHAPES = ("circle", "square", "triangle")
DEFAULT_SIZE = 224


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the small bitmap font
        return ImageFont.load_default()


def render_text(
    text: str, size: int = DEFAULT_SIZE, background: str = "white", ink: str = "black"
) -> Image.Image:
    """The phrase in large letters, wrapped to fit, centred on a plain background."""
    image = Image.new("RGB", (size, size), COLOURS.get(background, COLOURS["white"]))
    draw = ImageDraw.Draw(image)
    words = text.split()
    font_size = size // 5
    while font_size > 8:
        font = _font(font_size)
        lines: list[str] = []
        for word in words:
            if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= size * 0.9:
                lines[-1] = f"{lines[-1]} {word}"
            else:
                lines.append(word)
        widest = max((draw.textlength(line, font=font) for line in lines), default=0)
        if widest <= size * 0.92 and len(lines) * font_size * 1.2 <= size * 0.9:
            break
        font_size -= 2
    top = (size - len(lines) * font_size * 1.2) / 2
    for index, line in enumerate(lines):
        width = draw.textlength(line, font=font)
        draw.text(
            ((size - width) / 2, top + index * font_size * 1.2),
            line,
            fill=COLOURS.get(ink, COLOURS["black"]),
            font=font,
        )
    return image


def render_scene(
    shapes: list[dict[str, Any]], size: int = DEFAULT_SIZE, background: str = "white"
) -> Image.Image:
    """Coloured shapes: each entry has `shape` (circle, square, triangle), `colour`, and an
    optional `x`, `y` (centre, 0-1) and `scale` (0-1 of the image)."""
    image = Image.new("RGB", (size, size), COLOURS.get(background, COLOURS["white"]))
    draw = ImageDraw.Draw(image)
    for index, item in enumerate(shapes):
        shape, colour = item.get("shape"), item.get("colour", "black")
        if shape not in SHAPES or colour not in COLOURS:
            raise SGMError(
                f"scene shape {item} is not drawable; shapes {SHAPES}, colours {sorted(COLOURS)}"
            )
        default_x = (index + 1) / (len(shapes) + 1)
        x, y = item.get("x", default_x) * size, item.get("y", 0.5) * size
        radius = item.get("scale", 0.6 / max(1, len(shapes))) * size / 2
        box = (x - radius, y - radius, x + radius, y + radius)
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon(
                [(x, y - radius), (x - radius, y + radius), (x + radius, y + radius)], fill=fill
            )
    return image


def render(spec: dict[str, Any], size: int = DEFAULT_SIZE) -> Image.Image:
    """Draw an image from a render spec: {"kind": "text", "text": ...} or
    {"kind": "scene", "shapes": [...]} (optional "background")."""
    kind = spec.get("kind")
    if kind == "text":
        if not str(spec.get("text", "")).strip():
            raise SGMError("a text image needs a non-empty 'text'")
        return render_text(
            str(spec["text"]), size, spec.get("background", "white"), spec.get("ink", "black")
        )
    if kind == "scene":
        shapes = spec.get("shapes")
        if not isinstance(shapes, list) or not shapes:
            raise SGMError("a scene image needs a non-empty 'shapes' list")
        return render_scene(shapes, size, spec.get("background", "white"))
    raise SGMError(f"unknown image render kind {kind!r}; use 'text' or 'scene'")


def load_image(spec: dict[str, Any] | None, path: Any | None) -> Image.Image | None:
    """An item's image: drawn from its render spec, or opened from its file, or None."""
    if spec is not None:
        return render(spec)
    if path is not None:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    return None
