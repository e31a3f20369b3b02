"""AdversarialEvaluation's per-epoch suite: the APGD default against the former PGD one and the audit.

    python benchmarks/callback_suite.py --run runs/<make-run-folder> --samples 500

For every model, on the callback's default subset size (500 images) at L-inf eps 0.1: the former
default (FGSM, PGD-5 CE, PGD-10 margin), the new default (``epoch_attacks()``: FGSM, APGD-5 CE,
APGD-10 margin) as the callback runs them (a cascade), and the
audit's worst case with its default suite. Prints each robust accuracy, the gap of each per-epoch
number to the audit, and the time ratio new / former, measured alternately in one process
(``--repeats`` times, median).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _data import benchmark_datamodule

from lit_defense.attacks import APGD, FGSM, PGD
from lit_defense.audit import audit_model
from lit_defense.audit.suite import epoch_attacks
from lit_defense.data import fixed_subset
from lit_defense.evaluation import evaluate_robustness
from lit_defense.modules.loading import module_from_checkpoint


def former() -> list:
    return [FGSM(), PGD(steps=5, loss="ce"), PGD(steps=10, loss="margin")]


# other candidates for the default, compared with --candidates
CANDIDATES = {
    "apgd_t1_dlr": lambda: [FGSM(), APGD(steps=5, loss="ce"), APGD(steps=10, loss="dlr", targets=1)],  # until 2026-11
    "apgd_dlr": lambda: [FGSM(), APGD(steps=5, loss="ce"), APGD(steps=10, loss="dlr")],
    "apgd_t2": lambda: [FGSM(), APGD(steps=5, loss="ce"), APGD(steps=5, loss="dlr", targets=2)],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--models", nargs="+", default=["teacher", "distillation_teacher", "distilled", "adv_train"])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--candidates", nargs="*", default=[], choices=sorted(CANDIDATES),
                        help="also measure these alternatives to the default (accuracy and time / former)")
    args = parser.parse_args()
    dm = benchmark_datamodule("fashion_mnist", stages=("test",))
    x, y = fixed_subset(dm.test_set, args.samples, seed=0)
    print(f"{args.samples} Fashion-MNIST test images, linf eps=0.1, threads={torch.get_num_threads()}")
    print(f"{'model':<24}{'former':>8}{'new':>8}{'audit':>8}{'former-audit':>14}{'new-audit':>11}{'time new/former':>17}")
    ratios = []
    for name in args.models:
        model = module_from_checkpoint(Path(args.run) / name / "version_0" / "checkpoints" / "last.ckpt")
        model.requires_grad_(False)
        times = {"former": [], "new": []}
        acc = {}
        for _ in range(args.repeats):
            for label, make in (("former", former), ("new", epoch_attacks)):
                start = time.perf_counter()
                acc[label] = evaluate_robustness(model, x, y, make(), [0.1]).worst(0.1)
                times[label].append(time.perf_counter() - start)
        for cand in args.candidates:
            start = time.perf_counter()
            cand_acc = evaluate_robustness(model, x, y, CANDIDATES[cand](), [0.1]).worst(0.1)
            cand_time = time.perf_counter() - start
            print(f"  {name} candidate {cand}: {cand_acc:.2%}, time / former "
                  f"{cand_time / statistics.median(times['former']):.2f}", flush=True)
        audit = audit_model(model, x, y, [0.1]).worst_case["0.1"]
        ratio = statistics.median(times["new"]) / statistics.median(times["former"])
        ratios.append(ratio)
        print(f"{name:<24}{acc['former']:>8.2%}{acc['new']:>8.2%}{audit:>8.2%}"
              f"{(acc['former'] - audit) * 100:>13.1f}p{(acc['new'] - audit) * 100:>10.1f}p{ratio:>17.2f}", flush=True)
    print(f"time new/former over the models: median {statistics.median(ratios):.2f} (bar <= 1.10)")


if __name__ == "__main__":
    main()
