"""One stage of the audit plan: shard its inputs, attack (recorded), gather with one collective."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from lit_defense.attacks import Attack
from lit_defense.audit.display import AuditProgress
from lit_defense.audit.progress import ProgressLog
from lit_defense.audit.sharding import Collective, attempt, raise_failures, shard
from lit_defense.evaluation import Tracking, robustness_counts
from lit_defense.judge import Judge


def _cpu(tree: Any) -> Any:
    """Tensors of a nested dict moved to the CPU (what one process sends the others)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: _cpu(v) for k, v in tree.items()}
    return tree


def merge(parts: list[dict[str, Any]], n: int, fill: Any) -> dict[str, Any]:
    """Shards' per-sample results (each with its ``ids``) back into tensors over all ``n`` inputs.

    A process whose shard was empty may send a shorter tree (no attack ran there): keys are the
    union over processes, and a missing leaf contributes nothing.
    """
    def walk(nodes: list[tuple[Any, torch.Tensor]]) -> Any:
        tensors = [(v, i) for v, i in nodes if isinstance(v, torch.Tensor)]
        if tensors:
            out = torch.full((n,), fill(tensors[0][0]), dtype=tensors[0][0].dtype)
            for values, ids in tensors:
                out[ids] = values
            return out
        keys = list(dict.fromkeys(k for v, _ in nodes if isinstance(v, dict) for k in v))
        return {k: walk([(v[k], i) for v, i in nodes if isinstance(v, dict) and k in v]) for k in keys}

    return walk([(p["values"], p["ids"]) for p in parts])


def default_fill(values: torch.Tensor) -> bool | float:
    """What an input no process attacked holds: not fooled, or no norm found (``inf``)."""
    return float("inf") if values.is_floating_point() else False


class Stage:
    """The run of one stage of the plan: shard its inputs, attack (recorded), gather (one collective), show progress.

    Args:
        name: the stage's name (its record in the progress log, its line in the report).
        model_name: the audited model's name.
        collective: the processes and their collectives.
        log: the resumable record (``None``: not resumable).
        progress: what the audit shows while it runs.
        share: the stage's typical share of a model's audit time (the estimate of the time left).
        side_by_side: its attacks run side by side (``evaluation.Tracking.side_by_side``).
    """

    def __init__(self, name: str, model_name: str, collective: Collective, log: ProgressLog | None,
                 progress: AuditProgress, share: float = 0.0, side_by_side: bool = False) -> None:
        self.name, self.model_name, self.share, self.side_by_side = name, model_name, share, side_by_side
        self.collective, self.log, self.progress = collective, log, progress
        self.info: dict[str, Any] = {}

    def pool(self, ids: torch.Tensor) -> torch.Tensor:
        """This process's share of the stage's inputs (ids, on the CPU)."""
        self.progress.stage(self.model_name, self.name, self.share)
        return shard(ids.cpu(), self.collective.rank, self.collective.world_size)

    def record(self) -> Any:
        """Where the stage's finished batches are recorded (``None``: not resumable)."""
        return self.log.view(self.model_name, self.name) if self.log is not None else None

    def run(self, ids: torch.Tensor, work: Callable[[], dict[str, Any]], n: int, detail: str = "") -> dict:
        """This process's ``work()`` (its per-sample values on ``ids``), then every process's, gathered.

        One collective either way: a process whose work raised sends its error instead of values,
        and then every process raises ``ProcessFailed`` with that one line (the batches recorded so
        far stay, so the same command resumes). A single process re-raises its error as it is.
        """
        if not self.collective.distributed:
            return self.gather(ids, work(), n, detail)
        values, failure = attempt(work)
        return self.gather(ids, values or {}, n, detail, failure)

    def gather(self, ids: torch.Tensor, values: dict[str, Any], n: int, detail: str = "",
               failure: str | None = None) -> dict:
        """Every process's per-sample ``values`` over all ``n`` inputs (one collective)."""
        before = self.collective.calls[self.name]
        parts = self.collective.gather({"ids": ids.cpu(), "values": _cpu(values), "failure": failure}, self.name)
        raise_failures([(rank, p.get("failure")) for rank, p in enumerate(parts)],
                       f"audit of {self.model_name}, stage {self.name}")
        sizes = [int(p["ids"].numel()) for p in parts]
        self.info = {"inputs": sum(sizes), "per_process": sizes,
                     "collectives": self.collective.calls[self.name] - before}
        self.progress.stage_done(sum(sizes), detail)
        return merge(parts, n, default_fill)

    def cascade(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[Attack],
                eps: Sequence[float], batch_size: int, alive: dict[str, torch.Tensor],
                judge: Judge | None = None) -> dict[str, Any]:
        """A cascade of ``attacks`` on the inputs ``alive`` at some eps (eps key -> mask over all inputs).

        Returns the gathered ``fooled`` (attack -> eps key -> mask) and ``min_norm`` over all inputs,
        and, judged in expectation (``judge``), ``selected`` and ``measured`` (attack -> eps key ->
        expected accuracy; non-finite where the attack did not run).
        Nested: an input fooled at a smaller eps is not attacked at a larger one (it is fooled there).
        """
        pool = self.pool(torch.stack(list(alive.values())).any(0).nonzero().squeeze(1))

        def work() -> dict[str, Any]:
            if not pool.numel():
                return {"fooled": {a.name: {} for a in attacks}, "min_norm": {}}
            on = pool.to(x.device)
            _, ex = robustness_counts(model, x[on], y[on], attacks, eps, batch_size, cascade=True, nested=True,
                                      tracking=Tracking(on, self.record(), self.progress.attack, judge,
                                                        {k: m[pool].to(x.device) for k, m in alive.items()},
                                                        self.side_by_side))
            return {"fooled": ex.fooled, "min_norm": ex.min_norm,
                    **({"selected": ex.selected, "measured": ex.measured} if ex.judged else {})}

        return self.run(pool, work, x.shape[0], f" ({', '.join(a.name for a in attacks)})")


__all__ = ["Stage", "default_fill", "merge"]
