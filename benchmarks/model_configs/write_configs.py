"""Write config.json (no weights) for five published VLMs from their published dimensions.

The plan (`sgm-bake plan benchmarks/model_configs/NAME`) works from these alone: it builds each
model's transformers class on the meta device to count parameters exactly. Dimensions are those
of the configs published with the checkpoints on the Hugging Face Hub:

- llava-hf/llava-1.5-7b-hf, llava-hf/llava-1.5-13b-hf (CLIP ViT-L/14-336 + Vicuna),
- llava-hf/llava-v1.6-34b-hf (CLIP ViT-L/14-336 + Nous-Hermes-2-Yi-34B),
- Qwen/Qwen2-VL-72B-Instruct,
- meta-llama/Llama-3.2-90B-Vision-Instruct.

Run: python benchmarks/model_configs/write_configs.py
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaNextConfig,
    MllamaConfig,
    Qwen2VLConfig,
)

HERE = Path(__file__).parent
CLIP_L_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
}


def llava(hidden: int, intermediate: int, layers: int, heads: int) -> LlavaConfig:
    text = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        vocab_size=32064,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    )
    return LlavaConfig(
        text_config=text,
        vision_config=CLIPVisionConfig(**CLIP_L_336),
        image_token_id=32000,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        dtype="float16",
    )


def llava_next_34b() -> LlavaNextConfig:
    text = LlamaConfig(
        hidden_size=7168,
        intermediate_size=20480,
        num_hidden_layers=60,
        num_attention_heads=56,
        num_key_value_heads=8,
        vocab_size=64064,
        max_position_embeddings=4096,
        rope_theta=5000000.0,
        rms_norm_eps=1e-5,
    )
    return LlavaNextConfig(
        text_config=text,
        vision_config=CLIPVisionConfig(**CLIP_L_336),
        image_token_id=64000,
        vision_feature_layer=-2,
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        dtype="bfloat16",
    )


def qwen2_vl_72b() -> Qwen2VLConfig:
    return Qwen2VLConfig(
        text_config={
            "hidden_size": 8192,
            "intermediate_size": 29568,
            "num_hidden_layers": 80,
            "num_attention_heads": 64,
            "num_key_value_heads": 8,
            "vocab_size": 152064,
            "max_position_embeddings": 32768,
            "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6,
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        },
        vision_config={
            "depth": 32,
            "embed_dim": 1280,
            "hidden_size": 8192,
            "mlp_ratio": 4,
            "num_heads": 16,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_channels": 3,
        },
        dtype="bfloat16",
    )


def llama_32_90b_vision() -> MllamaConfig:
    return MllamaConfig(
        text_config={
            "hidden_size": 8192,
            "intermediate_size": 28672,
            "num_hidden_layers": 100,
            "num_attention_heads": 64,
            "num_key_value_heads": 8,
            "vocab_size": 128256,
            "cross_attention_layers": list(range(3, 100, 5)),
            "max_position_embeddings": 131072,
            "rope_theta": 500000.0,
        },
        vision_config={
            "hidden_size": 1280,
            "intermediate_size": 5120,
            "num_hidden_layers": 32,
            "num_global_layers": 8,
            "attention_heads": 16,
            "image_size": 560,
            "patch_size": 14,
            "max_num_tiles": 4,
            "vision_output_dim": 7680,
        },
        dtype="bfloat16",
    )


CONFIGS = {
    "llava-1.5-7b": lambda: llava(4096, 11008, 32, 32),
    "llava-1.5-13b": lambda: llava(5120, 13824, 40, 40),
    "llava-v1.6-34b": llava_next_34b,
    "Qwen2-VL-72B": qwen2_vl_72b,
    "Llama-3.2-90B-Vision": llama_32_90b_vision,
}


def main() -> None:
    for name, build in CONFIGS.items():
        folder = HERE / name
        folder.mkdir(exist_ok=True)
        build().to_json_file(folder / "config.json")
        print(f"wrote {folder / 'config.json'}")


if __name__ == "__main__":
    main()
