"""The gradient-masking checklist on deliberately masked toy models and on honest ones."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from conftest import ScaledLogits, assert_not_significantly_more_robust
from torch import nn
from toy_models import DecisionOnly

from lit_defense.attacks import PGD
from lit_defense.audit import AttackSuite, audit_model
from lit_defense.diagnostics import (
    MaskingThresholds,
    check_adaptive_beats_naive,
    check_gradient_mismatch,
    check_inference_time_optimisation,
    check_not_monotone_in_eps,
    check_one_step_beats_iterative,
    check_probability_outputs,
    check_randomized_outputs,
    check_silent_success,
    check_softmax_saturation,
    check_unbounded_attack_fails,
    check_zero_gradients,
    model_checks,
    verdict,
)
from lit_defense.diagnostics.checklist import ChecklistAttacks
from lit_defense.evaluation import robustness_counts
from lit_defense.results import eps_key

# verdicts and claims of trained models: CI runs these again under another numeric path
pytestmark = pytest.mark.numeric_path


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
                    min_norm_steps=10, rays_queries=100, adequacy_samples=0)


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
    sat = check_softmax_saturation(scaled(x).detach())
    zero = check_zero_gradients(scaled, x, y)
    assert not sat.passed and sat.value > 0.5
    assert not zero.passed
    # the CE gradient vanishes, the margin gradient does not: both are in the evidence
    assert zero.evidence["ce"]["vanishing"] > 0.5
    assert zero.evidence["margin"]["vanishing"] == 0.0
    assert check_gradient_mismatch(scaled, x[:64], y[:64]).passed  # margin gradient is right


def test_tiny_logits_and_ties_give_finite_evidence(trained):
    model, x, y = trained
    tiny = ScaledLogits(model, 1e-6)
    checks = model_checks(tiny, x[:64], y[:64])
    ties = check_softmax_saturation(torch.zeros(64, 10))
    text = json.dumps([c.to_dict() for c in [*checks, ties]], allow_nan=False)  # no NaN/inf anywhere
    assert "NaN" not in text and ties.passed


def test_undeclared_quantisation_has_zero_gradients(trained):
    model, x, y = trained
    checks = by_name(model_checks(Quantized(model), x, y))
    assert not checks["zero_gradients"].passed
    assert checks["zero_gradients"].evidence["margin"]["zero"] > 0.9
    assert not check_gradient_mismatch(Quantized(model), x[:64], y[:64], h=0.02).passed
    assert not _unbounded_check(Quantized(model), x[:64], y[:64]).passed
    # all 128 inputs: the ~50 correct ones among the first 64 cannot tell 100% success from the 95%
    # threshold (the exact interval of 50 of 50 reaches down to 92.9%)
    assert _unbounded_check(model, x, y).passed


def _unbounded_check(model, x, y):
    """The audit's unbounded attack as a unit, then the check as a function of its per-sample results."""
    plan = ChecklistAttacks.build(PGD(steps=10), PGD(steps=10, loss="margin"), x[0].numel())
    _, ex = robustness_counts(model, x, y, [plan.unbounded], [plan.unbounded.eps], cascade=False)
    fooled = ex.fooled[plan.unbounded.name][eps_key(plan.unbounded.eps)]
    return check_unbounded_attack_fails(plan.unbounded.name, plan.unbounded.eps, fooled[ex.clean_correct])


def test_randomized_model_is_flagged_and_fd_check_holds_its_noise_fixed(trained):
    model, x, y = trained
    noisy = Noisy(model)
    check = check_randomized_outputs(noisy, x[:64])
    assert not check.passed and check.evidence["max_relative_logit_change"] > 1e-3
    assert check_randomized_outputs(model, x[:64]).passed
    # randomness is not shattering: with common random numbers the gradient is right
    assert check_gradient_mismatch(noisy, x[:64], y[:64]).passed
    assert torch.is_grad_enabled()


def test_fake_backward_disagrees_with_finite_differences(trained):
    model, x, y = trained
    check = check_gradient_mismatch(FakeGradient(model), x[:64], y[:64])
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


def _mask(n, k, offset=0):
    """A per-sample mask over n inputs with k consecutive True from ``offset``."""
    m = torch.zeros(n, dtype=torch.bool)
    m[offset:offset + k] = True
    return m


def test_attack_comparison_checks_on_per_sample_outcomes():
    t = MaskingThresholds()
    n = 400
    # FGSM leaves 80 robust, PGD 240 of the same inputs: significantly stronger one-step attack
    bad = check_one_step_beats_iterative({0.1: _mask(n, 80)}, {0.1: _mask(n, 240)}, t)
    assert bad.state == "fail" and bad.kind == "signature" and bad.evidence["discordant"] == [160, 0]
    assert bad.evidence["p_value"] < 1e-10 and bad.evidence["n"] == n
    assert check_one_step_beats_iterative({0.1: _mask(n, 240)}, {0.1: _mask(n, 220)}, t).state == "pass"
    big = check_adaptive_beats_naive({0.1: _mask(n, 320)}, {"pgd_margin": {0.1: _mask(n, 20)}}, t)
    assert big.state == "fail" and big.kind == "outcome"
    ok = check_adaptive_beats_naive({0.1: _mask(n, 160)}, {"pgd_margin": {0.1: _mask(n, 152)}}, t)
    assert ok.passed and math.isclose(ok.value, 0.02)
    rising = check_not_monotone_in_eps({"pgd_ce": {0.05: _mask(n, 120), 0.1: _mask(n, 200)}}, clean=_mask(n, 360), thresholds=t)
    assert rising.state == "fail" and rising.evidence["where"][0] == "pgd_ce"
    assert check_not_monotone_in_eps({"pgd_ce": {0.05: _mask(n, 200), 0.1: _mask(n, 120)}}, clean=_mask(n, 360),
                          thresholds=t).passed


def test_a_gap_near_its_threshold_is_inconclusive_and_says_how_many_inputs_decide_it():
    """12.5 points past a 10-point threshold on 128 inputs is noise: neither pass nor fail."""
    t = MaskingThresholds()
    n = 128
    naive, adaptive = _mask(n, 60), _mask(n, 44)  # 16 of 128 discordant: a gap of 12.5 points
    check = check_adaptive_beats_naive({0.1: naive}, {"pgd_margin": {0.1: adaptive}}, t)
    assert check.state == "inconclusive" and not check.passed
    assert n < check.evidence["inputs_to_resolve"] <= 20 * n  # and 20 times the inputs do decide it
    lo, hi = check.evidence["ci"]
    assert lo < t.adaptive_gap < hi
    # with 20 times the inputs and the same rates the gap is significant
    many = check_adaptive_beats_naive({0.1: naive.repeat(20)}, {"pgd_margin": {0.1: adaptive.repeat(20)}}, t)
    assert many.state == "fail"
    # a deciding check that is inconclusive makes the verdict inconclusive, never "suspected"
    unbounded = check_unbounded_attack_fails("pgd_ce", 1.0, _mask(n, 120))  # 93.8% against 95%
    assert unbounded.state == "inconclusive"
    v = verdict([unbounded])
    assert v.state == "inconclusive" and not v.suspected and v.inconclusive == ["unbounded_attack_fails"]
    assert "--check_samples=" in v.explain()


def test_outcome_checks_corroborate_but_never_flag_alone():
    t = MaskingThresholds()
    n = 400
    weak_naive = check_adaptive_beats_naive({0.1: _mask(n, 200)}, {"pgd_margin": {0.1: _mask(n, 20)}}, t)
    assert weak_naive.state == "fail"
    alone = verdict([weak_naive])
    assert alone.state == "not suspected" and not alone.suspected and alone.triggered == []
    assert "naive attack is weak" in alone.explain()
    saturated = check_softmax_saturation(torch.tensor([[100.0, 0.0]]).repeat(n, 1), t)
    assert saturated.state == "fail" and saturated.kind == "mechanism"
    both = verdict([saturated, weak_naive])
    assert both.suspected and both.triggered == ["softmax_saturation", "adaptive_beats_naive"]


def test_silent_success_counts_points_a_last_iterate_attack_loses(trained):
    model, x, y = trained
    # a huge step makes PGD bounce: it meets adversarial points it then leaves
    plan = ChecklistAttacks.build(PGD(), PGD(eps=0.3, steps=10, step_size=0.3, loss="ce"), x[0].numel())
    _, ex = robustness_counts(model, x, y, [plan.first, plan.last], [0.3], cascade=False)
    check = check_silent_success(plan.probe.name, ex.fooled[plan.first.name]["0.3"], ex.fooled[plan.last.name]["0.3"])
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


# the same attacks without the gradient-free stage's escalation (x5 budgets, and RayS) for broken
# gradients: what these three cases assert is the mechanism checks' verdict, which the black-box
# budgets do not touch (the escalated stage is the fake-backward case's, whose worst case must come
# close to the honest model's, and the decision-only model's)
UNESCALATED = dataclasses.replace(SMALL, escalation=1)


@pytest.mark.parametrize(
    "wrap, expected, suite",
    [
        (lambda m: ScaledLogits(m, 1e4), {"zero_gradients", "softmax_saturation", "adaptive_beats_naive"}, SMALL),
        (Quantized, {"zero_gradients"}, UNESCALATED),
        (lambda m: Noisy(m, 0.1), {"randomized_outputs"}, UNESCALATED),
        (FakeGradient, {"gradient_mismatch"}, SMALL),
        (InnerOptimisation, {"inference_time_optimisation"}, UNESCALATED),
    ],
    ids=["scaled_logits", "quantized", "noisy", "fake_backward", "inner_optimisation"],
)
def test_audit_flags_masked_models_and_never_reports_more_robustness(trained, honest_audit, wrap, expected, suite):
    model, x, y = trained
    a = audit_model(wrap(model), x, y, [0.05, 0.1], name="masked", suite=suite, check_samples=128)
    assert a.gradient_masking.suspected, a.gradient_masking.explain()
    assert expected <= set(a.gradient_masking.triggered), a.gradient_masking.triggered
    if wrap in (FakeGradient,) or isinstance(wrap(model), ScaledLogits):
        # forward pass identical to the honest model: never more robust than it (small slack for
        # attacks that reach the same points along different paths)
        for key in a.worst_case:
            assert_not_significantly_more_robust(a, honest_audit, key, margin=0.05)



def test_audit_of_a_decision_only_model_comes_close_to_the_honest_one(trained, honest_audit):
    """Square and random sampling follow a flat margin; the decision-based RayS in the escalated
    gradient-free stage walks the boundary: the worst case at eps 0.1 is not significantly more
    than 5 points above the honest model's own (a paired test on the same 128 inputs)."""
    model, x, y = trained
    suite = AttackSuite(steps=10, eot_samples=4, square_queries=150, random_samples=10, apgd_steps=10,
                        apgd_targets=2, min_norm_steps=10, rays_queries=200, adequacy_samples=0)
    a = audit_model(DecisionOnly(model), x, y, [0.1], name="decision_only", suite=suite, check_samples=128)
    assert a.gradient_masking.suspected and "zero_gradients" in a.gradient_masking.triggered
    assert "rays" in a.roles.black_box
    assert_not_significantly_more_robust(a, honest_audit, "0.1", margin=0.05)


@pytest.fixture(scope="module")
def undertrained():
    """An honest Papernot CNN stopped after 8 batches (about 53% clean) and 512 test inputs.

    Its gradients are fine, but CE-PGD-20 lags margin PGD-20 by about 13 points at eps 0.05: a
    weak naive attack, the case the rule must not call masked.
    """
    import lightning as L

    from lit_defense.data import VisionDataModule
    from lit_defense.modules import Classifier

    L.seed_everything(0)
    dm = VisionDataModule("synthetic", val_size=256, synthetic_train_size=1024, synthetic_test_size=512,
                          batch_size=64, synthetic_noise=0.3)
    model = Classifier(mean=dm.mean, std=dm.std)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=8, limit_val_batches=0, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    dm.setup("test")
    return model.eval(), dm.test_set.images.float() / 255, dm.test_set.labels


def test_an_undertrained_honest_model_whose_naive_attack_lags_is_not_called_masked(undertrained):
    """Margin PGD beating CE-PGD is an outcome, not a mechanism: with clean gradients the report
    says the naive attack is weak, and the verdict stays "not suspected". The outcome threshold is
    5 points here so that 512 inputs decide the gap (it is about 13 points) instead of leaving it
    inconclusive."""
    model, x, y = undertrained
    suite = AttackSuite(steps=20, eot_samples=4, square_queries=150, random_samples=10, apgd_steps=10,
                        apgd_targets=2, min_norm_steps=10, rays_queries=100, adequacy_samples=0)
    a = audit_model(model, x, y, [0.05], name="undertrained", suite=suite, check_samples=256,
                    thresholds=MaskingThresholds(adaptive_gap=0.05))
    checks = by_name(a.gradient_masking.checks)
    weak = checks["adaptive_beats_naive"]
    assert weak.state == "fail" and weak.kind == "outcome", weak.evidence
    assert weak.evidence["discordant"][0] > 5 * weak.evidence["discordant"][1]  # margin PGD finds many more
    for c in checks.values():
        if c.kind in ("mechanism", "signature"):
            assert c.state == "pass", (c.name, c.summary, c.evidence)
    v = a.gradient_masking
    assert v.state == "not suspected" and not v.suspected and v.triggered == []
    assert "naive attack is weak" in v.explain()
    # the same outcome on a model whose softmax saturates is corroboration of masking
    scaled = audit_model(ScaledLogits(model, 1e4), x[:128], y[:128], [0.05], name="scaled", suite=suite,
                         check_samples=128)
    assert scaled.gradient_masking.suspected
    assert {"softmax_saturation", "zero_gradients"} <= set(scaled.gradient_masking.triggered)


def test_black_box_check_on_a_sample_of_the_survivors():
    """Sampled: the survivors' rate is scaled by their share; a clean sample of the planned size passes."""
    from lit_defense.audit.spending import black_box_sample_size
    from lit_defense.diagnostics import check_random_sampling_beats_attacks

    n, thresholds = 1000, MaskingThresholds()
    before = torch.zeros(n, dtype=torch.bool)
    before[:600] = True  # 600 survivors of the gradient attacks
    m = black_box_sample_size(600, n, thresholds.random_gap, thresholds.alpha)
    # a rate at the threshold (1% of all inputs = 1/60 of the survivors) is missed with probability <= alpha
    assert (1 - thresholds.random_gap * n / 600) ** m <= thresholds.alpha < (1 - thresholds.random_gap * n / 600) ** (m - 1)
    attacked = torch.zeros(n, dtype=torch.bool)
    attacked[:m] = True
    clean = check_random_sampling_beats_attacks({0.1: before}, {0.1: before.clone()}, ["random"], thresholds, attacked={0.1: attacked})
    assert clean.passed and clean.evidence["sampled"] == m and clean.evidence["survivor_share"] == 0.6
    after = before.clone()
    after[:20] = False  # the sample finds 20 of its m: 20/m of the survivors, times 0.6 of all inputs
    found = check_random_sampling_beats_attacks({0.1: before}, {0.1: after}, ["random"], thresholds, attacked={0.1: attacked})
    assert found.state == "fail" and found.value == pytest.approx(20 / m * 0.6, abs=1e-4)
    # a sample that covers every survivor is the plain test over all inputs
    full = check_random_sampling_beats_attacks({0.1: before}, {0.1: after}, ["random"], thresholds, attacked={0.1: before.clone()})
    plain = check_random_sampling_beats_attacks({0.1: before}, {0.1: after}, ["random"], thresholds)
    assert full.to_dict() == plain.to_dict() and plain.value == pytest.approx(0.02)
    assert black_box_sample_size(0, n, 0.01, 0.05) == 0 and black_box_sample_size(5, n, 0.01, 0.05) == 1


def test_the_far_rule_trusts_the_margins_through_a_saturated_softmax_and_nothing_else():
    """The cascade skips far survivors, and the gradient-free attacks start on a sample, only where
    the margin attacks mean something: a saturated softmax and zero cross-entropy gradients leave the
    margin PGD intact; any other failed mechanism check, BPDA, EOT or zero margin gradients do not."""
    from lit_defense.audit.probe import ModelProbe
    from lit_defense.audit.spending import far_from_boundary
    from lit_defense.results import Check, PerSample

    names = ["probability_outputs", "softmax_saturation", "randomized_outputs", "zero_gradients",
             "gradient_mismatch", "inference_time_optimisation"]

    def checks(*failed: str, state: str = "fail") -> list[Check]:
        return [Check(n, True, None, "", state=state if n in failed else "pass") for n in names]

    def probe(found: list[Check], masked: bool = False, randomized: bool = False, margin_zero: bool = False
              ) -> ModelProbe:
        return ModelProbe(tuple(found), masked=masked, randomized=randomized, margin_zero=margin_zero, num_classes=10)

    def margins_trusted(found: list[Check], **facts: bool) -> bool:
        return probe(found, **facts).margins_trusted

    def far_threshold(far_margin: float, norm: str, found: list[Check], masked: bool, randomized: bool,
                      margin_zero: bool) -> float:
        return probe(found, masked, randomized, margin_zero).far_threshold(far_margin, norm)

    def black_box_sampled(option: bool, found: list[Check], **facts: bool) -> bool:
        return probe(found, **facts).black_box_sampled(option)

    assert margins_trusted(checks(), masked=False, randomized=False, margin_zero=False)
    distilled = checks("softmax_saturation", "zero_gradients")
    assert margins_trusted(distilled, masked=False, randomized=False, margin_zero=False)
    assert not margins_trusted(distilled, masked=False, randomized=False, margin_zero=True)
    assert not margins_trusted(checks(), masked=True, randomized=False, margin_zero=False)
    assert not margins_trusted(checks(), masked=False, randomized=True, margin_zero=False)
    for other in ("probability_outputs", "randomized_outputs", "gradient_mismatch", "inference_time_optimisation"):
        assert not margins_trusted(checks(other), masked=False, randomized=False, margin_zero=False), other
        assert not margins_trusted(checks(other, state="inconclusive"), masked=False, randomized=False,
                                   margin_zero=False), other
    # far: robust survivors with more than the threshold of their clean margin left
    res = PerSample.start(torch.tensor([True, True, True, False]), [0.1])
    res.robust["0.1"][2] = False  # fooled by a white-box attack
    white = {"clean_margin": torch.tensor([2.0, 2.0, 2.0, -1.0]),
             "margin_left": {"0.1": torch.tensor([1.5, 0.5, 1.8, float("inf")])}}
    assert far_from_boundary(white, [0.1], 0.5, res)["0.1"].tolist() == [True, False, False, False]
    assert not far_from_boundary(white, [0.1], 0.0, res)["0.1"].any()
    # measured for L-inf only: at L2 no survivor is skipped
    assert far_threshold(0.5, "linf", distilled, False, False, False) == 0.5
    assert far_threshold(0.5, "l2", checks(), False, False, False) == 0.0
    assert far_threshold(0.5, "linf", checks("gradient_mismatch"), False, False, False) == 0.0
    # the gradient-free attacks start on a sample where the margins are trusted, at either norm
    assert black_box_sampled(True, distilled, masked=False, randomized=False, margin_zero=False)
    assert black_box_sampled(True, checks(), masked=False, randomized=False, margin_zero=False)
    assert not black_box_sampled(False, checks(), masked=False, randomized=False, margin_zero=False)
    assert not black_box_sampled(True, distilled, masked=False, randomized=False, margin_zero=True)
    assert not black_box_sampled(True, checks(), masked=True, randomized=False, margin_zero=False)
    assert not black_box_sampled(True, checks("randomized_outputs"), masked=False, randomized=True, margin_zero=False)
    assert not black_box_sampled(True, checks("gradient_mismatch"), masked=False, randomized=False, margin_zero=False)
