"""A randomized model's audit, judged in expectation: the null eps, the expected clean accuracy, and the time.

    python benchmarks/randomized_expectation.py --run runs/<make-run-folder>            # the null test
    python benchmarks/randomized_expectation.py --run runs/<folder> --baseline_src ../old-checkout

On ``make run``'s random resize-pad model (``--model``) and the audit's own 400 images
(``fixed_subset(test_set, 400, seed=0)``, the quick profile's suite):

1. the model's *expected* clean accuracy, over ``--draws`` (100) fresh draws of its randomness per
   image, and the single-draw and majority-of-draws accuracies beside it;
2. ``audit_model`` at eps = 1e-4, a budget below half a gray level that changes no pixel's 8-bit
   value: its worst case and interval, which must contain the expected clean accuracy;
3. with ``--baseline_src`` (another checkout of lit-defense, e.g. the commit before judging in
   expectation), the quick profile's audit of the model at eps 0.05/0.1/0.2 timed with that code
   and with this one, one after the other in fresh processes: the ratio of their seconds, and
   each one's worst case.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

QUICK = dict(square_queries=300, eot_samples=5, steps=20, apgd_steps=25, apgd_targets=4, apgd_targeted_steps=25,
             min_norm_steps=25, adequacy_samples=20)
GRID = [0.05, 0.1, 0.2]


def _data(samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _data import benchmark_datamodule

    from lit_defense.data import fixed_subset

    return fixed_subset(benchmark_datamodule("fashion_mnist", stages=("test",)).test_set, samples, seed=0)


def timed_audit(ckpt: str, samples: int) -> dict:
    """The quick profile's audit of ``ckpt`` on the grid: seconds and worst cases (whatever code is imported)."""
    from lit_defense.audit import AttackSuite, audit_model
    from lit_defense.modules.loading import module_from_checkpoint

    x, y = _data(samples)
    model = module_from_checkpoint(Path(ckpt)).requires_grad_(False)
    start = time.perf_counter()
    audit = audit_model(model, x, y, GRID, suite=AttackSuite(**QUICK), check_samples=200)
    return {"seconds": round(time.perf_counter() - start, 1), "clean": audit.clean_accuracy,
            "worst_case": audit.worst_case, "expected": getattr(audit, "expected", None),
            "verdict": audit.gradient_masking.state, "triggered": audit.gradient_masking.triggered}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a `make run` folder (runs/<timestamp>-<profile>)")
    parser.add_argument("--model", default="masked_random_resize_pad")
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--baseline_src", help="another checkout whose audit to time beside this one's")
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--timed_only", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    ckpt = str(Path(args.run) / args.model / "version_0" / "checkpoints" / "last.ckpt")
    if args.timed_only:
        print(json.dumps(timed_audit(ckpt, args.samples)))
        return
    from lit_defense.audit import AttackSuite, audit_model
    from lit_defense.judge import Judge
    from lit_defense.modules.loading import module_from_checkpoint

    x, y = _data(args.samples)
    model = module_from_checkpoint(Path(ckpt)).requires_grad_(False)
    torch.manual_seed(123)
    rates = Judge(args.draws).rates(model, x, y)
    with torch.no_grad():
        single = (model(x).argmax(1) == y).double().mean().item()
    out: dict = {"model": args.model, "samples": args.samples, "draws": args.draws,
                 "expected_clean": rates.double().mean().item(), "single_draw_clean": single,
                 "majority_clean": (rates > 0.5).double().mean().item()}
    print(f"{args.model}, {args.samples} images: expected clean accuracy over {args.draws} draws "
          f"{out['expected_clean']:.2%} (one draw {single:.2%}, majority of draws {out['majority_clean']:.2%})")
    audit = audit_model(model, x, y, [1e-4], suite=AttackSuite(**QUICK), check_samples=200)
    worst = audit.estimate(audit.worst_case["0.0001"], "0.0001")
    lo, hi = worst.ci
    out["null"] = {"worst": worst.value, "ci": [lo, hi], "draws": audit.expected["draws"] if audit.expected else 1,
                   "audit_clean": audit.clean_accuracy, "contains_expected_clean": lo <= out["expected_clean"] <= hi,
                   "seconds": audit.seconds}
    print(f"audit at eps=1e-4: worst case {worst.text()} ({out['null']['draws']} draws per point), audit's clean "
          f"{audit.clean_accuracy:.2%}; contains the expected clean accuracy: {out['null']['contains_expected_clean']}")
    if args.baseline_src:
        timed = {}
        for label, src in (("baseline", args.baseline_src), ("this", str(Path(__file__).resolve().parents[1]))):
            env = {**os.environ, "PYTHONPATH": src}
            proc = subprocess.run([sys.executable, __file__, "--run", args.run, "--model", args.model, "--samples",
                                   str(args.samples), "--timed_only"], env=env, check=True, capture_output=True,
                                  text=True)
            timed[label] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{label}: {timed[label]['seconds']:.0f} s, clean {timed[label]['clean']:.2%}, worst case "
                  + ", ".join(f"@{k} {v:.2%}" for k, v in timed[label]["worst_case"].items()), flush=True)
        out["timed"] = timed
        print(f"this / baseline seconds: {timed['this']['seconds'] / timed['baseline']['seconds']:.2f}")
    if args.output:
        Path(args.output).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
