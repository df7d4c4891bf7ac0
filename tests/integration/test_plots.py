"""Plots of a baked folder: drawn from the record and the expertise file, referenced by the card."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from sgm_bake.cli import main
from sgm_bake.core.expertise import Expertise, ModuleExpertise, load_expertise, save_expertise
from sgm_bake.publish.refresh import record_evaluation
from sgm_bake.record import read_record

pytest.importorskip("matplotlib")


@pytest.fixture
def scored_expertise(llava_expertise: Path, tmp_path: Path) -> Path:
    """The tiny LLaVA's factors with AUROC scores, as `profile` writes them."""
    expertise = load_expertise(llava_expertise)
    generator = torch.Generator().manual_seed(0)
    modules = {
        name: ModuleExpertise(
            name, entry.side, entry.alpha, torch.rand(entry.alpha.shape, generator=generator)
        )
        for name, entry in expertise.modules.items()
    }
    path = tmp_path / "scored.safetensors"
    save_expertise(Expertise(modules, {**expertise.metadata, "threshold": "0.5"}), path)
    return path


@pytest.mark.slow
def test_bake_draws_the_layer_plot_and_the_auroc_histogram(
    runner, llava_dir, scored_expertise, tmp_path
):
    out = tmp_path / "out"
    args = ["-q", "bake", str(llava_dir), str(out), "--expertise", str(scored_expertise)]
    result = runner.invoke(main, [*args, "--no-verify"])
    assert result.exit_code == 0, result.output
    for name in ("units_per_layer.png", "auroc_histogram.png"):
        with Image.open(out / "sgm" / name) as image:
            assert image.format == "PNG" and image.width >= 600
    card = (out / "README.md").read_text()
    assert "sgm/units_per_layer.png" in card and "sgm/auroc_histogram.png" in card
    assert "No plots were drawn" not in card
    assert set(read_record(out).files) >= {"sgm/units_per_layer.png", "sgm/auroc_histogram.png"}


@pytest.mark.slow
def test_evaluation_chart_and_card_show_the_same_figures(
    runner, llava_dir, scored_expertise, tmp_path
):
    out = tmp_path / "out"
    args = ["-q", "bake", str(llava_dir), str(out), "--expertise", str(scored_expertise)]
    assert runner.invoke(main, [*args, "--no-verify"]).exit_code == 0
    metrics = {
        "harmful_rate": 0.475,
        "harmful_rate_by_condition": {"standard": 0.28125, "adversarial": 0.5416},
        "benign_accuracy": 0.75,
        "degenerate_share": 0.0,
        "reference_perplexity": 1.31,
    }
    data = {
        "judge": "keyword",
        "prompt_set": {"name": "builtin:x", "sha256": "0" * 64, "items": 120},
        "variants": {
            "base": {"metrics": metrics},
            "sgm": {"metrics": {**metrics, "harmful_rate": 0.0}},
        },
    }
    record_evaluation(out, "sgm/eval.json", data)
    with Image.open(out / "sgm" / "eval.png") as image:
        assert image.format == "PNG"
    card = (out / "README.md").read_text()
    # The card prints shares with one decimal, as the chart's bar labels do.
    assert "| base | 47.5% | 28.1% | 54.2% |" in card
    assert "![evaluation](sgm/eval.png)" in card
    result = runner.invoke(main, ["inspect", str(out)])
    assert result.exit_code == 0, result.output


def test_the_pareto_front_holds_only_trials_within_the_budget():
    from sgm_bake.publish.plots import pareto_front

    trials = [
        {"number": 0, "kl": 0.01, "harm": 0.5, "feasible": True},
        {"number": 1, "kl": 0.02, "harm": 0.3, "feasible": True},
        {"number": 2, "kl": 0.03, "harm": 0.4, "feasible": True},  # beaten by trial 1
        {"number": 3, "kl": 0.08, "harm": 0.2, "feasible": True},
        {"number": 4, "kl": 0.15, "harm": 0.0, "feasible": False},  # over the KL budget
    ]
    assert [t["number"] for t in pareto_front(trials)] == [0, 1, 3]


def test_the_histogram_and_the_layer_chart_draw_every_rule(tmp_path):
    from sgm_bake.publish import plots

    scores = [i / 100 for i in range(100)]
    for top_k, suppressed in ((None, [s > 0.5 for s in scores]), (5, [s >= 0.95 for s in scores])):
        path = plots.auroc_histogram(tmp_path / f"h{top_k}.png", scores, suppressed, 0.5, top_k)
        with Image.open(path) as image:
            assert image.size == (600, 380)
    for zeroed in ([0.1, 0.2], [0.0, 0.0], [0.05, 0.0]):  # det0, aura, damp with a few zeroed
        path = plots.units_per_layer(tmp_path / "layers.png", [0, 1], [0.1, 0.2], zeroed)
        with Image.open(path) as image:
            assert image.width == 600
    path = plots.units_per_layer(tmp_path / "wide.png", list(range(80)), [0.1] * 80, [0.0] * 80)
    with Image.open(path) as image:
        assert image.width == 900  # never wider than a card shows it
