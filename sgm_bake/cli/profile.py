"""`profile` and the one-command form `sgm-bake MODEL OUT` (the `run` command)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from sgm_bake.cli.bake import fail_unverified
from sgm_bake.cli.common import (
    SectionedCommand,
    add_options,
    bake_options,
    base_model_option,
    capture_options,
    choose_set,
    data_format_options,
    echo_json,
    echo_lines,
    expert_layout_option,
    hook_points_of,
    json_option,
    load_options,
    make_capture,
    make_data_format,
    option,
    overwrite_option,
    placement_of,
    progress_enabled,
    recipe_option,
    revision_option,
    rule_from,
    rule_options,
    user_errors,
    verify_dtype_option,
    verify_mode_of,
    verify_option,
)
from sgm_bake.cli.tune import method_knob_options, method_options, search_options, tune_request
from sgm_bake.errors import SGMError

profile_options = add_options(
    [
        option("profile-set"),
        data_format_options,
        load_options,
        capture_options,
        option("responses-dir"),
        option("keep-responses"),
        method_knob_options,
        click.option(
            "--diagnose/--no-diagnose",
            default=True,
            show_default=True,
            help="One pass at the last prompt token: which method the model likely needs "
            "(written into the expertise file and printed).",
        ),
    ]
)


def profile_request(params: dict[str, Any], recipe_file: Path | None, rule: Any) -> Any:
    """The pipeline's profile request from the shared profile options."""
    from sgm_bake.io.response_store import check_store_folder
    from sgm_bake.pipeline.run import ProfileRequest

    if params["responses_dir"] is not None:
        check_store_folder(params["responses_dir"])  # before any model loads
    options = make_capture(
        params,
        rule,
        responses_dir=params["responses_dir"],
        keep_responses=params["keep_responses"],
    )
    return ProfileRequest(
        profile_set=params["profile_set"],
        max_samples=params["max_samples"],
        data_format=make_data_format(params),
        dtype=params["dtype"],
        recipe_file=recipe_file,
        hook_points=hook_points_of(params),
        neurons=params["neurons"],
        options=options,
        placement=placement_of(params),
        method=method_options(params, params["diagnose"]),
    )


def echo_summary(expertise: Any, recipe: Any) -> None:
    from sgm_bake.record.summary import expertise_counts, layer_rows, layer_table

    if expertise.modules:
        echo_lines(layer_table(layer_rows(expertise_counts(expertise, recipe))))


def echo_method(outcome: Any) -> None:
    """The diagnosis, the edit's fit and the warnings of a profile (`pipeline.decision`)."""
    from sgm_bake.pipeline.decision import diagnosis_lines

    method = outcome.method
    if method is None:
        return
    if method.diagnosis is not None:
        echo_lines(["diagnosis:", *(f"  {line}" for line in diagnosis_lines(method.diagnosis))])
    if method.edit is not None:
        for layer in method.edit.edits:
            click.echo(layer.line())
    for warning in method.warnings:
        click.echo(f"warning: {warning}", err=True)


def summary_json(expertise: Any, recipe: Any, output: Path) -> dict[str, Any]:
    """The profile's summary for `--json`: per-layer counts, totals and the file written."""
    from sgm_bake.record.summary import expertise_counts, layer_dicts, layer_rows

    layers = layer_dicts(layer_rows(expertise_counts(expertise, recipe)))
    return {
        "output": str(output),
        "model_type": recipe.model_type,
        "rule": dict(expertise.metadata).get("rule"),
        "units": sum(row["units"] for row in layers),
        "suppressed": sum(row["suppressed"] for row in layers),
        "layers": layers,
    }


def announce(text: str) -> None:
    """A status line on stderr (not under --quiet, which leaves errors only)."""
    if progress_enabled():
        click.echo(text, err=True)


@click.command(cls=SectionedCommand, sections={"output": "input"})
@click.argument("model")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Expertise file to write.",
)
@revision_option
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@recipe_option
@profile_options
@rule_options
@json_option
@user_errors
def profile(
    model: str,
    output: Path,
    revision: str | None,
    overwrite: bool,
    recipe_file: Path | None,
    as_json: bool,
    **params: Any,
) -> None:
    """Find the toxic expert units of MODEL and write their AUROC and factors to OUTPUT.

    Under torchrun (`torchrun --nproc-per-node N -m sgm_bake profile ...`) every rank profiles
    its share of the set and rank 0 writes OUTPUT, byte-identical to a single-process run."""
    import os

    from sgm_bake.core.expertise import save_expertise
    from sgm_bake.pipeline.run import profile_source
    from sgm_bake.runtime.distributed import from_env
    from sgm_bake.runtime.loading import resolve_model_source

    if output.exists() and not overwrite:
        raise SGMError(f"{output} exists; pass --overwrite to replace it")
    params["profile_set"] = choose_set(params["profile_set"], "profile", model)
    params["model"] = model  # the edit's default anchors depend on it
    rule_options_, _ = rule_from(params)
    request = profile_request(params, recipe_file, rule_options_)
    source = resolve_model_source(model, revision, progress_enabled())
    distributed = from_env()
    try:
        outcome = profile_source(source, request, announce, distributed)
    finally:
        if distributed is not None:
            distributed.close()
    if outcome.expertise is None:
        return  # a rank other than 0: its share is merged into rank 0's output
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    save_expertise(outcome.expertise, partial)
    os.replace(partial, output)
    if as_json:
        echo_json(summary_json(outcome.expertise, outcome.recipe, output))
        return
    echo_summary(outcome.expertise, outcome.recipe)
    echo_method(outcome)
    click.echo(f"wrote {output}")


@click.command(
    cls=SectionedCommand,
    sections={
        "expertise_path": "input",
        "push_to_hub": "publishing",
        "private": "publishing",
        "tune_knobs": "tuning",
        "help": "other",
    },
)
@click.argument("model")
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--expertise",
    "expertise_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Reuse a profile (expertise file or research-code folder) instead of profiling.",
)
@revision_option
@overwrite_option
@recipe_option
@verify_option
@verify_dtype_option
@click.option(
    "--push-to-hub",
    "push_to_hub",
    default=None,
    metavar="REPO_ID",
    help="After a passing verification, push OUT to this Hub repository.",
)
@click.option(
    "--private", is_flag=True, help="With --push-to-hub: create the repository as private."
)
@base_model_option
@expert_layout_option
@click.option(
    "--tune",
    "tune_knobs",
    is_flag=True,
    help="Search the knobs for this model (see `sgm-bake tune --help`) and bake the chosen "
    "setting; the card reports the held-out figures. --knobs with `method` lets the tuner "
    "choose SGM, the edit or both; --method edit or both fixes the method and searches the "
    "edit's knobs.",
)
@search_options
@profile_options
@rule_options
@user_errors
def run(
    model: str,
    out: Path,
    expertise_path: Path | None,
    revision: str | None,
    overwrite: bool,
    recipe_file: Path | None,
    verify_mode: str,
    no_verify: bool,
    verify_dtype: str,
    push_to_hub: str | None,
    private: bool,
    base_model: str | None,
    expert_layout: str | None,
    tune_knobs: bool,
    **params: Any,
) -> None:
    """The whole pipeline: profile MODEL (or reuse --expertise), bake into OUT, verify, and
    optionally push.

    Usage: sgm-bake MODEL OUT [options]. Under torchrun every rank profiles its share of the set;
    rank 0 alone bakes, verifies and pushes.
    """
    from sgm_bake.pipeline.run import Messages, RunRequest, run_all

    params["model"] = model  # the edit's default anchors depend on it
    if expertise_path is None:
        params["profile_set"] = choose_set(params["profile_set"], "profile", model)
        used = f"profile set: {params['profile_set']}"
        if tune_knobs:
            used += f"; judge: {params['judge_spec']}"
        click.echo(used)
    rule_options_, rule_given = rule_from(params)
    tune = None
    if tune_knobs:
        workdir = params["workdir"] or out.with_name(f"{out.name}-tune")
        tune = tune_request(params["profile_set"], params, rule_options_, recipe_file, workdir)
    request = RunRequest(
        model=model,
        out=out,
        profile=profile_request(params, recipe_file, rule_options_),
        bake=bake_options(overwrite, recipe_file, base_model, expert_layout),
        revision=revision,
        expertise_path=expertise_path,
        rule_given=rule_given,
        tune=tune,
        verify_mode=verify_mode_of(verify_mode, no_verify),
        verify_dtype=verify_dtype,
        push_to_hub=push_to_hub,
        private=private,
    )
    outcome = run_all(request, Messages(click.echo, announce, echo_method))
    if outcome is not None and outcome.verification is not None:
        fail_unverified(out, outcome.verification)


COMMANDS = [profile, run]
