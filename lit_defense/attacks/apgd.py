"""Auto-PGD (Croce & Hein 2020, Algorithm 1): PGD without a step size to tune.

The step size starts at ``2 * eps`` and is halved at checkpoints where the loss stopped rising
(fewer than ``rho`` of the steps since the last checkpoint raised it, or the step size and best
loss did not change since the last checkpoint); each halving restarts from the best point so far.
Steps move with momentum 0.75. Untargeted losses are ``ce``, ``dlr`` and ``margin``; with
``targets=k`` the attack runs once per target, the k most likely wrong classes at the clean input,
with the targeted loss (APGD-T: targeted DLR by default), each run only on the inputs no earlier
run fooled.

Per-sample early exit: at every checkpoint the inputs already misclassified leave the batch (one
host sync per checkpoint, none in the steps between). Under EOT (``for_eot``) nothing leaves the
batch and each input's highest-expected-loss point is returned.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from typing_extensions import override

from lit_defense.attacks.base import (
    GradientAttack,
    LossFn,
    LossName,
    get_loss,
    targeted_ce_loss,
    targeted_dlr_loss,
    targeted_margin_loss,
)
from lit_defense.attacks.registry import register_attack
from lit_defense.errors import ConfigError
from lit_defense.rng import SampleRNG
from lit_defense.side_by_side import value_and_grad
from lit_defense.threat import Norm, per_sample
from lit_defense.width import any_lane, per_input, width_for


def checkpoints(steps: int) -> list[int]:
    """The iterations at which APGD may halve its step size.

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, times
    ``steps``.
    """
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    marks = {math.ceil(round(q * steps, 6)) for q in p[1:]}  # round: 0.41 + 0.16 is not 0.57 in floats
    return sorted(m for m in marks if m < steps)


RANKINGS = ("logit", "linear", "mixed")


def interleave(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Per row, the two orders of the same classes taken in turn, each class at its first appearance."""
    n, k = first.shape
    both = torch.stack([first, second], dim=2).reshape(n, 2 * k)  # first[0], second[0], first[1], ...
    seen = torch.zeros(n, k, dtype=torch.bool, device=first.device)
    keep = torch.zeros_like(both, dtype=torch.bool)
    for j in range(2 * k):
        cls = both[:, j:j + 1]
        keep[:, j] = ~seen.gather(1, cls).squeeze(1)
        seen.scatter_(1, cls, True)
    return both[keep].view(n, k)


@register_attack
class APGD(GradientAttack):
    """Auto-PGD (see module doc), L-inf or L2.

    Args:
        steps: iterations per restart (and per target).
        loss: ``ce``, ``dlr`` or ``margin``; with ``targets > 0``, its targeted form (``ce``: minus
            the target's cross-entropy, ``dlr``: targeted DLR, ``margin``: ``z_t - z_y``).
        targets: 0 for the untargeted attack; ``k`` runs the targeted attack against each of the
            k most likely wrong classes in turn (APGD-T).
        restarts: random restarts (per target), each on the inputs not yet fooled.
        ranking: how APGD-T picks its targets. ``logit``: the most likely wrong classes at the
            clean input (AutoAttack). ``linear``: the classes whose decision boundary is nearest
            to first order, ``(z_y - z_t) / ||grad (z_y - z_t)||_*`` with the threat model's dual
            norm (MALT, Melamed et al. 2024): one backward pass per class at the clean input.
            ``mixed``: the two interleaved, each class once (linear 1st, logit 1st, linear 2nd,
            ...): the first four targets hold both rankings' first two.
        rho: a checkpoint halves the step size when fewer than this fraction of its steps raised
            the loss.
        momentum: weight of the new step against the last move (0.75 in the paper).
        keep_first_adversarial: return each input's first misclassified iterate and drop fooled
            inputs at checkpoints (evaluation); ``False`` returns the highest-loss point (EOT).
        eot_samples: gradients averaged over this many draws (set by ``EOT``).
    """

    def __init__(self, eps: float = 0.1, norm: Norm = "linf", steps: int = 100, loss: LossName = "ce",
                 targets: int = 0, restarts: int = 1, rho: float = 0.75, momentum: float = 0.75,
                 keep_first_adversarial: bool = True, ranking: str = "logit", eot_samples: int = 1,
                 seed: int = 0, name: str | None = None) -> None:
        super().__init__(eps=eps, norm=norm, eot_samples=eot_samples, seed=seed, name=name)
        if steps < 2 or restarts < 1 or targets < 0:
            raise ConfigError(f"APGD needs steps >= 2, restarts >= 1, targets >= 0; got {steps}, {restarts}, {targets}.")
        if not 0 < rho <= 1 or not 0 < momentum <= 1:
            raise ConfigError(f"APGD needs 0 < rho <= 1 and 0 < momentum <= 1, got {rho}, {momentum}.")
        get_loss(loss)
        if ranking not in RANKINGS:
            raise ConfigError(f"APGD's target ranking is one of {', '.join(RANKINGS)}; got {ranking!r}.")
        self.ranking = ranking
        self.steps = steps
        self.loss = loss
        self.targets = targets
        self.restarts = restarts
        self.rho = rho
        self.momentum = momentum
        self.keep_first_adversarial = keep_first_adversarial

    @override
    def default_name(self) -> str:
        base = f"apgd_{self.loss}" if not self.targets else \
            f"apgd_t{self.targets}_{self.loss}" + ("" if self.ranking == "logit" else f"_{self.ranking}")
        return base if self.norm == "linf" else f"{base}_{self.norm}"

    def for_eot(self, samples: int) -> APGD:
        """EOT gradients; no input leaves early and the highest expected loss is returned."""
        return self.replace(eot_samples=samples, keep_first_adversarial=False)

    # -------------------------------------------------------------------------------- driver
    @override
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: SampleRNG) -> torch.Tensor:
        out = x.clone()
        n = x.shape[0]
        fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        best_loss = torch.full((n,), -float("inf"), device=x.device)
        order = None
        if self.targets:
            order = self._target_order(model, x, y)
            n_classes = order.shape[1]
            if n_classes < 2 + (2 if self.loss == "dlr" else 0):
                raise ConfigError(f"targeted APGD with the {self.loss} loss needs more classes than {n_classes}.")
        runs = range(min(self.targets, order.shape[1] - 1)) if order is not None else [None]
        lanes = [(t, r) for t in runs for r in range(self.restarts)]  # every (target, restart): one lane each
        for group in width_for(x.device).groups(n, x[0].numel(), len(lanes)):
            idx = (~fooled).nonzero().squeeze(1) if self.keep_first_adversarial else torch.arange(n, device=x.device)
            if idx.numel() == 0:
                return out
            m, k = idx.numel(), len(group)
            yi = y[idx]
            loss_fn: LossFn = get_loss(self.loss)
            if order is not None:
                # per lane, its target: the (t+1)-th most likely class other than the true one
                others = order[idx][order[idx] != yi[:, None]].view(m, -1)
                loss_fn = _targeted(self.loss, torch.cat([others[:, lanes[g][0]] for g in group]))
            rows = torch.arange(m, device=x.device).repeat(k)
            adv, hit, loss = (per_input(v, k) for v in self._run(
                model, x[idx][rows], yi[rows], loss_fn, generator[idx].lanes(group), rows if k > 1 else None))
            pick = torch.arange(m, device=x.device)
            if self.keep_first_adversarial:  # the first lane that fooled an input, else the last lane's point
                hit_any = hit.any(0)
                lane = torch.where(hit_any, hit.float().argmax(0), torch.full_like(pick, k - 1))
                out[idx] = adv[lane, pick]
                fooled[idx] = hit_any
            else:  # EOT: keep each input's highest-loss point over targets and restarts
                top, lane = loss.max(0)
                better = top > best_loss[idx]
                out[idx] = torch.where(per_sample(better, x[idx]), adv[lane, pick], out[idx])
                best_loss[idx] = torch.where(better, top, best_loss[idx])
        return out

    def _target_order(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per input, the classes in the order APGD-T targets them (the true class among them, skipped)."""
        if self.ranking == "logit":
            with torch.no_grad():
                return model(x).sort(dim=1, descending=True).indices
        linear, logits = self._linear_order(model, x, y)
        if self.ranking == "linear":
            return linear
        # the true class last in both, as in the linear order
        logit = logits.scatter(1, y[:, None], -float("inf")).sort(dim=1, descending=True).indices
        return interleave(linear, logit)

    def _linear_order(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per input, the classes nearest their first-order decision boundary first, and the clean logits.

        The true class comes last; the logits (detached) are those the distances came from.
        """
        with torch.no_grad():
            logits = model(x).detach()
        m, classes = logits.shape
        distance = torch.empty(logits.shape, device=x.device)
        # every class's gap as one lane of a batch: one forward and one backward per group of classes
        for group in width_for(x.device).groups(m, x[0].numel(), classes):
            k = len(group)
            cls = torch.tensor(list(group), device=x.device).repeat_interleave(m)
            ys = y.repeat(k)
            _, gap, grad = value_and_grad(model, x.detach().repeat(k, *[1] * (x.dim() - 1)), lambda out, ys=ys, cls=cls: (
                out.gather(1, ys[:, None]) - out.gather(1, cls[:, None])).squeeze(1))
            norms = self.threat.dual_norm(grad).float().clamp_min(1e-12)
            distance[:, group.start:group.stop] = per_input(gap.detach().float() / norms, k).T
        distance.scatter_(1, y[:, None], float("inf"))
        return distance.argsort(dim=1), logits.detach()

    # ------------------------------------------------------------------------------ one run
    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, generator: SampleRNG,
             group: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One APGD run: ``(points, fooled, best loss)`` per row.

        ``group`` (rows run as lanes side by side): each row's input; a row leaves the batch at a
        checkpoint when any row of its input is fooled.
        """
        n = x.shape[0]
        inputs = int(group.max()) + 1 if group is not None and n else 0
        dev = x.device
        threat, keep_first = self.threat, self.keep_first_adversarial
        out = torch.empty_like(x)
        fooled_out = torch.zeros(n, dtype=torch.bool, device=dev)
        loss_out = torch.full((n,), -float("inf"), device=dev)

        act = torch.arange(n, device=dev)
        xo, ya = x, y
        xa = threat.random_point(x, generator, "surface" if self.norm == "l2" else "ball")
        logits, loss, grad = self.loss_and_grad(model, xa, ya, loss_fn)
        step = torch.full((n,), 2.0 * self.eps, device=dev)
        x_best, loss_best, g_best = xa.clone(), loss.clone(), grad.clone()
        fooled = logits.argmax(1) != ya
        x_adv = xa.clone()  # first misclassified point per input (else the last one)
        x_prev = xa.clone()
        # checkpoint bookkeeping
        increases = torch.zeros(n, device=dev)
        loss_at_check = loss_best.clone()
        reduced_at_check = torch.ones(n, dtype=torch.bool, device=dev)
        marks = checkpoints(self.steps)
        last_mark = 0

        def scatter_back() -> None:
            out[act] = torch.where(per_sample(fooled, xa), x_adv, x_best) if keep_first else x_best
            fooled_out[act] = fooled
            loss_out[act] = loss_best

        for k in range(self.steps - 1):
            # step with momentum from the current point, then the loss at the new point
            a = self.momentum if k > 0 else 1.0
            z = threat.project(xa + per_sample(step, xa) * threat.steepest(grad), xo)
            x_new = threat.project(xa + a * (z - xa) + (1 - a) * (xa - x_prev), xo)
            x_prev = xa
            xa = x_new
            prev_loss = loss
            logits, loss, grad = self.loss_and_grad(model, xa, ya, loss_fn)
            wrong = logits.argmax(1) != ya
            x_adv = torch.where(per_sample(wrong & ~fooled, xa), xa, x_adv)
            fooled = fooled | wrong
            increases += (loss > prev_loss).float()
            improved = loss > loss_best
            x_best = torch.where(per_sample(improved, xa), xa, x_best)
            g_best = torch.where(per_sample(improved, xa), grad, g_best)
            loss_best = torch.where(improved, loss, loss_best)

            if k + 1 in marks:
                span = k + 1 - last_mark
                oscillating = increases <= self.rho * span
                stalled = ~reduced_at_check & (loss_at_check >= loss_best)
                halve = oscillating | stalled
                reduced_at_check = halve
                loss_at_check = loss_best.clone()
                step = torch.where(halve, step / 2, step)
                # restart from the best point where the step size was halved
                xa = torch.where(per_sample(halve, xa), x_best, xa)
                grad = torch.where(per_sample(halve, xa), g_best, grad)
                x_prev = torch.where(per_sample(halve, xa), x_best, x_prev)
                loss = torch.where(halve, loss_best, loss)
                increases.zero_()
                last_mark = k + 1
                if keep_first:  # per-sample early exit: fooled inputs are done, and so are stuck ones
                    scatter_back()
                    done = fooled if group is None else any_lane(fooled, group[act], inputs)[group[act]]
                    keep = (~done & ~_stuck(grad, xa, x_prev, x_best)).nonzero().squeeze(1)
                    if keep.numel() == 0:
                        return out, fooled_out, loss_out
                    if keep.numel() < act.numel():
                        act, xo, ya = act[keep], xo[keep], ya[keep]
                        xa, x_prev, grad, loss, step = xa[keep], x_prev[keep], grad[keep], loss[keep], step[keep]
                        x_best, g_best, loss_best = x_best[keep], g_best[keep], loss_best[keep]
                        x_adv, fooled, increases = x_adv[keep], fooled[keep], increases[keep]
                        loss_at_check, reduced_at_check = loss_at_check[keep], reduced_at_check[keep]
                        loss_fn = _subset(loss_fn, keep)
        scatter_back()
        return out, fooled_out, loss_out


def _stuck(grad: torch.Tensor, xa: torch.Tensor, x_prev: torch.Tensor, x_best: torch.Tensor) -> torch.Tensor:
    """Inputs that can never move again: an exactly zero gradient, no momentum, at their best point.

    Their next step and every restart from the best point land where they are, so (on a
    deterministic model: randomized ones are attacked through EOT, which never exits early) the
    remaining steps would compute the same zero gradient. A saturated softmax (defensive
    distillation) gives exactly this for the cross-entropy.
    """
    flat = [t.flatten(1) for t in (grad, xa, x_prev, x_best)]
    return (flat[0] == 0).all(1) & (flat[1] == flat[2]).all(1) & (flat[1] == flat[3]).all(1)


class _TargetedLoss:
    """A targeted loss bound to its per-sample targets; ``subset`` follows the active batch."""

    def __init__(self, fn: Callable[..., torch.Tensor], target: torch.Tensor) -> None:
        self.fn, self.target = fn, target

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.fn is targeted_ce_loss:
            return self.fn(logits, self.target)
        return self.fn(logits, self.target, y)

    def subset(self, keep: torch.Tensor) -> _TargetedLoss:
        return _TargetedLoss(self.fn, self.target[keep])


def _targeted(loss: str, target: torch.Tensor) -> _TargetedLoss:
    fn = {"ce": targeted_ce_loss, "dlr": targeted_dlr_loss, "margin": targeted_margin_loss}[loss]
    return _TargetedLoss(fn, target)


def _subset(loss_fn: LossFn, keep: torch.Tensor) -> LossFn:
    return loss_fn.subset(keep) if isinstance(loss_fn, _TargetedLoss) else loss_fn
