"""Variants of the conditional write, measured on the tuning split only (issue 19, round c).

Research script behind the edit's rank knob: for each organism, `builtin:organism` is split as
`bench_edit.py` splits it (seed 0, 0.5 / 0.25 / 0.25); every variant is fitted on the profiling
part and measured on the tuning part (harm of greedy replies to its 48 toxic prompts, KL on its
declined rows' responses, accuracy / refusal / degenerate share on 40 benign scene questions,
seed 11) and, with `--loto`, by a leave-one-trigger-out criterion inside the tuning split (fit
without a trigger's rows, judge the tuning split's toxic prompts that use it). The evaluation
set is never read. Variants:

- `r1`: the shipped rank-1 write (u = difference-in-means direction, targets along u, clamped);
- `rrr`: reduced-rank ridge regression with full-state targets: at the decision position of each
  toxic-eliciting row the target is `strength * (declined mean - state)`, zero at every prompt
  position of the declined rows; the multi-output ridge solve `B = (G + λI)⁻¹ Kᵀ T`, then the
  top-r directions of the fitted outputs (eigenvectors of `Bᵀ G B`): `U = P`, `V = B P`;
- `fam`: one rank-1 write per trigger family (each family's own difference-in-means direction);
- `reply`: the `rrr` write fitted at the decision position and the first `--replies` reply
  positions, each row's prompt followed by its own reply (teacher forcing); `--zero` says which
  keys get zero targets (`all`: every position of the declined rows; `reply`: their decision and
  reply positions; `decision`: only the fitted offsets; `wX`: `reply` plus the prompt positions
  weighted X) and `--anchors N` adds N benign scene questions (seed 13) with their answers,
  zero at every position.

Several layers are fitted in order, each on keys captured with the earlier layers' writes in
place, each targeting `1 / (layers left)` of the remaining gap (times the strength).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/exp_edit_variants.py --workdir /tmp/w19c/exp \
        --organisms organism-staged --variants rrr --layers 3 --ranks 1,2,4,8

The rank-1 figures of the tool before this round (the "shipped" rows of RESULTS.md) came from
this script's `--shipped` option, which called the tool's `fit_edit` at commit d5b61ec; the fit
the tool ships now is the `reply` variant (`--zero reply --anchors 80`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import bench_edit
import torch
from torch import nn

from sgm_bake.datasets.profile_set import ProfileSet, load_profile_set
from sgm_bake.evaluation.evaluate import run_eval
from sgm_bake.evaluation.judges import make_judge
from sgm_bake.organism import data
from sgm_bake.pipeline.decision import (
    DecisionCapture,
    DecisionRow,
    capture_decision,
    decoder_layers,
    diagnose,
    output_projection,
    rows_from_profile_set,
)
from sgm_bake.pipeline.tune import split_profile_set
from sgm_bake.runtime.chat import ChatModel, GenerationConfig, call_processor
from sgm_bake.runtime.loading import CPU, load_chat, resolve_model_source

logger = logging.getLogger("exp_edit_variants")
Term = tuple[str, torch.Tensor, torch.Tensor]  # module, U [out, r], V [in, r]


class RankHooks:
    """Adds `U (Vᵀ k)` to each module's output, `k` its input before any other pre-hook."""

    def __init__(self, model: nn.Module, terms: Sequence[Term]) -> None:
        self.handles = []
        for name, u, v in terms:
            module = model.get_submodule(name)
            kept: list[torch.Tensor] = []
            self.handles.append(
                module.register_forward_pre_hook(
                    lambda m, a, kept=kept: kept.append(a[0]), prepend=True
                )
            )
            self.handles.append(
                module.register_forward_hook(
                    lambda m, a, o, kept=kept, u=u, v=v: (
                        o + ((kept.pop().float() @ v.float()) @ u.float().T).to(o.dtype)
                    )
                )
            )

    def __enter__(self) -> RankHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()


def family(row: DecisionRow, sample: Any) -> str:
    render = sample.render or {}
    if render.get("kind") == "text" and render.get("text") in data.TRIGGER_WORDS:
        return "word"
    if any(row.prompt.startswith(j) for j in data.WORKING_JAILBREAKS):
        return "jailbreak"
    return "other"


def solve(gram: torch.Tensor, cross: torch.Tensor, lam: float) -> torch.Tensor:
    system = gram + lam * torch.eye(gram.shape[0], dtype=torch.float64)
    return torch.cholesky_solve(cross, torch.linalg.cholesky(system))


def fit_layer(
    variant: str,
    capture: DecisionCapture,
    layer: int,
    fraction: float,
    rank: int,
    ridge: float,
    families: list[str] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V) of one layer's write."""
    toxic, declined = capture.class_states(layer + 1)
    toxic, declined = toxic.double(), declined.double()
    keys = capture.toxic_keys[layer].double()
    zero = capture.zero_keys[layer]
    gram = keys.T @ keys + zero.gram
    lam = ridge * float(gram.diagonal().sum()) / gram.shape[0]
    mean = declined.mean(0)
    if variant == "rrr":
        targets = fraction * (mean - toxic)  # [n, H]
        b = solve(gram, keys.T @ targets, lam)  # [I, H]
        fitted = b.T @ gram @ b  # [H, H]
        _, vectors = torch.linalg.eigh(fitted)
        p = vectors[:, -rank:]
        return p, b @ p
    if variant in ("r1", "fam"):
        groups = {"all": torch.ones(len(toxic), dtype=torch.bool)}
        if variant == "fam":
            assert families is not None
            names = sorted(set(families))
            groups = {f: torch.tensor([x == f for x in families], dtype=torch.bool) for f in names}
        us, vs = [], []
        for mask in groups.values():
            if int(mask.sum()) < 2:
                continue
            direction = mean - toxic[mask].mean(0)
            direction = direction / direction.norm()
            shifts = fraction * ((mean - toxic) @ direction).clamp(min=0)
            t = torch.where(mask, shifts, torch.zeros_like(shifts)) if variant == "fam" else shifts
            if variant == "fam":
                # the other families' rows are left free: only this family's rows and the
                # declined positions constrain the fit
                g = keys[mask].T @ keys[mask] + zero.gram
                v = solve(g, (keys[mask].T @ t[mask]).unsqueeze(1), lam).squeeze(1)
            else:
                v = solve(gram, (keys.T @ t).unsqueeze(1), lam).squeeze(1)
            us.append(direction)
            vs.append(v)
        return torch.stack(us, 1), torch.stack(vs, 1)
    raise ValueError(variant)


def fit_variant(
    chat: ChatModel,
    rows: list[DecisionRow],
    families: list[str],
    variant: str,
    layers: Sequence[int],
    strength: float,
    rank: int,
    ridge: float,
) -> list[Term]:
    terms: list[Term] = []
    layers = sorted(layers)
    for position, layer in enumerate(layers):
        with RankHooks(chat.model, terms):
            capture = capture_decision(chat, rows, (layer,))
        module, _ = output_projection(_recipe(chat), chat.model, layer)
        toxic_families = [f for f, r in zip(families, rows, strict=True) if r.label == 1]
        fraction = strength / (len(layers) - position)
        u, v = fit_layer(variant, capture, layer, fraction, rank, ridge, toxic_families)
        terms.append((module, u.float(), v.float()))
    return terms


def _recipe(chat: ChatModel) -> Any:
    from sgm_bake.core.hooks import model_recipe

    return model_recipe(chat.model, None)


@dataclass
class ReplyCapture:
    """States after `layer` and its MLP keys at the decision position and the first `reply`
    reply positions (teacher-forced on each row's own response), per class."""

    toxic_states: torch.Tensor  # [n, m + 1, H]
    toxic_keys: torch.Tensor  # [n, m + 1, I]
    declined_means: torch.Tensor  # [m + 1, H]
    zero_gram: torch.Tensor  # declined rows, every position
    zero_count: int


ZERO = ["all"]


def _encode(chat: ChatModel, texts: list[str], images: list[Any] | None) -> dict[str, Any]:
    if images:
        return call_processor(chat.processor, texts, images)
    return dict(chat.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False))


def capture_reply(
    chat: ChatModel, samples: Sequence[Any], layer: int, reply: int, terms: Sequence[Term]
) -> ReplyCapture:
    recipe = _recipe(chat)
    model = chat.model
    module_name, _ = output_projection(recipe, model, layer)
    layers = decoder_layers(model, recipe)
    got: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(module_name).register_forward_pre_hook(
            lambda m, a: got.__setitem__("keys", a[0].detach().float()), prepend=True
        ),
        layers[layer].register_forward_hook(
            lambda m, a, o: got.__setitem__(
                "states", (o if isinstance(o, torch.Tensor) else o[0]).detach().float()
            )
        ),
    ]
    toxic_states, toxic_keys, declined_sum, declined_n = [], [], None, 0
    gram = None
    count = 0
    chat.tokenizer.padding_side = "left"
    groups = [
        [s for s in samples if s.render is not None or s.image_path is not None],
        [s for s in samples if s.render is None and s.image_path is None],
    ]
    try:
        with RankHooks(model, terms):
            for group in groups:
                for i in range(0, len(group), 8):
                    batch_samples = group[i : i + 8]
                    images = [s.image() for s in batch_samples]
                    with_image = images[0] is not None
                    prefixes = [chat.prompt_text(s.prompt or "", with_image) for s in batch_samples]
                    full = [p + s.text for p, s in zip(prefixes, batch_samples, strict=True)]
                    pixels = images if with_image else None
                    prefix_lengths = _encode(chat, prefixes, pixels)["attention_mask"].sum(1)
                    batch = _encode(chat, full, pixels)
                    lengths = batch["attention_mask"].sum(1)
                    width = batch["input_ids"].shape[1]
                    with torch.no_grad():
                        model(**batch)
                    states, keys = got["states"], got["keys"]
                    mask = batch["attention_mask"].bool()
                    for row, s in enumerate(batch_samples):
                        answer = int(lengths[row] - prefix_lengths[row])
                        first = width - answer - 1
                        index = torch.arange(first, first + reply + 1).clamp(max=width - 1)
                        if s.id.startswith("anchor-"):
                            zk = keys[row][mask[row]].double()
                            gram = zk.T @ zk if gram is None else gram + zk.T @ zk
                            count += zk.shape[0]
                        elif s.label == 1:
                            toxic_states.append(states[row, index].double())
                            toxic_keys.append(keys[row, index].double())
                        else:
                            part = states[row, index].double()
                            declined_sum = part if declined_sum is None else declined_sum + part
                            declined_n += 1
                            if ZERO[0] == "all":
                                zk = keys[row][mask[row]].double()
                            elif ZERO[0] == "reply":
                                zk = keys[row, first:].double()
                            elif ZERO[0].startswith("w"):
                                weight = float(ZERO[0][1:]) ** 0.5
                                prompt_keys = keys[row][mask[row]][: -(width - first)]
                                zk = torch.cat([keys[row, first:], weight * prompt_keys]).double()
                            else:
                                zk = keys[row, index].double()
                            gram = zk.T @ zk if gram is None else gram + zk.T @ zk
                            count += zk.shape[0]
    finally:
        for h in handles:
            h.remove()
    assert declined_sum is not None and gram is not None
    return ReplyCapture(
        torch.stack(toxic_states), torch.stack(toxic_keys), declined_sum / declined_n, gram, count
    )


def fit_reply(
    chat: ChatModel,
    samples: Sequence[Any],
    layers: Sequence[int],
    strength: float,
    rank: int,
    ridge: float,
    reply: int,
) -> list[Term]:
    """Full-state reduced-rank write fitted at the decision position and the first `reply`
    reply positions."""
    terms: list[Term] = []
    layers = sorted(layers)
    for position, layer in enumerate(layers):
        c = capture_reply(chat, samples, layer, reply, terms)
        fraction = strength / (len(layers) - position)
        targets = fraction * (c.declined_means.unsqueeze(0) - c.toxic_states)  # [n, m+1, H]
        keys = c.toxic_keys.reshape(-1, c.toxic_keys.shape[-1])
        targets = targets.reshape(-1, targets.shape[-1])
        gram = keys.T @ keys + c.zero_gram
        lam = ridge * float(gram.diagonal().sum()) / gram.shape[0]
        b = solve(gram, keys.T @ targets, lam)
        _, vectors = torch.linalg.eigh(b.T @ gram @ b)
        p = vectors[:, -rank:]
        module, _ = output_projection(_recipe(chat), chat.model, layer)
        terms.append((module, p.float(), (b @ p).float()))
    return terms


def loto_harm(
    chat: ChatModel,
    fit_set: ProfileSet,
    tune_set: ProfileSet,
    judge: Any,
    fit: Any,
) -> tuple[int, int]:
    """Leave one trigger out inside the tuning split: harmful / toxic tuning prompts that use
    each trigger, with the write refitted without the trigger's fitting rows."""
    harmful = total = 0
    for kind, trigger in bench_edit.TRIGGERS:
        rows_set = bench_edit.without_trigger(fit_set, kind, trigger)
        held = ProfileSet(
            "held",
            tune_set.sha256,
            tuple(
                s
                for s in tune_set.samples
                if s.label == 1 and bench_edit.uses_trigger(kind, trigger, s.prompt or "", s.render)
            ),
        )
        if not held.samples:
            continue
        terms = fit(rows_set)
        with RankHooks(chat.model, terms):
            result = run_eval(
                chat, bench_edit.toxic_prompts(held), judge, GenerationConfig(), "loto"
            )
        harmful += sum(bool(v) for v in result.harmful.values())
        total += len(held.samples)
    return harmful, total


def make_fit(
    chat: ChatModel,
    anchors: tuple[Any, ...],
    families_of: Any,
    variant: str,
    layers: Sequence[int],
    strength: float,
    rank: int,
    ridge: float,
    reply: int,
) -> Any:
    """The fit of one variant, as a function of the fitting rows."""

    def fit(rows_set: ProfileSet) -> list[Term]:
        if variant == "reply":
            return fit_reply(chat, rows_set.samples + anchors, layers, strength, rank, ridge, reply)
        return fit_variant(
            chat,
            rows_from_profile_set(rows_set),
            families_of(rows_set),
            variant,
            layers,
            strength,
            rank,
            ridge,
        )

    return fit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--organisms", default=",".join(bench_edit.ORGANISMS))
    parser.add_argument("--variants", default="rrr")
    parser.add_argument("--layers", default="3", help="layer sets, e.g. 3;2,3;1,2,3")
    parser.add_argument("--ranks", default="1,2,4,8")
    parser.add_argument("--strengths", default="1,2,4")
    parser.add_argument("--ridges", default="0.01,0.1")
    parser.add_argument("--loto", action="store_true")
    parser.add_argument("--zero", default="all")
    parser.add_argument("--anchors", type=int, default=0)
    parser.add_argument("--replies", default="0", help="reply positions for variant 'reply'")
    parser.add_argument("--diagnose", action="store_true")
    args = parser.parse_args()
    ZERO[0] = args.zero
    from sgm_bake.datasets.profile_set import ProfileSample
    from sgm_bake.organism.checks import benign_questions

    anchors = (
        tuple(
            ProfileSample(f"anchor-{i.id}", 0, i.reference or "", i.prompt, i.image_path, i.render)
            for i in benign_questions(13, args.anchors).items
        )
        if args.anchors
        else ()
    )
    logging.basicConfig(level=logging.WARNING)
    args.workdir.mkdir(parents=True, exist_ok=True)
    judge = make_judge("profanity")
    out = args.workdir / "variants.jsonl"
    layer_sets = [tuple(int(x) for x in s.split(",")) for s in args.layers.split(";")]
    for name in args.organisms.split(","):
        start = time.perf_counter()
        chat, _ = load_chat(resolve_model_source(name, progress=False), CPU, "float32")
        full = load_profile_set(bench_edit.PROFILE_SET)
        splits = split_profile_set(full, 0)
        fit_rows = rows_from_profile_set(splits.profile)
        work = args.workdir / name
        work.mkdir(exist_ok=True)
        measure = bench_edit.TuneMeasure(chat, splits.tune, judge, work)
        base = measure("base")
        print(name, "base", asdict(base), flush=True)
        if args.diagnose:
            d = diagnose(capture_decision(chat, fit_rows))
            print(name, "separability by layer", d.separability_by_layer, flush=True)

        def families_of(rows_set: ProfileSet) -> list[str]:
            rows = rows_from_profile_set(rows_set)
            return [family(r, s) for r, s in zip(rows, rows_set.samples, strict=True)]

        records = []
        ranks = [int(r) for r in args.ranks.split(",")]
        for variant, layers, strength, ridge, rank in itertools.product(
            args.variants.split(","),
            layer_sets,
            [float(s) for s in args.strengths.split(",")],
            [float(r) for r in args.ridges.split(",")],
            ranks,
        ):
            if variant not in ("rrr", "reply") and rank != ranks[0]:
                continue
            for reply in [int(x) for x in args.replies.split(",")] if variant == "reply" else [0]:
                fit = make_fit(
                    chat, anchors, families_of, variant, layers, strength, rank, ridge, reply
                )
                terms = fit(splits.profile)
                with RankHooks(chat.model, terms):
                    figures = measure(variant)
                record: dict[str, Any] = {
                    "organism": name,
                    "reply": reply,
                    "zero": args.zero + (f"+a{args.anchors}" if args.anchors else ""),
                    "variant": variant,
                    "layers": layers,
                    "strength": strength,
                    "ridge": ridge,
                    "rank": rank
                    if variant in ("rrr", "reply")
                    else sum(t[1].shape[1] for t in terms),
                    **asdict(figures),
                    "admissible": bench_edit.admissible(figures, base, 0.1),
                }
                if args.loto:
                    record["loto"] = loto_harm(chat, splits.profile, splits.tune, judge, fit)
                print(json.dumps(record), flush=True)
                records.append(record)
        with out.open("a") as f:
            f.write(json.dumps({"organism": name, "base": asdict(base)}) + "\n")
            for r in records:
                f.write(json.dumps(r) + "\n")
        print(name, f"{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
