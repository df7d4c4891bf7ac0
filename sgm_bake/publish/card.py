"""Model cards and plots of a baked folder, rendered from its `sgm/bake.json`.

The card is a Hugging Face model card (YAML front matter + markdown) built with
huggingface_hub's `ModelCard`/`ModelCardData` from the template in `model_cards/`. It names Hub
ids only: a base model that did not come from the Hub is described by its folder name and left
out of the metadata. It is re-rendered whenever the record changes (bake, verify, eval).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sgm_bake.core.expertise import Expertise
from sgm_bake.errors import SGMError
from sgm_bake.publish import plots
from sgm_bake.publish.plots import percent_text
from sgm_bake.record import SGM_DIR, BakeRecord
from sgm_bake.record.summary import layer_rows
from sgm_bake.resources import data_dir

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
LAYER_PLOT = "units_per_layer.png"
HISTOGRAM_PLOT = "auroc_histogram.png"
EVAL_PLOT = "eval.png"
PARETO_PLOT = "pareto.png"
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


def card_metadata(record: BakeRecord) -> dict[str, Any]:
    """The card's YAML metadata."""
    metadata: dict[str, Any] = {"library_name": "transformers"}
    if record.hub_source:
        metadata["base_model"] = record.hub_source
    inherited = record.source_card
    for key in ("license", "license_name", "license_link", "language"):
        if inherited.get(key):
            metadata[key] = inherited[key]
    auto_class = record.recipe.definition.get("auto_class", "AutoModelForImageTextToText")
    default_tag = (
        "text-generation" if auto_class == "AutoModelForCausalLM" else "image-text-to-text"
    )
    metadata["pipeline_tag"] = inherited.get("pipeline_tag") or default_tag
    metadata["tags"] = [*BASE_TAGS, record.recipe.model_type]
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


def _evaluation(record: BakeRecord) -> dict[str, Any] | None:
    evaluation = record.evaluation
    if evaluation is None:
        return None
    rows = []
    for label, metrics in evaluation.metrics.items():
        by = metrics.get("harmful_rate_by_condition", {})
        perplexity = metrics.get("reference_perplexity")
        rows.append(
            {
                "label": label,
                "harmful": percent_text(metrics.get("harmful_rate")),
                "standard": percent_text(by.get("standard")),
                "adversarial": percent_text(by.get("adversarial")),
                "both": percent_text(by.get("both")),
                "accuracy": percent_text(metrics.get("benign_accuracy")),
                "perplexity": "-" if perplexity is None else f"{perplexity:.2f}",
                "degenerate": percent_text(metrics.get("degenerate_share")),
            }
        )
    return {"prompt_set": evaluation.prompt_set.name, "judge": evaluation.judge, "rows": rows}


def _split_row(label: str, split: dict[str, Any]) -> dict[str, str]:
    kl = split.get("kl")
    return {
        "label": label,
        "harm": percent_text(split.get("harm")),
        "kl": "-" if kl is None else f"{kl:.4f}",
        "degenerate": percent_text(split.get("degenerate")),
        "accuracy": percent_text(split.get("accuracy")),
        "prompts": str(split.get("prompts", "-")),
    }


def _setting_text(setting: dict[str, Any]) -> str:
    parts = [str(setting.get("rule"))]
    if setting.get("rule") == "damp" and setting.get("damp_alpha") is not None:
        parts.append(f"alpha {setting['damp_alpha']:.3g}")
    parts.append(f"strength {setting.get('strength', 1.0):.3g}")
    parts.append(f"threshold {setting.get('threshold', 0.5):.3g}")
    if setting.get("top_k"):
        parts.append(f"top-k {setting['top_k']}")
    parts.append(f"hook points {setting.get('hook_points')}")
    parts.append(f"layers {setting.get('layers')}")
    parts.append(f"{setting.get('pooling')} pooling over {setting.get('positions')} positions")
    return ", ".join(parts)


def _tuning(record: BakeRecord) -> dict[str, Any] | None:
    tuning = record.tuning
    if tuning is None:
        return None
    splits = tuning.splits
    return {
        "knobs": ", ".join(tuning.knobs),
        "trials": tuning.trials_run,
        "interrupted": tuning.interrupted,
        "seconds": f"{tuning.seconds:.0f}",
        "max_kl": f"{tuning.options.get('max_kl', 0):g}",
        "judge": tuning.options.get("judge", "-"),
        "chosen": None
        if tuning.chosen is None
        else {"number": tuning.chosen["number"], "text": _setting_text(tuning.chosen["setting"])},
        "split_text": ", ".join(
            f"{name} {splits[name]['toxic']} toxic + {splits[name]['non_toxic']} non-toxic"
            for name in ("profile", "tune", "report")
            if name in splits
        ),
        "rows": [
            _split_row("base, tuning split", tuning.tuning_split["base"]),
            _split_row("chosen, tuning split", tuning.tuning_split["chosen"]),
            _split_row("base, held-out report split", tuning.report_split["base"]),
            _split_row("chosen, held-out report split", tuning.report_split["chosen"]),
        ],
        "pareto": [
            {
                "number": t["number"],
                "harm": percent_text(t["harm"]),
                "kl": f"{t['kl']:.4f}",
                "degenerate": percent_text(t["degenerate"]),
                "feasible": "yes" if t["feasible"] else "no",
                "setting": _setting_text(t["setting"]),
            }
            for t in tuning.pareto
        ],
    }


def _verification(record: BakeRecord) -> dict[str, Any] | None:
    verification = record.verification
    if verification is None:
        return None
    # Two forms: the layer-streamed check (mode "layers") and the whole-model logits check.
    return {
        **asdict(verification),
        "max_abs_diff_text": f"{verification.max_abs_diff:.3g}",
        "max_rel_diff_text": f"{verification.max_rel_diff:.3g}",
        "tolerance_text": f"{verification.tolerance:.3g}",
        "effect_text": f"{verification.intervention_rel_effect:.3g}",
        "agreement_text": percent_text(verification.top1_agreement),
        "verdict": "passed" if verification.passed else "FAILED",
    }


def render_card(folder: Path, record: BakeRecord, repo_id: str | None = None) -> str:
    """The card's full text for a baked folder."""
    from huggingface_hub import ModelCard, ModelCardData

    metadata = card_metadata(record)
    validate_metadata(metadata)
    expertise = record.expertise
    meta = expertise.metadata
    recipe = record.recipe
    source = record.source
    base_model = metadata.get("base_model")
    sides = sorted({m.side for m in expertise.modules.values()})
    hook_points = meta.get("hook_points") or ", ".join(f"MLP projection {side}s" for side in sides)
    rows = layer_rows(expertise.modules)
    data = ModelCardData(**metadata)
    name = (repo_id or base_model or source.id).split("/")[-1]
    card = ModelCard.from_template(
        data,
        template_path=str(data_dir("model_cards") / TEMPLATE),
        title=f"{name} (SGM-detoxified)",
        base_description=f"[{base_model}](https://huggingface.co/{base_model})"
        if base_model
        else f"the model `{source.id}`",
        base_model_text=f"`{base_model}` at revision `{source.revision}`"
        if base_model
        else f"`{source.id}` (a local checkpoint)",
        tool_version=record.tool.version,
        model_type=recipe.model_type,
        layers=f"{recipe.layers[0]}-{recipe.layers[1] - 1}",
        hook_points=hook_points,
        rule_text=_rule_text(meta),
        profile_set=f"`{meta['profile_set']}` (sha256 {meta.get('profile_set_sha256', '')[:12]})"
        if meta.get("profile_set")
        else "not recorded (factors given directly)",
        pooling=f"{meta.get('pooling', '-')} over {meta.get('positions', '-')} positions",
        suppressed=expertise.suppressed,
        units=expertise.units,
        share=percent_text(expertise.suppressed / expertise.units if expertise.units else 0.0),
        tensors=len(expertise.tensors_folded),
        layer_rows=[
            {
                "layer": row.layer,
                "units": row.units,
                "suppressed": row.suppressed,
                "share": percent_text(row.share),
                "zeroed": row.zeroed,
                "amplified": row.amplified,
            }
            for row in rows
        ],
        has_layer_plot=(folder / SGM_DIR / LAYER_PLOT).is_file(),
        has_histogram=(folder / SGM_DIR / HISTOGRAM_PLOT).is_file(),
        has_eval_plot=(folder / SGM_DIR / EVAL_PLOT).is_file(),
        plots_hint=None if plots.available() else plots.MISSING_HINT,
        verification=_verification(record),
        evaluation=_evaluation(record),
        tuning=_tuning(record),
        has_pareto_plot=(folder / SGM_DIR / PARETO_PLOT).is_file(),
        auto_class=recipe.definition.get("auto_class", "AutoModelForImageTextToText"),
        repo_id=repo_id or "path/to/this/model",
    )
    text = str(card)
    ModelCard(text)  # must parse back
    return text


def write_card(folder: Path, record: BakeRecord, repo_id: str | None = None) -> None:
    """Render the card into `folder/README.md` (the caller refreshes the record's hashes)."""
    (folder / CARD_FILE).write_text(render_card(folder, record, repo_id), encoding="utf-8")


def write_plots(folder: Path, record: BakeRecord, expertise: Expertise | None = None) -> list[str]:
    """Units suppressed per layer, the AUROC histogram and the evaluation chart, when
    matplotlib is installed; returns the paths written, relative to `folder`."""
    if not plots.available():
        logger.info(plots.MISSING_HINT)
        return []
    written = []
    rows = layer_rows(record.expertise.modules)
    if rows:
        plots.units_per_layer(
            folder / SGM_DIR / LAYER_PLOT,
            [r.layer for r in rows],
            [r.share for r in rows],
            [r.zeroed / r.units if r.units else 0.0 for r in rows],
        )
        written.append(f"{SGM_DIR}/{LAYER_PLOT}")
    if expertise is not None:
        scores = [
            float(value)
            for entry in expertise.modules.values()
            if entry.auroc is not None
            for value in entry.auroc.reshape(-1).tolist()
        ]
        if scores:
            threshold = float(record.expertise.metadata.get("threshold") or 0.5)
            plots.auroc_histogram(folder / SGM_DIR / HISTOGRAM_PLOT, scores, threshold)
            written.append(f"{SGM_DIR}/{HISTOGRAM_PLOT}")
    if record.evaluation is not None:
        plots.evaluation_chart(folder / SGM_DIR / EVAL_PLOT, record.evaluation.metrics)
        written.append(f"{SGM_DIR}/{EVAL_PLOT}")
    return written
