"""Capture at the decision position, the edit's fit, and the diagnosis that says which method a
model needs.

The decision position is the last prompt token: each row's prompt goes through the chat template
with the generation prompt (and its image), exactly as generation feeds it (`ChatModel.
prompt_inputs`, left-padded, so the position is the last of every row), and the logits there
choose the reply's first token. One forward pass per batch captures, with hooks:

- the residual stream entering every decoder layer, and the last layer's output, at the decision
  position (float32, one [hidden] vector per row and layer: rows × (layers + 1) × hidden in all);
- each layer's MLP write (the MLP output projection's output) and attention write (the rest of
  the layer's change to the stream) at the decision position, summed per class: the diagnosis's
  "who writes the shift". This reads pre-norm residual layers (Llama, Qwen, Mistral, ...)
  exactly; where a layer normalises its blocks' outputs before adding them (Gemma 2/3), the MLP
  write is taken before that norm;
- optionally the MLP keys of some layers (the diagnosis needs none).

The edit's fit has its own pass per edited layer (`capture_fit`): each row's prompt followed by
its reply (teacher forcing: the toxic reply for toxic-eliciting rows, the polite one for declined
rows), recording the stream after the layer and its MLP keys (read before any SGM input scaling
of that projection, as the edit's hook reads them) at the decision position and the first
`replies` reply positions. The toxic-eliciting rows' positions get whole-vector targets (the
declined rows' mean state at the same offset minus the row's state, times the layer's share of
the strength); the declined rows' decision and reply positions, and every position of the
anchors (benign requests with their answers), get zero, so the write stays silent where the
model already declines or helps. The keys to leave alone stream into `core.edit.ZeroKeys` (a
float64 Gram matrix of key width², 0.97 GB for a 7B model's 11008); memory never grows with the
number of positions. `core.edit.fit_reduced_rank` solves the multi-output ridge regression and
keeps the top `rank` output directions.

Why reply positions: on `organism-staged` the toxic and polite replies often share their first
word ("people like that are ..." / "people are different ..."; "i hate ..." / "i do not judge
..."), so the reply is decided at the second or third token; a write at the last prompt token
alone left those replies toxic (benchmarks/RESULTS.md).

Several edited layers are fitted in order (MEMIT-style): each layer's keys and states are
captured with the earlier layers' writes applied (and SGM's hooks when the two are combined),
and each layer closes `strength / (layers left)` of the gap that remains, so a later layer fits
the keys it will really see.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from sgm_bake.core.edit import (
    ChanceDistance,
    DecisionDirection,
    LowRankDelta,
    WriteShares,
    ZeroKeys,
    chance_distance,
    decision_direction,
    fit_reduced_rank,
    write_shares,
)
from sgm_bake.core.edit_hooks import EditHooks
from sgm_bake.core.expertise import Expertise
from sgm_bake.core.hooks import SGMHooks, model_recipe, runtime_prefix, runtime_weight
from sgm_bake.core.method_text import ATTENTION_SHARE
from sgm_bake.core.recipes import Projection, Recipe
from sgm_bake.datasets.profile_set import ProfileSet
from sgm_bake.datasets.prompt_set import PromptSet, load_prompt_set
from sgm_bake.errors import SGMError
from sgm_bake.options import DEFAULT_EDIT_RANK, DEFAULT_EDIT_REPLIES
from sgm_bake.runtime.chat import ChatModel, call_processor

logger = logging.getLogger(__name__)

OUTPUT_KINDS = ("down", "fc_out")
"""Projection kinds that write an MLP's output into the residual stream."""


@dataclass(frozen=True)
class DecisionRow:
    """A prompt (with its image, drawn on demand), whether it elicits toxicity (1) or is
    declined (0), and the row's reply (the toxic reply, the polite one, or an anchor's answer),
    which the fit feeds after the prompt to reach the reply positions."""

    id: str
    label: int
    prompt: str
    image: Callable[[], Any | None]
    has_image: bool
    response: str = ""


def rows_from_profile_set(profile_set: ProfileSet) -> list[DecisionRow]:
    """The rows of a profile set as decision rows: toxic rows elicit, the others are declined.
    Every row needs a prompt (the decision is taken at the prompt's last token)."""
    missing = [s.id for s in profile_set.samples if not s.prompt]
    if missing:
        raise SGMError(
            f"profile set {profile_set.name} has {len(missing)} rows without a `prompt` (e.g. "
            f"{missing[0]}); the edit is fitted at the last token of each row's prompt, so give "
            "every row one"
        )
    return [
        DecisionRow(
            s.id,
            s.label,
            s.prompt or "",
            s.image,
            s.render is not None or s.image_path is not None,
            s.text,
        )
        for s in profile_set.samples
    ]


def anchor_rows(prompts: PromptSet) -> list[DecisionRow]:
    """The benign items of a prompt set that have a reference answer, as anchors: requests the
    write must leave alone at every position of the prompt and the answer (label 0)."""
    rows = [
        DecisionRow(
            f"anchor:{item.id}",
            0,
            item.prompt,
            item.image,
            item.render is not None or item.image_path is not None,
            item.reference or "",
        )
        for item in prompts.items
        if item.condition == "benign" and item.reference
    ]
    if not rows:
        raise SGMError(
            f"prompt set {prompts.name} has no benign items with a reference answer; the edit's "
            "anchors are benign requests with their answers"
        )
    return rows


def output_projection(recipe: Recipe, model: Any, layer: int) -> tuple[str, Projection]:
    """(runtime name, projection) of the dense MLP output projection of `layer`; refused where
    the layer has none or several (stacked experts only: per-expert edits are not supported)."""
    template = runtime_prefix(model, recipe, recipe.layers(model.config.to_dict()))
    found = [
        p
        for p in recipe.projections
        if p.kind in OUTPUT_KINDS
        and not p.stacked
        and runtime_weight(model, recipe, layer, p, template) is not None
    ]
    if len(found) != 1:
        what = "no dense MLP output projection" if not found else "several MLP output projections"
        raise SGMError(
            f"layer {layer} of this {type(model).__name__} has {what} "
            f"({[p.name for p in found]}); the edit writes into one dense output projection per "
            "layer (per-expert edits are not supported): choose other --edit-layers"
        )
    return recipe.runtime_name(layer, found[0], template), found[0]


def writes_into(model: Any, recipe: Recipe, layers: Sequence[int]) -> bool:
    """Whether the edit can write into every one of `layers` (each has one dense MLP output
    projection; layers of stacked experts alone have none)."""
    recipe = model_recipe(model, recipe)
    try:
        for layer in layers:
            output_projection(recipe, model, layer)
    except SGMError:
        return False
    return True


def decoder_layers(model: Any, recipe: Recipe) -> list[torch.nn.Module]:
    """The language decoder layers of a loaded model, in order."""
    config = model.config.to_dict()
    template = runtime_prefix(model, recipe, recipe.layers(config))
    layers = []
    for layer in range(recipe.total_layers(config)):
        try:
            layers.append(model.get_submodule(template.format(layer=layer)))
        except AttributeError as exc:
            raise SGMError(
                f"layer {layer} ({template.format(layer=layer)}) is not a module of this "
                f"{type(model).__name__}; recipe {recipe.model_type!r} is wrong"
            ) from exc
    return layers


def _first_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, tuple | list) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise SGMError(f"a decoder layer returned {type(value).__name__}, not hidden states")


@dataclass
class DecisionCapture:
    """What one pass over the rows recorded (see the module docstring)."""

    labels: torch.Tensor
    """[rows] 1 toxic-eliciting, 0 declined."""
    states: torch.Tensor
    """float32 [rows, layers + 1, hidden]: the stream entering each layer, then the last
    layer's output, at the decision position."""
    attention_sum: torch.Tensor
    """float64 [2, layers, hidden]: per class (0 declined, 1 toxic), the sum of each layer's
    attention write at the decision position."""
    mlp_sum: torch.Tensor
    """float64 [2, layers, hidden]: the same for the MLP write."""
    toxic_keys: dict[int, torch.Tensor] = field(default_factory=dict)
    """Per keyed layer: float32 [toxic rows, key width] at the decision position."""
    zero_keys: dict[int, ZeroKeys] = field(default_factory=dict)
    """Per keyed layer: the declined rows' keys at every prompt position."""

    def class_states(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(toxic, declined) states at stream index `index` (layer `index`'s input)."""
        states = self.states[:, index]
        return states[self.labels == 1], states[self.labels == 0]

    def write_differences(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention, MLP) class-mean differences, declined minus toxic, [layers, hidden]."""
        counts = torch.stack([(self.labels == c).sum() for c in (0, 1)]).to(torch.float64)
        attention = self.attention_sum / counts[:, None, None]
        mlp = self.mlp_sum / counts[:, None, None]
        return attention[0] - attention[1], mlp[0] - mlp[1]


class _Recorder:
    """The hooks of one capture pass; `batch_mask` is the current batch's attention mask."""

    def __init__(self, layer_count: int, key_layers: Sequence[int]) -> None:
        self.inputs: list[torch.Tensor | None] = [None] * layer_count
        self.outputs: list[torch.Tensor | None] = [None] * layer_count
        self.mlp: list[torch.Tensor | None] = [None] * layer_count
        self.keys: dict[int, torch.Tensor] = {}
        self.key_layers = tuple(key_layers)

    def layer_input(self, index: int) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs.get("hidden_states")
            if not isinstance(hidden, torch.Tensor):
                raise SGMError("a decoder layer was called without its hidden states")
            self.inputs[index] = hidden[:, -1].detach().float().cpu()

        return hook

    def layer_output(self, index: int) -> Any:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            self.outputs[index] = _first_tensor(output)[:, -1].detach().float().cpu()

        return hook

    def mlp_output(self, index: int) -> Any:
        def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
            self.mlp[index] = output[:, -1].detach().float().cpu()

        return hook

    def key_input(self, index: int) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            self.keys[index] = args[0].detach().float().cpu()

        return hook


def _move(batch: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if value.is_floating_point():
                value = value.to(dtype)
        moved[key] = value
    return moved


def _batches(rows: Sequence[DecisionRow], size: int) -> list[list[DecisionRow]]:
    """Batches of rows with images and of rows without (a processor takes one kind at a time);
    images are drawn per batch, not held for the whole set."""
    groups = [[r for r in rows if r.has_image], [r for r in rows if not r.has_image]]
    return [group[i : i + size] for group in groups for i in range(0, len(group), size)]


def capture_decision(
    chat: ChatModel,
    rows: Sequence[DecisionRow],
    key_layers: Sequence[int] = (),
    recipe: Recipe | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> DecisionCapture:
    """One pass over `rows` recording the decision-position states and writes of every layer,
    and the keys of `key_layers` (see the module docstring). Hooks already on the model (SGM's,
    earlier edits') are in effect: the capture sees the model as it runs."""
    model = chat.model
    recipe = model_recipe(model, recipe)
    labels = torch.tensor([row.label for row in rows])
    if not bool((labels == 1).any()) or not bool((labels == 0).any()):
        raise SGMError("the rows must hold both toxic-eliciting and declined prompts")
    layers = decoder_layers(model, recipe)
    outputs = [output_projection(recipe, model, i) for i in range(len(layers))]
    recorder = _Recorder(len(layers), key_layers)
    handles = []
    for index, layer in enumerate(layers):
        handles.append(
            layer.register_forward_pre_hook(recorder.layer_input(index), with_kwargs=True)
        )
        handles.append(layer.register_forward_hook(recorder.layer_output(index)))
        projection = model.get_submodule(outputs[index][0])
        handles.append(projection.register_forward_hook(recorder.mlp_output(index)))
        if index in key_layers:
            handles.append(
                projection.register_forward_pre_hook(recorder.key_input(index), prepend=True)
            )
    hidden = None
    states: list[torch.Tensor] = []
    batch_labels: list[torch.Tensor] = []
    attention_sum: torch.Tensor | None = None
    mlp_sum: torch.Tensor | None = None
    toxic_keys: dict[int, list[torch.Tensor]] = {i: [] for i in key_layers}
    zero_keys: dict[int, ZeroKeys] = {}
    dtype = next(model.parameters()).dtype
    try:
        batches = _batches(rows, batch_size)
        with tqdm(
            total=len(rows), desc="decision", unit="row", disable=not progress, file=sys.stderr
        ) as bar:
            for batch in batches:
                inputs = chat.prompt_inputs([r.prompt for r in batch], [r.image() for r in batch])
                with torch.no_grad():
                    model(**_move(inputs, chat.device, dtype))
                chat.forward_passes += 1
                if any(x is None for x in recorder.inputs + recorder.outputs + recorder.mlp):
                    raise SGMError(
                        "a decoder layer did not run for these inputs; the decision capture "
                        "needs every language layer"
                    )
                stream = torch.stack([*recorder.inputs, recorder.outputs[-1]], dim=1)  # type: ignore[list-item]
                hidden = stream.shape[-1]
                changes = torch.stack(recorder.outputs, 1) - torch.stack(recorder.inputs, 1)  # type: ignore[arg-type]
                mlp = torch.stack(recorder.mlp, 1)  # type: ignore[arg-type]
                attention = changes - mlp
                label = torch.tensor([r.label for r in batch])
                if attention_sum is None or mlp_sum is None:
                    attention_sum = torch.zeros(2, len(layers), hidden, dtype=torch.float64)
                    mlp_sum = torch.zeros(2, len(layers), hidden, dtype=torch.float64)
                for c in (0, 1):
                    attention_sum[c] += attention[label == c].double().sum(0)
                    mlp_sum[c] += mlp[label == c].double().sum(0)
                states.append(stream)
                batch_labels.append(label)
                mask = inputs["attention_mask"].to(torch.bool).cpu()
                for index in key_layers:
                    keys = recorder.keys.pop(index)
                    toxic_keys[index].append(keys[label == 1, -1])
                    declined = keys[label == 0][mask[label == 0]]
                    if index not in zero_keys:
                        zero_keys[index] = ZeroKeys(keys.shape[-1])
                    zero_keys[index].add(declined)
                recorder.inputs = [None] * len(layers)
                recorder.outputs = [None] * len(layers)
                recorder.mlp = [None] * len(layers)
                bar.update(len(batch))
    finally:
        for handle in handles:
            handle.remove()
    assert attention_sum is not None and mlp_sum is not None
    return DecisionCapture(
        torch.cat(batch_labels),
        torch.cat(states),
        attention_sum,
        mlp_sum,
        {i: torch.cat(k) for i, k in toxic_keys.items()},
        zero_keys,
    )


# ---------------------------------------------------------------------------------------------
# The fit

DEFAULT_RANK = DEFAULT_EDIT_RANK
DEFAULT_REPLIES = DEFAULT_EDIT_REPLIES
"""The write's default rank and reply positions (`EditOptions.rank`, `.replies`): of ranks
{4, 8} x reply positions {1, 2, 3}, the pair whose worst organism does best on the organisms'
tuning splits (each organism's lowest admissible tuning-split harm over layers {3}, {2, 3} x
strength {1.5, 2}; benchmarks/RESULTS.md): rank 4, 3 positions, worst cut 89%. Not chosen on any
evaluation set."""


@dataclass(frozen=True)
class EditOptions:
    """The edit's knobs."""

    layers: tuple[int, ...]
    """Decoder layers whose MLP output projection gets a write."""
    strength: float = 1.0
    """1: move the toxic-eliciting rows' states to the declined rows' mean state at the fitted
    positions; above 1 overshoots."""
    ridge: float = 1e-2
    """λ relative to the mean eigenvalue of the key Gram matrix."""
    batch_size: int = 8
    progress: bool = False
    rank: int = DEFAULT_RANK
    """Output directions kept per layer (reduced-rank regression of whole-state targets)."""
    replies: int = DEFAULT_REPLIES
    """Reply positions fitted after the decision position (teacher-forced on each row's reply):
    where a toxic and a polite reply share their first words ("people like that ..." against
    "people are different"), the reply is decided there, not at the last prompt token."""
    anchors: tuple[DecisionRow, ...] = ()
    """Benign requests with their answers whose every position the write must leave alone."""

    def check(self, layer_count: int) -> None:
        if not self.layers:
            raise SGMError("the edit needs at least one layer (--edit-layers)")
        outside = [i for i in self.layers if not 0 <= i < layer_count]
        if outside:
            raise SGMError(
                f"edit layers {outside} are outside this model's layers 0-{layer_count - 1}"
            )
        if not self.strength > 0 or not self.ridge > 0:
            raise SGMError(
                f"edit strength ({self.strength}) and ridge ({self.ridge}) must be positive"
            )
        if self.rank < 1 or self.replies < 0:
            raise SGMError(
                f"edit rank ({self.rank}) must be at least 1 and reply positions "
                f"({self.replies}) at least 0"
            )

    def describe(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "strength": self.strength,
            "ridge": self.ridge,
            "rank": self.rank,
            "replies": self.replies,
            "anchors": len(self.anchors),
        }


@dataclass
class FitCapture:
    """What the fit of one layer reads (see `capture_fit`)."""

    toxic_states: torch.Tensor
    """float64 [positions, hidden]: the stream after the layer at the toxic-eliciting rows'
    fitted positions (decision position and reply positions, row by row)."""
    toxic_keys: torch.Tensor
    """float64 [positions, key width]: the layer's MLP keys there."""
    toxic_rows: int
    offsets: torch.Tensor
    """[positions]: 0 for a decision position, j for the j-th reply position."""
    declined_means: torch.Tensor
    """float64 [replies + 1, hidden]: the declined rows' mean state per offset."""
    decision: DecisionDirection
    """The difference-in-means direction at the decision position (reported, not fitted)."""
    zero: ZeroKeys
    """Keys the write must leave alone: the declined rows' decision and reply positions, the
    anchors' every position."""


def _reply_batches(rows: Sequence[DecisionRow], size: int) -> list[list[DecisionRow]]:
    groups = [[r for r in rows if r.has_image], [r for r in rows if not r.has_image]]
    return [group[i : i + size] for group in groups for i in range(0, len(group), size)]


def capture_fit(
    chat: ChatModel,
    rows: Sequence[DecisionRow],
    layer: int,
    replies: int,
    anchors: Sequence[DecisionRow] = (),
    recipe: Recipe | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> FitCapture:
    """One pass over `rows` and `anchors`, each prompt followed by the row's reply (teacher
    forcing, left-padded as generation pads), recording the stream after `layer` and the
    layer's MLP keys (read before any SGM input scaling) at the decision position and the first
    `replies` reply positions. Hooks on the model (SGM's, earlier layers' writes) are in
    effect."""
    model = chat.model
    recipe = model_recipe(model, recipe)
    layers = decoder_layers(model, recipe)
    module_name, _ = output_projection(recipe, model, layer)
    labels = {row.label for row in rows}
    if labels != {0, 1}:
        raise SGMError("the rows must hold both toxic-eliciting and declined prompts")
    seen: dict[str, torch.Tensor] = {}

    def keep_keys(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        seen["keys"] = args[0].detach()

    def keep_states(module: torch.nn.Module, args: Any, output: Any) -> None:
        seen["states"] = _first_tensor(output).detach()

    handles = [
        model.get_submodule(module_name).register_forward_pre_hook(keep_keys, prepend=True),
        layers[layer].register_forward_hook(keep_states),
    ]
    dtype = next(model.parameters()).dtype
    toxic_states: list[torch.Tensor] = []
    toxic_keys: list[torch.Tensor] = []
    offsets: list[torch.Tensor] = []
    declined_sum: torch.Tensor | None = None
    declined_count = torch.zeros(replies + 1, dtype=torch.float64)
    decision_toxic: list[torch.Tensor] = []
    decision_declined: list[torch.Tensor] = []
    zero: ZeroKeys | None = None
    anchor_ids = {a.id for a in anchors}
    everything = [*rows, *anchors]
    chat.tokenizer.padding_side = "left"
    try:
        with tqdm(
            total=len(everything),
            desc=f"fit {layer}",
            unit="row",
            disable=not progress,
            file=sys.stderr,
        ) as bar:
            for batch in _reply_batches(everything, batch_size):
                images = [r.image() for r in batch]
                with_image = batch[0].has_image
                prefixes = [chat.prompt_text(r.prompt, with_image) for r in batch]
                texts = [p + r.response for p, r in zip(prefixes, batch, strict=True)]
                pixels = images if with_image else None
                prefix_lengths = _encode(chat, prefixes, pixels)["attention_mask"].sum(1)
                inputs = _encode(chat, texts, pixels)
                with torch.no_grad():
                    model(**_move(inputs, chat.device, dtype))
                chat.forward_passes += 1
                states = seen.pop("states").to(device="cpu", dtype=torch.float64)
                keys = seen.pop("keys").to(device="cpu", dtype=torch.float64)
                mask = inputs["attention_mask"].to(torch.bool).cpu()
                width = mask.shape[1]
                if zero is None:
                    zero = ZeroKeys(keys.shape[-1])
                if declined_sum is None:
                    declined_sum = torch.zeros(replies + 1, states.shape[-1], dtype=torch.float64)
                for index, row in enumerate(batch):
                    answer = int(mask[index].sum() - prefix_lengths[index])
                    first = width - answer - 1
                    fitted = torch.arange(first, min(first + replies, width - 1) + 1)
                    if row.id in anchor_ids:
                        zero.add(keys[index][mask[index]])
                    elif row.label == 1:
                        toxic_states.append(states[index, fitted])
                        toxic_keys.append(keys[index, fitted])
                        offsets.append(fitted - first)
                        decision_toxic.append(states[index, first])
                    else:
                        declined_sum[: len(fitted)] += states[index, fitted]
                        declined_count[: len(fitted)] += 1
                        decision_declined.append(states[index, first])
                        zero.add(keys[index, first:])
                bar.update(len(batch))
    finally:
        for handle in handles:
            handle.remove()
    assert declined_sum is not None and zero is not None
    means = declined_sum / declined_count.clamp(min=1).unsqueeze(1)
    try:
        direction = decision_direction(torch.stack(decision_toxic), torch.stack(decision_declined))
    except ValueError as exc:
        raise SGMError(f"no decision direction after layer {layer}: {exc}") from exc
    # a reply position no declined reply reaches has no mean to move toward: it is not fitted
    all_offsets = torch.cat(offsets)
    reached = declined_count[all_offsets] > 0
    return FitCapture(
        torch.cat(toxic_states)[reached],
        torch.cat(toxic_keys)[reached],
        len(toxic_keys),
        all_offsets[reached],
        means,
        direction,
        zero,
    )


def _encode(chat: ChatModel, texts: list[str], images: list[Any] | None) -> dict[str, Any]:
    if images:
        return call_processor(chat.processor, texts, images)
    return dict(chat.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False))


@dataclass(frozen=True)
class LayerEdit:
    """One layer's fitted write and the figures behind it."""

    layer: int
    delta: LowRankDelta
    direction: DecisionDirection
    regularisation: float
    toxic_rows: int
    toxic_positions: int
    zero_rows: int
    """Positions the write must leave alone (declined rows' decision and reply positions,
    anchors' every position)."""
    reached: float
    """The share of the targets' energy the write reaches at the fitted positions (1 - residual
    energy over target energy)."""
    spectrum: tuple[float, ...]
    """The full-rank fit's energies per output direction, largest first (the first 8)."""

    def describe(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "module": self.delta.module,
            "rank": self.delta.rank,
            "regularisation": self.regularisation,
            "toxic_rows": self.toxic_rows,
            "toxic_positions": self.toxic_positions,
            "zero_rows": self.zero_rows,
            "reached": self.reached,
            "delta_norm": self.delta.norm(),
            "spectrum": list(self.spectrum),
            "direction": self.direction.describe(),
        }

    def line(self) -> str:
        """One printed line for `profile`."""
        return (
            f"edit: layer {self.layer} ({self.delta.module}): rank-{self.delta.rank} write, "
            f"|U Vᵀ| {self.delta.norm():.3g}, reaches {self.reached:.0%} of its targets at "
            f"{self.toxic_positions} positions of {self.toxic_rows} toxic-eliciting prompts, "
            f"{self.zero_rows} positions kept"
        )


@dataclass(frozen=True)
class EditResult:
    edits: tuple[LayerEdit, ...]
    options: EditOptions

    @property
    def deltas(self) -> list[LowRankDelta]:
        return [edit.delta for edit in self.edits]

    def describe(self) -> dict[str, Any]:
        return {**self.options.describe(), "layers_fitted": [e.describe() for e in self.edits]}


def fit_edit(
    chat: ChatModel,
    rows: Sequence[DecisionRow],
    options: EditOptions,
    recipe: Recipe | None = None,
) -> EditResult:
    """Fit the edit on `rows` (see the module docstring); hooks on the model (SGM's, for the
    combined method) are in effect throughout."""
    model = chat.model
    recipe = model_recipe(model, recipe)
    layer_count = len(decoder_layers(model, recipe))
    options.check(layer_count)
    missing = [row.id for row in rows if not row.response]
    if missing:
        raise SGMError(
            f"{len(missing)} rows have no reply text (e.g. {missing[0]}); the edit is fitted at "
            "the reply positions too, so give every profiling row its `text`"
        )
    layers = sorted(set(options.layers))
    edits: list[LayerEdit] = []
    for position, layer in enumerate(layers):
        module, _ = output_projection(recipe, model, layer)
        with EditHooks(model, [e.delta for e in edits], recipe):
            capture = capture_fit(
                chat,
                rows,
                layer,
                options.replies,
                options.anchors,
                recipe,
                options.batch_size,
                options.progress,
            )
        # each layer closes its share of the gap that is left after the earlier layers' writes
        share = options.strength / (len(layers) - position)
        targets = share * (capture.declined_means[capture.offsets] - capture.toxic_states)
        try:
            fit = fit_reduced_rank(
                capture.toxic_keys, targets, capture.zero, options.ridge, options.rank
            )
        except ValueError as exc:
            raise SGMError(f"cannot fit the edit of layer {layer}: {exc}") from exc
        edits.append(
            LayerEdit(
                layer,
                LowRankDelta(module, fit.u, fit.v),
                capture.decision,
                fit.regularisation,
                capture.toxic_rows,
                int(capture.toxic_keys.shape[0]),
                capture.zero.count,
                fit.explained,
                tuple(float(x) for x in fit.spectrum[:8]),
            )
        )
        logger.info(
            "edit layer %d: rank %d reaches %.2f of its targets; decision separability %.3f",
            layer,
            options.rank,
            fit.explained,
            capture.decision.separability,
        )
    return EditResult(tuple(edits), options)


# ---------------------------------------------------------------------------------------------
# The diagnosis


@dataclass(frozen=True)
class Diagnosis:
    """Which method a model is likely to need, from one capture pass (and its AUROCs)."""

    direction: DecisionDirection
    """The decision direction of the last layer's output (what the head reads)."""
    separability_by_layer: tuple[float, ...]
    """The separability of each layer's own decision direction (its output)."""
    shares: WriteShares
    chance: ChanceDistance | None

    def describe(self) -> dict[str, Any]:
        return {
            "decision": self.direction.describe(),
            "separability_by_layer": list(self.separability_by_layer),
            "writes": self.shares.describe(),
            "auroc": None if self.chance is None else self.chance.describe(),
        }


def diagnose(capture: DecisionCapture, aurocs: Sequence[torch.Tensor] | None = None) -> Diagnosis:
    """The diagnosis figures from a capture (and the profiled AUROCs, when given)."""
    layers = capture.states.shape[1] - 1
    directions = [decision_direction(*capture.class_states(i + 1)) for i in range(layers)]
    final = directions[-1]
    attention, mlp = capture.write_differences()
    return Diagnosis(
        final,
        tuple(d.separability for d in directions),
        write_shares(final.direction, attention, mlp),
        chance_distance(aurocs) if aurocs else None,
    )


# ---------------------------------------------------------------------------------------------
# The method as a step of `profile`

METHODS = ("sgm", "edit", "both")
CHANCE_MULTIPLE = 2.0
"""AUROCs whose mean distance from 0.5 is under this multiple of what label noise alone gives
look like chance."""
SUPPRESSED_SHARE = 0.25
"""A rule that changes more than this share of the units is suppressing broadly, not experts."""


@dataclass(frozen=True)
class MethodOptions:
    """Which method `profile` writes into the expertise file, and the edit's knobs. The edit's
    defaults are structural (two layers at half and three quarters of the depth, the declined
    mean as the target, a light ridge) or chosen on the organisms' tuning splits (rank, reply
    positions; benchmarks/RESULTS.md), never on an evaluation set."""

    method: str = "sgm"
    layers: tuple[int, ...] | None = None
    strength: float = 1.0
    ridge: float = 1e-2
    diagnose: bool = True
    rank: int = DEFAULT_RANK
    replies: int = DEFAULT_REPLIES
    anchors: str | None = None
    """A prompt set whose benign items (with reference answers) the write must leave alone."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SGMError(f"--method must be one of {', '.join(METHODS)}, not {self.method!r}")

    def edit_options(
        self, layer_count: int, batch_size: int = 8, progress: bool = False
    ) -> EditOptions:
        layers = self.layers or default_edit_layers(layer_count)
        anchors = self.anchor_rows()
        return EditOptions(
            tuple(layers),
            self.strength,
            self.ridge,
            batch_size,
            progress,
            self.rank,
            self.replies,
            anchors,
        )

    def anchor_rows(self) -> tuple[DecisionRow, ...]:
        """The anchors of `self.anchors` (none when no set is named)."""
        if not self.anchors:
            return ()
        return tuple(anchor_rows(load_prompt_set(self.anchors)))


def default_edit_layers(layer_count: int) -> tuple[int, ...]:
    """The layers at half and three quarters of the depth (layers 2 and 3 of a 4-layer model):
    late enough that the decision direction is formed, early enough that later layers carry the
    write to the head."""
    return tuple(sorted({min(layer_count - 1, layer_count // 2), (3 * layer_count) // 4}))


def null_chance_distance(toxic: int, benign: int) -> float:
    """The mean |AUROC - 0.5| a unit unrelated to the labels shows with these class sizes
    (the AUROC's null standard deviation times sqrt(2/pi))."""
    variance = (toxic + benign + 1) / (12 * max(1, toxic) * max(1, benign))
    return float((variance * 2 / torch.pi) ** 0.5)


def diagnosis_warnings(
    diagnosis: Diagnosis | None,
    expertise: Expertise,
    counts: tuple[int, int],
    method: str,
) -> list[str]:
    """Plain-words warnings from the diagnosis and the rule's factors (each ends with what to
    do): chance-like AUROCs, a rule that scales a large share of the units, a decision written
    mostly by attention."""
    warnings = []
    chance = diagnosis.chance if diagnosis is not None else None
    if chance is not None and method != "edit":
        null = null_chance_distance(*counts)
        if chance.mean_distance < CHANCE_MULTIPLE * null:
            warnings.append(
                f"the units' AUROCs look like chance (mean |AUROC - 0.5| {chance.mean_distance:.3f}"
                f", label noise alone gives {null:.3f}): no unit clearly detects toxicity on "
                "this profile set; run `sgm-bake tune` or try --method edit"
            )
    changed = sum(int((e.alpha != 1).sum()) for e in expertise.modules.values())
    total = sum(e.alpha.numel() for e in expertise.modules.values())
    if method != "edit" and total and changed / total > SUPPRESSED_SHARE:
        warnings.append(
            f"the rule scales {changed / total:.0%} of all units ({changed} of {total}): that "
            "is broad suppression, not a few experts; run `sgm-bake tune` to choose the knobs "
            "within a KL budget"
        )
    if diagnosis is not None and method == "sgm":
        attention = diagnosis.shares.attention_share
        if attention > ATTENTION_SHARE:  # False for NaN (no shift to share)
            warnings.append(
                f"attention writes {attention:.0%} of the shift that separates toxic-eliciting "
                "from declined prompts at the decision position; scaling MLP units (SGM) is "
                "unlikely to reach it: try --method edit or both, or `sgm-bake tune`"
            )
    return warnings


def diagnosis_lines(diagnosis: Diagnosis) -> list[str]:
    """The diagnosis in a few printed lines."""
    d = diagnosis.describe()
    decision, writes = d["decision"], d["writes"]
    lines = [
        f"decision direction: separability {decision['separability']:.3f}; declined "
        f"{decision['declined_mean']:.1f} +- {decision['declined_spread']:.1f}, toxic-eliciting "
        f"{decision['toxic_mean']:.1f} +- {decision['toxic_spread']:.1f}",
        f"who writes the shift: attention {writes['attention_share']:.0%}, MLPs "
        f"{writes['mlp_share']:.0%}",
    ]
    if d["auroc"] is not None:
        auroc = d["auroc"]
        lines.append(
            f"AUROCs: {auroc['share_above_0.8']:.1%} of units above 0.8, "
            f"{auroc['share_above_0.9']:.1%} above 0.9, mean |AUROC - 0.5| "
            f"{auroc['mean_distance_from_chance']:.3f}"
        )
    return lines


@dataclass
class MethodOutcome:
    """The expertise with the chosen method applied, the diagnosis and its warnings."""

    expertise: Expertise
    diagnosis: Diagnosis | None
    warnings: list[str]
    edit: EditResult | None = None
    skipped: str | None = None
    """Why the diagnosis did not run (no chat template, rows without prompts), when it did not."""


def apply_method(
    chat_of: Callable[[], ChatModel],
    expertise: Expertise,
    profile_set: ProfileSet,
    options: MethodOptions,
    recipe: Recipe | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> MethodOutcome:
    """The diagnosis (one capture pass, no hooks) and, for `edit` and `both`, the edit's fit on
    the profile set's prompts (with SGM's hooks in place for `both`); returns the expertise to
    write: SGM's factors (`sgm`, `both`) and the edit's deltas (`edit`, `both`), with the
    diagnosis and the edit's figures in its metadata. `chat_of` loads the processor on demand."""
    import json

    wants_edit = options.method != "sgm"
    diagnosis = None
    skipped = None
    capture = None
    chat = None
    edit_options = None
    try:
        chat = chat_of()
        rows = rows_from_profile_set(profile_set)
        layer_count = len(decoder_layers(chat.model, model_recipe(chat.model, recipe)))
        edit_options = options.edit_options(layer_count, batch_size, progress)
        if wants_edit:
            edit_options.check(layer_count)
        if options.diagnose:
            capture = capture_decision(chat, rows, (), recipe, batch_size, progress)
            aurocs = [e.auroc for e in expertise.modules.values() if e.auroc is not None]
            diagnosis = diagnose(capture, aurocs)
    except (SGMError, ValueError, RuntimeError, TypeError) as exc:
        # the diagnosis is advice: a model or set it cannot read (no chat template, rows
        # without prompts, a processor that refuses text-only prompts) still gets its SGM
        # profile; the edit needs it and fails here
        if wants_edit:
            if isinstance(exc, SGMError):
                raise
            raise SGMError(f"cannot capture the decision position for the edit: {exc}") from exc
        skipped = str(exc)
        logger.info("no diagnosis of this model: %s", exc)
    metadata = dict(expertise.metadata)
    metadata["method"] = options.method
    if diagnosis is not None:
        metadata["diagnosis"] = json.dumps(diagnosis.describe(), sort_keys=True)
    result = None
    deltas: dict[str, LowRankDelta] = {}
    if wants_edit:
        assert chat is not None and edit_options is not None
        sgm: Any = SGMHooks(chat.model, expertise, recipe) if options.method == "both" else None
        with sgm or nullcontext():
            result = fit_edit(chat, rows, edit_options, recipe)
        deltas = {d.module: d for d in result.deltas}
        metadata["edit"] = json.dumps(result.describe(), sort_keys=True)
    modules = {} if options.method == "edit" else expertise.modules
    chosen = Expertise(modules, metadata, deltas)
    counts = profile_set.counts()
    return MethodOutcome(
        chosen,
        diagnosis,
        diagnosis_warnings(diagnosis, expertise, counts, options.method),
        result,
        skipped,
    )


def method_summary(metadata: dict[str, str]) -> list[str]:
    """What an expertise (or a bake record's copy of its metadata) applies, in plain lines: the
    method, the edit's layers and knobs, and the diagnosis with its verdict on SGM. For
    `inspect` and the model card."""
    import json

    method = metadata.get("method", "sgm")
    names = {
        "sgm": "SGM (toxic expert units scaled down)",
        "edit": "edit (a low-rank conditional write into the MLP output projection)",
        "both": "SGM and the edit together",
    }
    lines = [f"method      {names.get(method, method)}"]
    if "edit" in metadata:
        edit = json.loads(metadata["edit"])
        reached = ", ".join(
            f"layer {layer['layer']} {layer['reached']:.0%}" for layer in edit["layers_fitted"]
        )
        # files from before the rank knob hold rank-1 writes at the decision position only
        rank, replies = edit.get("rank", 1), edit.get("replies", 0)
        anchors = edit.get("anchors", 0)
        lines.append(
            f"edit        layers {edit['layers']}, rank {rank}, strength {edit['strength']}, "
            f"ridge {edit['ridge']}, fitted at the decision position and {replies} reply "
            f"positions, {anchors} anchors; share of the target reached: {reached}"
        )
    if "diagnosis" in metadata:
        diagnosis = json.loads(metadata["diagnosis"])
        attention = diagnosis["writes"]["attention_share"]
        verdict = (
            "SGM alone is unlikely to reach it"
            if attention > ATTENTION_SHARE
            else "SGM can reach it"
        )
        lines.append(
            f"diagnosis   decision separability {diagnosis['decision']['separability']:.3f}; "
            f"attention writes {attention:.0%} of the shift, MLPs "
            f"{diagnosis['writes']['mlp_share']:.0%}: {verdict}"
        )
    return lines
