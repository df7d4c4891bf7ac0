"""Tiny, complete LLaVA checkpoints built locally: config, weights, tokenizer, image processor
and chat template. They exercise the real transformers code paths without any download, for the
tests and the benchmarks (test scaffolding: not part of the installed package).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

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
