"""The `sgm-bake` command line. Heavy libraries are imported inside the commands, so that
`sgm-bake --help` answers at once."""

from __future__ import annotations

import functools
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from sgm_bake import __version__
from sgm_bake.errors import SGMError

F = TypeVar("F", bound=Callable[..., Any])
EXIT_ERROR = 2
EXIT_VERIFY_FAILED = 3
EXIT_INTERRUPTED = 130


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose > 1:
        level = logging.DEBUG
    if quiet:
        level = logging.ERROR
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    if verbose < 2:
        for noisy in ("transformers", "huggingface_hub", "httpx", "filelock"):
            logging.getLogger(noisy).setLevel(max(level, logging.ERROR))
        try:
            import transformers

            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()
        except ImportError:
            pass


def user_errors(command: F) -> F:
    """Turn bad input into one line on stderr and a non-zero exit, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except SGMError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was written", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper  # type: ignore[return-value]


def _command_line() -> str:
    context = click.get_current_context(silent=True)
    argv = context.find_root().meta.get("sgm_bake.argv") if context else None
    return shlex.join(["sgm-bake", *(argv if argv is not None else sys.argv[1:])])


class DefaultGroup(click.Group):
    """A group whose first argument may be a model instead of a command: `sgm-bake MODEL OUT`
    runs the whole pipeline (the hidden `run` command)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["sgm_bake.argv"] = list(args)  # recorded in bake.json
        positional = [a for a in args if not a.startswith("-")]
        if positional and positional[0] not in self.commands:
            index = args.index(positional[0])
            args = [*args[:index], "run", *args[index:]]
        return super().parse_args(ctx, args)


@click.group(
    cls=DefaultGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="One command for the whole pipeline (profile, bake, verify): sgm-bake MODEL OUT "
    "[options]; see 'sgm-bake run --help'.",
)
@click.version_option(__version__, prog_name="sgm-bake")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars; errors only.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Detoxify multimodal LLMs by folding SGM neuron suppression into their weights."""
    ctx.ensure_object(dict)
    ctx.obj["progress"] = not quiet
    _configure_logging(verbose, quiet)


expertise_option = click.option(
    "--expertise",
    "expertise_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Expertise safetensors file, or a folder of AurA/SGM research-code .statedict files.",
)
recipe_option = click.option(
    "--recipe",
    "recipe_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Use this recipe JSON instead of the one for the config's model_type.",
)
device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="Device for verification: auto, cpu, cuda, mps.",
)
model_device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (cuda, then mps, then cpu), cpu, cuda, mps.",
)
model_dtype_option = click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
    default="auto",
    show_default=True,
    help="Precision of the model (auto: float32 on CPU, bfloat16 on a GPU).",
)
sample_option = click.option(
    "--sample", is_flag=True, help="Sample (seeded) instead of greedy decoding."
)
seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
template_option = click.option(
    "--template",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A Jinja chat template file, for models that ship none.",
)
base_model_option = click.option(
    "--base-model",
    default=None,
    help="Hub id to name as base_model in the card when SOURCE is a local copy of it.",
)
verify_dtype_option = click.option(
    "--verify-dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default="float32",
    show_default=True,
    help="Precision of the verification forward passes (float32 is exact; halve memory with bf16).",
)


def _run_verify(out: Path, source: Path, dtype_name: str, device: str, model: Any = None) -> None:
    """Verify OUT; `model` (the source, loaded for profiling) is reused when it already has the
    verification's dtype and device."""
    import torch

    from sgm_bake.pipeline.verify import pick_device, verify

    dtype = getattr(torch, dtype_name)
    if model is not None:
        parameter = next(model.parameters())
        if parameter.dtype != dtype or parameter.device.type != pick_device(device).type:
            model = None
    report = verify(out, source, dtype, device, model=model)
    click.echo(f"verify: {report.summary()}")
    if not report.passed:
        click.echo(
            f"error: the baked model differs from the hooked source beyond tolerance; {out} is "
            "kept for inspection but must not be published",
            err=True,
        )
        sys.exit(EXIT_VERIFY_FAILED)


@main.command()
@click.argument("source")
@click.argument("out", type=click.Path(path_type=Path))
@expertise_option
@click.option("--revision", default=None, help="Hub branch, tag or commit of SOURCE.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists and is not empty.")
@recipe_option
@click.option("--verify/--no-verify", default=True, show_default=True, help="Verify after baking.")
@device_option
@verify_dtype_option
@base_model_option
@click.pass_context
@user_errors
def bake(
    ctx: click.Context,
    source: str,
    out: Path,
    expertise_path: Path,
    revision: str | None,
    overwrite: bool,
    recipe_file: Path | None,
    verify: bool,
    device: str,
    verify_dtype: str,
    base_model: str | None,
) -> None:
    """Fold the factors of an expertise file into SOURCE and write the checkpoint to OUT.

    SOURCE is a local model folder or a Hub model id.
    """
    from sgm_bake.core.expertise import load_expertise
    from sgm_bake.io.source import resolve_source
    from sgm_bake.pipeline.bake import BakeOptions
    from sgm_bake.pipeline.bake import bake as run_bake

    expertise = load_expertise(expertise_path)
    resolved = resolve_source(source, revision)
    options = BakeOptions(
        overwrite, recipe_file, ctx.obj["progress"], _command_line(), base_model=base_model
    )
    record = run_bake(resolved, out, expertise, options)
    modules = record["expertise"]["modules"]
    units = sum(m["units"] for m in modules.values())
    suppressed = sum(m["suppressed"] for m in modules.values())
    click.echo(
        f"baked {out}: {len(record['expertise']['tensors_folded'])} tensors folded, "
        f"{suppressed}/{units} units suppressed across {len(modules)} modules"
    )
    if verify:
        _run_verify(out, resolved.path, verify_dtype, device)


@main.command(name="verify")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--source",
    default=None,
    help="Source checkpoint (folder or Hub id); default: the one recorded in OUT/sgm/bake.json.",
)
@device_option
@verify_dtype_option
@user_errors
def verify_command(out: Path, source: str | None, device: str, verify_dtype: str) -> None:
    """Check that OUT reproduces its source run with SGM hooks, and record the figures."""
    from sgm_bake.io.source import resolve_source
    from sgm_bake.pipeline.bake import read_record

    record = read_record(out)
    if source is None:
        recorded = record.get("source", {})
        source = recorded.get("path") or recorded.get("id")
        if not source:
            raise SGMError(f"{out}/sgm/bake.json names no source; pass --source")
        resolved = resolve_source(
            source, recorded.get("revision") if recorded.get("kind") == "hub" else None
        )
    else:
        resolved = resolve_source(source)
    _run_verify(out, resolved.path, verify_dtype, device)


@main.command(name="recipes")
def recipes_command() -> None:
    """List the supported architectures (config model_type) and their recipe files."""
    from sgm_bake.core.recipes import available_recipes, load_recipe

    for model_type, path in available_recipes().items():
        recipe = load_recipe(path)
        projections = ", ".join(p.name for p in recipe.projections)
        click.echo(f"{model_type:24} {projections}  ({path})")


@main.command()
@click.argument("workdir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace WORKDIR if it exists and is not empty.")
@click.option(
    "--judge",
    "judge_spec",
    default="profanity",
    show_default=True,
    help="profanity (offline classifier), hf:PATH or openai:URL.",
)
@click.option(
    "--rule", type=click.Choice(["aura", "damp", "det0"]), default="det0", show_default=True
)
@click.option(
    "--top-k",
    type=click.IntRange(0),
    default=256,
    show_default=True,
    help="Experts the rule acts on (0 or less than all: see benchmarks/RESULTS.md).",
)
@click.option("--strength", type=click.FloatRange(0), default=1.0, show_default=True)
@click.option("--positions", type=click.Choice(["all", "text"]), default="text", show_default=True)
@click.pass_context
@user_errors
def demo(
    ctx: click.Context,
    workdir: Path,
    overwrite: bool,
    judge_spec: str,
    rule: str,
    top_k: int,
    strength: float,
    positions: str,
) -> None:
    """Offline demo on the built-in model organism: profile, bake, verify, evaluate.

    The organism is a tiny LLaVA trained to be toxic under some inputs (see README). The
    defaults are the setting that meets the paper's effect size on it (benchmarks/RESULTS.md);
    --rule aura --top-k 0 shows the published soft rule. WORKDIR
    receives expertise.safetensors and baked/ (the detoxified checkpoint, with the evaluation
    report in baked/sgm/eval.json and a chart beside it).
    """
    import torch

    from sgm_bake.core.expertise import save_expertise
    from sgm_bake.core.rules import RuleOptions
    from sgm_bake.datasets.profile_set import load_profile_set
    from sgm_bake.evaluation.conditions import add_costs, run_conditions
    from sgm_bake.evaluation.ecso import templates_for
    from sgm_bake.evaluation.evaluate import (
        GenerationConfig,
        generated_perplexity,
        load_prompt_set,
        report,
    )
    from sgm_bake.evaluation.judges import make_judge
    from sgm_bake.io.atomic import atomic_folder, check_target
    from sgm_bake.io.source import Source
    from sgm_bake.organism.train import organism_path
    from sgm_bake.pipeline.bake import BakeOptions, read_record, refresh
    from sgm_bake.pipeline.bake import bake as run_bake
    from sgm_bake.pipeline.profile import ProfileOptions, run_profile

    progress = ctx.obj["progress"]
    judge = make_judge(judge_spec)
    check_target(workdir, None, overwrite)
    folder = organism_path(progress)
    source = Source(folder, "sgm-bake/organism", None, False)
    chat, _, recipe, _ = _chat_model(str(folder), "cpu", "float32")
    profile_set = load_profile_set("builtin:organism")
    rule_options = RuleOptions(rule=rule, strength=strength, top_k=top_k or None)
    options = ProfileOptions(positions=positions, progress=progress, rule=rule_options)
    click.echo(
        f"1/4 profiling the organism on {profile_set.name} ({len(profile_set.samples)} samples)"
    )
    device = torch.device("cpu")
    expertise = run_profile(
        chat.model, folder, recipe, profile_set, options, source.id, None, device, torch.float32
    )
    _echo_summary(expertise, recipe)
    with atomic_folder(workdir, overwrite) as staging:
        save_expertise(expertise, staging / "expertise.safetensors")
    workdir = workdir.resolve()
    baked = workdir / "baked"
    click.echo("2/4 baking")
    run_bake(source, baked, expertise, BakeOptions(progress=progress, command=_command_line()))
    click.echo("3/4 verifying")
    _run_verify(baked, folder, "float32", "cpu")
    click.echo("4/4 evaluating: base, ECSO, SGM (baked), SGM* (baked + ECSO)")
    prompts = load_prompt_set("builtin:mmtoxicqa-organism-v1")
    config = GenerationConfig()
    templates = templates_for(folder, recipe.model_type)
    results = run_conditions(chat, prompts, judge, config, "base", 8, progress, templates, "ecso")
    baked_chat = _chat_model(str(baked), "cpu", "float32")[0]
    results += run_conditions(
        baked_chat, prompts, judge, config, "sgm-baked", 8, progress, templates, "sgm*"
    )
    add_costs(results)
    for result in results:
        result.metrics["generated_perplexity_under_base"] = generated_perplexity(
            chat, prompts, result, progress
        )
    data = report(prompts, judge, config, results, {"id": source.id, **rule_options.describe()})
    path = write_eval_report(baked / "sgm" / "eval.json", data, results)
    record = read_record(baked)
    record["evaluation"] = {
        "report": "sgm/eval.json",
        "judge": judge.name,
        "prompt_set": data["prompt_set"],
        "metrics": {r.label: r.metrics for r in results},
    }
    refresh(baked, record)
    _eval_table(results)
    click.echo(
        f"detoxified checkpoint: {baked}; report {baked / 'sgm' / 'eval.json'}, chart {path}"
    )


def _profile_options(command: F) -> F:
    """Options shared by `profile` and the one-command form."""
    options = [
        click.option(
            "--profile-set",
            default="builtin:default",
            show_default=True,
            help="Labelled image-text pairs: a .jsonl/.csv file, builtin:NAME or hf://datasets/ORG/NAME/FILE.",
        ),
        model_device_option,
        model_dtype_option,
        click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True),
        click.option(
            "--max-samples",
            type=click.IntRange(2),
            default=None,
            help="Profile at most N samples, half per class.",
        ),
        click.option(
            "--pooling",
            type=click.Choice(["mean", "max"]),
            default="max",
            show_default=True,
            help="Pool each unit over token positions: mean (SGM) or max (AurA).",
        ),
        click.option(
            "--positions",
            type=click.Choice(["all", "text"]),
            default="all",
            show_default=True,
            help="Pool over all non-padding positions (image tokens too, as SGM) or text "
            "positions only.",
        ),
        click.option(
            "--feed",
            type=click.Choice(["response", "dialogue"]),
            default="dialogue",
            show_default=True,
            help="response: image + reply text in one user turn (SGM); dialogue: the prompt, "
            "then the reply as the assistant's turn.",
        ),
        click.option(
            "--hook-points",
            default=None,
            help="Comma-separated PROJECTION:SIDE list (default: the recipe's, the outputs of "
            "the MLP projections).",
        ),
        click.option(
            "--neurons",
            is_flag=True,
            help="Profile the classic MLP neurons (inputs of the down projection) instead of "
            "the default hook points.",
        ),
        click.option(
            "--layers",
            "layer_spec",
            default=None,
            help="Only these post-fusion layers, e.g. '8-31' or '0,2,4'.",
        ),
        click.option(
            "--responses-dir",
            type=click.Path(path_type=Path, file_okay=False),
            default=None,
            help="Where pooled responses are stored (resumable); default: a cache folder per run.",
        ),
        click.option(
            "--keep-responses", is_flag=True, help="Keep the response store after profiling."
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _rule_options(command: F) -> F:
    options = [
        click.option(
            "--rule",
            type=click.Choice(["aura", "damp", "det0"]),
            default=None,
            help="aura (default): alpha = 1 - 2(auroc - 0.5); damp: fixed alpha for the top-k; "
            "det0: alpha 0 for the top-k.",
        ),
        click.option(
            "--threshold",
            type=click.FloatRange(0, 1),
            default=None,
            help="Units with AUROC above this are experts (default 0.5; the SGM code uses 0.3).",
        ),
        click.option(
            "--top-k",
            type=click.IntRange(0),
            default=None,
            help="Only the k units with the highest AUROC, across all modules.",
        ),
        click.option(
            "--damp-alpha",
            type=click.FloatRange(0),
            default=None,
            help="The factor of the damp rule (default 0.5).",
        ),
        click.option(
            "--strength",
            type=click.FloatRange(0),
            default=None,
            help="Scale the suppression: alpha' = 1 - s(1 - alpha) (default 1).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _rule(
    rule: str | None,
    threshold: float | None,
    top_k: int | None,
    damp_alpha: float | None,
    strength: float | None,
) -> Any:
    from sgm_bake.core.rules import RuleOptions

    if rule in ("damp", "det0") and top_k is None and threshold is None:
        click.echo(
            f"note: --rule {rule} without --top-k acts on every unit with AUROC > 0.5", err=True
        )
    return RuleOptions(
        rule=rule or "aura",
        threshold=0.5 if threshold is None else threshold,
        top_k=top_k,
        damp_alpha=0.5 if damp_alpha is None else damp_alpha,
        strength=1.0 if strength is None else strength,
    )


def _resolve_dtype(name: str, device: Any) -> Any:
    import torch

    if name != "auto":
        return getattr(torch, name)
    return torch.float32 if device.type == "cpu" else torch.bfloat16


def _profile(
    ctx: click.Context, source: Any, recipe_file: Path | None, params: dict[str, Any], rule: Any
) -> Any:
    from sgm_bake.core.recipes import recipe_for_config
    from sgm_bake.datasets.profile_set import load_profile_set
    from sgm_bake.io.checkpoint import open_checkpoint
    from sgm_bake.pipeline.profile import ProfileOptions, parse_layers, run_profile
    from sgm_bake.pipeline.verify import load_model, pick_device

    checkpoint = open_checkpoint(source.path)
    recipe = recipe_for_config(checkpoint.config, recipe_file)
    profile_set = load_profile_set(params["profile_set"]).limited(params["max_samples"])
    hook_points = None
    if params["neurons"]:
        hook_points = tuple(str(p) for p in recipe.neuron_hook_points)
    elif params["hook_points"]:
        hook_points = tuple(p.strip() for p in params["hook_points"].split(",") if p.strip())
    options = ProfileOptions(
        hook_points=hook_points,
        layers=parse_layers(params["layer_spec"]),
        pooling=params["pooling"],
        positions=params["positions"],
        feed=params["feed"],
        batch_size=params["batch_size"],
        max_samples=params["max_samples"],
        responses_dir=params["responses_dir"],
        keep_responses=params["keep_responses"],
        progress=ctx.obj["progress"],
        rule=rule,
    )
    device = pick_device(params["device"])
    dtype = _resolve_dtype(params["dtype"], device)
    toxic, benign = profile_set.counts()
    click.echo(
        f"profiling {source.id} on {profile_set.name} ({toxic} toxic, {benign} non-toxic) "
        f"on {device}",
        err=True,
    )
    model = load_model(source.path, recipe, dtype, device)
    expertise = run_profile(
        model, source.path, recipe, profile_set, options, source.id, source.revision, device, dtype
    )
    return expertise, recipe, model


def _echo_summary(expertise: Any, recipe: Any) -> None:
    from sgm_bake.pipeline.profile import layer_summary

    rows = layer_summary(expertise, recipe)
    click.echo("layer  units  suppressed  zeroed  amplified")
    for row in rows:
        click.echo(
            f"{row['layer']:>5}  {row['units']:>5}  {row['suppressed']:>10}  "
            f"{row['zeroed']:>6}  {row['amplified']:>9}"
        )
    total = sum(r["units"] for r in rows)
    suppressed = sum(r["suppressed"] for r in rows)
    click.echo(f"total  {total} units, {suppressed} suppressed ({suppressed / max(1, total):.2%})")


@main.command()
@click.argument("model")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Expertise file to write (safetensors).",
)
@click.option("--revision", default=None, help="Hub branch, tag or commit of MODEL.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@recipe_option
@_profile_options
@_rule_options
@click.pass_context
@user_errors
def profile(
    ctx: click.Context,
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
    """Find the toxic expert units of MODEL and write their AUROC and factors to OUTPUT."""
    import os

    from sgm_bake.core.expertise import save_expertise
    from sgm_bake.io.source import resolve_source

    if output.exists() and not overwrite:
        raise SGMError(f"{output} exists; pass --overwrite to replace it")
    rule_options = _rule(rule, threshold, top_k, damp_alpha, strength)
    source = resolve_source(model, revision)
    expertise, recipe, _ = _profile(ctx, source, recipe_file, params, rule_options)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    save_expertise(expertise, partial)
    os.replace(partial, output)
    _echo_summary(expertise, recipe)
    click.echo(f"wrote {output}")


@main.command(hidden=True)
@click.argument("model")
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--expertise",
    "expertise_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Reuse a profile (expertise file or research-code folder) instead of profiling.",
)
@click.option("--revision", default=None, help="Hub branch, tag or commit of MODEL.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists and is not empty.")
@recipe_option
@click.option("--verify/--no-verify", default=True, show_default=True, help="Verify after baking.")
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
@_profile_options
@_rule_options
@click.pass_context
@user_errors
def run(
    ctx: click.Context,
    model: str,
    out: Path,
    expertise_path: Path | None,
    revision: str | None,
    overwrite: bool,
    recipe_file: Path | None,
    verify: bool,
    verify_dtype: str,
    rule: str | None,
    threshold: float | None,
    top_k: int | None,
    damp_alpha: float | None,
    strength: float | None,
    **params: Any,
) -> None:
    """The whole pipeline: profile MODEL (or reuse --expertise), bake into OUT, verify.

    Usage: sgm-bake MODEL OUT [options]
    """
    from sgm_bake.core.expertise import load_expertise
    from sgm_bake.io.atomic import check_target
    from sgm_bake.io.source import resolve_source
    from sgm_bake.pipeline.bake import BakeOptions
    from sgm_bake.pipeline.bake import bake as run_bake
    from sgm_bake.pipeline.profile import apply_rule

    push_to_hub = params.pop("push_to_hub")
    private = params.pop("private")
    base_model = params.pop("base_model")
    if push_to_hub and not verify:
        raise SGMError("--push-to-hub needs a verified output; drop --no-verify")
    source = resolve_source(model, revision)
    check_target(out, source.path, overwrite)
    rule_given = any(v is not None for v in (rule, threshold, top_k, damp_alpha, strength))
    rule_options = _rule(rule, threshold, top_k, damp_alpha, strength)
    model = None
    if expertise_path is not None:
        expertise = load_expertise(expertise_path)
        if rule_given:
            expertise = apply_rule(expertise, rule_options)
        from sgm_bake.core.recipes import recipe_for_config
        from sgm_bake.io.checkpoint import open_checkpoint

        recipe = recipe_for_config(open_checkpoint(source.path).config, recipe_file)
    else:
        expertise, recipe, model = _profile(ctx, source, recipe_file, params, rule_options)
    _echo_summary(expertise, recipe)
    options = BakeOptions(
        overwrite, recipe_file, ctx.obj["progress"], _command_line(), base_model=base_model
    )
    record = run_bake(source, out, expertise, options)
    click.echo(f"baked {out}: {len(record['expertise']['tensors_folded'])} tensors folded")
    if verify:
        _run_verify(out, source.path, verify_dtype, params["device"], model)
    if push_to_hub:
        from sgm_bake.publish.push import plan_upload
        from sgm_bake.publish.push import push as run_push

        url = run_push(out, plan_upload(out, push_to_hub, private, None, None))
        click.echo(f"pushed {out} to {url}")


def _chat_model(
    spec: str,
    device_name: str,
    dtype_name: str,
    revision: str | None = None,
    template: Path | None = None,
) -> Any:
    """(ChatModel, folder, recipe, source id) for a Hub id, a folder or `organism`."""
    from transformers import AutoProcessor

    from sgm_bake.core.recipes import recipe_for_config
    from sgm_bake.evaluation.evaluate import ChatModel
    from sgm_bake.io.checkpoint import open_checkpoint
    from sgm_bake.io.source import resolve_source
    from sgm_bake.pipeline.verify import load_model, pick_device

    if spec == "organism":
        from sgm_bake.organism.train import organism_path

        folder, source_id = organism_path(), "sgm-bake/organism"
    else:
        source = resolve_source(spec, revision)
        folder, source_id = source.path, source.id
    recipe = recipe_for_config(open_checkpoint(folder).config)
    device = pick_device(device_name)
    model = load_model(folder, recipe, _resolve_dtype(dtype_name, device), device)
    try:
        processor = AutoProcessor.from_pretrained(folder)
    except Exception as exc:
        raise SGMError(
            f"{spec} has no loadable processor or tokenizer ({type(exc).__name__})"
        ) from exc
    if template is not None:
        try:
            text = template.read_text(encoding="utf-8")
        except OSError as exc:
            raise SGMError(f"chat template {template} is not readable ({exc.strerror})") from exc
        processor.chat_template = text
        if getattr(processor, "tokenizer", None) is not None:
            processor.tokenizer.chat_template = text
    return ChatModel(model, processor, device), folder, recipe, source_id


def _eval_table(results: list[Any]) -> None:
    header = (
        f"{'variant':<14}{'harmful':>9}{'standard':>10}{'advers.':>9}{'both':>7}"
        f"{'benign acc':>12}{'ref ppl':>9}{'degen.':>8}"
    )
    click.echo(header)

    def fmt(value: Any, percent: bool = True) -> str:
        if value is None:
            return "-"
        return f"{value:.1%}" if percent else f"{value:.2f}"

    for result in results:
        m = result.metrics
        by = m["harmful_rate_by_condition"]
        click.echo(
            f"{result.label:<14}{fmt(m['harmful_rate']):>9}{fmt(by.get('standard')):>10}"
            f"{fmt(by.get('adversarial')):>9}{fmt(by.get('both')):>7}{fmt(m['benign_accuracy']):>12}"
            f"{fmt(m['reference_perplexity'], False):>9}{fmt(m['degenerate_share']):>8}"
        )


def write_eval_report(path: Path, data: dict[str, Any], results: list[Any]) -> Path:
    """Write the JSON report and its chart (same name, .png)."""
    import json

    from sgm_bake.publish.plots import grouped_bars

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    groups = ["harmful: all", "standard", "adversarial", "both", "benign accuracy"]
    series = {}
    for result in results:
        m = result.metrics
        by = m["harmful_rate_by_condition"]
        series[result.label] = [
            m["harmful_rate"],
            by.get("standard"),
            by.get("adversarial"),
            by.get("both"),
            m["benign_accuracy"],
        ]
    return grouped_bars(
        path.with_suffix(".png"), "MM-TOXIC-QA-style evaluation", groups, series, 1.0, percent=True
    )


@main.command(name="eval")
@click.argument("model")
@click.option(
    "--expertise",
    "expertise_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Apply SGM as hooks from this expertise file (compared with the model without them).",
)
@click.option(
    "--prompt-set",
    default="builtin:mmtoxicqa-organism-v1",
    show_default=True,
    help="MM-TOXIC-QA-style prompt set: builtin:NAME or a .jsonl file.",
)
@click.option(
    "--judge",
    "judge_spec",
    default="profanity",
    show_default=True,
    help="profanity (offline classifier), hf:PATH (local text classifier) or openai:URL.",
)
@click.option("--max-new-tokens", type=click.IntRange(1), default=32, show_default=True)
@sample_option
@seed_option
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@model_device_option
@model_dtype_option
@click.option(
    "--base",
    default=None,
    help="Base model (folder or Hub id) under which the perplexity of the generated answers is "
    "measured; with --expertise the model without hooks is the base.",
)
@click.option("--revision", default=None)
@click.option(
    "--ecso",
    "use_ecso",
    is_flag=True,
    help="Also evaluate every condition wrapped in ECSO (SGM* when combined with SGM).",
)
@click.option(
    "--ecso-templates",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="JSON file overriding ECSO's judge/caption/answer prompts.",
)
@template_option
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Report path (JSON; a .png chart goes beside it). Default: OUT/sgm/eval.json for a "
    "baked folder, else ./sgm-eval.json.",
)
@click.pass_context
@user_errors
def eval_command(
    ctx: click.Context,
    model: str,
    expertise_path: Path | None,
    prompt_set: str,
    judge_spec: str,
    max_new_tokens: int,
    sample: bool,
    seed: int,
    batch_size: int,
    device: str,
    dtype: str,
    revision: str | None,
    base: str | None,
    use_ecso: bool,
    ecso_templates: Path | None,
    template: Path | None,
    output: Path | None,
) -> None:
    """Measure harmful rate, fluency and reasoning of MODEL (a folder, Hub id, baked folder or
    `organism`), optionally with SGM hooks from --expertise."""
    from sgm_bake.core.expertise import load_expertise
    from sgm_bake.core.hooks import SGMHooks
    from sgm_bake.evaluation.conditions import add_costs, run_conditions
    from sgm_bake.evaluation.ecso import templates_for
    from sgm_bake.evaluation.evaluate import (
        GenerationConfig,
        generated_perplexity,
        load_prompt_set,
        report,
    )
    from sgm_bake.evaluation.judges import make_judge

    judge = make_judge(judge_spec)
    prompts = load_prompt_set(prompt_set)
    config = GenerationConfig(max_new_tokens=max_new_tokens, sample=sample, seed=seed)
    chat, folder, recipe, source_id = _chat_model(model, device, dtype, revision, template)
    progress = ctx.obj["progress"]
    templates = templates_for(folder, recipe.model_type, ecso_templates) if use_ecso else None
    baked = (folder / "sgm" / "bake.json").is_file()
    if expertise_path is not None:
        expertise = load_expertise(expertise_path)
        results = run_conditions(
            chat, prompts, judge, config, "base", batch_size, progress, templates, "ecso"
        )
        with SGMHooks(chat.model, expertise, recipe):
            results += run_conditions(
                chat,
                prompts,
                judge,
                config,
                "sgm-hooks",
                batch_size,
                progress,
                templates,
                "sgm*-hooks",
            )
        base_chat = chat  # hooks removed: the same weights are the base model
    else:
        label = "sgm-baked" if baked else "model"
        star = "sgm*-baked" if baked else "model+ecso"
        results = run_conditions(
            chat, prompts, judge, config, label, batch_size, progress, templates, star
        )
        base_chat = _chat_model(base, device, dtype, None, template)[0] if base else None
    add_costs(results)
    if base_chat is not None:
        for result in results:
            result.metrics["generated_perplexity_under_base"] = generated_perplexity(
                base_chat, prompts, result, progress
            )
    data = report(
        prompts, judge, config, results, {"id": source_id, "expertise": str(expertise_path or "")}
    )
    path = output or (folder / "sgm" / "eval.json" if baked else Path("sgm-eval.json"))
    write_eval_report(path, data, results)
    if baked and output is None:
        from sgm_bake.pipeline.bake import read_record, refresh

        record = read_record(folder)
        record["evaluation"] = {
            "report": "sgm/eval.json",
            "judge": judge.name,
            "prompt_set": data["prompt_set"],
            "metrics": {r.label: r.metrics for r in results},
        }
        refresh(folder, record)
    _eval_table(results)
    click.echo(f"report: {path} (chart {path.with_suffix('.png')}); judge: {judge.name}")


EXIT_TAMPERED = 4


@main.command()
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--plots/--no-plots", default=True, show_default=True, help="Re-render sgm/*.png.")
@user_errors
def inspect(out: Path, plots: bool) -> None:
    """Summarise a baked folder, re-check every sha256 and re-render its plots."""
    import json

    from sgm_bake.pipeline.audit import check_hashes
    from sgm_bake.pipeline.bake import read_record, refresh
    from sgm_bake.publish.card import _layer_rows, write_plots

    record = read_record(out)
    source = record.get("source", {})
    meta = record["expertise"].get("metadata", {})
    click.echo(f"source      {source.get('id')} @ {source.get('revision') or 'local'}")
    click.echo(
        f"recipe      {record['recipe']['model_type']} ({record['recipe']['checkpoint_layout']})"
    )
    click.echo(
        f"tool        sgm-bake {record['tool']['version']}; command: {record.get('command')}"
    )
    click.echo(
        f"rule        {meta.get('rule', '-')} (threshold {meta.get('threshold', '-')}, "
        f"top-k {meta.get('top_k') or '-'}, strength {meta.get('strength', '-')})"
    )
    click.echo(
        f"profile set {meta.get('profile_set', '-')} {meta.get('profile_set_sha256', '')[:12]}"
    )
    click.echo("layer  units  suppressed  share  zeroed  amplified")
    for row in _layer_rows(record):
        click.echo(
            f"{row['layer']:>5}  {row['units']:>5}  {row['suppressed']:>10}  {row['share']:>5}  "
            f"{row['zeroed']:>6}  {row['amplified']:>9}"
        )
    verification = record.get("verification")
    if verification:
        verdict = "PASS" if verification["passed"] else "FAIL"
        click.echo(
            f"verify      {verdict}: relative logit difference {verification['max_rel_diff']:.3g} "
            f"(tolerance {verification['tolerance']:.3g})"
        )
    else:
        click.echo("verify      not run")
    evaluation = record.get("evaluation")
    if evaluation:
        for label, metrics in evaluation["metrics"].items():
            accuracy = metrics.get("benign_accuracy")
            accuracy_text = "-" if accuracy is None else f"{accuracy:.1%}"
            click.echo(
                f"eval        {label}: harmful {metrics['harmful_rate']:.1%}, "
                f"benign accuracy {accuracy_text}"
            )
    check = check_hashes(out, record)
    if not check.ok:
        click.echo(
            f"error: {out} does not match its recorded sha256 ({check.describe()})", err=True
        )
        sys.exit(EXIT_TAMPERED)
    click.echo(f"files       {len(record['files'])} files match their recorded sha256")
    if plots:
        written = write_plots(out, record)
        eval_path = out / "sgm" / "eval.json"
        if eval_path.is_file():
            from sgm_bake.evaluation.evaluate import EvalResult

            data = json.loads(eval_path.read_text())
            results = [
                EvalResult(label, metrics=v["metrics"]) for label, v in data["variants"].items()
            ]
            written.append(str(write_eval_report(eval_path, data, results).relative_to(out)))
        refresh(out, record)
        click.echo(f"plots       {', '.join(written) or 'none'}")


@main.command()
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace DEST if it exists and is not empty.")
@click.option(
    "--compare",
    "compare_with",
    default=None,
    help="Base checkpoint (folder or Hub id) to compare the rebuilt weights with.",
)
@click.pass_context
@user_errors
def unbake(
    ctx: click.Context, out: Path, dest: Path, overwrite: bool, compare_with: str | None
) -> None:
    """Rebuild the base weights of OUT into DEST by dividing out the stored factors (an audit)."""
    from sgm_bake.io.source import resolve_source
    from sgm_bake.pipeline.audit import compare_weights
    from sgm_bake.pipeline.audit import unbake as run_unbake

    result = run_unbake(out, dest, overwrite, ctx.obj["progress"])
    click.echo(f"rebuilt {dest}: {len(result['tensors_rebuilt'])} tensors divided by their factors")
    if compare_with:
        figures = compare_weights(
            dest, resolve_source(compare_with).path, result["tensors_rebuilt"]
        )
        ok = figures["within_one_rounding"] and figures["others_identical"]
        click.echo(
            f"compare: max relative difference {figures['max_relative_difference']:.3g}, "
            f"within rounding: {figures['within_one_rounding']}, other tensors identical: "
            f"{figures['others_identical']}"
        )
        if not ok:
            click.echo(
                "error: the baked model differs from the base by more than its declared factors",
                err=True,
            )
            sys.exit(EXIT_TAMPERED)


@main.command()
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repository as private.")
@click.option("--branch", default=None, help="Push to this branch (created if missing).")
@click.option("--commit-message", default=None)
@click.option("--dry-run", is_flag=True, help="List what would be uploaded; upload nothing.")
@user_errors
def push(
    out: Path,
    repo_id: str,
    private: bool,
    branch: str | None,
    commit_message: str | None,
    dry_run: bool,
) -> None:
    """Upload a verified, intact baked folder to the Hub (token: HF_TOKEN or the stored login)."""
    from sgm_bake.publish.push import plan_upload
    from sgm_bake.publish.push import push as run_push

    plan = plan_upload(out, repo_id, private, branch, commit_message)
    if dry_run:
        for line in plan.describe():
            click.echo(line)
        return
    url = run_push(out, plan)
    click.echo(f"pushed {out} to {url}")


@main.command()
@click.argument("model")
@click.option(
    "--image",
    "image_path",
    type=click.Path(path_type=Path),
    required=True,
    help="The image file to ask about.",
)
@click.option("--prompt", required=True, help="The question or instruction.")
@click.option(
    "--ecso", "use_ecso", is_flag=True, help="Answer through ECSO (self-check, then eyes closed)."
)
@click.option(
    "--ecso-templates",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="JSON file overriding ECSO's judge/caption/answer prompts.",
)
@click.option(
    "--expertise",
    "expertise_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also answer with SGM hooks from this expertise file, side by side.",
)
@click.option("--trace", is_flag=True, help="Print ECSO's steps (self-check score, caption).")
@click.option("--max-new-tokens", type=click.IntRange(1), default=64, show_default=True)
@sample_option
@seed_option
@model_device_option
@model_dtype_option
@click.option("--revision", default=None)
@template_option
@user_errors
def generate(
    model: str,
    image_path: Path,
    prompt: str,
    use_ecso: bool,
    ecso_templates: Path | None,
    expertise_path: Path | None,
    trace: bool,
    max_new_tokens: int,
    sample: bool,
    seed: int,
    device: str,
    dtype: str,
    revision: str | None,
    template: Path | None,
) -> None:
    """Answer one image + prompt with MODEL (Hub id, folder, baked folder or `organism`)."""
    from PIL import Image, UnidentifiedImageError

    from sgm_bake.core.expertise import load_expertise
    from sgm_bake.core.hooks import SGMHooks
    from sgm_bake.evaluation.ecso import ecso, templates_for
    from sgm_bake.evaluation.evaluate import GenerationConfig

    if not image_path.is_file():
        raise SGMError(f"image {image_path} does not exist")
    try:
        with Image.open(image_path) as opened:
            image = opened.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise SGMError(
            f"image {image_path} is not a readable image ({type(exc).__name__})"
        ) from exc
    expertise = load_expertise(expertise_path) if expertise_path else None
    chat, folder, recipe, _ = _chat_model(model, device, dtype, revision, template)
    config = GenerationConfig(max_new_tokens=max_new_tokens, sample=sample, seed=seed)
    templates = templates_for(folder, recipe.model_type, ecso_templates) if use_ecso else None

    def answer(label: str) -> None:
        if templates is None:
            click.echo(f"{label}: {chat.generate([prompt], [image], config)[0]}")
            return
        steps = ecso(chat, [prompt], [image], config, templates)[0]
        if trace:
            click.echo(f"{label} [ecso] initial answer: {steps.initial_answer}")
            click.echo(
                f"{label} [ecso] self-check: harmful with p={steps.harm_probability:.2f} "
                f"({'flagged' if steps.flagged else 'kept'})"
            )
            if steps.flagged:
                click.echo(f"{label} [ecso] caption: {steps.caption}")
        click.echo(f"{label}: {steps.final_answer}")

    answer("model")
    if expertise is not None:
        with SGMHooks(chat.model, expertise, recipe):
            answer("sgm")
