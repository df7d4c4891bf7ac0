"""Locate the data folders that ship with sgm-bake (recipes, profile sets, card templates).

In a wheel they live inside the package (`sgm_bake/_data/<name>`); in a source checkout or an
editable install they are the top-level folders of the repository.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the folder holding the shipped data set `name` (e.g. ``"recipes"``)."""
    installed = _PACKAGE_DIR / "_data" / name
    if installed.is_dir():
        return installed
    checkout = _PACKAGE_DIR.parent / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"sgm-bake data folder {name!r} is missing from this installation")
