"""Data parallelism through torch.distributed, as started by torchrun.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous variables; we only join the process
group it describes (NCCL when every rank has a GPU, gloo otherwise) and use its collectives. Multi-
node runs are torchrun's business (`--nnodes`, `--rdzv-endpoint`); nothing here is node-aware.

The profile set is split by rank in whole batches (each rank gets a contiguous run of the batches
a single process would have made, so every batch, its padding included, is computed exactly as in
a single-process run), and the pooled responses are gathered to rank 0 module by module.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch

from sgm_bake.errors import SGMError

logger = logging.getLogger(__name__)

TIMEOUT = timedelta(hours=2)
"""How long a rank waits at a collective for the others (a slow rank may be profiling a long
share of the set)."""


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    local_world_size: int = 1
    """Ranks on this machine (torchrun's LOCAL_WORLD_SIZE), which share its GPUs."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """The device this rank's collectives use (its own GPU under NCCL)."""
        if self.backend == "nccl":
            return torch.device("cuda", first_gpu(self.local_rank, self.local_world_size))
        return torch.device("cpu")

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def all_counts(self, count: int) -> list[int]:
        """Every rank's `count`, in rank order."""
        import torch.distributed as dist

        mine = torch.tensor([count], dtype=torch.int64, device=self.device)
        gathered = [torch.zeros_like(mine) for _ in range(self.world_size)]
        dist.all_gather(gathered, mine)
        return [int(t.item()) for t in gathered]

    def gather_rows(self, rows: np.ndarray, counts: list[int]) -> np.ndarray | None:
        """Stack every rank's rows [count_r, units] in rank order on rank 0 (None elsewhere).

        all_gather needs equal shapes, so each rank pads to the largest count; the padding is
        dropped again here."""
        import torch.distributed as dist

        longest = max(counts)
        padded = torch.zeros((longest, rows.shape[1]), dtype=torch.float32, device=self.device)
        if rows.shape[0]:
            padded[: rows.shape[0]] = torch.from_numpy(np.ascontiguousarray(rows)).to(self.device)
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded)
        if not self.is_main:
            return None
        parts = [part[:count].cpu().numpy() for part, count in zip(gathered, counts, strict=True)]
        return np.concatenate(parts, axis=0)

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def from_env(environ: dict[str, str] | None = None) -> Distributed | None:
    """Join the torchrun job this process belongs to; None when it runs alone."""
    env: Any = os.environ if environ is None else environ
    world_size = int(env.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_available():
        raise SGMError("this torch build has no torch.distributed; run without torchrun")
    rank = int(env.get("RANK", "0"))
    local_rank = int(env.get("LOCAL_RANK", "0"))
    local_world_size = int(env.get("LOCAL_WORLD_SIZE", "1") or 1)
    backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if backend == "nccl":
        # Checked before any CUDA call: a rank beyond the machine's GPUs gets one clear line,
        # not an invalid-ordinal traceback from set_device.
        gpu = rank_gpu(local_rank, local_world_size, torch.cuda.device_count())
        torch.cuda.set_device(gpu)
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend=backend, timeout=TIMEOUT)
        except (RuntimeError, ValueError) as exc:
            raise SGMError(
                f"cannot join the torchrun job as rank {rank} of {world_size} ({exc}); check "
                "--rdzv-endpoint and that every node can reach it"
            ) from exc
    logger.info("rank %d of %d (%s)", rank, world_size, backend)
    return Distributed(rank, world_size, local_rank, backend, local_world_size)


def first_gpu(local_rank: int, local_world_size: int) -> int:
    """The first of the GPUs a rank owns when a machine's GPUs are shared out evenly among its
    ranks (the same rule as runtime.loading.Placement.for_rank)."""
    return rank_gpu(local_rank, local_world_size, torch.cuda.device_count())


def rank_gpu(local_rank: int, local_world_size: int, gpu_count: int) -> int:
    """The first GPU of local rank `local_rank` among `local_world_size` ranks sharing
    `gpu_count` GPUs; a rank the machine has no GPU for is refused (SGMError, exit 2)."""
    share = max(1, gpu_count // max(1, local_world_size))
    first = local_rank * share
    if first >= gpu_count:
        raise SGMError(
            f"this torchrun rank (LOCAL_RANK {local_rank} of {local_world_size} on this machine) "
            f"has no GPU: the machine has {gpu_count}; start at most {gpu_count} rank"
            f"{'s' if gpu_count != 1 else ''} per machine (--nproc-per-node {max(gpu_count, 1)})"
        )
    return first


def rank_share(samples: int, batch_size: int, world_size: int, rank: int) -> tuple[int, int]:
    """Samples [first, stop) of `rank`: a contiguous run of whole single-process batches.

    Batches are dealt out as evenly as they divide; with fewer batches than ranks, some ranks
    get none."""
    batches = -(-samples // batch_size)
    first_batch = rank * batches // world_size
    stop_batch = (rank + 1) * batches // world_size
    return min(samples, first_batch * batch_size), min(samples, stop_batch * batch_size)
