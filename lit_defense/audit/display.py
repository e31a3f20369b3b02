"""What a long audit shows while it runs: a bar per model and attack, stage lines, the time left."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class AuditProgress:
    """Progress of an audit on rank 0.

    On a terminal a progress bar per model and attack (tqdm: inputs attacked, rate, its own time
    left); always one line per finished stage with the estimated time left for the whole audit
    (so logs of batch jobs show it too).

    Args:
        num_models: how many models the audit attacks.
        log: where lines go (``print`` by default).
        enabled: ``False`` on the other ranks: nothing is shown.
        bars: draw bars (default: when stderr is a terminal).
    """

    def __init__(self, num_models: int, log: Callable[[str], None] = print, enabled: bool = True,
                 bars: bool | None = None) -> None:
        self.num_models = max(num_models, 1)
        self.log = log
        self.enabled = enabled
        self.bars = enabled and (sys.stderr.isatty() if bars is None else bars)
        self.start = time.perf_counter()
        self.models_done = 0
        self.share_done = 0.0
        self.model = ""
        self.stage_name = ""
        self.stage_share = 0.0
        self._stage_start = self.start
        self._bar: Any = None
        self._counter: Any = None
        self._stage_cost: Any = None

    def count(self, counter: Any) -> None:
        """Show the rounds and work ``counter`` (``lit_defense.cost.CostCounter``) counts in each stage line."""
        self._counter = counter

    def time_left(self) -> str:
        """``about <duration> left`` from the work done so far (finished stages weighted by their ``share``)."""
        fraction = (self.models_done + self.share_done) / self.num_models
        if fraction <= 0:
            return "time left: after the first stage"
        elapsed = time.perf_counter() - self.start
        return f"about {_duration(elapsed / fraction * (1 - fraction))} left"

    def stage(self, model: str, stage: str, share: float = 0.0) -> None:
        """A stage of ``model`` starts; ``share``: its typical share of a model's audit time."""
        self.model, self.stage_name, self._stage_start = model, stage, time.perf_counter()
        self.stage_share = share
        self._stage_cost = self._counter.snapshot() if self._counter is not None else None

    def attack(self, attack: str, done: int, total: int) -> None:
        """An attack of the current stage has attacked ``done`` of its ``total`` inputs."""
        if not self.bars:
            return
        if done == 0:
            self._close_bar()
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=f"{self.model} {self.stage_name} {attack}", unit="input",
                             leave=False, file=sys.stderr, dynamic_ncols=True)
            self._bar.set_postfix_str(self.time_left())
            return
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
            if done >= total:
                self._close_bar()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def stage_done(self, inputs: int, detail: str = "") -> None:
        """The current stage finished after attacking ``inputs`` inputs."""
        self._close_bar()
        self.share_done += self.stage_share
        if self.enabled:
            took = time.perf_counter() - self._stage_start
            spent = f" ({(self._counter.snapshot() - self._stage_cost).short()})" if self._stage_cost is not None else ""
            self.log(f"audit: {self.model}: {self.stage_name} on {inputs} inputs{detail}: {_duration(took)}{spent}; "
                     f"{self.time_left()}")

    def model_done(self) -> None:
        """The current model is audited."""
        self.models_done += 1
        self.share_done = 0.0


__all__ = ["AuditProgress"]
