"""The stages of the audit plan (``AuditStage``): each one class, the plan a list of them.

A stage says which inputs it takes (``inputs``), what it runs on this process's share of them
(``work``: per-sample values, recorded batch by batch so a resumed audit does not redo them), and
how it folds what every process found into the audit (``fold``); ``share`` is its typical share of
a model's audit time (the estimate of the time left) and ``label`` the ``stage`` of its result
rows. The default ``run`` shards, gathers with one collective and folds; a stage of another shape
(the probe, the gradient-free attacks' sample-then-rest) overrides ``run``.

The stages here, in the default plan's order (``plan.default_plan``):

1. ``ProbeStage``: the model checks (on rank 0); they decide the attacks (``default_attacks``) and
   how points are judged (``lit_defense.judge``).
2. ``WhiteBoxStage``: FGSM, the naive PGD-CE, the margin PGD (BPDA and EOT around it where the
   model needs them), each on every clean-correct input, side by side.
3. ``CascadeStage``: APGD-CE, APGD-T and FMN on the survivors not far from the boundary, each on
   the inputs all earlier ones failed on, nested over eps.
4. ``BlackBoxStage``: the gradient-free attacks, each on a seeded sample of the survivors first.
5. ``RefineStage``: fresh starts on the survivors whose minimum-norm perturbation is near eps.
6. ``AdequacyStage`` and ``ChecksStage`` (``lit_defense.audit.checks_stages``): the positive
   control, the checklist's own attacks and the checklist.
"""

from __future__ import annotations

from typing import Any

import torch

from lit_defense.audit.context import AuditContext
from lit_defense.audit.probe import ModelProbe
from lit_defense.audit.sharding import attempt, raise_failures
from lit_defense.audit.spending import black_box, far_from_boundary
from lit_defense.audit.suite import REFINE_CLOSE, default_attacks
from lit_defense.diagnostics import model_checks
from lit_defense.evaluation import Tracking, check_attacks, robustness_counts
from lit_defense.judge import Judge
from lit_defense.results import Check, PerSample, eps_key
from lit_defense.width import width_for


class AuditStage:
    """One stage of the audit plan. Subclass it, set ``name``, and implement ``work`` and ``fold`` (or ``run``).

    Attributes:
        name: the stage's name: its record in the progress log and its entry in ``report.json``'s
            ``stages`` (unique within a plan).
        share: its typical share of a model's audit time (the estimate of the time left).
        label: the ``stage`` of the result rows it adds.
    """

    name: str = ""
    share: float = 0.0
    label: str = ""

    def applies(self, ctx: AuditContext) -> bool:
        """Whether the stage runs for this model (e.g. only when its role has attacks)."""
        return True

    def inputs(self, ctx: AuditContext) -> torch.Tensor:
        """The ids of the inputs the stage takes (over all processes; every input by default)."""
        return ctx.ids

    def work(self, ctx: AuditContext, ids: torch.Tensor, record: Any) -> dict[str, Any]:
        """This process's per-sample values on its share ``ids`` of the inputs (a nested dict of tensors).

        ``record`` (``None``: not resumable) keeps finished units: ``record.get(unit, ids)`` what an
        earlier run stored, ``record.put(unit, ids, values)`` a finished batch's values (lists).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement work() or run()")

    def fold(self, ctx: AuditContext, found: dict[str, Any]) -> dict[str, Any] | None:
        """Fold every process's values (``found``: tensors over all inputs) into ``ctx``; returns extra stage info."""
        return None

    def run(self, ctx: AuditContext) -> None:
        """Shard the inputs, run ``work`` on this process's share, gather (one collective), ``fold``."""
        runner = ctx.runner(self.name, self.share)
        pool = runner.pool(self.inputs(ctx))
        found = runner.run(pool, lambda: self.work(ctx, pool.to(ctx.x.device), runner.record()), ctx.n)
        extra = self.fold(ctx, found)
        ctx.stages[self.name] = {**runner.info, **(extra or {})}


class ProbeStage(AuditStage):
    """The model checks (recorded, else run on rank 0 and broadcast), the attack roles and the judge."""

    name, share = "probe", 0.02

    def run(self, ctx: AuditContext) -> None:
        """Checks, probe, roles, judge: everything that steers the rest of the plan."""
        rt, opts = ctx.runtime, ctx.options
        rt.progress.stage(ctx.name, self.name, self.share)
        before = rt.collective.calls[self.name]
        ctx.checks = self._checks(ctx)
        rt.progress.stage_done(ctx.n)
        ctx.stages[self.name] = {"inputs": ctx.n, "collectives": rt.collective.calls[self.name] - before}
        ctx.probe = ModelProbe.of(ctx.model, ctx.x, ctx.checks, opts.thresholds)
        ctx.roles = default_attacks(opts.norm, opts.suite, ctx.probe.masked, ctx.probe.randomized, opts.seed,
                                    opts.extra_attacks, broken_gradients=ctx.probe.broken,
                                    num_classes=ctx.probe.num_classes)
        ctx.judge = self._judge(ctx)
        check_attacks(ctx.roles.white_box, ctx.eps)

    def _checks(self, ctx: AuditContext) -> list[Check]:
        rt, opts = ctx.runtime, ctx.options
        stored = rt.log.blob(ctx.name, self.name) if rt.log is not None else None
        if stored is not None:
            return [Check.from_dict(c) for c in stored]

        def run_checks() -> list[Check]:
            return model_checks(ctx.model, ctx.x, ctx.y, opts.thresholds, fd_samples=opts.check_samples,
                                seed=opts.seed)

        # rank 0 checks the model and sends the checks, or its failure, so no process waits for it
        sent: tuple[list[Check] | None, str | None] = (None, None)
        if rt.collective.is_main:
            sent = attempt(run_checks) if rt.collective.distributed else (run_checks(), None)
        checks, failure = rt.collective.broadcast(sent, self.name)
        raise_failures([(0, failure)], f"audit of {ctx.name}, stage {self.name}")
        if rt.log is not None and rt.collective.is_main:
            rt.log.put_blob(ctx.name, self.name, [c.to_dict() for c in checks])
        return checks

    def _judge(self, ctx: AuditContext) -> Judge:
        """How points are judged: one pass for a deterministic model, else the draws its own pilot asks for.

        Recorded, else planned on rank 0 and broadcast.
        """
        if not ctx.probe.randomized:
            return Judge()
        rt, cs = ctx.runtime, ctx.options.check_samples
        stored = rt.log.blob(ctx.name, "judge") if rt.log is not None else None
        if stored is not None:
            return Judge(int(stored["draws"]))
        draws = Judge.plan(ctx.model, ctx.x[:cs], ctx.y[:cs], True, ctx.options.batch_size).draws \
            if rt.collective.is_main else 0
        draws = rt.collective.broadcast(draws, self.name) if rt.collective.distributed else draws
        if rt.log is not None and rt.collective.is_main:
            rt.log.put_blob(ctx.name, "judge", {"draws": draws})
        return Judge(int(draws))


class WhiteBoxStage(AuditStage):
    """The white-box attacks side by side, each on every clean-correct input: the per-sample outcome starts here."""

    name, share, label = "white_box", 0.25, "white_box"

    def work(self, ctx: AuditContext, ids: torch.Tensor, record: Any) -> dict[str, Any]:
        """Every white-box attack at every eps on this process's inputs, and the margins they left."""
        white, opts = ctx.roles.white_box, ctx.options
        _, ex = robustness_counts(ctx.model, ctx.x[ids], ctx.y[ids], white, ctx.eps, opts.batch_size, cascade=False,
                                  tracking=Tracking(ids, record, ctx.runtime.progress.attack, ctx.judge,
                                                                    side_by_side=ctx.side_by_side))
        # per eps, the smallest margin any white-box attack left (NaN-free: a missing one is +inf)
        left = {k: torch.stack([ex.margin[a.name][k].nan_to_num(float("inf")) for a in white]).amin(0)
                for k in ex.margin[white[0].name]}
        return {"clean": ex.clean_correct, "fooled": ex.fooled, "margin_left": left,
                "clean_margin": ex.clean_margin, **ex.expectations()}

    def fold(self, ctx: AuditContext, found: dict[str, Any]) -> dict[str, Any]:
        """Start the per-sample outcome; each attack's own accuracy (robust = fooled by none of them)."""
        white = [a.name for a in ctx.roles.white_box]
        ctx.found[self.name] = found
        ctx.res = PerSample.start(found["clean"], ctx.eps, ctx.judge.draws, found.get("clean_selected"),
                                  found.get("clean_measured"))
        ctx.res.fold(found["fooled"], white, ctx.eps, found.get("selected"), found.get("measured"))
        own = {a: {e: ctx.res.expected_to(a, e) for e in ctx.eps} for a in white}
        ctx.add_results(white, own, self.label, eps_major=True)
        return {"draws": ctx.judge.draws}


class CascadeStage(AuditStage):
    """The gradient cascade on the white box's survivors that are not far from the boundary."""

    name, share, label = "cascade", 0.63, "after_white_box"

    def applies(self, ctx: AuditContext) -> bool:
        """When the suite has cascade attacks for this model."""
        return bool(ctx.roles.cascade)

    def run(self, ctx: AuditContext) -> None:
        """Each attack on the inputs every earlier one failed on, nested over eps; folded into the outcome."""
        res, opts, attacks = ctx.res, ctx.options, ctx.roles.cascade
        far = far_from_boundary(ctx.found["white_box"], ctx.eps,
                                ctx.probe.far_threshold(opts.suite.far_margin, opts.norm), res)
        runner = ctx.runner(self.name, self.share)
        found = runner.cascade(ctx.model, ctx.x, ctx.y, attacks, ctx.eps, opts.batch_size,
                               {k: m & ~far[k] for k, m in res.robust.items()}, ctx.judge)
        ctx.stages[self.name] = {**runner.info, "far": {k: int(m.sum()) for k, m in far.items()}}
        names = [a.name for a in attacks]
        ctx.after.update(res.fold(found["fooled"], names, ctx.eps, found.get("selected"), found.get("measured")))
        res.min_norm.update(found["min_norm"])  # every attack that minimised norms (BPDA(FMN) too)
        ctx.add_results(names, ctx.after, self.label)


class BlackBoxStage(AuditStage):
    """The gradient-free attacks, each on a seeded sample of the survivors first (``spending.black_box``)."""

    name, share, label = "black_box", 0.0, "after_white_box"

    def applies(self, ctx: AuditContext) -> bool:
        """When the suite has gradient-free (or extra) attacks."""
        return bool(ctx.roles.black_box)

    def run(self, ctx: AuditContext) -> None:
        """One stage per attack (``black_box_<attack>``, and ``black_box_rest_<attack>`` when the sample found some)."""
        attacks = ctx.roles.black_box
        # a sample first only where the device's width says rows cost (a CPU; ``lit_defense.width``)
        option = ctx.options.suite.black_box_sample and width_for(ctx.x.device).sample_black_box
        on, info = black_box(ctx, attacks, ctx.probe.black_box_sampled(option))
        ctx.found[self.name] = on
        ctx.stages.update(info)
        names = [a.name for a in attacks]
        ctx.after.update({a: {e: ctx.res.expected_after(a, e) for e in ctx.eps} for a in names})
        ctx.add_results(names, ctx.after, self.label)


class RefineStage(AuditStage):
    """Fresh starts (AutoAttack's budget) on the survivors FMN places within ``refine_radius`` x eps."""

    name, label = "refine", "refine"

    def applies(self, ctx: AuditContext) -> bool:
        """When the suite refines and a minimum-norm attack ran in the cascade."""
        return bool(ctx.roles.refine) and self._fmn(ctx) is not None

    @staticmethod
    def _fmn(ctx: AuditContext) -> torch.Tensor | None:
        return next((ctx.res.min_norm[a.name] for a in ctx.roles.cascade if a.name in ctx.res.min_norm), None)

    def run(self, ctx: AuditContext) -> None:
        """The refine attacks as a cascade on the near survivors, folded into the outcome.

        Then ``refine_close`` (the attack ``REFINE_CLOSE``) on the survivors closest to eps.
        """
        suite = ctx.options.suite
        close = [a for a in ctx.roles.refine if a.name.endswith(REFINE_CLOSE)]  # BPDA's too
        self._cascade(ctx, self.name, [a for a in ctx.roles.refine if a not in close], suite.refine_radius)
        if close:
            self._cascade(ctx, "refine_close", close, suite.refine_close_radius)

    def _cascade(self, ctx: AuditContext, stage: str, attacks: list, radius: float) -> None:
        fmn = self._fmn(ctx)
        near = {eps_key(e): ctx.res.robust_to(None, e) & (fmn <= radius * e) for e in ctx.eps}
        if stage != self.name and not any(bool(m.any()) for m in near.values()):
            return  # no survivor that close: the stage does not run
        runner = ctx.runner(stage, self.share)
        found = runner.cascade(ctx.model, ctx.x, ctx.y, attacks, ctx.eps, ctx.options.batch_size, near, ctx.judge)
        if stage == self.name:
            ctx.stages[stage] = runner.info
        else:  # within the refine stage's record (its cost is the refine stage's too)
            ctx.stages[self.name] = {**ctx.stages.get(self.name, {}), stage: runner.info}
        names = [a.name for a in attacks]
        refined = ctx.res.fold(found["fooled"], names, ctx.eps, found.get("selected"), found.get("measured"))
        ctx.add_results(names, refined, self.label)


__all__ = ["AuditStage", "BlackBoxStage", "CascadeStage", "ProbeStage", "RefineStage", "WhiteBoxStage",
           ]
