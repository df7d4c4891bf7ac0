"""Images drawn at load time, so profile and evaluation sets ship as text, not pictures.

Two kinds: typographic images of a phrase (the attack surface of multimodal jailbreak
benchmarks, where the harmful content is written in the picture) and simple scenes of coloured
shapes. Both are deterministic: the same spec always gives the same pixels.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from pathlib import Path
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
# Larger images are refused when a set is loaded: a few-kB PNG can declare billions of pixels (a
# decompression bomb) and exhaust memory once decoded. 40 megapixels is far above what any
# vision tower looks at.
MAX_IMAGE_PIXELS = 40_000_000
MAX_SHAPES = 64


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the small bitmap font
        return ImageFont.load_default()


def render_text(
    text: str, size: int = DEFAULT_SIZE, background: str = "white", ink: str = "black"
) -> Image.Image:
    """The phrase in large letters, wrapped to fit, centred on a plain background. A newline
    starts a new line, so a numbered list ("Steps to ...\n1.\n2.\n3.", as FigStep draws its
    prompts) keeps one item a line."""
    image = Image.new("RGB", (size, size), COLOURS.get(background, COLOURS["white"]))
    draw = ImageDraw.Draw(image)
    paragraphs = [line.split() for line in text.splitlines() if line.strip()]
    font_size = size // 5
    while font_size > 8:
        font = _font(font_size)
        lines: list[str] = []
        for words in paragraphs:
            start = len(lines)
            for word in words:
                if (
                    len(lines) > start
                    and draw.textlength(f"{lines[-1]} {word}", font=font) <= size * 0.9
                ):
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


def check_render_spec(spec: Any, where: str) -> None:
    """Refuse a render spec that `render` could not draw, when the set is loaded (not hours
    later, in the middle of profiling)."""
    if not isinstance(spec, dict):
        raise SGMError(
            f"{where}: 'render' must be an object such as {{'kind': 'text', 'text': '...'}}"
        )
    for key in ("background", "ink"):
        if key in spec and spec[key] not in COLOURS:
            raise SGMError(f"{where}: render {key} {spec[key]!r} is not one of {sorted(COLOURS)}")
    kind = spec.get("kind")
    if kind == "text":
        if not isinstance(spec.get("text"), str) or not spec["text"].strip():
            raise SGMError(f"{where}: a text image needs a non-empty string 'text'")
        return
    if kind != "scene":
        raise SGMError(f"{where}: unknown image render kind {kind!r}; use 'text' or 'scene'")
    shapes = spec.get("shapes")
    if not isinstance(shapes, list) or not 0 < len(shapes) <= MAX_SHAPES:
        raise SGMError(f"{where}: a scene image needs a list of 1 to {MAX_SHAPES} 'shapes'")
    for item in shapes:
        if (
            not isinstance(item, dict)
            or item.get("shape") not in SHAPES
            or item.get("colour", "black") not in COLOURS
        ):
            raise SGMError(
                f"{where}: scene shape {str(item)[:80]} is not drawable; shapes {SHAPES}, "
                f"colours {sorted(COLOURS)}"
            )
        for key in ("x", "y", "scale"):
            value = item.get(key, 0.5)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or not 0 <= value <= 1
            ):
                raise SGMError(f"{where}: scene shape {key} {value!r} must be a number in [0, 1]")


def _open_image(path: Path, where: str) -> Image.Image:
    """Open an image file, refusing decompression bombs before any pixel is decoded."""
    from PIL import UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise SGMError(
            f"{where}: image {path.name} declares too many pixels (a decompression bomb); use "
            f"an image under {MAX_IMAGE_PIXELS:,} pixels"
        ) from exc
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise SGMError(f"{where}: image {path.name} is unreadable ({exc})") from exc
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise SGMError(
            f"{where}: image {path.name} is {width}x{height} pixels (a decompression bomb or far "
            f"too large); use an image under {MAX_IMAGE_PIXELS:,} pixels"
        )
    return image


def check_image_file(path: Path, where: str) -> None:
    """Open an image once, so an unreadable or oversized file fails before the model loads."""
    image = _open_image(path, where)
    try:
        image.verify()
    except Exception as exc:  # PIL raises many types for a damaged file, SyntaxError included
        raise SGMError(f"{where}: image {path.name} is damaged ({type(exc).__name__})") from exc
    finally:
        image.close()


def load_image(spec: dict[str, Any] | None, path: Any | None) -> Image.Image | None:
    """An item's image: drawn from its render spec, or opened from its file, or None."""
    if spec is not None:
        return render(spec)
    if path is not None:
        with _open_image(Path(path), "image") as opened:
            return opened.convert("RGB")
    return None
