"""APGD, FMN and RayS: the contract, their defining behaviour, and the attack base they share."""

from __future__ import annotations

import pytest
import torch
from conftest import ScaledLogits
from torch import nn
from toy_models import DecisionOnly

from lit_defense.attacks import APGD, BPDA, EOT, FMN, PGD, Attack, RayS, Square
from lit_defense.attacks.apgd import checkpoints, interleave
from lit_defense.defenses import BitDepthReduction
from lit_defense.errors import ConfigError
from lit_defense.evaluation import evaluate_robustness, robustness_counts
from lit_defense.threat import ThreatModel

NEW = [
    lambda: APGD(eps=0.1, steps=10),
    lambda: APGD(eps=0.1, steps=10, loss="dlr", targets=3),
    lambda: APGD(eps=1.0, norm="l2", steps=10, loss="margin"),
    lambda: FMN(eps=0.1, steps=10),
    lambda: FMN(eps=1.0, norm="l2", steps=10),
    lambda: RayS(eps=0.1, queries=50),
    lambda: EOT(APGD(eps=0.1, steps=5), samples=2),
    lambda: BPDA(APGD(eps=0.1, steps=5, targets=2, loss="dlr")),
]


@pytest.mark.parametrize("make", NEW, ids=lambda f: f().name)
def test_new_attacks_keep_the_contract(trained, make):
    model, x, y = trained
    attack = make()
    x, y = x[:16], y[:16]
    for mode in (False, True):
        model.train(mode)
        x_adv = attack(model, x, y)
        assert model.training is mode and all(p.grad is None for p in model.parameters())
    model.eval()
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (ThreatModel(attack.norm, attack.eps).distance(x_adv, x) <= attack.eps * (1 + 1e-5) + 1e-6).all()
    assert torch.equal(attack(model, x, y), attack(model, x, y)), "seeded: the same call gives the same points"
    with torch.inference_mode():
        xi, yi = x.clone(), y.clone()
        assert attack(model, xi, yi).shape == x.shape


def test_apgd_checkpoints_follow_the_paper():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_apgd_is_at_least_as_strong_as_pgd_at_the_same_cost(trained):
    model, x, y = trained
    pgd = evaluate_robustness(model, x, y, [PGD(eps=0.08, steps=20, loss="ce")], eps=[0.08]).worst(0.08)
    apgd = evaluate_robustness(model, x, y, [APGD(eps=0.08, steps=20, loss="ce")], eps=[0.08]).worst(0.08)
    assert apgd <= pgd + 1 / len(y), (apgd, pgd)


def test_apgd_halves_its_step_and_climbs_the_loss():
    """On a linear model the margin is maximised at a corner of the box: APGD-margin gets there
    (the analytic worst case) although its first steps overshoot (2 * eps)."""
    torch.manual_seed(0)
    w = torch.randn(2, 20)
    model = nn.Sequential(nn.Flatten(), nn.Linear(20, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(w)
    x = torch.full((8, 1, 4, 5), 0.5) + 0.1 * torch.rand(8, 1, 4, 5)
    with torch.no_grad():
        y = model(x).argmax(1)
        wd = w[1 - y] - w[y]
        margin0 = (model(x).gather(1, y[:, None]) - model(x).gather(1, (1 - y)[:, None])).squeeze(1)
        expected = margin0 - 0.02 * wd.abs().sum(1)
    x_adv = APGD(eps=0.02, steps=50, loss="margin", keep_first_adversarial=False)(model, x, y)
    with torch.no_grad():
        reached = (model(x_adv).gather(1, y[:, None]) - model(x_adv).gather(1, (1 - y)[:, None])).squeeze(1)
    assert torch.allclose(reached, expected, atol=1e-4), (reached - expected).abs().max()


def test_targeted_apgd_sees_through_saturated_softmax(trained):
    """x1e4 logits zero the CE gradient: APGD-CE looks robust, targeted DLR APGD does not."""
    model, x, y = trained
    x, y = x[:64], y[:64]
    scaled = ScaledLogits(model, 1e4).eval()
    plain = evaluate_robustness(model, x, y, [APGD(steps=20, loss="dlr", targets=3)], eps=[0.1]).worst(0.1)
    ce = evaluate_robustness(scaled, x, y, [APGD(steps=20, loss="ce")], eps=[0.1]).worst(0.1)
    targeted = evaluate_robustness(scaled, x, y, [APGD(steps=20, loss="dlr", targets=3)], eps=[0.1]).worst(0.1)
    assert ce > plain + 0.3, (ce, plain)
    assert abs(targeted - plain) <= 0.05, (targeted, plain)


class _Rows(nn.Module):
    """Counts the input rows it forwards (a stand-in for the attack's cost)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.model(x)


def test_zero_gradient_inputs_stop_early_with_the_same_result(trained, monkeypatch):
    """A saturated softmax zeroes the CE gradient: such an input never moves again, so PGD and APGD
    drop it instead of repeating the same zero step, and return exactly what the full run returns."""
    import lit_defense.attacks.apgd as apgd_module

    model, x, y = trained
    x, y = x[:64], y[:64]
    scaled = _Rows(ScaledLogits(model, 1e4).eval())
    results = {}
    for name, attack, reference in (
        ("pgd", PGD(steps=20, loss="ce"), lambda: PGD(steps=20, loss="ce", early_stop_every=0)(scaled, x, y)),
        ("apgd", APGD(steps=40, loss="ce"), None),
    ):
        scaled.rows = 0
        fast = attack(scaled, x, y)
        fast_rows = scaled.rows
        scaled.rows = 0
        if reference is not None:
            full = reference()
        else:  # the same APGD with the stuck test switched off
            with monkeypatch.context() as m:
                m.setattr(apgd_module, "_stuck", lambda grad, *_: torch.zeros(grad.shape[0], dtype=torch.bool))
                full = attack(scaled, x, y)
        results[name] = (fast_rows, scaled.rows)
        assert torch.equal(fast, full), name
    assert results["pgd"][0] <= results["pgd"][1] / 5, results  # the zero step is not repeated 19 times
    assert results["apgd"][0] <= results["apgd"][1] / 2, results  # dropped at the first checkpoint
    # where the gradient is not zero nothing changes: the unscaled model is attacked as before
    plain = _Rows(model)
    with monkeypatch.context() as m:
        m.setattr(apgd_module, "_stuck", lambda grad, *_: torch.zeros(grad.shape[0], dtype=torch.bool))
        full = APGD(steps=40, loss="ce")(plain, x, y)
    assert torch.equal(APGD(steps=40, loss="ce")(plain, x, y), full)


def test_apgd_rejects_impossible_settings():
    with pytest.raises(ConfigError, match="steps >= 2"):
        APGD(steps=1)
    with pytest.raises(ConfigError, match="rho"):
        APGD(rho=0)
    with pytest.raises(ConfigError, match="unknown attack loss"):
        APGD(loss="hinge")


def test_fmn_gives_each_input_its_smallest_perturbation_and_every_eps_at_once(trained):
    model, x, y = trained
    x, y = x[:48], y[:48]
    fmn = FMN(steps=50)
    x_adv, norms = fmn.min_norms(model, x, y)
    with torch.no_grad():
        pred = model(x_adv).argmax(1)
    found = torch.isfinite(norms)
    assert found.float().mean() > 0.9
    assert (pred[found] != y[found]).all(), "every point with a finite norm is adversarial"
    dist = ThreatModel("linf", 1.0).distance(x_adv, x)
    assert torch.allclose(dist[found], norms[found], atol=1e-6)
    # one run answers the whole grid, and the grid agrees with a call at each eps
    grid = [0.02, 0.05, 0.1]
    counts, examples = robustness_counts(model, x, y, [fmn], grid)
    for j, e in enumerate(grid):
        single = evaluate_robustness(model, x, y, [fmn.with_eps(e)], eps=[e]).worst(e)
        assert int(counts.worst[j]) / len(y) == pytest.approx(single)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    assert torch.allclose(examples.min_norm["fmn"][correct & found], norms[correct & found], atol=1e-4)
    # and it is a real attack: its robust accuracy is close to a strong fixed-budget one
    apgd = evaluate_robustness(model, x, y, [APGD(steps=50, loss="dlr", targets=3)], eps=[0.05]).worst(0.05)
    assert int(counts.worst[1]) / len(y) <= apgd + 0.1



class _NearerThanLikelier(nn.Module):
    """Logits of a 2 x 2 image: class 0 (true) 2, class 1 a constant 1.5 (the likeliest wrong class,
    out of reach), class 2 ``4d + 4d^2`` with ``d = sum(x) - 2``: at x = 0.5 its boundary lies at
    L2 distance (sqrt(3) - 1) / 4 = 0.183."""

    def forward(self, x):
        d = x.flatten(1).sum(1) - 2
        z2 = 4 * d + 4 * d ** 2
        return torch.stack([torch.full_like(z2, 2.0), torch.full_like(z2, 1.5), z2], dim=1)


def test_targeted_fmn_finds_the_nearer_boundary_the_untargeted_margin_never_looks_at():
    model = _NearerThanLikelier().eval()
    x, y = torch.full((3, 1, 2, 2), 0.5), torch.zeros(3, dtype=torch.long)
    _, untargeted = FMN(norm="l2", steps=50).min_norms(model, x, y)
    assert torch.isinf(untargeted).all(), "the margin to the likeliest wrong class has no gradient"
    targeted = FMN(norm="l2", steps=50, targets=2)
    assert targeted.name == "fmn_t2_l2" and FMN(targets=1).name == "fmn_t1"
    x_adv, norms = targeted.min_norms(model, x, y)
    with torch.no_grad():
        assert (model(x_adv).argmax(1) == 2).all()
    assert torch.allclose(norms, torch.full((3,), (3 ** 0.5 - 1) / 4), atol=0.02), norms
    assert torch.allclose(ThreatModel("l2", 1.0).distance(x_adv, x), norms, atol=1e-5)
    # the likeliest wrong class alone is the untargeted failure again
    assert torch.isinf(FMN(norm="l2", steps=50, targets=1).min_norms(model, x, y)[1]).all()


def test_square_l2_finds_what_a_shattered_gradient_hides(trained):
    net, x, y = trained
    x, y = x[:48], y[:48]
    model = nn.Sequential(BitDepthReduction(bits=2), net).eval()  # round(): the gradient is zero
    eps = 2.0
    pgd = evaluate_robustness(model, x, y, [PGD(eps=eps, norm="l2", steps=10, loss="margin")], eps=[eps]).worst(eps)
    start = evaluate_robustness(model, x, y, [Square(eps=eps, norm="l2", n_queries=1)], eps=[eps]).worst(eps)
    square = evaluate_robustness(model, x, y, [Square(eps=eps, norm="l2", n_queries=150)], eps=[eps]).worst(eps)
    assert square < pgd - 0.2 and square < start - 0.1, (pgd, start, square)


def test_rays_needs_only_the_decision(trained):
    model, x, y = trained
    x, y = x[:48], y[:48]
    hidden = DecisionOnly(model).eval()
    square = evaluate_robustness(hidden, x, y, [Square(eps=0.1, n_queries=300)], eps=[0.1]).worst(0.1)
    rays = evaluate_robustness(hidden, x, y, [RayS(eps=0.1, queries=300)], eps=[0.1]).worst(0.1)
    truth = evaluate_robustness(model, x, y, [APGD(steps=20, loss="dlr", targets=3)], eps=[0.1]).worst(0.1)
    # the margin of a one-hot is flat: Square only keeps its random initialisation
    assert rays < square - 0.1, (rays, square)
    assert rays <= truth + 0.05, (rays, truth)


def test_attacks_are_copied_through_their_constructor_never_mutated():
    pgd = PGD(eps=0.1, steps=7, loss="margin")
    longer = pgd.replace(steps=14)
    assert (longer.steps, longer.loss, pgd.steps) == (14, "margin", 7)
    assert pgd.with_eps(0.2).eps == 0.2 and pgd.eps == 0.1
    with pytest.raises(ConfigError, match="takes no argument"):
        pgd.replace(stepz=3)
    with pytest.raises(ConfigError, match="steps >= 1"):
        pgd.replace(steps=0)  # the constructor's checks run on copies too
    eot = EOT(BPDA(APGD(steps=5)), samples=4)
    assert eot.attack.attack.eot_samples == 1, "the configured attack is left as it was"
    assert eot._inner.attack.eot_samples == 4 and not eot._inner.attack.keep_first_adversarial
    with pytest.raises(ConfigError, match="EOT averages gradients"):
        EOT(Square(), samples=2)
    with pytest.raises(TypeError, match="abstract"):
        Attack()


class _NearAndLikely(nn.Module):
    """Four pixels, four classes. At x = 0.5 the likeliest wrong class (1) is out of reach within
    eps 0.45 (and pulls x[0] the wrong way), while class 2, lower in logit but steep in x[0], is the
    nearest boundary."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(1)
        ones = torch.ones_like(f[:, 0])
        return torch.stack([ones, 0.01 * f.sum(1) + 0.9, 1.24 - 4 * f[:, 0], -5 * ones], dim=1)


def test_linear_target_ranking_picks_the_nearest_boundary_not_the_likeliest_class():
    model = _NearAndLikely()
    x, y = torch.full((6, 1, 2, 2), 0.5), torch.zeros(6, dtype=torch.long)
    linear = APGD(eps=0.45, steps=20, loss="margin", targets=1, ranking="linear")
    assert linear._target_order(model, x, y)[:, 0].tolist() == [2] * 6
    assert APGD(eps=0.45, targets=1, ranking="logit")._target_order(model, x, y)[:, 0].tolist() == [0] * 6
    fooled = {ranking: (model(APGD(eps=0.45, steps=20, loss="margin", targets=1, ranking=ranking)(model, x, y))
                        .argmax(1) != y) for ranking in ("logit", "linear")}
    assert fooled["linear"].all() and int(fooled["logit"].sum()) <= 1  # a random start may land there
    assert linear.name == "apgd_t1_margin_linear"
    with pytest.raises(ConfigError, match="ranking"):
        APGD(targets=1, ranking="nearest")


def test_mixed_target_ranking_takes_both_rankings_in_turn():
    """linear 1st, logit 1st, linear 2nd, logit 2nd, ...: each class once, the true class last."""
    model = _NearAndLikely()
    x, y = torch.full((3, 1, 2, 2), 0.5), torch.zeros(3, dtype=torch.long)
    mixed = APGD(eps=0.45, targets=2, ranking="mixed")
    linear = APGD(eps=0.45, targets=2, ranking="linear")._target_order(model, x, y)
    order = mixed._target_order(model, x, y)
    assert order[:, :2].tolist() == [[2, 1]] * 3  # the nearest boundary, then the likeliest wrong class
    assert order[:, -1].tolist() == [0] * 3 and linear[:, -1].tolist() == [0] * 3
    assert sorted(order[0].tolist()) == [0, 1, 2, 3]
    assert mixed.name == "apgd_t2_ce_mixed"
    a, b = torch.tensor([[4, 5, 3, 0, 2, 1]]), torch.tensor([[3, 0, 4, 2, 5, 1]])
    assert interleave(a, b).tolist() == [[4, 3, 5, 0, 2, 1]]
