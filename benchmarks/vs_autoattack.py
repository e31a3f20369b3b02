"""The audit against the reference AutoAttack (Croce & Hein 2020), side by side, same models and images.

    pip install --no-deps pyautoattack==0.2.0          # benchmark-only, never a runtime dependency
    python benchmarks/vs_autoattack.py --run runs/<make-run-folder> \
        --models teacher distillation_teacher distilled adv_train --samples 1000 --eps 0.1 --grid
    python benchmarks/vs_autoattack.py --run runs/<folder> --models masked_bit_depth \
        masked_random_resize_pad --samples 200               # randomized models: AutoAttack 'rand'
    python benchmarks/vs_autoattack.py --run runs/<folder> --models teacher adv_train --norm l2 --eps 1.0
    python benchmarks/vs_autoattack.py --run runs/<folder> --device cuda --samples 1000 --grid

For every model, on the audit's own fixed subset of the Fashion-MNIST test set
(``fixed_subset(test_set, samples, seed=0)``): AutoAttack ``standard`` (APGD-CE, APGD-T, FAB-T,
Square-5000; its ``rand`` version, EOT-20 APGD-CE and APGD-DLR, for a model whose outputs are
random) and ``audit_model`` with the default suite at the same eps, each timed. Prints both robust
accuracies, how many images each finds that the other misses, the time ratio, and with ``--grid``
the time of the audit's default three-eps grid (0.05, 0.1, 0.2 for L-inf). ``--output`` writes the
rows as JSON.

Beside the seconds, both sides are counted by the same ``lit_defense.cost.CostCounter`` attached
to the model: **rounds** (sequential forward and backward calls) and **work** (rows through the
model, forward and backward), which do not depend on the machine. On a GPU, time follows rounds
for a small model; on a CPU it follows work. ``--device cuda`` runs both sides there.

A randomized model is judged in expectation over its own randomness on both sides: AutoAttack's
final points (``rand`` keeps, per input, the point of the first attack that one draw says fooled
it) and the audit's get each input's expected accuracy from the same estimator
(``lit_defense.judge.Judge`` with the audit's draws, fresh draws), and the two are compared on
the same inputs by the paired rule on expectations (``lit_defense.stats.paired``). Its
``AA only`` / ``audit only`` columns are then the expected discordant counts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

import torch
from _data import benchmark_datamodule

from lit_defense.audit import AttackSuite, AuditRuntime, audit_model
from lit_defense.audit.display import AuditProgress
from lit_defense.cost import Cost, CostCounter
from lit_defense.data import fixed_subset
from lit_defense.evaluation import eps_key
from lit_defense.judge import Judge
from lit_defense.modules.loading import module_from_checkpoint
from lit_defense.stats import paired

GRID = {"linf": [0.05, 0.1, 0.2], "l2": [0.5, 1.0, 2.0]}


def is_randomized(model, x) -> bool:
    with torch.no_grad():
        return not torch.equal(model(x[:32]), model(x[:32]))


AA_ATTACKS = {"standard": ["apgd-ce", "apgd-t", "fab-t", "square"], "rand": ["apgd-ce", "apgd-dlr"]}


def autoattack(model, x, y, norm: str, eps: float, version: str, batch_size: int) -> tuple[torch.Tensor, float, dict]:
    """``_autoattack`` with its model calls counted (``cost``: rounds and work, as the audit's are)."""
    with CostCounter().attached(model) as counter:
        robust, seconds, detail = _autoattack(model, x, y, norm, eps, version, batch_size)
    return robust, seconds, {**detail, "cost": counter.cost.to_dict()}


def _autoattack(model, x, y, norm: str, eps: float, version: str, batch_size: int) -> tuple[torch.Tensor, float, dict]:
    """AutoAttack's per-sample robustness (True: still classified correctly), its time, and per sample
    the AutoAttack attack that fooled it first (``first``: "" robust, "clean" misclassified clean)
    and its final point (``points``: the clean input where no attack fooled it).

    The version's attacks run one call each on the inputs still robust, which is exactly what
    ``run_standard_evaluation`` does in one call (same seeds, same order, same batches).
    """
    from pyautoattack import AutoAttack

    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    adversary = AutoAttack(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, version=version,
                           seed=0, device=x.device)
    adversary.verbose = False
    first = [""] * x.shape[0]
    seconds: dict[str, float] = {}

    def predict(inputs):
        with torch.no_grad():
            return torch.cat([model(b).argmax(1) for b in inputs.split(batch_size)])

    robust = predict(x) == y
    points = x.clone()
    for i in (~robust).nonzero().squeeze(1).tolist():
        first[i] = "clean"
    for attack in AA_ATTACKS[version]:
        todo = robust.nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        adversary.attacks_to_run = [attack]
        start = time.perf_counter()
        x_adv, _ = adversary.run_standard_evaluation(x[todo], y[todo], batch_size=batch_size)
        seconds[attack] = round(time.perf_counter() - start, 1)
        hit = predict(x_adv) != y[todo]
        fooled = todo[hit]
        points[fooled] = x_adv[hit]
        robust[fooled] = False
        for i in fooled.tolist():
            first[i] = attack
    return robust, sum(seconds.values()), {"first": first, "seconds": seconds, "points": points}


def ours(model, x, y, norm: str, eps: list[float], suite: AttackSuite) -> tuple[dict[str, torch.Tensor], float, dict]:
    """The audit's per-sample robustness per eps key, its time, and its report with the stage lines."""
    lines: list[str] = []  # the audit's own line per finished stage: where its time went
    start = time.perf_counter()
    audit = audit_model(model, x, y, eps, norm, suite=suite,
                        runtime=AuditRuntime(progress=AuditProgress(1, log=lines.append, bars=False)))
    seconds = time.perf_counter() - start
    robust = {key: mask.to(x.device) for key, mask in audit.per_sample.robust.items()}
    if audit.per_sample.randomized:  # per input, the expected accuracy at the worst point (``PerSample.expected_to``)
        robust = {eps_key(e): audit.per_sample.expected_to(None, e).to(x.device) for e in audit.eps}
    return robust, seconds, {**audit.to_dict(), "per_sample": audit.per_sample.to_dict(), "stage_lines": lines}


def _ratio(ours: int, reference: int) -> str:
    return f"{ours / reference:.3f}" if reference else "n/a"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _first_fooled(report: dict, key: str) -> list[str]:
    """Per sample, the first of the audit's attacks (in its order) that fooled it; "" none, "clean" misclassified."""
    per = report["per_sample"]
    out = ["" if ok else "clean" for ok in per["clean_correct"]]
    for attack, by_eps in per["fooled_by"].items():
        for i, hit in enumerate(by_eps.get(key, [])):
            if hit and out[i] == "":
                out[i] = attack
    return out


def _cached_autoattack(path: str | None, digest: str, norm: str, eps: float, samples: int,
                       version: str) -> dict | None:
    """The row of an earlier ``--output`` file for this checkpoint and setting, or None."""
    if not path or not Path(path).is_file():
        return None
    for row in json.loads(Path(path).read_text()):
        if (row.get("checkpoint_sha256"), row.get("norm"), row.get("eps"), row.get("samples"),
                row.get("autoattack_version")) == (digest, norm, eps, samples, version):
            return row
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a `make run` folder (runs/<timestamp>-<profile>)")
    parser.add_argument("--models", nargs="+", default=["teacher", "distillation_teacher", "distilled", "adv_train"])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--norm", default="linf", choices=["linf", "l2"])
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--grid", action="store_true", help="also time the audit's default three-eps grid")
    parser.add_argument("--batch_size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where both sides run (cpu, cuda, cuda:1)")
    parser.add_argument("--output", help="write the rows as JSON here (after every model)")
    parser.add_argument("--reuse_autoattack", metavar="JSON",
                        help="take AutoAttack's per-sample outcome and time from an earlier --output file when its "
                             "checkpoint sha256, norm, eps and samples match (to iterate on the audit; the bars "
                             "need a run without it)")
    parser.add_argument("--suite", nargs="*", default=[], metavar="KEY=VALUE",
                        help="AttackSuite overrides (integers), e.g. apgd_targets=9; default: the audit's defaults")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dm = benchmark_datamodule("fashion_mnist", stages=("test",))
    x, y = fixed_subset(dm.test_set, args.samples, seed=0)
    x, y = x.to(args.device), y.to(args.device)
    key = eps_key(args.eps)
    # the attacks against AutoAttack's: the positive control (on by default in an audit) attacks
    # another task, so it is off here unless --suite adequacy_samples=N asks for it
    suite = AttackSuite(**{"adequacy_samples": 0, **{k: int(v) for k, v in (kv.split("=", 1) for kv in args.suite)}})
    rows = []
    print(f"{args.samples} Fashion-MNIST test images, {args.norm} eps={args.eps:g}; device={args.device}; "
          f"threads={torch.get_num_threads()}; {suite}")
    header = (f"{'model':<26}{'AutoAttack':>11}{'audit':>8}{'AA only':>8}{'audit only':>11}"
              f"{'AA s':>8}{'audit s':>9}{'audit/AA':>9}{'AA rounds':>10}{'rounds/AA':>10}{'work/AA':>8}"
              + (f"{'grid s':>8}{'grid/AA':>8}{'rounds/AA':>10}" if args.grid else ""))
    print(header)
    for name in args.models:
        ckpt = Path(args.run) / name / "version_0" / "checkpoints" / "last.ckpt"
        model = module_from_checkpoint(ckpt).requires_grad_(False).to(args.device)
        randomized = is_randomized(model, x)
        version = "rand" if randomized else "standard"
        digest = _sha256(ckpt)
        cached = _cached_autoattack(args.reuse_autoattack, digest, args.norm, args.eps, args.samples, version)
        if cached is not None and not randomized:  # an earlier run's AutoAttack on this very checkpoint and images
            aa_robust = torch.tensor(cached["per_sample"]["autoattack_robust"], device=x.device)
            aa_s = cached["autoattack_seconds"]
            aa_detail = {"first": cached["per_sample"]["autoattack_first"],
                         "seconds": cached["autoattack_seconds_per_attack"],
                         "cost": {"rounds": cached.get("autoattack_rounds", 0), "work": cached.get("autoattack_work", 0)}}
        else:
            cached = None  # a randomized model's points are not kept between runs: AutoAttack runs again
            torch.manual_seed(0)
            aa_robust, aa_s, aa_detail = autoattack(model, x, y, args.norm, args.eps, version, args.batch_size)
        torch.manual_seed(0)
        robust, our_s, report = ours(model, x, y, args.norm, [args.eps], suite)
        judged = None
        if randomized:  # AutoAttack's points judged by the audit's estimator: fresh draws, as many
            draws = int(report["expected"]["draws"])
            torch.manual_seed(1)
            aa_robust = Judge(draws).rates(model, aa_detail.pop("points"), y)
            pair = paired(aa_robust, robust[key])  # AutoAttack's expectation minus the audit's
            judged = {"draws": draws, "paired": {**pair.evidence(), "difference": pair.difference,
                                                  "ci": list(pair.interval())},
                      "audit_not_higher": pair.decide(0.0, above=False).state != "fail"}
        aa_detail.pop("points", None)
        row = {
            "model": name, "randomized": randomized, "norm": args.norm, "eps": args.eps, "samples": args.samples,
            "autoattack_version": version, "autoattack_reused": cached is not None,
            "autoattack": aa_robust.double().mean().item(), "audit": robust[key].double().mean().item(),
            "autoattack_only": paired(robust[key], aa_robust).b, "audit_only": paired(aa_robust, robust[key]).b,
            **({"expected": judged} if judged else {}),
            "autoattack_seconds": round(aa_s, 1), "audit_seconds": round(our_s, 1), "device": args.device,
            "autoattack_rounds": aa_detail["cost"]["rounds"], "audit_rounds": report["cost"]["rounds"],
            "autoattack_work": aa_detail["cost"]["work"], "audit_work": report["cost"]["work"],
            "audit_stage_cost": report["cost"]["stages"],
            "audit_results": report["results"], "audit_stages": report["stage_lines"],
            "autoattack_seconds_per_attack": aa_detail["seconds"],
            "per_sample": {"autoattack_first": aa_detail["first"], "autoattack_robust": aa_robust.tolist(),
                           "audit_robust": robust[key].tolist(),
                           "audit_fooled_by": _first_fooled(report, key),
                           "audit_min_norm": report["per_sample"]["min_norm"]},
            "checkpoint_sha256": digest,
        }
        line = (f"{name:<26}{row['autoattack']:>11.2%}{row['audit']:>8.2%}{row['autoattack_only']:>8}"
                f"{row['audit_only']:>11}{aa_s:>8.0f}{our_s:>9.0f}{our_s / aa_s:>9.2f}"
                f"{row['autoattack_rounds']:>10}{_ratio(row['audit_rounds'], row['autoattack_rounds']):>10}"
                f"{_ratio(row['audit_work'], row['autoattack_work']):>8}")
        if args.grid:
            torch.manual_seed(0)
            grid_robust, grid_s, grid_report = ours(model, x, y, args.norm, GRID[args.norm], suite)
            row["grid_seconds"] = round(grid_s, 1)
            row["grid_stages"] = grid_report["stage_lines"]
            row["grid_rounds"], row["grid_work"] = grid_report["cost"]["rounds"], grid_report["cost"]["work"]
            row["grid_worst"] = {k: v.double().mean().item() for k, v in grid_robust.items()}
            line += f"{grid_s:>8.0f}{grid_s / aa_s:>8.2f}{_ratio(row['grid_rounds'], row['autoattack_rounds']):>10}"
        print(line + ("  (AutoAttack reused)" if cached is not None else ""), flush=True)
        rows.append(row)
        if args.output:  # after every model: a stopped run keeps what it measured
            Path(args.output).write_text(json.dumps(rows, indent=1))
    aa_total = sum(r["autoattack_seconds"] for r in rows)
    our_total = sum(r["audit_seconds"] for r in rows)
    ties = all(r["autoattack_only"] <= 1 for r in rows)
    total = {side: Cost() for side in ("autoattack", "audit", "grid")}
    for r in rows:
        for side in total:
            if f"{side}_rounds" in r:
                total[side].rounds += r[f"{side}_rounds"]
                total[side].forward_rows += r[f"{side}_work"]
    print(f"total: AutoAttack {aa_total:.0f} s, audit {our_total:.0f} s at one eps "
          f"(ratio {our_total / aa_total:.3f}; bar <= 0.10)")
    print(f"total: AutoAttack {total['autoattack'].rounds} rounds and {total['autoattack'].work} rows, audit "
          f"{total['audit'].rounds} and {total['audit'].work} at one eps (rounds ratio "
          f"{_ratio(total['audit'].rounds, total['autoattack'].rounds)}, work ratio "
          f"{_ratio(total['audit'].work, total['autoattack'].work)}; bars <= 0.10)")
    if args.grid:
        grid_total = sum(r["grid_seconds"] for r in rows)
        print(f"total: audit {grid_total:.0f} s on the {len(GRID[args.norm])}-eps grid "
              f"(ratio to AutoAttack at one eps {grid_total / aa_total:.3f}; bar <= 0.33); its rounds "
              f"{total['grid'].rounds}, ratio {_ratio(total['grid'].rounds, total['autoattack'].rounds)} (bar <= 0.33)")
    print(f"at most one 'AA only' image on every model: {ties}; audit worst case <= AutoAttack's on every model: "
          f"{all(r['audit'] <= r['autoattack'] + 1e-12 for r in rows)}")
    if any(r["autoattack_reused"] for r in rows):
        print("AutoAttack's results were reused for some models: their times come from an earlier run, "
              "not side by side; use a run without --reuse_autoattack for the bars")


if __name__ == "__main__":
    main()
