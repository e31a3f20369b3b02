"""Rounds and work: what attacking a model costs, counted the same for the audit and for a reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_defense.attacks import APGD, PGD
from lit_defense.audit import AttackSuite, audit_model
from lit_defense.audit.context import AuditRuntime
from lit_defense.audit.display import AuditProgress
from lit_defense.cost import Cost, CostCounter


class _CountBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, owner):
        ctx.owner = owner
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.owner.backward_calls += 1
        ctx.owner.backward_rows += grad.shape[0]
        return grad, None


class SelfCounting(nn.Module):
    """A model that counts its own forward and backward passes (an independent reference)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        self.forward_calls = self.forward_rows = self.backward_calls = self.backward_rows = 0

    def forward(self, x):
        self.forward_calls += 1
        self.forward_rows += x.shape[0]
        out = self.net(x)
        return _CountBackward.apply(out, self) if out.requires_grad else out


@pytest.mark.parametrize("attack", [PGD(eps=1e-3, steps=5, loss="margin"), APGD(eps=1e-3, steps=6, loss="ce")],
                         ids=["pgd", "apgd"])
def test_the_counter_agrees_with_the_model_s_own_count(attack):
    model = SelfCounting().eval()
    x = torch.rand(12, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)  # correct, and a budget too small to fool: every step runs
    model.forward_calls = model.forward_rows = 0
    with CostCounter().attached(model) as counter:
        attack(model, x, y)
    cost = counter.cost
    assert cost.rounds == model.forward_calls + model.backward_calls > 0
    assert cost.forward_rows == model.forward_rows and cost.backward_rows == model.backward_rows
    assert cost.work == model.forward_rows + model.backward_rows
    assert model.backward_calls >= 5  # a gradient attack goes backward every step


def test_the_hook_is_gone_after_the_block_even_on_error():
    model = nn.Linear(3, 2)
    with pytest.raises(RuntimeError), CostCounter().attached(model):
        assert model._forward_hooks
        raise RuntimeError("stop")
    assert not model._forward_hooks
    counter = CostCounter()
    model(torch.zeros(5, 3))  # not attached: not counted
    assert counter.cost == Cost()


def test_the_audit_reports_rounds_and_work_per_stage_and_in_total(trained):
    model, x, y = trained
    lines: list[str] = []
    suite = AttackSuite(steps=5, apgd_steps=5, apgd_targets=1, apgd_targeted_steps=5, min_norm_steps=5,
                        min_norm_targets=1, square_queries=20, random_samples=5, rays_queries=20, adequacy_samples=0)
    audit = audit_model(model, x[:48], y[:48], [0.1], "linf", name="m", suite=suite, check_samples=16,
                        runtime=AuditRuntime(progress=AuditProgress(1, log=lines.append)))
    stages = audit.cost["stages"]
    assert {"probe", "white_box"} <= set(stages)
    assert all(v["rounds"] >= 0 and v["work"] >= v["rounds"] for v in stages.values())
    assert stages["white_box"]["rounds"] > 0
    total = audit.cost
    assert set(stages) <= {"probe", "white_box", "cascade", "black_box", "refine", "adequacy", "checks"}
    assert total["rounds"] >= sum(v["rounds"] for v in stages.values())
    assert total["work"] == total["forward_rows"] + total["backward_rows"]
    assert any(" rounds, " in line and "white_box" in line for line in lines), lines
    assert audit.to_dict()["cost"] == total
