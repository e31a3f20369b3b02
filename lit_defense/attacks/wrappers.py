"""BPDA and EOT (Athalye et al. 2018): wrappers that let any gradient attack see through masking.

- ``BPDA(attack)``: every submodule of the model that declares ``differentiable = False`` (or is
  named in ``modules``) runs its real forward pass, but the backward pass goes through its
  surrogate: ``module.bpda_surrogate(x)`` where the module defines one (e.g. the differentiable
  relaxation of thermometer encoding), else the identity. The model is not modified: forward
  hooks are added for the attack's duration and removed afterwards.
- ``EOT(attack, samples=K)``: each gradient is the mean over K forward/backward passes, the
  expectation over the model's randomness (random resizing, noise). The inner attack runs all its
  steps and returns its last iterate, the maximum of the expected loss: a point that K draws
  happen to misclassify sits on the decision boundary and a fresh draw classifies it correctly
  about half of the time, so stopping there (as a deterministic evaluation may) loses most of the
  attack.

They compose: ``EOT(BPDA(PGD(...)))``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from lit_defense.attacks.base import Attack, GridResult
from lit_defense.attacks.registry import register_attack
from lit_defense.errors import ConfigError
from lit_defense.rng import SampleRNG
from lit_defense.threat import ThreatModel


class _BPDAFunction(torch.autograd.Function):
    """Forward: the module's real output. Backward: the surrogate's vector-Jacobian product."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, out: torch.Tensor,  # noqa: ANN401 (autograd's context)
                surrogate: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        if ctx.surrogate is None:
            return grad_out, None, None
        with torch.enable_grad():
            xs = x.detach().requires_grad_(True)
            (grad_in,) = torch.autograd.grad(ctx.surrogate(xs), xs, grad_out)
        return grad_in, None, None


def masked_modules(model: nn.Module, names: list[str] | None = None) -> list[tuple[str, nn.Module]]:
    """The submodules BPDA replaces: those named, or those declaring ``differentiable = False``."""
    found = dict(model.named_modules())
    if names:
        missing = [n for n in names if n not in found]
        if missing:
            raise ConfigError(
                f"BPDA modules {missing} are not submodules of {type(model).__name__}; "
                f"available: {', '.join(n for n in found if n) or '(none)'}."
            )
        return [(n, found[n]) for n in names]
    return [(n, m) for n, m in found.items() if getattr(m, "differentiable", True) is False]


@contextlib.contextmanager
def bpda_hooks(model: nn.Module, names: list[str] | None = None) -> Iterator[None]:
    """Within the block, the model's masked submodules back-propagate through their surrogates."""
    handles = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        surrogate = getattr(module, "bpda_surrogate", None)
        if surrogate is None and output.shape != x.shape:
            raise ConfigError(
                f"BPDA's identity surrogate needs {type(module).__name__} to keep its input shape "
                f"({tuple(x.shape)} -> {tuple(output.shape)}); give the module a bpda_surrogate(x)."
            )
        if not x.requires_grad:
            return output
        return _BPDAFunction.apply(x, output.detach(), surrogate)

    try:
        for _, module in masked_modules(model, names):
            handles.append(module.register_forward_hook(hook))
        yield len(handles)
    finally:
        for h in handles:
            h.remove()


class _Wrapper(Attack):
    """An attack that delegates to ``attack`` and takes its threat model and its kind.

    ``answers_grid`` is the inner attack's: ``BPDA(FMN)`` answers a grid in one run, as ``FMN`` does.
    """

    wraps_model = True

    def __init__(self, attack: Attack, name: str | None = None) -> None:
        if not isinstance(attack, Attack):
            raise ConfigError(f"{type(self).__name__} wraps an Attack, got {type(attack).__name__}.")
        self.attack = attack
        self.seed = attack.seed
        self._name = name
        self.uses_gradients = attack.uses_gradients

    @property
    def threat(self) -> ThreatModel:
        """The inner attack's threat model."""
        return self.attack.threat

    @property
    def answers_grid(self) -> bool:  # type: ignore[override]
        """Whether the inner attack answers a grid of budgets in one run."""
        return self.attack.answers_grid

    def with_eps(self, eps: float) -> _Wrapper:
        return self.replace(attack=self.attack.with_eps(eps))

    def for_eot(self, samples: int) -> _Wrapper:
        return self.replace(attack=self.attack.for_eot(samples))

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: SampleRNG) -> torch.Tensor:
        return self(model, x, y, generator.ids)


@register_attack
class BPDA(_Wrapper):
    """Backward-pass differentiable approximation around ``attack`` (see module doc).

    Args:
        attack: the gradient attack to run (e.g. PGD).
        modules: dotted names of the non-differentiable submodules; default: every submodule
            with ``differentiable = False`` (all of lit-defense's input defenses declare it).
    """

    def __init__(self, attack: Attack, modules: list[str] | None = None, name: str | None = None) -> None:
        super().__init__(attack, name)
        self.modules = modules

    @override
    def default_name(self) -> str:
        return f"bpda_{self.attack.name}"

    @override
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 ids: torch.Tensor | None = None) -> torch.Tensor:
        with bpda_hooks(model, self.modules):
            return self.attack(model, x, y, ids)

    @override
    def attack_grid(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Sequence[float],
                    ids: torch.Tensor | None = None) -> GridResult:
        """The inner attack's answer for the grid, with the masked modules' backward replaced.

        The forward passes (and so ``fooled`` and the norms) are the model's own.
        """
        with bpda_hooks(model, self.modules):
            return self.attack.attack_grid(model, x, y, eps, ids)


@register_attack
class EOT(_Wrapper):
    """Expectation over Transformation around ``attack``: gradients averaged over ``samples`` draws.

    The inner attack runs as its ``for_eot(samples)`` copy says: a ``PGD`` or ``APGD`` then runs
    every step and returns its last (or highest-loss) iterate: against a randomized model, "fooled
    by the mean of K draws" is not "fooled", so the attack keeps climbing the expected loss
    (evidence: ``benchmarks/results/make_run_quick_randomized_expected.json``).
    """

    def __init__(self, attack: Attack, samples: int = 10, name: str | None = None) -> None:
        super().__init__(attack, name)
        if samples < 1:
            raise ConfigError(f"EOT samples must be >= 1, got {samples}.")
        self.samples = samples
        self._inner = attack.for_eot(samples)

    @override
    def default_name(self) -> str:
        return f"eot{self.samples}_{self.attack.name}"

    @override
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 ids: torch.Tensor | None = None) -> torch.Tensor:
        return self._inner(model, x, y, ids)

    @override
    def attack_grid(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Sequence[float],
                    ids: torch.Tensor | None = None) -> GridResult:
        """The inner attack's ``for_eot`` copy's answer for the grid."""
        return self._inner.attack_grid(model, x, y, eps, ids)
