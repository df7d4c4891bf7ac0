"""`profile` and the one-command form `sgm-bake MODEL OUT` (the `run` command)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from sgm_bake.cli.bake import report_verification
from sgm_bake.cli.common import (
    SectionedCommand,
    add_options,
    base_model_option,
    batch_size_option,
    command_line,
    device_option,
    dtype_option,
    echo_lines,
    effective_settings,
    expert_layout_option,
    feed_option,
    hook_points_option,
    layers_option,
    make_placement,
    make_rule,
    max_samples_option,
    neurons_option,
    option,
    overwrite_option,
    placement_options,
    pooling_option,
    positions_option,
    progress_enabled,
    recipe_option,
    revision_option,
    rule_options,
    step,
    user_errors,
    verify_dtype_option,
    verify_mode_of,
    verify_option,
)
from sgm_bake.cli.tune import search_options, tune_request
from sgm_bake.errors import SGMError

profile_options = add_options(
    [
        option("profile-set"),
        device_option,
        dtype_option,
        placement_options,
        batch_size_option,
        max_samples_option,
        pooling_option,
        positions_option,
        feed_option,
        hook_points_option,
        neurons_option,
        layers_option,
        option("responses-dir"),
        option("keep-responses"),
    ]
)


def profile_request(params: dict[str, Any], recipe_file: Path | None, rule: Any) -> Any:
    """The pipeline's profile request from the shared profile options."""
    from sgm_bake.io.response_store import check_store_folder
    from sgm_bake.pipeline.profile import ProfileOptions, parse_layers
    from sgm_bake.pipeline.run import ProfileRequest

    if params["responses_dir"] is not None:
        check_store_folder(params["responses_dir"])  # before any model loads
    hook_points = None
    if params["hook_points"]:
        hook_points = tuple(p.strip() for p in params["hook_points"].split(",") if p.strip())
    options = ProfileOptions(
        layers=parse_layers(params["layer_spec"]),
        pooling=params["pooling"],
        positions=params["positions"],
        feed=params["feed"],
        batch_size=params["batch_size"],
        responses_dir=params["responses_dir"],
        keep_responses=params["keep_responses"],
        progress=progress_enabled(),
        rule=rule,
    )
    return ProfileRequest(
        profile_set=params["profile_set"],
        max_samples=params["max_samples"],
        device=params["device"],
        dtype=params["dtype"],
        recipe_file=recipe_file,
        hook_points=hook_points,
        neurons=params["neurons"],
        options=options,
        placement=make_placement(
            params["device"], params["device_map"], params["max_memory"], params["offload_folder"]
        ),
    )


def echo_summary(expertise: Any, recipe: Any) -> None:
    from sgm_bake.record.summary import expertise_counts, layer_rows, layer_table

    echo_lines(layer_table(layer_rows(expertise_counts(expertise, recipe))))


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
@user_errors
def profile(
    model: str,
    output: Path,
    revision: str | None,
    overwrite: bool,
    recipe_file: Path | None,
    rule: str | None,
    threshold: float | None,
    top_k: int | None,
    damp_alpha: float | None,
    strength: float | None,
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
    rule_options_ = make_rule(rule, threshold, top_k, damp_alpha, strength)
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
    echo_summary(outcome.expertise, outcome.recipe)
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
    "setting; the card reports the held-out figures.",
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
    rule: str | None,
    threshold: float | None,
    top_k: int | None,
    damp_alpha: float | None,
    strength: float | None,
    **params: Any,
) -> None:
    """The whole pipeline: profile MODEL (or reuse --expertise), bake into OUT, verify, and
    optionally push.

    Usage: sgm-bake MODEL OUT [options]. Under torchrun every rank profiles its share of the set;
    rank 0 alone bakes, verifies and pushes.
    """
    from sgm_bake.core.expertise import load_expertise
    from sgm_bake.core.recipes import recipe_for_config
    from sgm_bake.io.atomic import check_target
    from sgm_bake.io.checkpoint import open_checkpoint
    from sgm_bake.pipeline.bake import BakeOptions
    from sgm_bake.pipeline.bake import bake as run_bake
    from sgm_bake.pipeline.run import (
        apply_rule_if_given,
        hand_over,
        load_profile_inputs,
        profile_source,
        verify_output,
        warm_up_layer_check,
    )
    from sgm_bake.runtime.distributed import from_env
    from sgm_bake.runtime.loading import resolve_model_source

    mode = verify_mode_of(verify_mode, no_verify)
    verify = mode is not None
    if push_to_hub and not verify:
        raise SGMError("--push-to-hub needs a verified output; drop --no-verify")
    if push_to_hub:
        from sgm_bake.publish.push import check_repo_id

        check_repo_id(push_to_hub)  # before hours of profiling, not after
    if tune_knobs and expertise_path is not None:
        raise SGMError("--tune searches the profile itself; drop --expertise or --tune")
    rule_given = any(v is not None for v in (rule, threshold, top_k, damp_alpha, strength))
    rule_options_ = make_rule(rule, threshold, top_k, damp_alpha, strength)
    request = profile_request(params, recipe_file, rule_options_)
    placement = request.placement
    if expertise_path is None:
        load_profile_inputs(request)  # bad data fails before any download or model load
    source = resolve_model_source(model, revision, progress_enabled())
    check_target(out, source.path, overwrite)
    total = 2 + int(verify) + int(bool(push_to_hub))
    loaded = None
    outcome_memory: dict[str, Any] = {}
    tuned = None
    if tune_knobs:
        from sgm_bake.pipeline.tune import summary_lines, tune_source

        workdir = params["workdir"] or out.with_name(f"{out.name}-tune")
        request = tune_request(params["profile_set"], params, rule_options_, recipe_file, workdir)
        step(1, total, f"tuning {source.id} on {params['profile_set']} (search in {workdir})")
        searched = tune_source(source, request)
        echo_lines(summary_lines(searched.result))
        chosen = searched.result.expertise
        if chosen is None:
            raise SGMError(
                "tuning found no setting that lowers the harmful rate within --max-kl, so "
                f"nothing was baked; see {workdir / 'tune.json'} (raise --max-kl or --trials)"
            )
        tuned = searched.result
        expertise, recipe, loaded = chosen, searched.loaded.recipe, searched.loaded
        del searched
    elif expertise_path is not None:
        step(1, total, f"reusing the profile {expertise_path}")
        expertise = apply_rule_if_given(
            load_expertise(expertise_path), rule_options_ if rule_given else None
        )
        recipe = recipe_for_config(open_checkpoint(source.path).config, recipe_file)
    else:
        distributed = from_env()
        if distributed is None or distributed.is_main:
            step(1, total, f"profiling {source.id}")
        try:
            outcome = profile_source(source, request, announce, distributed)
        finally:
            if distributed is not None:
                distributed.close()
        if outcome.expertise is None:
            return  # a rank other than 0: rank 0 bakes, verifies and pushes
        expertise, recipe, loaded = outcome.expertise, outcome.recipe, outcome.loaded
        outcome_memory = outcome.memory
        del outcome
    echo_summary(expertise, recipe)
    evidence = None
    if loaded is not None:
        # The bake needs no model: release it (and its GPU memory) unless the verification
        # reuses it, keeping what the layer check needs from it.
        handoff = hand_over(
            loaded, source.path, recipe, expertise, mode, verify_dtype, params["device"], placement
        )
        announce(handoff.note)
        loaded, evidence = handoff.loaded, handoff.evidence
    elif mode == "layers":
        warm_up_layer_check(source.path, recipe_file)
    step(2, total, f"baking {out}")
    options = BakeOptions(
        overwrite,
        recipe_file,
        progress_enabled(),
        command_line(),
        base_model=base_model,
        expert_layout=expert_layout,
        settings=effective_settings(),
        stages={"profile": outcome_memory} if outcome_memory else {},
    )
    record = run_bake(source, out, expertise, options)
    click.echo(f"baked {out}: {len(record.expertise.tensors_folded)} tensors folded")
    if tuned is not None:
        from sgm_bake.pipeline.tune import record_tuning

        record_tuning(out, tuned)
    if verify:
        step(3, total, "verifying")
        report_verification(
            out,
            verify_output(
                out,
                source.path,
                verify_dtype,
                params["device"],
                loaded,
                mode=mode or "layers",
                placement=placement,
                progress=progress_enabled(),
                evidence=evidence,
            ),
        )
    if push_to_hub:
        from sgm_bake.publish.push import plan_upload
        from sgm_bake.publish.push import push as run_push

        step(total, total, f"pushing to {push_to_hub}")
        url = run_push(out, plan_upload(out, push_to_hub, private, None, None))
        click.echo(f"pushed {out} to {url}")


COMMANDS = [profile, run]
