"""`plan`: each stage's peak memory and GPU count, before anything is loaded."""

from __future__ import annotations

from pathlib import Path

import click

from sgm_bake.cli.common import (
    echo_json,
    echo_lines,
    json_option,
    progress_enabled,
    ranged_option,
    recipe_option,
    revision_option,
    user_errors,
)
from sgm_bake.errors import SGMError


@click.command(name="plan")
@click.argument("model")
@click.option(
    "--device",
    type=click.Choice(["cuda", "cpu"]),
    default="cuda",
    show_default=True,
    help="Where the whole-model stages run: cuda (GPUs) or cpu (everything on the host).",
)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "bfloat16", "float16", "float32"]),
    default="auto",
    show_default=True,
    help="Precision of profile, eval and generate (auto: bfloat16 on GPUs, float32 on the CPU).",
)
@click.option(
    "--verify-dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default="float32",
    show_default=True,
    help="Precision of verify --full (as its own --verify-dtype).",
)
@click.option(
    "--max-memory",
    default=None,
    metavar="BUDGETS",
    help="Budgets to check against, e.g. 0=70GiB,1=70GiB,cpu=200GiB; a stage that cannot "
    "fit them is refused (exit 2).",
)
@click.option(
    "--gpu-memory",
    default="80GiB",
    show_default=True,
    help="Memory per GPU for the GPU counts when --max-memory names no GPU.",
)
@ranged_option(
    "--batch-size", 8, low=1, help="Samples per profiling forward pass, for the activation memory."
)
@ranged_option(
    "--sequence-length",
    1024,
    low=1,
    help="Tokens per sample (image tokens included) for activations and the KV cache.",
)
@ranged_option("--samples", 400, low=1, help="Profile-set size (for the response store).")
@click.option("--markdown", is_flag=True, help="Print the table in Markdown.")
@json_option
@revision_option
@recipe_option
@user_errors
def plan_command(
    model: str,
    device: str,
    dtype: str,
    verify_dtype: str,
    max_memory: str | None,
    gpu_memory: str,
    batch_size: int,
    sequence_length: int,
    samples: int,
    markdown: bool,
    as_json: bool,
    revision: str | None,
    recipe_file: Path | None,
) -> None:
    """Print each stage's peak host and GPU memory and GPU count for MODEL (a folder, with or
    without weights, a Hub id or a built-in organism name), reading only config.json and
    safetensors headers."""
    from sgm_bake.pipeline.plan import PlanOptions, plan
    from sgm_bake.runtime.loading import BUILTIN_MODELS, resolve_model_source
    from sgm_bake.runtime.memory import parse_max_memory, parse_size

    if model in BUILTIN_MODELS:  # the same names every command takes; no download needed
        model = str(resolve_model_source(model, None, progress_enabled()).path)

    options = PlanOptions(
        device=device,
        dtype=dtype,
        verify_dtype=verify_dtype,
        max_memory=parse_max_memory(max_memory),
        gpu_bytes=parse_size(gpu_memory),
        batch_size=batch_size,
        sequence_length=sequence_length,
        profile_samples=samples,
        revision=revision,
    )
    result = plan(model, options, recipe_file)
    if as_json:
        echo_json(result.to_dict())
    else:
        echo_lines(result.lines()[:2] + result.markdown() if markdown else result.lines())
    refused = [stage.stage for stage in result.stages if not stage.fits]
    if refused:
        raise SGMError(
            f"{', '.join(refused)} cannot fit --max-memory {max_memory}; give more budget, more "
            "GPUs or an --offload-folder (see the table above)"
        )


COMMANDS = [plan_command]
