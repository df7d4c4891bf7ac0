"""Every shared option, stated once: its flag, default, help and the `--help` section it is shown
in. The click options are generated from this table (`sgm_bake.cli.common.option`), the
pipeline's option dataclasses take their defaults from it, and so does the model card; nothing
else restates a default. Torch-free, so that `sgm-bake --help` stays instant.

Each option can also come from a config file (`--config FILE`, TOML, the long option names as
keys) or from an environment variable `SGM_BAKE_<OPTION>` (`SGM_BAKE_TOP_K=256`); the command
line wins over the environment, the environment over the file, the file over the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_PROFILE_SET = "builtin:default"
ORGANISM_ANCHORS = "builtin:organism-anchors-v1"
"""The edit's anchor set for the organisms (benign scene questions with answers, none an
evaluation item or one of the tuner's checks)."""
ORGANISM_EVAL_SET = "builtin:mmtoxicqa-organism-v1"
"""The organisms' evaluation set (held-out phrasings and scenes)."""
DEFAULT_EDIT_RANK = 4
DEFAULT_EDIT_REPLIES = 3
"""The edit's default rank and reply positions (`pipeline.decision.EditOptions`; why these
values: there)."""
ENV_PREFIX = "SGM_BAKE_"

# The `--help` sections of the one-command form, in the order they are shown.
GROUPS = (
    "input",
    "profiling",
    "rule",
    "bake",
    "verification",
    "placement",
    "publishing",
    "tuning",
    "evaluation",
)


@dataclass(frozen=True)
class Option:
    """One option: what click needs to build it, without importing click.

    `default` is the value the pipeline uses when the option is not given. Rule options reach
    click with no default (`None`), so that a command can tell "given" from "not given" (the
    one-command form recomputes a reused profile's factors only when a rule option is given);
    their help states the default instead.
    """

    flag: str
    group: str
    help: str
    default: Any = None
    kind: str = "text"
    """text, int, float, choice, flag, batch (N or auto), dir, file, path."""
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    min_open: bool = False
    dest: str | None = None
    metavar: str | None = None
    unset: bool = False
    """Reach click with `None` as the default (see above)."""

    @property
    def name(self) -> str:
        """The Python parameter name."""
        return self.dest or self.flag.lstrip("-").replace("-", "_")

    @property
    def key(self) -> str:
        """The config-file key and the environment variable's stem: the long flag's name."""
        return self.flag.lstrip("-")

    @property
    def envvar(self) -> str:
        return ENV_PREFIX + self.key.upper().replace("-", "_")


_OPTIONS = [
    # input
    Option("--revision", "input", "Hub branch, tag or commit."),
    Option(
        "--recipe",
        "input",
        "Use this recipe JSON instead of the one for the config's model_type.",
        kind="file",
        dest="recipe_file",
    ),
    Option(
        "--profile-set",
        "input",
        "Labelled image-text pairs: a .jsonl/.csv file, builtin:NAME or "
        "hf://datasets/ORG/NAME/FILE, or through the datasets extra hf:OWNER/NAME, a "
        ".parquet file or a folder (see --columns). Default: builtin:safety-profile-v1, or "
        "builtin:organism for an organism.",
        default=DEFAULT_PROFILE_SET,
        unset=True,
    ),
    # profiling
    Option(
        "--batch-size",
        "profiling",
        "Samples per forward pass. auto: on a GPU the largest batch that fits, found on the "
        "first (longest) samples at start; elsewhere 8.",
        default="auto",
        kind="batch",
    ),
    Option(
        "--max-samples",
        "profiling",
        "Profile at most N samples, half per class.",
        kind="int",
        minimum=2,
    ),
    Option(
        "--pooling",
        "profiling",
        "Pool each unit over token positions: mean (SGM) or max (AurA).",
        default="max",
        kind="choice",
        choices=("mean", "max"),
    ),
    Option(
        "--positions",
        "profiling",
        "Pool over all non-padding positions (image tokens too, as SGM) or text positions only.",
        default="all",
        kind="choice",
        choices=("all", "text"),
    ),
    Option(
        "--feed",
        "profiling",
        "response: image + reply text in one user turn (SGM); dialogue: the prompt, then the "
        "reply as the assistant's turn.",
        default="dialogue",
        kind="choice",
        choices=("response", "dialogue"),
    ),
    Option(
        "--hook-points",
        "profiling",
        "Comma-separated PROJECTION:SIDE list (default: the recipe's, the outputs of the MLP "
        "projections).",
    ),
    Option(
        "--neurons",
        "profiling",
        "Profile the classic MLP neurons (inputs of the down projection) instead of the "
        "default hook points.",
        default=False,
        kind="flag",
    ),
    Option(
        "--layers",
        "profiling",
        "Only these post-fusion layers, e.g. '8-31' or '0,2,4'.",
        dest="layer_spec",
    ),
    Option(
        "--responses-dir",
        "profiling",
        "Where pooled responses are stored (resumable); default: a cache folder per run.",
        kind="dir",
    ),
    Option(
        "--keep-responses",
        "profiling",
        "Keep the response store after profiling.",
        default=False,
        kind="flag",
    ),
    # rule
    Option(
        "--rule",
        "rule",
        "aura: alpha = 1 - 2(auroc - 0.5); damp: fixed alpha for the top-k; det0: alpha 0 for "
        "the top-k.",
        default="aura",
        kind="choice",
        choices=("aura", "damp", "det0"),
        unset=True,
    ),
    Option(
        "--threshold",
        "rule",
        "Units with AUROC above this are experts (the SGM code uses 0.3).",
        default=0.5,
        kind="float",
        minimum=0,
        maximum=1,
        unset=True,
    ),
    Option(
        "--top-k",
        "rule",
        "Only the k units with the highest AUROC, across all modules (0: no cap).",
        default=0,
        kind="int",
        minimum=0,
        unset=True,
    ),
    Option(
        "--damp-alpha",
        "rule",
        "The factor of the damp rule.",
        default=0.5,
        kind="float",
        minimum=0,
        unset=True,
    ),
    Option(
        "--strength",
        "rule",
        "Scale the suppression: alpha' = 1 - s(1 - alpha).",
        default=1.0,
        kind="float",
        minimum=0,
        unset=True,
    ),
    # bake
    Option(
        "--overwrite",
        "bake",
        "Replace the output if it exists and is not empty.",
        default=False,
        kind="flag",
    ),
    Option(
        "--expert-layout",
        "bake",
        "How SOURCE stores stacked expert matrices whose shape cannot tell (square ones, when "
        "2 x moe_intermediate_size == hidden_size): out_in [E, out, in] or in_out [E, in, out]. "
        "Needed only when the bake asks for it.",
        kind="choice",
        choices=("out_in", "in_out"),
    ),
    Option(
        "--base-model",
        "publishing",
        "Hub id to name as base_model in the card when SOURCE is a local copy of it.",
    ),
    # verification
    Option(
        "--verify",
        "verification",
        "Verify after baking: layers (each folded MLP block against the hooked source, one "
        "block in memory at a time), full (the whole model's logits; loads it, see "
        "--device-map) or none.",
        default="layers",
        kind="choice",
        choices=("layers", "full", "none"),
        dest="verify_mode",
    ),
    Option(
        "--no-verify",
        "verification",
        "Same as --verify none.",
        default=False,
        kind="flag",
    ),
    Option(
        "--verify-dtype",
        "verification",
        "Precision of the verification forward passes (float32 is exact; halve memory with bf16).",
        default="float32",
        kind="choice",
        choices=("float32", "bfloat16", "float16"),
    ),
    # placement
    Option(
        "--device",
        "placement",
        "Device the model runs on (profiling, evaluation, generation and verification alike): "
        "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps.",
        default="auto",
    ),
    Option(
        "--dtype",
        "placement",
        "Precision the model runs in (auto: float32 on CPU, bfloat16 on a GPU).",
        default="auto",
        kind="choice",
        choices=("auto", "float32", "bfloat16", "float16"),
    ),
    Option(
        "--device-map",
        "placement",
        "Spread the model with accelerate: auto, balanced, balanced_low_0, sequential, or one "
        "device (cpu, cuda:N). Default: auto on a GPU machine, else --device.",
    ),
    Option(
        "--max-memory",
        "placement",
        "Per-device budgets for the device map, e.g. 0=70GiB,1=70GiB,cpu=200GiB.",
        metavar="BUDGETS",
    ),
    Option(
        "--offload-folder",
        "placement",
        "Keep layers that fit no budget on disk here (slow, but any size runs).",
        kind="dir",
    ),
    # tuning
    Option(
        "--workdir",
        "tuning",
        "Where the study, response stores and reference outputs live; a search there resumes "
        "(default: sgm-tune/ beside the output, or ./sgm-tune).",
        kind="dir",
    ),
    Option(
        "--trials",
        "tuning",
        "Trials in all (a resumed search runs the rest).",
        default=40,
        kind="int",
        minimum=1,
    ),
    Option(
        "--tune-seed",
        "tuning",
        "Seed of the split and the sampler: the same seed gives the same search.",
        default=0,
        kind="int",
    ),
    Option(
        "--max-kl",
        "tuning",
        "Damage budget: mean KL divergence from the base's next-token distributions on "
        "non-toxic replies, nats per token.",
        default=0.1,
        kind="float",
        minimum=0,
        min_open=True,
    ),
    Option(
        "--degenerate-margin",
        "tuning",
        "Allowed rise of the share of degenerate replies over the base's.",
        default=0.03,
        kind="float",
        minimum=0,
        maximum=1,
    ),
    Option(
        "--accuracy-margin",
        "tuning",
        "With --eval-set: allowed drop of benign accuracy below the base's.",
        default=0.02,
        kind="float",
        minimum=0,
        maximum=1,
    ),
    Option(
        "--max-refusal-rise",
        "tuning",
        "With --eval-set: over-refusal budget, the allowed rise of benign refusal (replies to "
        "its benign items that decline) over the base's.",
        default=0.05,
        kind="float",
        minimum=0,
        maximum=1,
    ),
    Option(
        "--split",
        "tuning",
        "Fractions of the profile set for profiling, tuning and the held-out report.",
        default="0.5,0.25,0.25",
        dest="split_spec",
    ),
    Option(
        "--knobs",
        "tuning",
        "Knobs to search (also: pooling, edit_ridge); the others keep their option's value. "
        "Left at its default and without --method, the search also chooses the method (sgm, "
        "edit or both: method, edit_layers, edit_strength) when every profiling row has a "
        "prompt.",
        default="rule,strength,top_k,threshold,hook_points,layers,positions",
    ),
    Option(
        "--sampler",
        "tuning",
        "optuna's multi-objective sampler.",
        default="tpe",
        kind="choice",
        choices=("tpe", "nsga2"),
    ),
    Option(
        "--eval-set",
        "tuning",
        "A prompt set whose benign accuracy is also kept within --accuracy-margin (do not use "
        "the set you will report on).",
    ),
    Option(
        "--max-new-tokens",
        "tuning",
        "Length of the greedy replies the judge reads.",
        default=32,
        kind="int",
        minimum=1,
    ),
    Option(
        "--judge",
        "evaluation",
        "profanity (offline classifier), hf:PATH (local text classifier) or openai:URL.",
        default="profanity",
        dest="judge_spec",
    ),
]

OPTIONS: dict[str, Option] = {option.key: option for option in _OPTIONS}
"""Every shared option by its long name (`top-k`)."""
BY_NAME: dict[str, Option] = {option.name: option for option in _OPTIONS}
"""The same options by their Python parameter name (`top_k`, `layer_spec`)."""


def default(key: str) -> Any:
    """The documented default of option `key` (`"top-k"`)."""
    return OPTIONS[key].default


def split_fractions(text: str) -> tuple[float, ...]:
    """`"0.5,0.25,0.25"` -> (0.5, 0.25, 0.25)."""
    return tuple(float(part) for part in text.split(","))
