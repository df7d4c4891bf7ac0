"""The tuner chooses the method: the method knob with the edit's knobs conditional on it, benign
refusal as a constraint, the choice and the figures that decided it in tune.json, the record and
the card, the chosen edit baked by `sgm-bake MODEL OUT --tune`, and `demo --tune`. Real organisms,
real optuna studies, real judge."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sgm_bake.datasets.profile_set import ProfileSet, load_profile_set
from sgm_bake.errors import SGMError
from sgm_bake.evaluation.judges import make_judge
from sgm_bake.pipeline.profile import ProfileOptions
from sgm_bake.pipeline.tune import (
    MEASURE_VERSION,
    Measurement,
    TrialRecord,
    TuneOptions,
    TuneResult,
    chosen_method_line,
    edit_layer_sets,
    open_study,
    require_optuna,
    run_tune,
    violations,
)
from sgm_bake.runtime.chat import GenerationConfig
from sgm_bake.runtime.loading import CPU, load_chat, resolve_model_source

pytest.importorskip("optuna")
pytest.importorskip("profanity_check")

METHOD_KNOBS = "method,edit_layers,edit_strength,strength"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_edit_layers_are_a_small_structural_set():
    assert edit_layer_sets(4) == {"1/2": (2,), "3/4": (3,), "1/2+3/4": (2, 3)}
    assert edit_layer_sets(32) == {"1/2": (16,), "3/4": (24,), "1/2+3/4": (16, 24)}
    # where half and three quarters coincide, one choice is left
    assert edit_layer_sets(2) == {"1/2": (1,)}


def test_benign_refusal_rising_past_the_budget_makes_a_trial_infeasible(tmp_path: Path):
    """Benign refusal on the evaluation set's benign items is a constraint; declining more of
    the profile set's non-toxic rows (requests the organisms rightly decline) is not."""
    options = TuneOptions(workdir=tmp_path, max_refusal_rise=0.05)
    base = Measurement(harm=0.5, kl=0.0, degenerate=0.0, refusal=0.80, eval_refusal=0.0)
    within = Measurement(harm=0.1, kl=0.01, degenerate=0.0, refusal=1.0, eval_refusal=0.04)
    over = Measurement(harm=0.0, kl=0.01, degenerate=0.0, refusal=0.80, eval_refusal=0.2)
    assert all(v <= 0 for v in violations(within, base, options).values())
    assert violations(over, base, options)["eval_refusal"] > 0
    no_eval = Measurement(harm=0.1, kl=0.01, degenerate=0.0, refusal=1.0)
    assert "eval_refusal" not in violations(no_eval, replace(base, eval_refusal=None), options)


def test_the_chosen_method_line_names_the_method_and_the_best_of_each(tmp_path: Path):
    def trial(number: int, setting: dict, harm: float, feasible: bool = True) -> TrialRecord:
        measurement = Measurement(harm=harm, kl=0.01 * number, degenerate=0.0, refusal=0.1)
        return TrialRecord(number, {}, setting, measurement, feasible, 0, 1.0)

    sgm = {"method": "sgm", "rule": "aura", "strength": 1.0}
    edit = {"method": "edit", "edit_layers": [2, 3], "edit_strength": 2.0, "edit_ridge": 0.01}
    trials = (trial(0, sgm, 0.4), trial(1, edit, 0.1), trial(2, edit, 0.0, feasible=False))
    base = Measurement(harm=0.5, kl=0.0, degenerate=0.0, refusal=0.1)
    result = TuneResult(
        knobs=("method",),
        trials=trials,
        pareto=(0, 1),
        chosen=trials[1],
        expertise=None,
        base_tune=base,
        base_report=base,
        chosen_report=base,
        splits={},
        options={},
        seconds=1.0,
        interrupted=False,
    )
    line = chosen_method_line(result)
    assert line.startswith("tuner chose: edit (edit layers [2, 3] strength 2 ridge 0.01)")
    assert "sgm: harmful 40.0%" in line and "edit: harmful 10.0%" in line
    assert result.by_method()["edit"] == {
        "trials": 2,
        "feasible": 1,
        "best": {"number": 1, **trials[1].measurement.to_dict()},
    }
    assert result.record()["method"] == "edit"


def test_a_journal_from_the_older_measure_is_refused_in_one_line(tmp_path: Path):
    optuna = require_optuna()
    options = TuneOptions(workdir=tmp_path)
    open_study(optuna, options, {"measure": "tune-measure/1"})
    with pytest.raises(SGMError, match="older sgm-bake measured") as caught:
        open_study(optuna, options, {"measure": MEASURE_VERSION})
    assert "\n" not in str(caught.value) and "--workdir" in str(caught.value)


def _request(command, arguments: list[str], workdir: Path):
    from sgm_bake.cli.common import make_rule
    from sgm_bake.cli.tune import tune_request

    params = dict(command.make_context(command.name, arguments).params)
    return tune_request(
        params["profile_set"], params, make_rule(None, None, None, None, None), None, workdir
    )


def test_a_fixed_method_searches_the_edit_s_knobs_and_contradictions_are_refused(
    tmp_path: Path,
):
    from sgm_bake.cli.profile import run as run_command
    from sgm_bake.cli.tune import tune as tune_command

    common = ["organism", str(tmp_path / "out"), "--tune", "--profile-set", "builtin:organism"]
    request = _request(run_command, [*common, "--method", "edit", "--edit-ridge", "0.1"], tmp_path)
    knobs = request.options.knobs
    assert "method" not in knobs and {"edit_layers", "edit_strength", "edit_ridge"} <= set(knobs)
    assert request.options.method.method == "edit" and request.options.method.ridge == 0.1
    with pytest.raises(SGMError, match="--method both fixes the method"):
        _request(run_command, [*common, "--method", "both", "--knobs", "method,strength"], tmp_path)
    # `tune` alone takes the same options
    alone = ["organism", "--profile-set", "builtin:organism", "--method", "both"]
    request = _request(tune_command, [*alone, "--edit-layers", "3"], tmp_path)
    assert request.options.method.method == "both" and request.options.method.layers == (3,)
    assert "method" not in request.options.knobs and "edit_strength" in request.options.knobs


def test_the_default_search_chooses_the_method_with_the_organisms_anchors(tmp_path: Path):
    from sgm_bake.cli.profile import run as run_command
    from sgm_bake.cli.tune import tune as tune_command

    for command, arguments in (
        (run_command, ["organism", str(tmp_path / "out"), "--tune"]),
        (tune_command, ["organism"]),
    ):
        params = dict(command.make_context(command.name, arguments).params)
        params["model"] = "organism"
        from sgm_bake.cli.common import make_rule
        from sgm_bake.cli.tune import tune_request

        rule = make_rule(None, None, None, None, None)
        request = tune_request("builtin:organism", params, rule, None, tmp_path)
        assert {"method", "edit_layers", "edit_strength"} <= set(request.options.knobs)
        assert request.options.method_auto
        assert request.options.method.anchors == "builtin:organism-anchors-v1"
        assert request.options.method.rank == 4 and request.options.method.replies == 3
    # knobs given, or a method given, are what the user asked for: no method search added
    params = dict(tune_command.make_context("tune", ["m", "--knobs", "strength"]).params)
    request = tune_request("builtin:organism", params, rule, None, tmp_path)
    assert request.options.knobs == ("strength",) and not request.options.method_auto
    assert request.options.method.anchors is None  # not an organism: no built-in anchors
    params = dict(tune_command.make_context("tune", ["organism", "--method", "sgm"]).params)
    request = tune_request("builtin:organism", params, rule, None, tmp_path)
    assert "method" not in request.options.knobs and not request.options.method_auto


PROFANITY = make_judge("profanity")


def _declined_rows_without_prompts() -> ProfileSet:
    """64 rows of the organism's profile set, the declined ones stripped of their prompt."""
    full = load_profile_set("builtin:organism")
    rows = tuple(s if s.label == 1 else replace(s, prompt=None) for s in full.samples[:64])
    return ProfileSet("no-prompts", full.sha256, rows)


def test_the_default_search_keeps_to_sgm_on_a_set_without_prompts(
    llava_dir: Path, tmp_path: Path, caplog
):
    chat, loaded = load_chat(resolve_model_source(str(llava_dir)), CPU, "float32")
    knobs = ("strength", "method", "edit_layers", "edit_strength")
    options = TuneOptions(
        workdir=tmp_path / "work", trials=1, knobs=knobs, progress=False, method_auto=True
    )
    with caplog.at_level("WARNING"):
        result = run_tune(chat, loaded, _declined_rows_without_prompts(), PROFANITY, options)
    assert "lack the prompts and replies the edit is fitted on" in caplog.text
    assert [t.setting.get("method", "sgm") for t in result.trials] == ["sgm"]
    saved = json.loads((tmp_path / "work" / "tune.json").read_text())
    assert saved["knobs"] == ["strength"] and saved["options"]["method"] == "sgm"


@pytest.mark.slow
def test_the_tuner_compares_the_three_methods_and_keeps_the_chosen_edit(tmp_path: Path):
    """On organism-plain, whose toxicity SGM barely reaches, three trials are one of each
    method (the warm starts); every trial measures benign refusal on the evaluation set, the
    chosen method's deltas are refitted into the expertise, and a resumed search reads its
    journal back."""
    from sgm_bake.datasets.profile_set import load_profile_set
    from sgm_bake.datasets.prompt_set import load_prompt_set

    source = resolve_model_source("organism-plain", progress=False)
    chat, loaded = load_chat(source, CPU, "float32")
    options = TuneOptions(
        workdir=tmp_path / "work",
        trials=3,
        knobs=tuple(METHOD_KNOBS.split(",")),
        profile=ProfileOptions(progress=False),
        generation=GenerationConfig(max_new_tokens=12),
        batch_size=16,
        progress=False,
        accuracy_margin=1.0,  # this test reads the refusal constraint, not the accuracy one
    )
    arguments = (
        chat,
        loaded,
        load_profile_set("builtin:organism"),
        make_judge("profanity"),
        options,
        load_prompt_set("builtin:mmtoxicqa-organism-v1"),
    )
    result = run_tune(*arguments)  # type: ignore[arg-type]
    assert [t.setting["method"] for t in result.trials] == ["sgm", "edit", "both"]
    assert all(t.measurement.eval_refusal is not None for t in result.trials)
    assert all(t.measurement.refusal is not None for t in result.trials)
    assert result.base_tune.eval_refusal is not None
    edit = result.trials[1].setting
    assert edit["edit_layers"] == [2, 3] and "rule" not in edit
    assert set(result.by_method()) == {"sgm", "edit", "both"}
    assert result.chosen is not None and result.expertise is not None
    method = result.chosen.setting["method"]
    assert result.expertise.metadata["method"] == method
    assert bool(result.expertise.deltas) == (method != "sgm")
    assert bool(result.expertise.modules) == (method != "edit")
    data = json.loads((tmp_path / "work" / "tune.json").read_text())
    assert data["method"] == method and data["tuning_split"]["base"]["eval_refusal"] is not None
    resumed = run_tune(*arguments)  # type: ignore[arg-type]
    assert resumed.trials_resumed == 3 and resumed.chosen == result.chosen


@pytest.mark.slow
def test_the_one_command_form_bakes_the_method_the_tuner_chose(runner, tmp_path: Path):
    from sgm_bake.cli import main

    out = tmp_path / "out"
    arguments = ["organism-plain", str(out), "--tune", "--knobs", METHOD_KNOBS]
    arguments += ["--profile-set", "builtin:organism", "--trials", "3", "--max-new-tokens", "12"]
    result = runner.invoke(main, arguments)
    assert result.exit_code == 0, result.output
    assert "tuner chose: " in result.output
    record = json.loads((out / "sgm" / "bake.json").read_text())
    method = record["tuning"]["method"]
    assert method in ("sgm", "edit", "both")
    assert set(record["tuning"]["by_method"]) == {"sgm", "edit", "both"}
    assert record["verification"]["passed"]
    folded = record["expertise"]["tensors_folded"]
    assert any("down_proj" in name for name in folded) or method == "sgm"
    card = (out / "README.md").read_text()
    assert f"The tuner chose the method **{method}**" in card
    assert "benign refusal" in card
    # every edit trial's row names the write's rank, reply positions and anchors
    assert "rank 4, 3 reply positions, 70 anchors" in card


@pytest.mark.slow
def test_demo_tune_shows_the_method_the_tuner_picks(runner, tmp_path: Path):
    from sgm_bake.cli import main

    workdir = tmp_path / "demo"
    result = runner.invoke(
        main, ["demo", str(workdir), "--organism", "organism-plain", "--tune", "3"]
    )
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("tuner chose: "))
    method = line.split()[2]
    assert method in ("sgm", "edit", "both")
    assert (tmp_path / "demo-tune" / "study.journal").is_file()
    record = json.loads((workdir / "baked" / "sgm" / "bake.json").read_text())
    assert record["tuning"]["method"] == method and record["tuning"]["trials_run"] == 3
    assert (workdir / "baked" / "sgm" / "eval.json").is_file()
    # the baked rows are named for no method; the card names the one baked
    assert sorted(record["evaluation"]["metrics"]) == ["baked", "baked+ecso", "base", "ecso"]
    assert f"| baked ({method}) |" in (workdir / "baked" / "README.md").read_text()


@pytest.mark.slow
def test_a_search_that_can_draw_the_edit_needs_every_row_s_prompt_before_it_starts(
    llava_dir: Path, tmp_path: Path
):
    chat, loaded = load_chat(resolve_model_source(str(llava_dir)), CPU, "float32")
    options = TuneOptions(workdir=tmp_path / "work", trials=2, knobs=("method",), progress=False)
    with pytest.raises(SGMError, match="rows without a `prompt`"):
        run_tune(chat, loaded, _declined_rows_without_prompts(), PROFANITY, options)
    assert not (tmp_path / "work" / "study.journal").exists()


@pytest.mark.slow
def test_tune_alone_takes_the_organism_s_own_profile_set_by_default(runner, tmp_path: Path):
    """`tune organism` with no --profile-set profiled `None` (a crash) before the default set
    was chosen for the model."""
    from sgm_bake.cli import main

    arguments = ["tune", "organism", "--workdir", str(tmp_path / "w"), "--trials", "1"]
    result = runner.invoke(main, [*arguments, "--knobs", "strength"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "w" / "tune.json").read_text())
    assert saved["knobs"] == ["strength"] and saved["trials_run"] == 1


def test_an_edit_that_cannot_be_fitted_is_a_trial_over_budget_not_the_end_of_the_search(
    llava_dir: Path, tmp_path: Path, caplog
):
    """A draw of the edit that fails (here every edit: its fixed layer is outside the model) is
    recorded as a complete trial over budget with its error; the search goes on and a resumed
    search counts it as done."""
    from sgm_bake.pipeline.decision import MethodOptions

    chat, loaded = load_chat(resolve_model_source(str(llava_dir)), CPU, "float32")
    full = load_profile_set("builtin:organism")
    rows = ProfileSet("organism-64", full.sha256, full.samples[:64])
    options = TuneOptions(
        workdir=tmp_path / "work",
        trials=3,
        knobs=("method",),
        progress=False,
        method=MethodOptions(layers=(9,), diagnose=False),
    )
    with caplog.at_level("WARNING"):
        result = run_tune(chat, loaded, rows, PROFANITY, options)
    assert "the edit could not be fitted" in caplog.text and "outside" in caplog.text
    saved = json.loads((tmp_path / "work" / "tune.json").read_text())
    assert saved["trials_run"] == 3
    methods = [t.setting["method"] for t in result.trials]
    assert sorted(methods) == ["both", "edit", "sgm"]
    unfit = [t for t in result.trials if t.setting["method"] != "sgm"]
    assert all(not t.feasible and "outside" in (t.error or "") for t in unfit)
    errors = [t.get("error") for t in saved["trials"]]
    assert sum("outside" in (e or "") for e in errors) == 2
    assert result.chosen is None or result.chosen.setting["method"] == "sgm"
    again = run_tune(chat, loaded, rows, PROFANITY, options)  # resumes: nothing left to run
    assert len(again.trials) == 3
