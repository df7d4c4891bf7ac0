"""The diagnosis's warnings and the plain-words lines `inspect` and the card show for a method."""

from __future__ import annotations

import json

import torch

from sgm_bake.core.edit import ChanceDistance, WriteShares, decision_direction
from sgm_bake.core.expertise import Expertise, ModuleExpertise
from sgm_bake.core.method_text import method_card_text
from sgm_bake.pipeline.decision import Diagnosis, diagnosis_warnings, method_summary


def _diagnosis(attention: float, mean_distance: float) -> Diagnosis:
    generator = torch.Generator().manual_seed(0)
    toxic = torch.randn(20, 8, generator=generator)
    declined = torch.randn(20, 8, generator=generator) + 3
    return Diagnosis(
        decision_direction(toxic, declined),
        (0.9,),
        WriteShares((attention,), (1 - attention,)),
        ChanceDistance(1000, 0.01, 0.0, 0.0, mean_distance),
    )


def _expertise(changed: int, total: int = 100) -> Expertise:
    alpha = torch.ones(total)
    alpha[:changed] = 0.5
    return Expertise({"m": ModuleExpertise("m", "output", alpha)})


def test_warnings_name_the_problem_and_point_to_tune():
    quiet = diagnosis_warnings(_diagnosis(0.3, 0.2), _expertise(5), (192, 192), "sgm")
    assert quiet == []
    chance = diagnosis_warnings(_diagnosis(0.3, 0.03), _expertise(5), (192, 192), "sgm")
    assert len(chance) == 1 and "look like chance" in chance[0] and "tune" in chance[0]
    broad = diagnosis_warnings(_diagnosis(0.3, 0.2), _expertise(59), (192, 192), "sgm")
    assert len(broad) == 1 and "59%" in broad[0] and "tune" in broad[0]
    attention = diagnosis_warnings(_diagnosis(0.74, 0.2), _expertise(5), (192, 192), "sgm")
    assert len(attention) == 1 and "attention writes 74%" in attention[0]
    # the edit does not scale units: no warning about them
    assert diagnosis_warnings(_diagnosis(0.74, 0.03), _expertise(59), (192, 192), "edit") == []


def test_method_lines_for_inspect_and_the_card():
    diagnosis = _diagnosis(0.74, 0.14)
    edit = {
        "layers": [2, 3],
        "strength": 1.0,
        "ridge": 0.01,
        "layers_fitted": [{"layer": 2, "reached": 0.8}, {"layer": 3, "reached": 0.75}],
    }
    metadata = {
        "method": "edit",
        "diagnosis": json.dumps(diagnosis.describe()),
        "edit": json.dumps(edit),
    }
    lines = method_summary(metadata)
    assert lines[0].startswith("method      edit")
    assert "layers [2, 3]" in lines[1] and "layer 2 80%" in lines[1]
    assert "attention writes 74%" in lines[2] and "unlikely" in lines[2]
    text = method_card_text(metadata)
    assert text is not None and "unlikely to reach it" in text and "layers 2, 3" in text
    # an edit from before the rank knob: rank 1 at the last prompt token
    assert "rank 1," in lines[1] and "0 reply positions" in lines[1]
    assert "rank-1 conditional write" in text and "reply tokens" not in text
    ranked = {**edit, "rank": 4, "replies": 3, "anchors": 80}
    metadata["edit"] = json.dumps(ranked)
    assert "rank 4," in method_summary(metadata)[1] and "80 anchors" in method_summary(metadata)[1]
    text = method_card_text(metadata)
    assert text is not None and "rank-4 conditional write" in text
    assert "first 3 reply tokens" in text and "benign requests" in text
    assert method_summary({}) == ["method      SGM (toxic expert units scaled down)"]
    assert method_card_text({}) is None
