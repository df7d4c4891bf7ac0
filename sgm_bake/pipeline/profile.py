"""Profile: run a model over a labelled profile set and measure every unit's expertise.

The model sees each sample as SGM's code feeds it: the image plus the text through the model's
chat template (`feed="response"`: one user turn holding the image and the reply text), or as a
dialogue (`feed="dialogue"`: the user's prompt with the image, then the reply as the assistant's
turn). Capture hooks pool each unit's response; the pooled responses stream to a resumable
on-disk store; AUROC per unit and a suppression rule turn them into an expertise file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from sgm_bake.core.capture import Capture, ExpertTarget, Pooling
from sgm_bake.core.expertise import Expertise, ModuleExpertise
from sgm_bake.core.hooks import patch_experts, runtime_prefix, runtime_weight, unit_count
from sgm_bake.core.recipes import HookPoint, Projection, Recipe
from sgm_bake.core.rules import RuleOptions, auroc, auroc_torch, factors
from sgm_bake.datasets.profile_set import ProfileSample, ProfileSet
from sgm_bake.errors import SGMError
from sgm_bake.io.response_store import ResponseStore, discard_store
from sgm_bake.io.source import content_key
from sgm_bake.options import default
from sgm_bake.runtime.batch import to_device
from sgm_bake.runtime.chat import call_processor, check_context, context_length, render_chat
from sgm_bake.runtime.distributed import Distributed, rank_share
from sgm_bake.runtime.loading import LoadedModel
from sgm_bake.runtime.memory import measured

logger = logging.getLogger(__name__)

Feed = Literal["response", "dialogue"]
Positions = Literal["all", "text"]
BatchSize = int | Literal["auto"]
DEFAULT_BATCH_SIZE = 8
"""The batch of `--batch-size auto` where no batch is probed (CPU, MPS, tuning)."""
MAX_AUTO_BATCH = 64
"""The largest batch `auto` tries: beyond some 40k tokens a forward pass gains no speed."""
AUTO_HEADROOM = 0.85
"""Share of a GPU's usable memory an automatic batch may plan to fill (the allocator's
fragmentation and the rest of the process need the remainder)."""
ORDER = "length-v1"
"""How samples are ordered into batches (part of the response store's fingerprint): samples with
an image first, then by token count, longest first, ties in set order."""
MATRIX_PEAK_FLOPS = {("H200", "bfloat16"): 790e12}
"""Dense matrix-multiply rates measured on a device (FLOP/s): the H200's bf16 rate, measured with
large torch matmuls. Devices not listed get tokens/s only."""


@dataclass(frozen=True)
class ProfileOptions:
    """How the responses are captured."""

    hook_points: tuple[str, ...] | None = None
    layers: tuple[int, ...] | None = None
    pooling: Pooling = default("pooling")
    positions: Positions = default("positions")
    feed: Feed = default("feed")
    batch_size: BatchSize = default("batch-size")
    """Samples per forward pass; `auto`: probed on a GPU at start, else DEFAULT_BATCH_SIZE."""
    responses_dir: Path | None = None
    keep_responses: bool = False
    progress: bool = True
    rule: RuleOptions = field(default_factory=RuleOptions)


def fixed_batch_size(batch_size: BatchSize) -> int:
    """The batch size where none is probed: a number stays, `auto` is DEFAULT_BATCH_SIZE."""
    return DEFAULT_BATCH_SIZE if batch_size == "auto" else int(batch_size)


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """`"8-31"`, `"0,2,4"` or `"0-3,8"` -> layer indices (inclusive ranges)."""
    if not text:
        return None
    layers: list[int] = []
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            layers.extend(range(int(first), int(last or first) + 1))
    except ValueError as exc:
        raise SGMError(
            f"--layers {text!r} is not a list of layers such as '8-31' or '0,2,4'"
        ) from exc
    return tuple(sorted(set(layers)))


@dataclass(frozen=True)
class ProfileTarget:
    """One hook point in one layer to profile: a linear module, or a stacked experts parameter
    (then `module` is the experts module and `shape` is [experts, units])."""

    name: str
    module: torch.nn.Module
    layer: int
    point: HookPoint
    units: int
    projection: Projection | None = None
    shape: tuple[int, ...] = ()

    @property
    def stacked(self) -> bool:
        return self.projection is not None and self.projection.stacked


def profile_targets(model: Any, recipe: Recipe, options: ProfileOptions) -> list[ProfileTarget]:
    """The modules to hook: recipe hook points in the selected post-fusion layers, each where
    the layer holds it (dense layers and MoE layers hold different projections)."""
    all_layers = recipe.layers(model.config.to_dict())
    layers = list(all_layers)
    if options.layers is not None:
        outside = [i for i in options.layers if i not in all_layers]
        if outside:
            raise SGMError(
                f"--layers names {outside}, outside the post-fusion layers "
                f"{all_layers.start}-{all_layers.stop - 1} of this model"
            )
        layers = list(options.layers)
    points = (
        [HookPoint.parse(text) for text in options.hook_points]
        if options.hook_points
        else list(recipe.default_hook_points)
    )
    template = runtime_prefix(model, recipe, all_layers)
    targets = []
    for layer in layers:
        for point in points:
            projection = recipe.projection(point.projection)
            found = runtime_weight(model, recipe, layer, projection, template)
            if found is None:
                continue
            module, weight = found
            shape = unit_count(projection, weight, point.side)
            targets.append(
                ProfileTarget(
                    recipe.runtime_name(layer, projection),
                    module,
                    layer,
                    point,
                    math.prod(shape),
                    projection,
                    shape,
                )
            )
    if not targets:
        raise SGMError(
            f"none of the hook points {[str(p) for p in points]} exists in the selected layers "
            "of this model; pick others with --hook-points"
        )
    return targets


class Inputs:
    """Turns samples into model inputs with the model's processor or tokenizer."""

    def __init__(self, folder: Path, config: dict[str, Any], feed: Feed, multimodal: bool) -> None:
        from transformers import AutoProcessor, AutoTokenizer

        self.feed = feed
        self.processor = None
        if multimodal:
            try:
                self.processor = AutoProcessor.from_pretrained(folder)
            except Exception as exc:
                raise SGMError(
                    f"the model at {folder} has no loadable processor ({type(exc).__name__}); "
                    "a multimodal model needs its processor files"
                ) from exc
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(folder)
            except Exception as exc:
                raise SGMError(
                    f"the model at {folder} has no loadable tokenizer ({type(exc).__name__})"
                ) from exc
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        template_owner = self.processor if self.processor is not None else tokenizer
        self.template_owner = (
            template_owner if getattr(template_owner, "chat_template", None) else None
        )
        self.image_token_ids = _image_token_ids(config, self.processor)

    def _conversation(self, sample: ProfileSample, with_image: bool) -> list[dict[str, Any]]:
        image = [{"type": "image"}] if with_image else []
        if self.feed == "dialogue" and sample.prompt:
            return [
                {"role": "user", "content": [*image, {"type": "text", "text": sample.prompt}]},
                {"role": "assistant", "content": [{"type": "text", "text": sample.text}]},
            ]
        return [{"role": "user", "content": [*image, {"type": "text", "text": sample.text}]}]

    def _text(self, sample: ProfileSample, with_image: bool) -> str:
        if self.template_owner is not None:
            return render_chat(
                self.template_owner,
                self._conversation(sample, with_image),
                add_generation_prompt=False,
            )
        image_token = getattr(self.processor, "image_token", "<image>")
        prefix = f"{image_token}\n" if with_image else ""
        if self.feed == "dialogue" and sample.prompt:
            return f"{prefix}{sample.prompt}\n{sample.text}"
        return f"{prefix}{sample.text}"

    def length(self, sample: ProfileSample) -> int:
        """Tokens of the sample's text as fed (an image counts as its placeholder): what orders
        samples into batches of similar length."""
        with_image = self.processor is not None and sample_has_image(sample)
        text = self._text(sample, with_image)
        return len(
            self.tokenizer(text, add_special_tokens=self.template_owner is None)["input_ids"]
        )

    def build(self, samples: list[ProfileSample]) -> dict[str, torch.Tensor]:
        images = [sample.image() for sample in samples] if self.processor is not None else []
        with_image = bool(images) and all(image is not None for image in images)
        texts = [self._text(sample, with_image) for sample in samples]
        if self.processor is not None and with_image:
            batch = call_processor(self.processor, texts, images)
        else:
            batch = self.tokenizer(
                texts,
                padding=True,
                return_tensors="pt",
                add_special_tokens=self.template_owner is None,
            )
        return dict(batch)

    def mask(self, batch: dict[str, torch.Tensor], positions: Positions) -> torch.Tensor:
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(batch["input_ids"])
        mask = mask.to(torch.bool)
        if positions == "text":
            for token in self.image_token_ids:
                mask &= batch["input_ids"] != token
        return mask


def sample_has_image(sample: ProfileSample) -> bool:
    return sample.image_path is not None or sample.render is not None


def length_order(samples: Sequence[ProfileSample], inputs: Inputs) -> tuple[ProfileSample, ...]:
    """The samples in the order they are batched: with an image first (a batch mixing samples
    with and without one is fed without images), then longest first, so that a batch holds
    samples of similar length (little padding) and the first batch is the longest (what an
    automatic batch size is probed on). Deterministic: ties keep set order."""
    keys = [
        (not (inputs.processor is not None and sample_has_image(sample)), -inputs.length(sample), i)
        for i, sample in enumerate(samples)
    ]
    return tuple(samples[index] for *_, index in sorted(keys))


def check_row_lengths(inputs: Inputs, profile_set: ProfileSet, config: dict[str, Any]) -> None:
    """Refuse a row longer than the model's context before the first batch (its text as the
    model will see it, through the chat template; image tokens come on top)."""
    texts = [
        (f"profile set {profile_set.name} row {sample.id}", inputs._text(sample, False))
        for sample in profile_set.samples
    ]
    check_context(texts, inputs.tokenizer, context_length(config))


def _image_token_ids(config: dict[str, Any], processor: Any) -> set[int]:
    ids = set()
    for key in ("image_token_id", "image_token_index", "video_token_id", "video_token_index"):
        for source in (config, config.get("text_config") or {}):
            value = source.get(key)
            if isinstance(value, int):
                ids.add(value)
    token_id = getattr(processor, "image_token_id", None)
    if isinstance(token_id, int):
        ids.add(token_id)
    return ids


def _batches(
    samples: tuple[ProfileSample, ...], start: int, size: int
) -> Iterator[tuple[int, list[ProfileSample]]]:
    for first in range(start, len(samples), size):
        yield first, list(samples[first : first + size])


def _forward(
    model: Any, batch: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype
) -> None:
    moved = to_device(batch, device, dtype)
    with torch.no_grad():
        # Neither the logits nor a KV cache is needed: skip most of lm_head, and do not keep
        # every layer's keys and values (2 x layers x tokens x width: gigabytes at 7B).
        try:
            model(**moved, logits_to_keep=1, use_cache=False)
        except TypeError:
            model(**moved)


def fingerprint(
    source_id: str,
    revision: str | None,
    profile_set: ProfileSet,
    options: ProfileOptions,
    targets: list[ProfileTarget],
    dtype: torch.dtype,
    content: str = "",
) -> dict[str, Any]:
    """What makes two profile runs the same: a resumed run must match it exactly. `content` is
    the model folder's `content_key`: two models are told apart by what they hold, never by
    the name of their folder."""
    return {
        "source": source_id,
        "content": content,
        "revision": revision,
        "profile_set": profile_set.name,
        "profile_set_sha256": profile_set.sha256,
        "samples": len(profile_set.samples),
        "modules": [f"{t.name}:{t.point.side}" for t in targets],
        "pooling": options.pooling,
        "positions": options.positions,
        "feed": options.feed,
        "batch_size": fixed_batch_size(options.batch_size),
        "dtype": str(dtype),
    }


def default_responses_dir(key: dict[str, Any]) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache / "sgm-bake" / "responses" / digest


@dataclass
class CaptureStats:
    """What a profiling run fed the model and how fast (for the bake record and the log)."""

    batch_size: int = 0
    batch_size_auto: bool = False
    probe_seconds: float = 0.0
    samples: int = 0
    tokens: int = 0
    """Positions fed, padding excluded (image tokens included)."""
    positions: int = 0
    """Positions fed, padding included."""
    seconds: float = 0.0
    scoring_seconds: float = 0.0

    def add_batch(self, batch: dict[str, torch.Tensor], count: int) -> None:
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        self.samples += count
        self.positions += int(ids.numel())
        self.tokens += int(mask.sum()) if mask is not None else int(ids.numel())

    def record(self, parameters: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        """Throughput figures: tokens/s, and on a GPU with a measured matrix rate the share of
        it the forward passes used (FLOPs estimated as 2 x parameters x tokens)."""
        rate = self.tokens / self.seconds if self.seconds > 0 else 0.0
        figures: dict[str, Any] = {
            "batch_size": self.batch_size,
            "batch_size_auto": self.batch_size_auto,
            "probe_seconds": round(self.probe_seconds, 3),
            "capture_seconds": round(self.seconds, 3),
            "scoring_seconds": round(self.scoring_seconds, 3),
            "samples": self.samples,
            "tokens": self.tokens,
            "padding_share": round(1 - self.tokens / self.positions, 4) if self.positions else 0,
            "samples_per_second": round(self.samples / self.seconds, 3) if self.seconds else 0,
            "tokens_per_second": round(rate, 1),
        }
        if device.type == "cuda":
            flops = 2.0 * parameters * rate
            figures["model_tflops_per_second"] = round(flops / 1e12, 2)
            peak = measured("name the GPU", lambda: matrix_peak(device, dtype), None)
            if peak:
                figures["matrix_rate_tflops"] = peak / 1e12
                figures["matrix_rate_share"] = round(flops / peak, 4)
        return figures


def matrix_peak(device: torch.device, dtype: torch.dtype) -> float | None:
    """The measured dense matrix rate of `device` at `dtype` (FLOP/s), or None if not known."""
    name = torch.cuda.get_device_name(device)
    dtype_name = str(dtype).replace("torch.", "")
    for (model, known_dtype), peak in MATRIX_PEAK_FLOPS.items():
        if model in name and known_dtype == dtype_name:
            return peak
    return None


def _capture_for(
    targets: list[ProfileTarget], options: ProfileOptions, recipe: Recipe | None
) -> Capture:
    """Capture hooks on every target (`recipe` is needed when a target is a stacked experts
    parameter)."""
    modules = [(t.name, t.module, t.point.side) for t in targets if not t.stacked]
    experts: dict[int, tuple[torch.nn.Module, str, list[ExpertTarget]]] = {}
    for t in targets:
        if t.stacked:
            assert t.projection is not None
            entry = experts.setdefault(id(t.module), (t.module, t.projection.group, []))
            entry[2].append(
                ExpertTarget(t.name, t.projection.kind, t.point.side, t.shape[0], t.shape[1])
            )
    groups = {id(module): group for module, group, _ in experts.values()}
    if experts and recipe is None:
        raise ValueError("profiling stacked experts needs the recipe")

    def patch(module: torch.nn.Module, tap: Any) -> Any:
        assert recipe is not None
        return patch_experts(recipe, module, groups[id(module)], tap=tap)

    return Capture(
        modules,
        options.pooling,
        [(module, found) for module, _, found in experts.values()],
        patch,
    )


def capture_responses(
    model: Any,
    inputs: Inputs,
    profile_set: ProfileSet,
    targets: list[ProfileTarget],
    options: ProfileOptions,
    store: ResponseStore,
    device: torch.device,
    dtype: torch.dtype,
    recipe: Recipe | None = None,
    stats: CaptureStats | None = None,
) -> CaptureStats:
    """Run every not-yet-stored batch through the model and store its pooled responses
    (`recipe` is needed when a target is a stacked experts parameter).

    The next batch's inputs are built (processor, tokenizer, images) on a worker thread while the
    current batch runs, so a GPU does not wait for the host between batches."""
    stats = stats if stats is not None else CaptureStats()
    size = fixed_batch_size(options.batch_size)
    stats.batch_size = stats.batch_size or size
    batches = list(_batches(profile_set.samples, store.completed, size))
    started = time.perf_counter()
    with (
        _capture_for(targets, options, recipe) as capture,
        tqdm(
            total=len(profile_set.samples),
            initial=store.completed,
            unit="sample",
            desc="profiling",
            disable=not options.progress,
            file=sys.stderr,
        ) as bar,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="sgm-inputs") as builder,
    ):
        pending = builder.submit(inputs.build, batches[0][1]) if batches else None
        for index, (first, samples) in enumerate(batches):
            assert pending is not None
            batch = pending.result()
            following = batches[index + 1][1] if index + 1 < len(batches) else None
            pending = builder.submit(inputs.build, following) if following else None
            mask = inputs.mask(batch, options.positions)
            pooled = capture.collect(
                mask, lambda batch=batch: _forward(model, batch, device, dtype)
            )
            missing = [t.name for t in targets if t.name not in pooled]
            if missing:
                raise SGMError(
                    f"module {missing[0]} did not run for these inputs (mllama's cross-attention "
                    "layers run only with an image); give every sample an image or use --layers"
                )
            arrays = {}
            for name in (t.name for t in targets):
                values = pooled[name]
                if not torch.isfinite(values).all():
                    raise SGMError(
                        f"module {name} produced non-finite responses (overflow?); profile in "
                        "float32 with --dtype float32"
                    )
                arrays[name] = np.asarray(values.numpy(), dtype=np.float32)
            store.write_batch(first, arrays)
            stats.add_batch(batch, len(samples))
            bar.update(len(samples))
    stats.seconds += time.perf_counter() - started
    return stats


def predicted_batch(
    one: dict[int, int], two: dict[int, int], usable: dict[int, float], cap: int
) -> int:
    """The largest power of two up to `cap` whose memory, extrapolated linearly from the bytes a
    batch of one and of two added on each GPU, stays within that GPU's `usable` bytes (at least
    2: both ran)."""
    size = 2
    while size * 2 <= cap:
        following = size * 2
        if any(
            max(0, 2 * one[gpu] - two[gpu]) + (two[gpu] - one[gpu]) * following > usable[gpu]
            for gpu in one
        ):
            break
        size = following
    return size


def probe_batch_size(
    model: Any,
    inputs: Inputs,
    samples: Sequence[ProfileSample],
    targets: list[ProfileTarget],
    options: ProfileOptions,
    device: torch.device,
    dtype: torch.dtype,
    recipe: Recipe | None = None,
) -> int:
    """The largest batch (a power of two, at most MAX_AUTO_BATCH) whose forward pass, with the
    capture hooks, fits the GPUs: run the first (longest) one and two samples, extrapolate the
    memory per sample, then run the predicted size and halve it on out-of-memory (as heretic
    finds its batch size). Where the statistics cannot be read, DEFAULT_BATCH_SIZE."""
    cap = max(1, min(MAX_AUTO_BATCH, len(samples)))
    gpus = sorted(
        {p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"}
        | ({device.index or 0} if device.type == "cuda" else set())
    )
    if not gpus:
        return DEFAULT_BATCH_SIZE

    def used(size: int) -> dict[int, int] | None:
        """Bytes each GPU's forward pass on the first `size` samples added (None: no room)."""
        batch = inputs.build(list(samples[:size]))
        mask = inputs.mask(batch, options.positions)
        torch.cuda.empty_cache()
        start = {gpu: torch.cuda.memory_allocated(gpu) for gpu in gpus}
        for gpu in gpus:
            torch.cuda.reset_peak_memory_stats(gpu)
        try:
            with _capture_for(targets, options, recipe) as capture:
                capture.collect(mask, lambda: _forward(model, batch, device, dtype))
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            return None
        return {gpu: torch.cuda.max_memory_allocated(gpu) - start[gpu] for gpu in gpus}

    def search() -> int:
        one = used(1)
        if one is None:
            raise SGMError(
                "one sample's forward pass does not fit the GPU memory; spread the model with "
                "--device-map and --max-memory (and --offload-folder)"
            )
        two = used(2) if cap >= 2 else None
        if two is None:
            return 1
        usable = {}
        for gpu in gpus:
            free, _ = torch.cuda.mem_get_info(gpu)
            usable[gpu] = AUTO_HEADROOM * (free + torch.cuda.memory_reserved(gpu))
            usable[gpu] -= torch.cuda.memory_allocated(gpu)
        size = predicted_batch(one, two, usable, cap)
        while size > 2 and used(size) is None:  # the prediction was too bold: back off
            size //= 2
        return size

    started = time.perf_counter()
    try:
        size = search()
    except SGMError:
        raise
    except Exception as exc:  # a probe is a measurement: its failure costs only the speed
        logger.warning(
            "could not probe the batch size (%s: %s); using %d",
            type(exc).__name__,
            exc,
            DEFAULT_BATCH_SIZE,
        )
        size = DEFAULT_BATCH_SIZE
    logger.info("batch size %d found in %.1f s", size, time.perf_counter() - started)
    return size


def store_folder_of(store_folder: Path, distributed: Distributed | None) -> Path:
    """Where this process keeps its responses: the store itself, or its rank's part."""
    return store_folder if distributed is None else part_folder(store_folder, distributed)


def recorded_batch_size(folder: Path, unsized: dict[str, Any]) -> int | None:
    """The batch size an interrupted run of the same profile (the same fingerprint but for the
    batch size and a rank's share, which follows from it) recorded in its store, if any."""
    try:
        previous = json.loads((folder / "meta.json").read_text(encoding="utf-8"))["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(previous, dict) or not isinstance(previous.get("batch_size"), int):
        return None
    ignored = {"batch_size", "share", "rank", "world_size"}

    def same(data: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in data.items() if k not in ignored}

    return int(previous["batch_size"]) if same(previous) == same(unsized) else None


def part_folder(store_folder: Path, distributed: Distributed) -> Path:
    """Where one rank keeps its share of the responses (beside the merged store, so that
    starting the merged store anew never deletes a rank's resumable part)."""
    name = f"{store_folder.name}.rank{distributed.rank}-of-{distributed.world_size}"
    return store_folder.parent / name


def capture_share(
    loaded: LoadedModel,
    inputs: Inputs,
    profile_set: ProfileSet,
    targets: list[ProfileTarget],
    options: ProfileOptions,
    store_folder: Path,
    key: dict[str, Any],
    distributed: Distributed,
    stats: CaptureStats | None = None,
) -> None:
    """Profile this rank's share on its loaded model into its own resumable store, then gather
    every share into the merged store on rank 0 (module by module, so no rank holds more than
    one module's rows).

    The share is a run of whole single-process batches, so the merged store holds exactly the
    bytes a single process would have written."""
    total = len(profile_set.samples)
    size = fixed_batch_size(options.batch_size)
    first, stop = rank_share(total, size, distributed.world_size, distributed.rank)
    share = replace(profile_set, samples=profile_set.samples[first:stop])
    modules = {t.name: t.units for t in targets}
    part_key = {**key, "rank": distributed.rank, "world_size": distributed.world_size}
    part_key["share"] = [first, stop]
    part_path = part_folder(store_folder, distributed)
    part = ResponseStore.open(part_path, part_key, modules, stop - first)
    shown = replace(options, progress=options.progress and distributed.is_main)
    try:
        capture_responses(
            loaded.model,
            inputs,
            share,
            targets,
            shown,
            part,
            loaded.device,
            loaded.dtype,
            loaded.recipe,
            stats,
        )
        counts = distributed.all_counts(part.samples)
        merged = None
        if distributed.is_main:
            merged = ResponseStore.open(store_folder, key, modules, total)
        for target in targets:
            rows = distributed.gather_rows(part.responses(target.name), counts)
            if merged is not None and rows is not None:
                merged.write_rows(target.name, 0, rows)
        if merged is not None:
            merged.mark_completed(total)
            merged.close()
    finally:
        part.close()
    distributed.barrier()  # the merged store is complete: the parts are no longer needed
    if not options.keep_responses:
        discard_store(part_path)


def expertise_from_store(
    store: ResponseStore,
    targets: list[ProfileTarget],
    labels: list[int],
    rule: RuleOptions,
    device: torch.device | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """AUROC per module from the stored responses, and the rule's factors. On a GPU `device` the
    ranks are counted there (`auroc_torch`, the same values bit for bit), one module at a time."""
    label_tensor = torch.tensor(labels)
    on_device = device is not None and device.type == "cuda"
    scores = []
    for target in targets:
        responses = torch.from_numpy(np.ascontiguousarray(store.responses(target.name)))
        try:
            if on_device:
                score = auroc_torch(responses.to(device), label_tensor).to(torch.float32)
            else:
                score = auroc(responses, label_tensor).to(torch.float32)
            scores.append(score.reshape(target.shape) if target.shape else score)
        except ValueError as exc:
            raise SGMError(f"cannot score module {target.name}: {exc}") from exc
    return scores, factors(scores, rule)


def apply_rule(expertise: Expertise, rule: RuleOptions) -> Expertise:
    """Recompute the factors of an expertise file from its stored AUROC with another rule."""
    names = [name for name, entry in expertise.modules.items() if entry.auroc is not None]
    if len(names) != len(expertise.modules):
        raise SGMError(
            "this expertise file has no AUROC for some modules, so rule options cannot be "
            "applied; bake its factors as they are (drop the rule options) or profile again"
        )
    scores = [expertise.modules[name].auroc for name in names]
    alphas = factors(scores, rule)  # type: ignore[arg-type]
    modules = {
        name: ModuleExpertise(
            name, expertise.modules[name].side, alpha, expertise.modules[name].auroc
        )
        for name, alpha in zip(names, alphas, strict=True)
    }
    metadata = {**expertise.metadata, **rule.describe()}
    if expertise.deltas and expertise.modules:
        logger.warning(
            "this expertise's edit was fitted with SGM's stored factors in place; with a new "
            "rule it corrects a slightly different model (profile again with --method both to "
            "refit it)"
        )
    return Expertise(modules, metadata, dict(expertise.deltas))


def run_profile(
    loaded: LoadedModel,
    profile_set: ProfileSet,
    options: ProfileOptions,
    distributed: Distributed | None = None,
    stats: CaptureStats | None = None,
) -> Expertise | None:
    """Profile a loaded model (its source, recipe, device and dtype come with it); return the
    expertise (AUROC and factors) of every target.

    Samples are batched in `length_order`; with `--batch-size auto` on a GPU the batch size is
    probed first (the smallest of all ranks' under torchrun, so every rank makes the same
    batches). `stats`, when given, receives the run's throughput figures.

    Under torchrun (`distributed` given) every rank profiles its share of the set and rank 0
    alone scores the merged responses: it returns the expertise, the other ranks None."""
    stats = stats if stats is not None else CaptureStats()
    model, recipe, device, dtype = loaded.model, loaded.recipe, loaded.device, loaded.dtype
    folder, source_id, revision = loaded.folder, loaded.source.id, loaded.source.revision
    multimodal = recipe.auto_class != "AutoModelForCausalLM"
    inputs = Inputs(folder, model.config.to_dict(), options.feed, multimodal)
    check_row_lengths(inputs, profile_set, model.config.to_dict())
    targets = profile_targets(model, recipe, options)
    profile_set = replace(profile_set, samples=length_order(profile_set.samples, inputs))
    probed = options.batch_size == "auto" and device.type == "cuda"
    # The store's folder does not depend on a probed batch size, so an interrupted run is found
    # again, and resumes with the batch size it recorded instead of probing anew.
    content = content_key(folder, revision)
    unsized = {**fingerprint(source_id, revision, profile_set, options, targets, dtype, content)}
    unsized.update(batch_size=str(options.batch_size), order=ORDER)
    folder_for_store = options.responses_dir or default_responses_dir(unsized)
    if probed:
        started = time.perf_counter()
        mine = store_folder_of(folder_for_store, distributed)
        recorded = [recorded_batch_size(mine, unsized) or 0]
        if distributed is not None:
            recorded = distributed.all_counts(recorded[0])
        size = recorded[0] if recorded[0] and len(set(recorded)) == 1 else 0
        if not size:
            size = probe_batch_size(
                model, inputs, profile_set.samples, targets, options, device, dtype, recipe
            )
            if distributed is not None:
                size = min(distributed.all_counts(size))
        stats.probe_seconds = time.perf_counter() - started
        stats.batch_size_auto = True
        options = replace(options, batch_size=size)
    stats.batch_size = fixed_batch_size(options.batch_size)
    key = fingerprint(source_id, revision, profile_set, options, targets, dtype, content)
    key["order"] = ORDER
    if distributed is not None:
        capture_share(
            loaded, inputs, profile_set, targets, options, folder_for_store, key, distributed, stats
        )
        if not distributed.is_main:
            return None
    store = ResponseStore.open(
        folder_for_store, key, {t.name: t.units for t in targets}, len(profile_set.samples)
    )
    try:
        if distributed is None:
            capture_responses(
                model, inputs, profile_set, targets, options, store, device, dtype, recipe, stats
            )
        started = time.perf_counter()
        scores, alphas = expertise_from_store(
            store, targets, profile_set.labels, options.rule, device
        )
        stats.scoring_seconds = time.perf_counter() - started
    finally:
        store.close()
    if not options.keep_responses:
        discard_store(folder_for_store)
    toxic, benign = profile_set.counts()
    metadata = {
        "source": source_id,
        "revision": revision or "",
        "profile_set": profile_set.name,
        "profile_set_sha256": profile_set.sha256,
        **({"profile_set_revision": profile_set.revision} if profile_set.revision else {}),
        "samples_toxic": str(toxic),
        "samples_non_toxic": str(benign),
        "pooling": options.pooling,
        "positions": options.positions,
        "feed": options.feed,
        "hook_points": ",".join(sorted({str(t.point) for t in targets})),
        "profile_dtype": str(dtype).replace("torch.", ""),
        **options.rule.describe(),
    }
    modules = {
        t.name: ModuleExpertise(t.name, t.point.side, alpha, score)
        for t, score, alpha in zip(targets, scores, alphas, strict=True)
    }
    return Expertise(modules, metadata)
