"""Width instead of depth: lanes side by side, attacks side by side, and the device's policy."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from lit_defense.attacks import APGD, FGSM, FMN, PGD, RandomSampling, Square
from lit_defense.attacks.base import fooled_by, margin_loss
from lit_defense.attacks.wrappers import BPDA, EOT
from lit_defense.cost import CostCounter
from lit_defense.evaluation import Tracking, robustness_counts
from lit_defense.rng import SampleRNG
from lit_defense.side_by_side import SideBySide, side_by_side_ok, value_and_grad
from lit_defense.width import Width, using, width_for

DEEP = Width(elements=1)  # one lane per call: every restart, target and chain one after another


def _model(classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, classes)).eval()


def _data(n: int = 48, classes: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, classes, (n,), generator=g)


def _cost(model: nn.Module, fn):
    with CostCounter().attached(model) as counter:
        out = fn()
    return out, counter.cost


# ------------------------------------------------------------------------------------ policy
def test_the_device_decides_the_policy():
    cpu, gpu = Width.for_device("cpu"), Width.for_device(torch.device("cuda", 0))
    assert cpu.sample_black_box and not gpu.sample_black_box  # rows cost on a CPU, rounds on a GPU
    assert gpu.elements > cpu.elements and cpu.side_by_side and gpu.side_by_side
    assert width_for("cpu") == cpu
    with using(DEEP):
        assert width_for("cpu") == DEEP and width_for("cuda") == DEEP
    assert width_for("cpu") == cpu


def test_lanes_fit_the_elements_a_call_may_carry():
    w = Width(elements=1000)
    assert w.lanes(rows=10, per_row=10, wanted=9) == 9
    assert w.lanes(rows=10, per_row=30, wanted=9) == 3
    assert w.lanes(rows=10, per_row=1000, wanted=9) == 1  # never fewer than one
    assert [list(g) for g in w.groups(10, 30, 7)] == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(Exception, match="elements >= 1"):
        Width(elements=0)


def test_a_lane_is_an_independent_stream_and_lane_0_is_the_plain_one():
    plain = SampleRNG.for_batch(5, 3, "cpu").rand((3, 4))
    lanes = SampleRNG.for_batch(5, 3, "cpu").lanes([0, 1, 2]).rand((9, 4))
    assert torch.equal(lanes[:3], plain)
    assert not torch.equal(lanes[3:6], plain) and not torch.equal(lanes[3:6], lanes[6:])
    # a lane's numbers do not depend on the other lanes beside it, nor on the subset taken
    alone = SampleRNG.for_batch(5, 3, "cpu").lanes([2]).rand((3, 4))
    assert torch.equal(alone, lanes[6:])
    sub = SampleRNG.for_batch(5, 3, "cpu").lanes([0, 1, 2])[torch.tensor([4, 7])].rand((2, 4))
    assert torch.equal(sub, lanes[[4, 7]])


# ------------------------------------------------------------------------- lanes in attacks
@pytest.mark.parametrize(("attack", "lanes"), [
    (PGD(eps=0.1, steps=10, loss="margin", restarts=4, seed=3), 4),
    (APGD(eps=0.1, steps=10, loss="dlr", targets=3, restarts=2, ranking="mixed", seed=3), 6),
    (Square(eps=0.1, n_queries=60, chains=4, seed=3), 4),
], ids=["pgd_restarts", "apgd_targets_restarts", "square_chains"])
def test_lanes_side_by_side_find_what_they_find_one_after_another_in_fewer_rounds(attack, lanes):
    model = _model()
    x, y = _data()
    wide, wide_cost = _cost(model, lambda: attack(model, x, y))
    with using(DEEP):
        deep, deep_cost = _cost(model, lambda: attack(model, x, y))
    fooled_wide, fooled_deep = (fooled_by(model, attack.threat, p, x, y) for p in (wide, deep))
    assert torch.equal(fooled_wide, fooled_deep)
    assert 0 < fooled_wide.sum() < x.shape[0]  # the comparison means something
    assert wide_cost.rounds * 1.5 < deep_cost.rounds
    # width costs rows where a later lane would have been spared (an input the first lane fools at
    # once), never more than every lane on every input
    assert deep_cost.work <= wide_cost.work <= lanes * deep_cost.work
    assert attack.threat.within(attack.threat.distance(wide, x)).all()


def test_random_sampling_draws_the_same_points_whatever_the_width():
    model = _model()
    x, y = _data()
    attack = RandomSampling(eps=0.3, samples=12, seed=2)
    wide, wide_cost = _cost(model, lambda: attack(model, x, y))
    with using(DEEP):
        deep, deep_cost = _cost(model, lambda: attack(model, x, y))
    assert torch.equal(wide, deep) and not torch.equal(wide, x)
    assert wide_cost.rounds < deep_cost.rounds == 12 + 0 * deep_cost.rounds


def test_square_chains_spend_the_same_queries():
    model = _model()
    x, y = _data(8)
    robust = ~fooled_by(model, Square(eps=1e-4).threat, x, x, y)
    one, one_cost = _cost(model, lambda: Square(eps=1e-4, n_queries=40, chains=1)(model, x[robust], y[robust]))
    four, four_cost = _cost(model, lambda: Square(eps=1e-4, n_queries=40, chains=4)(model, x[robust], y[robust]))
    assert one_cost.work == four_cost.work  # nothing fooled at this eps: every query of every chain ran
    assert four_cost.rounds <= one_cost.rounds // 4 + 1
    with pytest.raises(Exception, match="chains"):
        Square(n_queries=10, chains=11)


def test_square_proposals_spend_the_same_queries_in_fewer_rounds_and_keep_the_best():
    model = _model()
    x, y = _data(8)
    robust = ~fooled_by(model, Square(eps=1e-4).threat, x, x, y)
    xr, yr = x[robust], y[robust]
    _, one_cost = _cost(model, lambda: Square(eps=1e-4, n_queries=41)(model, xr, yr))
    _, four_cost = _cost(model, lambda: Square(eps=1e-4, n_queries=41, proposals=4)(model, xr, yr))
    assert one_cost.work == four_cost.work == 41 * int(robust.sum())  # nothing fooled: every query ran
    assert one_cost.rounds == 41 and four_cost.rounds == 11
    # one step: proposal 0 is the plain search's own candidate, so the best of four is never worse
    x, y = _data(64)
    plain, best = Square(eps=0.05, n_queries=2)(model, x, y), Square(eps=0.05, n_queries=5, proposals=4)(model, x, y)
    with torch.no_grad():
        gain = margin_loss(model(best), y) - margin_loss(model(plain), y)
    assert (gain >= -1e-6).all() and (gain > 1e-6).any()
    with pytest.raises(Exception, match="proposals"):
        Square(n_queries=10, chains=2, proposals=2)


# --------------------------------------------------------------------- attacks side by side
def test_attacks_side_by_side_give_the_same_outcome_in_fewer_rounds():
    model = _model(classes=5)
    x, y = _data(90, classes=5)
    for cascade, attacks in [(False, [FGSM(), PGD(steps=8, loss="ce"), PGD(steps=8, loss="margin")]),
                             (True, [APGD(steps=8), APGD(steps=8, loss="dlr", targets=2), FMN(steps=10)])]:
        runs = {}
        for sbs in (False, True):
            (counts, out), cost = _cost(model, lambda sbs=sbs, attacks=attacks, cascade=cascade: robustness_counts(
                model, x, y, attacks, [0.01, 0.03], 32, cascade=cascade, nested=cascade,
                tracking=Tracking(side_by_side=sbs)))
            runs[sbs] = (counts, out, cost)
        (c0, o0, k0), (c1, o1, k1) = runs[False], runs[True]
        assert torch.equal(c0.robust, c1.robust) and torch.equal(c0.worst, c1.worst)
        assert {a: {e: m.tolist() for e, m in d.items()} for a, d in o0.fooled.items()} == \
            {a: {e: m.tolist() for e, m in d.items()} for a, d in o1.fooled.items()}
        assert 0 < int(c1.worst[-1]) < int(c1.clean)  # some fooled, some not
        assert k1.rounds < 0.6 * k0.rounds


def test_attacks_that_wrap_the_model_never_run_side_by_side():
    plain = [FGSM(), PGD(steps=4), APGD(steps=4, targets=2), FMN(steps=4)]
    assert side_by_side_ok(plain)
    assert not side_by_side_ok([*plain, BPDA(PGD(steps=4))])
    assert not side_by_side_ok([EOT(PGD(steps=4), samples=2)])
    assert not side_by_side_ok([PGD(steps=4).for_eot(4)])


def test_an_error_in_one_run_reaches_the_caller_and_the_others_finish():
    model = _model()
    x, _ = _data(4)
    finished = threading.Event()

    def good(m):
        for _ in range(5):
            value_and_grad(m, x, lambda out: out.sum(1))
        finished.set()
        return "ok"

    def bad(m):
        m(x)
        raise ValueError("broken run")

    with pytest.raises(ValueError, match="broken run"):
        SideBySide(model).run([good, bad, good])
    assert finished.is_set()
    assert SideBySide(model).run([good, good]) == ["ok", "ok"]


def test_an_interrupted_caller_ends_every_run_before_it_goes_on():
    """Ctrl-C or SIGTERM in the caller's thread: no run is left inside torch (at exit, that aborts the process)."""
    import _thread

    model = _model()
    x, _ = _data(4)
    calls, runs = [], set()
    started = threading.Event()

    def endless(m):
        runs.add(threading.current_thread())
        while True:
            calls.append(1)
            started.set()
            value_and_grad(m, x, lambda out: out.sum(1))

    threading.Timer(0.0, lambda: (started.wait(10), _thread.interrupt_main())).start()
    with pytest.raises(KeyboardInterrupt):
        SideBySide(model).run([endless, endless, endless])
    done = len(calls)
    assert done > 0 and runs and not any(t.is_alive() for t in runs)
    assert not [t for t in threading.enumerate() if t.name.endswith("(go)")]  # a run not yet started neither
    assert len(calls) == done  # nothing runs on after the caller went on


def test_side_by_side_calls_share_rounds_and_give_each_run_its_own_rows():
    model = _model()
    x, _ = _data(6)
    parts = [x[:2], x[2:3], x[3:]]
    alone = [value_and_grad(model, p, lambda out: out[:, 0]) for p in parts]
    shared, cost = _cost(model, lambda: SideBySide(model).run(
        [lambda m, p=p: value_and_grad(m, p, lambda out: out[:, 0]) for p in parts]))
    assert cost.rounds == 2 and cost.work == 2 * x.shape[0]  # one forward and one backward for all three
    for (la, va, ga), (lb, vb, gb) in zip(alone, shared, strict=True):
        assert torch.allclose(la, lb, atol=1e-6) and torch.allclose(va, vb, atol=1e-6)
        assert torch.allclose(ga, gb, atol=1e-6)
