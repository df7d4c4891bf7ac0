"""The `sgm-bake` command line: a thin layer that parses options, calls one pipeline function
per command and prints its result. Heavy libraries are imported inside the commands, so that
`sgm-bake --help` answers at once."""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path
from typing import Any

import click

from sgm_bake import __version__
from sgm_bake.cli import audit, bake, evaluate, plan, profile, recipes, tune
from sgm_bake.cli.common import EXIT_ERROR, config_defaults, configure_logging
from sgm_bake.errors import SGMError

GLOBAL_FLAGS = frozenset({"-q", "--quiet", "--verbose"})
VERBOSE = re.compile(r"-v+$")


class DefaultGroup(click.Group):
    """A group whose first argument may be a model instead of a command: `sgm-bake MODEL OUT`
    runs the whole pipeline (the `run` command)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["sgm_bake.argv"] = list(args)  # recorded in bake.json
        index = self.first_positional(ctx, args)
        if index is not None:
            # -q and -v mean the same after the command as before it.
            moved = [arg for arg in args[index + 1 :] if arg in GLOBAL_FLAGS or VERBOSE.match(arg)]
            rest = [arg for arg in args[index + 1 :] if arg not in moved]
            args = [*args[:index], *moved, args[index], *rest]
            index += len(moved)
            if args[index] not in self.commands:
                self.refuse_mistyped_command(args[index])
                args = [*args[:index], "run", *args[index:]]
        return super().parse_args(ctx, args)

    def refuse_mistyped_command(self, word: str) -> None:
        """`sgm-bake inspec out`: a word close to a command name that is no existing path is a
        mistyped command, said at once rather than looked up on the Hub as a model."""
        if "/" in word or Path(word).exists():
            return
        close = difflib.get_close_matches(word, sorted(self.commands), n=1, cutoff=0.75)
        if close:
            click.echo(
                f"error: {word!r} is not a command; did you mean {close[0]!r}? (a model named "
                f"{word!r} would need to be a local folder or a Hub id ORG/NAME)",
                err=True,
            )
            sys.exit(EXIT_ERROR)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command with the whole first sentence of its help, wrapped, never cut."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=1000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

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
