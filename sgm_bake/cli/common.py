"""What every command shares: exit codes, error handling, logging, and options that mean the
same in every command that has them."""

from __future__ import annotations

import functools
import logging
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from sgm_bake.errors import SGMError, TamperedError
from sgm_bake.io import interrupts
from sgm_bake.io.atomic import describe_os_error
from sgm_bake.options import BY_NAME, GROUPS, OPTIONS, ORGANISM_EVAL_SET, Option, default

F = TypeVar("F", bound=Callable[..., Any])
EXIT_ERROR = 2
EXIT_VERIFY_FAILED = 3
EXIT_TAMPERED = 4
EXIT_INTERRUPTED = 130
RULE_KEYS = ("rule", "threshold", "top-k", "damp-alpha", "strength")
BY_NAME_KEY = {key: OPTIONS[key].name for key in RULE_KEYS}


def configure_logging(verbose: int, quiet: bool) -> None:
    """-v for info, -vv for debug (including the libraries), --quiet for errors only."""
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose > 1:
        level = logging.DEBUG
    if quiet:
        level = logging.ERROR
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    if verbose < 2:
        # huggingface_hub sets its own level and handler when it is first imported (later, in
        # a command); the variable makes that level "error" too, so its retry warnings stay
        # quiet (sgm_bake.io.hub says in one line why the Hub cannot be used).
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")
        for noisy in ("transformers", "huggingface_hub", "httpx", "filelock", "accelerate"):
            logging.getLogger(noisy).setLevel(max(level, logging.ERROR))
        try:
            import transformers

            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()
        except ImportError:
            pass


def user_errors(command: F) -> F:
    """Turn bad input into one line on stderr and a non-zero exit, never a traceback: exit code
    2, or 4 when a baked folder no longer matches its recorded sha256 (`TamperedError`).

    The command runs with SIGINT and SIGTERM handled (`sgm_bake.io.interrupts`): either stops it
    at once, its temporary folder is removed, an existing output stays as it was, and the exit
    code is 128 + the signal number (130 for SIGINT, 143 for SIGTERM). An operating-system
    failure that escapes the library (a file that cannot be read, a folder that cannot be
    written) is one line naming the path and the cause.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with interrupts.handling():
            try:
                return command(*args, **kwargs)
            except TamperedError as exc:
                click.echo(f"error: {exc}", err=True)
                sys.exit(EXIT_TAMPERED)
            except SGMError as exc:
                click.echo(f"error: {exc}", err=True)
                sys.exit(EXIT_ERROR)
            except interrupts.Interrupted as exc:
                if exc.note:
                    click.echo(f"interrupted by {exc.signal_name} {exc.note}", err=True)
                elif exc.completed:
                    click.echo(
                        f"interrupted by {exc.signal_name} just after the output was put in "
                        "place; it is complete, the steps after it did not run",
                        err=True,
                    )
                else:
                    click.echo(
                        f"interrupted by {exc.signal_name}: temporary files removed; no output "
                        "was left half-written or replaced by an incomplete one",
                        err=True,
                    )
                sys.exit(exc.exit_code)
            except KeyboardInterrupt:
                click.echo(
                    "interrupted by SIGINT: temporary files removed; no output was left "
                    "half-written or replaced by an incomplete one",
                    err=True,
                )
                sys.exit(EXIT_INTERRUPTED)
            except OSError as exc:
                click.echo(f"error: {describe_os_error(exc, Path('.'))}", err=True)
                sys.exit(EXIT_ERROR)

    return wrapper  # type: ignore[return-value]


def config_defaults(group: click.Group, path: Path) -> dict[str, dict[str, Any]]:
    """Click's `default_map` from a TOML config file: each key (a long option name, `top-k` or
    `top_k`) becomes the default of that option in every command that has it. A key that is no
    option of any command is an error naming it, with the closest option names."""
    import difflib

    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SGMError(f"config file {path} is not readable ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SGMError(f"config file {path} is not valid TOML ({exc})") from exc
    per_command: dict[str, dict[str, str]] = {}  # command -> key -> parameter name
    for name, command in group.commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and param.name:
                for flag in (*param.opts, *param.secondary_opts):
                    if flag.startswith("--"):
                        per_command.setdefault(name, {})[flag[2:]] = param.name
    known = {key for keys in per_command.values() for key in keys}
    defaults: dict[str, dict[str, Any]] = {}
    for raw_key, value in data.items():
        key = raw_key.replace("_", "-")
        if key not in known or isinstance(value, dict):
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SGMError(
                f"config file {path}: {raw_key!r} is not an option of any command (keys are "
                f"long option names such as top-k){hint}"
            )
        for name, keys in per_command.items():
            if key in keys:
                defaults.setdefault(name, {})[keys[key]] = value
    return defaults


def effective_settings() -> dict[str, Any]:
    """The current command's options as it runs them (`values`), and where those that came
    neither from the command line nor from the default were read (`sources`: the config file
    or the environment): recorded in the bake record."""
    context = click.get_current_context(silent=True)
    if context is None:
        return {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, value in context.params.items():
        values[name] = str(value) if isinstance(value, Path) else value
        source = context.get_parameter_source(name)
        if source == click.core.ParameterSource.DEFAULT_MAP:
            sources[name] = "config " + str(context.find_root().meta.get("sgm_bake.config"))
        elif source == click.core.ParameterSource.ENVIRONMENT:
            sources[name] = "environment"
    return {"values": values, "sources": sources}


def command_line() -> str:
    """The command as the user typed it, for the bake record."""
    context = click.get_current_context(silent=True)
    argv = context.find_root().meta.get("sgm_bake.argv") if context else None
    return shlex.join(["sgm-bake", *(argv if argv is not None else sys.argv[1:])])


def progress_enabled() -> bool:
    context = click.get_current_context(silent=True)
    return bool(context and context.find_root().obj and context.find_root().obj.get("progress"))


def echo_lines(lines: list[str]) -> None:
    for line in lines:
        click.echo(line)


def echo_json(data: Any) -> None:
    """A command's result for `--json`: one JSON document on stdout and nothing else (progress
    and logs go to stderr), for scripts and CI."""
    import json

    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the result as one JSON document on stdout (progress and logs stay on stderr).",
)


def add_options(options: list[Callable[[F], F]]) -> Callable[[F], F]:
    """Apply a list of click options in order (the first is the first in --help)."""

    def decorate(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


class SectionedCommand(click.Command):
    """A command whose `--help` lists its options in sections (input, profiling, rule, bake,
    verification, placement, publishing, ...): click has no option groups of its own. A shared
    option's section is its group in `sgm_bake.options`; `sections` places the command's own
    options (parameter name -> section)."""

    def __init__(self, *args: Any, sections: dict[str, str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.sections = sections or {}

    def section_of(self, param: click.Parameter) -> str:
        if param.name in self.sections:
            return self.sections[param.name]
        spec = BY_NAME.get(param.name or "")
        return spec.group if spec is not None else "other"

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(self.section_of(param), []).append(record)
        for name in (*GROUPS, "other"):
            if name in sections:
                with formatter.section(f"{name.capitalize()} options"):
                    formatter.write_dl(sections[name])


def option(key: str, *extra_flags: str, **overrides: Any) -> Callable[[F], F]:
    """The click option for `key` (a long name in `sgm_bake.options.OPTIONS`), built from its
    one definition there: default, help, type and environment variable. `extra_flags` add
    short forms; `overrides` change a click argument for one command (say, `help`)."""
    spec = OPTIONS[key]
    kwargs: dict[str, Any] = {
        "help": spec.help,
        "envvar": spec.envvar,
        "show_envvar": False,
    }
    if spec.kind == "flag":
        kwargs["is_flag"] = True
        kwargs["default"] = bool(spec.default)
    else:
        kwargs["type"] = _click_type(spec)
        if spec.unset and "default" not in overrides:
            kwargs["default"] = None
            kwargs["help"] = f"{spec.help} [default: {_shown(spec.default)}]"
        else:
            kwargs["default"] = overrides.get("default", spec.default)
            kwargs["show_default"] = kwargs["default"] is not None
    if spec.metavar:
        kwargs["metavar"] = spec.metavar
    kwargs.update(overrides)
    return click.option(*extra_flags, spec.flag, spec.name, **kwargs)


def ranged_option(
    flag: str, default: float, *, low: float, high: float | None = None, help: str
) -> Callable[[F], F]:
    """A command's own number option (not a shared one, which `option` builds): a whole number
    from `low`, or a real number above `low` (up to `high`), with its default shown."""
    kind: Any
    if isinstance(default, int):
        kind = click.IntRange(int(low), None if high is None else int(high))
    else:
        kind = click.FloatRange(low, high, min_open=True)
    return click.option(flag, type=kind, default=default, show_default=True, help=help)


def _shown(value: Any) -> str:
    return "0 (no cap)" if value == 0 and not isinstance(value, float) else str(value)


def _click_type(spec: Option) -> Any:
    if spec.kind == "choice":
        return click.Choice(list(spec.choices))
    if spec.kind == "int" and spec.minimum is None and spec.maximum is None:
        return click.INT
    if spec.kind == "int":
        return click.IntRange(
            None if spec.minimum is None else int(spec.minimum),
            None if spec.maximum is None else int(spec.maximum),
        )
    if spec.kind == "float":
        return click.FloatRange(spec.minimum, spec.maximum, min_open=spec.min_open)
    if spec.kind == "batch":
        return BatchSize()
    if spec.kind == "dir":
        return click.Path(path_type=Path, file_okay=False)
    if spec.kind == "file":
        return click.Path(path_type=Path, dir_okay=False)
    if spec.kind == "path":
        return click.Path(path_type=Path)
    return None


expertise_option = click.option(
    "--expertise",
    "expertise_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Expertise file, or a folder of AurA/SGM research-code .statedict files.",
)
recipe_option = option("recipe")
revision_option = option("revision")
expert_layout_option = option("expert-layout")
overwrite_option = option("overwrite")
device_option = option("device")
dtype_option = option("dtype")
verify_dtype_option = option("verify-dtype")
verify_option = add_options(
    [option("verify", is_flag=False, flag_value="layers"), option("no-verify")]
)


def verify_mode_of(verify_mode: str, no_verify: bool) -> str | None:
    """The verification to run after a bake (None: none)."""
    return None if no_verify or verify_mode == "none" else verify_mode


placement_options = add_options(
    [option("device-map"), option("max-memory"), option("offload-folder")]
)
# Where and in which dtype a model runs: every command that loads one whole.
load_options = add_options([device_option, dtype_option, placement_options])


def placement_of(params: dict[str, Any]) -> Any:
    """The runtime Placement from a command's parsed --device and placement options."""
    keys = ("device", "device_map", "max_memory", "offload_folder")
    return make_placement(*(params[key] for key in keys))


def make_placement(
    device: str, device_map: str | None, max_memory: str | None, offload_folder: Path | None
) -> Any:
    """The runtime Placement from the shared device options."""
    from sgm_bake.runtime.loading import Placement
    from sgm_bake.runtime.memory import parse_max_memory

    return Placement(
        device=device,
        device_map=device_map,
        max_memory=parse_max_memory(max_memory),
        offload_folder=offload_folder,
    )


base_model_option = option("base-model")
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
judge_spec_option = add_options(
    [
        click.option(
            "--judge",
            "judge_spec",
            default="profanity",
            show_default=True,
            help="profanity (offline classifier), hf:PATH (local text classifier), openai:URL "
            "(an OpenAI-compatible endpoint), or guard:MODEL (a Llama Guard / ShieldGemma / "
            "Qwen3Guard-style guard model, a folder or Hub id, run through transformers).",
        ),
    ]
)
judge_run_options = add_options(
    [
        click.option(
            "--judge-device",
            default="auto",
            show_default=True,
            help="Device a guard:MODEL judge runs on (auto, cpu, cuda, cuda:N, mps).",
        ),
        click.option(
            "--judge-prompt",
            type=click.Choice(["default", "paper"]),
            default="default",
            show_default=True,
            help="For openai:URL: default asks yes/no about the reply; paper asks the "
            "MM-SafetyBench-style safe/unsafe question about request and reply, as the paper's "
            "gpt-4o-mini judge.",
        ),
    ]
)
judge_option = add_options([judge_spec_option, judge_run_options])


def make_judge_options(judge_device: str, judge_prompt: str) -> Any:
    """The judge's run options from the shared judge options."""
    from sgm_bake.evaluation.judges import JudgeOptions

    return JudgeOptions(device=judge_device, prompt=judge_prompt)


ecso_templates_option = click.option(
    "--ecso-templates",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="JSON file overriding ECSO's judge/caption/answer prompts.",
)


def rule_options(command: F) -> F:
    """How AUROC becomes factors; shared by profile, the one-command form and tune's report."""
    return add_options([option(key) for key in RULE_KEYS])(command)


def make_rule(
    rule: str | None,
    threshold: float | None,
    top_k: int | None,
    damp_alpha: float | None,
    strength: float | None,
) -> Any:
    """The rule options from the command line; what was not given keeps RuleOptions' default."""
    from sgm_bake.core.rules import RuleOptions

    if rule in ("damp", "det0") and not top_k and threshold is None:
        click.echo(
            f"note: --rule {rule} without --top-k acts on every unit with AUROC > "
            f"{default('threshold')}",
            err=True,
        )
    given: dict[str, Any] = {"rule": rule, "threshold": threshold, "top_k": top_k}
    given.update(damp_alpha=damp_alpha, strength=strength)
    return RuleOptions(**{name: value for name, value in given.items() if value is not None})


def bake_options(
    overwrite: bool,
    recipe_file: Path | None,
    base_model: str | None = None,
    expert_layout: str | None = None,
) -> Any:
    """The bake's options from the command line, with the command and its effective settings
    for the record."""
    from sgm_bake.pipeline.bake import BakeOptions

    return BakeOptions(
        overwrite,
        recipe_file,
        progress_enabled(),
        command_line(),
        base_model=base_model,
        expert_layout=expert_layout,
        settings=effective_settings(),
    )


def rule_from(params: dict[str, Any]) -> tuple[Any, bool]:
    """Take the rule options (`rule_options`) out of a command's parameters: the RuleOptions
    they make, and whether any was given."""
    values = [params.pop(BY_NAME_KEY[key]) for key in RULE_KEYS]
    return make_rule(*values), any(value is not None for value in values)


def step(number: int, total: int, text: str) -> None:
    """A step header, printed the same way by every multi-step command."""
    click.echo(f"{number}/{total} {text}")


# How profile rows are captured: the same options, with the same meaning, in `profile`, the
# one-command form and `tune` (where a searched knob's value replaces the option's).
class BatchSize(click.ParamType):
    """`auto` or a whole number of samples per forward pass."""

    name = "N|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if text.isdigit() and int(text) >= 1:
            return int(text)
        self.fail(f"{value!r} is neither a positive whole number nor auto", param, ctx)


# How profile rows are batched, fed and captured: `profile`, the one-command form and `tune`.
capture_options = add_options(
    [
        option(key)
        for key in (
            "batch-size",
            "max-samples",
            "pooling",
            "positions",
            "feed",
            "hook-points",
            "neurons",
            "layers",
        )
    ]
)


def hook_points_of(params: dict[str, Any]) -> tuple[str, ...] | None:
    """The --hook-points list (None: the recipe's default)."""
    if not params["hook_points"]:
        return None
    return tuple(p.strip() for p in params["hook_points"].split(",") if p.strip())


def make_capture(params: dict[str, Any], rule: Any, **fields: Any) -> Any:
    """The pipeline's ProfileOptions from the capture options above and the rule; `fields`
    are what the command sets itself (tune's batch size and hook points, profile's store)."""
    from sgm_bake.pipeline.profile import ProfileOptions, parse_layers

    shared = {
        "layers": parse_layers(params["layer_spec"]),
        "pooling": params["pooling"],
        "positions": params["positions"],
        "feed": params["feed"],
        "batch_size": params["batch_size"],
        "progress": progress_enabled(),
        "rule": rule,
    }
    return ProfileOptions(**{**shared, **fields})


# How a data set in its own format (a Hub dataset, Parquet, other column names) maps onto
# sgm-bake's fields; shared by profile, the one-command form, tune and eval. `--dataset-split`
# is not `--split` because tune already uses that for its profiling/tuning/report fractions.
data_format_options = add_options(
    [
        click.option(
            "--columns",
            default=None,
            metavar="FIELD=COLUMN,...",
            help="Which column holds each field, e.g. prompt=question,response=answer,"
            "label=is_safe,image=image (or a .json file holding that mapping). Fields: text, "
            "prompt, response, label, image, id; for prompt sets also condition, category, "
            "policy, expected, reference, over_refusal.",
        ),
        click.option(
            "--toxic-label",
            default=None,
            metavar="VALUE[,VALUE]",
            help="Label values that mean toxic (e.g. unsafe, or false for an is_safe column); "
            "every other value is non-toxic.",
        ),
        click.option(
            "--dataset-split",
            default=None,
            help="Split of a Hub dataset or data folder to read (default: train).",
        ),
        click.option(
            "--dataset-revision",
            default=None,
            help="Branch, tag or commit of a Hub dataset (hf:OWNER/NAME); the commit it "
            "resolves to is recorded.",
        ),
    ]
)


def make_data_format(params: dict[str, Any]) -> Any:
    """The data format from the shared options."""
    from sgm_bake.datasets.hub_dataset import DataFormat, parse_columns, parse_toxic_labels

    data_format = DataFormat(
        columns=parse_columns(params.get("columns")),
        toxic_labels=parse_toxic_labels(params.get("toxic_label")),
        split=params.get("dataset_split"),
        revision=params.get("dataset_revision"),
    )
    label = dict(data_format.columns).get("label")
    if label and label != "label" and not data_format.toxic_labels:
        # An is_safe column read with the native labels would swap the classes silently.
        click.echo(
            f"note: column {label!r} is read with the native labels (toxic/1/true are toxic); "
            "if it says the opposite (is_safe), pass --toxic-label false",
            err=True,
        )
    return data_format


# The built-in sets a command uses when none is given: the organisms' own sets (written in the
# organism's small vocabulary) for the organisms, the sets for real models for every other one.
ORGANISM_SETS = {"profile": "builtin:organism", "eval": ORGANISM_EVAL_SET}
REAL_MODEL_SETS = {"profile": "builtin:safety-profile-v1", "eval": "builtin:mm-safety-eval-v1"}
ORGANISM_IDS = ("sgm-bake/organism", "sgm-bake/organism-plain", "sgm-bake/organism-staged")


def is_organism(model: str, folder: Path | None = None) -> bool:
    """Whether MODEL is a built-in organism, or a folder baked from one."""
    if model in ("organism", "organism-plain", "organism-staged"):
        return True
    if folder is None:
        return False
    from sgm_bake.record import RECORD_PATH, read_record

    if not (folder / RECORD_PATH).is_file():
        return False
    try:
        return read_record(folder).source.id in ORGANISM_IDS
    except SGMError:
        return False  # a damaged record is reported by the command that needs it


def choose_set(given: str | None, kind: str, model: str, folder: Path | None = None) -> str:
    """The set to use (`kind`: profile or eval): the one given, else the default for the model;
    a warning when an organism set is used on a model that is not an organism."""
    organism = is_organism(model, folder)
    chosen = given or (ORGANISM_SETS if organism else REAL_MODEL_SETS)[kind]
    if chosen in ORGANISM_SETS.values() and not organism:
        click.echo(
            f"warning: {chosen} is written in the model organism's vocabulary; on {model} it "
            f"says little about real harm: use {REAL_MODEL_SETS[kind]} or your own data",
            err=True,
        )
    return chosen
