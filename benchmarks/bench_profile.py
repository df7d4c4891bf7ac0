"""Benchmark: expertise (AUROC) speed, and the cost of capture hooks during profiling.

(a) `sgm_bake.auroc` on a [samples, units] float32 matrix against the research code's method
    (sklearn `roc_auc_score` over chunks of 10 units in a multiprocessing pool) and against one
    numpy sort of the same matrix along the sample axis (the floor for an exact rank method);
    the values must be identical.
(b) Profiling throughput on a tiny LLaVA: the same prepared batches run through the model with
    and without the capture hooks (pooling and the on-disk store included).

    python benchmarks/bench_profile.py --samples 2000 --units 200000
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _research_chunk(args: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    from sklearn.metrics import roc_auc_score

    responses, labels = args
    return np.array([roc_auc_score(labels, responses[:, i]) for i in range(responses.shape[1])])


def research_auroc(
    responses: np.ndarray, labels: np.ndarray, pool: multiprocessing.pool.Pool
) -> np.ndarray:
    """The AurA/SGM code's way: sklearn over chunks of 10 units in a process pool."""
    chunks = [(responses[:, i : i + 10], labels) for i in range(0, responses.shape[1], 10)]
    return np.concatenate(pool.map(_research_chunk, chunks))


def bench_auroc(samples: int, units: int, research_units: int) -> None:
    from sgm_bake import auroc

    rng = np.random.default_rng(0)
    responses = rng.standard_normal((samples, units)).astype(np.float32)
    labels = rng.integers(0, 2, samples)
    responses[labels == 1, : units // 100] += 0.5  # some real experts

    start = time.perf_counter()
    np.sort(responses, axis=0)
    sort_time = time.perf_counter() - start

    start = time.perf_counter()
    ours = auroc(responses, labels).numpy()
    ours_time = time.perf_counter() - start

    subset = responses[:, :research_units]
    with multiprocessing.Pool() as pool:
        start = time.perf_counter()
        reference = research_auroc(subset, labels, pool)
        research_time = (time.perf_counter() - start) * units / research_units
    difference = float(np.abs(reference - ours[:research_units]).max())
    print(f"(a) AUROC on {samples} x {units} float32")
    print("| method | wall s | vs sgm_bake.auroc |")
    print("|---|---|---|")
    note = "" if research_units == units else f" (timed on {research_units} units, scaled)"
    print(
        f"| research code: sklearn, chunks of 10, process pool{note} | {research_time:.1f} "
        f"| {research_time / ours_time:.1f}x slower |"
    )
    print(f"| sgm_bake.auroc | {ours_time:.2f} | 1.0 |")
    print(
        f"| one numpy sort along samples (floor) | {sort_time:.2f} "
        f"| ours is {ours_time / sort_time:.2f}x the sort |"
    )
    print(f"max |difference| vs sklearn: {difference:.2e}")
    print()


def bench_capture(samples: int, batch_size: int, repeats: int) -> None:
    from transformers import AutoModelForImageTextToText

    from sgm_bake.core.capture import Capture
    from sgm_bake.core.recipes import recipe_for_config
    from sgm_bake.datasets.profile_set import load_profile_set
    from sgm_bake.io.response_store import ResponseStore
    from sgm_bake.pipeline.profile import Inputs, ProfileOptions, profile_targets
    from tests.helpers import tiny_llava

    with tempfile.TemporaryDirectory() as tmp:
        folder = tiny_llava(
            Path(tmp) / "model", hidden=256, intermediate=1024, layers=4, image_size=64
        )
        model = AutoModelForImageTextToText.from_pretrained(folder).eval()
        recipe = recipe_for_config(model.config.to_dict())
        profile_set = load_profile_set("builtin:default").limited(samples)
        inputs = Inputs(folder, model.config.to_dict(), "response", multimodal=True)
        batches = []
        for first in range(0, len(profile_set.samples), batch_size):
            batch = inputs.build(list(profile_set.samples[first : first + batch_size]))
            batches.append((first, batch, inputs.mask(batch, "all")))
        targets = profile_targets(model, recipe, ProfileOptions())
        modules = [(t.name, t.module, t.point.side) for t in targets]

        def plain() -> float:
            start = time.perf_counter()
            with torch.no_grad():
                for _, batch, _ in batches:
                    model(**batch, logits_to_keep=1)
            return time.perf_counter() - start

        def captured(store_dir: Path, index: int) -> float:
            store = ResponseStore.open(
                store_dir,
                {"run": time.time()},
                {t.name: t.units for t in targets},
                len(profile_set.samples),
            )
            start = time.perf_counter()
            with Capture(modules, "mean") as capture, torch.no_grad():
                for first, batch, mask in batches:
                    pooled = capture.collect(mask, lambda b=batch: model(**b, logits_to_keep=1))
                    store.write_batch(first, {k: v.numpy() for k, v in pooled.items()})
            elapsed = time.perf_counter() - start
            store.close()
            return elapsed

        plain()  # warm-up
        plain_times, hook_times = [], []
        for index in range(repeats):
            plain_times.append(plain())
            hook_times.append(captured(Path(tmp) / f"store{index}", index))
        best_plain, best_hooks = min(plain_times), min(hook_times)
        count = len(profile_set.samples)
        print(
            f"(b) profiling {count} samples of builtin:default, batch {batch_size}, tiny LLaVA "
            f"(hidden 256, 4 layers, {len(targets)} hooked modules), best of {repeats}"
        )
        print("| run | wall s | samples/s |")
        print("|---|---|---|")
        print(f"| forward passes, no hooks | {best_plain:.2f} | {count / best_plain:.1f} |")
        print(f"| with capture hooks + store | {best_hooks:.2f} | {count / best_hooks:.1f} |")
        print(f"overhead: {100 * (best_hooks / best_plain - 1):+.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--units", type=int, default=200_000)
    parser.add_argument(
        "--research-units",
        type=int,
        default=None,
        help="time the research method on fewer units and scale",
    )
    parser.add_argument("--profile-samples", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bench_auroc(args.samples, args.units, args.research_units or args.units)
    bench_capture(args.profile_samples, args.batch_size, args.repeats)


if __name__ == "__main__":
    main()
