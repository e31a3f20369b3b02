"""Square attack (Andriushchenko et al. 2020), L-inf and L2: gradient-free random search.

Uses no gradient at all, so masked gradients (shattered, stochastic, vanishing) cannot stop it:
if it beats a white-box attack, the white-box attack was fooled by the model's gradients.

L-inf: each query sets a random square window of the perturbation to ``±eps`` (a sign per channel).
L2: each query moves the perturbation's energy out of two random windows into a centred
two-lobed bump on the first (a sign per channel, plus what the window held), with the energy the
two windows held and what the ball has to spare, then scales the whole perturbation back onto the
sphere of radius ``eps`` (what the [0, 1] box clipped is spent again); it starts from a grid of
such bumps with random signs (the paper's L2 scheme).
"""

from __future__ import annotations

import math
from functools import cache

import torch
from torch import nn
from typing_extensions import override

from lit_defense.attacks.base import FixedBudgetAttack, margin_loss
from lit_defense.attacks.registry import register_attack
from lit_defense.errors import ConfigError
from lit_defense.rng import SampleRNG
from lit_defense.width import any_lane, per_input, width_for

# Halving schedule of the square size (fractions of 10,000 queries, as in the paper's code).
_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def _p_at(p_init: float, it: int, n_queries: int) -> float:
    it = int(it / n_queries * 10000)
    p = p_init
    for boundary in _SCHEDULE:
        if it > boundary:
            p /= 2
    return p


@cache
def _bump(s: int) -> torch.Tensor:
    """An ``s x s`` bump of unit L2 norm: two pseudo-Gaussian lobes of opposite sign side by side.

    Each lobe is a sum of nested squares centred on it, the k-th (half width k) weighted 1/(k+1)^2.
    """
    def lobe(rows: int, cols: int) -> torch.Tensor:
        r = (torch.arange(rows) - (rows - 1) / 2).abs().view(-1, 1)
        c = (torch.arange(cols) - (cols - 1) / 2).abs().view(1, -1)
        ring = torch.maximum(r, c).floor().long()  # which nested square a pixel first belongs to
        weights = 1.0 / (torch.arange(max(rows, cols)) + 1.0) ** 2
        cumulative = weights.flip(0).cumsum(0).flip(0)  # pixel value: the sum of the squares holding it
        return cumulative[ring]

    half = s // 2
    out = torch.cat([lobe(s, s - half), -lobe(s, half)], dim=1) if half else lobe(s, s)
    return out / out.norm()


def _on_sphere(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """``delta`` scaled to L2 norm ``eps``, per sample."""
    return delta * (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, 1, 1, 1)


def _window(top: torch.Tensor, left: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
    """Per sample, the ``(m, 1, h, w)`` mask of its ``s x s`` window at ``(top, left)``."""
    m = top.shape[0]
    rows = torch.arange(h, device=top.device).view(1, 1, h, 1)
    cols = torch.arange(w, device=top.device).view(1, 1, 1, w)
    top, left = top.view(m, 1, 1, 1), left.view(m, 1, 1, 1)
    return (rows >= top) & (rows < top + s) & (cols >= left) & (cols < left + s)


def _place(pattern: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per sample, its ``s x s`` pattern (``(m, s, s)``) placed at ``(top, left)`` of an ``(m, 1, h, w)`` zero image."""
    m, s = pattern.shape[0], pattern.shape[1]
    rows = torch.arange(h, device=top.device).view(1, h, 1) - top.view(m, 1, 1)
    cols = torch.arange(w, device=top.device).view(1, 1, w) - left.view(m, 1, 1)
    inside = (rows >= 0) & (rows < s) & (cols >= 0) & (cols < s)
    index = (rows.clamp(0, s - 1) * s + cols.clamp(0, s - 1)).view(m, h * w)
    values = pattern.reshape(m, s * s).gather(1, index).view(m, h, w)
    return torch.where(inside, values, torch.zeros_like(values)).unsqueeze(1)


@register_attack
class Square(FixedBudgetAttack):
    """Square Attack (Andriushchenko et al. 2020): score-based random search, L-inf or L2.

    Args:
        n_queries: model evaluations per sample (the first is the initialisation).
        p_init: initial fraction of pixels changed per query (0.8 for MNIST-like data in the paper,
            and AutoAttack's for both norms).
        early_stop_every: every this many queries, stop searching for the inputs already fooled.
        draws: passes per query, for a randomized model (the audit sets it): a candidate's score is
            its margin averaged over the draws, and an input counts as fooled only when every draw
            misclassifies its best point, never on one lucky draw. Each query costs ``draws``
            forward passes.
        chains: independent searches per input, each with ``n_queries // chains`` queries (and the
            square-size schedule of that budget), run side by side as one batch where one call
            carries them (``lit_defense.width``): the same queries in ``1 / chains`` of the rounds.
            An input leaves every chain once one of them fools it; the first chain that fooled it
            (else the chain with the highest margin) gives its point.
        proposals: candidates per step of one search: every step proposes ``proposals`` windows
            per input (independent streams, ``SampleRNG.lanes``), scores them in one call and keeps
            the best if it beats the point so far; the square-size schedule runs over the
            ``(n_queries - 1) // proposals`` steps after the first query. About the same queries in
            ``1 / proposals`` of the rounds, one search (not several short ones, as ``chains``);
            proposal 0 is the one a search of one proposal per step draws. Not with ``chains`` > 1.
    """

    norms = ("linf", "l2")
    uses_gradients = False

    def __init__(self, eps: float = 0.1, norm: str = "linf", n_queries: int = 1000, p_init: float = 0.8,
                 early_stop_every: int = 10, draws: int = 1, chains: int = 1, proposals: int = 1,
                 seed: int = 0, name: str | None = None) -> None:
        super().__init__(eps=eps, norm=norm, seed=seed, name=name)
        if n_queries < 1 or not 0 < p_init <= 1:
            raise ConfigError(f"Square needs n_queries >= 1 and 0 < p_init <= 1, got {n_queries}, {p_init}.")
        if not 1 <= chains <= n_queries:
            raise ConfigError(f"Square needs 1 <= chains <= n_queries, got chains={chains}, n_queries={n_queries}.")
        self.chains = chains
        if not 1 <= proposals <= n_queries or (proposals > 1 and chains > 1):
            raise ConfigError(f"Square needs 1 <= proposals <= n_queries and proposals or chains at 1, got "
                              f"proposals={proposals}, chains={chains}, n_queries={n_queries}.")
        self.proposals = proposals
        if draws < 1:
            raise ConfigError(f"Square needs draws >= 1, got {draws}.")
        self.draws = draws
        self.n_queries = n_queries
        self.p_init = p_init
        self.early_stop_every = max(1, early_stop_every)

    @override
    def default_name(self) -> str:
        return "square" if self.norm == "linf" else f"square_{self.norm}"

    @override
    @torch.no_grad()
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: SampleRNG) -> torch.Tensor:
        n = x.shape[0]
        out, best = x.clone(), torch.full((n,), -float("inf"), device=x.device)
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        queries = self.n_queries // self.chains
        for group in width_for(x.device).groups(n, x[0].numel(), self.chains):
            idx = (~done).nonzero().squeeze(1)
            m, k = idx.numel(), len(group)
            if m == 0:
                break
            rows = torch.arange(m, device=x.device).repeat(k)
            streams = generator[idx].lanes(group) if self.chains > 1 else generator[idx]  # lane 0: the plain stream
            found, score, fooled = (per_input(v, k) for v in self._search(
                model, x[idx][rows], y[idx][rows], streams, queries, rows if k > 1 else None))
            pick = torch.arange(m, device=x.device)
            hit = fooled.any(0)
            lane = torch.where(hit, fooled.float().argmax(0), score.argmax(0))
            better = hit | (score[lane, pick] > best[idx])
            out[idx] = torch.where(better.view(-1, 1, 1, 1), found[lane, pick], out[idx])
            best[idx] = torch.where(better, score[lane, pick], best[idx])
            done[idx] = hit
        return out

    def _search(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: SampleRNG, queries: int,
                group: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One search of ``queries`` per row: ``(best point, its margin, fooled)``.

        ``group`` (chains side by side): each row's input; a row stops when any row of its input is fooled.
        """
        n = x.shape[0]
        inputs = int(group.max()) + 1 if group is not None and n else 0
        out = (x + self._start(x, generator)).clamp(0, 1)
        best, done = self._score(model, out, y)  # maximise: > 0 means misclassified
        act = torch.arange(n, device=x.device)  # samples still searched
        xa, ya, xb, ba, da = x, y, out.clone(), best.clone(), done.clone()
        # each proposal its own stream (lane 0 the plain one), drawn for the rows still searched
        streams = generator.lanes(range(self.proposals)) if self.proposals > 1 else generator
        steps = 1 + (queries - 1) // self.proposals  # the first query starts the search, then steps of proposals
        for it in range(steps - 1):
            if it % self.early_stop_every == 0:
                # write back, then drop the fooled samples (one host sync every few queries)
                out[act], best[act], done[act] = xb, ba, da
                finished = da if group is None else any_lane(da, group[act], inputs)[group[act]]
                keep = (~finished).nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                if keep.numel() < act.numel():
                    act, xa, ya, xb, ba, da = act[keep], xa[keep], ya[keep], xb[keep], ba[keep], da[keep]
            p = _p_at(self.p_init, it, steps)
            # each sample's own windows and signs, whatever else is still searched
            candidate, loss, fooled = self._best_of(model, streams, act, n, xa, ya, xb, p)
            accept = loss > ba
            ba = torch.where(accept, loss, ba)
            da = torch.where(accept, fooled, da)
            xb = torch.where(accept.view(-1, 1, 1, 1), candidate, xb)
        out[act], best[act], done[act] = xb, ba, da
        return out, best, done

    def _best_of(self, model: nn.Module, streams: SampleRNG, act: torch.Tensor, n: int, xa: torch.Tensor,
                 ya: torch.Tensor, xb: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Of ``proposals`` candidates per row still searched, scored in one call, the best: ``(point, margin, fooled)``."""
        k, m = self.proposals, act.numel()
        rows = (torch.arange(k, device=act.device).view(k, 1) * n + act.view(1, m)).reshape(-1)
        xk = xa.repeat(k, 1, 1, 1)
        candidate = (xk + self._propose(streams[rows], xk, (xb - xa).repeat(k, 1, 1, 1), p)).clamp(0, 1)
        loss, fooled = (per_input(v, k) for v in self._score(model, candidate, ya.repeat(k)))
        pick, at = loss.argmax(0), torch.arange(m, device=act.device)  # ties: the lowest lane
        return per_input(candidate, k)[pick, at], loss[pick, at], fooled[pick, at]

    def _score(self, model: nn.Module, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The margin at ``z`` (mean over ``draws`` passes) and whether every pass misclassifies it."""
        if self.draws == 1:
            margin = margin_loss(model(z), y)
            return margin, margin > 0
        margins = torch.stack([margin_loss(model(z), y) for _ in range(self.draws)])
        return margins.mean(0), (margins > 0).all(0)

    def _start(self, x: torch.Tensor, rng: SampleRNG) -> torch.Tensor:
        """The first perturbation: vertical stripes of ``±eps`` (L-inf), a grid of signed bumps of norm ``eps`` (L2)."""
        n, c, h, w = x.shape
        if self.norm == "linf":
            return self.eps * rng.signs((n, c, 1, w), x.dtype).expand(n, c, h, w)
        size = max(2, h // 5)
        blocks_h, blocks_w = math.ceil(h / size), math.ceil(w / size)
        signs = rng.signs((n, c, blocks_h, blocks_w), x.dtype)
        signs = signs.repeat_interleave(size, 2).repeat_interleave(size, 3)[:, :, :h, :w]
        tile = _bump(size).to(x.device, x.dtype).repeat(blocks_h, blocks_w)[:h, :w]
        return _on_sphere(signs * tile, self.eps)

    def _propose(self, rng: SampleRNG, x: torch.Tensor, delta: torch.Tensor, p: float) -> torch.Tensor:
        """The next candidate perturbation (``delta``: the best one so far) for a window fraction ``p``."""
        m, c, h, w = x.shape
        dev = x.device
        if self.norm == "linf":
            s = max(1, min(h - 1, round(math.sqrt(p * h * w))))
            top = rng.randint(0, h - s + 1, (m,))
            left = rng.randint(0, w - s + 1, (m,))
            window = _window(top, left, s, h, w)
            return torch.where(window, self.eps * rng.signs((m, c, 1, 1), x.dtype), delta)
        s = max(3, round(math.sqrt(p * h * w)))
        s = min(s + 1 - s % 2, h, w)  # odd: the bump's lobes are centred
        top, left = rng.randint(0, h - s + 1, (m,)), rng.randint(0, w - s + 1, (m,))
        top2, left2 = rng.randint(0, h - s + 1, (m,)), rng.randint(0, w - s + 1, (m,))
        first = _window(top, left, s, h, w)
        both = first | _window(top2, left2, s, h, w)
        # the energy the two windows hold, per channel, plus the ball's spare energy shared out
        held = (delta * both).pow(2).sum((2, 3))
        spare = (self.eps ** 2 - delta.flatten(1).pow(2).sum(1)).clamp_min(0) / c
        budget = (held + spare.view(m, 1)).sqrt()
        bump = _bump(s).to(dev, x.dtype).expand(m, s, s)
        bump = torch.where(rng.signs((m, 1, 1), x.dtype) > 0, bump, bump.transpose(1, 2))  # lobes side by side or stacked
        new = rng.signs((m, c, 1, 1), x.dtype) * _place(bump, top, left, h, w)
        old = delta * first
        new = new + old / old.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        new = new * (budget / new.pow(2).sum((2, 3)).sqrt().clamp_min(1e-12)).view(m, c, 1, 1)
        # back on the sphere: what the box clipped off the last point is spread over the whole perturbation
        return _on_sphere(torch.where(both, torch.zeros_like(delta), delta) + new, self.eps)
