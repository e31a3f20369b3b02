"""The processes of an audit: who attacks which samples, and the few collectives that join them.

Under a Lightning strategy (DDP on one node, several nodes, SLURM, torchrun) every process holds
the whole model and the whole fixed subset, attacks its shard of each stage's inputs and records
its per-sample results; one ``all_gather_object`` per stage joins them, so every process then holds
the same results and the plan goes on identically everywhere. Only rank 0 writes the report.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
import torch.distributed as dist


def shard(ids: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This process's share of ``ids``: every ``world_size``-th from ``rank`` (sizes differ by <= 1)."""
    return ids[rank::world_size]


class Collective:
    """Rank, world size and the collectives of the audit plan, counted per stage.

    Without ``torch.distributed`` initialised (one process) every collective returns at once.
    """

    def __init__(self) -> None:
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.calls: Counter[str] = Counter()

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes the report."""
        return self.rank == 0

    def gather(self, obj: Any, stage: str) -> list[Any]:
        """Every process's ``obj``, in rank order, on every process (one collective)."""
        self.calls[stage] += 1
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any, stage: str) -> Any:
        """Rank 0's ``obj`` on every process (one collective)."""
        self.calls[stage] += 1
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self, stage: str) -> None:
        """Wait for every process."""
        self.calls[stage] += 1
        if self.distributed:
            dist.barrier()


__all__ = ["Collective", "shard"]
