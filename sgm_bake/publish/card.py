"""Model cards and plots of a baked folder, rendered from its `sgm/bake.json`.

The card is a Hugging Face model card (YAML front matter + markdown) built with
huggingface_hub's `ModelCard`/`ModelCardData` from the template in `model_cards/`. It names Hub
ids only: a base model that did not come from the Hub is described by its folder name and left
out of the metadata. It is re-rendered whenever the record changes (bake, verify, eval).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sgm_bake.errors import SGMError
from sgm_bake.resources import data_dir

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
TEMPLATE = "default.md"
PIPELINE_TAGS = {
    "image-text-to-text",
    "text-generation",
    "visual-question-answering",
    "image-to-text",
    "any-to-any",
}
BASE_TAGS = ["sgm", "detoxification", "safety", "sgm-bake"]


def source_card_metadata(folder: Path) -> dict[str, Any]:
    """License and pipeline tag from the source's own model card, when it has one."""
    from huggingface_hub import ModelCard

    path = folder / CARD_FILE
    if not path.is_file():
        return {}
    try:
        data = ModelCard.load(path).data.to_dict()
    except Exception as exc:  # a malformed source card must not stop a bake
        logger.warning("could not read the source's model card (%s)", exc)
        return {}
    return {
        key: data[key]
        for key in ("license", "license_name", "license_link", "pipeline_tag", "language")
        if data.get(key)
    }


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _layer_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    for entry in record["expertise"]["modules"].values():
        row = rows.setdefault(
            entry["layer"],
            {"layer": entry["layer"], "units": 0, "suppressed": 0, "zeroed": 0, "amplified": 0},
        )
        for key in ("units", "suppressed", "zeroed", "amplified"):
            row[key] += entry[key]
    for row in rows.values():
        row["share"] = _percent(row["suppressed"] / row["units"] if row["units"] else 0.0)
    return [rows[k] for k in sorted(rows)]


def card_metadata(record: dict[str, Any]) -> dict[str, Any]:
    """The card's YAML metadata."""
    source = record.get("source", {})
    recipe = record.get("recipe", {})
    metadata: dict[str, Any] = {"library_name": "transformers"}
    base_model = record.get("base_model") or (
        source.get("id") if source.get("kind") == "hub" else None
    )
    if base_model:
        metadata["base_model"] = base_model
    inherited = record.get("source_card", {})
    for key in ("license", "license_name", "license_link", "language"):
        if inherited.get(key):
            metadata[key] = inherited[key]
    auto_class = (recipe.get("definition") or {}).get("auto_class", "AutoModelForImageTextToText")
    default_tag = (
        "text-generation" if auto_class == "AutoModelForCausalLM" else "image-text-to-text"
    )
    metadata["pipeline_tag"] = inherited.get("pipeline_tag") or default_tag
    metadata["tags"] = [*BASE_TAGS, recipe.get("model_type", "model")]
    return metadata


def validate_metadata(metadata: dict[str, Any]) -> None:
    """Local checks of the fields the Hub validates (the Hub's own endpoint needs a network)."""
    import re

    if metadata.get("library_name") != "transformers":
        raise SGMError("card metadata must name library_name: transformers")
    base = metadata.get("base_model")
    if base is not None and not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", str(base)):
        raise SGMError(f"card base_model {base!r} is not a Hub model id")
    if metadata.get("pipeline_tag") not in PIPELINE_TAGS:
        raise SGMError(f"card pipeline_tag {metadata.get('pipeline_tag')!r} is not a known task")
    tags = metadata.get("tags")
    if not isinstance(tags, list) or not {"sgm", "detoxification"} <= set(tags):
        raise SGMError("card tags must include sgm and detoxification")


def _rule_text(metadata: dict[str, str]) -> str:
    rule = metadata.get("rule") or "as given in the expertise file"
    parts = [rule]
    if metadata.get("threshold"):
        parts.append(f"threshold {metadata['threshold']}")
    if metadata.get("top_k"):
        parts.append(f"top-k {metadata['top_k']}")
    if rule == "damp" and metadata.get("damp_alpha"):
        parts.append(f"alpha {metadata['damp_alpha']}")
    if metadata.get("strength"):
        parts.append(f"strength {metadata['strength']}")
    return ", ".join(parts)


def _evaluation(record: dict[str, Any]) -> dict[str, Any] | None:
    evaluation = record.get("evaluation")
    if not evaluation:
        return None
    rows = []
    for label, metrics in evaluation["metrics"].items():
        by = metrics.get("harmful_rate_by_condition", {})
        perplexity = metrics.get("reference_perplexity")
        rows.append(
            {
                "label": label,
                "harmful": _percent(metrics.get("harmful_rate")),
                "standard": _percent(by.get("standard")),
                "adversarial": _percent(by.get("adversarial")),
                "both": _percent(by.get("both")),
                "accuracy": _percent(metrics.get("benign_accuracy")),
                "perplexity": "-" if perplexity is None else f"{perplexity:.2f}",
                "degenerate": _percent(metrics.get("degenerate_share")),
            }
        )
    return {
        "prompt_set": evaluation["prompt_set"]["name"],
        "judge": evaluation["judge"],
        "rows": rows,
    }


def render_card(folder: Path, record: dict[str, Any], repo_id: str | None = None) -> str:
    """The card's full text for a baked folder."""
    from huggingface_hub import ModelCard, ModelCardData

    metadata = card_metadata(record)
    validate_metadata(metadata)
    expertise = record["expertise"]
    counts = expertise["modules"].values()
    units = sum(m["units"] for m in counts)
    suppressed = sum(m["suppressed"] for m in counts)
    meta = expertise.get("metadata", {})
    recipe = record["recipe"]
    source = record["source"]
    base_model = metadata.get("base_model")
    verification = record.get("verification")
    verification_view = None
    if verification:
        verification_view = {
            **verification,
            "max_abs_diff_text": f"{verification['max_abs_diff']:.3g}",
            "max_rel_diff_text": f"{verification['max_rel_diff']:.3g}",
            "tolerance_text": f"{verification['tolerance']:.3g}",
            "agreement_text": _percent(verification["top1_agreement"]),
            "verdict": "passed" if verification["passed"] else "FAILED",
        }
    sides = sorted({m["side"] for m in counts})
    hook_points = meta.get("hook_points") or ", ".join(f"MLP projection {side}s" for side in sides)
    data = ModelCardData(**metadata)
    name = (repo_id or base_model or source.get("id", "model")).split("/")[-1]
    card = ModelCard.from_template(
        data,
        template_path=str(data_dir("model_cards") / TEMPLATE),
        title=f"{name} (SGM-detoxified)",
        base_description=f"[{base_model}](https://huggingface.co/{base_model})"
        if base_model
        else f"the model `{source.get('id')}`",
        base_model_text=f"`{base_model}` at revision `{source.get('revision')}`"
        if base_model
        else f"`{source.get('id')}` (a local checkpoint)",
        tool_version=record["tool"]["version"],
        model_type=recipe["model_type"],
        layers=f"{recipe['layers'][0]}-{recipe['layers'][1] - 1}",
        hook_points=hook_points,
        rule_text=_rule_text(meta),
        profile_set=f"`{meta['profile_set']}` (sha256 {meta.get('profile_set_sha256', '')[:12]})"
        if meta.get("profile_set")
        else "not recorded (factors given directly)",
        pooling=f"{meta.get('pooling', '-')} over {meta.get('positions', '-')} positions",
        suppressed=suppressed,
        units=units,
        share=_percent(suppressed / units if units else 0.0),
        tensors=len(expertise["tensors_folded"]),
        layer_rows=_layer_rows(record),
        has_histogram=(folder / "sgm" / "auroc_histogram.png").is_file(),
        verification=verification_view,
        evaluation=_evaluation(record),
        auto_class=(recipe.get("definition") or {}).get(
            "auto_class", "AutoModelForImageTextToText"
        ),
        repo_id=repo_id or "path/to/this/model",
    )
    text = str(card)
    ModelCard(text)  # must parse back
    return text


def write_card(folder: Path, record: dict[str, Any], repo_id: str | None = None) -> None:
    """Render the card into `folder/README.md` (the caller refreshes the record's hashes)."""
    (folder / CARD_FILE).write_text(render_card(folder, record, repo_id), encoding="utf-8")


def write_plots(folder: Path, record: dict[str, Any]) -> list[str]:
    """Units suppressed per layer, and the AUROC histogram when the expertise has AUROC."""
    from sgm_bake.core.expertise import load_expertise
    from sgm_bake.publish.plots import grouped_bars

    written = []
    rows = _layer_rows(record)
    if rows:
        grouped_bars(
            folder / "sgm" / "units_per_layer.png",
            "Units suppressed per layer (share of the layer's profiled units)",
            [str(r["layer"]) for r in rows],
            {
                "suppressed": [r["suppressed"] / r["units"] if r["units"] else 0.0 for r in rows],
                "zeroed": [r["zeroed"] / r["units"] if r["units"] else 0.0 for r in rows],
            },
            percent=True,
        )
        written.append("sgm/units_per_layer.png")
    from sgm_bake.pipeline.bake import expertise_path

    expertise = load_expertise(expertise_path(folder))
    scores = [entry.auroc for entry in expertise.modules.values() if entry.auroc is not None]
    if scores:
        import torch

        values = torch.cat(scores)
        bins = torch.histc(values, bins=10, min=0.0, max=1.0)
        grouped_bars(
            folder / "sgm" / "auroc_histogram.png",
            f"AUROC of {values.numel()} profiled units",
            [f"{i / 10:.1f}-{(i + 1) / 10:.1f}" for i in range(10)],
            {"units": [float(b) for b in bins]},
        )
        written.append("sgm/auroc_histogram.png")
    return written
