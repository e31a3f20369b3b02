"""The audit of one model as a plan of stages, each a set of units (attack x eps) over a shard.

1. ``probe``: the model checks of the gradient-masking checklist (a few passes on rank 0); they
   decide which attacks the model needs (BPDA, EOT, gradient-free escalation).
2. ``white_box``: white-box attacks, each on every clean-correct input (their numbers are side by
   side, for the checklist): FGSM and PGD with the cross-entropy (the *naive* view), PGD with the
   margin loss (sees through softmax saturation), BPDA around it when the model has submodules
   declaring ``differentiable = False``, EOT around it when the model's outputs are random.
3. ``cascade``: on the inputs every white-box attack failed on, each attack only on the inputs all
   earlier ones failed on: APGD with the cross-entropy and targeted APGD (APGD-T, targeted DLR over
   the most likely wrong classes) as AutoAttack runs them, behind BPDA and EOT where stage 2 used
   them; the minimum-norm FMN (one run for the whole grid); then the gradient-free attacks: random
   sampling in the ball, Square (L-inf), RayS (decision-based, L-inf) when the gradients are
   unusable, and optional transfer attacks.
4. ``checks``: the attacks the checklist's evaluation checks need (an unbounded naive attack, a
   PGD at twice the steps, first- vs last-iterate), on the first ``check_samples`` inputs.

Every stage shards its inputs over the processes (``sharding.shard``), records each finished batch
(``progress``) and gathers the per-sample results with one collective. The checklist then reads
those results (``lit_defense.diagnostics``: pure functions of numbers). ``worst_case`` is the
per-input worst case over all attacks. Measured against the reference AutoAttack
(``benchmarks/vs_autoattack.py``): at least as strong, in a fraction of its time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lit_defense.attacks import PGD, Attack, MinNormAttack, RandomSampling, masked_modules
from lit_defense.audit.display import AuditProgress
from lit_defense.audit.progress import ProgressLog
from lit_defense.audit.sharding import Collective, shard
from lit_defense.audit.suite import AttackSuite, default_attacks, role_names
from lit_defense.diagnostics import (
    MaskingThresholds,
    check_adaptive_vs_naive,
    check_extra_found,
    check_incomplete_optimisation,
    check_monotone,
    check_one_step_vs_iterative,
    check_silent_success,
    check_unbounded,
    model_checks,
)
from lit_defense.evaluation import check_attacks, robustness_counts
from lit_defense.results import Check, ModelAudit, eps_key, verdict
from lit_defense.threat import check_eps, per_sample


@dataclass
class ChecklistAttacks:
    """The attacks behind the checklist's evaluation checks (run as units like every other attack).

    ``unbounded``: the naive attack with the whole pixel range as budget (no random start: at that
    eps a random start is noise that fools by itself); ``probe``/``longer``: a margin PGD and the
    same at twice the steps (incomplete optimisation); ``first``/``last``: the probe keeping the
    first adversarial point met vs returning its last iterate (silent success).
    """

    unbounded: Attack
    probe: Attack
    longer: Attack
    first: Attack
    last: Attack

    @classmethod
    def build(cls, naive: Attack, probe: Attack, input_numel: int) -> ChecklistAttacks:
        """The checklist's attacks around the audit's naive attack and a margin-PGD probe."""
        big = 1.0 if naive.norm == "linf" else math.sqrt(input_numel)
        unbounded = naive.with_eps(check_eps(naive.norm, big))
        if "random_start" in unbounded.init_args:
            unbounded = unbounded.replace(random_start=False)
        step = probe.init_args.get("step_size")
        return cls(
            unbounded=unbounded.replace(name=f"unbounded_{naive.name}"),
            probe=probe.replace(name=probe.name),
            longer=probe.replace(steps=probe.steps * 2, step_size=None if step is None else step / 2,
                                 name=f"{probe.name}_2x_steps"),
            first=probe.replace(keep_first_adversarial=True, early_stop_every=0, name=f"{probe.name}_first"),
            last=probe.replace(keep_first_adversarial=False, early_stop_every=0, name=f"{probe.name}_last"),
        )

    def at_probe_eps(self) -> list[Attack]:
        """The four attacks that run at the probe's eps."""
        return [self.probe, self.longer, self.first, self.last]

    def checks(self, clean: torch.Tensor, fooled: dict[str, torch.Tensor], thresholds: MaskingThresholds
               ) -> list[Check]:
        """The three checks from per-sample results (``fooled``: attack name -> mask)."""
        robust = {name: clean & ~mask for name, mask in fooled.items()}
        return [
            check_unbounded(self.unbounded.name, self.unbounded.eps, fooled[self.unbounded.name][clean], thresholds),
            check_incomplete_optimisation(self.probe.name, self.probe.steps, self.longer.steps, self.probe.eps,
                                          robust[self.probe.name], robust[self.longer.name], thresholds),
            check_silent_success(self.probe.name, fooled[self.first.name], fooled[self.last.name], thresholds),
        ]


def _cpu(tree: Any) -> Any:
    """Tensors of a nested dict moved to the CPU (what one process sends the others)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: _cpu(v) for k, v in tree.items()}
    return tree


def _merge(parts: list[dict[str, Any]], n: int, fill: Any) -> dict[str, Any]:
    """Shards' per-sample results (each with its ``ids``) back into tensors over all ``n`` inputs."""
    def place(values: list[torch.Tensor], ids: list[torch.Tensor]) -> torch.Tensor:
        out = torch.full((n,), fill(values[0]), dtype=values[0].dtype)
        for v, i in zip(values, ids, strict=True):
            out[i] = v
        return out

    def walk(nodes: list[Any], ids: list[torch.Tensor]) -> Any:
        if isinstance(nodes[0], torch.Tensor):
            return place(nodes, ids)
        return {k: walk([node[k] for node in nodes], ids) for k in nodes[0]}

    ids = [p["ids"] for p in parts]
    return walk([p["values"] for p in parts], ids)


def _default_fill(values: torch.Tensor) -> bool | float:
    return float("inf") if values.is_floating_point() else False


class _Stage:
    """One stage of the plan: shard its inputs, attack, gather (one collective), show progress."""

    def __init__(self, name: str, model_name: str, collective: Collective, log: ProgressLog | None,
                 progress: AuditProgress) -> None:
        self.name, self.model_name = name, model_name
        self.collective, self.log, self.progress = collective, log, progress
        self.info: dict[str, Any] = {}

    def pool(self, ids: torch.Tensor) -> torch.Tensor:
        """This process's share of the stage's inputs (ids, on the CPU)."""
        self.progress.stage(self.model_name, self.name)
        return shard(ids.cpu(), self.collective.rank, self.collective.world_size)

    def record(self) -> Any:
        """Where the stage's finished batches are recorded (``None``: not resumable)."""
        return self.log.view(self.model_name, self.name) if self.log is not None else None

    def gather(self, ids: torch.Tensor, values: dict[str, Any], n: int, detail: str = "") -> dict:
        """Every process's per-sample ``values`` over all ``n`` inputs (one collective)."""
        before = self.collective.calls[self.name]
        parts = self.collective.gather({"ids": ids.cpu(), "values": _cpu(values)}, self.name)
        sizes = [int(p["ids"].numel()) for p in parts]
        self.info = {"inputs": sum(sizes), "per_process": sizes,
                     "collectives": self.collective.calls[self.name] - before}
        self.progress.stage_done(sum(sizes), detail)
        return _merge(parts, n, _default_fill)


def _probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor, thresholds: MaskingThresholds, check_samples: int,
           seed: int, name: str, collective: Collective, log: ProgressLog | None, progress: AuditProgress
           ) -> tuple[list[Check], dict[str, Any]]:
    """The model checks: recorded, else computed on rank 0 and broadcast (they steer the plan)."""
    progress.stage(name, "probe")
    before = collective.calls["probe"]
    stored = log.blob(name, "probe") if log is not None else None
    if stored is None:
        checks = model_checks(model, x, y, thresholds, fd_samples=check_samples, seed=seed) \
            if collective.is_main else None
        checks = collective.broadcast(checks, "probe")
        if log is not None and collective.is_main:
            log.put_blob(name, "probe", [c.to_dict() for c in checks])
    else:
        checks = [Check(**c) for c in stored]
    progress.stage_done(x.shape[0])
    return checks, {"inputs": int(x.shape[0]), "collectives": collective.calls["probe"] - before}


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
    white = [roles["one_step"], roles["naive"], *roles["adaptive"]]
    later = [*roles["cascade"], *roles["black_box"]]
    check_attacks(white, eps)

    # ------------------------------------------------------------------ white box, side by side
    stage = _Stage("white_box", name, collective, log, progress)
    pool = stage.pool(all_ids)
    on = pool.to(x.device)
    _, ex = robustness_counts(model, x[on], y[on], white, eps, batch_size, cascade=False, ids=on,
                              record=stage.record(), on_progress=progress.attack)
    found = stage.gather(pool, {"clean": ex["clean_correct"], "fooled": ex["fooled"]}, n)
    stages = {"probe": probe_info, "white_box": stage.info}
    clean_mask = found["clean"]
    fooled: dict[str, dict[str, torch.Tensor]] = dict(found["fooled"])
    results = [
        {"attack": a.name, "eps": e, "robust_accuracy": int((clean_mask & ~fooled[a.name][eps_key(e)]).sum()) / n,
         "stage": "white_box"}
        for e in eps for a in white
    ]
    robust = {eps_key(e): clean_mask & ~torch.stack([fooled[a.name][eps_key(e)] for a in white]).any(0) for e in eps}
    white_worst = {e: int(robust[eps_key(e)].sum()) / n for e in eps}

    # ------------------------------------------------------------------ cascade on the survivors
    min_norm: dict[str, torch.Tensor] = {}
    after: dict[str, dict[float, float]] = {a.name: dict(white_worst) for a in later}
    survivors = torch.stack(list(robust.values())).any(0).nonzero().squeeze(1)
    if later:
        stage = _Stage("cascade", name, collective, log, progress)
        pool = stage.pool(survivors)
        values: dict[str, Any] = {"fooled": {a.name: {} for a in later}, "min_norm": {}}
        if pool.numel():
            on = pool.to(x.device)
            alive = {key: mask[pool].to(x.device) for key, mask in robust.items()}
            _, ex = robustness_counts(model, x[on], y[on], later, eps, batch_size, cascade=True, alive=alive,
                                      ids=on, record=stage.record(), on_progress=progress.attack)
            values = {"fooled": ex["fooled"], "min_norm": ex["min_norm"]}
        found = stage.gather(pool, values, n, f" ({', '.join(a.name for a in later)})")
        stages["cascade"] = stage.info
        for a in later:
            by_eps = found["fooled"].get(a.name) or {}
            fooled[a.name] = {eps_key(e): by_eps.get(eps_key(e), torch.zeros(n, dtype=torch.bool)) for e in eps}
            for e in eps:
                robust[eps_key(e)] = robust[eps_key(e)] & ~fooled[a.name][eps_key(e)]
                after[a.name][e] = int(robust[eps_key(e)].sum()) / n
        min_norm = {a.name: found["min_norm"].get(a.name, torch.full((n,), float("inf")))
                    for a in later if isinstance(a, MinNormAttack)}
    worst = {e: int(robust[eps_key(e)].sum()) / n for e in eps}
    for a in later:
        results += [{"attack": a.name, "eps": e, "robust_accuracy": after[a.name][e], "stage": "after_white_box"}
                    for e in eps]

    # ------------------------------------------------------------------ the checklist's attacks
    main_eps = eps[len(eps) // 2]
    probe = PGD(eps=main_eps, norm=norm, steps=suite.steps, loss="margin", seed=seed)
    plan = ChecklistAttacks.build(roles["naive"], probe, x[0].numel())
    stage = _Stage("checks", name, collective, log, progress)
    cs = min(check_samples, n)
    pool = stage.pool(all_ids[:cs])
    on, rec = pool.to(x.device), stage.record()
    _, ex_big = robustness_counts(model, x[on], y[on], [plan.unbounded], [plan.unbounded.eps], batch_size,
                                  cascade=False, ids=on, record=rec, on_progress=progress.attack)
    _, ex_probe = robustness_counts(model, x[on], y[on], plan.at_probe_eps(), [main_eps], batch_size,
                                    cascade=False, ids=on, record=rec, on_progress=progress.attack)
    big_key, probe_key = eps_key(plan.unbounded.eps), eps_key(main_eps)
    fooled_checks = {plan.unbounded.name: ex_big["fooled"][plan.unbounded.name][big_key],
                     **{a.name: ex_probe["fooled"][a.name][probe_key] for a in plan.at_probe_eps()}}
    found = stage.gather(pool, {"clean": ex_probe["clean_correct"], "fooled": fooled_checks}, cs)
    stages["checks"] = stage.info

    # ------------------------------------------------------------------ the checklist: pure functions
    curve = {a.name: {r["eps"]: r["robust_accuracy"] for r in results if r["attack"] == a.name} for a in white}
    clean = int(clean_mask.sum()) / n
    naive, one_step = roles["naive"].name, roles["one_step"].name
    checks.append(check_one_step_vs_iterative(curve[one_step], curve[naive], thresholds, (one_step, naive)))
    checks.append(check_adaptive_vs_naive(curve[naive], {a.name: curve[a.name] for a in roles["adaptive"]},
                                          thresholds, naive))
    checks.append(check_monotone({**curve, "worst": worst}, clean, thresholds))
    gradient_worst = {e: after[roles["cascade"][-1].name][e] for e in eps} if roles["cascade"] else white_worst
    random_names = [a.name for a in roles["black_box"] if isinstance(a, RandomSampling)]
    other_names = [a.name for a in roles["black_box"] if not isinstance(a, RandomSampling)]
    if random_names:
        checks.append(check_extra_found("random_sampling_beats_attacks", "Random sampling in the ball",
                                        gradient_worst, after[random_names[-1]], thresholds.random_gap, random_names))
    if other_names:
        base = after[random_names[-1]] if random_names else gradient_worst
        checks.append(check_extra_found("black_box_beats_white_box", "Gradient-free attacks", base,
                                        after[other_names[-1]], thresholds.black_box_gap, other_names))
    checks += plan.checks(found["clean"], found["fooled"], thresholds)

    per_sample_results = {"clean_correct": clean_mask, "robust": robust, "fooled": fooled, "min_norm": min_norm}
    examples = _examples(model, x, y, eps, [*white, *later], per_sample_results, keep_examples, batch_size) \
        if collective.is_main else {}
    return ModelAudit(
        name=name, source=source, norm=norm, eps=eps, num_samples=n, clean_accuracy=clean, results=results,
        worst_case={eps_key(e): worst[e] for e in eps}, gradient_masking=verdict(checks),
        roles=role_names(roles), seconds=round(time.perf_counter() - start, 2), examples=examples,
        per_sample=_per_sample(per_sample_results), stages=stages,
    )


def _examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Sequence[float], attacks: Sequence[Attack],
              found: dict[str, Any], k: int, batch_size: int) -> dict[str, Any]:
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
            taken = ~found["clean_correct"][:k].to(x.device)
            for attack in attacks:
                mask = found["fooled"][attack.name][key][:k].to(x.device) & ~taken
                ids = mask.nonzero().squeeze(1)
                if ids.numel() == 0:
                    continue
                if isinstance(attack, MinNormAttack):
                    points, norms = attack.min_norms(model, x[ids], y[ids], ids)
                    x_adv = torch.where(per_sample(norms <= e, points), points, x[ids])
                else:
                    x_adv = attack.with_eps(e)(model, x[ids], y[ids], ids)
                adv[ids] = x_adv
                taken |= mask
            out["adv"][key] = adv
            with torch.no_grad():
                out["pred"][key] = torch.cat([model(b).argmax(1) for b in adv.split(batch_size)]) if k else \
                    torch.zeros(0, dtype=torch.long, device=x.device)
    return out


def _per_sample(found: dict[str, Any]) -> dict[str, Any]:
    """Plain lists per input: correct, robust per eps, fooled by attack per eps, minimum norms."""
    return {
        "clean_correct": found["clean_correct"].tolist(),
        "robust": {key: mask.tolist() for key, mask in found["robust"].items()},
        "fooled_by": {name: {key: m.tolist() for key, m in by_eps.items()} for name, by_eps in found["fooled"].items()},
        "min_norm": {name: [None if not math.isfinite(v) else round(v, 6) for v in norms.tolist()]
                     for name, norms in found["min_norm"].items()},
    }


__all__ = ["ChecklistAttacks", "audit_model"]
