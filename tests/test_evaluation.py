from __future__ import annotations

import json

import pytest
import torch
from conftest import ScaledLogits

from lit_defense.attacks import FGSM, PGD
from lit_defense.errors import ConfigError
from lit_defense.evaluation import (
    WORST,
    RobustnessResult,
    eps_key,
    evaluate_robustness,
    robustness_counts,
)


def test_cascade_is_cumulative_and_worst_is_the_minimum(trained):
    model, x, y = trained
    x, y = x[:64], y[:64]
    attacks = [FGSM(), PGD(steps=5, loss="ce"), PGD(steps=5, loss="margin")]
    cascade = evaluate_robustness(model, x, y, attacks, eps=[0.05, 0.1], cascade=True)
    alone = evaluate_robustness(model, x, y, attacks, eps=[0.05, 0.1], cascade=False)
    for key in (eps_key(0.05), eps_key(0.1)):
        chain = [cascade.robust_accuracy[a.name][key] for a in attacks]
        assert chain == sorted(chain, reverse=True)  # non-increasing
        assert cascade.robust_accuracy[WORST][key] == chain[-1]
        own = [alone.robust_accuracy[a.name][key] for a in attacks]
        assert alone.robust_accuracy[WORST][key] <= min(own)
        assert all(o <= alone.clean_accuracy for o in own)
        # the per-sample worst case is the same quantity in both modes (deterministic attacks)
    assert cascade.clean_accuracy == alone.clean_accuracy
    assert alone.robust_accuracy["fgsm"][eps_key(0.1)] >= cascade.robust_accuracy[WORST][eps_key(0.1)]


def test_result_serialises_to_json_and_metric_names(trained):
    model, x, y = trained
    result = evaluate_robustness(model, x[:32], y[:32], [FGSM()], eps=[0.1])
    data = json.loads(result.to_json())
    assert RobustnessResult.from_dict(data) == result
    assert set(result.metrics()) == {"adv/fgsm/eps=0.1/acc", "adv/worst/eps=0.1/acc"}


def test_shard_counts_add_up_to_the_whole(trained):
    """What DDP relies on: counts of two shards sum to the counts of the whole set."""
    model, x, y = trained
    x, y = x[:60], y[:60]
    attacks = [FGSM(), PGD(steps=3, random_start=False)]
    whole, _ = robustness_counts(model, x, y, attacks, [0.05, 0.1])
    a, _ = robustness_counts(model, x[0::2], y[0::2], attacks, [0.05, 0.1])
    b, _ = robustness_counts(model, x[1::2], y[1::2], attacks, [0.05, 0.1])
    from lit_defense.metrics import RobustAccuracy

    summed = RobustAccuracy(attacks, [0.05, 0.1])  # what the callback's metric sums over ranks
    summed.add_counts(a)
    summed.add_counts(b)
    for field in ("n", "clean", "robust", "worst"):
        assert torch.equal(getattr(summed, field), getattr(whole, field)), field


def test_examples_are_the_worst_case_inputs(trained):
    model, x, y = trained
    counts, ex = robustness_counts(model, x[:16], y[:16], [PGD(steps=5, loss="margin")], [1.0], keep_examples=4)
    adv = ex.examples.adv[eps_key(1.0)]
    assert adv.shape == (4, 1, 28, 28)
    assert torch.equal(ex.examples.pred[eps_key(1.0)] != ex.examples.y, torch.ones(4, dtype=torch.bool))


def test_points_outside_the_threat_model_do_not_count():
    """A 'perturbation' that leaves the ball is rejected even if it fools the model."""
    from lit_defense.attacks.base import Attack

    class Cheat(Attack):
        def perturb(self, model, x, y, generator):
            return torch.zeros_like(x)

        def __call__(self, model, x, y, ids=None):  # skips the projection every attack's __call__ makes
            return self.perturb(model, x, y, None)

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 1, 1, 1], [-1, -1, -1, -1]]))
        model[1].bias.zero_()
    x = torch.full((3, 1, 2, 2), 0.9)
    y = torch.zeros(3, dtype=torch.long)
    result = evaluate_robustness(model, x, y, [Cheat(eps=0.1)], eps=[0.1])
    assert result.worst(0.1) == 1.0


def test_bad_evaluation_settings():
    with pytest.raises(ConfigError, match="unique"):
        evaluate_robustness(torch.nn.Identity(), torch.rand(2, 1, 4, 4), torch.zeros(2, dtype=torch.long),
                            [FGSM(), FGSM()], eps=[0.1])
    with pytest.raises(ConfigError, match="impossible"):
        evaluate_robustness(torch.nn.Identity(), torch.rand(2, 1, 4, 4), torch.zeros(2, dtype=torch.long),
                            [FGSM()], eps=[2.0])
    with pytest.raises(ConfigError, match="share a threat model"):
        evaluate_robustness(torch.nn.Identity(), torch.rand(2, 1, 4, 4), torch.zeros(2, dtype=torch.long),
                            [FGSM(), FGSM(norm="l2", eps=1.0)], eps=[0.1])


def test_ce_attack_on_saturated_model_reports_false_robustness(trained):
    """The product's reason to exist, as a regression test: CE-PGD says robust, margin-PGD says not."""
    model, x, y = trained
    scaled = ScaledLogits(model, 1000.0)
    result = evaluate_robustness(scaled, x[:64], y[:64], [PGD(steps=10, loss="ce"), PGD(steps=10, loss="margin")],
                                 eps=[0.1], cascade=False)
    ce, margin = result.robust_accuracy["pgd_ce"]["0.1"], result.robust_accuracy["pgd_margin"]["0.1"]
    assert ce - margin > 0.3, (ce, margin)


def test_attacks_never_see_an_empty_batch(trained):
    """Once every point is fooled, later attacks of the cascade are not called on an empty batch
    (a model with a resize inside fails on one)."""
    model, x, y = trained

    class NoEmpty(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            if x.shape[0] == 0:
                raise ValueError("empty batch")
            return self.inner(x)

    guarded = NoEmpty(model).eval()
    result = evaluate_robustness(guarded, x[:16], y[:16], [PGD(steps=10, loss="margin"), FGSM(name="after")],
                                 eps=[1.0])
    assert result.worst(1.0) == 0.0


class _CountingPGD(PGD):
    """PGD that counts the inputs it is asked to attack at each eps (class-level log)."""

    seen: list[tuple[float, int]] = []

    def perturb(self, model, x, y, generator):
        _CountingPGD.seen.append((self.eps, x.shape[0]))
        return super().perturb(model, x, y, generator)


def test_nested_cascade_skips_inputs_fooled_at_a_smaller_eps_and_keeps_the_worst_case(trained):
    model, x, y = trained
    x, y = x[:96], y[:96]
    attacks = [_CountingPGD(steps=5, loss="margin", name="pgd_margin_counted"), PGD(steps=5, loss="ce")]
    eps = [0.02, 0.05, 0.1]
    _CountingPGD.seen = []
    _, plain = robustness_counts(model, x, y, attacks, eps, cascade=True)
    plain_seen = list(_CountingPGD.seen)
    _CountingPGD.seen = []
    _, nested = robustness_counts(model, x, y, attacks, eps, cascade=True, nested=True)
    for small, big in zip(eps, eps[1:], strict=False):
        # every input fooled at the smaller eps is fooled at the larger one
        assert not bool((~nested.robust[eps_key(small)] & nested.clean_correct
                         & nested.robust[eps_key(big)]).any())
    for e in eps:  # never weaker than the plain cascade
        assert int(nested.robust[eps_key(e)].sum()) <= int(plain.robust[eps_key(e)].sum())
    # at the larger eps the attack skipped the inputs it had fooled at a smaller one
    attacked = lambda seen, e: sum(n for s, n in seen if s == e)  # noqa: E731
    assert attacked(_CountingPGD.seen, 0.1) < attacked(plain_seen, 0.1)
    assert attacked(_CountingPGD.seen, 0.02) == attacked(plain_seen, 0.02)
