"""Tiny random-weight configs for the model families sgm-bake must handle.

Every config is built from explicit keyword arguments so tests never touch the
Hub. Sizes are chosen so that each model instantiates and runs a text-only
forward pass in well under a second on CPU, while keeping the same module
layout (and therefore the same MLP names) as the real checkpoints.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    PretrainedConfig,
    PreTrainedModel,
)

VOCAB = 256
"""Shared tiny vocabulary. Image/video placeholder and other special token ids
live in 246..255 so that ``torch.randint(10, VOCAB - 10, ...)`` never produces
them. (Chameleon/Emu3 VQ-code tokens use 230..245; for a text-only forward they
are ordinary tokens.)"""

HIDDEN = 32
INTERMEDIATE = 64
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
LAYERS = 2

IMAGE_TOKEN = 250
VIDEO_TOKEN = 251
BOI_TOKEN = 252
EOI_TOKEN = 253
VISION_START = 254
VISION_END = 255

_TEXT_COMMON: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "intermediate_size": INTERMEDIATE,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "max_position_embeddings": 128,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def _text(model_type: str | None = None, **overrides: object) -> dict[str, Any]:
    """Language-model sub-config kwargs shared by every family.

    ``model_type`` is only set when the parent config resolves the text config
    through ``AutoConfig`` (a dict without it would fall back to the default
    text architecture of the parent, which is usually what we want anyway).
    """
    kwargs = dict(_TEXT_COMMON)
    if model_type is not None:
        kwargs["model_type"] = model_type
    kwargs.update(overrides)
    return kwargs


def _vision(**overrides: object) -> dict[str, Any]:
    """A ViT-style vision tower of one layer: 32px image, 8px patches -> 16 patches (most
    families' towers take these keys; `overrides` adds a family's own)."""
    kwargs: dict[str, Any] = {
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": 1,
        "num_attention_heads": HEADS,
        "image_size": 32,
        "patch_size": 8,
    }
    kwargs.update(overrides)
    return kwargs


def _clip_vision(**overrides: object) -> dict[str, Any]:
    """CLIP vision tower."""
    return _vision(model_type="clip_vision_model", projection_dim=HIDDEN, **overrides)


def _siglip_vision(**overrides: object) -> dict[str, Any]:
    """SigLIP vision tower."""
    return _vision(model_type="siglip_vision_model", **overrides)


def _pixtral_vision() -> dict[str, Any]:
    """Pixtral vision tower (Mistral3, LightOnOCR)."""
    return _vision(model_type="pixtral", head_dim=HEAD_DIM)


def _mrope(section: list[int]) -> dict[str, Any]:
    """Multimodal RoPE parameters; ``section`` must sum to head_dim // 2."""
    return {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section}


def _mrope_full() -> dict[str, Any]:
    """Multimodal RoPE over the whole head (Qwen3.5, GLM-4V)."""
    return {**_mrope([2, 1, 1]), "partial_rotary_factor": 1.0}


_QWEN_TOKENS: dict[str, int] = {
    "image_token_id": IMAGE_TOKEN,
    "video_token_id": VIDEO_TOKEN,
    "vision_start_token_id": VISION_START,
    "vision_end_token_id": VISION_END,
}
"""The image and video token ids of the Qwen-VL families (and those built on them)."""

_GLM_TOKENS: dict[str, int] = {
    "image_token_id": IMAGE_TOKEN,
    "video_token_id": VIDEO_TOKEN,
    "image_start_token_id": VISION_START,
    "image_end_token_id": VISION_END,
    "video_start_token_id": BOI_TOKEN,
    "video_end_token_id": EOI_TOKEN,
}
"""The image and video token ids of the GLM-4V families."""

_LINEAR_ATTENTION: dict[str, Any] = {
    "layer_types": ["linear_attention", "full_attention"],
    "linear_conv_kernel_dim": 2,
    "linear_key_head_dim": 8,
    "linear_value_head_dim": 8,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
}
"""Qwen3.5's text layers: one linear-attention and one full-attention layer."""


def _omni_audio(**overrides: object) -> dict[str, Any]:
    """The Qwen-Omni thinkers' audio encoder: one layer."""
    kwargs: dict[str, Any] = {
        "num_mel_bins": 16,
        "encoder_layers": 1,
        "encoder_attention_heads": HEADS,
        "encoder_ffn_dim": INTERMEDIATE,
        "d_model": HIDDEN,
        "output_dim": HIDDEN,
        "max_source_positions": 64,
    }
    kwargs.update(overrides)
    return kwargs


# --------------------------------------------------------------------------
# Text-only families (AutoModelForCausalLM)
# --------------------------------------------------------------------------


_GEMMA_WINDOW: dict[str, Any] = {
    "head_dim": HEAD_DIM,
    "sliding_window": 16,
    "query_pre_attn_scalar": HEAD_DIM,
}

_DECODERS: dict[str, dict[str, Any]] = {
    "llama": {"head_dim": HEAD_DIM},
    "mistral": {"head_dim": HEAD_DIM, "sliding_window": None},
    "qwen2": {},
    "qwen3": {"head_dim": HEAD_DIM},
    # Phi-3 fuses gate and up into ``gate_up_proj``.
    "phi3": {"original_max_position_embeddings": 128, "sliding_window": None},
    # Phi-1/2: plain fc1/fc2 MLP with biases.
    "phi": {},
    "gemma": {"head_dim": HEAD_DIM},
    "gemma2": _GEMMA_WINDOW,
    "gemma3_text": _GEMMA_WINDOW,
    "olmo2": {},
    "granite": {},
}
"""Text-only families that take the shared text config and a few keys of their own."""


def _decoder(model_type: str) -> Callable[[], PretrainedConfig]:
    """The builder of a family of _DECODERS."""
    return lambda: AutoConfig.for_model(model_type, **_text(**_DECODERS[model_type]))


def _gpt2() -> PretrainedConfig:
    """GPT-2 uses its own argument names and Conv1D projections."""
    return AutoConfig.for_model(
        "gpt2",
        vocab_size=VOCAB,
        n_positions=128,
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=HEADS,
        n_inner=INTERMEDIATE,
        bos_token_id=1,
        eos_token_id=2,
    )


def _gemma3n_text() -> PretrainedConfig:
    """Text-only Gemma 3n (the multimodal gemma3n needs timm for its vision tower).

    Layer 0 gets activation sparsity like the first layers of the real model.
    """
    return AutoConfig.for_model(
        "gemma3n_text",
        **_text(head_dim=HEAD_DIM, sliding_window=16),
        vocab_size_per_layer_input=VOCAB,
        hidden_size_per_layer_input=8,
        laurel_rank=4,
        altup_num_inputs=2,
        num_kv_shared_layers=0,
        layer_types=["sliding_attention", "full_attention"],
        activation_sparsity_pattern=[0.95, 0.0],
    )


# --------------------------------------------------------------------------
# Multimodal families (AutoModelForImageTextToText)
# --------------------------------------------------------------------------


def _llava_like(model_type: str, **extra: object) -> PretrainedConfig:
    """LLaVA's layout (a CLIP tower, a Llama decoder), shared by its video and tiled forms."""
    return AutoConfig.for_model(
        model_type,
        vision_config=_clip_vision(),
        text_config=_text("llama", head_dim=HEAD_DIM),
        image_token_index=IMAGE_TOKEN,
        vision_feature_layer=-1,
        **extra,
    )


def _llava() -> PretrainedConfig:
    return _llava_like("llava")


def _llava_next() -> PretrainedConfig:
    return _llava_like("llava_next", image_grid_pinpoints=[[32, 32]])


def _llava_next_video() -> PretrainedConfig:
    return _llava_like(
        "llava_next_video", video_token_index=VIDEO_TOKEN, image_grid_pinpoints=[[32, 32]]
    )


def _llava_onevision() -> PretrainedConfig:
    return AutoConfig.for_model(
        "llava_onevision",
        vision_config=_siglip_vision(),
        text_config=_text("qwen2"),
        image_token_index=IMAGE_TOKEN,
        video_token_index=VIDEO_TOKEN,
        image_grid_pinpoints=[[32, 32]],
        vision_feature_layer=-1,
    )


def _vipllava() -> PretrainedConfig:
    """VipLlava concatenates several vision layers; two are enough."""
    return AutoConfig.for_model(
        "vipllava",
        vision_config=_clip_vision(num_hidden_layers=2),
        text_config=_text("llama", head_dim=HEAD_DIM),
        image_token_index=IMAGE_TOKEN,
        vision_feature_layers=[-2, -1],
    )


def _video_llava() -> PretrainedConfig:
    return _llava_like("video_llava", video_token_index=VIDEO_TOKEN)


def _paligemma() -> PretrainedConfig:
    return AutoConfig.for_model(
        "paligemma",
        vision_config=_siglip_vision(projection_dim=HIDDEN),
        text_config=_text("gemma", head_dim=HEAD_DIM),
        image_token_index=IMAGE_TOKEN,
        projection_dim=HIDDEN,
        hidden_size=HIDDEN,
        vocab_size=VOCAB,
    )


def _gemma3() -> PretrainedConfig:
    """Gemma3: 32px/8px -> 4x4 patches pooled to mm_tokens_per_image=4."""
    return AutoConfig.for_model(
        "gemma3",
        vision_config=_siglip_vision(),
        text_config=_text(
            "gemma3_text", head_dim=HEAD_DIM, sliding_window=16, query_pre_attn_scalar=HEAD_DIM
        ),
        mm_tokens_per_image=4,
        image_token_index=IMAGE_TOKEN,
        boi_token_index=BOI_TOKEN,
        eoi_token_index=EOI_TOKEN,
    )


def _mllama() -> PretrainedConfig:
    """Mllama: 3 text layers, layer 1 is a cross-attention layer."""
    return AutoConfig.for_model(
        "mllama",
        text_config=_text(num_hidden_layers=3, cross_attention_layers=[1]),
        vision_config={
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": 1,
            "num_global_layers": 1,
            "attention_heads": HEADS,
            "image_size": 32,
            "patch_size": 8,
            "max_num_tiles": 1,
            "supported_aspect_ratios": [[1, 1]],
            "intermediate_layers_indices": [0],
            "vision_output_dim": HIDDEN * 2,
        },
        image_token_index=IMAGE_TOKEN,
    )


def _idefics2() -> PretrainedConfig:
    return AutoConfig.for_model(
        "idefics2",
        vision_config=_vision(),
        perceiver_config={
            "hidden_size": HIDDEN,
            "resampler_n_latents": 4,
            "resampler_depth": 1,
            "resampler_n_heads": 2,
            "resampler_head_dim": 8,
            "num_key_value_heads": 1,
        },
        text_config=_text("mistral", head_dim=HEAD_DIM, sliding_window=None),
        image_token_id=IMAGE_TOKEN,
    )


def _idefics3_like(model_type: str) -> PretrainedConfig:
    """Idefics3 and SmolVLM share the exact same layout."""
    return AutoConfig.for_model(
        model_type,
        vision_config=_vision(),
        text_config=_text("llama", head_dim=HEAD_DIM),
        image_token_id=IMAGE_TOKEN,
        scale_factor=2,
    )


def _qwen2_vl() -> PretrainedConfig:
    return AutoConfig.for_model(
        "qwen2_vl",
        text_config=_text(rope_parameters=_mrope([2, 1, 1])),
        vision_config={
            "depth": 1,
            "embed_dim": HIDDEN,
            "hidden_size": HIDDEN,
            "num_heads": HEADS,
            "mlp_ratio": 2,
            "patch_size": 4,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        **_QWEN_TOKENS,
    )


def _qwen2_5_vl() -> PretrainedConfig:
    return AutoConfig.for_model(
        "qwen2_5_vl",
        text_config=_text(rope_parameters=_mrope([2, 1, 1])),
        vision_config=_merger_vision(window_size=16, fullatt_block_indexes=[0]),
        **_QWEN_TOKENS,
    )


def _merger_vision(**overrides: object) -> dict[str, Any]:
    """A Qwen2.5-VL-style vision tower of one block (4px patches, 2x2 merge, 2 frames), the
    form Qwen3-VL, GLM-4V and EXAONE 4.5 take too."""
    kwargs: dict[str, Any] = {
        "depth": 1,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_heads": HEADS,
        "out_hidden_size": HIDDEN,
        "patch_size": 4,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    kwargs.update(overrides)
    return kwargs


def _qwen3_vl_vision(**overrides: object) -> dict[str, Any]:
    return _merger_vision(num_position_embeddings=16, **overrides)


def _qwen3_vl() -> PretrainedConfig:
    return AutoConfig.for_model(
        "qwen3_vl",
        text_config=_text(head_dim=HEAD_DIM, rope_parameters=_mrope([2, 1, 1])),
        vision_config=_qwen3_vl_vision(deepstack_visual_indexes=[0]),
        **_QWEN_TOKENS,
    )


def _qwen3_5() -> PretrainedConfig:
    """Qwen3.5 (dense): one linear-attention and one full-attention layer."""
    return AutoConfig.for_model(
        "qwen3_5",
        text_config=_text(
            head_dim=HEAD_DIM,
            rope_parameters=_mrope_full(),
            **_LINEAR_ATTENTION,
        ),
        vision_config=_qwen3_vl_vision(),
        **_QWEN_TOKENS,
    )


def _aya_vision() -> PretrainedConfig:
    return AutoConfig.for_model(
        "aya_vision",
        vision_config=_siglip_vision(),
        text_config=_text("cohere2", head_dim=HEAD_DIM, sliding_window=16),
        image_token_index=IMAGE_TOKEN,
        downsample_factor=2,
    )


def _cohere2_vision() -> PretrainedConfig:
    return AutoConfig.for_model(
        "cohere2_vision",
        vision_config=_siglip_vision(),
        text_config=_text("cohere2", head_dim=HEAD_DIM, sliding_window=16),
        image_token_id=IMAGE_TOKEN,
        downsample_factor=2,
        alignment_intermediate_size=INTERMEDIATE,
    )


def _mistral3() -> PretrainedConfig:
    return AutoConfig.for_model(
        "mistral3",
        vision_config=_pixtral_vision(),
        text_config=_text("mistral", head_dim=HEAD_DIM, sliding_window=None),
        image_token_index=IMAGE_TOKEN,
        spatial_merge_size=2,
    )


def _lighton_ocr() -> PretrainedConfig:
    return AutoConfig.for_model(
        "lighton_ocr",
        vision_config=_pixtral_vision(),
        text_config=_text("qwen3", head_dim=HEAD_DIM),
        image_token_id=IMAGE_TOKEN,
        spatial_merge_size=2,
    )


def _internvl() -> PretrainedConfig:
    return AutoConfig.for_model(
        "internvl",
        vision_config={
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": 1,
            "num_attention_heads": HEADS,
            "image_size": [32, 32],
            "patch_size": [8, 8],
        },
        text_config=_text("qwen2"),
        image_token_id=IMAGE_TOKEN,
        image_seq_length=4,
    )


def _got_ocr2() -> PretrainedConfig:
    return AutoConfig.for_model(
        "got_ocr2",
        vision_config={
            "hidden_size": HIDDEN,
            "output_channels": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": HEADS,
            "image_size": 64,
            "patch_size": 16,
            "window_size": 2,
            "global_attn_indexes": [0],
            "mlp_dim": INTERMEDIATE,
        },
        text_config=_text("qwen2"),
        image_token_index=IMAGE_TOKEN,
    )


def _fuyu() -> PretrainedConfig:
    """Fuyu has no vision tower: patches are linearly embedded into Persimmon."""
    return AutoConfig.for_model(
        "fuyu",
        text_config=_text("persimmon"),
        image_size=32,
        patch_size=8,
        image_token_id=IMAGE_TOKEN,
    )


def _chameleon() -> PretrainedConfig:
    """Chameleon is a single decoder; images come in as VQ codes."""
    return AutoConfig.for_model(
        "chameleon",
        **_text(),
        vq_config={
            "embed_dim": 8,
            "num_embeddings": 16,
            "latent_channels": 32,
            "resolution": 16,
            "base_channels": 32,  # GroupNorm uses 32 groups
            "channel_multiplier": [1, 1],
            "num_res_blocks": 1,
            "attn_resolutions": [],
        },
        vocabulary_map={
            "<image>": IMAGE_TOKEN,
            **{f"IMGIMG{chr(65 + i)}Z": 230 + i for i in range(10)},
        },
    )


def _emu3() -> PretrainedConfig:
    return AutoConfig.for_model(
        "emu3",
        text_config=_text(),
        vq_config={
            "codebook_size": 16,
            "embed_dim": 4,
            "latent_channels": 4,
            "base_channels": 32,  # GroupNorm uses 32 groups
            "channel_multiplier": [1, 1],
            "num_res_blocks": 1,
            "attn_resolutions": [],
            "hidden_size": 8,
            "num_attention_heads": 1,
            "temporal_downsample_factor": 2,
        },
        vocabulary_map={
            "<image>": IMAGE_TOKEN,
            "<|extra_200|>": EOI_TOKEN,
            **{f"<|visual token{i:06d}|>": 230 + i for i in range(16)},
        },
    )


def _janus() -> PretrainedConfig:
    return AutoConfig.for_model(
        "janus",
        text_config=_text("llama", head_dim=HEAD_DIM),
        vision_config={
            "hidden_size": HIDDEN,
            "num_hidden_layers": 1,
            "num_attention_heads": HEADS,
            "image_size": 32,
            "patch_size": 8,
            "mlp_ratio": 2.0,
            "projection_dim": HIDDEN,
            "num_image_tokens": 16,
        },
        vq_config={
            "embed_dim": 8,
            "num_embeddings": 16,
            "latent_channels": 32,
            "base_channels": 32,  # GroupNorm uses 32 groups
            "channel_multiplier": [1, 1],
            "num_res_blocks": 1,
            "num_patches": 4,
            "projection_dim": HIDDEN,
            "image_token_embed_dim": HIDDEN,
        },
        image_token_id=IMAGE_TOKEN,
    )


def _lfm2_vl() -> PretrainedConfig:
    """LFM2-VL: the LFM2 text model mixes short-conv and attention layers."""
    return AutoConfig.for_model(
        "lfm2_vl",
        vision_config={
            "model_type": "siglip2_vision_model",
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": 1,
            "num_attention_heads": HEADS,
            "patch_size": 8,
            "num_patches": 16,
            "vision_use_head": False,
        },
        text_config=_text(
            "lfm2",
            layer_types=["conv", "full_attention"],
            # Keep the real auto-adjust (2/3 * intermediate, rounded up) so the
            # MLP width differs from intermediate_size exactly like LFM2 (64 -> 48).
            block_auto_adjust_ff_dim=True,
            block_multiple_of=16,
        ),
        image_token_id=IMAGE_TOKEN,
        projector_hidden_size=HIDDEN,
        downsample_factor=2,
    )


def _glm4v() -> PretrainedConfig:
    return AutoConfig.for_model(
        "glm4v",
        text_config=_text(rope_parameters=_mrope_full()),
        vision_config=_glm_vision(),
        **_GLM_TOKENS,
    )


def _paddleocr_vl() -> PretrainedConfig:
    return AutoConfig.for_model(
        "paddleocr_vl",
        text_config=_text(head_dim=HEAD_DIM, rope_parameters=_mrope([2, 1, 1])),
        vision_config=_vision(spatial_merge_size=2),
        **_QWEN_TOKENS,
    )


def _ovis2() -> PretrainedConfig:
    return AutoConfig.for_model(
        "ovis2",
        vision_config=_vision(vocab_size=16),
        text_config=_text("qwen2"),
        image_token_id=IMAGE_TOKEN,
        visual_indicator_token_ids=[246, 247, 248, 249, VIDEO_TOKEN],
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
    )


EXPERTS = 4
MOE_INTERMEDIATE = 24
"""Expert width: 2 * 24 = 48 and 24 both differ from HIDDEN = 32, so the orientation of a
stacked expert tensor can be told from its shape (a square one could not)."""


def _moe_text(**overrides: object) -> dict[str, Any]:
    """Text config of a mixture-of-experts family: 4 experts, top 2."""
    return _text(
        head_dim=HEAD_DIM,
        num_experts_per_tok=2,
        moe_intermediate_size=MOE_INTERMEDIATE,
        **overrides,
    )


def _qwen3_moe_text() -> dict[str, Any]:
    """Qwen3's MoE decoder (Qwen3-VL-MoE, Qwen3-Omni): layer 0 dense, layer 1 with 4 experts."""
    return _moe_text(
        rope_parameters=_mrope([2, 1, 1]),
        num_experts=EXPERTS,
        decoder_sparse_step=1,
        mlp_only_layers=[0],
    )


def _qwen3_vl_moe() -> PretrainedConfig:
    """Qwen3-VL-MoE: layer 0 dense (mlp_only_layers), layer 1 with 4 experts."""
    return AutoConfig.for_model(
        "qwen3_vl_moe",
        text_config=_qwen3_moe_text(),
        vision_config=_qwen3_vl_vision(deepstack_visual_indexes=[0]),
        **_QWEN_TOKENS,
    )


def _qwen3_5_moe() -> PretrainedConfig:
    """Qwen3.5-MoE: every layer has 4 experts plus a gated shared expert."""
    return AutoConfig.for_model(
        "qwen3_5_moe",
        text_config=_moe_text(
            rope_parameters=_mrope_full(),
            **_LINEAR_ATTENTION,
            num_experts=EXPERTS,
            shared_expert_intermediate_size=40,
        ),
        vision_config=_qwen3_vl_vision(),
        **_QWEN_TOKENS,
    )


def _glm4v_moe() -> PretrainedConfig:
    """GLM-4.5V: layer 0 dense (first_k_dense_replace), layer 1 with 4 experts and a shared one."""
    return AutoConfig.for_model(
        "glm4v_moe",
        text_config=_moe_text(
            rope_parameters=_mrope_full(),
            n_routed_experts=EXPERTS,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
        ),
        vision_config=_glm_vision(),
        **_GLM_TOKENS,
    )


def _llama4() -> PretrainedConfig:
    """Llama 4: layer 0 dense, layer 1 MoE (4 experts, top 1, plus a shared expert)."""
    text = _text(
        head_dim=HEAD_DIM,
        intermediate_size=MOE_INTERMEDIATE,
        intermediate_size_mlp=INTERMEDIATE,
        num_local_experts=EXPERTS,
        num_experts_per_tok=1,
        moe_layers=[1],
        attention_chunk_size=16,
        no_rope_layers=[1, 1],
    )
    return AutoConfig.for_model(
        "llama4",
        text_config=text,
        vision_config=_vision(
            vision_output_dim=HIDDEN,
            projector_input_dim=HIDDEN,
            projector_output_dim=HIDDEN,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        image_token_index=IMAGE_TOKEN,
        boi_token_index=BOI_TOKEN,
        eoi_token_index=EOI_TOKEN,
    )


def _gemma4(moe: bool = False) -> PretrainedConfig:
    """Gemma 4; with `moe`, every layer adds 4 experts beside its dense MLP (26B-A4B's form)."""
    extra: dict[str, Any] = {}
    if moe:
        extra = {
            "enable_moe_block": True,
            "num_experts": EXPERTS,
            "top_k_experts": 2,
            "moe_intermediate_size": MOE_INTERMEDIATE,
        }
    return AutoConfig.for_model(
        "gemma4",
        text_config=_text(
            head_dim=HEAD_DIM,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"],
            hidden_size_per_layer_input=0,
            vocab_size_per_layer_input=VOCAB,
            global_head_dim=HEAD_DIM,
            **extra,
        ),
        vision_config={
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": 1,
            "num_attention_heads": HEADS,
            "num_key_value_heads": HEADS,
            "head_dim": HEAD_DIM,
            "patch_size": 8,
        },
        audio_config=None,
        image_token_id=IMAGE_TOKEN,
        video_token_id=VIDEO_TOKEN,
        boi_token_id=BOI_TOKEN,
        eoi_token_id=EOI_TOKEN,
        audio_token_id=249,
        boa_token_id=248,
        eoa_token_index=247,
    )


def _blip_2() -> PretrainedConfig:
    """BLIP-2 with an OPT decoder."""
    return AutoConfig.for_model("blip-2", text_config=_opt_text(), **_blip_vision_qformer())


def _phi4_multimodal() -> PretrainedConfig:
    """Phi-4-multimodal: Phi-3-style decoder with tiny image and audio encoders."""
    return AutoConfig.for_model(
        "phi4_multimodal",
        **_text(),
        vision_config=_vision(crop_size=32),
        audio_config={
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_blocks": 1,
            "num_attention_heads": HEADS,
            "nemo_conv_channels": 8,
            "nemo_final_size": 4,
            "depthwise_seperable_out_channel": 8,
            "ext_pw_out_channel": 8,
        },
    )


def _opt_text() -> dict[str, Any]:
    """OPT decoder (BLIP-2, InstructBLIP): fc1/fc2 with biases on the layer itself."""
    return {
        "model_type": "opt",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "ffn_dim": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "word_embed_proj_dim": HIDDEN,
        "max_position_embeddings": 128,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def _blip_vision_qformer() -> dict[str, Any]:
    return {
        "vision_config": _vision(),
        "qformer_config": {
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": 1,
            "num_attention_heads": HEADS,
            "encoder_hidden_size": HIDDEN,
            "vocab_size": VOCAB,
        },
        "num_query_tokens": 4,
        "image_token_index": IMAGE_TOKEN,
    }


def _instructblip() -> PretrainedConfig:
    return AutoConfig.for_model("instructblip", text_config=_opt_text(), **_blip_vision_qformer())


def _glm_vision() -> dict[str, Any]:
    return _merger_vision(image_size=16)


def _glm_like(model_type: str, text_type: str | None) -> PretrainedConfig:
    """GLM-4.6V and GLM-OCR: GLM-4V's layout (fused gate_up_proj)."""
    vision = _glm_vision()
    if model_type == "glm46v":
        vision["model_type"] = "glm4v_vision"
    return AutoConfig.for_model(
        model_type,
        text_config=_text(text_type, rope_parameters=_mrope_full()),
        vision_config=vision,
        **_GLM_TOKENS,
    )


def _deepseek_vl() -> PretrainedConfig:
    return AutoConfig.for_model(
        "deepseek_vl",
        text_config=_text("llama", head_dim=HEAD_DIM),
        vision_config=_siglip_vision(),
        image_token_id=IMAGE_TOKEN,
    )


def _video_llama_3() -> PretrainedConfig:
    return AutoConfig.for_model(
        "video_llama_3",
        text_config=_text("qwen2"),
        vision_config={
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": 1,
            "num_attention_heads": HEADS,
            "patch_size": 8,
        },
        image_token_id=IMAGE_TOKEN,
        video_token_id=VIDEO_TOKEN,
    )


def _aria() -> PretrainedConfig:
    """Aria: every layer has 4 experts (stored [E, H, 2I]) and a shared expert."""
    return AutoConfig.for_model(
        "aria",
        text_config=_text(
            "aria_text",
            intermediate_size=MOE_INTERMEDIATE,
            moe_num_experts=EXPERTS,
            moe_topk=2,
            moe_num_shared_experts=1,
        ),
        vision_config=_vision(model_type="idefics3_vision"),
        projector_patch_to_query_dict={"16": 4, "4": 4},
        image_token_index=IMAGE_TOKEN,
    )


def _kimi_k25() -> PretrainedConfig:
    """Kimi K2.5: DeepSeek-V3 text (tiny MLA), layer 0 dense, layer 1 with 4 experts."""
    latent = {
        "kv_lora_rank": 16,
        "q_lora_rank": 16,
        "qk_rope_head_dim": HEAD_DIM,
        "qk_nope_head_dim": HEAD_DIM,
        "v_head_dim": HEAD_DIM,
        "head_dim": HEAD_DIM,
    }
    return AutoConfig.for_model(
        "kimi_k25",
        text_config=_text(
            "deepseek_v3",
            n_routed_experts=EXPERTS,
            moe_intermediate_size=MOE_INTERMEDIATE,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            num_experts_per_tok=2,
            n_shared_experts=1,
            num_key_value_heads=HEADS,
            **latent,
        ),
        vision_config={
            "model_type": "kimi_k25_vision",
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": 1,
            "num_attention_heads": HEADS,
            "patch_size": 8,
            "pos_emb_height": 4,
            "pos_emb_width": 4,
        },
        projection_hidden_size=HIDDEN,
        **_QWEN_TOKENS,
    )


def _exaone4_5() -> PretrainedConfig:
    return AutoConfig.for_model(
        "exaone4_5",
        text_config=_text(
            "exaone4", head_dim=HEAD_DIM, sliding_window=16, sliding_window_pattern=2
        ),
        vision_config=_merger_vision(),
        image_token_id=IMAGE_TOKEN,
        video_token_id=VIDEO_TOKEN,
    )


def _qwen3_omni_moe_thinker() -> PretrainedConfig:
    """Qwen3-Omni thinker: tiny audio and vision towers; layer 0 dense, layer 1 with 4 experts."""
    return AutoConfig.for_model(
        "qwen3_omni_moe_thinker",
        text_config=_qwen3_moe_text(),
        audio_config=_omni_audio(downsample_hidden_size=8),
        vision_config=_qwen3_vl_vision(deepstack_visual_indexes=[0]),
        image_token_id=IMAGE_TOKEN,
        video_token_id=VIDEO_TOKEN,
        audio_token_id=249,
        audio_start_token_id=248,
        user_token_id=247,
        vision_start_token_id=VISION_START,  # read by its position-id code, not a config field
    )


def _pp_chart2table() -> PretrainedConfig:
    """PP-Chart2Table: GOT-OCR2's layout."""
    config = _got_ocr2().to_dict()
    return AutoConfig.for_model(
        "pp_chart2table",
        vision_config=config["vision_config"],
        text_config=_text("qwen2"),
        image_token_index=IMAGE_TOKEN,
    )


def _instructblipvideo() -> PretrainedConfig:
    return AutoConfig.for_model(
        "instructblipvideo", text_config=_opt_text(), **_blip_vision_qformer()
    )


def _qwen2_5_omni_thinker() -> PretrainedConfig:
    """Qwen2.5-Omni thinker: Qwen2.5-VL-style vision, a tiny audio encoder, dense decoder."""
    vision = _qwen2_5_vl().to_dict()["vision_config"]
    return AutoConfig.for_model(
        "qwen2_5_omni_thinker",
        text_config=_text(rope_parameters=_mrope([2, 1, 1])),
        vision_config={k: v for k, v in vision.items() if k != "model_type"},
        audio_config=_omni_audio(),
        image_token_index=IMAGE_TOKEN,
        video_token_index=VIDEO_TOKEN,
        audio_token_index=249,
        audio_start_token_id=248,
        audio_end_token_id=247,
        vision_start_token_id=VISION_START,
    )


_BUILDERS: dict[str, Callable[[], PretrainedConfig]] = {
    # required
    "llava": _llava,
    "llava_next": _llava_next,
    "llava_onevision": _llava_onevision,
    "qwen2_vl": _qwen2_vl,
    "qwen2_5_vl": _qwen2_5_vl,
    "idefics3": lambda: _idefics3_like("idefics3"),
    "smolvlm": lambda: _idefics3_like("smolvlm"),
    "paligemma": _paligemma,
    "gemma3": _gemma3,
    "mllama": _mllama,
    "llama": _decoder("llama"),
    "mistral": _decoder("mistral"),
    "qwen2": _decoder("qwen2"),
    "gpt2": _gpt2,
    "phi3": _decoder("phi3"),
    # optional multimodal
    "llava_next_video": _llava_next_video,
    "vipllava": _vipllava,
    "video_llava": _video_llava,
    "aya_vision": _aya_vision,
    "mistral3": _mistral3,
    "internvl": _internvl,
    "idefics2": _idefics2,
    "qwen3_vl": _qwen3_vl,
    "qwen3_5": _qwen3_5,
    "got_ocr2": _got_ocr2,
    "fuyu": _fuyu,
    "chameleon": _chameleon,
    "emu3": _emu3,
    "janus": _janus,
    "lfm2_vl": _lfm2_vl,
    "cohere2_vision": _cohere2_vision,
    "lighton_ocr": _lighton_ocr,
    "glm4v": _glm4v,
    "paddleocr_vl": _paddleocr_vl,
    "ovis2": _ovis2,
    "gemma4": _gemma4,
    "blip-2": _blip_2,
    "instructblip": _instructblip,
    "instructblipvideo": _instructblipvideo,
    "pp_chart2table": _pp_chart2table,
    "qwen2_5_omni_thinker": _qwen2_5_omni_thinker,
    "glm46v": lambda: _glm_like("glm46v", "glm4v_text"),
    "glm_ocr": lambda: _glm_like("glm_ocr", None),
    "deepseek_vl": _deepseek_vl,
    "video_llama_3": _video_llama_3,
    # mixtures of experts
    "qwen3_vl_moe": _qwen3_vl_moe,
    "qwen3_5_moe": _qwen3_5_moe,
    "glm4v_moe": _glm4v_moe,
    "llama4": _llama4,
    "aria": _aria,
    "kimi_k25": _kimi_k25,
    "qwen3_omni_moe_thinker": _qwen3_omni_moe_thinker,
    "exaone4_5": _exaone4_5,
    # optional text-only
    "gemma": _decoder("gemma"),
    "gemma2": _decoder("gemma2"),
    "gemma3_text": _decoder("gemma3_text"),
    "gemma3n_text": _gemma3n_text,
    "qwen3": _decoder("qwen3"),
    "phi": _decoder("phi"),
    "olmo2": _decoder("olmo2"),
    "granite": _decoder("granite"),
    "phi4_multimodal": _phi4_multimodal,
}

_TEXT_ONLY = {
    "llama", "mistral", "qwen2", "gpt2", "phi3",
    "gemma", "gemma2", "gemma3_text", "gemma3n_text", "qwen3", "phi", "olmo2", "granite",
    "phi4_multimodal",
}  # fmt: skip

TINY_FAMILIES: dict[str, str] = {
    name: "AutoModelForCausalLM" if name in _TEXT_ONLY else "AutoModelForImageTextToText"
    for name in _BUILDERS
}
"""model_type -> name of the transformers Auto class that loads it."""

_AUTO_CLASSES = {
    "AutoModelForCausalLM": AutoModelForCausalLM,
    "AutoModelForImageTextToText": AutoModelForImageTextToText,
}


MOE_VARIANTS: dict[str, Callable[[], PretrainedConfig]] = {
    "gemma4_moe": lambda: _gemma4(moe=True),
}
"""Tiny MoE variants of families whose recipe serves a dense and an MoE form."""

MOE_FAMILIES: tuple[str, ...] = (
    "qwen3_vl_moe",
    "qwen3_5_moe",
    "glm4v_moe",
    "llama4",
    "gemma4_moe",
    "aria",
    "kimi_k25",
    "qwen3_omni_moe_thinker",
)
"""Every tiny model with stacked experts (a TINY_FAMILIES key or a MOE_VARIANTS key)."""


def tiny_config(model_type: str) -> PretrainedConfig:
    """Return a fresh tiny config for ``model_type`` (a key of TINY_FAMILIES or MOE_VARIANTS)."""
    try:
        builder = {**_BUILDERS, **MOE_VARIANTS}[model_type]
    except KeyError:
        raise KeyError(f"no tiny config for model_type {model_type!r}") from None
    return builder()


def seed_everything(seed: int) -> None:
    """Seed Python and torch RNGs so random init is reproducible."""
    random.seed(seed)
    torch.manual_seed(seed)


def build_tiny_model(model_type: str, seed: int = 0) -> PreTrainedModel:
    """Instantiate the tiny model with random weights, in eval mode, float32."""
    config = tiny_config(model_type)
    seed_everything(seed)
    auto_cls = _AUTO_CLASSES[TINY_FAMILIES.get(model_type, "AutoModelForImageTextToText")]
    model = auto_cls.from_config(config, dtype=torch.float32)
    return model.float().eval()
