"""``attack_grid``: every attack answers a grid of budgets, and wrappers never hide its kind.

The defect this guards against: a wrapper (``BPDA(FMN)``) hid that its inner attack minimises norms,
so it ran once per eps, recorded no norms, and the audit's refine stage never ran on masked models.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch import nn

from lit_defense.attacks import BPDA, EOT, FGSM, FMN, PGD, Attack, MinNormAttack, Square
from lit_defense.attacks.base import fooled_by
from lit_defense.audit import AttackSuite
from lit_defense.audit.plan import audit_model
from lit_defense.audit.suite import default_attacks
from lit_defense.defenses import BitDepthReduction
from lit_defense.evaluation import robustness_counts
from lit_defense.results import eps_key
from lit_defense.threat import ThreatModel

EPS = [0.05, 0.1, 0.2]


def masked(model: nn.Module) -> nn.Module:
    """The trained model behind a declared non-differentiable defense (4-bit pixels)."""
    return nn.Sequential(BitDepthReduction(bits=4), model).eval()


@pytest.mark.parametrize(
    "make, grid",
    [
        (lambda: FMN(steps=10), True),
        (lambda: BPDA(FMN(steps=10)), True),
        (lambda: PGD(steps=5), False),
        (lambda: BPDA(PGD(steps=5)), False),
        (lambda: EOT(PGD(steps=5), samples=2), False),
        (lambda: FGSM(), False),
    ],
    ids=lambda v: v().name if callable(v) else str(v),
)
def test_attack_grid_answers_every_budget_and_wrappers_keep_the_kind(trained, make, grid):
    model, x, y = trained
    target = masked(model)
    x, y = x[:32], y[:32]
    attack: Attack = make()
    assert attack.answers_grid is grid
    found = attack.attack_grid(target, x, y, EPS)
    assert len(found.points) == len(found.fooled) == len(EPS)
    assert (found.norms is not None) is grid
    for e, points, fooled in zip(EPS, found.points, found.fooled, strict=True):
        threat = ThreatModel(attack.norm, e)
        assert points.shape == x.shape and bool(threat.contains(points, x).all())
        assert torch.equal(fooled, fooled_by(target, threat, points, x, y))
    if grid:
        # one minimisation: fooled at a budget exactly where the norm found lies within it, so the
        # grid is nested (fooled at 0.05 implies fooled at 0.1)
        assert found.norms.shape == (x.shape[0],)
        for small, big in zip(found.fooled, found.fooled[1:], strict=False):
            assert not (small & ~big).any()
        if attack.name.startswith("bpda"):  # plain FMN faces round()'s zero gradient: it may find nothing
            assert found.fooled[-1].any(), "the minimum-norm attack found nothing at eps 0.2 behind BPDA"
    assert all(p.grad is None for p in model.parameters())


def test_a_wrapped_minimum_norm_attack_runs_once_for_the_whole_grid_and_keeps_its_norms(trained):
    model, x, y = trained
    target = masked(model)
    x, y = x[:32], y[:32]
    calls = []
    original = MinNormAttack.min_norms

    def spy(self, *args, **kwargs):
        calls.append(self.name)
        return original(self, *args, **kwargs)

    with mock.patch.object(MinNormAttack, "min_norms", spy):
        _, ex = robustness_counts(target, x, y, [BPDA(FMN(steps=10))], EPS, batch_size=64)
    assert calls == ["fmn"]  # one run answers the three budgets
    norms = ex.min_norm["bpda_fmn"]
    assert norms.shape == (32,) and torch.isfinite(norms).any()
    for e in EPS:
        key = eps_key(e)
        # fooled where the norm found lies inside the budget (among the points attacked)
        inside = ex.clean_correct & (norms <= e * (1 + 1e-5) + 1e-7)
        assert torch.equal(ex.fooled["bpda_fmn"][key] & ex.clean_correct, inside), e


def test_the_audit_refines_behind_bpda_on_a_masked_model(trained):
    """BPDA(FMN)'s norms reach the plan: the refine stage runs on a masked model."""
    model, x, y = trained
    suite = AttackSuite(steps=10, eot_samples=2, square_queries=20, random_samples=2, apgd_steps=5, apgd_targets=1,
                        min_norm_steps=10, rays_queries=0, adequacy_samples=0)
    a = audit_model(masked(model), x[:64], y[:64], [0.1], name="bit_depth", suite=suite, check_samples=32)
    assert "bpda_fmn" in a.roles.cascade
    assert a.roles.refine == ["bpda_refine_apgd_t", "bpda_refine_pgd_margin", "bpda_refine_close_apgd_t1"]
    assert "refine" in a.stages, a.stages
    norms = a.per_sample.min_norm["bpda_fmn"]
    assert norms.shape == (64,) and torch.isfinite(norms).any()
    assert any(r["stage"] == "refine" for r in a.results)


def test_refine_gives_the_near_inputs_autoattacks_targeted_budget():
    """Near the boundary the suite spends AutoAttack's APGD-T budget: every other class, full steps.

    The cascade's APGD-T takes 3 targets and 50 steps; an input of the quick teacher with FMN norm
    1.08 x eps fell to 100 steps and not to 50 (benchmarks/results/vs_autoattack_linf_0.1_before.json).
    """
    suite = AttackSuite()
    roles = default_attacks("linf", suite, masked=False, randomized=False, num_classes=10)
    apgd_t = roles.refine[0]
    assert apgd_t.name == "refine_apgd_t" and apgd_t.targets == 9 and apgd_t.steps == suite.apgd_steps
    assert apgd_t.seed != roles.cascade[1].seed  # fresh starts
    assert default_attacks("linf", suite, masked=False, randomized=True).refine == []
    three = default_attacks("linf", suite, masked=False, randomized=False, num_classes=3).refine[0]
    assert three.targets == 2 and three.loss == "margin"  # DLR-targeted needs four classes
    # the closest survivors: many starts at the top-ranked other class (one in 2.5 found an input
    # AutoAttack fooled by a logit margin of 0.001), off with refine_close_radius 0
    close = roles.refine[-1]
    assert (close.name, close.targets, close.restarts, close.steps) == (
        "refine_close_apgd_t1", 1, 2 * suite.refine_restarts, suite.apgd_steps // 2)
    assert close.seed not in (apgd_t.seed, roles.cascade[1].seed)
    off = default_attacks("linf", AttackSuite(refine_close_radius=0), masked=False, randomized=False, num_classes=10)
    assert [a.name for a in off.refine] == ["refine_apgd_t", "refine_pgd_margin"]


def test_l2_gets_autoattacks_square_budget_and_a_targeted_minimum_norm_attack():
    """At L2 the untargeted FMN and a 1000-query Square missed inputs AutoAttack's FAB-T and
    Square-5000 fooled (quick adversarially trained model, eps 1.0): the suite takes targeted FMN over
    ``min_norm_targets`` classes and ``square_queries_l2`` there; L-inf keeps its own budgets."""
    suite = AttackSuite()
    l2 = default_attacks("l2", suite, masked=False, randomized=False, num_classes=10)
    fmn, square = l2.cascade[-1], next(a for a in l2.black_box if isinstance(a, Square))
    assert (fmn.name, fmn.targets, square.name, square.n_queries) == ("fmn_t9_l2", 9, "square_l2", 5000)
    linf = default_attacks("linf", suite, masked=False, randomized=False, num_classes=10)
    square = next(a for a in linf.black_box if isinstance(a, Square))
    assert (linf.cascade[-1].targets, square.n_queries) == (0, suite.square_queries)
    assert default_attacks("l2", suite, masked=False, randomized=False, num_classes=2).cascade[-1].targets == 0
    assert default_attacks("l2", AttackSuite(min_norm_targets=3), masked=False, randomized=False,
                           num_classes=10).cascade[-1].targets == 3
    off = default_attacks("l2", AttackSuite(square_queries=0), masked=False, randomized=False, num_classes=10)
    assert not any(isinstance(a, Square) for a in off.black_box)
    # a masked model's FMN keeps its targets behind BPDA
    assert default_attacks("l2", suite, masked=True, randomized=False, num_classes=10).cascade[-1].name == "bpda_fmn_t9_l2"


def test_an_l2_audit_runs_the_targeted_fmn_and_square_through_the_plan(trained):
    """The L2 suite end to end: the targeted FMN's norms reach refine and the grid, Square-L2 runs
    on the survivors, and no attack lowers robust accuracy below what its own points show."""
    model, x, y = trained
    suite = AttackSuite(steps=10, square_queries=20, square_queries_l2=30, random_samples=2, apgd_steps=5,
                        apgd_targets=1, min_norm_steps=10, min_norm_targets=2, rays_queries=0, black_box_sample=False, adequacy_samples=0)
    eps = [0.5, 1.0]
    a = audit_model(model, x[:64], y[:64], eps, norm="l2", suite=suite, check_samples=32)
    assert a.roles.cascade[-1] == "fmn_t2_l2" and "square_l2" in a.roles.black_box
    norms = a.per_sample.min_norm["fmn_t2_l2"]
    assert norms.shape == (64,) and torch.isfinite(norms).any()
    assert "black_box_square_l2" in a.stages
    # FMN's norms answer the grid: an input it placed within eps and still counted robust would be a bug
    clean = a.per_sample.clean
    for e in eps:
        inside = clean & (norms <= e * (1 - 1e-4))
        assert not (a.per_sample.robust_to(None, e) & inside).any(), e
    worst = [a.worst_case[eps_key(e)] for e in eps]
    assert worst[1] <= worst[0]


def test_the_close_refine_runs_on_the_closest_survivors_only(trained):
    """``refine_close`` takes the survivors of the refine stage whose FMN norm is within
    ``refine_close_radius`` x eps, and no other input."""
    model, x, y = trained
    eps, close = 0.03, 1.5
    suite = AttackSuite(steps=5, eot_samples=2, square_queries=0, random_samples=0, apgd_steps=5, apgd_targets=1,
                        min_norm_steps=10, rays_queries=0, refine_radius=3.0, refine_close_radius=close, adequacy_samples=0)
    a = audit_model(model, x[:64], y[:64], [eps], name="m", suite=suite, check_samples=16)
    key = eps_key(eps)
    fmn = a.per_sample.min_norm["fmn"]
    fooled = a.per_sample.fooled_by["refine_close_apgd_t1"][key]
    before = a.per_sample.robust[key] | fooled  # robust when the close refine began
    expected = before & (fmn <= close * eps)
    assert int(expected.sum()) > 0  # the test means something: some survivors are that close
    assert a.stages["refine"]["refine_close"]["inputs"] == int(expected.sum())
    assert not (fooled & ~expected).any()
    assert any(r["attack"] == "refine_close_apgd_t1" and r["stage"] == "refine" for r in a.results)
