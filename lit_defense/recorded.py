"""An attack's units (attack x eps) on a batch, recorded: read back from the record, else run, judged and recorded.

What ``evaluation.robustness_counts`` runs batch by batch. The record (``UnitRecord``, the
audit's progress log) keeps each finished batch's outcome, so a resumed evaluation attacks
nothing twice; a randomized model's points are judged in expectation (``lit_defense.judge``) and
their expectations recorded with them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

from lit_defense.attacks.base import Attack, GridResult
from lit_defense.judge import Judge
from lit_defense.per_sample import eps_key


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


def _expected(model: nn.Module, judge: Judge | None, point: torch.Tensor, y: torch.Tensor, batch_size: int
              ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(selected, measured)`` expected accuracies at ``point`` when ``judge`` judges in expectation, else None."""
    if judge is None or not judge.randomized:
        return None
    return judge.judge(model, point, y, batch_size)


def clean_expected(model: nn.Module, judge: Judge, x: torch.Tensor, y: torch.Tensor, batch_size: int,
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


def attack_chunk(model: nn.Module, attack: Attack, eps: float, x: torch.Tensor, y: torch.Tensor,
                  ids: torch.Tensor, unit: str, record: UnitRecord | None, judge: Judge | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """``(fooled, margin, (selected, measured) or None)`` of one batch at one eps: from the record, else run.

    From the record, margins are NaN where it was written before they were kept. Judged in expectation (``judge``), fooled means no selection draw classifies the point
    correctly.
    """
    keys = ids.tolist() if record is not None else []
    stored = record.get(unit, keys) if record is not None else None
    if stored is not None and judge is not None and judge.randomized and "selected" not in stored:
        stored = None  # recorded without expectations (an older version): attacked and judged again
    if stored is not None:
        margin = stored.get("margin") or [None] * len(keys)
        return (torch.tensor(stored["fooled"], dtype=torch.bool, device=x.device),
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
    return fooled, margin.to(x.device), judged


def grid_run(model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor, pool: torch.Tensor,
              eps: Sequence[float], batch_size: int, ids: torch.Tensor, record: UnitRecord | None,
              judge: Judge | None = None
              ) -> tuple[GridResult, tuple[list[torch.Tensor], list[torch.Tensor]] | None]:
    """An attack that answers a grid (``answers_grid``), run once on the ``pool`` points.

    Returns its result over all of ``x`` (points attacked by this call; those from the record,
    which keeps norms and outcomes, not points, and those off the pool stay clean, their norms
    ``inf`` off the pool), and, judged in expectation (``judge``), per eps the selected and measured
    expected accuracies (NaN off the pool).
    """
    expected = judge is not None and judge.randomized
    judged = ([torch.full((x.shape[0],), math.nan, device=x.device) for _ in eps],
              [torch.full((x.shape[0],), math.nan, device=x.device) for _ in eps]) if expected else None
    points = [x.clone() for _ in eps]
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
    return GridResult(points, fooled, norms if has_norms else None, margins), judged


__all__ = ["UnitRecord", "attack_chunk", "clean_expected", "grid_run", "unit_name"]
