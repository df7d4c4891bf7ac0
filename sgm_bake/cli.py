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
    return shlex.join(["sgm-bake", *sys.argv[1:]])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
verify_dtype_option = click.option(
    "--verify-dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default="float32",
    show_default=True,
    help="Precision of the verification forward passes (float32 is exact; halve memory with bf16).",
)


def _run_verify(out: Path, source: Path, dtype_name: str, device: str) -> None:
    import torch

    from sgm_bake.verify import verify

    report = verify(out, source, getattr(torch, dtype_name), device)
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
) -> None:
    """Fold the factors of an expertise file into SOURCE and write the checkpoint to OUT.

    SOURCE is a local model folder or a Hub model id.
    """
    from sgm_bake.bake import BakeOptions
    from sgm_bake.bake import bake as run_bake
    from sgm_bake.expertise import load_expertise
    from sgm_bake.source import resolve_source

    expertise = load_expertise(expertise_path)
    resolved = resolve_source(source, revision)
    options = BakeOptions(overwrite, recipe_file, ctx.obj["progress"], _command_line())
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
    from sgm_bake.bake import read_record
    from sgm_bake.source import resolve_source

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
    from sgm_bake.recipes import available_recipes, load_recipe

    for model_type, path in available_recipes().items():
        recipe = load_recipe(path)
        projections = ", ".join(p.name for p in recipe.projections)
        click.echo(f"{model_type:24} {projections}  ({path})")


@main.command()
@click.argument("workdir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace WORKDIR if it exists and is not empty.")
@click.pass_context
@user_errors
def demo(ctx: click.Context, workdir: Path, overwrite: bool) -> None:
    """Offline demo: build a tiny LLaVA, bake random factors into it and verify the result.

    Writes WORKDIR/source (the tiny model), WORKDIR/expertise.safetensors and WORKDIR/baked.
    The factors are random: this shows the mechanics of the bake, not a detox effect.
    """
    from transformers import AutoModelForImageTextToText

    from sgm_bake.bake import BakeOptions
    from sgm_bake.bake import bake as run_bake
    from sgm_bake.expertise import load_expertise, save_expertise
    from sgm_bake.outdir import atomic_folder, check_target
    from sgm_bake.source import resolve_source
    from sgm_bake.tiny import synthetic_expertise, tiny_llava

    check_target(workdir, None, overwrite)
    with atomic_folder(workdir, overwrite) as staging:
        source = tiny_llava(staging / "source", hidden=64, intermediate=128, layers=4)
        model = AutoModelForImageTextToText.from_pretrained(source)
        save_expertise(synthetic_expertise(model, seed=0), staging / "expertise.safetensors")
    workdir = workdir.resolve()
    click.echo(f"built a tiny LLaVA in {workdir / 'source'} with random factors")

    options = BakeOptions(progress=ctx.obj["progress"], command=_command_line())
    record = run_bake(
        resolve_source(str(workdir / "source")),
        workdir / "baked",
        load_expertise(workdir / "expertise.safetensors"),
        options,
    )
    click.echo(
        f"baked {workdir / 'baked'}: {len(record['expertise']['tensors_folded'])} tensors folded"
    )
    _run_verify(workdir / "baked", workdir / "source", "float32", "cpu")
