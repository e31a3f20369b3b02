"""The attack contract and what every attack shares.

An attack is a small class, constructible from YAML (``class_path``/``init_args``), called as
``attack(model, x, y) -> x_adv`` on [0, 1] pixels. Every attack:
- runs on whatever device ``x`` is on, with gradients enabled even inside ``torch.no_grad`` or
  ``torch.inference_mode`` (it clones its inputs into normal tensors);
- keeps the model's train/eval state (it never calls ``.train()``/``.eval()``);
- takes gradients with ``torch.autograd.grad`` w.r.t. the input only, so parameter ``.grad`` and
  DDP hooks are untouched;
- never syncs with the host inside its step loop (no ``.item()``, no Python branch on a tensor);
- draws its randomness from a ``torch.Generator`` seeded by ``seed``;
- returns a point inside its threat model and inside [0, 1].
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lit_defense.errors import ConfigError
from lit_defense.threat import Norm, ThreatModel, per_sample

LossName = Literal["ce", "margin", "dlr"]


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
    return F.cross_entropy(logits.float(), y, reduction="none")


LOSSES = {"ce": ce_loss, "margin": margin_loss, "dlr": dlr_loss}


def get_loss(name: str):
    if name not in LOSSES:
        raise ConfigError(f"unknown attack loss {name!r}; choose one of: {', '.join(LOSSES)}.")
    return LOSSES[name]


def input_gradient(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``d loss / d x``, with zeros where the model gives none: a forward pass computed outside
    autograd (e.g. JPEG) or one that ignores ``x`` has no gradient, which attacks see as zero."""
    if loss.requires_grad:
        (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
        if grad is not None:
            return grad
    return torch.zeros_like(x)


def _check_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(model, nn.Module) and not callable(model):
        raise ConfigError(f"attack target must be an nn.Module mapping images to logits, got {type(model).__name__}.")
    if x.dim() != 4 or not x.is_floating_point():
        raise ConfigError(f"attacks take float images (N, C, H, W) in [0, 1], got {x.dtype} {tuple(x.shape)}.")
    if y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
        raise ConfigError(f"labels must be integer class indices of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}.")


class Attack:
    """Base class. Subclasses implement ``perturb(model, x, y, generator) -> x_adv``.

    Args:
        eps: budget of the threat model.
        norm: ``linf`` or ``l2`` (``l0`` for JSMA).
        seed: seed of the attack's ``torch.Generator`` (random starts, random search).
        name: the name in metrics (``adv/<name>/eps=<eps>/acc``); a default derives from the
            attack and its loss.
    """

    norms: tuple[str, ...] = ("linf", "l2")
    uses_gradients = True

    def __init__(self, eps: float = 0.1, norm: Norm = "linf", seed: int = 0, name: str | None = None):
        if norm not in self.norms:
            raise ConfigError(
                f"{type(self).__name__} supports norm {' or '.join(self.norms)}, not {norm!r}."
            )
        self.threat = ThreatModel(norm, eps)
        self.seed = seed
        self._name = name
        self.eot_samples = 1

    # ------------------------------------------------------------------------------- identity
    @property
    def eps(self) -> float:
        return self.threat.eps

    @property
    def norm(self) -> str:
        return self.threat.norm

    @property
    def name(self) -> str:
        return self._name or self.default_name()

    def default_name(self) -> str:
        return type(self).__name__.lower()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, norm={self.norm!r}, eps={self.eps})"

    def with_eps(self, eps: float) -> Attack:
        """A copy of this attack with budget ``eps`` (same norm, seed and settings)."""
        other = copy.copy(self)
        other.threat = ThreatModel(self.norm, eps)
        return other

    # -------------------------------------------------------------------------------- calling
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_inputs(model, x, y)
        with torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone()
            y = y.detach().clone()
            if self.eps == 0:
                return x
            generator = torch.Generator(device=x.device)
            generator.manual_seed(self.seed)
            x_adv = self.perturb(model, x, y, generator)
            return self.threat.project(x_adv.detach(), x)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------------------- gradients
    def loss_and_grad(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits at ``x`` and the gradient of ``sum(loss_fn(logits, y))`` w.r.t. ``x``.

        With ``eot_samples = K > 1`` (set by the ``EOT`` wrapper) the gradient is the mean over K
        forward/backward passes (Expectation over Transformation) and the logits are the mean
        logits.
        """
        grad = torch.zeros_like(x)
        logits_sum = None
        for _ in range(self.eot_samples):
            x_in = x.detach().requires_grad_(True)
            logits = model(x_in)
            grad += input_gradient(loss_fn(logits, y).sum(), x_in)
            logits_sum = logits.detach() if logits_sum is None else logits_sum + logits.detach()
        if self.eot_samples > 1:
            grad /= self.eot_samples
            logits_sum = logits_sum / self.eot_samples
        return logits_sum, grad


def random_start(x: torch.Tensor, threat: ThreatModel, generator: torch.Generator) -> torch.Tensor:
    """A uniform point of the L-inf ball, or a random direction at a random radius in the L2 ball."""
    if threat.norm == "linf":
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        return (x + threat.eps * noise).clamp(0, 1)
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    direction = direction / per_sample(direction.flatten(1).norm(dim=1).clamp_min(1e-12), x)
    radius = per_sample(torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype), x)
    return (x + threat.eps * radius * direction).clamp(0, 1)


def steepest_step(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Unit steepest-ascent direction: sign for L-inf, normalised gradient for L2."""
    if norm == "linf":
        return grad.sign()
    return grad / per_sample(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)
