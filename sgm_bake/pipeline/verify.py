"""Verify a bake: the baked weights must reproduce the source model run with SGM hooks.

One model is loaded (the source, in float32 by default). It runs a few fixed prompts with the
hooks attached (the reference) and without (to show the size of the intervention); then only the
folded tensors are swapped in from the baked files and the same prompts run again. Before the
swap, each swapped parameter is checked to hold exactly the source checkpoint tensor the recipe
maps it to, which checks the module-name/checkpoint-key map itself.

Tolerance on the largest logit difference, relative to the largest reference logit. Each folded
weight is rounded once to its stored dtype, a relative error of at most u = 2^-24 (fp32),
2^-11 (fp16) or 2^-8 (bf16). Independent per-weight errors give each dot product a relative error
of order u, compounding like the square root of the depth: about 6u for a 32-layer model. We allow
about 10u for fp16 (5e-3) and bf16 (2e-2), and 1e-4 for fp32, where float32 summation order (not
the rounding) dominates. Computing the check itself in half precision adds its own noise: 1e-2 for
fp16 and 5e-2 for bf16 passes. A wrong fold (a missed tensor, a transposed layout) moves logits by
the size of the intervention itself, reported beside the difference as the intervention effect.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from sgm_bake.core.expertise import Expertise, load_expertise
from sgm_bake.core.hooks import SGMHooks
from sgm_bake.core.recipes import Recipe, parse_recipe, recipe_for_config, resolve_checkpoint_layout
from sgm_bake.errors import SGMError
from sgm_bake.io.checkpoint import Checkpoint, open_checkpoint
from sgm_bake.io.tensors import TensorSource
from sgm_bake.pipeline.bake import expertise_path, tensor_shapes
from sgm_bake.publish.refresh import rewrite_card
from sgm_bake.record import BakeRecord, Verification, read_record
from sgm_bake.runtime.batch import to_device
from sgm_bake.runtime.chat import call_processor
from sgm_bake.runtime.loading import CPU, OpenedSource, Placement, input_device, load_model
from sgm_bake.runtime.memory import PeakMemory

logger = logging.getLogger(__name__)

TOLERANCE = {"F64": 1e-4, "F32": 1e-4, "F16": 5e-3, "BF16": 2e-2}
COMPUTE_TOLERANCE = {torch.float32: 0.0, torch.float16: 1e-2, torch.bfloat16: 5e-2}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
PROMPTS = (
    "Describe this image in one sentence.",
    "What colour is the largest shape?",
    "Is there any text in the picture? Read it.",
)


def sample_images() -> list[Any]:
    """Three small synthetic pictures, drawn locally (no downloads)."""
    from PIL import Image, ImageDraw

    images = []
    for index, (colour, shape) in enumerate(
        [("red", "circle"), ("blue", "square"), ("green", "text")]
    ):
        image = Image.new("RGB", (224, 224), "white")
        draw = ImageDraw.Draw(image)
        if shape == "circle":
            draw.ellipse((40, 40, 184, 184), fill=colour)
        elif shape == "square":
            draw.rectangle((50, 50, 174, 174), fill=colour)
        else:
            draw.rectangle((20, 80, 204, 144), outline=colour, width=6)
            draw.text((60, 100), f"STOP {index}", fill="black")
        images.append(image)
    return images


def _special_token_ids(config: Any) -> set[int]:
    found: set[int] = set()
    if isinstance(config, dict):
        for key, value in config.items():
            if "token" in key and isinstance(value, int):
                found.add(value)
            elif "token" in key and isinstance(value, list):
                found.update(v for v in value if isinstance(v, int))
            elif isinstance(value, dict):
                found |= _special_token_ids(value)
    return found


def _vocab_size(config: dict[str, Any]) -> int:
    for source in (config.get("text_config") or {}, config):
        if isinstance(source.get("vocab_size"), int):
            return source["vocab_size"]
    raise SGMError("config.json has no vocab_size; cannot build verification inputs")


def build_inputs(
    folder: Path, config: dict[str, Any], images: bool = True
) -> tuple[str, list[dict[str, torch.Tensor]]]:
    """Image+text inputs through the model's processor and chat template when it has them (and
    `images`); otherwise text through its tokenizer; otherwise fixed random token ids (tiny test
    models). Every language layer runs on all of them, which is what the fold changes."""
    from transformers import AutoProcessor, AutoTokenizer

    processor = None
    if images:
        try:
            processor = AutoProcessor.from_pretrained(folder)
        except Exception:
            processor = None
    if processor is not None and hasattr(processor, "image_processor"):
        try:
            batches = []
            for prompt, image in zip(PROMPTS, sample_images(), strict=True):
                conversation = [
                    {
                        "role": "user",
                        "content": [{"type": "image"}, {"type": "text", "text": prompt}],
                    }
                ]
                text = processor.apply_chat_template(
                    conversation, add_generation_prompt=True, tokenize=False
                )
                batches.append(call_processor(processor, [text], [image]))
            return "image+text", batches
        except Exception as exc:
            logger.warning("processor could not build image inputs (%s); using text only", exc)
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            batches = [dict(tokenizer(prompt, return_tensors="pt")) for prompt in PROMPTS]
            if all(batch["input_ids"].numel() for batch in batches):
                return "text", batches
        except Exception as exc:
            logger.warning("tokenizer in %s does not load (%s); using token ids", folder, exc)
    logger.info("no usable tokenizer in %s; verifying on fixed random token ids", folder)
    generator = torch.Generator().manual_seed(0)
    vocab = _vocab_size(config)
    banned = _special_token_ids(config)
    allowed = torch.tensor([i for i in range(min(vocab, 4096)) if i not in banned])
    batches = []
    for length in (7, 12, 16):
        picks = torch.randint(0, len(allowed), (1, length), generator=generator)
        ids = allowed[picks]
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return "token-ids", batches


def _run(
    model: Any, batches: list[dict[str, torch.Tensor]], device: torch.device
) -> list[torch.Tensor]:
    outputs = []
    with torch.no_grad():
        for batch in batches:
            # No KV cache: a single pass never reads it back.
            outputs.append(model(**to_device(batch, device), use_cache=False).logits.float().cpu())
    return outputs


def forward_module(model: Any, recipe: Recipe) -> Any:
    """The module verification runs: the model, or the recipe's `text_forward` submodule for a
    family whose top-level forward cannot run text-only inputs (then the inputs are text only,
    which still runs every language layer the fold changes)."""
    if recipe.text_forward is None:
        return model
    return model.get_submodule(recipe.text_forward)


def recorded_recipe(
    bake_record: BakeRecord, config: dict[str, Any], known: Recipe | None = None
) -> Recipe:
    """The recipe the bake used (stored in bake.json), so a custom --recipe is honoured; `known`,
    a recipe already resolved, is that recipe when the record's definition is its own."""
    if known is not None and bake_record.recipe.definition == known.definition:
        return known
    if bake_record.recipe.definition:
        return parse_recipe(bake_record.recipe.definition, Path(bake_record.recipe.file))
    return recipe_for_config(config)


def verify(
    out: Path,
    source_path: Path,
    compute_dtype: torch.dtype = torch.float32,
    placement: Placement = CPU,
    record: bool = True,
    model: Any = None,
    opened: OpenedSource | None = None,
    bake_record: BakeRecord | None = None,
) -> Verification:
    """Compare the baked folder `out` with its source run with hooks; record the figures
    (`opened` and `bake_record`: the source and OUT's record as the run that baked it holds
    them, so neither is read again).

    `model` may be the source already loaded (in `compute_dtype`, on `placement`, no hooks), to
    spare a second load; its folded parameters are overwritten with the baked ones. Otherwise
    the source is loaded on `placement` (one device, or an accelerate device map over several)."""
    with PeakMemory("verify_full") as memory:
        report = _verify_full(
            out, source_path, compute_dtype, placement, model, opened, bake_record
        )
    if record:
        record_verification(out, report, memory, bake_record)
    return report


class BakedFolder(NamedTuple):
    """What either verification reads first: the baked folder's record, the source and baked
    checkpoints, the recipe the bake used and the factors it folded."""

    record: BakeRecord
    source: Checkpoint
    baked: Checkpoint
    recipe: Recipe
    expertise: Expertise


def read_baked_folder(
    out: Path,
    source_path: Path,
    opened: OpenedSource | None = None,
    bake_record: BakeRecord | None = None,
) -> BakedFolder:
    """Read it, with the recipe as the record states it (not as the source config suggests);
    `opened` and `bake_record`, the source and OUT's record as the run that baked OUT holds
    them, spare reading them again."""
    if bake_record is None:
        bake_record = read_record(out)
    source = opened.checkpoint if opened is not None else open_checkpoint(source_path)
    recipe = recorded_recipe(bake_record, source.config, opened.recipe if opened else None)
    expertise = load_expertise(expertise_path(out))
    return BakedFolder(bake_record, source, open_checkpoint(out), recipe, expertise)


def record_verification(
    out: Path, report: Verification, memory: PeakMemory, bake_record: BakeRecord | None = None
) -> None:
    """Put a verification's figures, and its stage's measured peak memory, into OUT's record and
    card (either form: `verify_full` or the layer-by-layer `verify`); `bake_record` is OUT's
    record as the caller holds it, in step with the file."""
    if bake_record is None:
        bake_record = read_record(out)
    bake_record.verification = report
    bake_record.stages[memory.stage] = memory.record()
    rewrite_card(out, bake_record)


@dataclass(frozen=True)
class DeltaOnly:
    """A module whose weight only an edit's delta changed (no factors): swapped like a module
    with input-side factors, its weight alone."""

    layer: int
    projection: Any
    side: str = "input"


def _verify_full(
    out: Path,
    source_path: Path,
    compute_dtype: torch.dtype,
    placement: Placement,
    model: Any,
    opened: OpenedSource | None = None,
    known_record: BakeRecord | None = None,
) -> Verification:
    bake_record, source, baked, recipe, expertise = read_baked_folder(
        out, source_path, opened, known_record
    )
    if model is None:
        model = load_model(source_path, recipe, compute_dtype, placement)
    target = input_device(model)
    inputs_kind, batches = build_inputs(out, source.config, images=recipe.text_forward is None)
    runner = forward_module(model, recipe)

    base = _run(runner, batches, target)
    with SGMHooks(model, expertise, recipe) as hooks:
        reference = _run(runner, batches, target)
        # the modules whose weights the bake changed: those with factors, and those an edit's
        # delta alone writes into (their weight only; a delta leaves the bias as it is)
        modules: list[tuple[str, Any, Any]] = list(hooks.modules)
        scaled = {id(module) for _, module, _ in modules}
        for name, module, entry in hooks.edited():
            if id(module) not in scaled:
                modules.append((name, module, DeltaOnly(entry.layer, entry.projection)))

    source_keys = source.tensor_keys()
    baked_keys = baked.tensor_keys()
    shapes = {key: shape for key, (shape, _) in tensor_shapes(source).items()}
    recorded_layers = bake_record.recipe.layers
    layers = range(*recorded_layers) if recorded_layers else None
    layout = resolve_checkpoint_layout(recipe, source.config, source_keys, shapes, layers)
    read_keys: set[str] = set()
    read_source = TensorSource(source).read
    baked_tensors = TensorSource(baked)

    def read_baked(key: str) -> torch.Tensor:
        if key not in baked_keys:
            raise SGMError(f"{out} lacks tensor {key!r}; the output is incomplete, bake again")
        read_keys.add(key)
        return baked_tensors.read(key)

    for name, module, units in modules:
        projection = units.projection
        attributes = [projection.parameter_name]
        if (
            units.side == "output"
            and not projection.stacked
            and getattr(module, "bias", None) is not None
        ):
            attributes.append("bias")
        for attribute in attributes:
            parameter = getattr(module, attribute)
            if parameter.device.type == "meta":
                raise SGMError(
                    f"{name} is offloaded (its weights live on disk or in a CPU map), so its "
                    "baked tensors cannot be swapped in; give verify --full more --max-memory, "
                    "or use the default layer-streamed verification"
                )
            if attribute == "bias":
                key = layout.bias_key(units.layer, projection)
                original, value = read_source(key), read_baked(key)
            else:
                key = layout.weight_key(units.layer, projection)
                original = layout.runtime_weight(units.layer, projection, read_source)
                value = layout.runtime_weight(units.layer, projection, read_baked)
            if original.shape != parameter.shape or not torch.equal(
                parameter.detach().cpu(), original.to(parameter.dtype)
            ):
                raise SGMError(
                    f"{name}.{attribute} does not hold checkpoint tensor {key!r}: recipe "
                    f"{recipe.path.name} maps them wrongly; fix the recipe"
                )
            with torch.no_grad():
                parameter.copy_(value.to(device=parameter.device, dtype=parameter.dtype))
    swapped = len(read_keys)
    result = _run(runner, batches, target)

    max_abs = max(float((r - b).abs().max()) for r, b in zip(reference, result, strict=True))
    scale = max(float(r.abs().max()) for r in reference) or 1.0
    effect = max(float((r - b).abs().max()) for r, b in zip(reference, base, strict=True)) / scale
    positions = sum(r.shape[0] * r.shape[1] for r in reference)
    agree = sum(
        int((r.argmax(-1) == b.argmax(-1)).sum()) for r, b in zip(reference, result, strict=True)
    )
    dtypes = bake_record.format.folded_dtypes or ["F32"]
    tolerance = max(
        max(TOLERANCE.get(d, 1e-4) for d in dtypes), COMPUTE_TOLERANCE.get(compute_dtype, 5e-2)
    )
    report = Verification(
        passed=max_abs / scale <= tolerance,
        mode="full",
        inputs=inputs_kind,
        samples=len(batches),
        positions=positions,
        max_abs_diff=max_abs,
        max_rel_diff=max_abs / scale,
        top1_agreement=agree / positions,
        intervention_rel_effect=effect,
        tolerance=tolerance,
        compute_dtype=str(compute_dtype).replace("torch.", ""),
        tensors_swapped=swapped,
    )
    return report
