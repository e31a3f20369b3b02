from __future__ import annotations

import pytest
import torch
from conftest import ScaledLogits
from torch import nn

from lit_defense.attacks import (
    BPDA,
    EOT,
    FGSM,
    JSMA,
    PGD,
    CarliniWagnerL2,
    Square,
    bpda_hooks,
)
from lit_defense.errors import ConfigError
from lit_defense.evaluation import evaluate_robustness
from lit_defense.threat import ThreatModel


def _acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


ATTACKS = [
    lambda: FGSM(eps=0.1),
    lambda: FGSM(eps=1.0, norm="l2"),
    lambda: PGD(eps=0.1, steps=5, loss="ce"),
    lambda: PGD(eps=0.1, steps=5, loss="margin", restarts=2),
    lambda: PGD(eps=0.1, steps=5, loss="dlr"),
    lambda: PGD(eps=1.0, norm="l2", steps=5),
    lambda: PGD(eps=1.0, norm="l2", steps=5, loss="margin"),
    lambda: CarliniWagnerL2(eps=1.0, steps=10, binary_search_steps=2),
    lambda: Square(eps=0.1, n_queries=30),
    lambda: Square(eps=1.0, norm="l2", n_queries=30),
    lambda: JSMA(eps=0.05),
    lambda: BPDA(PGD(eps=0.1, steps=3)),
    lambda: EOT(PGD(eps=0.1, steps=3), samples=2),
]


@pytest.mark.parametrize("make", ATTACKS, ids=lambda f: f().name)
def test_every_attack_stays_in_its_ball_and_the_box(trained, make):
    model, x, y = trained
    attack = make()
    x, y = x[:16], y[:16]
    x_adv = attack(model, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    dist = ThreatModel(attack.norm, attack.eps).distance(x_adv, x)
    assert (dist <= attack.eps * (1 + 1e-5) + 1e-6).all(), (attack.name, dist.max().item())


@pytest.mark.parametrize("make", ATTACKS, ids=lambda f: f().name)
def test_attacks_keep_model_state_and_leave_no_parameter_grads(trained, make):
    model, x, y = trained
    attack = make()
    for mode in (False, True):
        model.train(mode)
        attack(model, x[:8], y[:8])
        assert model.training is mode
        assert all(m.training is mode for m in model.modules())
        assert all(p.grad is None for p in model.parameters())
    model.eval()


def test_attacks_work_under_inference_mode(trained):
    model, x, y = trained
    with torch.inference_mode():
        xi, yi = x[:8].clone(), y[:8].clone()
        x_adv = PGD(eps=0.1, steps=3)(model, xi, yi)
    assert not torch.equal(x_adv, xi)


def test_pgd_is_seeded(trained):
    model, x, y = trained
    a = PGD(eps=0.1, steps=2, seed=1)(model, x[:8], y[:8])
    b = PGD(eps=0.1, steps=2, seed=1)(model, x[:8], y[:8])
    c = PGD(eps=0.1, steps=2, seed=2)(model, x[:8], y[:8])
    assert torch.equal(a, b) and not torch.equal(a, c)


class Linear2(nn.Module):
    def __init__(self, d=20):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(2, d, generator=g))

    def forward(self, x):
        return x.flatten(1) @ self.w.t()


@pytest.mark.parametrize("norm, eps", [("linf", 0.02), ("l2", 0.1)])
def test_pgd_reaches_the_analytic_worst_case_of_a_linear_model(norm, eps):
    model = Linear2()
    x = torch.full((8, 1, 4, 5), 0.5) + 0.1 * torch.rand(8, 1, 4, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
        wd = (model.w[1 - y] - model.w[y])  # direction raising the wrong class, per sample
        margin0 = (model(x).gather(1, y[:, None]) - model(x).gather(1, (1 - y)[:, None])).squeeze(1)
        dual = wd.abs().sum(1) if norm == "linf" else wd.norm(dim=1)
        expected = margin0 - eps * dual  # smallest reachable margin (box constraints inactive)
    attack = PGD(eps=eps, norm=norm, steps=100, loss="margin", random_start=False, early_stop_every=0)
    x_adv = attack(model, x, y)
    with torch.no_grad():
        reached = (model(x_adv).gather(1, y[:, None]) - model(x_adv).gather(1, (1 - y)[:, None])).squeeze(1)
    assert torch.allclose(reached, expected, atol=1e-3), (reached - expected).abs().max()


def test_unbounded_eps_reaches_zero_robust_accuracy(trained):
    model, x, y = trained
    result = evaluate_robustness(model, x[:64], y[:64], [PGD(steps=20, loss="margin")], eps=[1.0])
    assert result.clean_accuracy > 0.8
    assert result.worst(1.0) <= 0.02


def test_margin_loss_sees_through_scaled_logits(trained):
    """x1000 logits: the CE gradient vanishes (CE-PGD looks robust), the margin loss does not."""
    model, x, y = trained
    x, y = x[:64], y[:64]
    scaled = ScaledLogits(model, 1000.0).eval()
    plain = evaluate_robustness(model, x, y, [PGD(steps=10, loss="margin")], eps=[0.1]).worst(0.1)
    ce = evaluate_robustness(scaled, x, y, [PGD(steps=10, loss="ce")], eps=[0.1]).worst(0.1)
    margin = evaluate_robustness(scaled, x, y, [PGD(steps=10, loss="margin")], eps=[0.1]).worst(0.1)
    dlr = evaluate_robustness(scaled, x, y, [PGD(steps=10, loss="dlr")], eps=[0.1]).worst(0.1)
    assert ce > plain + 0.3, (ce, plain)
    assert abs(margin - plain) <= 0.05 and abs(dlr - plain) <= 0.1, (margin, dlr, plain)


class Squash(nn.Module):
    """A differentiable 'defense' declared non-differentiable, so BPDA replaces its backward."""

    differentiable = False

    def forward(self, x):
        return torch.sigmoid(8 * (x - 0.5))


class ExactSquash(Squash):
    def bpda_surrogate(self, x):
        return torch.sigmoid(8 * (x - 0.5))


def _grad(model, x, y):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), x)
    return g


def test_bpda_exact_surrogate_reproduces_the_true_gradient_and_identity_differs(trained):
    net, x, y = trained
    x, y = x[:8], y[:8]
    true = _grad(nn.Sequential(Squash(), net), x, y)
    exact_model = nn.Sequential(ExactSquash(), net)
    with bpda_hooks(exact_model) as n_hooked:
        exact = _grad(exact_model, x, y)
    assert n_hooked == 1
    identity_model = nn.Sequential(Squash(), net)
    with bpda_hooks(identity_model):
        identity = _grad(identity_model, x, y)
    assert torch.allclose(exact, true, atol=1e-6)
    assert not torch.allclose(identity, true, atol=1e-3)
    # hooks are removed afterwards: the model is untouched
    assert torch.allclose(_grad(identity_model, x, y), true)


class Quantize(nn.Module):
    """Non-differentiable input quantisation: its autograd gradient is exactly zero."""

    differentiable = False

    def forward(self, x):
        return torch.round(x * 3) / 3


def test_bpda_attack_breaks_a_shattered_gradient(trained):
    net, x, y = trained
    x, y = x[:64], y[:64]
    model = nn.Sequential(Quantize(), net).eval()
    naive = evaluate_robustness(model, x, y, [PGD(steps=10, random_start=False)], eps=[0.15]).worst(0.15)
    bpda = evaluate_robustness(model, x, y, [BPDA(PGD(steps=10, random_start=False))], eps=[0.15]).worst(0.15)
    assert bpda < naive - 0.2, (naive, bpda)


def test_bpda_names_unknown_modules():
    with pytest.raises(ConfigError, match="not submodules"):
        with bpda_hooks(nn.Sequential(nn.Identity()), ["defense"]):
            pass


class Noisy(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x + 0.2 * torch.randn_like(x))


def test_eot_averages_gradients_over_draws(trained):
    net, x, y = trained
    model = Noisy(net)
    attack = PGD(eps=0.1, eot_samples=5)
    x, y = x[:4], y[:4]
    torch.manual_seed(0)
    _, _, g_eot = attack.loss_and_grad(model, x, y, attack.loss_fn)
    torch.manual_seed(0)
    single = PGD(eps=0.1)
    grads = [single.loss_and_grad(model, x, y, single.loss_fn)[2] for _ in range(5)]
    assert torch.allclose(g_eot, torch.stack(grads).mean(0), atol=1e-6)
    # composition reaches the inner attack without mutating it
    wrapped = EOT(BPDA(PGD(eps=0.1, steps=2)), samples=3)
    wrapped(model, x, y)
    assert wrapped.attack.attack.eot_samples == 1
    assert wrapped.name == "eot3_bpda_pgd_ce" and wrapped.with_eps(0.2).eps == 0.2


def test_eot_climbs_the_expected_loss_to_the_last_step(trained):
    """Against a randomized model the first iterate that K draws misclassify sits on the boundary
    (a fresh draw gets it right about half of the time): EOT runs every step and returns the last
    iterate, which fresh draws misclassify far more often."""
    from lit_defense.judge import Judge
    from lit_defense.stats import paired

    net, x, y = trained
    model = Noisy(net)
    first = PGD(eps=0.05, steps=10, eot_samples=4)  # EOT gradients, but stops at the first fooled iterate
    wrapped = EOT(PGD(eps=0.05, steps=10), samples=4)

    def fresh_accuracy(x_adv):  # per input, the expected accuracy over 20 fresh draws
        torch.manual_seed(1)
        return Judge(20).rates(model, x_adv, y)

    torch.manual_seed(0)
    acc_first = fresh_accuracy(first(model, x, y))
    torch.manual_seed(0)
    acc_eot = fresh_accuracy(wrapped(model, x, y))
    # the same inputs, compared on their expected accuracies (the paired rule): EOT's last iterate is
    # significantly (one-sided 1%) more often misclassified, by at least 5 points
    decision = paired(acc_first, acc_eot).decide(0.0)
    assert decision.state == "fail" and decision.value >= 0.05, (acc_first.mean(), acc_eot.mean(), decision.evidence())
    # the configured attack is left as it was
    assert wrapped.attack.keep_first_adversarial and wrapped.attack.early_stop_every == 1


def test_jsma_reports_the_papers_statistics(trained):
    model, x, y = trained
    x_adv, stats = JSMA(eps=0.1).run(model, x[:8], y[:8])
    assert 0.0 <= stats["success_rate"] <= 1.0 and stats["success_rate"] > 0
    assert stats["mean_l0"] <= 0.1 + 1e-6
    changed = (x_adv != x[:8]).flatten(1).float().mean(1)
    assert (changed <= 0.1 + 1e-6).all()


def test_transfer_from_a_checkpoint(trained, tmp_path):
    import lightning as L

    from lit_defense.transfer import Transfer

    model, x, y = trained
    ckpt = tmp_path / "surrogate.ckpt"
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_epochs=0, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(ckpt)
    attack = Transfer(str(ckpt), eps=0.1)
    result = evaluate_robustness(model, x[:64], y[:64], [attack], eps=[0.1])
    white = evaluate_robustness(model, x[:64], y[:64], [PGD(eps=0.1, steps=20, loss="margin")], eps=[0.1])
    # the surrogate is the model itself (rebuilt from its checkpoint): transfer is then exactly the
    # white-box attack it runs
    assert attack.name == "transfer_pgd_margin"
    assert result.worst(0.1) == white.worst(0.1) < result.clean_accuracy - 0.3


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: PGD(eps=1.5), "impossible for linf"),
        (lambda: PGD(eps=-0.1), "must be >= 0"),
        (lambda: FGSM(eps=0.1, norm="l0"), "supports norm"),
        (lambda: PGD(eps=0.1, loss="hinge"), "unknown attack loss"),
        (lambda: PGD(steps=0), "steps >= 1"),
        (lambda: Square(eps=0.1, norm="l0"), "supports norm"),
    ],
)
def test_impossible_attack_settings_are_clear_errors(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_wrong_shapes_are_clear_errors(trained):
    model, x, y = trained
    with pytest.raises(ConfigError, match=r"\(N, C, H, W\)"):
        PGD()(model, x[0], y[:1])
    with pytest.raises(ConfigError, match="labels"):
        PGD()(model, x[:4], y[:3])
