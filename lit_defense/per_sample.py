"""Every input's outcome over the audited inputs (``PerSample``): the type an audit's results travel in.

Plain data like ``lit_defense.results`` (which re-exports it): no attack code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


def eps_key(eps: float) -> str:
    """How an eps appears in metric names: ``adv/<attack>/eps=<eps_key>/acc``."""
    return f"{eps:.6g}"


@dataclass
class PerSample:
    """Every input's outcome over the same ``n`` inputs: the type an audit's results travel in.

    Paired statistics need nothing else: two attacks, two eps or two models compared input by input
    (``lit_defense.stats.paired(a.robust_to(...), b.robust_to(...))``).

    Attributes:
        clean: per input, classified correctly (bool ``(n,)``).
        fooled_by: attack -> eps key (``eps_key``) -> per input, fooled by that attack at that
            eps (among the inputs it attacked).
        robust: eps key -> per input, correct and fooled by no attack folded in so far.
        min_norm: attack -> per input, the smallest adversarial perturbation it found (``inf``: none).
        draws: passes per judgement (``lit_defense.judge``): 1 for a deterministic model; more for
            a randomized one, which is judged in expectation over its own randomness. Then
            ``clean`` and ``robust`` say whether some *selection* draw was right (which inputs are
            still attacked), ``fooled_by`` that none was, and the numbers come from the
            expectations below.
        clean_selected, clean_measured: (randomized) per input, the expected accuracy at the clean
            point, from two independent sets of draws.
        selected_by, measured_by: (randomized) attack -> eps key -> per input, the same at the
            attack's point (non-finite where it did not attack the input).
    """

    clean: torch.Tensor
    fooled_by: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    robust: dict[str, torch.Tensor] = field(default_factory=dict)
    min_norm: dict[str, torch.Tensor] = field(default_factory=dict)
    draws: int = 1
    clean_selected: torch.Tensor | None = None
    clean_measured: torch.Tensor | None = None
    selected_by: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    measured_by: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def start(cls, clean: torch.Tensor, eps: Sequence[float], draws: int = 1,
              clean_selected: torch.Tensor | None = None, clean_measured: torch.Tensor | None = None) -> PerSample:
        """Before any attack: every correct input is robust at every eps.

        A randomized model (``draws`` > 1) also takes the clean points' two expected accuracies.
        """
        clean = clean.bool()
        if draws > 1 and (clean_selected is None or clean_measured is None):
            raise ValueError("a randomized model's results need the clean points' selected and measured expectations")
        return cls(clean=clean, robust={eps_key(e): clean.clone() for e in eps}, draws=draws,
                   clean_selected=None if draws == 1 else clean_selected.float().cpu(),  # type: ignore[union-attr]
                   clean_measured=None if draws == 1 else clean_measured.float().cpu())  # type: ignore[union-attr]

    @property
    def randomized(self) -> bool:
        """Whether the results are expectations over the model's randomness (more than one draw)."""
        return self.draws > 1

    def _pick(self, names: Sequence[str], key: str) -> torch.Tensor:
        """Per input, the measured expectation at the point (clean, or one of ``names``') with the lowest selected one.

        The selection and the measurement use independent draws, so taking the lowest of many
        noisy estimates does not bias the number reported (ties keep the earlier point).
        """
        best_sel = self.clean_selected.clone()  # type: ignore[union-attr]
        best = self.clean_measured.clone()  # type: ignore[union-attr]
        for name in names:
            sel = self.selected_by.get(name, {}).get(key)
            if sel is None:
                continue
            sel = torch.where(torch.isfinite(sel), sel, torch.full_like(sel, math.inf))
            better = sel < best_sel
            best_sel = torch.where(better, sel, best_sel)
            best = torch.where(better, self.measured_by[name][key], best)
        return best

    def expected_clean(self) -> torch.Tensor:
        """Per input, the expected accuracy at the clean point (a deterministic model: correct or not)."""
        return self.clean_measured if self.randomized else self.clean  # type: ignore[return-value]

    def expected_to(self, attack: str | None, eps: float) -> torch.Tensor:
        """``robust_to`` as an expectation: per input, the expected accuracy at ``attack``'s point (``None``: the worst).

        A deterministic model: ``robust_to`` itself (boolean). A randomized one: the measured
        expectation at the attack's point, or at the worst point of all attacks (selected on
        other draws, ``_pick``); an input the attack did not attack keeps its clean one.
        """
        if not self.randomized:
            return self.robust_to(attack, eps)
        key = eps_key(eps)
        if attack is None:
            return self._pick(list(self.selected_by), key)
        return self._pick([attack], key) if attack in self.selected_by else self.clean_measured.clone()  # type: ignore[union-attr]

    def expected_after(self, attack: str, eps: float) -> torch.Tensor:
        """``robust_after`` as an expectation: the worst point of ``attack`` and every attack folded in before it."""
        if not self.randomized:
            return self.robust_after(attack, eps)
        names = list(self.selected_by)
        return self._pick(names[:names.index(attack) + 1] if attack in names else names, eps_key(eps))

    @property
    def n(self) -> int:
        """The number of inputs."""
        return int(self.clean.numel())

    def robust_to(self, attack: str | None, eps: float) -> torch.Tensor:
        """Per input: correct and not fooled by ``attack`` at ``eps`` (``None``: by any attack)."""
        key = eps_key(eps)
        if attack is None:
            return self.robust[key]
        return self.clean & ~self.fooled_by[attack][key]

    def robust_after(self, attack: str, eps: float) -> torch.Tensor:
        """Per input: correct and fooled by neither ``attack`` nor any attack folded in before it."""
        key, out = eps_key(eps), self.clean.clone()
        for name, by_eps in self.fooled_by.items():
            out &= ~by_eps[key]
            if name == attack:
                return out
        raise KeyError(f"no attack {attack!r} was folded in; these were: {list(self.fooled_by)}")

    def fold(self, fooled: dict[str, dict[str, torch.Tensor]], attacks: Sequence[str], eps: Sequence[float],
             selected: dict[str, dict[str, torch.Tensor]] | None = None,
             measured: dict[str, dict[str, torch.Tensor]] | None = None) -> dict[str, dict[float, torch.Tensor]]:
        """Fold attacks' results in, in order (in place).

        Each joins ``fooled_by`` and removes the inputs it fooled from ``robust``; an attack missing
        from ``fooled`` (it ran nowhere) fooled nothing. A randomized model's results also take
        each attack's ``selected`` and ``measured`` expectations (attack -> eps key -> per input).
        Returns, per attack and eps, what is left after it and everything before: the inputs still
        robust (deterministic; the cumulative robust accuracy is its mean), or the expected
        accuracy at the worst point so far (randomized).
        """
        after: dict[str, dict[float, torch.Tensor]] = {}
        for name in attacks:
            by_eps = fooled.get(name) or {}
            self.fooled_by[name] = {eps_key(e): by_eps.get(eps_key(e), torch.zeros(self.n, dtype=torch.bool))
                                    for e in eps}
            if self.randomized:
                missing = torch.full((self.n,), math.nan)
                self.selected_by[name] = {eps_key(e): (selected or {}).get(name, {}).get(eps_key(e), missing).float().cpu()
                                          for e in eps}
                self.measured_by[name] = {eps_key(e): (measured or {}).get(name, {}).get(eps_key(e), missing).float().cpu()
                                          for e in eps}
            for e in eps:
                self.robust[eps_key(e)] = self.robust[eps_key(e)] & ~self.fooled_by[name][eps_key(e)]
            after[name] = {e: self.expected_to(None, e) if self.randomized else self.robust[eps_key(e)].clone()
                           for e in eps}
        return after

    def to_dict(self) -> dict[str, Any]:
        """Plain lists (``per_sample.json``).

        Keys ``clean_correct``, ``robust``, ``fooled_by`` and ``min_norm`` (``None``: no norm found).
        """
        out = {
            "clean_correct": self.clean.tolist(),
            "robust": {key: mask.tolist() for key, mask in self.robust.items()},
            "fooled_by": {name: {key: m.tolist() for key, m in by_eps.items()} for name, by_eps in self.fooled_by.items()},
            "min_norm": {name: [None if not math.isfinite(v) else round(v, 6) for v in norms.tolist()]
                         for name, norms in self.min_norm.items()},
        }
        if self.randomized:
            def values(t: torch.Tensor) -> list[float | None]:
                return [None if not math.isfinite(v) else round(v, 6) for v in t.tolist()]

            out["expected"] = {
                "draws": self.draws, "clean_selected": values(self.clean_selected),  # type: ignore[arg-type]
                "clean_measured": values(self.clean_measured),  # type: ignore[arg-type]
                "selected_by": {a: {k: values(t) for k, t in by.items()} for a, by in self.selected_by.items()},
                "measured_by": {a: {k: values(t) for k, t in by.items()} for a, by in self.measured_by.items()},
            }
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerSample:
        """The results back from ``to_dict``'s output (one model of ``per_sample.json``)."""
        def mask(values: list[bool]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.bool)

        def floats(values: list[float | None]) -> torch.Tensor:
            return torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float32)

        exp = data.get("expected") or {}
        return cls(
            clean=mask(data["clean_correct"]),
            fooled_by={name: {key: mask(m) for key, m in by_eps.items()} for name, by_eps in data.get("fooled_by", {}).items()},
            robust={key: mask(m) for key, m in data.get("robust", {}).items()},
            min_norm={name: torch.tensor([math.inf if v is None else v for v in norms], dtype=torch.float32)
                      for name, norms in data.get("min_norm", {}).items()},
            draws=int(exp.get("draws", 1)),
            clean_selected=floats(exp["clean_selected"]) if exp else None,
            clean_measured=floats(exp["clean_measured"]) if exp else None,
            selected_by={a: {k: floats(v) for k, v in by.items()} for a, by in exp.get("selected_by", {}).items()},
            measured_by={a: {k: floats(v) for k, v in by.items()} for a, by in exp.get("measured_by", {}).items()},
        )


__all__ = ["PerSample", "eps_key"]
