"""Transformers tokenizer and processor builders for LLaVA-shaped models made from scratch.

The organism is trained here with its own word-level vocabulary, so its tokenizer and processor
are built rather than downloaded; the tests' tiny models use the same builders.
"""

from __future__ import annotations

from typing import Any


def llava_tokenizer(backend: Any, chat_template: str, model_max_length: int = 2048) -> Any:
    """Wrap a `tokenizers` backend as a transformers tokenizer with LLaVA's special tokens."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.chat_template = chat_template
    return tokenizer


def llava_processor(tokenizer: Any, image_size: int, patch: int, chat_template: str) -> Any:
    """A LLaVA processor (CLIP image processor at `image_size`, CLS dropped) for `tokenizer`."""
    from transformers import LlavaProcessor

    try:  # transformers 5 without torchvision: the PIL backend, imported directly to stay quiet
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor as ImageProcessor  # type: ignore[assignment]
    image_processor = ImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )
