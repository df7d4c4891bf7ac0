"""`tune`: search the knobs (SGM's, and with the method knob the edit's) for one model on held-out
prompts within a damage budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from sgm_bake.cli.common import (
    SectionedCommand,
    add_options,
    capture_options,
    choose_set,
    data_format_options,
    echo_lines,
    hook_points_of,
    is_organism,
    judge_option,
    load_options,
    make_capture,
    make_data_format,
    make_judge_options,
    option,
    placement_of,
    progress_enabled,
    recipe_option,
    revision_option,
    rule_from,
    rule_options,
    template_option,
    user_errors,
)
from sgm_bake.errors import SGMError
from sgm_bake.options import (
    DEFAULT_EDIT_RANK,
    DEFAULT_EDIT_REPLIES,
    ORGANISM_ANCHORS,
    default,
    split_fractions,
)

# The search's own options: shared by `tune` and by `--tune` on the one-command form.
search_options = add_options(
    [
        option(key)
        for key in (
            "workdir",
            "trials",
            "tune-seed",
            "max-kl",
            "degenerate-margin",
            "accuracy-margin",
            "max-refusal-rise",
            "split",
            "knobs",
            "sampler",
            "eval-set",
            "max-new-tokens",
        )
    ]
    # the judge: its spec, and how a guard:MODEL or openai:URL judge runs
    + [judge_option]
)
# The method and the edit's knobs: `profile`'s, and `tune`'s values of the knobs not searched.
method_knob_options = add_options(
    [
        click.option(
            "--method",
            type=click.Choice(["sgm", "edit", "both"]),
            default=None,
            help="sgm: scale the toxic expert units; edit: a low-rank conditional write into "
            "the MLP output projection of --edit-layers, fitted on the profile set's prompts and "
            "replies (for models whose toxic reply is a missing refusal); both. Default: sgm; "
            "when tuning, the tuner chooses among the three.",
        ),
        click.option(
            "--edit-layers",
            default=None,
            help="Layers the edit writes into, e.g. '2,3' (default: the layers at half and "
            "three quarters of the depth).",
        ),
        click.option(
            "--edit-strength",
            type=float,
            default=1.0,
            show_default=True,
            help="1 moves toxic-eliciting prompts to the declined prompts' state at the last "
            "prompt token; above 1 overshoots.",
        ),
        click.option(
            "--edit-ridge",
            type=float,
            default=1e-2,
            show_default=True,
            help="The edit's ridge, relative to the mean eigenvalue of its key Gram matrix.",
        ),
        click.option(
            "--edit-rank",
            type=click.IntRange(min=1),
            default=DEFAULT_EDIT_RANK,
            show_default=True,
            help="Output directions the edit keeps per layer (reduced-rank fit of whole-state "
            "targets; 1 is the write along the decision direction alone).",
        ),
        click.option(
            "--edit-replies",
            type=click.IntRange(min=0),
            default=DEFAULT_EDIT_REPLIES,
            show_default=True,
            help="Reply positions fitted after the last prompt token (teacher-forced on each "
            "row's reply): where toxic and polite replies share their first words, the reply is "
            "decided there.",
        ),
        click.option(
            "--edit-anchors",
            default=None,
            metavar="SET",
            help="A prompt set whose benign items with reference answers the edit must leave "
            "alone (every position). Default: builtin:organism-anchors-v1 for an organism, none "
            "otherwise; never the set you evaluate on.",
        ),
    ]
)


def method_options(params: dict[str, Any], diagnose: bool) -> Any:
    """The method and the edit's knobs from the options above (a `MethodOptions`)."""
    from sgm_bake.pipeline.decision import MethodOptions
    from sgm_bake.pipeline.profile import parse_layers

    return MethodOptions(
        params.get("method") or "sgm",
        parse_layers(params["edit_layers"]),
        params["edit_strength"],
        params["edit_ridge"],
        diagnose,
        params["edit_rank"],
        params["edit_replies"],
        edit_anchors(params),
    )


def edit_anchors(params: dict[str, Any]) -> str | None:
    """The edit's anchor set: the one given, else the organisms' own for an organism (a real
    model has no built-in set of benign requests with answers that is not an evaluation set)."""
    if params.get("edit_anchors"):
        from sgm_bake.datasets.prompt_set import load_prompt_set
        from sgm_bake.pipeline.decision import anchor_rows

        spec = str(params["edit_anchors"])
        anchor_rows(load_prompt_set(spec))  # a wrong set fails now, not after the profiling
        return spec
    model = str(params.get("model") or "")
    folder = Path(model) if model and Path(model).is_dir() else None
    return ORGANISM_ANCHORS if model and is_organism(model, folder) else None


# How the model is fed and loaded when `tune` runs alone (the one-command form has the same
# options through `profile`'s); a knob the search covers replaces the option's value.
input_options = add_options([data_format_options, capture_options, load_options, template_option])
TUNE_BATCH_SIZE = 8
"""The batch of `--batch-size auto` while tuning (the search's forward passes are not probed)."""


AUTO_METHOD_KNOBS = ("method", "edit_layers", "edit_strength")
"""What the default search adds so that the tuner chooses the method (the edit's ridge keeps its
value: a light regulariser the strength already trades against)."""


def searched_knobs(params: dict[str, Any]) -> tuple[str, ...]:
    """The knobs to search. Hook points given explicitly (`--hook-points`, `--neurons`) are a
    fixed value, so the default search leaves that knob out (and says so); an explicit --knobs
    that searches it as well is a contradiction, refused. The same holds for a method other than
    sgm (`--method edit`), whose default search covers the edit's knobs."""
    knobs = tuple(k.strip() for k in params["knobs"].split(",") if k.strip())
    if params.get("method") is None and params["knobs"] == default("knobs"):
        # the default search chooses the method too (dropped, with a note, when the profile
        # set's rows have no prompts to fit the edit on: `TuneOptions.method_auto`)
        knobs += tuple(k for k in AUTO_METHOD_KNOBS if k not in knobs)
    method = params.get("method") or "sgm"
    if method != "sgm" and "method" in knobs:
        if params["knobs"] != default("knobs"):
            raise SGMError(
                f"--method {method} fixes the method but --knobs searches it; drop one of the two"
            )
        knobs = tuple(k for k in knobs if k != "method")
    if method != "sgm" and params["knobs"] == default("knobs"):
        # the default search of a fixed edit covers the edit's knobs
        knobs += tuple(k for k in ("edit_layers", "edit_strength", "edit_ridge") if k not in knobs)
    fixed = "--neurons" if params.get("neurons") else ""
    fixed = fixed or ("--hook-points" if params["hook_points"] else "")
    if not fixed or "hook_points" not in knobs:
        return knobs
    if params["knobs"] != default("knobs"):
        raise SGMError(
            f"{fixed} fixes the hook points but --knobs searches them; drop one of the two"
        )
    click.echo(f"note: {fixed} fixes the hook points, so the search leaves them out", err=True)
    return tuple(k for k in knobs if k != "hook_points")


def tune_request(
    profile_set: str, params: dict[str, Any], rule: Any, recipe_file: Path | None, workdir: Path
) -> Any:
    """The pipeline's tune request from the options above."""
    from sgm_bake.pipeline.decision import MethodOptions
    from sgm_bake.pipeline.tune import TuneOptions, TuneRequest
    from sgm_bake.runtime.chat import GenerationConfig

    try:
        fractions = split_fractions(params["split_spec"])
    except ValueError as exc:
        raise SGMError(
            f"--split {params['split_spec']!r} is not three fractions such as 0.5,0.25,0.25"
        ) from exc
    if len(fractions) != 3:
        raise SGMError(f"--split {params['split_spec']!r} needs three fractions")
    batch_size = params["batch_size"]
    if batch_size == "auto":
        batch_size = TUNE_BATCH_SIZE
    profile = make_capture(params, rule, hook_points=hook_points_of(params), batch_size=batch_size)
    if "method" in params:  # `tune` and the one-command form: --method and --edit-* fix those
        method = method_options(params, diagnose=False)
    else:
        method = MethodOptions(diagnose=False, anchors=edit_anchors(params))
    options = TuneOptions(
        workdir=workdir,
        trials=params["trials"],
        seed=params["tune_seed"],
        max_kl=params["max_kl"],
        degenerate_margin=params["degenerate_margin"],
        accuracy_margin=params["accuracy_margin"],
        max_refusal_rise=params["max_refusal_rise"],
        method=method,
        fractions=fractions,
        knobs=searched_knobs(params),
        method_auto=params.get("method") is None and params["knobs"] == default("knobs"),
        sampler=params["sampler"],
        profile=profile,
        generation=GenerationConfig(max_new_tokens=params["max_new_tokens"]),
        batch_size=batch_size,
        progress=progress_enabled(),
    )
    return TuneRequest(
        profile_set=profile_set,
        options=options,
        eval_set=params["eval_set"],
        judge=params["judge_spec"],
        judge_options=make_judge_options(params["judge_device"], params["judge_prompt"]),
        dtype=params["dtype"],
        recipe_file=recipe_file,
        template=params.get("template"),
        placement=placement_of(params),
        neurons=params["neurons"],
        max_samples=params["max_samples"],
        data_format=make_data_format(params),
    )


@click.command(cls=SectionedCommand, sections={"output": "input"})
@click.argument("model")
@option(
    "profile-set",
    required=True,
    default=None,
    show_default=False,
    help="Labelled image-text pairs with prompts (split into profiling, tuning and report parts).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the chosen setting's expertise file here (bake it with `sgm-bake bake`).",
)
@option(
    "overwrite",
    help="Replace -o if it exists (a search run again, resumed or complete, writes it anew).",
)
@revision_option
@recipe_option
@search_options
@method_knob_options
@input_options
@rule_options
@user_errors
def tune(
    model: str,
    profile_set: str,
    output: Path | None,
    overwrite: bool,
    revision: str | None,
    recipe_file: Path | None,
    **params: Any,
) -> None:
    """Search the knobs for MODEL: the least harm on held-out toxic prompts within a KL budget.

    Profiles once on a profiling split of --profile-set, runs --trials trials with SGM as hooks
    on a tuning split (harm: the judge's harmful rate of greedy replies to the toxic rows'
    prompts; damage: KL from the base on the non-toxic rows, degenerate replies), picks the
    lowest harm within --max-kl, and reports it on a held-out split used once. WORKDIR keeps
    the study (resumable), tune.json and pareto.png. Rule options give the values of knobs that
    are not searched. With the `method` knob (--knobs method,edit_layers,edit_strength,...) the
    tuner also chooses the method: SGM, the edit (fitted on the profiling split) or both; with
    --eval-set, benign refusal on its benign items is kept within --max-refusal-rise of the
    base's.

    Ctrl-C (or SIGTERM) stops the search at once with exit code 130, keeping every finished
    trial; the same command run again resumes it and says how many trials it found.
    """
    import os

    from sgm_bake.core.expertise import save_expertise
    from sgm_bake.pipeline.tune import summary_lines, tune_source
    from sgm_bake.runtime.loading import resolve_model_source

    workdir = params.pop("workdir") or Path("sgm-tune")
    if output is not None and output.exists() and not overwrite:
        raise SGMError(
            f"{output} exists; pass --overwrite to replace it (running the same command again "
            f"resumes the search in {workdir} and writes the expertise anew)"
        )
    rule_options_, _ = rule_from(params)
    params["model"] = model  # the edit's default anchors depend on it
    profile_set = choose_set(profile_set, "profile", model)
    request = tune_request(profile_set, params, rule_options_, recipe_file, workdir)
    source = resolve_model_source(model, revision, progress_enabled())
    outcome = tune_source(source, request)
    echo_lines(summary_lines(outcome.result))
    if output is not None and outcome.result.expertise is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(f".{output.name}.partial")
        save_expertise(outcome.result.expertise, partial)
        os.replace(partial, output)
        click.echo(f"wrote {output}")
    click.echo(f"search: {workdir / 'tune.json'}")


COMMANDS = [tune]
