"""Host memory of the edit's fit (`core.edit.fit_reduced_rank`) against its formula.

The fit holds, per layer, the float64 Gram matrix of the keys that must stay silent (the
caller's, streamed), its own Gram matrix and that matrix's Cholesky factor (width² each), the
full-rank solution and the Gram matrix times it ([width, hidden] each), and the output energy
matrix (hidden²): about `8 · (3 I² + 2 I H + H²)` bytes for MLP width I and hidden size H. Each
width runs in a fresh process, so the peak is the fit's own (`ru_maxrss` above the process's
footprint after building its inputs).

    OMP_NUM_THREADS=1 python benchmarks/bench_edit_memory.py --widths 2048,4096,8192
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

GIB = 1024**3


def predicted(width: int, hidden: int) -> int:
    return 8 * (3 * width * width + 2 * width * hidden + hidden * hidden)


def one(width: int, hidden: int, rows: int) -> dict[str, float]:
    """Fit once at this size in this process and report its peak above the inputs."""
    import torch

    from sgm_bake.core.edit import ZeroKeys, fit_reduced_rank

    generator = torch.Generator().manual_seed(0)
    zero = ZeroKeys(width)
    for _ in range(4):
        zero.add(torch.randn(rows, width, generator=generator))
    keys = torch.randn(rows, width, generator=generator, dtype=torch.float64)
    targets = torch.randn(rows, hidden, generator=generator, dtype=torch.float64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    fit_reduced_rank(keys, targets, zero, ridge=1e-2, rank=4)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # the zero Gram was allocated before `before`: the fit's own addition excludes it
    formula = predicted(width, hidden) - 8 * width * width
    return {
        "width": width,
        "hidden": hidden,
        "added": peak - before,
        "formula": formula,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="2048,4096,8192")
    parser.add_argument("--hidden-ratio", type=float, default=4.0, help="MLP width / hidden size")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        hidden = int(args.one / args.hidden_ratio)
        print(json.dumps(one(args.one, hidden, args.rows)))
        return
    print(
        "| MLP width I | hidden H | fit's peak above its inputs "
        "| formula 8(2I² + 2IH + H²) | seconds |"
    )
    print("|---:|---:|---:|---:|---:|")
    for width in (int(w) for w in args.widths.split(",")):
        command = [
            sys.executable,
            __file__,
            "--one",
            str(width),
            "--rows",
            str(args.rows),
            "--hidden-ratio",
            str(args.hidden_ratio),
        ]
        result = json.loads(
            subprocess.run(command, check=True, capture_output=True, text=True).stdout
        )
        print(
            f"| {width} | {result['hidden']} | {result['added'] / GIB:.3f} GiB | "
            f"{result['formula'] / GIB:.3f} GiB | {result['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
