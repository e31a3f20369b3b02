"""The processes of an audit: who attacks which samples, and the few collectives that join them.

Under a Lightning strategy (DDP on one node, several nodes, SLURM, torchrun) every process holds
the whole model and the whole fixed subset, attacks its shard of each stage's inputs and records
its per-sample results; one ``all_gather_object`` per stage joins them, so every process then holds
the same results and the plan goes on identically everywhere. Only rank 0 writes the report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from lit_defense.errors import LitDefenseError

T = TypeVar("T")


class ProcessFailed(LitDefenseError, RuntimeError):
    """One process of a distributed audit failed; every process ends with its one-line message."""


def attempt(work: Callable[[], T]) -> tuple[T | None, str | None]:
    """``(work(), None)``, or ``(None, "<Error>: <message>")`` when it raises (Ctrl-C is not caught).

    What a process sends instead of its results when it fails, so that the others do not wait in
    the next collective until the process group times out (30 minutes by default).
    """
    try:
        return work(), None
    except Exception as err:  # noqa: BLE001 (any failure of one process must reach every process)
        return None, f"{type(err).__name__}: {err}".splitlines()[0]


def raise_failures(failures: list[tuple[int, str | None]], where: str) -> None:
    """Raise ``ProcessFailed`` on every process when any process's work failed (first one named)."""
    failed = [(rank, message) for rank, message in failures if message is not None]
    if failed:
        rank, message = failed[0]
        others = f" (and {len(failed) - 1} more process(es))" if len(failed) > 1 else ""
        raise ProcessFailed(f"{where}: process {rank} failed{others}: {message}. The finished batches stay recorded: "
                            "fix the cause and re-run the same command to resume.")


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


__all__ = ["Collective", "ProcessFailed", "attempt", "raise_failures", "shard"]
