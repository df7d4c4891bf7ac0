"""Benchmark: how profiling batches its samples, on the CPU.

A tiny LLaVA with LLaVA-1.5's image geometry (336 px images in 14 px patches: 576 image tokens
per sample, as the 7B model sees them) and the tiny byte-level tokenizer, profiled on
`builtin:default` with the capture hooks and the response store, three ways:

- set order, inputs built inline: the loop before issue 16 (the processor runs between forward
  passes, batches follow the set's order);
- set order, inputs built on the worker thread (`capture_responses` on the set as it is);
- length order, worker thread: the default now (`length_order`, then `capture_responses`).

Reported: padding share (positions fed that are padding), samples/s and tokens/s, best of
--repeats. The forward passes are those of a tiny model, so the host-side work (processor,
pooling, store) weighs far more here than on a 7B model on a GPU; the padding share is the
figure that carries over.

    python benchmarks/bench_batching.py --samples 240 --batch-size 8
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from transformers import AutoModelForImageTextToText

    from sgm_bake.core.recipes import recipe_for_config
    from sgm_bake.datasets.profile_set import load_profile_set
    from sgm_bake.io.response_store import ResponseStore
    from sgm_bake.pipeline.profile import (
        CaptureStats,
        Inputs,
        ProfileOptions,
        capture_responses,
        length_order,
        profile_targets,
    )
    from tests.helpers import tiny_llava

    with tempfile.TemporaryDirectory() as tmp:
        folder = tiny_llava(
            Path(tmp) / "model", hidden=256, intermediate=1024, layers=4, image_size=336, patch=14
        )
        model = AutoModelForImageTextToText.from_pretrained(folder).eval()
        recipe = recipe_for_config(model.config.to_dict())
        full = load_profile_set("builtin:default").limited(args.samples)
        inputs = Inputs(folder, model.config.to_dict(), "dialogue", multimodal=True)
        options = ProfileOptions(batch_size=args.batch_size, progress=False)
        targets = profile_targets(model, recipe, options)
        units = {t.name: t.units for t in targets}
        device, dtype = torch.device("cpu"), torch.float32
        ordered = replace(full, samples=length_order(full.samples, inputs))

        def store(index: int) -> ResponseStore:
            return ResponseStore.open(
                Path(tmp) / f"store{index}", {"run": index}, units, len(full.samples)
            )

        def inline(index: int) -> CaptureStats:
            """The pre-issue-16 loop: build each batch, then run it, in set order."""
            from sgm_bake.core.capture import Capture

            stats = CaptureStats(batch_size=args.batch_size)
            responses = store(index)
            modules = [(t.name, t.module, t.point.side) for t in targets]
            start = time.perf_counter()
            with Capture(modules, options.pooling) as capture, torch.no_grad():
                for first in range(0, len(full.samples), args.batch_size):
                    samples = list(full.samples[first : first + args.batch_size])
                    batch = inputs.build(samples)
                    mask = inputs.mask(batch, "all")
                    pooled = capture.collect(mask, lambda b=batch: model(**b, logits_to_keep=1))
                    responses.write_batch(
                        first, {k: np.asarray(v.numpy(), np.float32) for k, v in pooled.items()}
                    )
                    stats.add_batch(batch, len(samples))
            stats.seconds = time.perf_counter() - start
            responses.close()
            return stats

        def threaded(profile_set, index: int) -> CaptureStats:
            responses = store(index)
            stats = capture_responses(
                model, inputs, profile_set, targets, options, responses, device, dtype, recipe
            )
            responses.close()
            return stats

        runs = {
            "set order, inputs built inline (before)": lambda i: inline(i),
            "set order, inputs on the worker thread": lambda i: threaded(full, i),
            "length order, worker thread (now)": lambda i: threaded(ordered, i),
        }
        best: dict[str, CaptureStats] = {}
        index = 0
        for _ in range(args.repeats):
            for label, run in runs.items():
                index += 1
                stats = run(index)
                if label not in best or stats.seconds < best[label].seconds:
                    best[label] = stats
        print(
            f"profiling {len(full.samples)} samples of builtin:default, batch {args.batch_size}, "
            f"tiny LLaVA (hidden 256, 4 layers, 336 px images: 576 image tokens), "
            f"{len(targets)} hooked modules, {torch.get_num_threads()} threads, best of "
            f"{args.repeats}"
        )
        print()
        print("| run | padding share | wall s | samples/s | tokens/s |")
        print("|---|---|---|---|---|")
        for label, stats in best.items():
            padding = 1 - stats.tokens / stats.positions
            print(
                f"| {label} | {padding:.1%} | {stats.seconds:.1f} | "
                f"{stats.samples / stats.seconds:.1f} | {stats.tokens / stats.seconds:,.0f} |"
            )


if __name__ == "__main__":
    main()
