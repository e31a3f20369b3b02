"""Gradient attacks: FGSM and PGD (L-inf and L2), with a choice of loss.

``loss="ce"`` is the naive attack that defensive distillation defeats (its gradient underflows to
zero when softmax saturates); ``margin`` (Carlini-Wagner) and ``dlr`` (Croce & Hein) work on the
logits and see through it.
"""

from __future__ import annotations

import torch
from torch import nn
from typing_extensions import override

from lit_defense.attacks.base import GradientAttack, LossFn, LossName, get_loss
from lit_defense.attacks.registry import register_attack
from lit_defense.errors import ConfigError
from lit_defense.rng import SampleRNG
from lit_defense.threat import Norm, per_sample
from lit_defense.width import any_lane, per_input, width_for


def loss_label(loss: LossName | LossFn) -> str:
    """How a loss appears in attack names: its name, or the function's name for a custom loss."""
    return loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")


@register_attack
class FGSM(GradientAttack):
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size eps.

    For ``norm="l2"`` it is the fast gradient method (one normalised-gradient step).
    """

    def __init__(self, eps: float = 0.1, norm: Norm = "linf", loss: LossName | LossFn = "ce",
                 eot_samples: int = 1, seed: int = 0, name: str | None = None) -> None:
        super().__init__(eps=eps, norm=norm, eot_samples=eot_samples, seed=seed, name=name)
        self.loss = loss
        self.loss_fn = get_loss(loss)

    @override
    def default_name(self) -> str:
        name = "fgsm" if self.loss == "ce" else f"fgsm_{loss_label(self.loss)}"
        return name if self.norm == "linf" else f"{name}_{self.norm}"

    @override
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: SampleRNG) -> torch.Tensor:
        _, _, grad = self.loss_and_grad(model, x, y, self.loss_fn)
        return x + self.eps * self.threat.steepest(grad)


@register_attack
class PGD(GradientAttack):
    """Projected gradient descent (Madry et al. 2018), L-inf or L2.

    Args:
        steps: gradient steps per restart.
        step_size: absolute step size; ``None`` uses ``rel_step_size * eps / steps``
            (2.5 * eps / steps, Madry et al.'s choice, by default).
        loss: ``ce`` (naive), ``margin`` or ``dlr`` (logit losses, see module doc), or a
            function ``(logits, y) -> per-sample loss`` (TRADES' KL term).
        random_start: start from a random point of the ball (restarts after the first always do).
        restarts: independent runs; each later run attacks only the points not yet fooled.
        early_stop_every: every this many steps, drop the points already fooled from the batch
            (they keep the adversarial point found). The steps in between run without any host
            sync; ``0`` disables it. Every step by default: fooled inputs leave the batch at once,
            which saves passes and fools the same inputs (``benchmarks/attack_speed.py``).
        keep_first_adversarial: return the first misclassified iterate (evaluation: no adversarial
            point found is lost). ``False`` returns the last iterate, the maximum of the loss, as
            adversarial training wants (and disables early stopping).
        eot_samples: gradients averaged over this many draws (``EOT`` sets it, with the last
            iterate: see ``for_eot``).

    Returns, per sample, the first misclassified iterate met along the path (so no adversarial
    point found is lost), else the last iterate.
    """

    def __init__(self, eps: float = 0.1, norm: Norm = "linf", steps: int = 20, step_size: float | None = None,
                 rel_step_size: float = 2.5, loss: LossName | LossFn = "ce", random_start: bool = True,
                 restarts: int = 1, early_stop_every: int = 1, keep_first_adversarial: bool = True,
                 eot_samples: int = 1, seed: int = 0, name: str | None = None) -> None:
        super().__init__(eps=eps, norm=norm, eot_samples=eot_samples, seed=seed, name=name)
        if steps < 1 or restarts < 1:
            raise ConfigError(f"PGD needs steps >= 1 and restarts >= 1, got steps={steps}, restarts={restarts}.")
        if step_size is not None and step_size <= 0:
            raise ConfigError(f"step_size must be > 0, got {step_size}.")
        if early_stop_every < 0:
            raise ConfigError(f"early_stop_every must be >= 0, got {early_stop_every}.")
        self.steps = steps
        self.step_size = step_size
        self.rel_step_size = rel_step_size
        self.loss = loss
        self.loss_fn = get_loss(loss)
        self.random_start = random_start
        self.restarts = restarts
        self.early_stop_every = early_stop_every if keep_first_adversarial else 0
        self.keep_first_adversarial = keep_first_adversarial

    @override
    def default_name(self) -> str:
        return f"pgd_{loss_label(self.loss)}" + ("" if self.norm == "linf" else f"_{self.norm}")

    def for_eot(self, samples: int) -> PGD:
        """EOT gradients, every step run and the last iterate returned.

        Against a randomized model, "fooled by the mean of K draws" sits on the boundary and is not
        "fooled".
        """
        return self.replace(eot_samples=samples, keep_first_adversarial=False, early_stop_every=0)

    @property
    def alpha(self) -> float:
        """The absolute step size."""
        return self.step_size if self.step_size is not None else self.rel_step_size * self.eps / self.steps

    @override
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: SampleRNG) -> torch.Tensor:
        out = x.clone()
        n = x.shape[0]
        fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        # the restarts as lanes side by side, as many as one call carries (``lit_defense.width``)
        for group in width_for(x.device).groups(n, x[0].numel(), self.restarts):
            idx = torch.arange(n, device=x.device) if group.start == 0 else (~fooled).nonzero().squeeze(1)
            m, k = idx.numel(), len(group)
            if m == 0:
                break
            rows = torch.arange(m, device=x.device).repeat(k)
            start = torch.tensor([self.random_start or r > 0 for r in group], device=x.device).repeat_interleave(m)
            adv, hit = (per_input(v, k) for v in self._run(model, x[idx][rows], y[idx][rows],
                                                           generator[idx].lanes(group), start, rows if k > 1 else None))
            # a later restart replaces the earlier result only where it fools the model: the first
            # lane that fooled an input, else the group's first lane (the first restart's point)
            hit_any = hit.any(0)
            lane = torch.where(hit_any, hit.float().argmax(0), torch.zeros_like(rows[:m]))
            adv = adv[lane, torch.arange(m, device=x.device)]
            out[idx] = adv if group.start == 0 else torch.where(per_sample(hit_any, adv), adv, out[idx])
            fooled[idx] = fooled[idx] | hit_any
        return out

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: SampleRNG,
             start: torch.Tensor, group: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One run per row from a random point (``start``) or the input: ``(points, fooled)``.

        ``group`` (restarts run as lanes side by side): each row's input; a row stops early when
        any row of its input is fooled.
        """
        n = x.shape[0]
        inputs = int(group.max()) + 1 if group is not None and n else 0
        out = torch.empty_like(x)
        fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        act = torch.arange(n, device=x.device)  # samples still attacked
        xa = torch.where(per_sample(start, x), self.threat.random_point(x, generator), x) if bool(start.any()) \
            else x.clone()
        xo, ya = x, y
        alpha = self.alpha
        zero = torch.zeros(n, dtype=torch.bool, device=x.device)  # last step's gradient exactly zero
        for step in range(self.steps):
            if self.early_stop_every and step > 0 and step % self.early_stop_every == 0:
                # fooled inputs are done; so is one whose gradient was exactly zero, since that never
                # moves the point again (a deterministic model: randomized ones are attacked through
                # EOT, which never stops early; a saturated softmax does this to the CE): it stays at
                # its last iterate
                done = fooled[act] if group is None else any_lane(fooled[act], group[act], inputs)[group[act]]
                keep = ~done & ~zero
                leaving = ~keep & ~fooled[act]  # stuck, or a lane whose input another lane fooled
                out[act[leaving]] = xa[leaving]
                act, xa, xo, ya = act[keep], xa[keep], xo[keep], ya[keep]
                if act.numel() == 0:
                    return out, fooled
            logits, _, grad = self.loss_and_grad(model, xa, ya, self.loss_fn)
            was = fooled[act]
            newly = (logits.argmax(1) != ya) & ~was
            out[act] = torch.where(per_sample(newly, xa), xa, out[act])
            fooled[act] = was | newly
            xa = self.threat.project(xa + alpha * self.threat.steepest(grad), xo)
            if self.early_stop_every:  # only read at the early-stop points
                zero = (grad.flatten(1) == 0).all(1)
        with torch.no_grad():
            final_adv = model(xa).argmax(1) != ya
        was = fooled[act]
        out[act] = torch.where(per_sample(was, xa), out[act], xa) if self.keep_first_adversarial else xa
        fooled[act] = was | final_adv
        return out, fooled
