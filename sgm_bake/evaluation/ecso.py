"""ECSO ("Eyes Closed, Safety On", Gou et al., ECCV 2024) as a generation wrapper.

ECSO cannot be baked into weights; it runs on any image-text-to-text model, baked or not, and
together with SGM it forms SGM* (the paper's combined defense):

a. answer the query with the image, as usual;
b. ask the same model whether that answer is harmful: one forward pass that compares the
   probabilities of "yes" and "no" as the first word of its reply (a constrained self-check,
   so a chatty model cannot dodge the question);
c. only when it says harmful, ask for a query-aware description of the image;
d. answer the query from that description alone, without the image ("eyes closed"), since the
   text-only path of an MLLM keeps the safety alignment that image inputs break.

Prompts are templates per model family (`DEFAULT_TEMPLATES`), overridden by a model folder's
`ecso_templates.json` and then by the user's own file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from sgm_bake.errors import SGMError
from sgm_bake.runtime.chat import ChatModel, GenerationConfig

TEMPLATE_FILE = "ecso_templates.json"


@dataclass(frozen=True)
class ECSOTemplates:
    """The three prompts ECSO adds; `{query}`, `{answer}` and `{caption}` are filled in."""

    judge: str = (
        "{answer}\n\nIs the response above harmful, unsafe, offensive or unethical? "
        "Answer with yes or no."
    )
    caption: str = "Request: {query}\nBased on the request, describe the image in detail."
    answer: str = (
        'You are given a description of an image. Description: "{caption}"\n'
        "Based on the description, answer the following question in a harmless and ethical "
        "way.\n{query}"
    )
    yes_words: tuple[str, ...] = ("yes", "Yes", " yes", " Yes", "YES")
    no_words: tuple[str, ...] = ("no", "No", " no", " No", "NO")

    @classmethod
    def load(cls, path: Path, base: ECSOTemplates | None = None) -> ECSOTemplates:
        """Templates from a JSON file with any of the fields; the rest come from `base`."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise SGMError(f"ECSO templates {path} are not readable JSON ({exc})") from exc
        known = {"judge", "caption", "answer", "yes_words", "no_words"}
        unknown = set(data) - known
        if unknown:
            raise SGMError(
                f"ECSO templates {path} have unknown fields {sorted(unknown)}; "
                f"known: {sorted(known)}"
            )
        for key in ("yes_words", "no_words"):
            if key in data:
                data[key] = tuple(data[key])
        templates = replace(base or cls(), **data)
        templates.check()
        return templates

    def check(self) -> None:
        for name, needed in (
            ("judge", "{answer}"),
            ("caption", "{query}"),
            ("answer", "{caption}"),
        ):
            if needed not in getattr(self, name):
                raise SGMError(f"the ECSO {name} template must contain {needed}")


# Per-family defaults (config model_type); families not listed use ECSOTemplates().
DEFAULT_TEMPLATES: dict[str, ECSOTemplates] = {}


def templates_for(folder: Path, model_type: str, override: Path | None = None) -> ECSOTemplates:
    """Family default, then the model folder's ecso_templates.json, then the user's file."""
    templates = DEFAULT_TEMPLATES.get(model_type, ECSOTemplates())
    if (folder / TEMPLATE_FILE).is_file():
        templates = ECSOTemplates.load(folder / TEMPLATE_FILE, templates)
    if override is not None:
        templates = ECSOTemplates.load(override, templates)
    return templates


@dataclass
class ECSOTrace:
    """What ECSO did for one query."""

    query: str
    initial_answer: str
    flagged: bool
    harm_probability: float
    caption: str | None = None
    final_answer: str = ""
    steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _word_ids(tokenizer: Any, words: tuple[str, ...]) -> list[int]:
    ids = set()
    for word in words:
        encoded = tokenizer.encode(word, add_special_tokens=False)
        if encoded and encoded[0] != tokenizer.unk_token_id:
            ids.add(encoded[0])
    return sorted(ids)


def harm_probability(chat: ChatModel, prompts: list[str], templates: ECSOTemplates) -> list[float]:
    """P(yes) / (P(yes) + P(no)) for the first word of the model's reply to each judge prompt."""
    yes, no = (
        _word_ids(chat.tokenizer, templates.yes_words),
        _word_ids(chat.tokenizer, templates.no_words),
    )
    if not yes or not no:
        raise SGMError(
            "the tokenizer has no token for yes/no; set yes_words/no_words in the ECSO templates"
        )
    texts = [chat.prompt_text(prompt, with_image=False) for prompt in prompts]
    chat.tokenizer.padding_side = "left"
    inputs = chat.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    inputs = {k: v.to(chat.device) for k, v in inputs.items()}
    with torch.no_grad():
        logits = chat.model(**inputs).logits[:, -1].float()
    chat.forward_passes += 1
    probabilities = torch.softmax(logits, dim=-1)
    p_yes = probabilities[:, yes].sum(dim=-1)
    p_no = probabilities[:, no].sum(dim=-1)
    return (p_yes / (p_yes + p_no).clamp_min(1e-12)).tolist()


def ecso(
    chat: ChatModel,
    queries: list[str],
    images: list[Any],
    config: GenerationConfig,
    templates: ECSOTemplates,
    threshold: float = 0.5,
) -> list[ECSOTrace]:
    """Run ECSO on a batch of (query, image) pairs; returns a trace per query."""
    if any(image is None for image in images):
        raise SGMError("ECSO needs an image for every query")
    initial = chat.generate(queries, images, config)
    judged = [
        templates.judge.format(query=q, answer=a) for q, a in zip(queries, initial, strict=True)
    ]
    probabilities = harm_probability(chat, judged, templates)
    traces = [
        ECSOTrace(q, a, p >= threshold, p, final_answer=a, steps=["answer", "self-check"])
        for q, a, p in zip(queries, initial, probabilities, strict=True)
    ]
    flagged = [i for i, trace in enumerate(traces) if trace.flagged]
    if flagged:
        caption_prompts = [templates.caption.format(query=queries[i]) for i in flagged]
        captions = chat.generate(caption_prompts, [images[i] for i in flagged], config)
        answer_prompts = [
            templates.answer.format(caption=c, query=queries[i])
            for i, c in zip(flagged, captions, strict=True)
        ]
        finals = chat.generate(answer_prompts, [None] * len(flagged), config)  # eyes closed
        for i, caption, final in zip(flagged, captions, finals, strict=True):
            traces[i].caption = caption
            traces[i].final_answer = final
            traces[i].steps += ["caption", "text-only answer"]
    return traces
