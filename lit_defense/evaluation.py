"""Robust accuracy over an eps grid, with a cascade of attacks (AutoAttack's principle).

For each eps, attacks run in order; with ``cascade=True`` each attack runs only on the points that
every earlier attack failed to fool, so the expensive attacks see few points, and the result is
the per-sample worst case. A point counts as robust under an attack when the model still
classifies the attack's output correctly *and* that output lies inside the threat model.

Per-attack numbers:
- ``cascade=True``: ``robust_accuracy[attack]`` is the accuracy after this attack *and all
  earlier ones* (cumulative, non-increasing along the list);
- ``cascade=False``: each attack runs on every clean-correct point; its number is its own
  accuracy, comparable across attacks (naive vs adaptive), and ``worst`` is the per-sample min.

Everything is counted in integers first (``RobustnessCounts``) so that shards evaluated on
different processes add up exactly (DDP), then turned into a JSON-serialisable dataclass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lit_defense.attacks.base import Attack, fooled_by, margin_loss
from lit_defense.diagnostics import MaskingThresholds, check_one_step_beats_iterative
from lit_defense.errors import ConfigError
from lit_defense.examples import build_examples
from lit_defense.judge import Judge
from lit_defense.recorded import UnitRecord, attack_chunk, clean_expected, grid_run, unit_name
from lit_defense.results import (
    WORST,
    AttackOutcome,
    Check,
    RobustnessCounts,
    RobustnessResult,
    eps_key,
)
from lit_defense.side_by_side import SideBySide, side_by_side_ok
from lit_defense.threat import check_eps


def check_attacks(attacks: Sequence[Attack], eps: Sequence[float]) -> str:
    """Validate an attack list and eps grid; returns their common norm."""
    if not attacks:
        raise ConfigError("give at least one attack.")
    if not eps:
        raise ConfigError("give at least one eps.")
    names = [a.name for a in attacks]
    if len(set(names)) != len(names):
        raise ConfigError(f"attack names must be unique (they name metrics), got {names}; set `name:`.")
    norms = {a.norm for a in attacks}
    if len(norms) != 1:
        raise ConfigError(f"all attacks of one evaluation share a threat model; got norms {sorted(norms)}.")
    norm = norms.pop()
    for e in eps:
        check_eps(norm, e)
    return norm


def _clean(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: classified correctly, and the true logit minus the largest other (one forward pass)."""
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=x.device), torch.zeros(0, device=x.device)
    with torch.no_grad():
        logits = torch.cat([model(xb) for xb in x.split(batch_size)])
        return logits.argmax(1) == y, -margin_loss(logits, y)


@dataclass(frozen=True)
class Tracking:
    """Where one ``robustness_counts`` call sits in a larger run (the audit's stages; all optional).

    ``ids`` (default ``0..n-1``) name the samples: they key each sample's random numbers, so a
    sample is attacked the same whatever shard or batch it is in. ``record`` keeps each batch's
    results as it finishes and supplies those already recorded (resuming). ``on_progress(attack,
    done, total)`` is called as an attack's batches finish (inputs attacked over all eps).
    ``judge`` (``lit_defense.judge.Judge``) judges a randomized model in expectation. ``alive``
    (eps key -> mask) restricts the attacks to the points an earlier evaluation left robust.
    ``side_by_side`` runs the attacks (and their batches) at each eps side by side, their model
    calls sharing rounds (``lit_defense.side_by_side``), where the attacks allow it
    (``side_by_side_ok``: none wraps the model) and the model is judged in one pass; in a cascade
    every attack then runs on the inputs still robust when the eps began (the same outcome per
    input, more rows, fewer rounds).
    """

    ids: torch.Tensor | None = None
    record: UnitRecord | None = None
    on_progress: Callable[[str, int, int], None] | None = None
    judge: Judge | None = None
    alive: dict[str, torch.Tensor] | None = None
    side_by_side: bool = False


def robustness_counts(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[Attack],
    eps: Sequence[float],
    batch_size: int = 256,
    cascade: bool = True,
    keep_examples: int = 0,
    nested: bool = False,
    tracking: Tracking | None = None,
) -> tuple[RobustnessCounts, AttackOutcome]:
    """Counts of robust points for every attack and eps (see module doc), and the per-input outcome.

    Returns ``(counts, outcome)``: ``RobustnessCounts`` (integers that add across shards) and the
    ``AttackOutcome`` (per input: clean correctness and margin, fooled and margin left per attack
    and eps, robust per eps, minimum norms). ``keep_examples=k`` also keeps, for the first k inputs
    and every eps, the worst-case adversarial input (the first attack output that fooled the
    model, else the clean input) in ``outcome.examples`` (``lit_defense.examples``). A
    minimum-norm attack runs once for the whole grid, on every point still robust at some eps. The
    model is used as it is (its train/eval state is not changed).

    ``nested=True`` (with ``cascade``): an input an attack fooled at a smaller eps is fooled at every
    larger one (its point lies inside the larger ball too), so the attacks at the larger eps skip
    it and it is counted fooled there, credited to the attack that reached that eps first.

    ``tracking`` (``Tracking``) says where the call sits in a larger run: which inputs these are,
    what is recorded, whom to tell of progress, how a randomized model is judged and which points
    are still alive. ``tracking.judge`` with more than one draw judges a randomized model in
    expectation: every point, the clean ones included, gets a *selected* and a *measured* estimate
    of its expected accuracy (``outcome.selected``/``measured``, NaN where the attack did not run;
    ``outcome.clean_selected``/``clean_measured``). An input counts as
    correct while some selection draw classifies it correctly, and as fooled when none does.
    """
    check_attacks(attacks, eps)
    t = tracking or Tracking()
    alive, ids, record, judge = t.alive, t.ids, t.record, t.judge
    with torch.inference_mode(False):
        x, y = x.detach().clone(), y.detach().clone()
        dev = x.device
        ids = torch.arange(x.shape[0], device=dev) if ids is None else ids.to(dev, torch.long)
        clean_ok, clean_margin = _clean(model, x, y, batch_size)
        out = AttackOutcome(clean_ok, clean_margin)
        if judge is not None and judge.randomized:
            out.clean_selected, out.clean_measured = clean_expected(model, judge, x, y, batch_size, ids, record)
            out.clean_correct = clean_ok = out.clean_selected > 0
        start = [clean_ok & alive[eps_key(e)] if alive is not None else clean_ok.clone() for e in eps]
        run = _Run(model, x, y, eps, batch_size, ids, record, judge, start, [m.clone() for m in start],
                   cascade, nested and cascade, t.on_progress, out)
        if t.side_by_side and side_by_side_ok(attacks) and not (judge is not None and judge.randomized):
            robust = run.side_by_side(attacks)
        else:
            robust = torch.zeros(len(attacks), len(eps), dtype=torch.long, device=dev)
            for i, attack in enumerate(attacks):
                robust[i] = run.attack(attack)
        worst = torch.stack([m.sum() for m in run.still]) if eps else torch.zeros(0, dtype=torch.long, device=dev)
        out.robust = {eps_key(e): run.still[j] for j, e in enumerate(eps)}
        if keep_examples:
            out.examples = build_examples(model, x, y, eps, attacks, out.fooled, clean_ok, keep_examples,
                                          batch_size, ids)
    counts = RobustnessCounts(n=torch.tensor(x.shape[0], device=dev), clean=clean_ok.sum(), robust=robust, worst=worst)
    return counts, out


@dataclass
class _Run:
    """One ``robustness_counts`` call while its attacks run: inputs, per-eps pools, the outcome so far."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    eps: Sequence[float]
    batch_size: int
    ids: torch.Tensor
    record: UnitRecord | None
    judge: Judge | None
    start: list[torch.Tensor]  # per eps: the inputs the attacks may attack
    still: list[torch.Tensor]  # per eps: not fooled so far
    cascade: bool
    nested: bool
    on_progress: Callable[[str, int, int], None] | None
    out: AttackOutcome

    def attack(self, attack: Attack) -> torch.Tensor:
        """Run ``attack`` at every eps; returns the robust count per eps (its own, or cumulative in a cascade)."""
        pools = [self.still[j] if self.cascade else self.start[j] for j in range(len(self.eps))]
        total, self.done = sum(int(p.sum()) for p in pools), 0
        if self.on_progress is not None:
            self.on_progress(attack.name, 0, total)
        grid = None
        if attack.answers_grid:  # one run answers every eps, on every point still robust at some eps
            grid = grid_run(self.model, attack, self.x, self.y, torch.stack(pools).any(0), self.eps,
                             self.batch_size, self.ids, self.record, self.judge)
            if grid[0].norms is not None:
                self.out.min_norm[attack.name] = grid[0].norms
        for name in ("fooled", "margin", *(("selected", "measured") if self.out.judged else ())):
            getattr(self.out, name)[attack.name] = {}
        counts = [self._at_eps(attack, j, pools[j], grid, total) for j in range(len(self.eps))]
        return torch.stack(counts) if counts else torch.zeros(0, dtype=torch.long, device=self.x.device)

    def side_by_side(self, attacks: Sequence[Attack]) -> torch.Tensor:
        """Every attack at each eps side by side (``SideBySide``), folded in order; the robust count per attack and eps.

        The inputs an attack takes at an eps are those still robust when the eps began (all of
        them in a cascade: an earlier attack's success no longer spares a later one the input);
        an attack that answers the grid runs once, beside the first eps, on every input robust at some eps.
        """
        n, dev = self.x.shape[0], self.x.device
        for attack in attacks:
            for name in ("fooled", "margin", *(("selected", "measured") if self.out.judged else ())):
                getattr(self.out, name)[attack.name] = {}
        robust = torch.zeros(len(attacks), len(self.eps), dtype=torch.long, device=dev)
        record = _Locked(self.record) if self.record is not None else None
        grids: dict[str, tuple] = {}
        for j, e in enumerate(self.eps):
            pool = (self.still[j] if self.cascade else self.start[j]).clone()
            if self.nested:  # fooled at a smaller eps: fooled here, not attacked
                for jj, smaller in enumerate(self.eps):
                    if smaller < e:
                        pool &= ~(self.start[jj] & ~self.still[jj])
            chunks = [c for c in pool.nonzero().squeeze(1).split(self.batch_size) if c.numel()]
            jobs: list[Callable[[nn.Module], Any]] = []
            keys: list[tuple[Attack, torch.Tensor | None]] = []
            for attack in attacks:
                if attack.answers_grid:
                    if j == 0:
                        union = torch.stack([self.still[k] if self.cascade else self.start[k]
                                             for k in range(len(self.eps))]).any(0)
                        jobs.append(lambda m, a=attack, u=union: grid_run(
                            m, a, self.x, self.y, u, self.eps, self.batch_size, self.ids, record, self.judge))
                        keys.append((attack, None))
                    continue
                for chunk in chunks:
                    jobs.append(lambda m, a=attack, c=chunk, e=e: attack_chunk(
                        m, a, e, self.x[c], self.y[c], self.ids[c], unit_name(a, e), record, self.judge))
                    keys.append((attack, chunk))
            found: dict[str, _Found] = {}
            for (attack, chunk), result in zip(keys, SideBySide(self.model).run(jobs), strict=True):
                if chunk is None:
                    grids[attack.name] = result
                    if result[0].norms is not None:
                        self.out.min_norm[attack.name] = result[0].norms
                    continue
                f = found.setdefault(attack.name, _Found.empty(n, j, dev))
                f.fooled[j][chunk], f.margins[j][chunk] = result[0], result[1].to(dev)
            for i, attack in enumerate(attacks):
                grid = grids[attack.name] if attack.answers_grid else (found.get(attack.name, _Found.empty(n, j, dev)), None)
                pool_now = self.still[j] if self.cascade else self.start[j]
                self.done = 0
                if self.on_progress is not None:
                    self.on_progress(attack.name, 0, int(pool_now.sum()))
                robust[i, j] = self._at_eps(attack, j, pool_now, grid, int(pool_now.sum()))
        return robust

    def _at_eps(self, attack: Attack, j: int, pool: torch.Tensor, grid: tuple | None, total: int) -> torch.Tensor:
        """``attack`` at the j-th eps on ``pool``, batch by batch (recorded); folds it into the outcome."""
        e, n, dev = self.eps[j], self.x.shape[0], self.x.device
        fooled = torch.zeros_like(self.out.clean_correct)
        margin = torch.full((n,), float("nan"), device=dev)
        judged = [torch.full((n,), float("nan"), device=dev) for _ in range(2)]
        if self.nested:  # fooled here at a smaller eps: fooled at e, not attacked again
            for jj, smaller in enumerate(self.eps):
                if smaller < e:
                    fooled |= self.start[jj] & ~self.still[jj] & self.still[j]
            self.still[j] &= ~fooled
        for chunk in pool.nonzero().squeeze(1).split(self.batch_size):
            if chunk.numel() == 0:  # an empty pool splits into one empty chunk
                continue
            if grid is not None:
                result, grid_judged = grid
                hit = result.fooled[j][chunk]
                if result.margins is not None:
                    margin[chunk] = result.margins[j][chunk]
                if grid_judged is not None:
                    judged[0][chunk], judged[1][chunk] = grid_judged[0][j][chunk], grid_judged[1][j][chunk]
            else:
                hit, margin[chunk], sel_meas = attack_chunk(
                    self.model, attack, e, self.x[chunk], self.y[chunk], self.ids[chunk], unit_name(attack, e),
                    self.record, self.judge)
                if sel_meas is not None:
                    judged[0][chunk], judged[1][chunk] = sel_meas
            fooled[chunk] |= hit
            self.done += chunk.numel()
            if self.on_progress is not None:
                self.on_progress(attack.name, self.done, total)
        self.still[j] &= ~fooled
        key = eps_key(e)
        self.out.fooled[attack.name][key], self.out.margin[attack.name][key] = fooled, margin
        if self.out.judged:
            self.out.selected[attack.name][key], self.out.measured[attack.name][key] = judged
        return (self.still[j] if self.cascade else self.start[j] & ~fooled).sum()


@dataclass
class _Found:
    """One attack's outcome at eps index j over all inputs, shaped as a grid run's (``fooled[j]``, ``margins[j]``)."""

    fooled: dict[int, torch.Tensor]
    margins: dict[int, torch.Tensor]

    @classmethod
    def empty(cls, n: int, j: int, device: torch.device) -> _Found:
        return cls({j: torch.zeros(n, dtype=torch.bool, device=device)},
                   {j: torch.full((n,), float("nan"), device=device)})


class _Locked:
    """A record whose ``get`` and ``put`` take turns (the runs side by side write it from their threads)."""

    def __init__(self, record: UnitRecord) -> None:
        self.record, self.lock = record, threading.Lock()

    def get(self, unit: str, ids: list[int]) -> dict[str, list] | None:
        with self.lock:
            return self.record.get(unit, ids)

    def put(self, unit: str, ids: list[int], values: dict[str, list]) -> None:
        with self.lock:
            self.record.put(unit, ids, values)


def cheap_attack_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf",
                       steps: int = 10, thresholds: MaskingThresholds | None = None) -> Check:
    """FGSM vs PGD (CE) at one eps on a small batch: the monitor's one attack-based check."""
    from lit_defense.attacks import FGSM, PGD

    fgsm, pgd = FGSM(eps=eps, norm=norm), PGD(eps=eps, norm=norm, steps=steps)
    robust = [~fooled_by(model, a.threat, a(model, x, y), x, y).cpu() for a in (fgsm, pgd)]
    return check_one_step_beats_iterative({eps: robust[0]}, {eps: robust[1]}, thresholds or MaskingThresholds(),
                                          (fgsm.name, f"pgd{steps}_ce"), samples_option="num_samples")


def evaluate_robustness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[Attack],
    eps: Sequence[float],
    batch_size: int = 256,
    cascade: bool = True,
) -> RobustnessResult:
    """Robust accuracy of ``model`` on ``(x, y)`` for every attack and eps (see module doc)."""
    start = time.perf_counter()
    counts, _ = robustness_counts(model, x, y, attacks, eps, batch_size, cascade)
    return counts.to_result(attacks, eps, check_attacks(attacks, eps), cascade, time.perf_counter() - start)


__all__ = ["WORST", "RobustnessCounts", "RobustnessResult", "Tracking", "UnitRecord", "cheap_attack_check", "check_attacks",
           "evaluate_robustness", "robustness_counts", "unit_name"]
