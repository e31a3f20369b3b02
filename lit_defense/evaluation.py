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

import math
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import nn

from lit_defense.attacks.base import Attack, GridResult, fooled_by, margin_loss
from lit_defense.diagnostics import MaskingThresholds, check_one_step_vs_iterative
from lit_defense.errors import ConfigError
from lit_defense.judge import Judge
from lit_defense.results import WORST, Check, RobustnessCounts, RobustnessResult, eps_key
from lit_defense.threat import check_eps, per_sample


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


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(xb).argmax(1) for xb in x.split(batch_size)])


def _clean(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: classified correctly, and the true logit minus the largest other (one forward pass)."""
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=x.device), torch.zeros(0, device=x.device)
    with torch.no_grad():
        logits = torch.cat([model(xb) for xb in x.split(batch_size)])
        return logits.argmax(1) == y, -margin_loss(logits, y)


class UnitRecord(Protocol):
    """Where per-sample results of finished work are kept (the audit's resumable progress).

    A *unit* is one attack at one eps (``"<attack>@<eps>"``), or one minimum-norm run for the
    whole grid (``"<attack>@min_norm"``); its values are per-sample lists in the order of ``ids``.
    """

    def get(self, unit: str, ids: list[int]) -> dict[str, list] | None:
        """The values of ``unit`` for exactly these samples, or ``None`` when any is missing."""

    def put(self, unit: str, ids: list[int], values: dict[str, list]) -> None:
        """Record ``unit``'s values for these samples (durably: a crash after it keeps them)."""


def unit_name(attack: Attack, eps: float | None) -> str:
    """The name of one unit of work: an attack at one eps, or a minimum-norm run (``eps=None``)."""
    return f"{attack.name}@{'min_norm' if eps is None else eps_key(eps)}"


def robustness_counts(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[Attack],
    eps: Sequence[float],
    batch_size: int = 256,
    cascade: bool = True,
    keep_examples: int = 0,
    alive: dict[str, torch.Tensor] | None = None,
    ids: torch.Tensor | None = None,
    record: UnitRecord | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    nested: bool = False,
    judge: Judge | None = None,
) -> tuple[RobustnessCounts, dict]:
    """Counts of robust points for every attack and eps (see module doc), plus examples.

    ``keep_examples=k`` also returns, for the first k samples and every eps, the worst-case
    adversarial input (the first attack output that fooled the model, else the clean input):
    ``{"x": x[:k], "y": y[:k], "adv": {eps_key: tensor}, "pred": {eps_key: tensor}}``; and always
    ``examples["robust"][eps_key]``: the per-sample mask of points no attack fooled, and
    ``examples["min_norm"][attack]``: per-sample norms found by minimum-norm attacks (``inf``: none
    found or not attacked), and ``examples["fooled"][attack][eps_key]``: the per-sample mask of
    points this attack fooled (of those it attacked); ``examples["clean_correct"]``: the clean
    prediction's correctness per sample, as the attacks saw it. ``alive`` (eps_key -> mask) restricts
    the attacks to the points an earlier evaluation left robust. A minimum-norm attack runs once for
    the whole grid, on every point still robust at some eps. The model is used as it is (its
    train/eval state is not changed).

    ``nested=True`` (with ``cascade``): an input an attack fooled at a smaller eps is fooled at every
    larger one (its point lies inside the larger ball too), so the attacks at the larger eps skip
    it and it is counted fooled there, credited to the attack that reached that eps first.

    ``ids`` (default ``0..n-1``) name the samples: they key each sample's random numbers, so a
    sample is attacked the same whatever shard or batch it is in. ``record`` keeps each batch's
    results as it finishes and supplies those already recorded (resuming). ``on_progress(attack,
    done, total)`` is called as an attack's batches finish (inputs attacked over all eps).

    ``judge`` (``lit_defense.judge.Judge``) with more than one draw judges a randomized model in
    expectation: every point, the clean ones included, gets a *selected* and a *measured* estimate
    of its expected accuracy (``examples["selected"|"measured"][attack][eps_key]``, NaN where the
    attack did not run; ``examples["clean_selected"|"clean_measured"]``). An input counts as
    correct while some selection draw classifies it correctly, and as fooled when none does.
    """
    check_attacks(attacks, eps)
    with torch.inference_mode(False):
        x, y = x.detach().clone(), y.detach().clone()
        dev = x.device
        ids = torch.arange(x.shape[0], device=dev) if ids is None else ids.to(dev, torch.long)
        n_a, n_e = len(attacks), len(eps)
        clean_ok, clean_margin = _clean(model, x, y, batch_size)
        expected = judge is not None and judge.randomized
        if expected:
            clean_sel, clean_meas = _clean_expected(model, judge, x, y, batch_size, ids, record)
            clean_ok = clean_sel > 0
        robust = torch.zeros(n_a, n_e, dtype=torch.long, device=dev)
        k = min(keep_examples, x.shape[0])
        examples = {"x": x[:k].clone(), "y": y[:k].clone(), "adv": {}, "pred": {}, "robust": {}, "min_norm": {},
                    "fooled": {a.name: {} for a in attacks}, "margin": {a.name: {} for a in attacks},
                    "clean_correct": clean_ok, "clean_margin": clean_margin}
        if expected:
            examples.update(clean_selected=clean_sel, clean_measured=clean_meas,
                            selected={a.name: {} for a in attacks}, measured={a.name: {} for a in attacks})
        start = [clean_ok & alive[eps_key(e)] if alive is not None else clean_ok.clone() for e in eps]
        still = [m.clone() for m in start]
        adv_k = [x[:k].clone() for _ in eps]
        for i, attack in enumerate(attacks):
            pools = [still[j] if cascade else start[j] for j in range(n_e)]
            grid, computed = None, None
            total = sum(int(p.sum()) for p in pools)
            done = 0
            if on_progress is not None:
                on_progress(attack.name, 0, total)
            if attack.answers_grid:  # one run answers every eps, on every point still robust at some eps
                grid, computed, grid_judged = _grid_run(model, attack, x, y, torch.stack(pools).any(0), eps,
                                                        batch_size, ids, record, judge)
                if grid.norms is not None:
                    examples["min_norm"][attack.name] = grid.norms
            for j, e in enumerate(eps):
                unit = unit_name(attack, e)
                fooled = torch.zeros_like(clean_ok)
                margin = torch.full((x.shape[0],), float("nan"), device=dev)
                judged = [torch.full((x.shape[0],), float("nan"), device=dev) for _ in range(2)]
                if nested and cascade:  # fooled here at a smaller eps: fooled at e, not attacked again
                    for jj in range(n_e):
                        if eps[jj] < e:
                            fooled |= start[jj] & ~still[jj] & still[j]
                    still[j] &= ~fooled
                for chunk in pools[j].nonzero().squeeze(1).split(batch_size):
                    if chunk.numel() == 0:  # an empty pool splits into one empty chunk
                        continue
                    if grid is not None and computed is not None:
                        hit = grid.fooled[j][chunk]
                        x_adv = grid.points[j][chunk] if bool(computed[chunk].all()) else None
                        if grid.margins is not None:
                            margin[chunk] = grid.margins[j][chunk]
                        if grid_judged is not None:
                            judged[0][chunk], judged[1][chunk] = grid_judged[0][j][chunk], grid_judged[1][j][chunk]
                    else:
                        hit, x_adv, margin[chunk], sel_meas = _attack_chunk(model, attack, e, x[chunk], y[chunk],
                                                                            ids[chunk], unit, record, judge)
                        if sel_meas is not None:
                            judged[0][chunk], judged[1][chunk] = sel_meas
                    fooled[chunk] |= hit
                    if k and x_adv is not None:
                        first = chunk < k
                        sel = chunk[first]
                        newly = hit[first] & still[j][sel]
                        adv_k[j][sel] = torch.where(per_sample(newly, x_adv), x_adv[first], adv_k[j][sel])
                    done += chunk.numel()
                    if on_progress is not None:
                        on_progress(attack.name, done, total)
                still[j] &= ~fooled
                examples["fooled"][attack.name][eps_key(e)] = fooled
                examples["margin"][attack.name][eps_key(e)] = margin
                if expected:
                    examples["selected"][attack.name][eps_key(e)] = judged[0]
                    examples["measured"][attack.name][eps_key(e)] = judged[1]
                robust[i, j] = (still[j] if cascade else start[j] & ~fooled).sum()
        worst = torch.stack([m.sum() for m in still]) if n_e else torch.zeros(0, dtype=torch.long, device=dev)
        for j, e in enumerate(eps):
            examples["robust"][eps_key(e)] = still[j]
            if k:
                examples["adv"][eps_key(e)] = adv_k[j]
                examples["pred"][eps_key(e)] = _predict(model, adv_k[j], batch_size)
    counts = RobustnessCounts(
        n=torch.tensor(x.shape[0], device=dev), clean=clean_ok.sum(), robust=robust, worst=worst
    )
    return counts, examples


def _expected(model: nn.Module, judge: Judge | None, point: torch.Tensor, y: torch.Tensor, batch_size: int
              ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(selected, measured)`` expected accuracies at ``point`` when ``judge`` judges in expectation, else None."""
    if judge is None or not judge.randomized:
        return None
    return judge.judge(model, point, y, batch_size)


def _clean_expected(model: nn.Module, judge: Judge, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                    ids: torch.Tensor, record: UnitRecord | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean points' ``(selected, measured)`` expectations: from the record, else judged and recorded.

    Recorded like an attack's unit, so that a resumed audit judges its inputs against the same draws.
    """
    keys = ids.tolist() if record is not None else []
    stored = record.get("clean@judged", keys) if record is not None and keys else None
    if stored is not None and "selected" in stored:
        return _stored_expected(stored, "", x.device)  # type: ignore[return-value]
    sel, meas = judge.judge(model, x, y, batch_size)
    if record is not None and keys:
        record.put("clean@judged", keys, {"selected": sel.tolist(), "measured": meas.tolist()})
    return sel, meas


def _stored_expected(stored: dict[str, list], suffix: str, device: torch.device
                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The recorded ``(selected, measured)`` of a unit, when it was judged in expectation."""
    if f"selected{suffix}" not in stored:
        return None
    return (torch.tensor(stored[f"selected{suffix}"], device=device),
            torch.tensor(stored[f"measured{suffix}"], device=device))


def _attack_chunk(model: nn.Module, attack: Attack, eps: float, x: torch.Tensor, y: torch.Tensor,
                  ids: torch.Tensor, unit: str, record: UnitRecord | None, judge: Judge | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """``(fooled, x_adv, margin, (selected, measured) or None)`` of one batch at one eps: from the record, else run.

    From the record ``x_adv`` is None, and margins are NaN where it was written before they were
    kept. Judged in expectation (``judge``), fooled means no selection draw classifies the point
    correctly.
    """
    keys = ids.tolist() if record is not None else []
    stored = record.get(unit, keys) if record is not None else None
    if stored is not None and judge is not None and judge.randomized and "selected" not in stored:
        stored = None  # recorded without expectations (an older version): attacked and judged again
    if stored is not None:
        margin = stored.get("margin") or [None] * len(keys)
        return (torch.tensor(stored["fooled"], dtype=torch.bool, device=x.device), None,
                torch.tensor([math.nan if v is None else v for v in margin], device=x.device),
                _stored_expected(stored, "", x.device))
    found = attack.attack_grid(model, x, y, [eps], ids)
    margin = found.margins[0].float() if found.margins is not None else torch.full((x.shape[0],), math.nan)
    fooled, judged = found.fooled[0], _expected(model, judge, found.points[0], y, x.shape[0])
    values: dict[str, list] = {}
    if judged is not None:
        fooled = judged[0] == 0
        values = {"selected": judged[0].tolist(), "measured": judged[1].tolist()}
    if record is not None:
        record.put(unit, keys, {"fooled": fooled.tolist(), **values,
                                "margin": [round(v, 5) if math.isfinite(v) else None for v in margin.tolist()]})
    return fooled, found.points[0], margin.to(x.device), judged


def _grid_run(model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor, pool: torch.Tensor,
              eps: Sequence[float], batch_size: int, ids: torch.Tensor, record: UnitRecord | None,
              judge: Judge | None = None
              ) -> tuple[GridResult, torch.Tensor, tuple[list[torch.Tensor], list[torch.Tensor]] | None]:
    """An attack that answers a grid (``answers_grid``), run once on the ``pool`` points.

    Returns its result over all of ``x``, which points this call attacked (the others came from
    the record, which keeps norms and outcomes, not points; off the pool, points are clean and
    norms ``inf``), and, judged in expectation (``judge``), per eps the selected and measured
    expected accuracies (NaN off the pool).
    """
    expected = judge is not None and judge.randomized
    judged = ([torch.full((x.shape[0],), math.nan, device=x.device) for _ in eps],
              [torch.full((x.shape[0],), math.nan, device=x.device) for _ in eps]) if expected else None
    points = [x.clone() for _ in eps]
    computed = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    norms = torch.full((x.shape[0],), float("inf"), device=x.device)
    has_norms = True
    fooled = [torch.zeros(x.shape[0], dtype=torch.bool, device=x.device) for _ in eps]
    margins = [torch.full((x.shape[0],), math.nan, device=x.device) for _ in eps]
    unit = unit_name(attack, None)
    for chunk in pool.nonzero().squeeze(1).split(batch_size):
        if chunk.numel() == 0:
            continue
        keys = ids[chunk].tolist() if record is not None else []
        stored = record.get(unit, keys) if record is not None else None
        if stored is not None and expected and not any(k.startswith("selected@") for k in stored):
            stored = None  # recorded without expectations (an older version): attacked and judged again
        if stored is not None:
            if "norm" in stored:
                norms[chunk] = torch.tensor([float("inf") if v is None else v for v in stored["norm"]], device=x.device)
            else:
                has_norms = False
            for j, e in enumerate(eps):
                fooled[j][chunk] = torch.tensor(stored[f"fooled@{eps_key(e)}"], dtype=torch.bool, device=x.device)
                both = _stored_expected(stored, f"@{eps_key(e)}", x.device) if judged is not None else None
                if both is not None and judged is not None:
                    judged[0][j][chunk], judged[1][j][chunk] = both
            continue
        found = attack.attack_grid(model, x[chunk], y[chunk], eps, ids[chunk])
        computed[chunk] = True
        for j in range(len(eps)):
            points[j][chunk], fooled[j][chunk] = found.points[j], found.fooled[j]
            if found.margins is not None:
                margins[j][chunk] = found.margins[j].float()
        if judged is not None:
            for j in range(len(eps)):
                sel, meas = judge.judge(model, found.points[j], y[chunk], batch_size)  # type: ignore[union-attr]
                judged[0][j][chunk], judged[1][j][chunk] = sel, meas
                fooled[j][chunk] = sel == 0
        values: dict[str, list] = {f"fooled@{eps_key(e)}": fooled[j][chunk].tolist() for j, e in enumerate(eps)}
        if judged is not None:
            for j, e in enumerate(eps):
                values[f"selected@{eps_key(e)}"] = judged[0][j][chunk].tolist()
                values[f"measured@{eps_key(e)}"] = judged[1][j][chunk].tolist()
        if found.norms is None:
            has_norms = False
        else:
            norms[chunk] = found.norms
            values["norm"] = [v if math.isfinite(v) else None for v in found.norms.tolist()]
        if record is not None:
            record.put(unit, keys, values)
    return GridResult(points, fooled, norms if has_norms else None, margins), computed, judged


def cheap_attack_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf",
                       steps: int = 10, thresholds: MaskingThresholds | None = None) -> Check:
    """FGSM vs PGD (CE) at one eps on a small batch: the monitor's one attack-based check."""
    from lit_defense.attacks import FGSM, PGD

    fgsm, pgd = FGSM(eps=eps, norm=norm), PGD(eps=eps, norm=norm, steps=steps)
    robust = [~fooled_by(model, a.threat, a(model, x, y), x, y).cpu() for a in (fgsm, pgd)]
    return check_one_step_vs_iterative({eps: robust[0]}, {eps: robust[1]}, thresholds or MaskingThresholds(),
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


__all__ = ["WORST", "RobustnessCounts", "RobustnessResult", "UnitRecord", "cheap_attack_check", "check_attacks",
           "evaluate_robustness", "robustness_counts", "unit_name"]
