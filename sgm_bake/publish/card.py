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
from sgm_bake.core.method_text import method_card_text
from sgm_bake.errors import SGMError
from sgm_bake.publish import plots
from sgm_bake.publish.plots import percent_text
from sgm_bake.record import (
    BAKED_ECSO_LABEL,
    BAKED_LABEL,
    LEGACY_LABELS,
    SGM_DIR,
    BakeRecord,
    MethodTrials,
    SplitFigures,
)
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
BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")


LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "LICENSE-MODEL")
# Phrases that identify a license file's text, checked in order (the Hub's license ids).
LICENSE_MARKERS = (
    ("apache-2.0", "apache license"),
    ("mit", "permission is hereby granted, free of charge"),
    ("llama3.1", "llama 3.1 community license"),
    ("llama3.2", "llama 3.2 community license"),
    ("llama3", "meta llama 3 community license"),
    ("llama2", "llama 2 community license"),
    ("gemma", "gemma terms of use"),
    ("cc-by-nc-4.0", "attribution-noncommercial 4.0"),
    ("cc-by-4.0", "attribution 4.0 international"),
)
BODY_KEY = "body"


def _license_file(folder: Path) -> dict[str, str]:
    """The license a source states only in a license file: a known license's Hub id, else
    `other` linking the file (it is carried into the output, so the link resolves)."""
    for name in LICENSE_FILES:
        path = folder / name
        if not path.is_file() or path.is_symlink():
            continue
        try:
            head = path.read_text(encoding="utf-8", errors="replace")[:4000].lower()
        except OSError:
            continue
        for license_id, marker in LICENSE_MARKERS:
            if marker in " ".join(head.split()):
                return {"license": license_id}
        return {"license": "other", "license_name": "base-model-license", "license_link": name}
    return {}


def source_card_metadata(folder: Path) -> dict[str, Any]:
    """What the output's card keeps of the source's own card (license, pipeline tag, language,
    tags and its text), with the license taken from a license file when the card names none."""
    from huggingface_hub import ModelCard

    found: dict[str, Any] = {}
    path = folder / CARD_FILE
    if path.is_file():
        try:
            card = ModelCard.load(path)
        except Exception as exc:  # a malformed source card must not stop a bake
            logger.warning("could not read the source's model card (%s)", exc)
        else:
            data = card.data.to_dict()
            found = {
                key: data[key]
                for key in (
                    "license",
                    "license_name",
                    "license_link",
                    "pipeline_tag",
                    "language",
                    "tags",
                )
                if data.get(key)
            }
            if isinstance(found.get("tags"), str):
                found["tags"] = [found["tags"]]
            body = card.text.strip()
            if body:
                found[BODY_KEY] = body
    if not found.get("license"):
        found.update(_license_file(folder))
    return found


def project_link() -> str:
    """sgm-bake as the card names it: linked to its repository when the installed package
    declares one (pyproject's `[project.urls]`), else plain (it is not on PyPI)."""
    from importlib import metadata

    try:
        urls = metadata.metadata("sgm-bake").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        urls = []
    for entry in urls:
        label, _, url = entry.partition(",")
        if label.strip().lower() in ("repository", "source", "homepage") and url.strip():
            return f"[sgm-bake]({url.strip()})"
    return "sgm-bake"


def _model_index(record: BakeRecord, task: str) -> list[Any]:
    """The evaluation figures of the baked model (not of the base or of ECSO) as the Hub's
    `model-index` results: harmful rate overall and per prompt condition, benign accuracy."""
    from huggingface_hub import EvalResult

    evaluation = record.evaluation
    if evaluation is None:
        return []
    label = evaluation.model_label()
    if label is None:
        return []
    figures = evaluation.metrics[label]
    values: list[tuple[str, str, Any]] = [
        ("harmful_rate", "harmful rate (%, lower is better)", figures.harmful_rate)
    ]
    by = figures.harmful_rate_by_condition
    for condition in ("standard", "adversarial", "both"):
        if condition in by:
            name = f"harmful rate, {condition} prompts (%)"
            values.append((f"harmful_rate_{condition}", name, by[condition]))
    values.append(("benign_accuracy", "benign accuracy (%)", figures.benign_accuracy))
    prompt_set = evaluation.prompt_set.name
    return [
        EvalResult(
            task_type=task,
            dataset_type=prompt_set,
            dataset_name=f"{prompt_set} (judge: {evaluation.judge})",
            metric_type=metric,
            metric_name=metric_name,
            metric_value=round(100 * float(value), 2),
        )
        for metric, metric_name, value in values
        if value is not None
    ]


def card_metadata(record: BakeRecord, name: str = "model") -> dict[str, Any]:
    """The card's YAML metadata, in the Hub's conventions: a base model with its relation, the
    source card's license (or `unknown`, which the Hub accepts, when the source states none),
    its tags followed by ours, and the evaluation as `model-index`."""
    metadata: dict[str, Any] = {"library_name": "transformers"}
    if record.hub_source:
        metadata["base_model"] = record.hub_source
        # A weight edit of one base model: the Hub's relation for a model derived by changing
        # the base's own weights (not an adapter, a merge or a quantization).
        metadata["base_model_relation"] = "finetune"
    inherited = record.source_card
    metadata["license"] = inherited.get("license") or "unknown"
    for key in ("license_name", "license_link", "language"):
        if inherited.get(key):
            metadata[key] = inherited[key]
    auto_class = record.recipe.definition.get("auto_class", "AutoModelForImageTextToText")
    default_tag = (
        "text-generation" if auto_class == "AutoModelForCausalLM" else "image-text-to-text"
    )
    metadata["pipeline_tag"] = inherited.get("pipeline_tag") or default_tag
    ours = [*BASE_TAGS, record.recipe.model_type]
    kept = [str(tag) for tag in inherited.get("tags") or [] if str(tag) not in ours]
    metadata["tags"] = [*dict.fromkeys(kept), *ours]
    results = _model_index(record, metadata["pipeline_tag"])
    if results:
        metadata["model_name"] = name
        metadata["eval_results"] = results
    return metadata


def validate_metadata(metadata: dict[str, Any]) -> None:
    """Local checks of the fields the Hub validates (the Hub's own endpoint needs a network)."""
    import re

    if metadata.get("library_name") != "transformers":
        raise SGMError("card metadata must name library_name: transformers")
    base = metadata.get("base_model")
    if base is not None and not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", str(base)):
        raise SGMError(f"card base_model {base!r} is not a Hub model id")
    if metadata.get("base_model_relation") not in (None, *BASE_MODEL_RELATIONS):
        raise SGMError(f"card base_model_relation {metadata['base_model_relation']!r} is unknown")
    if metadata.get("license") == "other" and not (
        metadata.get("license_name") and metadata.get("license_link")
    ):
        raise SGMError("card license 'other' needs license_name and license_link")
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


def _row_label(label: str, record: BakeRecord) -> str:
    """An evaluated variant as the card's table and chart name it: the baked rows by their
    current name (an older record's `sgm-baked` or `sgm*` held whatever the bake folded) with
    the method baked, e.g. `baked (edit)`; other rows as recorded."""
    current = LEGACY_LABELS.get(label, label)
    if current not in (BAKED_LABEL, BAKED_ECSO_LABEL):
        return label
    return f"{current} ({record.expertise.metadata.get('method', 'sgm')})"


def _evaluation(record: BakeRecord) -> dict[str, Any] | None:
    evaluation = record.evaluation
    if evaluation is None:
        return None
    rows = []
    runs = 1
    for label, metrics in evaluation.ordered().items():
        by = metrics.harmful_rate_by_condition
        perplexity = metrics.reference_perplexity
        intervals = metrics.intervals
        runs = max(runs, metrics.runs or 1)
        rows.append(
            {
                "label": _row_label(label, record),
                "harmful": _with_interval(metrics.harmful_rate, intervals.get("harmful_rate")),
                "standard": percent_text(by.get("standard")),
                "adversarial": percent_text(by.get("adversarial")),
                "both": percent_text(by.get("both")),
                "accuracy": _with_interval(
                    metrics.benign_accuracy, intervals.get("benign_accuracy")
                ),
                "refusal": percent_text(metrics.benign_refusal),
                "perplexity": "-" if perplexity is None else f"{perplexity:.2f}",
                "degenerate": percent_text(metrics.degenerate_share),
            }
        )
    decoding = f"sampled replies, {runs} seeds pooled" if runs > 1 else "one reply per item"
    return {
        "prompt_set": evaluation.prompt_set.name,
        "judge": evaluation.judge,
        "rows": rows,
        "decoding": decoding,
    }


def _with_interval(value: float | None, figure: dict[str, Any] | None) -> str:
    """A rate with its 95% interval and counts, e.g. `47.5% (36.9-58.3%, 38/80)`; the rate alone
    for a record written before intervals were reported."""
    if value is None or not figure or "low" not in figure:
        return percent_text(value)
    return (
        f"{percent_text(value)} ({figure['low']:.1%}-{figure['high']:.1%}, "
        f"{figure['count']}/{figure['n']})"
    )


def _split_row(label: str, split: SplitFigures) -> dict[str, str]:
    return {
        "label": label,
        "harm": percent_text(split.harm),
        "kl": f"{split.kl:.4f}",
        "degenerate": percent_text(split.degenerate),
        "accuracy": percent_text(split.accuracy),
        "refusal": percent_text(split.eval_refusal),
        "prompts": "-" if "prompts" in split.absent else str(split.prompts),
    }


def _setting_text(setting: dict[str, Any]) -> str:
    method = setting.get("method", "sgm")
    edit = ""
    if "edit_layers" in setting:
        edit = (
            f"edit into layers {setting['edit_layers']}, strength "
            f"{setting['edit_strength']:.3g}, ridge {setting['edit_ridge']:.3g}"
        )
        if "edit_rank" in setting:  # searches from before the rank knob wrote rank-1 edits
            edit += (
                f", rank {setting['edit_rank']}, {setting['edit_replies']} reply positions, "
                f"{setting['edit_anchors']} anchors"
            )
    if method == "edit":
        return f"method edit: {edit}"
    prefix = f"method {method}: " + (f"{edit}; SGM " if edit else "")
    return prefix + _sgm_setting_text(setting)


def _method_rows(by_method: dict[str, MethodTrials]) -> list[dict[str, str]]:
    rows = []
    for method, entry in by_method.items():
        best = entry.best
        rows.append(
            {
                "method": method,
                "trials": f"{entry.feasible} of {entry.trials}",
                "number": "-" if best is None else str(best.number),
                "harm": "-" if best is None else percent_text(best.harm),
                "kl": "-" if best is None else f"{best.kl:.4f}",
                "refusal": "-" if best is None else percent_text(best.eval_refusal),
            }
        )
    return rows


def _sgm_setting_text(setting: dict[str, Any]) -> str:
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
    return {
        "knobs": ", ".join(tuning.knobs),
        "trials": tuning.trials_run,
        "interrupted": tuning.interrupted,
        "seconds": f"{tuning.seconds:.0f}",
        "max_kl": f"{tuning.options.max_kl:g}",
        "judge": tuning.options.judge,
        "method": tuning.method,
        "max_refusal_rise": percent_text(tuning.options.max_refusal_rise)
        if tuning.options.eval_set
        else "-",
        "methods": _method_rows(tuning.by_method) if len(tuning.by_method) > 1 else [],
        "chosen": None
        if tuning.chosen is None
        else {"number": tuning.chosen.number, "text": _setting_text(tuning.chosen.setting)},
        "split_text": ", ".join(
            f"{name} {part.toxic} toxic + {part.non_toxic} non-toxic"
            for name, part in tuning.splits.parts().items()
        ),
        "rows": [
            _split_row("base, tuning split", tuning.tuning_split.base),
            _split_row("chosen, tuning split", tuning.tuning_split.chosen),
            _split_row("base, held-out report split", tuning.report_split.base),
            _split_row("chosen, held-out report split", tuning.report_split.chosen),
        ],
        "pareto": [
            {
                "number": t.number,
                "harm": percent_text(t.harm),
                "kl": f"{t.kl:.4f}",
                "degenerate": percent_text(t.degenerate),
                "feasible": "yes" if t.feasible else "no",
                "setting": _setting_text(t.setting),
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

    recipe = record.recipe
    name = (repo_id or record.hub_source or f"{recipe.model_type}-sgm").split("/")[-1]
    metadata = card_metadata(record, name)
    validate_metadata(metadata)
    expertise = record.expertise
    meta = expertise.metadata
    source = record.source
    base_model = metadata.get("base_model")
    sides = sorted({m.side for m in expertise.modules.values()})
    hook_points = meta.get("hook_points") or ", ".join(f"MLP projection {side}s" for side in sides)
    rows = layer_rows(expertise.modules)
    data = ModelCardData(**metadata)
    # A local source is described, never named: its folder name could read as a Hub id.
    local = (
        f"a local {recipe.model_type} checkpoint (not from the Hub; `--base-model ID` names "
        "the Hub model it is a copy of)"
    )
    revision = f" at revision `{source.revision}`" if source.revision else ""
    card = ModelCard.from_template(
        data,
        template_path=str(data_dir("model_cards") / TEMPLATE),
        title=f"{name} (SGM-detoxified)",
        base_description=f"[{base_model}](https://huggingface.co/{base_model})"
        if base_model
        else f"a local {recipe.model_type} checkpoint",
        base_model_text=f"`{base_model}`{revision}" if base_model else local,
        tool_link=project_link(),
        source_body=record.source_card.get(BODY_KEY),
        tool_version=record.tool.version,
        model_type=recipe.model_type,
        layers=f"{recipe.layers[0]}-{recipe.layers[1] - 1}",
        hook_points=hook_points,
        rule_text=_rule_text(meta),
        method_text=method_card_text(meta),
        profile_set=f"`{meta['profile_set']}` (sha256 {meta.get('profile_set_sha256', '')[:12]})"
        if meta.get("profile_set")
        else "not recorded (factors given directly)",
        pooling=f"{meta.get('pooling', '-')} over {meta.get('positions', '-')} positions",
        suppressed=f"{expertise.suppressed:,}",
        units=f"{expertise.units:,}",
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
    text = collapse_blank_lines(str(card))
    ModelCard(text)  # must parse back
    return text


def collapse_blank_lines(text: str) -> str:
    """At most one blank line in a row outside fenced code blocks (the template's conditional
    blocks leave runs of them), and one final newline."""
    lines: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and not line.strip() and lines and not lines[-1].strip():
            continue
        lines.append(line)
    return "\n".join(lines).strip("\n") + "\n"


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
        scores: list[float] = []
        suppressed: list[bool] = []
        for entry in expertise.modules.values():
            if entry.auroc is not None:
                scores += [float(v) for v in entry.auroc.reshape(-1).tolist()]
                suppressed += [bool(v) for v in (entry.alpha.reshape(-1) < 1).tolist()]
        if scores:
            meta = record.expertise.metadata
            threshold = float(meta.get("threshold") or 0.5)
            top_k = int(meta["top_k"]) if str(meta.get("top_k") or "").isdigit() else None
            plots.auroc_histogram(
                folder / SGM_DIR / HISTOGRAM_PLOT, scores, suppressed, threshold, top_k or None
            )
            written.append(f"{SGM_DIR}/{HISTOGRAM_PLOT}")
    if record.evaluation is not None:
        shown = {
            _row_label(label, record): metrics
            for label, metrics in record.evaluation.ordered_dicts().items()
        }
        plots.evaluation_chart(folder / SGM_DIR / EVAL_PLOT, shown)
        written.append(f"{SGM_DIR}/{EVAL_PLOT}")
    return written
