"""The distillation story in numbers: trained checkpoints vs naive and margin attacks.

For each checkpoint: clean accuracy, mean max-logit and the fraction of test inputs whose
cross-entropy input gradient is exactly zero (all test images), then robust accuracy at L-inf
eps under FGSM and PGD-20 with the CE, margin and DLR losses, each attack run alone
(``cascade=False``) on the first ``--n`` test images.

    python benchmarks/distillation_robustness.py \
        teacher_T1=runs/fashion_mnist/teacher/version_0/checkpoints/last.ckpt \
        teacher_T100=runs/fashion_mnist/distillation_teacher_T100/version_0/checkpoints/last.ckpt \
        student_T100=runs/fashion_mnist/distilled_T100/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from _data import benchmark_datamodule

from lit_defense.attacks import FGSM, PGD
from lit_defense.evaluation import eps_key, evaluate_robustness
from lit_defense.modules.classifier import zero_input_gradient
from lit_defense.modules.loading import module_from_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="name=path/to/checkpoint.ckpt")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--n", type=int, default=1000, help="test images attacked")
    parser.add_argument("--eps", type=float, default=0.1)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    dm = benchmark_datamodule(args.dataset, stages=("test",))
    x_all = dm.test_set.images.float() / 255
    y_all = dm.test_set.labels
    attacks = [FGSM(), PGD(steps=20, loss="ce"), PGD(steps=20, loss="margin"), PGD(steps=20, loss="dlr")]
    names = [a.name for a in attacks]
    print(f"{len(y_all)} test images for the gradient statistics, {args.n} attacked, Linf eps={args.eps}")
    print(f"{'model':16s} {'zero-grad':>9s} {'max-logit':>9s} {'clean':>6s} "
          + " ".join(f"{n:>10s}" for n in [*names, "worst"]) + "  seconds")
    for spec in args.models:
        name, _, path = spec.partition("=")
        model = module_from_checkpoint(path)
        start = time.perf_counter()
        zero = torch.cat([zero_input_gradient(model, xb, yb)
                          for xb, yb in zip(x_all.split(500), y_all.split(500), strict=True)])
        with torch.no_grad():
            scale = torch.cat([model(xb).amax(1) for xb in x_all.split(1000)]).mean().item()
        result = evaluate_robustness(model, x_all[: args.n], y_all[: args.n], attacks, [args.eps], cascade=False)
        key = eps_key(args.eps)
        accs = [result.robust_accuracy[n][key] for n in [*names, "worst"]]
        print(f"{name:16s} {zero.float().mean().item():9.1%} {scale:9.1f} {result.clean_accuracy:6.1%} "
              + " ".join(f"{a:10.1%}" for a in accs) + f"  {time.perf_counter() - start:.1f}")


if __name__ == "__main__":
    main()
