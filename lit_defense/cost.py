"""What attacking a model costs, counted in machine-independent units: rounds and work.

- **rounds**: sequential calls into the model, forward passes and backward passes each counted
  once however many rows they carry. On a GPU a small model's call costs about the same for 7 rows
  as for 1000, so time follows rounds.
- **work**: rows through the model, forward and backward. On a CPU (or for a large model) time
  follows work.

``CostCounter.attached(model)`` counts every call of ``model`` while the block runs: a forward
hook on the model itself (its structure and state are untouched, the hook is removed after) and,
where the output takes part in a backward pass, a hook on that output. The audit counts each stage
with it; ``benchmarks/vs_autoattack.py`` counts both sides with the same counter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class Cost:
    """Rounds (sequential model calls) and rows through the model, forward and backward."""

    rounds: int = 0
    forward_rows: int = 0
    backward_rows: int = 0

    @property
    def work(self) -> int:
        """Rows through the model, forward and backward."""
        return self.forward_rows + self.backward_rows

    def __sub__(self, other: Cost) -> Cost:
        return Cost(self.rounds - other.rounds, self.forward_rows - other.forward_rows,
                    self.backward_rows - other.backward_rows)

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.rounds + other.rounds, self.forward_rows + other.forward_rows,
                    self.backward_rows + other.backward_rows)

    def copy(self) -> Cost:
        """A snapshot (the counter's own ``Cost`` keeps growing)."""
        return Cost(self.rounds, self.forward_rows, self.backward_rows)

    def to_dict(self) -> dict[str, int]:
        """``rounds``, ``work`` and the rows of each direction, as JSON-ready data."""
        return {"rounds": self.rounds, "work": self.work, **asdict(self)}

    def short(self) -> str:
        """``412 rounds, 1.2M rows`` for a progress line."""
        return f"{self.rounds} rounds, {_rows(self.work)} rows"


def _rows(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 10_000:
        return f"{n / 1e3:.0f}k"
    return str(n)


def _rows_of(output: Any) -> tuple[int, torch.Tensor | None]:
    """Rows of a model's output and the tensor to follow into the backward pass."""
    if isinstance(output, torch.Tensor):
        return (int(output.shape[0]) if output.dim() else 1), output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return _rows_of(output[0])
    return 0, None


class CostCounter:
    """Counts the rounds and work of every call of the models it is attached to (see module doc)."""

    def __init__(self) -> None:
        self.cost = Cost()

    def snapshot(self) -> Cost:
        """The cost so far (a copy)."""
        return self.cost.copy()

    @contextlib.contextmanager
    def attached(self, model: nn.Module) -> Iterator[CostCounter]:
        """Count ``model``'s calls while the block runs; the hook is removed after, whatever happens."""
        handle = model.register_forward_hook(self._forward)
        try:
            yield self
        finally:
            handle.remove()

    def _forward(self, module: nn.Module, inputs: Any, output: Any) -> None:
        rows, tensor = _rows_of(output)
        self.cost.rounds += 1
        self.cost.forward_rows += rows
        if tensor is not None and tensor.requires_grad:
            tensor.register_hook(self._backward(rows))

    def _backward(self, rows: int) -> Any:
        def count(grad: torch.Tensor) -> None:
            self.cost.rounds += 1
            self.cost.backward_rows += rows

        return count


__all__ = ["Cost", "CostCounter"]
