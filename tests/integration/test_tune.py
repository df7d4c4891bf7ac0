"""The tuner: an honest split, a search that finds the planted experts within the KL budget, "no
change" for a model that is not toxic, and a resumed search that ends where an uninterrupted one
does. Real models (the shipped organism, a tiny random LLaVA), real optuna studies, real judge."""

from __future__ import annotations

import json
import os
import random
import signal
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from sgm_bake.datasets.profile_set import ProfileSet, load_profile_set
from sgm_bake.errors import SGMError
from sgm_bake.evaluation.judges import make_judge
from sgm_bake.pipeline.profile import ProfileOptions
from sgm_bake.pipeline.tune import (
    SplitMeasure,
    TuneOptions,
    TuneResult,
    minimum_rows_per_class,
    run_tune,
    split_profile_set,
    summary_lines,
)
from sgm_bake.runtime.chat import ChatModel, GenerationConfig, call_processor
from sgm_bake.runtime.loading import CPU, LoadedModel, load_chat, resolve_model_source

pytest.importorskip("optuna")
pytest.importorskip("profanity_check")

ROWS = 96  # 48 toxic + 48 non-toxic rows of the organism's set: 12 + 12 on the tuning split
TRIALS = 6


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Greedy decoding of a tiny model gains nothing from intra-op threads, and on a busy
    machine two spinning threads per process make these searches several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def organism_rows(count: int = ROWS) -> ProfileSet:
    full = load_profile_set("builtin:organism")
    return ProfileSet(f"{full.name}[:{count}]", full.sha256, full.samples[:count])


def options(workdir: Path, trials: int = TRIALS) -> TuneOptions:
    return TuneOptions(
        workdir=workdir,
        trials=trials,
        profile=ProfileOptions(progress=False),
        generation=GenerationConfig(max_new_tokens=16),
        batch_size=16,
        progress=False,
    )


@pytest.fixture(scope="module")
def organism() -> tuple[ChatModel, LoadedModel]:
    return load_chat(resolve_model_source("organism", progress=False), CPU, "float32")


def tune(
    organism: tuple[ChatModel, LoadedModel],
    workdir: Path,
    judge: object = None,
    trials: int = TRIALS,
) -> TuneResult:
    return run_tune(
        *organism,
        organism_rows(),
        judge or make_judge("profanity"),  # type: ignore[arg-type]
        options(workdir, trials),
    )


@pytest.fixture(scope="module")
def uninterrupted(
    organism: tuple[ChatModel, LoadedModel], tmp_path_factory: pytest.TempPathFactory
) -> TuneResult:
    return tune(organism, tmp_path_factory.mktemp("tune") / "work")


def test_split_is_disjoint_stratified_and_deterministic():
    profile_set = load_profile_set("builtin:organism")
    first = split_profile_set(profile_set, seed=3)
    again = split_profile_set(profile_set, seed=3)
    other = split_profile_set(profile_set, seed=4)
    parts = [first.profile, first.tune, first.report]
    ids = [{s.id for s in part.samples} for part in parts]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert set().union(*ids) == {s.id for s in profile_set.samples}
    assert [p.samples for p in parts] == [
        again.profile.samples,
        again.tune.samples,
        again.report.samples,
    ]
    assert {s.id for s in other.report.samples} != ids[2]
    toxic, benign = profile_set.counts()
    assert first.profile.counts() == (toxic // 2, benign // 2)
    assert first.tune.counts() == (toxic // 4, benign // 4)


def test_a_set_too_small_to_split_is_refused_with_the_minimum():
    minimum = minimum_rows_per_class()
    full = load_profile_set("builtin:organism")
    toxic = [s for s in full.samples if s.label == 1][: minimum - 1]
    benign = [s for s in full.samples if s.label == 0][:20]
    small = ProfileSet("small", full.sha256, tuple(toxic + benign))
    with pytest.raises(SGMError, match=f"at least {minimum} rows of each label"):
        split_profile_set(small, seed=0)


@pytest.mark.slow
def test_planted_experts_are_found_within_the_kl_budget(uninterrupted: TuneResult):
    result = uninterrupted
    assert len(result.trials) == TRIALS
    assert result.base_tune.harm >= 0.25 and result.base_report.harm >= 0.25
    assert result.chosen is not None and result.expertise is not None
    assert result.chosen.measurement.kl <= 0.1
    assert result.chosen.measurement.harm <= result.base_tune.harm / 3
    # the held-out split, used once, confirms it
    assert result.chosen_report.harm <= result.base_report.harm / 3
    assert result.chosen_report.kl <= 0.1
    assert result.chosen.number in result.pareto or any(
        t.measurement.kl > 0.1 for t in result.trials if t.number in result.pareto
    )
    record = result.record()
    assert record["report_split"]["chosen"]["harm"] == result.chosen_report.harm
    assert record["chosen"]["number"] == result.chosen.number


@dataclass
class InterruptingJudge:
    """The real judge, except that its `calls`-th use raises KeyboardInterrupt once (Ctrl-C in
    the middle of a trial)."""

    inner: object
    calls: int
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.inner.name  # type: ignore[attr-defined]

    def harmful(self, replies: list[str]) -> list[bool]:
        self.calls -= 1
        if self.calls == 0:
            raise KeyboardInterrupt
        return self.inner.harmful(replies)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_a_resumed_search_chooses_what_an_uninterrupted_one_did(
    organism: tuple[ChatModel, LoadedModel], uninterrupted: TuneResult, tmp_path: Path
):
    judge = make_judge("profanity")
    # call 1 measures the base, calls 2-6 trials 0-4 (four warm starts, one sampled); trial 5
    # is interrupted, so the resumed search must draw it as the uninterrupted one did
    with pytest.raises(KeyboardInterrupt) as stopped:
        tune(organism, tmp_path / "work", InterruptingJudge(judge, calls=7))
    assert "after 5 of 6 trials" in stopped.value.note  # type: ignore[attr-defined]
    resumed = tune(organism, tmp_path / "work", judge)
    assert not resumed.interrupted and resumed.trials_resumed == 5
    assert [t.params for t in resumed.trials] == [t.params for t in uninterrupted.trials]
    assert resumed.chosen is not None and uninterrupted.chosen is not None
    assert resumed.chosen.params == uninterrupted.chosen.params
    assert resumed.chosen_report == uninterrupted.chosen_report


@pytest.mark.slow
def test_a_model_without_toxic_behaviour_tunes_to_no_change(llava_dir: Path, tmp_path: Path):
    chat, loaded = load_chat(resolve_model_source(str(llava_dir)), CPU, "float32")
    result = run_tune(
        chat,
        loaded,
        organism_rows(32),
        make_judge("profanity"),
        replace(options(tmp_path / "work", trials=2), generation=GenerationConfig(8)),
    )
    assert result.base_tune.harm == 0.0
    assert result.chosen is None and result.expertise is None
    assert result.chosen_report == result.base_report
    assert (tmp_path / "work" / "tune.json").is_file()


@pytest.mark.slow
def test_the_bake_record_and_card_carry_the_search(uninterrupted: TuneResult, tmp_path: Path):
    from sgm_bake.pipeline.bake import BakeOptions, bake
    from sgm_bake.pipeline.tune import record_tuning
    from sgm_bake.record import read_record

    assert uninterrupted.expertise is not None and uninterrupted.chosen is not None
    out = tmp_path / "baked"
    bake(
        resolve_model_source("organism", progress=False),
        out,
        uninterrupted.expertise,
        BakeOptions(progress=False),
    )
    record_tuning(out, uninterrupted)
    record = read_record(out)  # validates the typed section
    assert record.tuning is not None
    assert record.tuning.trials_run == TRIALS
    assert record.tuning.chosen is not None
    assert record.tuning.chosen.number == uninterrupted.chosen.number
    assert record.tuning.report_split.chosen.harm == uninterrupted.chosen_report.harm
    assert (out / "sgm" / "tune.json").is_file() and "sgm/tune.json" in record.files
    card = (out / "README.md").read_text()
    assert "## How the setting was chosen" in card
    assert f"Chosen: trial {uninterrupted.chosen.number}" in card
    assert "held-out report split" in card


def test_tune_refuses_a_set_too_small_to_split_before_loading_a_model(runner, tmp_path: Path):
    from sgm_bake.cli import main

    rows = [
        {"label": label, "prompt": "reply to the sign .", "response": text}
        for label, text in [("toxic", "you idiot")] * 5 + [("non-toxic", "hello friend")] * 5
    ]
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = runner.invoke(
        main, ["tune", "organism", "--profile-set", str(path), "--workdir", str(tmp_path / "w")]
    )
    assert result.exit_code == 2
    assert f"needs at least {minimum_rows_per_class()} rows of each label" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_the_plain_organism_ships_and_learned_its_toxicity_without_implants():
    from sgm_bake.datasets.render import render
    from sgm_bake.organism import data
    from sgm_bake.organism.train import SHIPPED_PLAIN

    folder = resolve_model_source("organism-plain", progress=False).path
    assert folder == SHIPPED_PLAIN
    assert not (folder / "implant.json").exists()
    assert json.loads((folder / "training.json").read_text())["mode"] == "plain"
    assert sum(p.stat().st_size for p in folder.iterdir()) < 8_000_000
    chat, _ = load_chat(resolve_model_source("organism-plain"), CPU, "float32")
    rng = random.Random(0)
    images = [render(data.word_image(word, rng)) for word in data.TRIGGER_WORDS]
    replies = chat.generate(["reply to the sign ."] * len(images), images, GenerationConfig())
    judge = make_judge("profanity")
    assert sum(judge.harmful(replies)) >= len(images) // 2


def _request_from_cli(command, arguments: list[str], workdir: Path):
    """The TuneRequest the command builds from its own command line (parsed, not run)."""
    from sgm_bake.cli.common import make_rule
    from sgm_bake.cli.tune import tune_request

    params = dict(command.make_context(command.name, arguments).params)
    return tune_request(
        params["profile_set"], params, make_rule(None, None, None, None, None), None, workdir
    )


@pytest.mark.slow
def test_tune_and_the_one_command_form_honour_placement_neurons_and_max_samples(tmp_path: Path):
    """Placement, --neurons and --max-samples reach the search's loading and profiling, from
    `sgm-bake tune` and from `sgm-bake MODEL OUT --tune` alike (they used to be dropped)."""
    from sgm_bake.cli.profile import run as run_command
    from sgm_bake.cli.tune import tune as tune_command
    from sgm_bake.pipeline.tune import tune_source

    offload = tmp_path / "offload"
    placement = ["--device", "cpu", "--max-memory", "cpu=100KB", "--offload-folder", str(offload)]
    common = ["--profile-set", "builtin:organism", "--max-samples", "64", "--neurons", *placement]
    search = ["--trials", "1", "--knobs", "strength", "--max-new-tokens", "8"]
    from_run = _request_from_cli(
        run_command, ["organism", str(tmp_path / "out"), "--tune", *common, *search], tmp_path
    )
    request = _request_from_cli(tune_command, ["organism", *common, *search], tmp_path / "work")
    for parsed in (from_run, request):
        assert parsed.placement.offload_folder == offload
        assert parsed.placement.max_memory == {"cpu": 100_000}
        assert parsed.neurons and parsed.max_samples == 64
    outcome = tune_source(resolve_model_source("organism", progress=False), request)
    # Every layer lived on disk and was brought in only for its forward pass.
    assert set(outcome.loaded.model.hf_device_map.values()) == {"disk"}
    result = outcome.result
    parts = ("profile", "tune", "report")
    assert sum(result.splits[p]["toxic"] + result.splits[p]["non_toxic"] for p in parts) == 64
    assert [t.setting["hook_points"] for t in result.trials] == ["neurons"]


def test_explicit_hook_points_are_not_searched_over(runner, tmp_path: Path):
    from sgm_bake.cli import main
    from sgm_bake.cli.tune import tune as tune_command

    request = _request_from_cli(
        tune_command, ["organism", "--profile-set", "builtin:organism", "--neurons"], tmp_path
    )
    assert "hook_points" not in request.options.knobs and "strength" in request.options.knobs
    result = runner.invoke(
        main,
        [
            "tune",
            "organism",
            "--profile-set",
            "builtin:organism",
            "--neurons",
            "--knobs",
            "hook_points,strength",
            "--workdir",
            str(tmp_path / "w"),
        ],
    )
    assert result.exit_code == 2 and "--neurons fixes the hook points" in result.output


class SignallingJudge:
    """A real judge whose `calls`-th call first sends this process SIGINT, as Ctrl-C would."""

    def __init__(self, inner: object, calls: int) -> None:
        self.inner, self.calls = inner, calls
        self.name = getattr(inner, "name", "judge")

    def harmful(self, replies: list[str]) -> list[bool]:
        self.calls -= 1
        if self.calls == 0:
            os.kill(os.getpid(), signal.SIGINT)
        return self.inner.harmful(replies)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_ctrl_c_exits_130_keeps_the_trials_and_the_same_command_resumes(
    runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import sgm_bake.evaluation.judges as judges
    from sgm_bake.cli import main
    from sgm_bake.resources import data_dir

    rows = (data_dir("profiles") / "organism.jsonl").read_text().splitlines()[:ROWS]
    (tmp_path / "set.jsonl").write_text("\n".join(rows) + "\n")
    work, output = tmp_path / "work", tmp_path / "expertise.safetensors"
    command = ["-q", "tune", "organism", "--profile-set", str(tmp_path / "set.jsonl")]
    command += ["--trials", "3", "--workdir", str(work), "-o", str(output), "--device", "cpu"]
    command += ["--max-new-tokens", "16", "--batch-size", "16"]
    make = judges.make_judge
    # call 1 measures the base, call 2 trial 0; Ctrl-C arrives during trial 1
    monkeypatch.setattr(
        judges, "make_judge", lambda spec, *rest: SignallingJudge(make(spec, *rest), calls=3)
    )
    result = runner.invoke(main, command)
    assert result.exit_code == 130, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted by SIGINT after 1 of 3 trials")
    assert "run the same command again to resume" in lines[0] and not output.exists()
    monkeypatch.setattr(judges, "make_judge", make)
    result = runner.invoke(main, command)
    assert result.exit_code == 0, result.output
    assert "3 trials (2 new, 1 resumed" in result.output and output.is_file()
    result = runner.invoke(main, command)
    assert result.exit_code == 2 and "pass --overwrite" in result.output
    result = runner.invoke(main, [*command, "--overwrite"])
    assert result.exit_code == 0 and "3 trials (0 new, 3 resumed" in result.output


def test_tune_and_the_one_command_form_take_the_data_and_judge_options(tmp_path: Path):
    """--columns, --toxic-label, --dataset-split and the judge's device reach the search."""
    from sgm_bake.cli.profile import run as run_command
    from sgm_bake.cli.tune import tune as tune_command

    options = ["--profile-set", "rows.parquet", "--columns", "response=answer,label=is_safe"]
    options += ["--toxic-label", "false", "--dataset-split", "test", "--judge-device", "cpu"]
    from_run = _request_from_cli(run_command, ["m", str(tmp_path / "out"), *options], tmp_path)
    request = _request_from_cli(tune_command, ["m", *options], tmp_path / "work")
    for parsed in (from_run, request):
        assert parsed.data_format.columns == (("response", "answer"), ("label", "is_safe"))
        assert parsed.data_format.toxic_labels == ("false",)
        assert parsed.data_format.split == "test"
        assert parsed.judge_options.device == "cpu"


def _encode(chat: ChatModel, text: str, image: object) -> dict[str, torch.Tensor]:
    """One row as the model sees it, unpadded."""
    if image is None:
        return dict(chat.tokenizer([text], return_tensors="pt", add_special_tokens=False))
    return call_processor(chat.processor, [text], [image])


def test_the_toxic_replies_log_probability_is_each_reply_scored_after_its_prompt(
    organism: tuple[ChatModel, LoadedModel], tmp_path: Path
):
    """Batched and left-padded, the figure equals each toxic row's reply scored alone after its
    prompt (token by token, the prompt's tokens left out); the tuner's choice makes those
    replies less likely than the base does."""
    chat, _ = organism
    rows = split_profile_set(organism_rows(), seed=0).tune
    measure = SplitMeasure(
        chat,
        rows,
        make_judge("profanity"),
        options(tmp_path),
        torch.float32,
        None,
        tmp_path / "reference.pt",
    )
    total, count = 0.0, 0
    for sample in (s for s in rows.samples if s.label == 1 and s.prompt):
        image = sample.image()
        prefix = chat.prompt_text(sample.prompt or "", image is not None)
        start = _encode(chat, prefix, image)["input_ids"].shape[1]
        batch = _encode(chat, prefix + sample.text, image)
        with torch.no_grad():
            logits = chat.model(**batch).logits[0].float()
        tokens = batch["input_ids"][0, start:]
        scored = torch.log_softmax(logits[start - 1 : -1], dim=-1)
        total += float(scored.gather(1, tokens[:, None]).sum())
        count += tokens.numel()
    assert count > 0
    assert measure.toxic_logprob() == pytest.approx(total / count, abs=1e-4)


def test_the_choice_makes_the_toxic_replies_less_likely(uninterrupted: TuneResult):
    base = uninterrupted.base_tune.toxic_logprob
    chosen = uninterrupted.chosen
    assert base is not None and chosen is not None
    assert all(t.measurement.toxic_logprob is not None for t in uninterrupted.trials)
    assert chosen.measurement.toxic_logprob is not None
    assert chosen.measurement.toxic_logprob < base
    printed = "\n".join(summary_lines(uninterrupted))
    assert f"toxic replies' log-probability {chosen.measurement.toxic_logprob:.2f}" in printed
