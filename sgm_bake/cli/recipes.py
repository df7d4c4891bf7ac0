"""`recipes`: the architectures sgm-bake knows, and which of them are mixtures of experts."""

from __future__ import annotations

import click

from sgm_bake.cli.common import user_errors


@click.command(name="recipes")
@user_errors
def recipes_command() -> None:
    """List the supported architectures (config model_type), their MLP blocks and recipe files.

    MoE families are marked: their units include one channel of one expert, in layers holding
    stacked experts.
    """
    from sgm_bake.core.recipes import recipe_summaries

    for summary in recipe_summaries():
        kind = "MoE  " if summary.moe else "dense"
        click.echo(f"{summary.model_type:24} {kind} {summary.blocks}  ({summary.file})")


COMMANDS = [recipes_command]
