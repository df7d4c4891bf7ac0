"""The `sgm-bake` command line: a thin layer that parses options, calls one pipeline function
per command and prints its result. Heavy libraries are imported inside the commands, so that
`sgm-bake --help` answers at once."""

from __future__ import annotations

from typing import Any

import click

from sgm_bake import __version__
from sgm_bake.cli import audit, bake, evaluate, plan, profile, recipes, tune
from sgm_bake.cli.common import configure_logging


class DefaultGroup(click.Group):
    """A group whose first argument may be a model instead of a command: `sgm-bake MODEL OUT`
    runs the whole pipeline (the `run` command)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["sgm_bake.argv"] = list(args)  # recorded in bake.json
        positional = [a for a in args if not a.startswith("-")]
        if positional and positional[0] not in self.commands:
            index = args.index(positional[0])
            args = [*args[:index], "run", *args[index:]]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: Any) -> None:
        formatter.write_usage("sgm-bake", "[OPTIONS] MODEL OUT [RUN OPTIONS]")
        formatter.write_usage("sgm-bake", "[OPTIONS] COMMAND [ARGS]...")


@click.group(
    cls=DefaultGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="The one-command form 'sgm-bake MODEL OUT [options]' is the 'run' command: profile, "
    "bake, verify (and optionally tune and push). See 'sgm-bake run --help'.",
)
@click.version_option(__version__, prog_name="sgm-bake")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars; errors only.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Detoxify multimodal LLMs by folding SGM neuron suppression into their weights."""
    ctx.ensure_object(dict)
    ctx.obj["progress"] = not quiet
    configure_logging(verbose, quiet)


for module in (profile, bake, evaluate, audit, recipes, tune, plan):
    for command in module.COMMANDS:
        main.add_command(command)
