"""Per-sample random numbers: batching and sharding do not change which noise a sample sees."""

from __future__ import annotations

import pytest
import torch

from lit_defense.attacks import APGD, PGD, RandomSampling, Square
from lit_defense.evaluation import Tracking, robustness_counts
from lit_defense.rng import SampleRNG


def test_a_sample_draws_the_same_numbers_in_any_batch_and_subset():
    whole = SampleRNG.for_batch(7, 6, "cpu")
    pair = SampleRNG(7, torch.tensor([4, 1]))
    assert torch.equal(whole.rand((6, 3, 2))[[4, 1]], pair.rand((2, 3, 2)))
    # a subset shares its batch's counter: sample 4's second draw is the same from either batch
    second = whole[torch.tensor([4])].randn((1, 5))
    assert torch.equal(second, pair[torch.tensor([0])].randn((1, 5)))
    assert not torch.equal(SampleRNG(8, torch.tensor([4])).rand((1, 3)), SampleRNG(7, torch.tensor([4])).rand((1, 3)))


def test_the_numbers_look_uniform_normal_and_fair():
    rng = SampleRNG.for_batch(0, 2000, "cpu")
    u = rng.rand((2000, 100))
    assert 0 <= float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.01
    n = rng.randn((2000, 100))
    assert abs(float(n.mean())) < 0.02 and abs(float(n.std()) - 1) < 0.02
    counts = torch.bincount(rng.randint(0, 5, (2000, 50)).flatten(), minlength=5).double()
    assert float(counts.min() / counts.max()) > 0.95
    with pytest.raises(ValueError, match="draw for 3 samples"):
        rng.rand((3, 1))


@pytest.mark.parametrize("attack", [
    PGD(eps=0.1, steps=5, restarts=2, random_start=True),
    APGD(eps=0.1, steps=5, loss="dlr", targets=2),
    Square(eps=0.1, n_queries=30),
    RandomSampling(eps=0.1, samples=5),
], ids=lambda a: a.name)
def test_an_attack_gives_each_sample_the_same_output_alone_or_in_a_batch(trained, attack):
    model, x, y = trained
    x, y = x[:12], y[:12]
    together = attack(model, x, y)
    ids = torch.arange(12)
    halves = torch.cat([attack(model, x[0::2], y[0::2], ids[0::2]), attack(model, x[1::2], y[1::2], ids[1::2])])
    order = torch.cat([ids[0::2], ids[1::2]])
    assert torch.allclose(halves, together[order], atol=1e-6)


def test_sharded_evaluation_equals_the_whole_one(trained):
    model, x, y = trained
    attacks = [PGD(steps=5, random_start=True, loss="margin"), Square(n_queries=20), RandomSampling(samples=3)]
    x, y = x[:40], y[:40]
    _, whole = robustness_counts(model, x, y, attacks, [0.05, 0.1], batch_size=7)
    ids = torch.arange(40)
    parts = [robustness_counts(model, x[r::3], y[r::3], attacks, [0.05, 0.1], batch_size=5,
                              tracking=Tracking(ids=ids[r::3]))[1]
             for r in range(3)]
    for key, mask in whole.robust.items():
        merged = torch.zeros(40, dtype=torch.bool)
        for r, part in enumerate(parts):
            merged[r::3] = part.robust[key]
        assert torch.equal(merged, mask)


def test_a_randomized_model_audits_the_same_whatever_ran_before_and_the_callers_generator_is_kept(trained):
    """A randomized defence draws from torch's global generator: the audit forks it and seeds it from
    its own seed, so what ran before does not change the model's numbers, and the caller's
    generator is left where it was."""
    from torch import nn

    from lit_defense.audit import AttackSuite, audit_model
    from lit_defense.defenses import GaussianNoise

    model, x, y = trained
    noisy = nn.Sequential(GaussianNoise(sigma=0.3), model).eval()
    x, y = x[:24], y[:24]
    suite = AttackSuite(steps=3, eot_samples=2, square_queries=10, random_samples=2, apgd_steps=0,
                        min_norm_steps=0, rays_queries=0, adequacy_samples=0)
    reports = []
    for draws_before in (0, 1000):
        torch.manual_seed(1)
        torch.rand(draws_before)  # whatever else ran in the process
        state = torch.get_rng_state()
        a = audit_model(noisy, x, y, [0.1], suite=suite, check_samples=24, keep_examples=0)
        assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is untouched
        reports.append(a)
    assert not next(c for c in reports[0].gradient_masking.checks if c.name == "randomized_outputs").passed
    first, second = (r.per_sample.to_dict() for r in reports)
    assert first == second and reports[0].clean_accuracy == reports[1].clean_accuracy
    other = audit_model(noisy, x, y, [0.1], suite=suite, check_samples=24, keep_examples=0, seed=1)
    assert other.per_sample.to_dict() != first  # another seed draws other noise
