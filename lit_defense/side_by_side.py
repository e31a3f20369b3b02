"""Attack runs side by side: independent runs whose model calls share one batch per round.

The audit runs several attacks (and several batches of one attack) on the same model. One after
another, each of their steps is a round of its own (``lit_defense.cost``); side by side, the
steps every run takes at the same time go through the model as one batch: one forward pass and
one backward pass for all of them. Each run keeps its own algorithm, inputs and random numbers;
only the model calls are shared.

``SideBySide(model).run(jobs)`` runs each job (a function of a model) in its own thread with a
stand-in for the model (``Party``). The stand-in's calls wait until every run still going has
asked for one, then one of them serves all of them: the forward passes without gradient as one
batch, the gradient requests (``value_and_grad``) as one batch forward and one backward. A
round's batch is cut where it would carry more input elements than the device's width allows
(``lit_defense.width``). Runs are served in a fixed order, so a round's batch does not depend on
which thread came first. A run that takes gradients some other way calls the model directly,
outside the rounds.

Only for attacks that use the model as it is: BPDA puts hooks on the model and EOT averages a
random model's passes, so wrapped attacks run one after another (``side_by_side_ok``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from lit_defense.gradients import input_gradient
from lit_defense.width import Width, width_for

T = TypeVar("T")
ValueFn = Callable[[torch.Tensor], torch.Tensor]


def value_and_grad(model: nn.Module, x: torch.Tensor, fn: ValueFn
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits, fn(logits), d sum(fn(logits)) / d x)`` at ``x``, detached; shared with the other runs' calls under a ``Party``."""
    if isinstance(model, Party):
        return model.value_and_grad(x, fn)
    x_in = x.detach().requires_grad_(True)
    logits = model(x_in)
    values = fn(logits)
    return logits.detach(), values.detach(), input_gradient(values.sum(), x_in)


@dataclass
class _Request:
    order: int
    x: torch.Tensor
    fn: ValueFn | None  # None: a forward pass without gradient
    result: Any = None
    error: BaseException | None = None
    done: bool = False


class _Cancelled(Exception):  # noqa: N818 - not an error: the run was told to stop
    """Raised in a run's thread at its next model call once the caller was interrupted."""


@dataclass
class _Rounds:
    """The rendezvous of the runs still going: a round is served once each of them has asked."""

    model: nn.Module
    width: Width
    active: int = 0
    waiting: list[_Request] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    cancelled: bool = False

    def ask(self, request: _Request) -> Any:
        with self.cond:
            if self.cancelled:
                raise _Cancelled()
            self.waiting.append(request)
            if len(self.waiting) >= self.active:
                self._serve()
            while not request.done:
                self.cond.wait()
        if request.error is not None:
            raise request.error
        return request.result

    def cancel(self) -> None:
        """End every run at its next model call (the caller was interrupted: Ctrl-C, SIGTERM)."""
        with self.cond:
            self.cancelled = True
            for r in self.waiting:
                r.error, r.done = _Cancelled(), True
            self.waiting = []
            self.cond.notify_all()

    def leave(self) -> None:
        with self.cond:
            self.active -= 1
            if self.waiting and len(self.waiting) >= self.active:
                self._serve()

    def _serve(self) -> None:
        """Every waiting request, as few model calls as the width allows (called holding the lock)."""
        batch, self.waiting = sorted(self.waiting, key=lambda r: r.order), []
        kinds: dict[tuple, list[_Request]] = {}
        for r in batch:
            kinds.setdefault((r.fn is None, tuple(r.x.shape[1:]), r.x.dtype, r.x.device), []).append(r)
        try:
            for (plain, *_), requests in kinds.items():
                per_row = max(1, requests[0].x[0].numel())
                rows = max(1, self.width.elements // per_row)
                for part in _parts(requests, rows):
                    (self._forward if plain else self._gradient)(part)
        except BaseException as err:  # noqa: BLE001 - handed to every run of the round
            for r in batch:
                if not r.done:
                    r.error = err
        for r in batch:
            r.done = True
        self.cond.notify_all()

    def _forward(self, requests: list[_Request]) -> None:
        with torch.inference_mode(False), torch.no_grad():
            out = self.model(torch.cat([r.x for r in requests]))
        for r, logits in zip(requests, out.split([r.x.shape[0] for r in requests]), strict=True):
            r.result = logits

    def _gradient(self, requests: list[_Request]) -> None:
        with torch.inference_mode(False), torch.enable_grad():
            x_in = torch.cat([r.x.detach() for r in requests]).requires_grad_(True)
            logits = self.model(x_in)
            parts = logits.split([r.x.shape[0] for r in requests])
            values = [r.fn(p) for r, p in zip(requests, parts, strict=True)]  # type: ignore[misc]
            grad = input_gradient(sum(v.sum() for v in values), x_in).split([r.x.shape[0] for r in requests])
        for r, p, v, g in zip(requests, parts, values, grad, strict=True):
            r.result = (p.detach(), v.detach(), g)


def _parts(requests: list[_Request], rows: int) -> list[list[_Request]]:
    """Consecutive groups of requests of at most ``rows`` rows (a larger request alone)."""
    out: list[list[_Request]] = [[]]
    size = 0
    for r in requests:
        n = r.x.shape[0]
        if out[-1] and size + n > rows:
            out.append([])
            size = 0
        out[-1].append(r)
        size += n
    return out


class Party(nn.Module):
    """The model as one run of a ``SideBySide`` sees it: its calls join the rounds.

    A forward pass that will be differentiated by the caller (gradient enabled and an input that
    requires it) goes to the model directly; ``value_and_grad`` is the shared way to a gradient.
    """

    def __init__(self, rounds: _Rounds, order: int) -> None:
        super().__init__()
        object.__setattr__(self, "_rounds", rounds)  # not a submodule: the model's modules stay its own
        self._order = order
        self.training = rounds.model.training

    @property
    def model(self) -> nn.Module:
        """The model itself."""
        return self._rounds.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits at ``x``: in the next round, or directly when the caller differentiates them."""
        if torch.is_grad_enabled() and x.requires_grad:
            return self._rounds.model(x)
        return self._rounds.ask(_Request(self._order, x.detach(), None))

    def value_and_grad(self, x: torch.Tensor, fn: ValueFn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As ``value_and_grad``, in the next round."""
        return self._rounds.ask(_Request(self._order, x.detach(), fn))


class SideBySide:
    """Runs jobs on ``model`` side by side (see module doc).

    Args:
        model: the model every job attacks.
        width: the rows a round's model call may carry (default: the device's, ``width_for``).
    """

    def __init__(self, model: nn.Module, width: Width | None = None) -> None:
        self.model, self.width = model, width

    def run(self, jobs: Sequence[Callable[[nn.Module], T]]) -> list[T]:
        """Each job's result, in order; the first job's error (by position) is raised after all have ended."""
        if len(jobs) <= 1:
            return [job(self.model) for job in jobs]
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        rounds = _Rounds(self.model, self.width or width_for(device), active=len(jobs))
        results: list[Any] = [None] * len(jobs)
        errors: list[BaseException | None] = [None] * len(jobs)

        def go(i: int, job: Callable[[nn.Module], T]) -> None:
            try:
                results[i] = job(Party(rounds, i))
            except BaseException as err:  # noqa: BLE001 - re-raised by the caller's thread
                errors[i] = err
            finally:
                rounds.leave()

        threads = [threading.Thread(target=go, args=(i, job), daemon=True) for i, job in enumerate(jobs)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        except BaseException:
            # interrupted (Ctrl-C, SIGTERM): the runs end at their next model call, so no thread is
            # still inside torch when the interpreter exits (that aborts the process)
            rounds.cancel()
            for t in threads:
                if t.ident is not None:
                    t.join()
            raise
        for err in errors:
            if err is not None:
                raise err
        return results


def side_by_side_ok(attacks: Sequence[Any]) -> bool:
    """Whether these attacks may run side by side: none wraps the model (BPDA hooks it, EOT draws it)."""
    return not any(getattr(a, "wraps_model", False) or getattr(a, "eot_samples", 1) > 1 for a in attacks)


__all__ = ["Party", "SideBySide", "side_by_side_ok", "value_and_grad"]
