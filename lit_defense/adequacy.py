"""A positive control for attacks: the binarization test.

Zimmermann, Brendel, Tramèr and Carlini, "Increasing Confidence in Adversarial Robustness
Evaluations", NeurIPS 2022.

A robust accuracy found by attacks is an upper bound; it is only worth something if the attacks
*can* succeed on this model. The test builds, around an input ``x`` the audit found robust at
``eps``, a task where an adversarial example surely exists, and asks the same attacks to find it:

1. the model's *feature extractor* is everything up to the input of its final linear layer
   (preprocessing, randomness and non-differentiable parts of a defence included): the input of
   the last ``nn.Linear`` that runs, or ``model.features(x)`` when the model defines that method;
   a model with neither gives its logits as features (said in the result's ``note``);
2. ``x`` and points sampled inside the ball of radius ``inner_ratio * eps`` are one class, points
   at distance ``eps`` (on the ball's surface) the other; a fresh linear
   readout on the features separates them (logistic regression);
3. the sample is *valid* when the readout separates its training points and the task is not
   trivial: fresh random points of the whole ball stay in ``x``'s class. Otherwise it is dropped
   and counted;
4. the attacks run against the *binarized model* (features -> readout) with label 0 at ``eps``
   (a randomized model is judged in expectation over draws, see ``binarization_test``):
   the test passes for ``x`` when one of them finds a point the readout puts in class 1, which the
   boundary points prove exists.

A rate well below 1 says the attacks miss adversarial examples that exist, so the worst case they
report overstates robustness. A rate of 1 does not prove the robust accuracy right: the readout is
new, so a defence that lives in the final layer (defensive distillation's large logits) is not
exercised, and the control says nothing about inputs outside the tested subset.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lit_defense.attacks import Attack
from lit_defense.errors import ConfigError
from lit_defense.rng import SampleRNG
from lit_defense.roles import AttackRoles
from lit_defense.stats import Estimate

_MAX_POINTS = 1 << 16  # points per input: they key the random numbers as id * _MAX_POINTS + point
_BOUNDARY_DRAWS = 32  # a randomized model's boundary point: this many times the draws of an inner point


@dataclass
class Readout:
    """Where a model's features are read.

    ``kind``: ``features`` (its method), ``linear`` (the input of its last ``nn.Linear`` that
    runs) or ``logits`` (neither exists; ``note`` says so).
    """

    kind: str
    layer: nn.Linear | None = None
    note: str = ""

    def __call__(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The features of ``x`` (one row per input), differentiable in ``x``."""
        if self.kind == "features":
            return model.features(x).flatten(1)  # type: ignore[operator]
        if self.kind == "logits":
            return model(x).flatten(1)
        seen: list[torch.Tensor] = []
        handle = self.layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))  # type: ignore[union-attr]
        try:
            model(x)
        finally:
            handle.remove()
        if not seen:
            raise ConfigError(f"the final linear layer of {type(model).__name__} did not run on this input; "
                              "give the model a features(x) method for the binarization test.")
        return seen[-1].flatten(1)


def find_readout(model: nn.Module, x: torch.Tensor) -> Readout:
    """The model's feature extractor (see module doc); ``x``: a few inputs to watch a forward pass on."""
    method = getattr(model, "features", None)
    if callable(method) and inspect.ismethod(method) and not isinstance(method, nn.Module):
        return Readout("features", note="features from the model's features(x) method")
    order: list[nn.Linear] = []
    handles = [m.register_forward_pre_hook(lambda mod, _args: order.append(mod))
               for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    if not order:
        return Readout("logits", note=f"{type(model).__name__} has no nn.Linear layer and no features(x) method: "
                                      "its logits serve as features (a weaker control)")
    layer = order[-1]
    name = next(n for n, m in model.named_modules() if m is layer)
    return Readout("linear", layer, note=f"features: the input of {name} (nn.Linear {layer.in_features} -> "
                                         f"{layer.out_features})")


class Binarized(nn.Module):
    """The binarized model: ``model``'s features, then a linear readout; class 1 is the boundary class.

    It holds ``model`` as a submodule, so BPDA finds the modules it routes around; its outputs are
    as random as ``model``'s, so EOT applies alike. Its train/eval state mirrors the model's.
    """

    def __init__(self, model: nn.Module, readout: Readout, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.readout = readout
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", bias.detach().clone())
        self.training = model.training

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The readout's score: > 0 is the boundary class."""
        return self.readout(self.model, x) @ self.weight + self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two logits, ``[-s/2, s/2]``."""
        s = self.score(x)
        return torch.stack([-s / 2, s / 2], 1)


def ball_points(x: torch.Tensor, eps: float, norm: str, rng: SampleRNG, boundary: bool) -> torch.Tensor:
    """``len(rng)`` points around one input ``x`` (C, H, W), clipped to [0, 1].

    Uniform in the ball of radius ``eps`` (``boundary=False``), or on its surface, at distance
    ``eps`` (a uniform point of the ball scaled until it reaches the surface, as the reference code
    samples it; not its corners, which a readout tells from inner points by their size alone).
    """
    shape = (len(rng), *x.shape)
    if norm == "linf":
        delta = (rng.rand(shape) * 2 - 1).to(x.device, x.dtype)
        if boundary:  # scaled until one pixel moves by eps: a random point of the ball's surface
            delta = delta / delta.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *[1] * x.dim())
        delta = delta * eps
    else:
        d = rng.randn(shape).to(x.device, x.dtype)
        d = d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * x.dim())
        radius = torch.ones(len(rng)) if boundary else rng.rand((len(rng),)) ** (1.0 / x.numel())
        delta = d * (eps * radius).to(x.device, x.dtype).view(-1, *[1] * x.dim())
    return (x.unsqueeze(0) + delta).clamp(0, 1)


def fit_readout(inner: torch.Tensor, boundary: torch.Tensor, steps: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear readout ``(w, b)``: score ``f @ w + b`` < 0 on ``inner`` features, > 0 on ``boundary`` ones.

    Logistic regression, classes weighted equally, on standardised features (folded back into
    ``w, b``), full-batch L-BFGS; the score is scaled so that the training scores span at most
    [-1, 1] (the reference code's "fixed" rescaling: no saturation for the attacks' losses).
    """
    feats = torch.cat([inner, boundary]).double()
    target = torch.cat([torch.zeros(len(inner)), torch.ones(len(boundary))]).double().to(feats.device)
    weight = torch.where(target > 0, 0.5 / len(boundary), 0.5 / len(inner))
    mean, scale = feats.mean(0), feats.std(0).clamp_min(1e-6)
    z = (feats - mean) / scale
    w = torch.zeros(z.shape[1], dtype=z.dtype, device=z.device, requires_grad=True)
    b = torch.zeros((), dtype=z.dtype, device=z.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (weight * nn.functional.binary_cross_entropy_with_logits(z @ w + b, target, reduction="none")).sum()
        loss = loss + 1e-6 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w_raw = (w.detach() / scale)
    b_raw = b.detach() - (mean * w_raw).sum()
    spread = (feats @ w_raw + b_raw).abs().max().clamp_min(1e-12)
    return (w_raw / spread).to(inner.dtype), (b_raw / spread).to(inner.dtype)


def fit_discriminant(inner: torch.Tensor, boundary: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The readout for a randomized model: ``(w, b)`` from expected features (means over draws).

    Logistic regression on noisy means fits the noise: a fresh set of draws puts the boundary
    points back in the clean class. The direction here is
    Fisher's discriminant with a ridge, ``w = (cov(inner) + lam I)^-1 (mean(boundary) - mean(inner))``;
    the threshold lies halfway between the lowest boundary score and the highest inner one, and
    the score is scaled as ``fit_readout`` scales it.
    """
    f_in, f_b = inner.double(), boundary.double()
    cov = torch.cov(f_in.T) if len(f_in) > 1 else torch.zeros(f_in.shape[1], f_in.shape[1], dtype=f_in.dtype)
    ridge = 1e-2 * cov.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    w = torch.linalg.solve(cov + ridge * eye, f_b.mean(0) - f_in.mean(0))
    s_in, s_b = f_in @ w, f_b @ w
    b = -(s_b.min() + s_in.max()) / 2
    spread = torch.cat([s_in + b, s_b + b]).abs().max().clamp_min(1e-12)
    return (w / spread).to(inner.dtype), (b / spread).to(inner.dtype)


def _expected(readout: Readout, model: nn.Module, pts: torch.Tensor, draws: int) -> torch.Tensor:
    """Features averaged over ``draws`` passes (a randomized model's expected features)."""
    with torch.no_grad():
        return torch.stack([readout(model, pts) for _ in range(draws)]).mean(0)


@dataclass
class AdequacyResult:
    """The binarization test on a set of inputs at one eps.

    Per tested input: ``valid`` (the task was built), ``passed`` (an attack solved it) and
    ``reason`` (``""``, ``not_separable``, ``trivial``); ``rate`` is passed over valid with its exact
    95% interval; ``note`` says where the features came from.
    """

    eps: float
    ids: list[int]
    valid: list[bool]
    passed: list[bool]
    reason: list[str]
    features: str = ""
    note: str = ""
    by: list[str] = field(default_factory=list)  # the attack that solved each input ("" if none)

    @property
    def estimate(self) -> Estimate:
        """Passed among valid samples, with its exact interval."""
        v = sum(self.valid)
        return Estimate(sum(p for p, ok in zip(self.passed, self.valid, strict=True) if ok), v)

    def to_dict(self) -> dict[str, Any]:
        """The report's ``adequacy`` entry."""
        est = self.estimate
        return {"test": "binarization", "eps": self.eps, "samples": len(self.ids), "valid": est.n, "passed": est.k,
                "rate": est.value if est.n else None, "ci": list(est.ci) if est.n else None,
                "dropped": {r: self.reason.count(r) for r in ("not_separable", "trivial") if r in self.reason},
                "features": self.features, "note": self.note}


@dataclass(frozen=True)
class BinarizationSettings:
    """How many points the binarization test draws per input, and its seed.

    Args:
        inner_points: random points inside the ball (radius ``inner_ratio`` x eps), the clean class.
        boundary_points: points on the ball's surface, the other class.
        inner_ratio: the inner points' radius as a fraction of eps.
        validation_points: fresh points inside and on the ball that must not solve the task.
        draws: a randomized model's passes per point (its features and scores are means).
        seed: the test's random numbers (with each input's id).
    """

    inner_points: int = 1000
    boundary_points: int = 1
    inner_ratio: float = 0.95
    validation_points: int = 100
    draws: int = 16
    seed: int = 0

    def check(self) -> None:
        """One clear error for counts the test cannot use."""
        if not (1 <= self.inner_points < _MAX_POINTS and 1 <= self.boundary_points < _MAX_POINTS
                and 0 <= self.validation_points < _MAX_POINTS and 0 < self.inner_ratio < 1):
            raise ConfigError(f"the binarization test needs 1 <= inner_points, boundary_points < {_MAX_POINTS}, "
                              f"0 <= validation_points < {_MAX_POINTS} and 0 < inner_ratio < 1.")


def binarization_test(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[Attack],
    eps: float,
    norm: str = "linf",
    ids: torch.Tensor | None = None,
    settings: BinarizationSettings | None = None,
    readout: Readout | None = None,
    on_input: Callable[[int, bool, bool, str], None] | None = None,
) -> AdequacyResult:
    """The binarization test (module doc) for each input of ``x`` (with labels ``y``, [0, 1] pixels).

    ``attacks``: the attacks to control, run as a cascade (each on what the earlier ones left);
    the audit's own suite for a model is ``suite_attacks(default_attacks(norm, suite, masked,
    randomized, num_classes=2))`` (``lit_defense.audit.suite``: BPDA when ``masked``, EOT when
    ``randomized``), which is what ``--suite.adequacy_samples`` runs. ``ids`` key each input's random
    numbers (default ``0..n-1``), so an input is tested the same in any batch or process.
    ``settings``: the points per input and the seed (``BinarizationSettings``).
    A randomized model (two passes on the same input differ) is judged in expectation: its readout
    is fitted on features averaged over ``draws`` passes (32 x as many for the boundary point) by
    ``fit_discriminant``; separation, triviality and the attacks' points are judged by the mean
    score of ``draws`` fresh passes (4 x as many for the boundary point). A randomized model's
    ``inner_points`` cost ``draws`` passes each: the audit gives it fewer.
    ``on_input(id, valid, passed, reason)`` is called after each input. The model is used as it is.
    """
    settings = settings or BinarizationSettings()
    if x.shape[0] != y.shape[0]:
        raise ConfigError(f"x and y disagree: {x.shape[0]} inputs, {y.shape[0]} labels.")
    if not (eps > 0 and math.isfinite(eps)):
        raise ConfigError(f"eps must be a positive number, got {eps}.")
    if norm not in ("linf", "l2"):
        raise ConfigError(f"norm must be 'linf' or 'l2', got {norm!r}.")
    settings.check()
    ids = torch.arange(x.shape[0]) if ids is None else ids.cpu()
    if x.shape[0] == 0:
        return AdequacyResult(eps, [], [], [], [], note="no input to test")
    readout = readout or find_readout(model, x[:1])
    if not attacks:
        raise ConfigError("give the attacks to control, e.g. suite_attacks(default_attacks('linf', AttackSuite(), "
                          "masked, randomized, num_classes=2)) for the audit's own suite.")
    res = AdequacyResult(eps, ids.tolist(), [], [], [], features=readout.kind, note=readout.note)
    with torch.no_grad():
        randomized = not torch.equal(model(x[:1]), model(x[:1]))
    test = _OneInput(model, attacks, eps, norm, readout, settings, randomized,
                     max(1, settings.draws) if randomized else 1)
    with torch.inference_mode(False):
        for i in range(x.shape[0]):
            sid = int(ids[i])
            valid, passed, reason, by = test(x[i], sid)
            res.valid.append(valid)
            res.passed.append(passed)
            res.reason.append(reason)
            res.by.append(by)
            if on_input is not None:
                on_input(sid, valid, passed, reason)
    return res


@dataclass
class _OneInput:
    """The binarization test of one input: build the task, check it is valid, run the attacks on it."""

    model: nn.Module
    attacks: Sequence[Attack]
    eps: float
    norm: str
    readout: Readout
    settings: BinarizationSettings
    randomized: bool
    k: int  # passes per point

    def points(self, xi: torch.Tensor, sid: int, count: int, radius: float, boundary: bool, stream: int
               ) -> torch.Tensor:
        """Points of the ball around ``xi``, per input and point on the test's own streams (any batch, process or device)."""
        rng = SampleRNG(self.settings.seed * 4 + stream + 7919, sid * _MAX_POINTS + torch.arange(count))
        return ball_points(xi, radius, self.norm, rng, boundary)

    def __call__(self, xi: torch.Tensor, sid: int) -> tuple[bool, bool, str, str]:
        """``(valid, passed, reason, attack that passed)`` for the input ``xi`` with id ``sid``."""
        s, model, readout, k, eps = self.settings, self.model, self.readout, self.k, self.eps
        inner = torch.cat([xi.unsqueeze(0), self.points(xi, sid, s.inner_points, s.inner_ratio * eps, False, 0)])
        bound = self.points(xi, sid, s.boundary_points, eps, True, 1)
        # the task is trivial when random points of the ball, inside or on its surface, solve it
        fresh = torch.cat([self.points(xi, sid, s.validation_points, eps, False, 2),
                           self.points(xi, sid, s.validation_points, eps, True, 3)]) if s.validation_points else inner[:0]
        if self.randomized:  # expected features: k draws per inner point, _BOUNDARY_DRAWS x k for the boundary
            w, b = fit_discriminant(_expected(readout, model, inner, k), _expected(readout, model, bound, k * _BOUNDARY_DRAWS))
        else:
            f_in, f_bd = _expected(readout, model, torch.cat([inner, bound]), 1).split([len(inner), len(bound)])
            w, b = fit_readout(f_in, f_bd)
        binarized = Binarized(model, readout, w, b)

        def score(pts: torch.Tensor, draws: int = k) -> torch.Tensor:
            with torch.no_grad():  # fresh draws: a randomized model must be fooled in expectation
                return torch.stack([binarized.score(pts) for _ in range(draws)]).mean(0)

        # the boundary point first (one point, more draws: it carries the proof that the example exists);
        # a deterministic model's training points are scored on the features it was fitted on
        if self.randomized:
            separated = bool((score(bound, k * 4) > 0).all()) and bool((score(inner) < 0).all())
        else:
            separated = bool((f_bd @ w + b > 0).all()) and bool((f_in @ w + b < 0).all())
        if not separated:
            return False, False, "not_separable", ""
        if len(fresh) and bool((score(fresh) >= 0).any()):
            return False, False, "trivial", ""
        alive, zero = torch.tensor([sid], device=xi.device), torch.zeros(1, dtype=torch.long, device=xi.device)
        for attack in self.attacks:
            found = attack.attack_grid(binarized, xi.unsqueeze(0), zero, [eps], alive)
            if bool((score(found.points[0]) > 0).all()):
                return True, True, "", attack.name
        return True, False, "", ""


def suite_attacks(roles: AttackRoles[Attack]) -> list[Attack]:
    """The attacks of an audit's roles that the control runs, in cascade order (refine needs norms: left out)."""
    return [roles.naive, *roles.adaptive, *roles.cascade, *roles.black_box]


__all__ = ["AdequacyResult", "BinarizationSettings", "Binarized", "Readout", "ball_points", "binarization_test", "find_readout",
           "fit_discriminant", "fit_readout", "suite_attacks"]
