"""Plain words for the model card on which method was baked and why (torch-free, so that the
card can render it without importing the method's machinery)."""

from __future__ import annotations

import json

ATTENTION_SHARE = 0.6
"""Above this share of the decision shift written by attention, scaling MLP units is unlikely
to reach the decision."""


def method_card_text(metadata: dict[str, str]) -> str | None:
    """A plain-words paragraph for the model card: which method was baked and whether the
    diagnosis expects SGM to reach this model's toxicity (None without a diagnosis or an edit).
    `publish.card` may include it as it is."""
    method = metadata.get("method", "sgm")
    parts = []
    if "diagnosis" in metadata:
        diagnosis = json.loads(metadata["diagnosis"])
        attention = diagnosis["writes"]["attention_share"]
        separability = diagnosis["decision"]["separability"]
        likely = attention <= ATTENTION_SHARE
        parts.append(
            f"At the last prompt token, where the reply is decided, a direction separates the "
            f"prompts the model should decline from the toxic-eliciting ones (AUROC "
            f"{separability:.2f}); attention writes {attention:.0%} of that shift and the MLPs "
            f"the rest, so scaling MLP units (SGM) is "
            + ("likely to reach it." if likely else "unlikely to reach it on its own.")
        )
    if "edit" in metadata:
        edit = json.loads(metadata["edit"])
        # an edit made before the rank knob is a rank-1 write at the last prompt token only
        rank, replies = edit.get("rank", 1), edit.get("replies", 0)
        where = "the last prompt token" + (
            f" and the first {replies} reply tokens" if replies else ""
        )
        parts.append(
            f"Baked: {'SGM and ' if method == 'both' else ''}a rank-{rank} conditional write "
            f"into the MLP output projection of layers {', '.join(map(str, edit['layers']))} "
            f"(strength {edit['strength']}, ridge {edit['ridge']}), fitted in closed form so "
            f"that at {where} toxic-eliciting prompts move toward the declined prompts' state "
            "while declined prompts"
            + (" and benign requests are" if edit.get("anchors") else " are")
            + " left unchanged."
        )
    return " ".join(parts) or None
