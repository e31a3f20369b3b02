"""A randomized model is judged in expectation over its own randomness (issue: honest numbers for randomized models).

- the interval of an expected accuracy covers the truth ~95% of the time (simulated models whose
  expectation is known, through ``Judge``);
- the paired rule on expectations is McNemar's on 0/1 outcomes and keeps its error rate on
  expectations;
- at an eps below half a gray level (no pixel can change) the audit's worst case equals the clean
  accuracy within its interval: random resize-pad (the shipped recipe, trained briefly), Gaussian
  noise, and a model that answers a random class whatever the input;
- a robust model wrapped to answer a uniformly random class with probability 0.25 gets about
  0.025 + 0.75 x the robust model's own worst case.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from lit_defense.judge import Judge
from lit_defense.stats import MeanEstimate, Paired, paired, upper_bound

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))


# ------------------------------------------------------------------------------- the interval
class KnownRandomModel(nn.Module):
    """Classifies input ``i`` (its id in pixel 0) correctly with probability ``p[i]``, a fresh draw per pass."""

    def __init__(self, p: torch.Tensor, classes: int = 10) -> None:
        super().__init__()
        self.p, self.classes = p, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = x[:, 0, 0, 0].round().long()
        right = torch.rand(x.shape[0]) < self.p[i]
        label = torch.where(right, torch.zeros_like(i), torch.ones_like(i))  # the true class is 0
        return nn.functional.one_hot(label, self.classes).float()


SCENARIOS = {  # per-input expected accuracies of a population (their mean is the truth)
    "bimodal": lambda r: 0.97 if r.random() < 0.7 else 0.05,
    "uniform": lambda r: r.random(),
    "all_equal": lambda r: 0.775,
    "nearly_always_wrong": lambda r: 0.02 if r.random() < 0.9 else 0.6,
    "nearly_always_right": lambda r: 1.0 if r.random() < 0.8 else 0.9,
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_expected_accuracy_interval_covers_the_truth(scenario):
    """Each repetition draws fresh inputs from the population and judges them with ``Judge``; the
    95% interval (effective sample size) must cover the population's mean at least ~95% of the time."""
    rng = random.Random(sum(map(ord, scenario)))
    draw = SCENARIOS[scenario]
    truth = sum(draw(random.Random(10_000 + i)) for i in range(200_000)) / 200_000
    torch.manual_seed(0)
    covered, reps = 0, 500
    for rep in range(reps):
        n, draws = (60, 4) if rep % 2 else (200, 10)
        p = torch.tensor([draw(rng) for _ in range(n)])
        x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
        rates = Judge(draws).rates(KnownRandomModel(p), x, torch.zeros(n, dtype=torch.long))
        lo, hi = MeanEstimate.of(rates, draws).ci
        covered += lo <= truth <= hi
    # about 95%: at least 93%, and not significantly below 95% (exact one-sided test at 1%)
    assert covered / reps >= 0.93 and upper_bound(covered, reps, 0.01) >= 0.95, (scenario, truth, covered / reps)


def test_one_draw_per_input_is_the_exact_interval_of_k_over_n():
    from lit_defense.stats import clopper_pearson

    for k, n in ((330, 400), (0, 50), (50, 50), (7, 200)):
        est = MeanEstimate.of([1.0] * k + [0.0] * (n - k), draws=1)
        assert est.n_effective == n
        assert est.ci == pytest.approx(clopper_pearson(k, n))


def test_draws_that_agree_narrow_the_interval_never_below_one_draw_per_input():
    coin = MeanEstimate.of([0.5] * 400, draws=16)  # all inputs alike: the draws carry the information
    assert coin.n_effective == 400 * 16
    spread = MeanEstimate.of([0.0, 1.0] * 200, draws=16)  # the inputs differ: no narrower than one draw each
    assert spread.n_effective == 400
    assert spread.ci == pytest.approx(MeanEstimate.of([0.0, 1.0] * 200, draws=1).ci)


# ------------------------------------------------------------------------------- the paired rule
def test_the_paired_rule_on_expectations_is_mcnemar_on_0_1_outcomes():
    a = torch.tensor([1, 1, 0, 0, 1, 0, 1, 1], dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 0, 0, 0, 1, 0], dtype=torch.bool)
    assert paired(a, b) == paired(a.float(), b.float()) == Paired(3, 1, 8)
    gen = torch.Generator().manual_seed(0)
    exp_a, exp_b = torch.rand(200, generator=gen), torch.rand(200, generator=gen) ** 2
    pair = paired(exp_a, exp_b)  # the expected discordant counts, each rounded
    assert pair.difference == pytest.approx(float((exp_a - exp_b).double().mean()), abs=1 / 200)
    assert pair.b == round(float((exp_a.double() * (1 - exp_b.double())).sum()))


def test_the_paired_rule_keeps_its_error_rate_on_expectations():
    """Two attacks whose points have the same expected accuracy: the rule fails a 0-gap threshold at
    most about as often as its one-sided alpha says (it is conservative on means of several draws)."""
    rng = random.Random(1)
    fails, reps = 0, 400
    for _ in range(reps):
        p = [rng.choice((0.05, 0.5, 0.95)) for _ in range(150)]
        a = [sum(rng.random() < q for _ in range(8)) / 8 for q in p]
        b = [sum(rng.random() < q for _ in range(8)) / 8 for q in p]
        fails += paired(torch.tensor(a), torch.tensor(b)).decide(0.0).state == "fail"
    assert fails / reps <= 0.02


# ------------------------------------------------------------------------------- the audit
class RandomClass(nn.Module):
    """``model``, but with probability ``p`` on each pass an input gets a uniformly random class, whatever it is."""

    def __init__(self, model: nn.Module, p: float = 0.25, classes: int = 10) -> None:
        super().__init__()
        self.model, self.p, self.classes = model, p, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        flip = torch.rand(x.shape[0], device=x.device) < self.p
        noise = nn.functional.one_hot(torch.randint(0, self.classes, (x.shape[0],), device=x.device), self.classes)
        return logits + flip[:, None] * noise.float() * 1e3


SMALL = dict(steps=5, apgd_steps=5, apgd_targeted_steps=5, min_norm_steps=5, square_queries=30, random_samples=10,
             eot_samples=3, refine_restarts=0, adequacy_samples=0)  # the positive control: tests/test_adequacy.py


@pytest.fixture(scope="module")
def tiny():
    from toy_models import train_tiny_net

    from lit_defense.data import VisionDataModule

    dm = VisionDataModule("synthetic", synthetic_train_size=1024, synthetic_test_size=96, synthetic_noise=0.4, val_size=64)
    dm.setup("fit")
    dm.setup("test")
    net = train_tiny_net(dm.train_set.images.float() / 255, dm.train_set.labels, epochs=3).eval().requires_grad_(False)
    return net, dm.test_set.images.float() / 255, dm.test_set.labels


def _audit(model, x, y, eps):
    from lit_defense.audit.plan import audit_model
    from lit_defense.audit.suite import AttackSuite

    return audit_model(model, x, y, eps, suite=AttackSuite(**SMALL), check_samples=48, keep_examples=0)


def _equal_within_interval(audit, eps_key):
    """The worst case at ``eps_key`` is the clean accuracy: not significantly lower (the paired rule on
    expectations), and the clean accuracy lies in the worst case's interval."""
    res = audit.per_sample
    decision = paired(res.expected_clean(), res.expected_to(None, float(eps_key))).decide(0.0)
    lo, hi = audit.estimate(audit.worst_case[eps_key], eps_key).ci
    assert decision.state != "fail", (audit.clean_accuracy, audit.worst_case, decision.evidence())
    assert lo <= audit.clean_accuracy <= hi, (audit.clean_accuracy, audit.worst_case[eps_key], (lo, hi))


@pytest.mark.numeric_path
def test_null_eps_random_class_model_keeps_its_clean_accuracy(tiny):
    net, x, y = tiny
    audit = _audit(RandomClass(net).eval(), x, y, [1e-4])
    assert audit.expected is not None and audit.expected["draws"] >= 4
    _equal_within_interval(audit, "0.0001")


@pytest.mark.numeric_path
def test_null_eps_gaussian_noise_keeps_its_clean_accuracy(tiny):
    from lit_defense.defenses import GaussianNoise

    net, x, y = tiny
    audit = _audit(nn.Sequential(GaussianNoise(sigma=0.3), net).eval(), x, y, [1e-4])
    assert audit.expected is not None
    _equal_within_interval(audit, "0.0001")


@pytest.mark.numeric_path
def test_null_eps_shipped_random_resize_pad_recipe_keeps_its_clean_accuracy(tiny):
    """The recipe's defense and backbone (configs/fashion_mnist/masked_random_resize_pad.yaml), trained briefly."""
    import lightning as L

    from lit_defense.data import VisionDataModule
    from lit_defense.modules import MaskedClassifier

    recipe = yaml.safe_load((TESTS.parent / "configs/fashion_mnist/masked_random_resize_pad.yaml").read_text())
    args = recipe["model"]["init_args"]
    L.seed_everything(0)
    dm = VisionDataModule("synthetic", synthetic_train_size=512, synthetic_test_size=64, synthetic_noise=0.4,
                          val_size=64, batch_size=64)
    model = MaskedClassifier(defense=args["defense"], backbone=args["backbone"], mean=dm.mean, std=dm.std)
    L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(model, dm)
    dm.setup("test")
    audit = _audit(model.eval(), dm.test_set.images.float() / 255, dm.test_set.labels, [1e-4])
    assert audit.expected is not None
    _equal_within_interval(audit, "0.0001")


@pytest.mark.numeric_path
def test_a_random_class_wrapper_costs_what_its_randomness_costs_and_no_more(tiny):
    """With probability 0.25 a uniformly random class: the expected robust accuracy is about
    0.025 + 0.75 x the robust model's own (right 1/10 of the random answers, 3/4 of the time its own)."""
    net, x, y = tiny
    eps = [0.05]
    base = _audit(net, x, y, eps)
    wrapped = _audit(RandomClass(net).eval(), x, y, eps)
    expected = 0.025 + 0.75 * base.worst_case["0.05"]
    assert wrapped.worst_case["0.05"] == pytest.approx(expected, abs=0.05), (base.worst_case, wrapped.worst_case)
    assert wrapped.clean_accuracy == pytest.approx(0.025 + 0.75 * base.clean_accuracy, abs=0.05)
    # the report carries both views, each with its interval
    data = wrapped.to_dict()
    assert data["worst_case"]["0.05"]["draws"] == wrapped.expected["draws"]
    vote = wrapped.expected["majority_vote"]["0.05"]["value"]
    assert vote >= wrapped.worst_case["0.05"]  # a vote over draws undoes most of the random answers
    # a deterministic model needs one draw and keeps its exact intervals
    assert base.expected is None and base.per_sample.draws == 1


def test_a_resumed_randomized_audit_reads_its_expectations_back(tiny, tmp_path):
    """Every judged unit is recorded with its selected and measured expectations: an audit resumed
    from its log attacks nothing again and reports the same numbers; a record without them (an older
    version's) is attacked again rather than read as "not attacked"."""
    from lit_defense.audit import AuditRuntime
    from lit_defense.audit.plan import audit_model
    from lit_defense.audit.progress import ProgressLog
    from lit_defense.audit.suite import AttackSuite

    net, x, y = tiny
    model, x, y = RandomClass(net).eval(), x[:32], y[:32]

    def run():
        return audit_model(model, x, y, [0.05], suite=AttackSuite(**SMALL), check_samples=16, keep_examples=0,
                           runtime=AuditRuntime(log=ProgressLog(tmp_path, 0).load()))

    first, again = run(), run()
    assert again.expected == first.expected and again.worst_case == first.worst_case
    lines = (tmp_path / "progress" / "rank-0.jsonl").read_text().splitlines()
    assert any('"selected"' in line for line in lines)
    # an older version's record (no expectations): those units are attacked and judged again
    import json

    old = []
    for line in lines:
        row = json.loads(line)
        if isinstance(row.get("values"), dict):
            for key in [k for k in row["values"] if k.startswith(("selected", "measured"))]:
                del row["values"][key]
        old.append(json.dumps(row))
    (tmp_path / "progress" / "rank-0.jsonl").write_text("\n".join(old) + "\n")
    run()
    rerun = (tmp_path / "progress" / "rank-0.jsonl").read_text().splitlines()[len(old):]
    assert any('"selected"' in line for line in rerun)
