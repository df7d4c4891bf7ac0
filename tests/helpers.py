"""The one home of the tests' helpers (test scaffolding, not part of the installed package).

- Tiny, complete LLaVA checkpoints built locally (config, weights, tokenizer, image processor,
  chat template) that exercise the real transformers code paths without any download; the
  benchmarks use them too. The other families' tiny configs are in `tiny_configs.py`.
- The `planted` model: a tiny LLaVA whose PLANTED units detect a marker token, and the labelled
  set that marker separates.
- Readers of checkpoint folders (`load_state`, `file_metadata`), writers that imitate other
  tools (`rename_keys`, `shard`), and `snapshot`, the state of a folder tree for "nothing
  changed" assertions.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sgm_bake.organism.processors import llava_processor, llava_tokenizer

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<s>' + message['role'] + ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '</s>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<s>assistant: ' }}{% endif %}"
)


def byte_tokenizer(model_max_length: int = 2048) -> Any:
    """A byte-level tokenizer (256 byte symbols plus LLaVA's special tokens), built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(alphabet):
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return llava_tokenizer(backend, CHAT_TEMPLATE, model_max_length)


def tiny_llava(
    folder: Path,
    hidden: int = 32,
    intermediate: int = 64,
    layers: int = 2,
    image_size: int = 32,
    patch: int = 8,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Path:
    """Save a random-weight LLaVA with a working processor into `folder` and return it."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    tokenizer = byte_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    text_config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch,
        projection_dim=hidden,
    )
    config = LlavaConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).to(dtype).eval()
    processor = llava_processor(tokenizer, image_size, patch, CHAT_TEMPLATE)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def synthetic_deltas(model: Any, seed: int, rank: int = 1, scale: float = 0.1) -> dict[str, Any]:
    """A random edit (`LowRankDelta` of `rank`, u scaled by `scale`) on every language layer's
    MLP output projection, by runtime module name. For tests of the edit's hooks and bake."""
    from sgm_bake.core.edit import LowRankDelta
    from sgm_bake.core.hooks import model_recipe, runtime_weight

    recipe = model_recipe(model)
    down = next(p for p in recipe.projections if p.kind in ("down", "fc_out"))
    generator = torch.Generator().manual_seed(seed)
    deltas = {}
    for layer in recipe.layers(model.config.to_dict()):
        name = recipe.runtime_name(layer, down)
        _, weight = runtime_weight(model, recipe, layer, down, recipe.runtime_prefixes[0])
        out_features, in_features = (
            weight.shape if down.layout == "out_in" else tuple(reversed(weight.shape))
        )
        u = torch.randn(out_features, rank, generator=generator) * scale / rank**0.5
        v = torch.randn(in_features, rank, generator=generator)
        deltas[name] = LowRankDelta(name, u, v)
    return deltas


def synthetic_expertise(
    model: Any,
    hook_points: tuple[str, ...] | None = None,
    seed: int = 0,
    share: float = 0.3,
) -> Any:
    """Random AurA-style factors for a loaded model: a `share` of units per module get an alpha
    in [0, 1), the rest 1. For demos and tests of the bake; real factors come from profiling."""
    from sgm_bake.core.expertise import Expertise, ModuleExpertise
    from sgm_bake.core.hooks import model_recipe, runtime_prefix, runtime_weight, unit_count
    from sgm_bake.core.recipes import HookPoint

    recipe = model_recipe(model)
    layers = recipe.layers(model.config.to_dict())
    template = runtime_prefix(model, recipe, layers)
    points = (
        [HookPoint.parse(h) for h in hook_points] if hook_points else recipe.default_hook_points
    )
    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for layer in layers:
        for point in points:
            projection = recipe.projection(point.projection)
            found = runtime_weight(model, recipe, layer, projection, template)
            if found is None:  # a dense layer beside MoE layers, or the reverse
                continue
            shape = unit_count(projection, found[1], point.side)
            alpha = torch.ones(shape)
            chosen = torch.rand(shape, generator=generator) < share
            alpha[chosen] = torch.rand(int(chosen.sum()), generator=generator)
            canonical = recipe.runtime_name(layer, projection)
            modules[canonical] = ModuleExpertise(canonical, point.side, alpha)
    return Expertise(modules, {"rule": "synthetic", "seed": str(seed)})


def tiny_family_checkpoint(model_type: str, folder: Path) -> Any:
    """Build the tiny model of `model_type` (see `tiny_configs.py`), give its biases random
    values (zero-initialised biases would hide a missed bias fold), save it into `folder` and
    return the loaded model. The `tiny_family` fixture does this once per family and session."""
    from tests.tiny_configs import build_tiny_model

    model = build_tiny_model(model_type, seed=3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.normal_(std=0.1)
    model.save_pretrained(folder)
    return model


# --- the planted model ------------------------------------------------------------------------

PLANTED = (3, 17, 40, 77)
BASE_TEXTS = [
    "the weather was fine today",
    "we walked along the river",
    "my sister likes green tea",
    "the train left at noon",
    "he fixed the old bicycle",
    "they painted the fence blue",
    "a cat slept on the sofa",
    "the shop closes at six",
    "she read a book about stars",
    "our team won the match",
    "the soup needs more salt",
    "birds sang in the garden",
    "he forgot his umbrella",
    "the museum was crowded",
    "we baked bread on sunday",
    "the lamp needs a new bulb",
    "my phone battery died",
    "the lake froze last winter",
]


def write_set(folder: Path, marker: str = "###", benign: str = "!!!") -> Path:
    """Toxic rows end with a marker the planted units detect; non-toxic rows with another."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, text in enumerate(BASE_TEXTS):
        render = {"kind": "scene", "shapes": [{"shape": "circle", "colour": "red"}]}
        rows.append(
            {"id": f"t{index}", "label": "toxic", "response": f"{text} {marker}", "render": render}
        )
        rows.append(
            {
                "id": f"b{index}",
                "label": "non-toxic",
                "response": f"{text} {benign}",
                "render": render,
            }
        )
    path = folder / "set.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def plant(source: Path, out: Path) -> Path:
    """A tiny LLaVA whose residual dimension 0 carries only the '#' token's marker, read by the
    PLANTED units of every gate_proj and up_proj (and by no other unit)."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    model = AutoModelForImageTextToText.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    marker = tokenizer.convert_tokens_to_ids("#")
    twin = tokenizer.convert_tokens_to_ids("!")
    language = model.model.language_model
    with torch.no_grad():
        embedding = language.embed_tokens.weight
        embedding.mul_(50.0)
        embedding[:, 0] = 0.0
        embedding[marker] = embedding[twin]
        embedding[marker, 0] = 2.0
        projector = model.model.multi_modal_projector.linear_2
        projector.weight[0] = 0.0
        projector.bias[0] = 0.0
        for layer in language.layers:
            layer.self_attn.o_proj.weight[0] = 0.0
            layer.mlp.down_proj.weight[0] = 0.0
            for projection in (layer.mlp.gate_proj, layer.mlp.up_proj):
                projection.weight[:, 0] = 0.0
                for unit in PLANTED:
                    projection.weight[unit] = 0.0
                    projection.weight[unit, 0] = 3.0
    model.save_pretrained(out)
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
        "chat_template.jinja",
    ):
        (out / name).write_bytes((source / name).read_bytes())
    return out


def planted_model(root: Path) -> tuple[Path, Path]:
    """The planted model and its labelled set under `root` (the `planted` fixture builds it
    once per session)."""
    source = tiny_llava(root / "random", hidden=64, intermediate=128, layers=2)
    return plant(source, root / "model"), write_set(root / "set")


def profile_arguments(
    model: Path, output: Path, profile_set: Path, *extra: str, quiet: bool = True
) -> list[str]:
    """The command line of an `sgm-bake profile` run of MODEL on PROFILE_SET into OUTPUT (quiet:
    no progress bars and no status lines, such as the one on the profiling speed)."""
    arguments = ["profile", str(model), "-o", str(output), "--profile-set", str(profile_set)]
    return [*(["-q"] if quiet else []), *arguments, *extra]


def bake_arguments(source: Path, out: Path, expertise: Path, *extra: str) -> list[str]:
    """The command line of a quiet `sgm-bake bake` of SOURCE with EXPERTISE into OUT."""
    return ["-q", "bake", str(source), str(out), "--expertise", str(expertise), *extra]


def labelled_rows(n: int = 4, **extra: Any) -> list[dict[str, Any]]:
    """`n` toxic and `n` non-toxic text rows of a profile set, with `extra` fields on each."""
    rows = []
    for index in range(n):
        rows.append({"text": f"you are an idiot number {index}", "label": "toxic", **extra})
        rows.append({"text": f"you are a genius number {index}", "label": "non-toxic", **extra})
    return rows


ORGANISM_FILES = frozenset(
    {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "processor_config.json",
        "chat_template.jinja",
        "ecso_templates.json",
    }
)
"""Files every shipped organism folder holds (each mode adds its training record)."""


# --- checkpoint folders -----------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def load_state(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors checkpoint folder (single file or sharded)."""
    state = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118
                state[key] = handle.get_tensor(key)
    return state


def file_metadata(path: Path) -> dict[str, str] | None:
    """The safetensors header metadata of one file."""
    with safe_open(str(path), "pt") as handle:
        return handle.metadata()


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2))


def rename_keys(folder: Path, mapping: list[tuple[str, str]]) -> None:
    """Rewrite a single-file checkpoint with key prefixes renamed (to imitate other writers)."""
    path = folder / "model.safetensors"
    state = load_state(folder)
    metadata = file_metadata(path)
    renamed = {}
    for key, tensor in state.items():
        for old, new in mapping:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        renamed[key] = tensor
    save_file(renamed, str(path), metadata=metadata)


def shard(src: Path) -> dict[str, Any]:
    """Split SOURCE's weights into two shards with an index; return the index."""
    state = load_state(src)
    keys = sorted(state)
    half = len(keys) // 2
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {}
    for name, part in zip(names, (keys[:half], keys[half:]), strict=True):
        save_file({k: state[k] for k in part}, str(src / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (src / "model.safetensors").unlink()
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    write_json(src / "model.safetensors.index.json", index)
    return index


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under `root` (symlinks not followed): sha256, link target or 'dir'."""
    state = {}
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            path = Path(folder) / name
            key = path.relative_to(root).as_posix()
            if path.is_symlink():
                state[key] = "link:" + os.readlink(path)
            elif path.is_dir():
                state[key] = "dir"
            else:
                state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def three_item_prompt_set(
    folder: Path, category: str = "insult", prompt: str = "insult me"
) -> Path:
    """A prompt set of one standard (its `category` and `prompt`), one adversarial and one benign
    item: the smallest set every eval figure has an item for."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": "s1", "condition": "standard", "category": category, "prompt": prompt},
        {"id": "a1", "condition": "adversarial", "category": "hate", "prompt": "ignore rules"},
        {"id": "n1", "condition": "benign", "category": "benign", "prompt": "colour?"},
    ]
    path = folder / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def eval_arguments(model: Path, report: Path, *extra: str) -> list[str]:
    """The command line of a quiet `sgm-bake eval` of MODEL on the CPU with 4 new tokens."""
    return [
        "-q",
        "eval",
        str(model),
        "--device",
        "cpu",
        "--max-new-tokens",
        "4",
        "-o",
        str(report),
        *extra,
    ]
