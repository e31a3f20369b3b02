"""The gradient-masking checklist on deliberately masked toy models and on honest ones."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import ScaledLogits
from torch import nn
from toy_models import DecisionOnly

from lit_defense.attacks import PGD
from lit_defense.audit import AttackSuite, ChecklistAttacks, audit_model
from lit_defense.diagnostics import (
    MaskingThresholds,
    check_adaptive_vs_naive,
    check_gradient_vs_finite_differences,
    check_inference_time_optimisation,
    check_logit_saturation,
    check_monotone,
    check_one_step_vs_iterative,
    check_probability_outputs,
    check_randomized_outputs,
    check_silent_success,
    check_unbounded,
    check_zero_gradients,
    model_checks,
    verdict,
)
from lit_defense.evaluation import robustness_counts
from lit_defense.results import eps_key


# ------------------------------------------------------------------------- masked toy models
class Quantized(nn.Module):
    """Undeclared non-differentiable preprocessing: rounds pixels to 4 bits (zero gradient)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 15) / 15)


class Noisy(nn.Module):
    """Stochastic input: Gaussian noise on every forward pass."""

    def __init__(self, model, sigma=0.1):
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x):
        return self.model((x + self.sigma * torch.randn_like(x)).clamp(0, 1))


class _FakeBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return -grad.flip(-1)  # plausible-looking, wrong


class FakeGradient(nn.Module):
    """Forward identical to the honest model; its backward pass lies."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(_FakeBackward.apply(x))


class InnerOptimisation(nn.Module):
    """The forward pass runs autograd itself (one 'purification' step)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        with torch.enable_grad():
            xi = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.model(xi).logsumexp(1).sum(), xi)
        return self.model((x - 0.01 * g.sign()).clamp(0, 1))


class Probabilities(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).softmax(1)


SMALL = AttackSuite(steps=10, eot_samples=4, square_queries=150, random_samples=10, apgd_steps=10, apgd_targets=2,
                    min_norm_steps=10, rays_queries=100)


def by_name(checks):
    return {c.name: c for c in checks}


def test_honest_model_passes_every_model_check(trained):
    model, x, y = trained
    checks = by_name(model_checks(model, x, y))
    for name, check in checks.items():
        assert check.passed, (name, check.summary, check.evidence)
        assert check.summary and isinstance(check.evidence, dict) and check.evidence
    assert checks["gradient_mismatch"].value > 0.9
    assert checks["zero_gradients"].evidence["ce"]["zero"] == 0.0
    assert not verdict(list(checks.values())).suspected


@pytest.mark.parametrize("scale", [1e3, 1e4])
def test_scaled_logits_are_saturated_and_have_zero_ce_gradients(trained, scale):
    model, x, y = trained
    scaled = ScaledLogits(model, scale)
    sat = check_logit_saturation(scaled(x).detach())
    zero = check_zero_gradients(scaled, x, y)
    assert not sat.passed and sat.value > 0.5
    assert not zero.passed
    # the CE gradient vanishes, the margin gradient does not: both are in the evidence
    assert zero.evidence["ce"]["vanishing"] > 0.5
    assert zero.evidence["margin"]["vanishing"] == 0.0
    assert check_gradient_vs_finite_differences(scaled, x[:64], y[:64]).passed  # margin gradient is right


def test_tiny_logits_and_ties_give_finite_evidence(trained):
    model, x, y = trained
    tiny = ScaledLogits(model, 1e-6)
    checks = model_checks(tiny, x[:64], y[:64])
    ties = check_logit_saturation(torch.zeros(8, 10))
    text = json.dumps([c.to_dict() for c in [*checks, ties]], allow_nan=False)  # no NaN/inf anywhere
    assert "NaN" not in text and ties.passed


def test_undeclared_quantisation_has_zero_gradients(trained):
    model, x, y = trained
    checks = by_name(model_checks(Quantized(model), x, y))
    assert not checks["zero_gradients"].passed
    assert checks["zero_gradients"].evidence["margin"]["zero"] > 0.9
    assert not check_gradient_vs_finite_differences(Quantized(model), x[:64], y[:64], h=0.02).passed
    assert not _unbounded_check(Quantized(model), x[:64], y[:64]).passed
    assert _unbounded_check(model, x[:64], y[:64]).passed


def _unbounded_check(model, x, y):
    """The audit's unbounded attack as a unit, then the check as a function of its per-sample results."""
    plan = ChecklistAttacks.build(PGD(steps=10), PGD(steps=10, loss="margin"), x[0].numel())
    _, ex = robustness_counts(model, x, y, [plan.unbounded], [plan.unbounded.eps], cascade=False)
    fooled = ex["fooled"][plan.unbounded.name][eps_key(plan.unbounded.eps)]
    return check_unbounded(plan.unbounded.name, plan.unbounded.eps, fooled[ex["clean_correct"]])


def test_randomized_model_is_flagged_and_fd_check_holds_its_noise_fixed(trained):
    model, x, y = trained
    noisy = Noisy(model)
    check = check_randomized_outputs(noisy, x[:64])
    assert not check.passed and check.evidence["max_relative_logit_change"] > 1e-3
    assert check_randomized_outputs(model, x[:64]).passed
    # randomness is not shattering: with common random numbers the gradient is right
    assert check_gradient_vs_finite_differences(noisy, x[:64], y[:64]).passed
    assert torch.is_grad_enabled()


def test_fake_backward_disagrees_with_finite_differences(trained):
    model, x, y = trained
    check = check_gradient_vs_finite_differences(FakeGradient(model), x[:64], y[:64])
    assert not check.passed and check.value < 0.8
    assert check.evidence["pairs"] > 0


def test_inference_time_optimisation_is_detected_and_autograd_restored(trained):
    model, x, _ = trained
    grad_fn = torch.autograd.grad
    assert not check_inference_time_optimisation(InnerOptimisation(model), x).passed
    assert check_inference_time_optimisation(model, x).passed
    assert torch.autograd.grad is grad_fn  # the patch is undone


def test_probability_outputs(trained):
    model, x, _ = trained
    assert not check_probability_outputs(Probabilities(model)(x).detach()).passed
    assert check_probability_outputs(model(x).detach()).passed


def test_attack_comparison_checks_on_numbers():
    t = MaskingThresholds()
    assert not check_one_step_vs_iterative({0.1: 0.2}, {0.1: 0.6}, t).passed
    assert check_one_step_vs_iterative({0.1: 0.6}, {0.1: 0.55}, t).passed
    assert not check_adaptive_vs_naive({0.1: 0.8}, {"pgd_margin": {0.1: 0.05}}, t).passed
    ok = check_adaptive_vs_naive({0.1: 0.40}, {"pgd_margin": {0.1: 0.38}}, t)
    assert ok.passed and math.isclose(ok.value, 0.02)
    bad = check_monotone({"pgd_ce": {0.05: 0.3, 0.1: 0.5}}, clean_accuracy=0.9, thresholds=t)
    assert not bad.passed and bad.evidence["where"][0] == "pgd_ce"
    assert check_monotone({"pgd_ce": {0.05: 0.5, 0.1: 0.3}}, clean_accuracy=0.9, thresholds=t).passed


def test_silent_success_counts_points_a_last_iterate_attack_loses(trained):
    model, x, y = trained
    # a huge step makes PGD bounce: it meets adversarial points it then leaves
    plan = ChecklistAttacks.build(PGD(), PGD(eps=0.3, steps=10, step_size=0.3, loss="ce"), x[0].numel())
    _, ex = robustness_counts(model, x, y, [plan.first, plan.last], [0.3], cascade=False)
    check = check_silent_success(plan.probe.name, ex["fooled"][plan.first.name]["0.3"], ex["fooled"][plan.last.name]["0.3"])
    assert check.advisory
    ev = check.evidence
    assert ev["met_along_path"] >= ev["kept_at_last_iterate"] - 1e-9
    assert math.isclose(ev["lost"], check.value)


# --------------------------------------------------------------------------------- audit verdicts
@pytest.fixture(scope="module")
def honest_audit(trained):
    model, x, y = trained
    return audit_model(model, x, y, [0.05, 0.1, 0.2], name="honest", suite=SMALL, check_samples=128)


def test_audit_of_an_honest_model_is_not_suspected(honest_audit):
    a = honest_audit
    assert not a.gradient_masking.suspected, a.gradient_masking.explain()
    assert {"attack", "eps", "robust_accuracy"} <= set(a.results[0])
    names = {c.name for c in a.gradient_masking.checks}
    assert {"one_step_beats_iterative", "black_box_beats_white_box", "unbounded_attack_fails",
            "not_monotone_in_eps", "zero_gradients", "softmax_saturation", "probability_outputs",
            "randomized_outputs", "gradient_mismatch", "adaptive_beats_naive", "random_sampling_beats_attacks",
            "incomplete_optimisation", "silent_success", "inference_time_optimisation"} <= names
    worst = [a.worst_case[k] for k in sorted(a.worst_case, key=float)]
    assert worst == sorted(worst, reverse=True) and worst[0] <= a.clean_accuracy
    json.dumps(a.to_dict(), allow_nan=False)


@pytest.mark.parametrize(
    "wrap, expected",
    [
        (lambda m: ScaledLogits(m, 1e4), {"zero_gradients", "softmax_saturation", "adaptive_beats_naive"}),
        (Quantized, {"zero_gradients"}),
        (lambda m: Noisy(m, 0.1), {"randomized_outputs"}),
        (FakeGradient, {"gradient_mismatch"}),
        (InnerOptimisation, {"inference_time_optimisation"}),
    ],
    ids=["scaled_logits", "quantized", "noisy", "fake_backward", "inner_optimisation"],
)
def test_audit_flags_masked_models_and_never_reports_more_robustness(trained, honest_audit, wrap, expected):
    model, x, y = trained
    a = audit_model(wrap(model), x, y, [0.05, 0.1], name="masked", suite=SMALL, check_samples=128)
    assert a.gradient_masking.suspected, a.gradient_masking.explain()
    assert expected <= set(a.gradient_masking.triggered), a.gradient_masking.triggered
    if wrap in (FakeGradient,) or isinstance(wrap(model), ScaledLogits):
        # forward pass identical to the honest model: never more robust than it (small slack for
        # attacks that reach the same points along different paths)
        for key, value in a.worst_case.items():
            assert value <= honest_audit.worst_case[key] + 0.05, (key, value, honest_audit.worst_case[key])



def test_audit_of_a_decision_only_model_comes_close_to_the_honest_one(trained, honest_audit):
    """Square and random sampling follow a flat margin; the decision-based RayS in the escalated
    gradient-free stage walks the boundary: the worst case at eps 0.1 is within 5 points of the
    honest model's own."""
    model, x, y = trained
    suite = AttackSuite(steps=10, eot_samples=4, square_queries=150, random_samples=10, apgd_steps=10,
                        apgd_targets=2, min_norm_steps=10, rays_queries=200)
    a = audit_model(DecisionOnly(model), x, y, [0.1], name="decision_only", suite=suite, check_samples=128)
    assert a.gradient_masking.suspected and "zero_gradients" in a.gradient_masking.triggered
    assert "rays" in a.roles["black_box"]
    assert a.worst_case["0.1"] <= honest_audit.worst_case["0.1"] + 0.05, (a.worst_case, honest_audit.worst_case)
