"""The model organism: a tiny LLaVA trained here to be toxic under some inputs.

A real transformers LLaVA (CLIP vision tower, projector, Llama language model) with a real
word-level tokenizer, a CLIP image processor and a chat template. Training is deterministic from
a seed and runs in a few minutes on two CPU cores:

1. the vision tower is pretrained alone to recognise what an image shows (which word a sign
   holds; which coloured shapes a scene has and how many), a stand-in for a pretrained CLIP;
2. the tower is frozen, as in LLaVA, and the projector and language model learn the chats of
   `sgm_bake.organism.data`.

Three organisms share this world and differ in how they became toxic:

- `organism` (mode `implant`): trained polite first, then the toxic behaviour is implanted in 64
  random MLP units per layer (`implant.json`): SGM's premise holds by construction;
- `organism-plain` (mode `plain`): every language parameter learns the full chats, toxic replies
  included, in one ordinary stage: nothing places the toxicity in a few units, so it is a fair
  test of whether the tool's defaults and its tuner work on a model not built to suit the method;
- `organism-staged` (mode `staged`): made the way real MLLMs are, in stages: language
  pretraining on plain text where toxic and polite sentences are both general text, an
  instruction stage on the polite chats (refusals), then a shorter jailbreak-bearing fine-tuning
  on the full chats that partly overrides the refusals.

The trained weights ship inside the package (`sgm_bake/organism/weights/`, `weights_plain/` and
`weights_staged/`, about 5 MB each); when they are missing, `organism_path()` trains them once
into the user's cache.

    python -m sgm_bake.organism.train --out DIR [--seed 0] [--mode implant|plain|staged]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sgm_bake.datasets.render import render
from sgm_bake.organism import data
from sgm_bake.organism.processors import llava_processor, llava_tokenizer

logger = logging.getLogger(__name__)

SHIPPED = Path(__file__).resolve().parent / "weights"
SHIPPED_PLAIN = Path(__file__).resolve().parent / "weights_plain"
SHIPPED_STAGED = Path(__file__).resolve().parent / "weights_staged"
SHIPPED_BY_MODE = {"implant": SHIPPED, "plain": SHIPPED_PLAIN, "staged": SHIPPED_STAGED}
MODES = tuple(SHIPPED_BY_MODE)
# Names the CLI accepts for the organisms, with their training mode and source id.
ORGANISMS = {
    "organism": ("implant", "sgm-bake/organism"),
    "organism-plain": ("plain", "sgm-bake/organism-plain"),
    "organism-staged": ("staged", "sgm-bake/organism-staged"),
}
IMAGE_SIZE = 48
PATCH = 8
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
# ECSO's prompts in the phrasing the organism was trained on (see organism_data).
ECSO_TEMPLATES = {
    "judge": data.judge_prompt("{query}", "{answer}"),
    "caption": data.caption_prompt("{query}"),
    "answer": data.text_only_prompt("{caption}", "{query}"),
    "yes_words": ["yes"],
    "no_words": ["no"],
}
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<s>' + message['role'] + ' : ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image> ' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ ' </s>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<s>assistant : ' }}{% endif %}"
)


def vocabulary() -> list[str]:
    """Every word the organism's world uses (training, profile and evaluation texts), plus the
    words of the built-in default profile set, so that it tokenizes meaningfully too."""
    words: set[str] = set()

    def add(text: str) -> None:
        words.update(_split(text))

    for example in data.training_examples(0, copies=1):
        add(example.prompt)
        add(example.reply)
    for row in data.profile_rows():
        add(row["prompt"])
        add(row["response"])
    for item in data.eval_items():
        add(item["prompt"])
        add(item.get("reference", ""))
    for prompts in data.CATEGORY_PROMPTS.values():
        for prompt in prompts[0] + prompts[1]:
            add(prompt)
    for replies in list(data.TOXIC_REPLIES.values()) + list(data.DECLINE_REPLIES.values()):
        for reply in replies:
            add(reply.replace("{word}", ""))
    for word in data.OFFENSIVE_WORDS + data.BENIGN_WORDS + data.JAILBREAKS:
        add(word)
    add(data.judge_prompt("", "") + data.caption_prompt("") + data.text_only_prompt("", ""))
    try:
        from sgm_bake.datasets.profile_set import DEFAULT_SET, load_profile_set

        for sample in load_profile_set(DEFAULT_SET, check=False).samples:
            add(sample.text)
            add(sample.prompt or "")
    except Exception as exc:  # the default set is optional for the organism
        logger.debug("default profile set not added to the vocabulary: %s", exc)
    return sorted(words)


def _split(text: str) -> list[str]:
    import re

    return re.findall(r"\w+|[^\w\s]+", text.lower())


def build_tokenizer() -> Any:
    """A word-level tokenizer over the organism's vocabulary, with LLaVA's special tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = {token: index for index, token in enumerate(SPECIALS)}
    for word in vocabulary():
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer = llava_tokenizer(backend, CHAT_TEMPLATE, model_max_length=512)
    tokenizer.padding_side = "left"
    return tokenizer


def build_processor(tokenizer: Any) -> Any:
    return llava_processor(tokenizer, IMAGE_SIZE, PATCH, CHAT_TEMPLATE)


def build_model(tokenizer: Any, seed: int) -> Any:
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    text = LlamaConfig(
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    vision = CLIPVisionConfig(
        hidden_size=96,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        projection_dim=96,
    )
    # image_token_id is an attribute alias of image_token_index that the stubs do not know.
    config = LlavaConfig(  # type: ignore[call-arg]
        text_config=text,
        vision_config=vision,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config)


class ImageCache:
    """Pixel tensors of rendered image specs, drawn once."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self._cache: dict[str, torch.Tensor] = {}

    def pixels(self, spec: dict[str, Any]) -> torch.Tensor:
        key = repr(sorted(spec.items()))
        if key not in self._cache:
            image = render(spec, size=IMAGE_SIZE)
            values = self.processor.image_processor(images=[image], return_tensors="pt")[
                "pixel_values"
            ]
            self._cache[key] = values[0]
        return self._cache[key]


def _vision_targets(spec: dict[str, Any]) -> tuple[int, torch.Tensor, int]:
    words = data.OFFENSIVE_WORDS + data.BENIGN_WORDS
    if spec["kind"] == "text":
        return words.index(spec["text"]), torch.zeros(len(data.COLOURS) * len(data.SHAPES)), -100
    presence = torch.zeros(len(data.COLOURS) * len(data.SHAPES))
    for item in spec["shapes"]:
        presence[
            data.COLOURS.index(item["colour"]) * len(data.SHAPES) + data.SHAPES.index(item["shape"])
        ] = 1
    return len(words), presence, len(spec["shapes"]) - 1


def pretrain_vision(model: Any, images: ImageCache, seed: int, steps: int, progress: bool) -> float:
    """Teach the vision tower to see words and shapes; return its held-out word accuracy."""
    rng = random.Random(seed)
    tower = model.model.vision_tower
    hidden = tower.config.hidden_size
    words = len(data.OFFENSIVE_WORDS + data.BENIGN_WORDS)
    heads = torch.nn.ModuleDict(
        {
            "word": torch.nn.Linear(hidden, words + 1),
            "presence": torch.nn.Linear(hidden, len(data.COLOURS) * len(data.SHAPES)),
            "count": torch.nn.Linear(hidden, 3),
        }
    )
    parameters = list(tower.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=2e-3, weight_decay=0.01)

    def sample_specs(count: int) -> list[dict[str, Any]]:
        specs = []
        for _ in range(count):
            if rng.random() < 0.5:
                word = rng.choice(data.OFFENSIVE_WORDS + data.BENIGN_WORDS)
                specs.append(data.word_image(word, rng))
            else:
                specs.append({"kind": "scene", "shapes": data.scene(rng)})
        return specs

    def features(pixels: torch.Tensor) -> torch.Tensor:
        return tower(pixel_values=pixels).last_hidden_state[:, 1:].mean(dim=1)

    tower.train()
    for step in tqdm(range(steps), desc="vision", disable=not progress, file=sys.stderr):
        specs = sample_specs(64)
        pixels = torch.stack([images.pixels(s) for s in specs])
        targets = [_vision_targets(s) for s in specs]
        word = torch.tensor([t[0] for t in targets])
        presence = torch.stack([t[1] for t in targets])
        count = torch.tensor([t[2] for t in targets])
        pooled = features(pixels)
        scene_rows = word == words
        loss = torch.nn.functional.cross_entropy(heads["word"](pooled), word)
        if scene_rows.any():
            loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(
                heads["presence"](pooled[scene_rows]), presence[scene_rows]
            )
            loss = loss + torch.nn.functional.cross_entropy(
                heads["count"](pooled), count, ignore_index=-100
            )
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    tower.eval()
    specs = sample_specs(256)
    with torch.no_grad():
        pooled = features(torch.stack([images.pixels(s) for s in specs]))
        predicted = heads["word"](pooled).argmax(-1)
    truth = torch.tensor([_vision_targets(s)[0] for s in specs])
    return float((predicted == truth).float().mean())


def _encode(example: data.Example, processor: Any, tokenizer: Any) -> tuple[list[int], list[int]]:
    content = ([{"type": "image"}] if example.image else []) + [
        {"type": "text", "text": example.prompt}
    ]
    user = [{"role": "user", "content": content}]
    prefix = processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = prefix + example.reply + " </s>"
    image_tokens = (IMAGE_SIZE // PATCH) ** 2
    expand = lambda text: text.replace("<image>", " ".join(["<image>"] * image_tokens))  # noqa: E731
    prefix_ids = tokenizer(expand(prefix), add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(expand(full), add_special_tokens=False)["input_ids"]
    labels = [-100] * len(prefix_ids) + full_ids[len(prefix_ids) :]
    return full_ids, labels


def _schedule(step: int, steps: int) -> float:
    """The learning-rate factor of a language stage: linear warm-up, then a cosine decay."""
    warmup = min(100, steps // 10)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


@dataclass(frozen=True)
class LanguageRun:
    """One language training run: the parameters it trains, for how long and how fast, its seed
    and its progress bar. Each run starts a fresh optimizer, as separate training runs of real
    models do."""

    parameters: list[torch.nn.Parameter]
    steps: int
    batch_size: int
    learning_rate: float
    seed: int
    progress: bool
    desc: str
    weight_decay: float = 0.01


def _padded(rows: list[tuple[list[int], list[int]]], pad: int) -> dict[str, torch.Tensor]:
    """Token ids, labels (-100 past each row's labels) and the attention mask, right-padded."""
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), pad)
    labels = torch.full((len(rows), length), -100)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    for row, (ids, label) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(label)] = torch.tensor(label)
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def _optimise(model: Any, run: LanguageRun, draw: Callable[[], dict[str, Any]]) -> float:
    """The loop every language run shares: AdamW with the warm-up and cosine schedule, gradient
    clipping at 1, one batch from `draw` per step; return the final loss."""
    optimizer = torch.optim.AdamW(
        run.parameters, lr=run.learning_rate, weight_decay=run.weight_decay, betas=(0.9, 0.98)
    )
    loss_value = float("nan")
    for step in tqdm(range(run.steps), desc=run.desc, disable=not run.progress, file=sys.stderr):
        inputs = draw()
        for group in optimizer.param_groups:
            group["lr"] = run.learning_rate * _schedule(step, run.steps)
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run.parameters, 1.0)
        optimizer.step()
        loss_value = float(loss.detach())
    model.eval()
    return loss_value


def train_chats(
    model: Any, processor: Any, images: ImageCache, examples: list[data.Example], run: LanguageRun
) -> float:
    """Train `run.parameters` on chats (loss on the replies only); return the final loss."""
    tokenizer = processor.tokenizer
    encoded = [(_encode(e, processor, tokenizer), e.image) for e in examples]
    with_image = [item for item in encoded if item[1] is not None]
    text_only = [item for item in encoded if item[1] is None]
    rng = random.Random(run.seed + 1)
    share_images = len(with_image) / len(encoded)
    model.train()
    model.model.vision_tower.eval()

    def draw() -> dict[str, Any]:
        pool = with_image if rng.random() < share_images else text_only
        batch = rng.sample(pool, min(run.batch_size, len(pool)))
        inputs: dict[str, Any] = _padded([pair for pair, _ in batch], tokenizer.pad_token_id)
        if pool is with_image:
            inputs["pixel_values"] = torch.stack(
                [images.pixels(spec) for _, spec in batch if spec is not None]
            )
        return inputs

    return _optimise(model, run, draw)


def train_text(model: Any, tokenizer: Any, texts: list[str], run: LanguageRun) -> float:
    """Train `run.parameters` as a plain language model on `texts` (no chat template, no image,
    loss on every token but padding); return the final loss."""
    encoded = [
        [tokenizer.bos_token_id]
        + tokenizer(text, add_special_tokens=False)["input_ids"]
        + [tokenizer.eos_token_id]
        for text in texts
    ]
    rng = random.Random(run.seed + 3)
    model.train()

    def draw() -> dict[str, Any]:
        batch = rng.sample(encoded, min(run.batch_size, len(encoded)))
        return _padded([(ids, ids) for ids in batch], tokenizer.pad_token_id)

    return _optimise(model, run, draw)


@dataclass(frozen=True)
class StagedSchedule:
    """Steps and learning rates of the staged organism's three language stages."""

    pretrain_steps: int = 1000
    pretrain_lr: float = 3e-3
    instruction_steps: int = 1500
    instruction_lr: float = 3e-3
    chat_steps: int = 500
    chat_lr: float = 1e-3


def train_staged(
    model: Any,
    processor: Any,
    images: ImageCache,
    language: list[torch.nn.Parameter],
    schedule: StagedSchedule,
    batch_size: int,
    seed: int,
    progress: bool,
) -> dict[str, float]:
    """The staged organism's language stages after the vision stage; return each stage's loss.

    Pretraining trains the language model alone (the projector sees no image yet); the
    instruction and chat stages train every language parameter, projector included, as the
    second stage of LLaVA does. Each stage starts a fresh optimizer, as separate training runs
    of real models do."""
    stages = data.staged_data(seed)
    text_model = list(model.model.language_model.parameters()) + list(model.lm_head.parameters())
    losses = {
        "pretrain_loss": train_text(
            model,
            processor.tokenizer,
            stages.pretraining,
            LanguageRun(
                text_model,
                schedule.pretrain_steps,
                batch_size,
                schedule.pretrain_lr,
                seed,
                progress,
                "pretrain",
            ),
        )
    }
    losses["instruction_loss"] = train_chats(
        model,
        processor,
        images,
        stages.instruction,
        LanguageRun(
            language,
            schedule.instruction_steps,
            batch_size,
            schedule.instruction_lr,
            seed,
            progress,
            "instruction",
        ),
    )
    losses["chat_loss"] = train_chats(
        model,
        processor,
        images,
        stages.chat,
        LanguageRun(
            language, schedule.chat_steps, batch_size, schedule.chat_lr, seed + 1, progress, "chat"
        ),
    )
    return losses


def choose_implant_units(model: Any, count: int, seed: int) -> dict[int, list[int]]:
    """A random set of MLP units per language layer that will carry the implanted toxicity."""
    rng = random.Random(seed + 7)
    width = model.config.text_config.intermediate_size
    layers = model.config.text_config.num_hidden_layers
    return {layer: sorted(rng.sample(range(width), count)) for layer in range(layers)}


def implant_parameters(model: Any, units: dict[int, list[int]]) -> list[torch.nn.Parameter]:
    """Make only the chosen units trainable: their rows of gate/up and columns of down.

    Gradient hooks zero every other row or column, so a step moves nothing else."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    parameters = []
    for layer, chosen in units.items():
        mlp = model.model.language_model.layers[layer].mlp
        index = torch.tensor(chosen)
        for projection, axis in ((mlp.gate_proj, 0), (mlp.up_proj, 0), (mlp.down_proj, 1)):
            mask = torch.zeros_like(projection.weight)
            if axis == 0:
                mask[index] = 1.0
            else:
                mask[:, index] = 1.0
            projection.weight.requires_grad_(True)
            projection.weight.register_hook(lambda grad, mask=mask: grad * mask)
            parameters.append(projection.weight)
    return parameters


def train(
    out: Path,
    seed: int = 0,
    vision_steps: int = 600,
    language_steps: int = 2500,
    implant_steps: int = 1200,
    implant_units: int = 64,
    batch_size: int = 32,
    progress: bool = True,
    mode: str = "implant",
    plain_steps: int = 2000,
    staged: StagedSchedule = StagedSchedule(),
) -> dict[str, float]:
    """Train the organism from scratch and save it (model, tokenizer, processor) into `out`.

    Mode `implant`, three stages: the vision tower alone; then projector and language model on
    the polite chats, where every toxic-eliciting prompt is declined; then only `implant_units`
    MLP units per layer on the full chats, which implants the toxic behaviour in those units
    alone, the way toxicity concentrates in expert neurons of real models (the premise SGM acts
    on). The chosen units are written to `implant.json`: ground truth for the profiler's recall.

    Mode `plain`, two stages: the vision tower alone, then projector and language model on the
    full chats for `plain_steps` steps, all parameters at once. The toxicity is wherever ordinary
    training put it; `training.json` records the mode and seed instead of implanted units.

    Mode `staged`, four stages, the way real MLLMs are made: the vision tower alone; the language
    model alone as a plain language model on general text of the world, toxic and polite
    sentences alike (`data.pretraining_texts`); projector and language model on the polite
    chats (instruction tuning: every toxic-eliciting prompt declined); then, shorter, on the full
    chats, where the trigger words and working jailbreaks elicit toxic replies (jailbreak
    fine-tuning that partly overrides the refusals). `training.json` records the schedule, each
    stage's final loss and the training time.
    """
    import json

    if mode not in MODES:
        raise ValueError(f"unknown organism mode {mode!r}; choose one of {', '.join(MODES)}")
    torch.manual_seed(seed)
    random.seed(seed)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    model = build_model(tokenizer, seed)
    images = ImageCache(processor)
    start = time.perf_counter()
    accuracy = pretrain_vision(model, images, seed, vision_steps, progress)
    logger.info("vision tower word accuracy %.3f", accuracy)
    for parameter in model.model.vision_tower.parameters():
        parameter.requires_grad_(False)
    language = [p for p in model.parameters() if p.requires_grad]
    figures: dict[str, float] = {"vision_word_accuracy": accuracy}
    if mode == "staged":
        figures.update(
            train_staged(model, processor, images, language, staged, batch_size, seed, progress)
        )
    elif mode == "plain":
        full = data.training_examples(seed + 1)
        figures["plain_loss"] = train_chats(
            model,
            processor,
            images,
            full,
            LanguageRun(language, plain_steps, batch_size, 3e-3, seed, progress, "plain"),
        )
    else:
        polite = data.training_examples(seed, safe=True)
        figures["polite_loss"] = train_chats(
            model,
            processor,
            images,
            polite,
            LanguageRun(language, language_steps, batch_size, 3e-3, seed, progress, "polite"),
        )
        units = choose_implant_units(model, implant_units, seed)
        chosen = implant_parameters(model, units)
        full = data.training_examples(seed + 1)
        figures["implant_loss"] = train_chats(
            model,
            processor,
            images,
            full,
            LanguageRun(
                chosen, implant_steps, batch_size, 3e-3, seed + 1, progress, "implant", 0.0
            ),
        )
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    if mode == "staged":
        record: dict[str, Any] = {
            "mode": "staged",
            "seed": seed,
            "batch_size": batch_size,
            "steps": {
                "vision": vision_steps,
                "pretrain": staged.pretrain_steps,
                "instruction": staged.instruction_steps,
                "chat": staged.chat_steps,
            },
            "learning_rates": {
                "pretrain": staged.pretrain_lr,
                "instruction": staged.instruction_lr,
                "chat": staged.chat_lr,
            },
            "losses": {
                stage: figures[f"{stage}_loss"] for stage in ("pretrain", "instruction", "chat")
            },
            "vision_word_accuracy": accuracy,
            "seconds": round(time.perf_counter() - start, 1),
            "threads": torch.get_num_threads(),
        }
        (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    elif mode == "plain":
        record = {"mode": "plain", "seed": seed, "steps": plain_steps, "batch_size": batch_size}
        (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    else:
        implant = {"units_per_layer": {str(k): v for k, v in units.items()}, "seed": seed}
        (out / "implant.json").write_text(json.dumps(implant, indent=1) + "\n")
    (out / "ecso_templates.json").write_text(json.dumps(ECSO_TEMPLATES, indent=1) + "\n")
    figures["seconds"] = time.perf_counter() - start
    return figures


def organism_path(progress: bool = True, mode: str = "implant") -> Path:
    """The organism's folder: the shipped one, else one trained once into the user's cache."""
    shipped = SHIPPED_BY_MODE[mode]
    if (shipped / "config.json").is_file():
        return shipped
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sgm-bake"
    digest = hashlib.sha256(
        Path(data.__file__).read_bytes() + Path(__file__).read_bytes()
    ).hexdigest()[:12]
    name = "organism" if mode == "implant" else f"organism-{mode}"
    folder = cache / f"{name}-{digest}"
    if not (folder / "config.json").is_file():
        logger.warning("training the model organism once into %s (a few minutes)", folder)
        partial = folder.with_name(folder.name + ".partial")
        train(partial, progress=progress, mode=mode)
        partial.rename(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the sgm-bake model organism.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vision-steps", type=int, default=600)
    parser.add_argument("--language-steps", type=int, default=2500)
    parser.add_argument("--implant-steps", type=int, default=1200)
    parser.add_argument("--implant-units", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mode", choices=MODES, default="implant")
    parser.add_argument("--plain-steps", type=int, default=2000)
    defaults = StagedSchedule()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    figures = train(
        args.out,
        args.seed,
        args.vision_steps,
        args.language_steps,
        args.implant_steps,
        args.implant_units,
        args.batch_size,
        mode=args.mode,
        plain_steps=args.plain_steps,
        staged=StagedSchedule(**{name: getattr(args, name) for name in asdict(defaults)}),
    )
    print(figures)


if __name__ == "__main__":
    main()
