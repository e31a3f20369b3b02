"""The audit of one model as a plan: a list of stages (``stages.AuditStage``) that one loop runs.

The default plan (``default_plan``), in order:

1. ``probe``: the model checks of the gradient-masking checklist (a few passes on rank 0); they
   decide which attacks the model needs (BPDA, EOT, gradient-free escalation) and how its points
   are judged (``lit_defense.judge``).
2. ``white_box``: FGSM and PGD with the cross-entropy (the *naive* view), PGD with the margin loss
   (sees through softmax saturation), BPDA around it when the model has submodules declaring
   ``differentiable = False``, EOT around it when the model's outputs are random; each on every
   clean-correct input, side by side (for the checklist).
3. ``cascade``: on the inputs every white-box attack failed on and left near the boundary
   (``spending.far_from_boundary``), each attack only on the inputs all earlier ones failed on:
   APGD-CE and targeted APGD (APGD-T) as AutoAttack runs them, behind BPDA and EOT where stage 2
   used them, and the minimum-norm FMN. Nested over eps: what fell at a smaller eps is not
   attacked at a larger.
4. ``black_box``: the gradient-free attacks, each on a seeded sample of the survivors first
   (``spending.black_box``): random sampling in the ball, Square, RayS (decision-based, L-inf)
   when the gradients are unusable, and the extra attacks a user adds (``--extra_attacks``).
5. ``refine``: fresh starts on the survivors whose minimum-norm perturbation is within
   ``refine_radius`` x eps, where one random start finds an adversarial point and another misses it.
6. ``adequacy`` (``--suite.adequacy_samples`` > 0): the positive control, the binarization test.
7. ``checks``: the checklist's own attacks on the first ``check_samples`` inputs, then the
   checklist, pure functions of the per-sample outcome (``lit_defense.diagnostics``).

Every stage shards its inputs over the processes (``sharding.shard``), records each finished batch
(``progress``) and gathers the per-sample results with one collective. A new stage is one class
and one entry in the list: ``audit_model(..., plan=[*default_plan(), MyStage()])``.
``worst_case`` is the per-input worst case over all attacks. A randomized model is judged in
expectation over its own randomness: every point gets a selected and a measured expected accuracy,
the worst point is selected on the one and reported with the other, and every check compares
expectations.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lit_defense.audit.checks_stages import AdequacyStage, ChecksStage
from lit_defense.audit.context import AuditContext, AuditRuntime, rate
from lit_defense.audit.options import AuditOptions
from lit_defense.audit.stages import (
    AuditStage,
    BlackBoxStage,
    CascadeStage,
    ProbeStage,
    RefineStage,
    WhiteBoxStage,
)
from lit_defense.errors import ConfigError
from lit_defense.examples import build_examples
from lit_defense.results import ModelAudit, PerSample, eps_key, verdict
from lit_defense.stats import MeanEstimate


def default_plan() -> list[AuditStage]:
    """The stages of the default audit, in order (module doc)."""
    return [ProbeStage(), WhiteBoxStage(), CascadeStage(), BlackBoxStage(), RefineStage(), AdequacyStage(),
            ChecksStage()]


def _check_plan(plan: Sequence[AuditStage]) -> None:
    names = [s.name for s in plan]
    if not plan or not isinstance(plan[0], ProbeStage) or not any(isinstance(s, WhiteBoxStage) for s in plan):
        raise ConfigError("an audit plan starts with ProbeStage() and holds a WhiteBoxStage() (the other stages "
                          "read what they find); start from lit_defense.audit.plan.default_plan().")
    if len(set(names)) != len(names) or not all(names):
        raise ConfigError(f"every stage of a plan needs a name of its own; these are {names}.")


def run_plan(ctx: AuditContext, plan: Sequence[AuditStage]) -> AuditContext:
    """Run the stages in order on ``ctx`` (a stage that does not apply to the model is skipped)."""
    _check_plan(plan)
    for stage in plan:
        if stage.applies(ctx):
            before = ctx.cost.snapshot()
            stage.run(ctx)
            spent = ctx.cost.snapshot() - before
            ctx.stage_cost[stage.name] = {"rounds": spent.rounds, "work": spent.work}
    return ctx


def audit_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Sequence[float] | None = None,
                norm: str | None = None, name: str = "model", source: str = "", *,
                options: AuditOptions | None = None, runtime: AuditRuntime | None = None,
                plan: Sequence[AuditStage] | None = None, **overrides: Any) -> ModelAudit:
    """Audit one model on ``(x, y)`` (see module doc). The model is used as it is.

    ``options`` (``AuditOptions``; ``overrides`` replace its fields, e.g. ``suite=``,
    ``check_samples=``, ``seed=``) say how; ``eps`` and ``norm``, when given, replace its own.
    ``runtime`` says where (processes, the resumable record, progress lines); ``plan`` the stages
    (``default_plan()`` by default). Under DDP every process calls this with the same arguments and
    gets the same ``ModelAudit``; a ``runtime.log`` makes the audit resumable (finished batches are
    recorded and not attacked again).

    A randomized defence draws from torch's global generator (the attacks have their own,
    ``lit_defense.rng``): it is forked and seeded from ``seed`` for the audit, so the model's draws,
    and so its clean accuracy and worst case, do not depend on what ran before it in the process,
    and the caller's generator is left as it was.
    """
    opts = (options or AuditOptions()).replace(**overrides)
    opts = opts.replace(eps=sorted(float(e) for e in (opts.eps if eps is None else eps)),
                        norm=opts.norm if norm is None else norm)
    ctx = AuditContext(model, x, y, name, source, opts, runtime or AuditRuntime())
    ctx.runtime.progress.count(ctx.cost)
    start = time.perf_counter()
    cuda = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), ctx.cost.attached(model):
        torch.random.default_generator.manual_seed(opts.seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(opts.seed)
        run_plan(ctx, default_plan() if plan is None else plan)
        return to_audit(ctx, time.perf_counter() - start)


def to_audit(ctx: AuditContext, seconds: float) -> ModelAudit:
    """The ``ModelAudit`` of a context whose plan ran (rank 0 builds the report's examples)."""
    res, roles = ctx.res, ctx.roles
    attacks = [*roles.white_box, *roles.after_white_box, *(roles.refine if "refine" in ctx.stages else [])]
    examples = build_examples(ctx.model, ctx.x, ctx.y, ctx.eps, attacks, res.fooled_by, res.clean,
                              ctx.options.keep_examples, ctx.options.batch_size) \
        if ctx.runtime.collective.is_main and ctx.options.keep_examples else None
    return ModelAudit(
        name=ctx.name, source=ctx.source, norm=ctx.options.norm, eps=ctx.eps, num_samples=ctx.n,
        clean_accuracy=rate(res.expected_clean()), results=ctx.results, worst_case=ctx.worst_case(),
        gradient_masking=verdict(ctx.checks), roles=roles.names(), seconds=round(seconds, 2), examples=examples,
        per_sample=res, stages=ctx.stages, adequacy=ctx.found.get("adequacy"), cost={**ctx.cost.cost.to_dict(), "stages": ctx.stage_cost},
        expected=_expected_summary(res, ctx.eps),
    )


def _expected_summary(res: PerSample, eps: Sequence[float]) -> dict[str, Any] | None:
    """A randomized model's numbers with the intervals that account for inputs and draws (``MeanEstimate``).

    ``clean`` and ``worst_case`` (eps key -> estimate): the expected accuracy, the mean over inputs
    of the model's accuracy over its own randomness (the worst point selected on other draws than
    those that measure it). ``majority_vote`` (eps key -> estimate): the inputs whose measured
    draws are right more than half of the time at that point, what a defence that votes over many
    draws would get (the randomized-smoothing view), an exact interval over inputs.
    """
    if not res.randomized:
        return None
    from lit_defense.stats import Estimate

    def vote(values: torch.Tensor) -> dict[str, Any]:
        return Estimate(int((values > 0.5).sum()), int(values.numel())).to_dict()

    worst = {eps_key(e): res.expected_to(None, e) for e in eps}
    return {
        "draws": res.draws,
        "clean": MeanEstimate.of(res.expected_clean(), res.draws).to_dict(),
        "worst_case": {k: MeanEstimate.of(v, res.draws).to_dict() for k, v in worst.items()},
        "majority_vote": {"clean": vote(res.expected_clean()), **{k: vote(v) for k, v in worst.items()}},
    }



__all__ = ["audit_model", "default_plan", "run_plan", "to_audit"]
