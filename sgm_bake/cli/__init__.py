"""The `sgm-bake` command line: a thin layer that parses options, calls one pipeline function
per command and prints its result. Heavy libraries are imported inside the commands, so that
`sgm-bake --help` answers at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from sgm_bake import __version__
from sgm_bake.cli import audit, bake, evaluate, plan, profile, recipes, tune
from sgm_bake.cli.common import EXIT_ERROR, config_defaults, configure_logging
from sgm_bake.errors import SGMError


class DefaultGroup(click.Group):
    """A group whose first argument may be a model instead of a command: `sgm-bake MODEL OUT`
    runs the whole pipeline (the `run` command)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["sgm_bake.argv"] = list(args)  # recorded in bake.json
        index = self.first_positional(ctx, args)
        if index is not None and args[index] not in self.commands:
            args = [*args[:index], "run", *args[index:]]
        return super().parse_args(ctx, args)

    def first_positional(self, ctx: click.Context, args: list[str]) -> int | None:
        """Where the command (or the model) is: the first argument that is neither a group
        option nor the value of one (`--config FILE`)."""
        valued = {
            flag
            for param in self.get_params(ctx)
            if isinstance(param, click.Option) and not (param.is_flag or param.count)
            for flag in param.opts
        }
        skip = False
        for index, arg in enumerate(args):
            if skip:
                skip = False
            elif arg in valued:
                skip = True
            elif not arg.startswith("-"):
                return index
        return None

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
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="TOML file of option values (long option names as keys, e.g. top-k = 256); the "
    "command line and SGM_BAKE_<OPTION> environment variables win over it.",
)
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool, config_file: Path | None) -> None:
    """Detoxify multimodal LLMs by folding SGM neuron suppression into their weights."""
    ctx.ensure_object(dict)
    ctx.obj["progress"] = not quiet
    configure_logging(verbose, quiet)
    if config_file is not None:
        try:
            ctx.default_map = config_defaults(ctx.command, config_file)  # type: ignore[arg-type]
        except SGMError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_ERROR)
        ctx.meta["sgm_bake.config"] = str(config_file)


for module in (profile, bake, evaluate, audit, recipes, tune, plan):
    for command in module.COMMANDS:
        main.add_command(command)
