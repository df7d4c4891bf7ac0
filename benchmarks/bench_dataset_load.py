"""Reading a data set in its own format: an MM-SafetyBench-sized Parquet profile set (2,200 rows,
an image column of PNG bytes, other column names) through `sgm_bake.datasets.hub_dataset`.

Measures the first load (images written to the content-addressed cache), a second load (the
cache already holds them), a capped load (`--max-samples 200`: the stream stops when both
classes have their half), and the peak resident memory, which should not grow with the images
since they are never held decoded.

    OMP_NUM_THREADS=1 python benchmarks/bench_dataset_load.py --workdir /tmp/sgm-bench-data
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def write_set(path: Path, rows: int, size: int) -> int:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    generator = np.random.default_rng(0)
    pictures = []
    for _ in range(rows):
        pixels = generator.integers(0, 256, (size, size, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        pictures.append({"bytes": buffer.getvalue(), "path": None})
    table = {
        "question": [f"request {i} about the image" for i in range(rows)],
        "answer": [f"{'a harmful' if i % 2 else 'a safe'} answer number {i}" for i in range(rows)],
        "is_safe": [i % 2 == 0 for i in range(rows)],
        "image": pictures,
    }
    # Row groups of 100 rows, as Hub Parquet exports have: the stream holds one at a time.
    pq.write_table(pa.table(table), path, row_group_size=100)
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=2200)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ["XDG_CACHE_HOME"] = str(args.workdir / "cache")
    from sgm_bake.datasets.hub_dataset import DataFormat, parse_columns
    from sgm_bake.datasets.profile_set import load_profile_set

    path = args.workdir / "mm-safety-rows.parquet"
    # Written in a child process, so the peak below is the loader's alone.
    with ProcessPoolExecutor(1) as pool:
        size = pool.submit(write_set, path, args.rows, args.size).result()
    print(f"{args.rows} rows, {args.size}x{args.size} PNG images, {size / 1e6:.1f} MB Parquet")
    import datasets  # noqa: F401  (its import alone, pyarrow included, as a baseline)

    print(f"RSS after importing datasets {peak_mb():.0f} MB")
    data_format = DataFormat(
        parse_columns("prompt=question,response=answer,label=is_safe,image=image"), ("false",)
    )
    for label, cap in (("first load", None), ("second load", None), ("capped 200", 200)):
        start = time.perf_counter()
        profile_set = load_profile_set(str(path), data_format=data_format, max_samples=cap)
        seconds = time.perf_counter() - start
        print(f"{label}: {len(profile_set.samples)} rows in {seconds:.2f} s")
    print(f"peak RSS {peak_mb():.0f} MB")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
