"""Locate the data that ships inside the package (recipes, profile sets, card templates).

They live in `sgm_bake/_data/<name>` and are found with `importlib.resources`, so they work the
same from a wheel, an editable install or a source checkout.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def data_dir(name: str) -> Path:
    """Return the folder holding the shipped data set `name` (e.g. ``"recipes"``)."""
    folder = Path(str(files("sgm_bake") / "_data" / name))
    if not folder.is_dir():
        raise FileNotFoundError(f"sgm-bake data folder {name!r} is missing from this installation")
    return folder
