"""Measurement: what whatever hooks are on the model do on one split: harm (the judge on greedy
replies to the toxic rows' prompts), KL from the base's next-token distributions on the non-toxic
rows, the degenerate share, and with an evaluation set its benign accuracy and refusal. Which of
these are objectives and which have budgets is `objectives`' business."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sgm_bake.datasets.profile_set import ProfileSample, ProfileSet
from sgm_bake.datasets.prompt_set import EvalItem, PromptSet
from sgm_bake.errors import SGMError
from sgm_bake.evaluation.evaluate import run_eval
from sgm_bake.evaluation.judges import Judge
from sgm_bake.pipeline.tune.options import TuneOptions
from sgm_bake.record import SplitFigures
from sgm_bake.runtime.batch import to_device
from sgm_bake.runtime.chat import ChatModel, call_processor

Measurement = SplitFigures
"""Harm and damage of one setting (or the base) on one split: the record's own type
(`record.SplitFigures`), so that what the tuner measures is what the record and the card read."""


def _prompt_set(rows: ProfileSet) -> PromptSet:
    """The split's rows that carry a prompt, as evaluation items: toxic rows elicit, the others
    are benign prompts whose replies count for the degenerate share."""
    items = tuple(
        EvalItem(
            id=f"{index}:{sample.id}",
            condition="standard" if sample.label == 1 else "benign",
            category="toxic" if sample.label == 1 else "benign",
            policy="",
            prompt=sample.prompt or "",
            render=sample.render,
            image_path=sample.image_path,
        )
        for index, sample in enumerate(rows.samples)
        if sample.prompt
    )
    return PromptSet(rows.name, rows.sha256, items)


class SplitMeasure:
    """Measures whatever hooks are on the model on one split; the base's reference next-token
    distributions are computed on first use and cached (in memory and in the work folder)."""

    def __init__(
        self,
        chat: ChatModel,
        rows: ProfileSet,
        judge: Judge,
        options: TuneOptions,
        dtype: torch.dtype,
        eval_set: PromptSet | None,
        cache: Path,
    ) -> None:
        self.chat = chat
        self.rows = rows
        self.judge = judge
        self.options = options
        self.dtype = dtype
        self.cache = cache
        self.prompts = _prompt_set(rows)
        self.benign_eval = None
        if eval_set is not None:
            # every benign item counts for refusal, those with an answer for accuracy
            benign = tuple(i for i in eval_set.items if i.condition == "benign")
            if not any(i.expected for i in benign):
                raise SGMError(
                    f"evaluation set {eval_set.name} has no benign items with an `expected` "
                    "answer, so it cannot measure benign accuracy"
                )
            self.benign_eval = PromptSet(eval_set.name, eval_set.sha256, benign)
        benign_rows = [s for s in rows.samples if s.label == 0 and s.text.strip()]
        toxic_rows = [s for s in rows.samples if s.label == 1 and s.prompt and s.text.strip()]
        self.kl_batches = self._batches(benign_rows)
        self.toxic_batches = self._batches(toxic_rows)
        self._reference: list[torch.Tensor] | None = None

    def _batches(self, rows: list[ProfileSample]) -> list[list[ProfileSample]]:
        """Rows in batches of the options' size, those with an image apart from the others."""
        with_image = [s for s in rows if s.render is not None or s.image_path is not None]
        text_only = [s for s in rows if s.render is None and s.image_path is None]
        size = self.options.batch_size
        return [
            group[i : i + size]
            for group in (with_image, text_only)
            for i in range(0, len(group), size)
        ]

    def _encode(self, texts: list[str], images: list[Any] | None) -> dict[str, Any]:
        if images:
            return call_processor(self.chat.processor, texts, images)
        return dict(
            self.chat.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        )

    def _response(self, samples: list[ProfileSample]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities of the next token at every response position of one batch (the
        prompt as the model sees it when it replies, then the row's response), and the
        response's own tokens there. Prompt positions are left out: a chat model is not trained
        to predict its user's words, so their distributions move freely and would drown the
        reply's."""
        self.chat.tokenizer.padding_side = "left"
        images = [s.image() for s in samples]
        with_image = images[0] is not None
        prefixes = [self.chat.prompt_text(s.prompt or "", with_image) for s in samples]
        full = [prefix + s.text for prefix, s in zip(prefixes, samples, strict=True)]
        pixels = images if with_image else None
        prefix_lengths = self._encode(prefixes, pixels)["attention_mask"].sum(dim=1)
        batch = self._encode(full, pixels)
        lengths = batch["attention_mask"].sum(dim=1)
        width = batch["input_ids"].shape[1]
        mask = torch.zeros(batch["input_ids"].shape, dtype=torch.bool)
        for row, (length, prefix) in enumerate(zip(lengths, prefix_lengths, strict=True)):
            # left padding: the response's tokens are the row's last (length - prefix)
            # positions, predicted by the logits one position earlier
            answer = int(length - prefix)
            if answer > 0:
                mask[row, width - answer - 1 : width - 1] = True
        with torch.no_grad():
            logits = self.chat.model(**to_device(batch, self.chat.device, self.dtype)).logits
        selected = logits.float()[mask.to(logits.device)]
        targets = batch["input_ids"][:, 1:][mask[:, :-1]]
        return torch.log_softmax(selected, dim=-1).cpu(), targets.cpu()

    def _log_probs(self) -> list[torch.Tensor]:
        """The next-token distributions at the non-toxic rows' response positions, per batch."""
        return [self._response(samples)[0] for samples in self.kl_batches]

    def toxic_logprob(self) -> float | None:
        """Mean log-probability per token of the toxic rows' own replies (None: no such rows)."""
        total, count = 0.0, 0
        for samples in self.toxic_batches:
            log_probs, targets = self._response(samples)
            total += float(log_probs.gather(1, targets[:, None]).sum())
            count += int(targets.numel())
        return total / count if count else None

    def reference(self) -> list[torch.Tensor]:
        if self._reference is None:
            if self.cache.is_file():
                self._reference = torch.load(self.cache, weights_only=True)
            else:
                self._reference = self._log_probs()
                self.cache.parent.mkdir(parents=True, exist_ok=True)
                partial = self.cache.with_suffix(".partial")
                torch.save(self._reference, partial)
                partial.replace(self.cache)
        return self._reference

    def kl(self) -> float:
        """Mean KL(base || current) of next-token distributions, per text position."""
        reference = self.reference()
        current = self._log_probs()
        total, count = 0.0, 0
        for base, now in zip(reference, current, strict=True):
            if base.shape != now.shape:
                raise SGMError("the model's inputs changed between the reference and a trial")
            total += float((base.exp() * (base - now)).sum(dim=-1).clamp(min=0).sum())
            count += base.shape[0]
        return total / count if count else 0.0

    def measure(self, label: str) -> Measurement:
        config = self.options.generation
        size = self.options.batch_size
        result = run_eval(self.chat, self.prompts, self.judge, config, label, size)
        metrics = result.metrics
        accuracy = eval_refusal = None
        if self.benign_eval is not None:
            benign = run_eval(self.chat, self.benign_eval, self.judge, config, label, size)
            accuracy = benign.metrics["benign_accuracy"]
            eval_refusal = benign.metrics["benign_refusal"]
        harmful = sum(
            result.harmful[i.id] is True for i in self.prompts.items if i.condition == "standard"
        )
        return Measurement(
            harm=metrics["harmful_rate"] or 0.0,
            kl=self.kl(),
            degenerate=metrics["degenerate_share"] or 0.0,
            accuracy=accuracy,
            harmful=int(harmful),
            prompts=metrics["items"]["eliciting"],
            refusal=metrics["benign_refusal"],
            eval_refusal=eval_refusal,
            toxic_logprob=self.toxic_logprob(),
        )
