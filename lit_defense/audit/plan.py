"""The audit of one model as a plan of stages, each a set of units (attack x eps) over a shard.

1. ``probe``: the model checks of the gradient-masking checklist (a few passes on rank 0); they
   decide which attacks the model needs (BPDA, EOT, gradient-free escalation).
2. ``white_box``: white-box attacks, each on every clean-correct input (their numbers are side by
   side, for the checklist): FGSM and PGD with the cross-entropy (the *naive* view), PGD with the
   margin loss (sees through softmax saturation), BPDA around it when the model has submodules
   declaring ``differentiable = False``, EOT around it when the model's outputs are random.
3. ``cascade``: on the inputs every white-box attack failed on and left near the boundary
   (``spending.far_from_boundary``), each attack only on the inputs all earlier ones failed on:
   APGD with the cross-entropy and targeted APGD (APGD-T, targeted DLR over the nearest classes)
   as AutoAttack runs them, behind BPDA and EOT where stage 2 used them; the minimum-norm FMN (one
   run for the whole grid). Nested over eps: what fell at a smaller eps is not attacked at a larger.
   ``black_box_<attack>``: the gradient-free attacks, each on a seeded sample of the survivors
   first (``spending.black_box``): random sampling in the ball, Square (L-inf, L2), RayS
   (decision-based, L-inf) when the gradients are unusable, and optional transfer attacks.
4. ``refine``: the survivors whose minimum-norm perturbation is within ``refine_radius`` x eps
   sit near the boundary, where one random start finds an adversarial point and another misses
   it: fresh starts there (APGD-T with another seed, a margin PGD with restarts).
5. ``adequacy`` (``--suite.adequacy_samples`` > 0): the positive control, the binarization test
   (``lit_defense.adequacy``) on a seeded subset of the inputs robust at the middle eps, with the
   same attacks and wrappers built for two classes; its rate is the check ``attack_inadequate``.
6. ``checks``: the attacks the checklist's evaluation checks need (an unbounded naive attack, a
   PGD at twice the steps, first- vs last-iterate), on the first ``check_samples`` inputs.

Every stage shards its inputs over the processes (``sharding.shard``), records each finished batch
(``progress``) and gathers the per-sample results with one collective. The checklist then reads
those results (``lit_defense.diagnostics``: pure functions of numbers). ``worst_case`` is the
per-input worst case over all attacks. A randomized model (the probe's ``randomized_outputs``) is
judged in expectation over its own randomness (``lit_defense.judge``): every point gets a selected
and a measured expected accuracy, the worst point is selected on the one and reported with the
other, and every check compares expectations. Measured against the reference AutoAttack:
``benchmarks/vs_autoattack.py``, README "Against AutoAttack".
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from lit_defense.attacks import PGD, Attack, RandomSampling, masked_modules
from lit_defense.audit.display import AuditProgress
from lit_defense.audit.progress import ProgressLog
from lit_defense.audit.sharding import Collective, attempt, raise_failures
from lit_defense.audit.spending import (
    black_box,
    black_box_sampled,
    far_from_boundary,
    far_threshold,
)
from lit_defense.audit.stage import Stage
from lit_defense.audit.suite import AttackSuite, default_attacks, role_names
from lit_defense.diagnostics import MaskingThresholds, model_checks
from lit_defense.diagnostics.checklist import (
    ChecklistAttacks,
    check_attack_adequacy,
    outcome_checks,
)
from lit_defense.evaluation import check_attacks, robustness_counts
from lit_defense.judge import Judge
from lit_defense.results import Check, ModelAudit, PerSample, eps_key, verdict
from lit_defense.stats import MeanEstimate


def _probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor, thresholds: MaskingThresholds, check_samples: int,
           seed: int, name: str, collective: Collective, log: ProgressLog | None, progress: AuditProgress
           ) -> tuple[list[Check], dict[str, Any]]:
    """The model checks: recorded, else computed on rank 0 and broadcast (they steer the plan)."""
    progress.stage(name, "probe")
    before = collective.calls["probe"]
    stored = log.blob(name, "probe") if log is not None else None
    if stored is None:
        def run_checks() -> list[Check]:
            return model_checks(model, x, y, thresholds, fd_samples=check_samples, seed=seed)

        # rank 0 checks the model and sends the checks, or its failure, so no process waits for it
        sent: tuple[list[Check] | None, str | None] = (None, None)
        if collective.is_main:
            sent = attempt(run_checks) if collective.distributed else (run_checks(), None)
        checks, failure = collective.broadcast(sent, "probe")
        raise_failures([(0, failure)], f"audit of {name}, stage probe")
        if log is not None and collective.is_main:
            log.put_blob(name, "probe", [c.to_dict() for c in checks])
    else:
        checks = [Check(**c) for c in stored]
    progress.stage_done(x.shape[0])
    return checks, {"inputs": int(x.shape[0]), "collectives": collective.calls["probe"] - before}


def _plan_judge(model: nn.Module, x: torch.Tensor, y: torch.Tensor, randomized: bool, batch_size: int,
                name: str, collective: Collective, log: ProgressLog | None) -> Judge:
    """How the audit judges points (``lit_defense.judge``): recorded, else planned on rank 0 and broadcast.

    One pass for a deterministic model; for a randomized one, the draws its own pilot asks for.
    """
    if not randomized:
        return Judge()
    stored = log.blob(name, "judge") if log is not None else None
    if stored is not None:
        return Judge(int(stored["draws"]))
    draws = Judge.plan(model, x, y, randomized, batch_size).draws if collective.is_main else 0
    draws = collective.broadcast(draws, "probe") if collective.distributed else draws
    if log is not None and collective.is_main:
        log.put_blob(name, "judge", {"draws": draws})
    return Judge(int(draws))


def _own_generator(audit: Callable[..., ModelAudit]) -> Callable[..., ModelAudit]:
    """``audit`` with torch's global generator forked and seeded from its ``seed`` argument.

    A randomized defence draws from torch's global generator (the attacks have their own,
    ``lit_defense.rng``): seeded per audit, its draws, and so the model's clean accuracy and worst
    case, no longer depend on what ran before it in the process, and the caller's generator is
    left as it was.
    """
    signature = inspect.signature(audit)

    @functools.wraps(audit)
    def seeded(*args: Any, **kwargs: Any) -> ModelAudit:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        device, seed = bound.arguments["x"].device, int(bound.arguments["seed"])
        cuda = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.random.default_generator.manual_seed(seed)
            for index in cuda:
                torch.cuda.default_generators[index].manual_seed(seed)
            return audit(*args, **kwargs)

    return seeded


@_own_generator
def audit_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: Sequence[float],
    norm: str = "linf",
    name: str = "model",
    source: str = "",
    suite: AttackSuite | None = None,
    thresholds: MaskingThresholds | None = None,
    transfer: Sequence[Attack] = (),
    batch_size: int = 500,
    check_samples: int = 200,
    keep_examples: int = 8,
    seed: int = 0,
    collective: Collective | None = None,
    log: ProgressLog | None = None,
    progress: AuditProgress | None = None,
) -> ModelAudit:
    """Audit one model on ``(x, y)`` (see module doc). The model is used as it is.

    Under DDP every process calls this with the same arguments and gets the same ``ModelAudit``;
    ``log`` makes the audit resumable (finished batches are recorded and not attacked again).
    """
    suite = suite or AttackSuite()
    thresholds = thresholds or MaskingThresholds()
    collective = collective or Collective()
    progress = progress or AuditProgress(1, enabled=False)
    eps = sorted(float(e) for e in eps)
    start = time.perf_counter()
    n = x.shape[0]
    all_ids = torch.arange(n)  # per-sample bookkeeping lives on the CPU; attacks run where x is

    checks, probe_info = _probe(model, x, y, thresholds, check_samples, seed, name, collective, log, progress)
    by_name = {c.name: c for c in checks}
    randomized = not by_name["randomized_outputs"].passed
    masked = bool(masked_modules(model))
    margin_zero = (by_name["zero_gradients"].evidence["margin"]["zero"] or 0.0) > thresholds.zero_gradient_fraction
    # gradients unusable and no declared module for BPDA to repair them: gradient-free attacks lead
    broken = not masked and (margin_zero or not by_name["gradient_mismatch"].passed
                             or not by_name["inference_time_optimisation"].passed)
    with torch.inference_mode(False), torch.no_grad():
        num_classes = int(model(x[:1]).shape[1])
    roles = default_attacks(norm, suite, masked, randomized, seed, transfer, broken_gradients=broken,
                            num_classes=num_classes)
    judge = _plan_judge(model, x[:check_samples], y[:check_samples], randomized, batch_size, name, collective, log)
    white = [roles["one_step"], roles["naive"], *roles["adaptive"]]
    later = [*roles["cascade"], *roles["black_box"]]
    check_attacks(white, eps)

    # ------------------------------------------------------------------ white box, side by side
    stage = Stage("white_box", name, collective, log, progress)
    pool = stage.pool(all_ids)

    def white_box() -> dict[str, Any]:
        on = pool.to(x.device)
        _, ex = robustness_counts(model, x[on], y[on], white, eps, batch_size, cascade=False, ids=on,
                                  record=stage.record(), on_progress=progress.attack, judge=judge)
        # per eps, the smallest margin any white-box attack left (NaN-free: a missing one is +inf)
        left = {k: torch.stack([ex["margin"][a.name][k].nan_to_num(float("inf")) for a in white]).amin(0)
                for k in ex["margin"][white[0].name]}
        return {"clean": ex["clean_correct"], "fooled": ex["fooled"], "margin_left": left,
                "clean_margin": ex["clean_margin"], **_expectations(ex)}

    white_found = stage.run(pool, white_box, n)
    stages = {"probe": probe_info, "white_box": {**stage.info, "draws": judge.draws}}
    res = PerSample.start(white_found["clean"], eps, judge.draws, white_found.get("clean_selected"),
                          white_found.get("clean_measured"))
    # side by side: robust = fooled by none of them
    res.fold(white_found["fooled"], [a.name for a in white], eps, white_found.get("selected"), white_found.get("measured"))
    own = {a.name: {e: res.expected_to(a.name, e) for e in eps} for a in white}  # robust, each alone
    results = [{"attack": a.name, "eps": e, "robust_accuracy": _rate(own[a.name][e]), "stage": "white_box"}
               for e in eps for a in white]

    # ------------------------------------------------------------------ cascade on the survivors
    after: dict[str, dict[float, torch.Tensor]] = {}  # still robust after each later attack (``fold``)
    # a mechanism check failed (or BPDA/EOT needed): the gradient-free attacks run on all survivors
    # and the far rule is off, unless the failed checks concern the cross-entropy alone
    # (``spending.margins_trusted``: the margin attacks see through them)
    sampled = black_box_sampled(suite.black_box_sample, checks, masked, randomized, margin_zero)
    far = far_from_boundary(white_found, eps, far_threshold(suite.far_margin, norm, checks, masked, randomized,
                                                            margin_zero), res)
    if roles["cascade"]:
        stage = Stage("cascade", name, collective, log, progress)
        found = stage.cascade(model, x, y, roles["cascade"], eps, batch_size,
                              {k: m & ~far[k] for k, m in res.robust.items()}, judge)
        stage.info["far"] = {k: int(m.sum()) for k, m in far.items()}
        stages["cascade"] = stage.info
        after = res.fold(found["fooled"], [a.name for a in roles["cascade"]], eps, found.get("selected"),
                         found.get("measured"))
        res.min_norm.update(found["min_norm"])  # every attack that minimised norms (BPDA(FMN) too)

    # ------------------------------------------------------------------ gradient-free, a sample first
    black_box_on = None
    if roles["black_box"]:
        black_box_on, black_box_stages = black_box(
            model, x, y, roles["black_box"], eps, batch_size, res, sampled,
            thresholds, seed, lambda stage: Stage(stage, name, collective, log, progress), judge)
        stages.update(black_box_stages)
        after.update({a.name: {e: res.expected_after(a.name, e) for e in eps} for a in roles["black_box"]})
    for a in later:
        results += [{"attack": a.name, "eps": e, "robust_accuracy": _rate(after[a.name][e]), "stage": "after_white_box"}
                    for e in eps]

    # ------------------------------------------------------------------ refine near the boundary
    fmn = next((res.min_norm[a.name] for a in roles["cascade"] if a.name in res.min_norm), None)
    if roles["refine"] and fmn is not None:
        near = {eps_key(e): res.robust_to(None, e) & (fmn <= suite.refine_radius * e) for e in eps}
        stage = Stage("refine", name, collective, log, progress)
        found = stage.cascade(model, x, y, roles["refine"], eps, batch_size, near, judge)
        stages["refine"] = stage.info
        refined = res.fold(found["fooled"], [a.name for a in roles["refine"]], eps, found.get("selected"),
                           found.get("measured"))
        results += [{"attack": a.name, "eps": e, "robust_accuracy": _rate(refined[a.name][e]), "stage": "refine"}
                    for a in roles["refine"] for e in eps]
        later = [*later, *roles["refine"]]
    worst = {e: _rate(res.expected_to(None, e)) for e in eps}
    main_eps = eps[len(eps) // 2]

    # ------------------------------------------------------------------ positive control (opt-in)
    adequacy = None
    if suite.adequacy_samples > 0:
        adequacy = _adequacy(model, x, y, main_eps, norm, res.robust_to(None, main_eps), suite, seed, transfer,
                             masked, randomized, broken, Stage("adequacy", name, collective, log, progress))
        stages["adequacy"] = adequacy.pop("stage")

    # ------------------------------------------------------------------ the checklist's attacks
    probe = PGD(eps=main_eps, norm=norm, steps=suite.steps, loss="margin", seed=seed)
    plan = ChecklistAttacks.build(roles["naive"], probe, x[0].numel())
    # the probe is the white-box margin PGD when their settings agree: its outcome (and the first
    # adversarial iterate's, which is what it keeps) comes from the white-box stage, not a rerun
    adaptive = roles["adaptive"][0]
    same = adaptive.with_eps(main_eps).init_args == probe.init_args
    reused = [plan.probe, plan.first] if same else []
    stage = Stage("checks", name, collective, log, progress)
    cs = min(check_samples, n)
    pool = stage.pool(all_ids[:cs])

    def check_attacks_run() -> dict[str, Any]:
        on, rec = pool.to(x.device), stage.record()
        run = [a for a in plan.at_probe_eps() if a not in reused]
        _, ex_big = robustness_counts(model, x[on], y[on], [plan.unbounded], [plan.unbounded.eps], batch_size,
                                      cascade=False, ids=on, record=rec, on_progress=progress.attack, judge=judge)
        _, ex_probe = robustness_counts(model, x[on], y[on], run, [main_eps], batch_size,
                                        cascade=False, ids=on, record=rec, on_progress=progress.attack, judge=judge)
        big_key, probe_key = eps_key(plan.unbounded.eps), eps_key(main_eps)
        white_fooled = res.fooled_by[adaptive.name][probe_key][pool].to(x.device) if same else None
        out = {"clean": ex_probe["clean_correct"],
               "fooled": {plan.unbounded.name: ex_big["fooled"][plan.unbounded.name][big_key],
                          **{a.name: ex_probe["fooled"][a.name][probe_key] for a in run},
                          **{a.name: white_fooled for a in reused}}}
        if judge.randomized:  # the expected accuracy at each attack's point (at most the clean one's)
            clean_exp = ex_probe["clean_measured"]
            out["clean_expected"] = clean_exp
            out["expected"] = {
                plan.unbounded.name: torch.minimum(ex_big["measured"][plan.unbounded.name][big_key].nan_to_num(1.0),
                                                   clean_exp),
                **{a.name: torch.minimum(ex_probe["measured"][a.name][probe_key].nan_to_num(1.0), clean_exp)
                   for a in run}}
        return out

    found = stage.run(pool, check_attacks_run, cs)
    stages["checks"] = stage.info

    # ------------------------------------------------------------------ the checklist: pure functions
    clean = _rate(res.expected_clean())
    names = role_names(roles)
    checks += outcome_checks(res, eps, names, [a.name for a in roles["black_box"] if isinstance(a, RandomSampling)],
                             thresholds, black_box_on)
    if judge.randomized:  # in expectation: the expected accuracy lost at each attack's point
        checks += plan.checks(found["clean_expected"], {a: found["clean_expected"] - v for a, v in found["expected"].items()},
                              thresholds, correct=found["clean"])
    else:
        checks += plan.checks(found["clean"], found["fooled"], thresholds)
    if adequacy is not None:
        checks.append(check_attack_adequacy(adequacy, thresholds))

    examples = _examples(model, x, y, eps, [*white, *later], res, keep_examples, batch_size) \
        if collective.is_main else {}
    return ModelAudit(
        name=name, source=source, norm=norm, eps=eps, num_samples=n, clean_accuracy=clean, results=results,
        worst_case={eps_key(e): worst[e] for e in eps}, gradient_masking=verdict(checks),
        roles=names, seconds=round(time.perf_counter() - start, 2), examples=examples,
        per_sample=res, stages=stages, adequacy=adequacy, expected=_expected_summary(res, eps),
    )


def _expectations(ex: dict[str, Any]) -> dict[str, Any]:
    """The expected accuracies of a ``robustness_counts`` run that judged in expectation (else nothing)."""
    keys = ("clean_selected", "clean_measured", "selected", "measured")
    return {k: ex[k] for k in keys if k in ex}


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


def _adequacy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, robust: torch.Tensor,
              suite: AttackSuite, seed: int, transfer: Sequence[Attack], masked: bool, randomized: bool, broken: bool,
              stage: Stage) -> dict[str, Any]:
    """The binarization test on a seeded subset of the inputs robust at ``eps``, sharded like every stage.

    The attacks are the audit's own for this model (BPDA, EOT, escalation alike), built for the
    binarized model's two classes.
    """
    from lit_defense.adequacy import AdequacyResult, binarization_test, find_readout, suite_attacks

    candidates = robust.nonzero().squeeze(1)
    order = torch.randperm(candidates.numel(), generator=torch.Generator().manual_seed(seed))
    chosen = candidates[order[:suite.adequacy_samples]].sort().values
    pool = stage.pool(chosen)
    roles = default_attacks(norm, suite, masked, randomized, seed, transfer, broken_gradients=broken, num_classes=2)
    readout = find_readout(model, x[:1])

    def work() -> dict[str, Any]:
        record = stage.record()  # each finished input is recorded: a resumed audit does not test it again
        done = {i: record.get("binarization", [i]) if record is not None else None for i in pool.tolist()}
        todo = torch.tensor([i for i, v in done.items() if v is None], dtype=torch.long)

        def keep(sid: int, valid: bool, passed: bool, reason: str) -> None:
            done[sid] = {"valid": [valid], "passed": [passed], "reason": [reason]}
            if record is not None:
                record.put("binarization", [sid], done[sid])

        on = todo.to(x.device)
        # a randomized model's inner points cost `draws` passes each: 300 (the test then ~2 s an input)
        binarization_test(model, x[on], y[on], suite_attacks(roles), eps, norm, ids=todo, seed=seed,
                          readout=readout, on_input=keep, inner_points=300 if randomized else 1000)
        rows = [done[i] for i in pool.tolist()]
        return {"valid": torch.tensor([r["valid"][0] for r in rows], dtype=torch.bool),
                "passed": torch.tensor([r["passed"][0] for r in rows], dtype=torch.bool),
                "trivial": torch.tensor([r["reason"][0] == "trivial" for r in rows], dtype=torch.bool)}

    found = stage.run(pool, work, x.shape[0])

    def at_chosen(key: str) -> list[bool]:  # every process's inputs, gathered over all inputs
        return found[key][chosen].tolist() if key in found else [False] * len(chosen)

    valid, passed, trivial = at_chosen("valid"), at_chosen("passed"), at_chosen("trivial")
    reasons = ["" if v else "trivial" if t else "not_separable" for v, t in zip(valid, trivial, strict=True)]
    result = AdequacyResult(eps, chosen.tolist(), valid, passed, reasons, features=readout.kind, note=readout.note)
    return {**result.to_dict(), "ids": chosen.tolist(), "stage": stage.info}


def _rate(mask: torch.Tensor) -> float:
    """The fraction of inputs a per-sample mask holds (an accuracy over all audited inputs).

    Per-input expectations (a randomized model) give their mean.
    """
    if mask.dtype == torch.bool:
        return int(mask.sum()) / max(int(mask.numel()), 1)
    return float(mask.double().sum()) / max(int(mask.numel()), 1)


def _examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Sequence[float], attacks: Sequence[Attack],
              found: PerSample, k: int, batch_size: int) -> dict[str, Any]:
    """The report's examples: for the first ``k`` inputs and every eps, the first attack output that fooled it.

    Each attack runs again on just those inputs (same ids, so the same random numbers) at the eps
    where it was the first to fool them; inputs no attack fooled stay clean.
    """
    k = min(k, x.shape[0])
    out: dict[str, Any] = {"x": x[:k].clone(), "y": y[:k].clone(), "adv": {}, "pred": {}}
    with torch.inference_mode(False):
        for e in eps:
            key = eps_key(e)
            adv = x[:k].clone()
            taken = ~found.clean[:k].to(x.device)
            for attack in attacks:
                mask = found.fooled_by[attack.name][key][:k].to(x.device) & ~taken
                ids = mask.nonzero().squeeze(1)
                if ids.numel() == 0:
                    continue
                adv[ids] = attack.attack_grid(model, x[ids], y[ids], [e], ids).points[0]
                taken |= mask
            out["adv"][key] = adv
            with torch.no_grad():
                out["pred"][key] = torch.cat([model(b).argmax(1) for b in adv.split(batch_size)]) if k else \
                    torch.zeros(0, dtype=torch.long, device=x.device)
    return out


__all__ = ["audit_model"]
