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

F = TypeVar("F", bound=Callable[..., Any])
EXIT_ERROR = 2
EXIT_VERIFY_FAILED = 3
EXIT_TAMPERED = 4
EXIT_INTERRUPTED = 130


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


expertise_option = click.option(
    "--expertise",
    "expertise_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Expertise file, or a folder of AurA/SGM research-code .statedict files.",
)
recipe_option = click.option(
    "--recipe",
    "recipe_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Use this recipe JSON instead of the one for the config's model_type.",
)
revision_option = click.option("--revision", default=None, help="Hub branch, tag or commit.")
expert_layout_option = click.option(
    "--expert-layout",
    type=click.Choice(["out_in", "in_out"]),
    default=None,
    help="How SOURCE stores stacked expert matrices whose shape cannot tell (square ones, when "
    "2 x moe_intermediate_size == hidden_size): out_in [E, out, in] or in_out [E, in, out]. "
    "Needed only when the bake asks for it.",
)
overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Replace the output if it exists and is not empty."
)
device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="Device the model runs on (profiling, evaluation, generation and verification alike): "
    "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps.",
)
dtype_option = click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
    default="auto",
    show_default=True,
    help="Precision the model runs in (auto: float32 on CPU, bfloat16 on a GPU).",
)
verify_dtype_option = click.option(
    "--verify-dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default="float32",
    show_default=True,
    help="Precision of the verification forward passes (float32 is exact; halve memory with bf16).",
)
verify_option = add_options(
    [
        click.option(
            "--verify",
            "verify_mode",
            type=click.Choice(["layers", "full", "none"]),
            default="layers",
            is_flag=False,
            flag_value="layers",
            show_default=True,
            help="Verify after baking: layers (each folded MLP block against the hooked source, "
            "one block in memory at a time), full (the whole model's logits; loads it, see "
            "--device-map) or none.",
        ),
        click.option("--no-verify", "no_verify", is_flag=True, help="Same as --verify none."),
    ]
)


def verify_mode_of(verify_mode: str, no_verify: bool) -> str | None:
    """The verification to run after a bake (None: none)."""
    return None if no_verify or verify_mode == "none" else verify_mode


placement_options = add_options(
    [
        click.option(
            "--device-map",
            default=None,
            help="Spread the model with accelerate: auto, balanced, balanced_low_0, sequential, "
            "or one device (cpu, cuda:N). Default: auto on a GPU machine, else --device.",
        ),
        click.option(
            "--max-memory",
            default=None,
            metavar="BUDGETS",
            help="Per-device budgets for the device map, e.g. 0=70GiB,1=70GiB,cpu=200GiB.",
        ),
        click.option(
            "--offload-folder",
            type=click.Path(path_type=Path, file_okay=False),
            default=None,
            help="Keep layers that fit no budget on disk here (slow, but any size runs).",
        ),
    ]
)


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


base_model_option = click.option(
    "--base-model",
    default=None,
    help="Hub id to name as base_model in the card when SOURCE is a local copy of it.",
)
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
judge_option = add_options(
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
    return add_options(
        [
            click.option(
                "--rule",
                type=click.Choice(["aura", "damp", "det0"]),
                default=None,
                help="aura (default): alpha = 1 - 2(auroc - 0.5); damp: fixed alpha for the "
                "top-k; det0: alpha 0 for the top-k.",
            ),
            click.option(
                "--threshold",
                type=click.FloatRange(0, 1),
                default=None,
                help="Units with AUROC above this are experts (default 0.5; the SGM code uses "
                "0.3).",
            ),
            click.option(
                "--top-k",
                type=click.IntRange(0),
                default=None,
                help="Only the k units with the highest AUROC, across all modules (0: no cap).",
            ),
            click.option(
                "--damp-alpha",
                type=click.FloatRange(0),
                default=None,
                help="The factor of the damp rule (default 0.5).",
            ),
            click.option(
                "--strength",
                type=click.FloatRange(0),
                default=None,
                help="Scale the suppression: alpha' = 1 - s(1 - alpha) (default 1).",
            ),
        ]
    )(command)


def make_rule(
    rule: str | None,
    threshold: float | None,
    top_k: int | None,
    damp_alpha: float | None,
    strength: float | None,
) -> Any:
    """The rule options from the command line, with the documented defaults."""
    from sgm_bake.core.rules import RuleOptions

    if rule in ("damp", "det0") and not top_k and threshold is None:
        click.echo(
            f"note: --rule {rule} without --top-k acts on every unit with AUROC > 0.5", err=True
        )
    return RuleOptions(
        rule=rule or "aura",  # type: ignore[arg-type]
        threshold=0.5 if threshold is None else threshold,
        top_k=top_k or None,
        damp_alpha=0.5 if damp_alpha is None else damp_alpha,
        strength=1.0 if strength is None else strength,
    )


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


batch_size_option = click.option(
    "--batch-size",
    type=BatchSize(),
    default="auto",
    show_default=True,
    help="Samples per forward pass. auto: on a GPU the largest batch that fits, found on the "
    "first (longest) samples at start; elsewhere 8.",
)
max_samples_option = click.option(
    "--max-samples",
    type=click.IntRange(2),
    default=None,
    help="Profile at most N samples, half per class.",
)
neurons_option = click.option(
    "--neurons",
    is_flag=True,
    help="Profile the classic MLP neurons (inputs of the down projection) instead of the "
    "default hook points.",
)
pooling_option = click.option(
    "--pooling",
    type=click.Choice(["mean", "max"]),
    default="max",
    show_default=True,
    help="Pool each unit over token positions: mean (SGM) or max (AurA).",
)
positions_option = click.option(
    "--positions",
    type=click.Choice(["all", "text"]),
    default="all",
    show_default=True,
    help="Pool over all non-padding positions (image tokens too, as SGM) or text positions only.",
)
feed_option = click.option(
    "--feed",
    type=click.Choice(["response", "dialogue"]),
    default="dialogue",
    show_default=True,
    help="response: image + reply text in one user turn (SGM); dialogue: the prompt, then the "
    "reply as the assistant's turn.",
)
hook_points_option = click.option(
    "--hook-points",
    default=None,
    help="Comma-separated PROJECTION:SIDE list (default: the recipe's, the outputs of the MLP "
    "projections).",
)
layers_option = click.option(
    "--layers",
    "layer_spec",
    default=None,
    help="Only these post-fusion layers, e.g. '8-31' or '0,2,4'.",
)


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
ORGANISM_SETS = {"profile": "builtin:organism", "eval": "builtin:mmtoxicqa-organism-v1"}
REAL_MODEL_SETS = {"profile": "builtin:safety-profile-v1", "eval": "builtin:mm-safety-eval-v1"}
ORGANISM_IDS = ("sgm-bake/organism", "sgm-bake/organism-plain", "sgm-bake/organism-staged")


def is_organism(model: str, folder: Path | None = None) -> bool:
    """Whether MODEL is a built-in organism, or a folder baked from one."""
    if model in ("organism", "organism-plain", "organism-staged"):
        return True
    if folder is None:
        return False
    from sgm_bake.pipeline.record import RECORD_PATH, read_record

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
