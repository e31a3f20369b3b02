"""Width or depth: how an attack spends its budget on the device it runs on (``Width``).

An attack's restarts, targets and chains are independent runs of the same inputs. Run one after
another (depth) they cost one round (a sequential model call, ``lit_defense.cost``) per step each;
run side by side as one batch of ``inputs x lanes`` rows (width) they cost the rounds of one run
and about the same rows, since an input any lane fools leaves the batch with all its lanes.

- On a GPU a small model's call costs the same for 7 rows as for 1000: time follows rounds, so
  width is nearly free there; the gradient-free attacks also run on every survivor at once
  rather than on a sample first (the sample's second pass costs rounds, its size costs nothing).
- On a CPU time follows work (rows): width saves no time by itself but costs none either, and
  the rows one call carries are bounded so that memory stays small; the gradient-free attacks
  keep their sample first (``--suite.black_box_sample``), which saves rows.

``Width.for_device(device)`` is the default of each device; ``using(width)`` sets one for a block
(tests, benchmarks, a user who knows their memory), and ``width_for(device)`` is what an attack
reads. The rows a call may carry are counted in input elements (rows times elements per row), so
a 224 x 224 colour image gets fewer lanes than a 28 x 28 one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from lit_defense.errors import ConfigError


@dataclass(frozen=True)
class Width:
    """How wide an attack's model calls may be on one device (see module doc).

    Args:
        elements: input elements (rows x elements per row) one model call may carry when an
            attack runs lanes side by side (it never splits a batch it was given: lanes only).
        sample_black_box: the gradient-free attacks run on a seeded sample of the survivors first
            (the rest only when the sample finds something). ``False``: on all survivors at once.
        side_by_side: the audit runs a stage's attacks and batches side by side, their model calls
            sharing rounds (``lit_defense.side_by_side``; where the attacks allow it).
    """

    elements: int = 1 << 21
    sample_black_box: bool = True
    side_by_side: bool = True

    def __post_init__(self) -> None:
        if self.elements < 1:
            raise ConfigError(f"Width needs elements >= 1, got {self.elements}.")

    @classmethod
    def for_device(cls, device: torch.device | str) -> Width:
        """The default of a device type: CPU (work costs: bounded rows, black-box sample) or GPU (rounds cost)."""
        kind = torch.device(device).type
        if kind in ("cuda", "xpu", "mps"):
            return cls(elements=1 << 27, sample_black_box=False)
        return cls()

    def lanes(self, rows: int, per_row: int, wanted: int) -> int:
        """How many of ``wanted`` lanes of ``rows`` inputs (``per_row`` elements each) one call carries (at least 1)."""
        if wanted <= 1 or rows <= 0:
            return max(1, min(wanted, 1))
        return max(1, min(wanted, self.elements // max(1, rows * per_row)))

    def groups(self, rows: int, per_row: int, lanes: int) -> list[range]:
        """``range(lanes)`` cut into consecutive groups that each fit one call."""
        k = self.lanes(rows, per_row, lanes)
        return [range(s, min(lanes, s + k)) for s in range(0, lanes, k)]


_current: ContextVar[Width | None] = ContextVar("lit_defense_width", default=None)


def width_for(device: torch.device | str) -> Width:
    """The width in force: the one ``using`` set, else the device's default."""
    chosen = _current.get()
    return chosen if chosen is not None else Width.for_device(device)


@contextlib.contextmanager
def using(width: Width | None) -> Iterator[Width | None]:
    """Attacks in this block spend ``width`` (``None``: each device's default)."""
    token = _current.set(width)
    try:
        yield width
    finally:
        _current.reset(token)


def per_input(values: torch.Tensor, lanes: int) -> torch.Tensor:
    """Rows laid out lane-major (``l * n + i``) as ``(lanes, n, ...)``."""
    return values.view(lanes, values.shape[0] // lanes, *values.shape[1:])


def any_lane(hit: torch.Tensor, group: torch.Tensor, n: int) -> torch.Tensor:
    """Per input (``n``), whether any of its rows (``group``: each row's input) is ``hit``."""
    counts = torch.zeros(n, device=hit.device).index_add_(0, group, hit.float())
    return counts > 0


__all__ = ["Width", "any_lane", "per_input", "using", "width_for"]
