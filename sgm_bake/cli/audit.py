"""`inspect`, `unbake` and `push`: commands that audit or publish a baked folder."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sgm_bake.cli.common import EXIT_TAMPERED, echo_lines, progress_enabled, user_errors


@click.command()
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--rerender",
    is_flag=True,
    help="Also redraw the card and plots from the record (changes the folder; off by default, "
    "so an audit never modifies what it audits).",
)
@user_errors
def inspect(out: Path, rerender: bool) -> None:
    """Summarise a baked folder and re-check every sha256 (read-only unless --rerender)."""
    from sgm_bake.pipeline.audit import describe_record, rerender_folder
    from sgm_bake.record import check_hashes, read_record

    record = read_record(out)
    echo_lines(describe_record(record))
    check = check_hashes(out, record)
    if not check.ok:
        click.echo(
            f"error: {out} does not match its recorded sha256 ({check.describe()})", err=True
        )
        sys.exit(EXIT_TAMPERED)
    click.echo(f"files       {len(record.files)} files match their recorded sha256")
    if rerender:
        written = rerender_folder(out, record)
        click.echo(f"rerendered  README.md, {', '.join(written) or 'no plots'}")


@click.command()
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace DEST if it exists and is not empty.")
@click.option(
    "--compare",
    "compare_with",
    default=None,
    help="Base checkpoint (folder or Hub id) to compare the rebuilt weights with.",
)
@user_errors
def unbake(out: Path, dest: Path, overwrite: bool, compare_with: str | None) -> None:
    """Rebuild the base weights of OUT into DEST by dividing out the stored factors (an audit).

    With --compare, DEST is put in place only if the rebuilt weights lie within the rounding
    bound of BASE and every other tensor is identical (exit code 4 otherwise)."""
    from sgm_bake.pipeline.audit import unbake as run_unbake
    from sgm_bake.runtime.loading import resolve_model_source

    base = resolve_model_source(compare_with, None, progress_enabled()) if compare_with else None
    result = run_unbake(out, dest, overwrite, progress_enabled(), base.path if base else None)
    click.echo(f"rebuilt {dest}: {len(result['tensors_rebuilt'])} tensors divided by their factors")
    figures = result["compare"]
    if figures is not None:
        click.echo(
            f"compare: the rebuilt weights lie within the rounding bound of {compare_with} "
            f"(max relative difference {figures['max_relative_difference']:.3g}, largest share "
            f"of the bound {figures['max_share_of_bound']:.3g}); every other tensor is identical"
        )


@click.command()
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repository as private.")
@click.option("--branch", default=None, help="Push to this branch (created if missing).")
@click.option(
    "--commit-message",
    default=None,
    help="Message of the Hub commit (default: 'Upload SGM-detoxified SOURCE (sgm-bake)').",
)
@click.option("--dry-run", is_flag=True, help="List what would be uploaded; upload nothing.")
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=120.0,
    show_default=True,
    help="Seconds any Hub request may wait to connect or for the next byte before the push "
    "stops (the folder stays as it was).",
)
@user_errors
def push(
    out: Path,
    repo_id: str,
    private: bool,
    branch: str | None,
    commit_message: str | None,
    dry_run: bool,
    timeout: float,
) -> None:
    """Upload a verified, intact baked folder to the Hub (token: HF_TOKEN or the stored login).

    OUT is written only after the Hub accepted the commit (the card then names the repository);
    a failed push leaves it as it was."""
    from sgm_bake.publish.push import plan_upload
    from sgm_bake.publish.push import push as run_push

    plan = plan_upload(out, repo_id, private, branch, commit_message)
    if dry_run:
        echo_lines(plan.describe())
        return
    url = run_push(out, plan, timeout)
    click.echo(f"pushed {out} to {url}")


COMMANDS = [inspect, unbake, push]
