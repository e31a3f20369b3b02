"""The attack contract and what every attack shares (after foolbox 3's ``attacks/base.py``).

An attack is a small class, constructible from YAML (``class_path``/``init_args``), called as
``attack(model, x, y) -> x_adv`` on [0, 1] pixels. Every attack:
- runs on whatever device ``x`` is on, with gradients enabled even inside ``torch.no_grad`` or
  ``torch.inference_mode`` (it clones its inputs into normal tensors);
- keeps the model's train/eval state (it never calls ``.train()``/``.eval()``);
- takes gradients with ``torch.autograd.grad`` w.r.t. the input only, so parameter ``.grad`` and
  DDP hooks are untouched;
- never syncs with the host inside its step loop (no ``.item()``, no Python branch on a tensor);
- draws its randomness per sample from a ``lit_defense.rng.SampleRNG`` keyed by ``seed`` and the
  sample's id, so batching and sharding do not change it;
- returns a point inside its threat model and inside [0, 1].

Two kinds: a ``FixedBudgetAttack`` looks for an adversarial point inside one budget ``eps``; a
``MinNormAttack`` looks for each input's *smallest* adversarial perturbation, so one run answers
every budget of a grid. Either answers a grid through ``attack.attack_grid(model, x, y, eps, ids)
-> GridResult``: the base runs once per budget, a minimum-norm attack once for all
(``answers_grid``), and every wrapper (BPDA, EOT, Transfer) passes the call and the flag through, so
wrapping never hides an attack's kind (after foolbox 3's ``MinimizationAttack`` answering a list of
epsilons). Everything that shapes an attack (loss, EOT samples, which iterate it
returns) is a constructor argument: ``attack.replace(steps=40)`` is a copy with other arguments,
and wrappers reach their inner attack only through such copies (``for_eot``), never by setting
attributes from outside. The norm-specific operations (projection, random start, steepest step)
live on ``ThreatModel``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from lit_defense.errors import ConfigError
from lit_defense.init_args import RecordsInitArgs
from lit_defense.rng import SampleRNG
from lit_defense.side_by_side import value_and_grad
from lit_defense.threat import Norm, ThreatModel, per_sample

LossName = Literal["ce", "margin", "dlr"]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
A = TypeVar("A", bound="Attack")


def other_max(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Largest logit among the wrong classes."""
    masked = logits.masked_fill(F.one_hot(y, logits.shape[-1]).bool(), float("-inf"))
    return masked.amax(-1)


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner logit margin ``max_{j != y} z_j - z_y`` per sample (> 0: misclassified).

    Works on logits, so it is invariant to the softmax saturation that zeroes the cross-entropy
    gradient of a distilled model.
    """
    logits = logits.float()
    return other_max(logits, y) - logits.gather(1, y[:, None]).squeeze(1)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Croce & Hein's difference-of-logits ratio (untargeted), scale- and shift-invariant."""
    logits = logits.float()
    top = logits.topk(3, dim=-1).values
    return margin_loss(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy (the naive loss: its gradient vanishes when softmax saturates)."""
    return F.cross_entropy(logits.float(), y, reduction="none")


def targeted_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Minus the cross-entropy of the target class: maximising it pulls towards ``target``."""
    return -ce_loss(logits, target)


def targeted_margin_loss(logits: torch.Tensor, target: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_target - z_y``: > 0 means the target beats the true class (so the input is misclassified)."""
    logits = logits.float()
    return logits.gather(1, target[:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)


def targeted_dlr_loss(logits: torch.Tensor, target: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Croce & Hein's targeted DLR: ``(z_t - z_y) / (z_pi1 - (z_pi3 + z_pi4) / 2)``."""
    logits = logits.float()
    top = logits.sort(dim=-1, descending=True).values
    scale = top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12
    return targeted_margin_loss(logits, target, y) / scale


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "margin": margin_loss, "dlr": dlr_loss}


def get_loss(name: str | LossFn) -> LossFn:
    """The loss function a name (``ce``, ``margin``, ``dlr``) stands for; a callable is itself."""
    if callable(name):
        return name
    if name not in LOSSES:
        raise ConfigError(f"unknown attack loss {name!r}; choose one of: {', '.join(LOSSES)}.")
    return LOSSES[name]


def _check_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(model, nn.Module) and not callable(model):
        raise ConfigError(f"attack target must be an nn.Module mapping images to logits, got {type(model).__name__}.")
    if x.dim() != 4 or not x.is_floating_point():
        raise ConfigError(f"attacks take float images (N, C, H, W) in [0, 1], got {x.dtype} {tuple(x.shape)}.")
    if y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
        raise ConfigError(f"labels must be integer class indices of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}.")


@dataclass(frozen=True)
class GridResult:
    """What one attack found on a batch for every budget of a grid.

    Attributes:
        points: per budget, the adversarial inputs the attack returns at that budget (inside it).
        fooled: per budget, per sample: the point is misclassified by the attacked model and
            inside the budget (``fooled_by``).
        norms: per sample, the smallest adversarial perturbation found (``inf``: none; 0: already
            misclassified) when the attack minimises norms against this model, else ``None``.
        margins: per budget, per sample: the true logit minus the largest other at the point
            (> 0: still classified correctly), from the same forward pass that judged it.
    """

    points: list[torch.Tensor]
    fooled: list[torch.Tensor]
    norms: torch.Tensor | None = None
    margins: list[torch.Tensor] | None = None

    @classmethod
    def judged(cls, model: nn.Module, norm: Norm, eps: Sequence[float], points: list[torch.Tensor],
               x: torch.Tensor, y: torch.Tensor, norms: torch.Tensor | None = None) -> GridResult:
        """The result for ``points`` (one per budget of ``eps``), each judged on ``model`` as ``fooled_by`` does."""
        judged = [_judge(model, ThreatModel(norm, e), p, x, y) for e, p in zip(eps, points, strict=True)]
        return cls(points, [f for f, _ in judged], norms, [m for _, m in judged])


def fooled_by(model: nn.Module, threat: ThreatModel, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor
              ) -> torch.Tensor:
    """Per sample: is ``x_adv`` misclassified by ``model`` *and* inside ``threat`` around ``x``?

    An output outside the threat model is a failed attack, not a success.
    """
    return _judge(model, threat, x_adv, x, y)[0]


def _judge(model: nn.Module, threat: ThreatModel, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``fooled_by`` and the margin (true logit minus the largest other) at ``x_adv``, one forward pass."""
    with torch.inference_mode(False), torch.no_grad():
        logits = model(x_adv)
        return (logits.argmax(1) != y) & threat.contains(x_adv, x), -margin_loss(logits, y)


class Attack(RecordsInitArgs, abc.ABC):
    """Abstract base of every attack: ``attack(model, x, y) -> x_adv`` (see module doc).

    Subclasses implement ``perturb``. The constructor's arguments are recorded, so ``replace``
    and ``with_eps`` build a copy through the constructor (its checks included).

    Args:
        eps: budget of the threat model.
        norm: ``linf`` or ``l2`` (``l0`` for JSMA).
        seed: seed of the attack's per-sample random numbers (random starts, random search).
        name: the name in metrics (``adv/<name>/eps=<eps>/acc``); a default derives from the
            attack and its loss.
    """

    norms: tuple[str, ...] = ("linf", "l2")
    uses_gradients = True
    #: one run answers every budget of a grid (``attack_grid`` is not a loop over ``with_eps``)
    answers_grid = False
    #: the attack changes the model it is given (BPDA hooks its layers, EOT draws it several times),
    #: so its calls cannot share a model call with other attacks' (``side_by_side_ok``)
    wraps_model = False

    def __init__(self, eps: float = 0.1, norm: Norm = "linf", seed: int = 0, name: str | None = None) -> None:
        if norm not in self.norms:
            raise ConfigError(
                f"{type(self).__name__} supports norm {' or '.join(self.norms)}, not {norm!r}."
            )
        self.threat = ThreatModel(norm, eps)
        self.seed = seed
        self._name = name

    # ------------------------------------------------------------------------------- identity
    @property
    def eps(self) -> float:
        """The budget of the threat model."""
        return self.threat.eps

    @property
    def norm(self) -> str:
        """The norm of the threat model."""
        return self.threat.norm

    @property
    def name(self) -> str:
        """The attack's name in metrics."""
        return self._name or self.default_name()

    def default_name(self) -> str:
        """The name used when none is given."""
        return type(self).__name__.lower()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, norm={self.norm!r}, eps={self.eps})"

    def replace(self: A, **changes: Any) -> A:
        """A copy of this attack built with other constructor arguments (``attack.replace(steps=40)``)."""
        unknown = sorted(set(changes) - set(self._init_args))
        if unknown:
            raise ConfigError(f"{type(self).__name__} takes no argument {unknown}; it takes {sorted(self._init_args)}.")
        return type(self)(**{**self._init_args, **changes})

    def with_eps(self: A, eps: float) -> A:
        """A copy of this attack with budget ``eps`` (same norm, seed and settings)."""
        return self.replace(eps=eps)

    def for_eot(self, samples: int) -> Attack:
        """This attack as Expectation over Transformation wants it: ``samples`` draws per gradient.

        The hook ``EOT`` calls; attacks that take no gradient cannot average one and refuse.
        """
        raise ConfigError(f"EOT averages gradients; {type(self).__name__} takes none. Wrap a gradient attack.")

    # -------------------------------------------------------------------------------- calling
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 ids: torch.Tensor | None = None) -> torch.Tensor:
        """Attack ``model`` at ``(x, y)``; returns adversarial inputs inside the threat model.

        ``ids`` (one integer per sample, default ``0..n-1``) key each sample's random numbers
        (``lit_defense.rng``): a sample gets the same noise whatever batch or process it is in.
        """
        _check_inputs(model, x, y)
        with torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone()
            y = y.detach().clone()
            if self.eps == 0:
                return x
            x_adv = self.perturb(model, x, y, SampleRNG.for_batch(self.seed, x.shape[0], x.device, ids))
            return self.threat.project(x_adv.detach(), x)

    def attack_grid(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Sequence[float],
                    ids: torch.Tensor | None = None) -> GridResult:
        """The attack at every budget of ``eps`` on ``(x, y)``: one ``with_eps`` copy per budget.

        Attacks that answer a whole grid in one run (``answers_grid``) override it.
        """
        return GridResult.judged(model, self.norm, eps, [self.with_eps(e)(model, x, y, ids) for e in eps], x, y)

    @abc.abstractmethod
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: SampleRNG) -> torch.Tensor:
        """The adversarial inputs for ``(x, y)`` (cloned, gradient-enabled; projected afterwards).

        ``generator`` draws each sample's random numbers (``lit_defense.rng.SampleRNG``).
        """


class FixedBudgetAttack(Attack, abc.ABC):
    """An attack that looks for an adversarial point inside one budget ``eps``."""


class GradientAttack(FixedBudgetAttack, abc.ABC):
    """A fixed-budget attack driven by input gradients of a loss.

    Args:
        eot_samples: forward/backward passes averaged per gradient (Expectation over
            Transformation, for randomized models; ``EOT`` sets it through ``for_eot``).
    """

    def __init__(self, eps: float = 0.1, norm: Norm = "linf", eot_samples: int = 1, seed: int = 0,
                 name: str | None = None) -> None:
        super().__init__(eps=eps, norm=norm, seed=seed, name=name)
        if eot_samples < 1:
            raise ConfigError(f"eot_samples must be >= 1, got {eot_samples}.")
        self.eot_samples = eot_samples

    @override
    def for_eot(self, samples: int) -> GradientAttack:
        return self.replace(eot_samples=samples)

    def loss_and_grad(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits at ``x``, the per-sample loss and its gradient w.r.t. ``x``.

        With ``eot_samples = K > 1`` the three are means over K forward/backward passes
        (Expectation over Transformation).
        """
        grad = torch.zeros_like(x)
        logits_sum = loss_sum = None
        for _ in range(self.eot_samples):
            logits, loss, g = value_and_grad(model, x, lambda out: loss_fn(out, y))
            grad += g
            logits_sum = logits if logits_sum is None else logits_sum + logits
            loss_sum = loss if loss_sum is None else loss_sum + loss
        if self.eot_samples > 1:
            grad /= self.eot_samples
            logits_sum = logits_sum / self.eot_samples
            loss_sum = loss_sum / self.eot_samples
        return logits_sum, loss_sum, grad


class MinNormAttack(Attack, abc.ABC):
    """An attack that looks for each input's smallest adversarial perturbation.

    ``minimize`` returns the adversarial points and their norms (``inf`` where none was found);
    called with a budget (``attack(model, x, y)``) it returns the point where its norm is within
    ``eps``, else the clean input. ``eps`` only matters for that call. ``attack_grid`` runs it once
    for a whole grid of budgets.
    """

    answers_grid = True

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: SampleRNG) -> torch.Tensor:
        """The minimal adversarial point where it lies within ``eps``, else ``x``."""
        x_adv, norms = self.minimize(model, x, y, generator)
        inside = self.threat.within(norms)
        return torch.where(per_sample(inside, x), x_adv, x)

    @abc.abstractmethod
    def minimize(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 generator: SampleRNG) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_adv, norms)``: each input's smallest adversarial point found and its norm."""

    def min_norms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Public entry of ``minimize`` under the attack contract.

        ``(x_adv, norms)``; inputs the model already misclassifies get norm 0.
        """
        _check_inputs(model, x, y)
        with torch.inference_mode(False), torch.enable_grad():
            x, y = x.detach().clone(), y.detach().clone()
            x_adv, norms = self.minimize(model, x, y, SampleRNG.for_batch(self.seed, x.shape[0], x.device, ids))
            with torch.no_grad():
                wrong = model(x).argmax(1) != y
            x_adv = torch.where(per_sample(wrong, x), x, x_adv.detach().clamp(0, 1))
            return x_adv, torch.where(wrong, torch.zeros_like(norms), norms)

    @override
    def attack_grid(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Sequence[float],
                    ids: torch.Tensor | None = None) -> GridResult:
        """One minimisation answers every budget: at ``e``, the point found where its norm is within ``e``."""
        found, norms = self.min_norms(model, x, y, ids)
        points = [torch.where(per_sample(ThreatModel(self.norm, e).within(norms), x), found, x) for e in eps]
        return GridResult.judged(model, self.norm, eps, points, x, y, norms)

