"""`inspect`, `unbake` and `push`: commands that audit or publish a baked folder."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sgm_bake.cli.common import (
    EXIT_TAMPERED,
    echo_json,
    echo_lines,
    json_option,
    progress_enabled,
    ranged_option,
    user_errors,
)


@click.command()
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--rerender",
    is_flag=True,
    help="Also redraw the card and plots from the record (changes the folder; off by default, "
    "so an audit never modifies what it audits).",
)
@json_option
@user_errors
def inspect(out: Path, rerender: bool, as_json: bool) -> None:
    """Summarise a baked folder and re-check every sha256 (read-only unless --rerender)."""
    from sgm_bake.pipeline.audit import describe_record, record_summary, rerender_folder
    from sgm_bake.record import check_hashes, read_record

    record = read_record(out)
    if not as_json:
        echo_lines(describe_record(record))
    check = check_hashes(out, record)
    if not check.ok:
        if as_json:
            echo_json({**record_summary(record), "intact": False, "problems": check.describe()})
        click.echo(
            f"error: {out} does not match its recorded sha256 ({check.describe()})", err=True
        )
        sys.exit(EXIT_TAMPERED)
    written = rerender_folder(out, record) if rerender else None
    if as_json:
        echo_json({**record_summary(record), "intact": True, "rerendered": written})
        return
    click.echo(f"files       {len(record.files)} files match their recorded sha256")
    if written is not None:
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
@click.option(
    "--private/--no-private",
    default=None,
    help="Visibility of a repository the push creates (default: the Hub's, public); an "
    "existing repository keeps its visibility.",
)
@click.option(
    "--revision",
    "--branch",
    "revision",
    default=None,
    help="Branch to push to (created from main if missing); with --create-pr, the branch the "
    "pull request targets. --branch is the same option.",
)
@click.option(
    "--create-pr",
    is_flag=True,
    help="Open a pull request with the upload instead of committing to the branch (OUT keeps "
    "its card until the pull request is merged and pushed again).",
)
@click.option(
    "--token",
    default=None,
    metavar="TOKEN",
    help="Hub token with write access (default: HF_TOKEN or the stored login); never printed, "
    "logged or written.",
)
@click.option(
    "--resumable/--single-commit",
    default=None,
    help="Upload with huggingface_hub's upload_folder (several commits; run the push again "
    "after an interruption to resume), then the card and the record in a last commit; or all "
    "in one commit. Default: resumable above 50 GiB.",
)
@click.option(
    "--commit-message",
    default=None,
    help="Message of the Hub commit (default: 'Upload SGM-detoxified SOURCE (sgm-bake)').",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check OUT and say what would be uploaded, where and how; upload nothing.",
)
@ranged_option(
    "--timeout",
    120.0,
    low=0,
    help="Seconds any Hub request may wait to connect or for the next byte before the push "
    "stops (the folder stays as it was).",
)
@user_errors
def push(
    out: Path,
    repo_id: str,
    private: bool | None,
    revision: str | None,
    create_pr: bool,
    token: str | None,
    resumable: bool | None,
    commit_message: str | None,
    dry_run: bool,
    timeout: float,
) -> None:
    """Upload a verified, intact baked folder to the Hub, as `hf upload` does (token: --token,
    HF_TOKEN or the stored login).

    OUT is written only after the Hub accepted the commit (the card then names the repository);
    a failed push leaves it as it was."""
    from sgm_bake.publish.push import plan_upload
    from sgm_bake.publish.push import push as run_push

    plan = plan_upload(
        out,
        repo_id,
        private,
        revision,
        commit_message,
        create_pr=create_pr,
        resumable=resumable,
        token_given=token is not None,
    )
    if dry_run:
        echo_lines(plan.describe())
        return
    url = run_push(out, plan, timeout, token)
    done = f"opened a pull request with {out}:" if create_pr else f"pushed {out} to"
    click.echo(f"{done} {url}")


COMMANDS = [inspect, unbake, push]
