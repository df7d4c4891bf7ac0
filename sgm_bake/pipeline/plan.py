"""A memory plan before any load: what each stage needs, from the config and safetensors headers.

Nothing here reads a weight. The model's structure comes from its transformers class built on the
meta device from config.json (exact parameter counts, shared weights counted once, the real MLP
block of every layer), and, when the weights are present (locally, or on the Hub through
huggingface_hub's `get_safetensors_metadata`), the safetensors headers give the stored sizes and
the largest tensor. Without weights the plan is computed from the config alone.

What each stage holds (see DESIGN.md, "Scale"):

- bake: a few blocks per shard worker; the source is memory-mapped (page cache, not process
  memory), so the figure is constant.
- verify (layer-streamed, the default): one MLP block in float32, the largest of its tensors in
  its stored dtype while it is read, and up to a hundred hidden states with their
  intermediate activations.
- verify --full, profile, eval/generate: the whole model at the run dtype across the devices of an
  accelerate device map, plus activations (profile: a batch's hidden states and logits) or the KV
  cache (generation). On GPUs the host holds the process and one tensor in flight.

Every figure is a peak of the process's anonymous memory (RssAnon, what `PeakMemory` records)
or of one GPU's memory (torch's reserved peak plus the CUDA context). The constants below were
measured on a CPU machine (torch 2.13, transformers 5.25) with `benchmarks/bench_plan.py`: the
process each command needs before its stage's own memory, and the working memory of a forward
pass per token. The GPU-side constants (the CUDA context, and what initialising CUDA adds to the
host) are estimates, to be checked by `benchmarks/gpu_check.sh` on a GPU.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sgm_bake.core.fold import unit_axis
from sgm_bake.core.recipes import Recipe, recipe_for_config
from sgm_bake.errors import SGMError
from sgm_bake.io.safetensors import DTYPES, read_header
from sgm_bake.runtime.memory import format_bytes

logger = logging.getLogger(__name__)

MiB = 2**20
PROCESS_BYTES = 320 * MiB
"""A command that loads a model (Python, torch, transformers, the model's class, the processor),
before the model: measured 303-355 MiB by running each command on a toy LLaVA."""
BAKE_PROCESS_BYTES = 200 * MiB
"""The bake command (no model classes): measured 196 MiB on a toy LLaVA."""
BAKE_BUFFER_BYTES = 2 * (4 + 2) * 16 * MiB
"""Two shard workers, each with a 16 MiB chunk being folded, one being hashed, and folded chunks
waiting for the hashing thread (up to 8, about 4 on average: the bake's measured peak varies
from run to run with how far hashing lags, 340-500 MiB in all on llava-1.5-7b's widths)."""
CUDA_HOST_BYTES = 600 * MiB
"""Host memory that initialising CUDA adds to the process (its libraries and context bookkeeping):
an estimate from the H200 run of issue 16, not measured here."""
CUDA_CONTEXT_BYTES = 512 * MiB
"""GPU memory the CUDA context holds outside torch's allocator: an estimate."""
SCORING_BYTES = 140 * MiB
"""Scoring the stored responses and building the inputs: the fixed part of profiling's working
memory (measured 144 MiB)."""
VERIFY_PROMPTS = 3
"""verify --full runs three prompts, each three times (without hooks, with hooks, baked), and
keeps all nine logit tensors in float32."""
TEXT_PROMPT_TOKENS = 48
"""Tokens of a verification prompt's text around the image (chat template included)."""
DEFAULT_GPU_BYTES = 80 * 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
CONFIG_DTYPE_TAG = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
STAGES = ("bake", "verify", "verify --full", "profile", "eval/generate")


@dataclass(frozen=True)
class PlanOptions:
    """What the stages will be run with."""

    dtype: str = "auto"
    """Run dtype of profile, eval and generate (auto: bfloat16 on GPUs, float32 on the CPU)."""
    verify_dtype: str = "float32"
    """Precision of verify --full's forward passes (its --verify-dtype)."""
    device: str = "cuda"
    """Where the whole-model stages run: cuda (GPUs, the host holds the process) or cpu."""
    max_memory: dict[int | str, int] = field(default_factory=dict)
    """accelerate-style budgets (GPU index or 'cpu' -> bytes); empty: report, never refuse."""
    gpu_bytes: int = DEFAULT_GPU_BYTES
    """Memory per GPU when `max_memory` names no GPU (for the GPU count)."""
    batch_size: int = 8
    sequence_length: int = 1024
    new_tokens: int = 64
    profile_samples: int = 400
    revision: str | None = None


@dataclass(frozen=True)
class ModelFacts:
    """Sizes of a model that the stages' memory depends on."""

    model_id: str
    model_type: str
    params: int
    stored_bytes: int
    stored_dtype: str
    largest_tensor_bytes: int
    block_params: int
    block_largest_bytes: int
    folded_layers: int
    total_layers: int
    hidden_size: int
    kv_width: int
    vocab_size: int
    intermediate_size: int
    heads: int
    image_tokens: int
    """Tokens one image becomes in the language model's input (0: a text model)."""
    units: int
    largest_module_units: int
    counted_from: str
    streamed: bool = True
    """Whether the default verification runs layer by layer (else on the whole model)."""


@dataclass(frozen=True)
class StagePlan:
    """One row of the plan."""

    stage: str
    host_bytes: int
    gpu_bytes: int
    gpus: int
    fits: bool
    note: str


@dataclass(frozen=True)
class MemoryPlan:
    """Every stage's peak, and whether the given budget holds it."""

    facts: ModelFacts
    options: PlanOptions
    stages: tuple[StagePlan, ...]

    @property
    def fits(self) -> bool:
        return all(stage.fits for stage in self.stages)

    def lines(self) -> list[str]:
        """The plan as a fixed-width table with a header line about the model."""
        facts = self.facts
        head = (
            f"{facts.model_id} ({facts.model_type}): {facts.params / 1e9:.2f}B parameters, "
            f"{format_bytes(facts.stored_bytes)} stored as {facts.stored_dtype}, largest tensor "
            f"{format_bytes(facts.largest_tensor_bytes)}; {facts.folded_layers} folded layers "
            f"of {facts.total_layers}; counted from {facts.counted_from}"
        )
        rows = [
            head,
            f"whole-model stages on {self.options.device} at {run_dtype(self.options)} "
            f"(verify --full at {self.options.verify_dtype}); "
            + (
                f"budget {_budget_text(self.options.max_memory)}"
                if self.options.max_memory
                else f"GPUs of {format_bytes(self.options.gpu_bytes)} (no --max-memory given)"
            ),
            f"{'stage':<14} {'host peak':>11} {'per-GPU peak':>13} {'GPUs':>5}  fits  note",
        ]
        for stage in self.stages:
            rows.append(
                f"{stage.stage:<14} {format_bytes(stage.host_bytes):>11} "
                f"{format_bytes(stage.gpu_bytes) if stage.gpus else '-':>13} {stage.gpus:>5}  "
                f"{'yes' if stage.fits else 'NO':<4}  {stage.note}"
            )
        return rows

    def markdown(self) -> list[str]:
        """The table in Markdown (for the README)."""
        rows = [
            "| stage | host peak | per-GPU peak | GPUs | note |",
            "|---|---:|---:|---:|---|",
        ]
        for stage in self.stages:
            gpu = format_bytes(stage.gpu_bytes) if stage.gpus else "-"
            rows.append(
                f"| {stage.stage} | {format_bytes(stage.host_bytes)} | {gpu} | {stage.gpus} | "
                f"{stage.note} |"
            )
        return rows


def _budget_text(max_memory: dict[int | str, int]) -> str:
    return ",".join(f"{key}={format_bytes(value)}" for key, value in max_memory.items())


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SGMError(f"{path} is not readable JSON ({exc}); check the model folder") from exc
    if not isinstance(data, dict):
        raise SGMError(f"{path} does not hold a JSON object; check the model folder")
    return data


def _local_tensors(folder: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """key -> (dtype tag, shape) from every safetensors header in the folder (none: empty)."""
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        for key, info in read_header(path).tensors.items():
            tensors[key] = (info.dtype, info.shape)
    return tensors


def _hub_inputs(
    repo_id: str, revision: str | None
) -> tuple[Path, dict[str, tuple[str, tuple[int, ...]]]]:
    """Download config.json only, and read the safetensors headers through the Hub API."""
    from huggingface_hub import get_safetensors_metadata, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, NotASafetensorsRepoError

    from sgm_bake.io.hub import unreachable

    reason = unreachable()
    if reason is not None:  # at once, not after huggingface_hub's retries
        raise SGMError(
            f"{repo_id} is not a local folder, and {reason}: check the network, or plan a "
            "local folder holding the model's config.json"
        )
    try:
        config_path = Path(hf_hub_download(repo_id, "config.json", revision=revision))
    except HfHubHTTPError as exc:
        raise SGMError(
            f"cannot fetch config.json of {repo_id!r} from the Hub ({exc}); check the id, your "
            "network and HF_TOKEN for gated models"
        ) from exc
    except Exception as exc:  # the connection dropped after the check: httpx errors, timeouts
        raise SGMError(
            f"cannot fetch config.json of {repo_id!r} from the Hub ({type(exc).__name__}); "
            "check the network"
        ) from exc
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    try:
        metadata = get_safetensors_metadata(repo_id, revision=revision)
    except NotASafetensorsRepoError:
        logger.info("%s has no safetensors weights; planning from the config alone", repo_id)
        return config_path.parent, tensors
    for file_metadata in metadata.files_metadata.values():
        for key, info in file_metadata.tensors.items():
            tensors[key] = (info.dtype, tuple(info.shape))
    return config_path.parent, tensors


def _text_config(config: dict[str, Any], recipe: Recipe) -> dict[str, Any]:
    """The language model's config: the parent of the recipe's layer-count key."""
    for dotted in recipe.num_layers:
        node: Any = config
        for part in dotted.split(".")[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(dotted.split(".")[-1]), int):
            return node
    return config


def _weight_of(model: Any, name: str) -> Any:
    """The weight of a projection module, or a stacked-expert parameter, or None."""
    try:
        return model.get_submodule(name).weight
    except AttributeError:
        pass
    try:
        return model.get_parameter(name)
    except AttributeError:
        return None


def model_facts(
    model: str, revision: str | None = None, recipe_file: Path | None = None
) -> ModelFacts:
    """Sizes of MODEL (a local folder, with or without weights, or a Hub id)."""
    from sgm_bake.core.hooks import runtime_prefix
    from sgm_bake.pipeline.verify_layers import (
        meta_skeleton,
        mlp_block_names,
        streaming_unsupported,
    )

    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise SGMError(f"{local} has no config.json; it is not a transformers model folder")
        folder, tensors = local, _local_tensors(local)
    elif local.exists():
        raise SGMError(f"{local} is a file; pass a model folder or a Hub model id")
    else:
        folder, tensors = _hub_inputs(model, revision)
    config = _read_config(folder / "config.json")
    recipe = recipe_for_config(config, recipe_file)
    skeleton = meta_skeleton(folder, recipe)
    layers = recipe.layers(config)
    template = runtime_prefix(skeleton, recipe, layers)
    # Where the layer-by-layer check cannot run, verify falls back to the whole model; the
    # block figure then stands for one decoder layer.
    streamed = streaming_unsupported(recipe) is None
    block = mlp_block_names(recipe)[0] if streamed else ""
    config_dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    config_dtype = (
        config_dtype
        if config_dtype in DTYPE_BYTES
        else str(_text_config(config, recipe).get("torch_dtype") or "bfloat16")
    )
    stored_tag = CONFIG_DTYPE_TAG.get(config_dtype, "BF16")
    if tensors:
        sizes = {
            key: math.prod(shape) * DTYPES.get(tag, (None, 2))[1]
            for key, (tag, shape) in tensors.items()
        }
        params = sum(math.prod(shape) for _, shape in tensors.values())
        stored_bytes = int(sum(sizes.values()))
        largest = int(max(sizes.values()))
        stored_tag = Counter(tag for tag, _ in tensors.values()).most_common(1)[0][0]
        counted_from = "safetensors headers"
    else:
        element = DTYPES[stored_tag][1]
        numels = [p.numel() for p in skeleton.parameters()]
        params = sum(numels)
        stored_bytes = int(params * element)
        largest = int(max(numels) * element)
        counted_from = "config.json alone (no weights present)"
    element = DTYPES[stored_tag][1]
    block_params = 0
    block_largest = 0
    units = 0
    largest_module_units = 0
    for layer in layers:
        layer_prefix = template.format(layer=layer)
        module = skeleton.get_submodule(f"{layer_prefix}.{block}" if block else layer_prefix)
        numels = [p.numel() for p in module.parameters()]
        block_params = max(block_params, sum(numels))
        block_largest = max(block_largest, int(max(numels) * element))
        for point in recipe.default_hook_points:
            projection = recipe.projection(point.projection)
            weight = _weight_of(skeleton, f"{layer_prefix}.{projection.name}")
            if weight is None:  # a block this layer does not hold (dense beside MoE layers)
                continue
            # Stacked experts [E, ..., out, in]: every expert's channels are units.
            count = int(weight.shape[-2:][unit_axis(projection.layout, point.side)])
            count *= math.prod(weight.shape[:-2])
            units += count
            largest_module_units = max(largest_module_units, count)
    text = _text_config(skeleton.config.to_dict(), recipe)
    heads = int(text.get("num_attention_heads") or 1)
    hidden = int(text.get("hidden_size") or text.get("n_embd") or 0)
    head_dim = int(text.get("head_dim") or (hidden // heads if heads else 0))
    kv_heads = int(text.get("num_key_value_heads") or heads)
    total_layers = int(text.get("num_hidden_layers") or text.get("n_layer") or layers.stop)
    intermediate = int(
        text.get("intermediate_size") or text.get("n_inner") or text.get("ffn_dim") or 4 * hidden
    )
    return ModelFacts(
        model_id=model,
        model_type=recipe.model_type,
        params=int(params),
        stored_bytes=stored_bytes,
        stored_dtype=stored_tag,
        largest_tensor_bytes=largest,
        block_params=block_params,
        block_largest_bytes=block_largest,
        folded_layers=len(layers),
        total_layers=total_layers,
        hidden_size=hidden,
        kv_width=kv_heads * head_dim,
        vocab_size=int(text.get("vocab_size") or 0),
        intermediate_size=intermediate,
        heads=heads,
        image_tokens=_image_tokens(config),
        units=units,
        largest_module_units=largest_module_units,
        streamed=streamed,
        counted_from=counted_from,
    )


def _image_tokens(config: dict[str, Any]) -> int:
    """Tokens one image becomes in the language model's input where the config says
    (`image_seq_length`, the LLaVA family's key); 0 elsewhere (models that take images through
    cross-attention, or whose image tokens depend on the image's size)."""
    value = config.get("image_seq_length")
    return int(value) if isinstance(value, int) else 0


def forward_bytes(
    facts: ModelFacts, batch: int, sequence: int, element: int, capture: bool = False
) -> int:
    """Working memory of one forward pass over `batch` sequences of `sequence` tokens, beyond
    the weights and any KV cache. Inference frees each layer's activations as the next runs, so
    this is one decoder layer's largest transient and does not grow with depth: per token, the
    MLP's intermediate three times (gate, up, their product) and three hidden-state vectors, and,
    with profiling's `capture` hooks, one pooled module's masked copy (float32 at most: mean
    pooling widens, max pooling masks in the model's dtype). Attention does not materialise its
    scores (SDPA kernels, CPU and GPU). Measured within 1% on llava-1.5-7b's widths in float32
    on a CPU (benchmarks/bench_plan.py)."""
    per_token = element * (3 * facts.intermediate_size + 3 * facts.hidden_size)
    if capture:
        per_token += 4 * facts.intermediate_size
    return batch * sequence * per_token


def _whole_model_stage(
    name: str, weights: int, working: int, host_extra: int, facts: ModelFacts, options: PlanOptions
) -> StagePlan:
    """A stage that holds the whole model: on GPUs when there are any, else on the host."""
    budgets = options.max_memory
    gpu_budgets = sorted(
        (value for key, value in budgets.items() if isinstance(key, int)), reverse=True
    )
    need = weights + working
    if options.device == "cpu" or (budgets and not gpu_budgets):  # everything on the host
        host = PROCESS_BYTES + need + host_extra
        cpu = budgets.get("cpu")
        fits = cpu is None or host <= cpu
        note = "CPU only" if fits else "does not fit the cpu budget; add GPUs or --offload-folder"
        return StagePlan(name, host, 0, 0, fits, note)
    per_gpu = gpu_budgets[0] if gpu_budgets else options.gpu_bytes
    # Every GPU holds its share of the weights plus the working memory of the layers it runs
    # (activations travel with the layers; the KV cache is split by layer too), beside a CUDA
    # context.
    usable = max(1, per_gpu - CUDA_CONTEXT_BYTES)
    gpus = max(1, math.ceil(need / usable))
    host = PROCESS_BYTES + CUDA_HOST_BYTES + facts.largest_tensor_bytes + host_extra
    fits = True
    note = f"device_map=auto over {gpus} GPU{'s' if gpus > 1 else ''}"
    if gpu_budgets and gpus > len(gpu_budgets):
        spill = need - sum(max(0, budget - CUDA_CONTEXT_BYTES) for budget in gpu_budgets)
        cpu = budgets.get("cpu")
        if cpu is not None and spill + host <= cpu:
            gpus = len(gpu_budgets)
            host += spill
            note = f"{format_bytes(spill)} offloaded to the CPU (slow)"
            return StagePlan(name, host, per_gpu, gpus, True, note)
        else:
            fits = False
            note = (
                f"needs {gpus} GPUs of {format_bytes(per_gpu)}, --max-memory gives "
                f"{len(gpu_budgets)}; add GPUs, a cpu budget or --offload-folder"
            )
    cpu = budgets.get("cpu")
    if fits and cpu is not None and host > cpu:
        fits = False
        note = f"host needs {format_bytes(host)}, more than the cpu budget"
    if fits or not gpu_budgets:
        per_gpu_peak = math.ceil(need / gpus) + CUDA_CONTEXT_BYTES
    else:
        per_gpu_peak = per_gpu
    return StagePlan(name, host, per_gpu_peak, gpus, fits, note)


def _dtype_bytes(name: str) -> int:
    if name not in DTYPE_BYTES:
        raise SGMError(f"dtype {name!r} is not one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[name]


def run_dtype(options: PlanOptions) -> str:
    """The dtype profile, eval and generate run in (`auto`: as the commands resolve it)."""
    if options.dtype != "auto":
        return options.dtype
    return "float32" if options.device == "cpu" else "bfloat16"


def plan_stages(facts: ModelFacts, options: PlanOptions) -> MemoryPlan:
    """Each stage's peak memory for MODEL under OPTIONS."""
    if options.device not in ("cuda", "cpu"):
        raise SGMError(f"plan --device {options.device!r} is not cuda or cpu")
    element = _dtype_bytes(run_dtype(options))
    verify_element = _dtype_bytes(options.verify_dtype)
    weights = facts.params * element
    cpu = options.max_memory.get("cpu")
    on_cpu = options.device == "cpu" or bool(
        options.max_memory and not any(isinstance(k, int) for k in options.max_memory)
    )
    stages = []

    bake_host = BAKE_PROCESS_BYTES + BAKE_BUFFER_BYTES
    stages.append(
        StagePlan(
            "bake",
            bake_host,
            0,
            0,
            cpu is None or bake_host <= cpu,
            "streamed; source memory-mapped (page cache)",
        )
    )
    # verify --full: three prompts (an image and a short text where the model takes images),
    # nine float32 logit tensors kept on the host, and, while the baked tensors are swapped in,
    # a folded tensor read from each checkpoint and converted (about three copies at the
    # verification dtype).
    prompt = facts.image_tokens + TEXT_PROMPT_TOKENS
    logits = 3 * VERIFY_PROMPTS * prompt * facts.vocab_size * 4
    swap = 3 * facts.block_largest_bytes // max(1, _stored_element(facts)) * verify_element
    verify_forward = forward_bytes(facts, 1, prompt, verify_element)
    if on_cpu:
        full_working, full_host = verify_forward + logits + swap, 0
    else:  # logits and the swap's reads live on the host; the forward pass on the GPUs
        full_working, full_host = verify_forward + prompt * facts.vocab_size * 4, logits + swap
    full = _whole_model_stage(
        "verify --full",
        facts.params * verify_element,
        full_working,
        full_host,
        facts,
        options,
    )
    verify_host = (
        PROCESS_BYTES
        + max(facts.block_params * 4, 2 * facts.block_params * _stored_element(facts))
        + 4 * 128 * max(facts.hidden_size, 1) * 4
    )
    if not facts.streamed:
        stages.append(
            replace(
                full, stage="verify", note=f"whole model (no layer streaming here); {full.note}"
            )
        )
    else:
        stages.append(
            StagePlan(
                "verify",
                verify_host,
                0,
                0,
                cpu is None or verify_host <= cpu,
                f"one MLP block in float32 ({facts.block_params / 1e6:.0f}M parameters)",
            )
        )
    stages.append(replace(full, note=f"at {options.verify_dtype} (--verify-dtype); {full.note}"))
    # Profiling: one batch's forward pass (the logits of the last position only); pooled
    # responses go to a memory-mapped store on disk (file pages, not the process's), and
    # scoring reads one module at a time.
    store_bytes = options.profile_samples * facts.units * 4
    activations = forward_bytes(
        facts, options.batch_size, options.sequence_length, element, capture=True
    )
    profile = _whole_model_stage("profile", weights, activations, SCORING_BYTES, facts, options)
    stages.append(
        StagePlan(
            profile.stage,
            profile.host_bytes,
            profile.gpu_bytes,
            profile.gpus,
            profile.fits,
            f"{profile.note}; response store {format_bytes(store_bytes)} on disk",
        )
    )
    kv_cache = (
        options.batch_size
        * (options.sequence_length + options.new_tokens)
        * facts.total_layers
        * 2
        * facts.kv_width
        * element
    )
    generation = kv_cache + forward_bytes(
        facts, options.batch_size, options.sequence_length, element
    )
    stages.append(_whole_model_stage("eval/generate", weights, generation, 0, facts, options))
    return MemoryPlan(facts, options, tuple(stages))


def _stored_element(facts: ModelFacts) -> int:
    return int(DTYPES.get(facts.stored_dtype, (None, 2))[1])


def plan(model: str, options: PlanOptions, recipe_file: Path | None = None) -> MemoryPlan:
    """The memory plan of MODEL: facts from config and headers, then every stage's peak."""
    return plan_stages(model_facts(model, options.revision, recipe_file), options)
