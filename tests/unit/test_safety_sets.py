"""The built-in sets for real models: contrastive safety profile pairs and an MM-SafetyBench-style
evaluation set, held apart from each other, and the images they draw."""

from __future__ import annotations

import numpy as np

from sgm_bake.datasets.render import render


def _ink_rows(spec: dict) -> int:
    """The number of separate bands of ink, top to bottom: the lines of text drawn."""
    pixels = np.asarray(render(spec).convert("L"))
    inked = (pixels < 128).any(axis=1)
    return int(inked[0] + np.count_nonzero(inked[1:] & ~inked[:-1]))


def test_text_image_keeps_line_breaks():
    listing = {"kind": "text", "text": "Steps to bake.\n1.\n2.\n3."}
    flowing = {"kind": "text", "text": "Steps to bake. 1. 2. 3."}
    assert _ink_rows(listing) == 4
    assert _ink_rows(flowing) < 4
