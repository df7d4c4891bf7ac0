"""`bake` and `verify`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from sgm_bake.cli.common import (
    EXIT_VERIFY_FAILED,
    add_options,
    bake_options,
    base_model_option,
    device_option,
    expert_layout_option,
    expertise_option,
    make_placement,
    overwrite_option,
    placement_options,
    progress_enabled,
    recipe_option,
    revision_option,
    user_errors,
    verify_dtype_option,
    verify_mode_of,
    verify_option,
)
from sgm_bake.errors import SGMError


def report_verification(out: Path, report: Any) -> None:
    """Print a verification result; a failure exits with EXIT_VERIFY_FAILED."""
    click.echo(f"verify: {report.summary()}")
    fail_unverified(out, report)


def fail_unverified(out: Path, report: Any) -> None:
    """A verification beyond tolerance: one error line, exit code EXIT_VERIFY_FAILED."""
    if not report.passed:
        click.echo(
            f"error: the baked model differs from the hooked source beyond tolerance; {out} is "
            "kept for inspection but must not be published",
            err=True,
        )
        sys.exit(EXIT_VERIFY_FAILED)


@click.command()
@click.argument("source")
@click.argument("out", type=click.Path(path_type=Path))
@add_options(
    [
        expertise_option,
        revision_option,
        overwrite_option,
        recipe_option,
        verify_option,
        device_option,
        verify_dtype_option,
        placement_options,
        base_model_option,
        expert_layout_option,
    ]
)
@user_errors
def bake(
    source: str,
    out: Path,
    expertise_path: Path,
    revision: str | None,
    overwrite: bool,
    recipe_file: Path | None,
    verify_mode: str,
    no_verify: bool,
    device: str,
    verify_dtype: str,
    device_map: str | None,
    max_memory: str | None,
    offload_folder: Path | None,
    base_model: str | None,
    expert_layout: str | None,
) -> None:
    """Fold the factors of an expertise file into SOURCE and write the checkpoint to OUT.

    SOURCE is a local model folder or a Hub model id.
    """
    from sgm_bake.core.expertise import load_expertise
    from sgm_bake.pipeline.bake import bake as run_bake
    from sgm_bake.pipeline.run import verify_output, warm_up_layer_check
    from sgm_bake.runtime.loading import resolve_model_source

    mode = verify_mode_of(verify_mode, no_verify)
    placement = make_placement(device, device_map, max_memory, offload_folder)
    expertise = load_expertise(expertise_path)
    resolved = resolve_model_source(source, revision, progress_enabled())
    options = bake_options(overwrite, recipe_file, base_model, expert_layout)
    if mode == "layers":
        warm_up_layer_check(resolved.path, recipe_file)
    record = run_bake(resolved, out, expertise, options)
    click.echo(
        f"baked {out}: {len(record.expertise.tensors_folded)} tensors folded, "
        f"{record.expertise.suppressed}/{record.expertise.units} units suppressed across "
        f"{len(record.expertise.modules)} modules"
    )
    if mode is not None:
        report_verification(
            out,
            verify_output(
                out,
                resolved.path,
                verify_dtype,
                placement,
                mode=mode,
                progress=progress_enabled(),
            ),
        )


@click.command(name="verify")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--source",
    default=None,
    help="Source checkpoint (folder or Hub id); default: the one recorded in OUT/sgm/bake.json.",
)
@click.option(
    "--full",
    is_flag=True,
    help="Compare the whole model's logits (loads the model; see --device-map) instead of "
    "checking each folded MLP block on its own.",
)
@device_option
@verify_dtype_option
@placement_options
@user_errors
def verify_command(
    out: Path,
    source: str | None,
    full: bool,
    device: str,
    verify_dtype: str,
    device_map: str | None,
    max_memory: str | None,
    offload_folder: Path | None,
) -> None:
    """Check that OUT reproduces its source run with SGM hooks, and record the figures.

    By default each folded MLP block is checked on its own (one block in memory, any model
    size); --full compares the logits of the whole model. OUT must still match its recorded
    sha256 (exit code 4 otherwise, and nothing is written)."""
    placement = make_placement(device, device_map, max_memory, offload_folder)
    from sgm_bake.pipeline.run import verify_output
    from sgm_bake.record import require_intact
    from sgm_bake.runtime.loading import resolve_model_source

    record = require_intact(out)
    progress = progress_enabled()
    if source is None:
        recorded = record.source
        source = recorded.path or recorded.id
        if not source:
            raise SGMError(f"{out}/sgm/bake.json names no source; pass --source")
        revision = recorded.revision if recorded.kind == "hub" else None
        resolved = resolve_model_source(source, revision, progress)
    else:
        resolved = resolve_model_source(source, None, progress)
    report = verify_output(
        out,
        resolved.path,
        verify_dtype,
        placement,
        mode="full" if full else "layers",
        progress=progress,
    )
    report_verification(out, report)


COMMANDS = [bake, verify_command]
