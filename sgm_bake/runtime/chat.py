"""A loaded image-text model with its processor: prompts in, text and log-probabilities out.

Shared by evaluation, ECSO, generation and tuning, so that every step formats prompts through
the model's own chat template in exactly one way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sgm_bake.errors import SGMError
from sgm_bake.runtime.batch import to_device


def call_processor(processor: Any, texts: list[str], images: list[Any]) -> dict[str, Any]:
    """Run a multimodal processor on one image per text. Most processors take a flat list of
    images; some (Idefics, SmolVLM, mllama) want one list per text, so both are tried."""
    try:
        return dict(processor(text=texts, images=images, padding=True, return_tensors="pt"))
    except (ValueError, TypeError) as flat_error:
        try:
            nested = [[image] for image in images]
            return dict(processor(text=texts, images=nested, padding=True, return_tensors="pt"))
        except (ValueError, TypeError):
            raise flat_error from None


def render_chat(owner: Any, conversation: list[dict[str, Any]], add_generation_prompt: bool) -> str:
    """A conversation through a processor's or tokenizer's chat template, as text.

    transformers renders templates in Jinja's sandbox; a template that breaks its rules (reads
    `__class__` and the like), calls `raise_exception`, or does not parse is the model's bad
    input: one line naming the cause, never a traceback."""
    from jinja2.exceptions import SecurityError, TemplateError

    try:
        return str(
            owner.apply_chat_template(
                conversation, add_generation_prompt=add_generation_prompt, tokenize=False
            )
        )
    except SecurityError as exc:
        raise SGMError(
            f"the chat template does something Jinja's sandbox forbids ({exc}); it is unsafe: "
            "use another model, or pass a trusted template with --template FILE"
        ) from exc
    except TemplateError as exc:
        raise SGMError(
            f"the chat template cannot be rendered ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160] if str(exc) else '-'}); fix it, or pass --template "
            "FILE"
        ) from exc


def context_length(config: dict[str, Any]) -> int | None:
    """The number of positions the language model was built for (None: not stated)."""
    for source in (config.get("text_config") or {}, config):
        for key in ("max_position_embeddings", "n_positions"):
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def check_context(
    texts: list[tuple[str, str]], tokenizer: Any, limit: int | None, reserve: int = 0
) -> None:
    """Refuse, before any forward pass, a text (`(where, text)`) whose tokens and `reserve`
    (tokens still to generate) exceed the model's context: such a row would be truncated
    silently by some models, fail deep inside others, or take minutes."""
    if limit is None:
        return
    for where, text in texts:
        count = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if count + reserve > limit:
            extra = f" plus {reserve} to generate" if reserve else ""
            raise SGMError(
                f"{where} is {count} tokens long{extra}, more than the model's context of "
                f"{limit} tokens (max_position_embeddings in config.json): shorten it or leave "
                "it out"
            )


@dataclass
class GenerationConfig:
    """Explicit generation settings: greedy unless `sample` (then seeded)."""

    max_new_tokens: int = 32
    sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0


class ChatModel:
    """A loaded image-text model with its processor: prompts in, text out."""

    def __init__(self, model: Any, processor: Any, device: torch.device) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.device = device
        self.forward_passes = 0
        if not getattr(processor, "chat_template", None) and not getattr(
            self.tokenizer, "chat_template", None
        ):
            raise SGMError(
                "this model has no chat template; pass --template FILE (a Jinja chat template) "
                "to say how prompts are formatted"
            )

    def prompt_text(
        self, prompt: str, with_image: bool, history: list[tuple[str, str]] | None = None
    ) -> str:
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": prompt}]
        conversation = [{"role": "user", "content": content}]
        return render_chat(self.processor, conversation, add_generation_prompt=True)

    def _inputs(self, texts: list[str], images: list[Any] | None) -> dict[str, torch.Tensor]:
        if images:
            batch = call_processor(self.processor, texts, images)
        else:
            batch = self.tokenizer(
                texts, padding=True, return_tensors="pt", add_special_tokens=False
            )
        return to_device(dict(batch), self.device)

    def prompt_inputs(self, prompts: list[str], images: list[Any | None]) -> dict[str, Any]:
        """A batch of prompts (all with images, or all without) as generation feeds them: through
        the chat template with the generation prompt, left-padded, on the model's device. The
        last position of every row is the one whose logits choose the reply's first token."""
        with_image = images[0] is not None
        texts = [self.prompt_text(p, with_image) for p in prompts]
        self.tokenizer.padding_side = "left"
        return self._inputs(texts, images if with_image else None)

    def generate(
        self, prompts: list[str], images: list[Any | None], config: GenerationConfig
    ) -> list[str]:
        """Answer a batch of prompts (all with images, or all without)."""
        inputs = self.prompt_inputs(prompts, images)
        options: dict[str, Any] = {
            "max_new_tokens": config.max_new_tokens,
            "do_sample": config.sample,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if config.sample:
            torch.manual_seed(config.seed)
            options.update(temperature=config.temperature, top_p=config.top_p)
        with torch.no_grad():
            output = self.model.generate(**inputs, **options)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        self.forward_passes += int(new_tokens.shape[1])
        return [
            text.strip()
            for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        ]

    def answer_logprob(self, prompt: str, image: Any | None, answer: str) -> tuple[float, int]:
        """Sum of log-probabilities of `answer`'s tokens after the prompt, and their count."""
        prefix = self.prompt_text(prompt, image is not None)
        images = [image] if image is not None else None
        prefix_ids = self._inputs([prefix], images)["input_ids"]
        inputs = self._inputs([prefix + answer], images)
        with torch.no_grad():
            logits = self.model(**inputs).logits.float()
        self.forward_passes += 1
        ids = inputs["input_ids"][0]
        start = prefix_ids.shape[1]
        if ids.shape[0] <= start:
            return 0.0, 0
        logprobs = torch.log_softmax(logits[0, start - 1 : -1], dim=-1)
        picked = logprobs.gather(1, ids[start:].unsqueeze(1)).squeeze(1)
        return float(picked.sum()), int(picked.numel())
