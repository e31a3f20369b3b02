"""The stages that end the default plan: the positive control and the checklist.

``AdequacyStage`` (``--suite.adequacy_samples`` > 0): the binarization test (``lit_defense.adequacy``)
on a seeded subset of the inputs robust at the middle eps, with the audit's own attacks built for
two classes; its rate is the check ``attack_inadequate``. ``ChecksStage``: the attacks the
checklist's evaluation checks need (an unbounded naive attack, a PGD at twice the steps, first- vs
last-iterate) on the first ``check_samples`` inputs, then the checklist itself, pure functions of
the per-sample outcome (``lit_defense.diagnostics``).
"""

from __future__ import annotations

from typing import Any

import torch

from lit_defense.attacks import PGD, RandomSampling
from lit_defense.audit.context import AuditContext
from lit_defense.audit.stages import AuditStage
from lit_defense.audit.suite import default_attacks
from lit_defense.diagnostics.checklist import (
    ChecklistAttacks,
    check_attack_inadequate,
    outcome_checks,
)
from lit_defense.evaluation import Tracking, robustness_counts
from lit_defense.results import eps_key


class AdequacyStage(AuditStage):
    """The positive control: the binarization test on inputs robust at the middle eps, one record per input."""

    name = "adequacy"

    def applies(self, ctx: AuditContext) -> bool:
        """When ``--suite.adequacy_samples`` > 0."""
        return ctx.options.suite.adequacy_samples > 0

    def inputs(self, ctx: AuditContext) -> torch.Tensor:
        """A seeded subset of the inputs robust at the middle eps."""
        candidates = ctx.res.robust_to(None, ctx.main_eps).nonzero().squeeze(1)
        order = torch.randperm(candidates.numel(), generator=torch.Generator().manual_seed(ctx.options.seed))
        return candidates[order[:ctx.options.suite.adequacy_samples]].sort().values

    def run(self, ctx: AuditContext) -> None:
        """Find the binarized model's readout once (a randomized model draws on it), then shard, test, fold."""
        from lit_defense.adequacy import find_readout

        ctx.found["adequacy_readout"] = find_readout(ctx.model, ctx.x[:1])
        super().run(ctx)

    def work(self, ctx: AuditContext, ids: torch.Tensor, record: Any) -> dict[str, Any]:
        """The test on each of this process's inputs not recorded yet (each finished input is recorded)."""
        from lit_defense.adequacy import BinarizationSettings, binarization_test, suite_attacks

        opts, probe, pool = ctx.options, ctx.probe, ids.cpu()
        roles = default_attacks(opts.norm, opts.suite, probe.masked, probe.randomized, opts.seed, opts.extra_attacks,
                                broken_gradients=probe.broken, num_classes=2)
        done = {i: record.get("binarization", [i]) if record is not None else None for i in pool.tolist()}
        todo = torch.tensor([i for i, v in done.items() if v is None], dtype=torch.long)

        def keep(sid: int, valid: bool, passed: bool, reason: str) -> None:
            done[sid] = {"valid": [valid], "passed": [passed], "reason": [reason]}
            if record is not None:
                record.put("binarization", [sid], done[sid])

        on = todo.to(ctx.x.device)
        # a randomized model's inner points cost `draws` passes each: 300 (the test then ~2 s an input)
        settings = BinarizationSettings(inner_points=300 if probe.randomized else 1000, seed=opts.seed)
        binarization_test(ctx.model, ctx.x[on], ctx.y[on], suite_attacks(roles), ctx.main_eps, opts.norm, ids=todo,
                          settings=settings, readout=ctx.found["adequacy_readout"], on_input=keep)
        rows = [done[i] for i in pool.tolist()]
        return {"valid": torch.tensor([r["valid"][0] for r in rows], dtype=torch.bool),
                "passed": torch.tensor([r["passed"][0] for r in rows], dtype=torch.bool),
                "trivial": torch.tensor([r["reason"][0] == "trivial" for r in rows], dtype=torch.bool)}

    def fold(self, ctx: AuditContext, found: dict[str, Any]) -> None:
        """The test's result over every process's inputs (``ctx.found["adequacy"]``, ``ModelAudit.adequacy``)."""
        from lit_defense.adequacy import AdequacyResult

        chosen = self.inputs(ctx)

        def at_chosen(key: str) -> list[bool]:  # every process's inputs, gathered over all inputs
            return found[key][chosen].tolist() if key in found else [False] * len(chosen)

        valid, passed, trivial = at_chosen("valid"), at_chosen("passed"), at_chosen("trivial")
        reasons = ["" if v else "trivial" if t else "not_separable" for v, t in zip(valid, trivial, strict=True)]
        readout = ctx.found.pop("adequacy_readout")
        result = AdequacyResult(ctx.main_eps, chosen.tolist(), valid, passed, reasons, features=readout.kind,
                                note=readout.note)
        ctx.found[self.name] = {**result.to_dict(), "ids": chosen.tolist()}


class ChecksStage(AuditStage):
    """The checklist's own attacks on the first ``check_samples`` inputs, then every check of the checklist."""

    name, share = "checks", 0.10

    def _plan(self, ctx: AuditContext) -> tuple[ChecklistAttacks, list]:
        """The checklist's attacks, and those whose outcome the white-box stage already has.

        The probe is the white-box margin PGD when their settings agree: its outcome (and the first
        adversarial iterate's, which is what it keeps) comes from the white-box stage, not a rerun.
        """
        opts = ctx.options
        probe = PGD(eps=ctx.main_eps, norm=opts.norm, steps=opts.suite.steps, loss="margin", seed=opts.seed)
        plan = ChecklistAttacks.build(ctx.roles.naive, probe, ctx.x[0].numel())
        same = ctx.roles.margin.with_eps(ctx.main_eps).init_args == probe.init_args
        return plan, ([plan.probe, plan.first] if same else [])

    def inputs(self, ctx: AuditContext) -> torch.Tensor:
        """The first ``check_samples`` inputs."""
        return ctx.ids[:min(ctx.options.check_samples, ctx.n)]

    def work(self, ctx: AuditContext, ids: torch.Tensor, record: Any) -> dict[str, Any]:
        """The unbounded attack at its eps, the others at the middle eps; reused outcomes from the white box."""
        plan, reused = self._plan(ctx)
        run = [a for a in plan.at_probe_eps() if a not in reused]
        common = {"cascade": False, "tracking": Tracking(ids, record, ctx.runtime.progress.attack, ctx.judge,
                                                           side_by_side=ctx.side_by_side)}
        x, y, bs = ctx.x[ids], ctx.y[ids], ctx.options.batch_size
        _, ex_big = robustness_counts(ctx.model, x, y, [plan.unbounded], [plan.unbounded.eps], bs, **common)
        _, ex_probe = robustness_counts(ctx.model, x, y, run, [ctx.main_eps], bs, **common)
        big_key, probe_key = eps_key(plan.unbounded.eps), eps_key(ctx.main_eps)
        white_fooled = ctx.res.fooled_by[ctx.roles.margin.name][probe_key][ids.cpu()].to(ctx.x.device) \
            if reused else None
        out = {"clean": ex_probe.clean_correct,
               "fooled": {plan.unbounded.name: ex_big.fooled[plan.unbounded.name][big_key],
                          **{a.name: ex_probe.fooled[a.name][probe_key] for a in run},
                          **{a.name: white_fooled for a in reused}}}
        if ctx.judge.randomized:  # the expected accuracy at each attack's point (at most the clean one's)
            clean_exp = ex_probe.clean_measured
            out["clean_expected"] = clean_exp
            out["expected"] = {
                plan.unbounded.name: torch.minimum(ex_big.measured[plan.unbounded.name][big_key].nan_to_num(1.0),
                                                   clean_exp),
                **{a.name: torch.minimum(ex_probe.measured[a.name][probe_key].nan_to_num(1.0), clean_exp)
                   for a in run}}
        return out

    def fold(self, ctx: AuditContext, found: dict[str, Any]) -> None:
        """The checklist: the outcome checks, the evaluation checks, the positive control's check."""
        found = _head(found, len(self.inputs(ctx)))  # the checked inputs are the first ones
        plan, _ = self._plan(ctx)
        opts, roles = ctx.options, ctx.roles
        random = [a.name for a in roles.black_box if isinstance(a, RandomSampling)]
        ctx.checks += outcome_checks(ctx.res, ctx.eps, roles.names(), random, opts.thresholds,
                                     ctx.found.get("black_box"))
        if ctx.judge.randomized:  # in expectation: the expected accuracy lost at each attack's point
            lost = {a: found["clean_expected"] - v for a, v in found["expected"].items()}
            ctx.checks += plan.checks(found["clean_expected"], lost, opts.thresholds, correct=found["clean"])
        else:
            ctx.checks += plan.checks(found["clean"], found["fooled"], opts.thresholds)
        if "adequacy" in ctx.found:
            ctx.checks.append(check_attack_inadequate(ctx.found["adequacy"], opts.thresholds))


def _head(tree: Any, k: int) -> Any:
    """The first ``k`` inputs of every tensor of a nested dict."""
    if isinstance(tree, torch.Tensor):
        return tree[:k]
    return {key: _head(v, k) for key, v in tree.items()} if isinstance(tree, dict) else tree


__all__ = ["AdequacyStage", "ChecksStage"]
