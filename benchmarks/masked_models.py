"""Apparent vs adaptive robustness of the masked models and the adversarially trained baseline.

    python benchmarks/masked_models.py --teacher runs/.../teacher/.../last.ckpt \
        masked_bit_depth=runs/.../last.ckpt ... --adv_train runs/.../adv_train/.../last.ckpt

On ``--samples`` test images at L-inf ``--eps`` (0.1), for every masked model: the naive attack
(PGD with the cross-entropy, no BPDA/EOT) and its adaptive counterpart, the same PGD through BPDA
(for a model with non-differentiable preprocessing) and/or EOT (for a randomized one), with the
margin loss by default (``--adaptive_loss ce`` isolates BPDA/EOT from the loss). Prints the
apparent gain over the undefended teacher and the fraction of it the adaptive attack removes
(issue bar: gain >= 30 points, removed >= 50%). For the adversarially trained model: PGD-CE,
PGD-margin, PGD-DLR, Square and the per-sample worst case (bar: worst >= 65% and no adaptive
attack more than 3 points below plain PGD).
"""

from __future__ import annotations

import argparse
import time

import torch
from _data import benchmark_datamodule

from lit_defense.attacks import BPDA, EOT, PGD, Square, masked_modules
from lit_defense.data import fixed_subset
from lit_defense.evaluation import WORST, evaluate_robustness
from lit_defense.modules.loading import module_from_checkpoint


def is_randomized(model, x) -> bool:
    with torch.no_grad():
        return not torch.equal(model(x[:32]), model(x[:32]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("masked", nargs="*", help="name=checkpoint of each masked model")
    parser.add_argument("--teacher", required=True, help="the undefended model's checkpoint")
    parser.add_argument("--adv_train", help="the adversarially trained model's checkpoint")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eot", type=int, default=10)
    parser.add_argument("--adaptive_loss", default="margin", choices=["ce", "margin"],
                        help="loss of the PGD inside BPDA/EOT (margin: Carlini-Wagner, the usual adaptive choice)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dm = benchmark_datamodule("fashion_mnist", stages=("test",))
    x, y = fixed_subset(dm.test_set, args.samples, seed=0)
    eps = args.eps
    naive = PGD(steps=args.steps, loss="ce", name="naive_pgd_ce")

    teacher = module_from_checkpoint(args.teacher).requires_grad_(False)
    base = evaluate_robustness(teacher, x, y, [naive], [eps], cascade=False)
    t_acc = base.robust_accuracy["naive_pgd_ce"][f"{eps:g}"]
    print(f"{args.samples} Fashion-MNIST test images, Linf eps={eps}, PGD-{args.steps}, EOT-{args.eot}")
    print(f"undefended teacher: clean {base.clean_accuracy:.3f}, naive PGD-CE {t_acc:.3f}")
    print(f"{'model':<26}{'clean':>7}{'naive':>8}{'adaptive':>10}{'attack':>24}{'gain':>7}{'removed':>9}  bar")
    for item in args.masked:
        name, path = item.split("=", 1)
        model = module_from_checkpoint(path).requires_grad_(False)
        adaptive = PGD(steps=args.steps, loss=args.adaptive_loss)
        if masked_modules(model):
            adaptive = BPDA(adaptive)
        if is_randomized(model, x):
            adaptive = EOT(adaptive, samples=args.eot)
        start = time.perf_counter()
        res = evaluate_robustness(model, x, y, [naive, adaptive], [eps], cascade=False)
        n_acc = res.robust_accuracy["naive_pgd_ce"][f"{eps:g}"]
        a_acc = res.robust_accuracy[adaptive.name][f"{eps:g}"]
        gain = n_acc - t_acc
        removed = (n_acc - a_acc) / gain if gain > 0 else float("nan")
        ok = gain >= 0.30 and removed >= 0.5
        print(f"{name:<26}{res.clean_accuracy:>7.3f}{n_acc:>8.3f}{a_acc:>10.3f}{adaptive.name:>24}{gain:>7.3f}"
              f"{removed:>9.1%}  {'PASS' if ok else 'FAIL'}  ({time.perf_counter() - start:.0f} s)")
    if args.adv_train:
        model = module_from_checkpoint(args.adv_train).requires_grad_(False)
        attacks = [PGD(steps=args.steps, loss="ce"), PGD(steps=args.steps, loss="margin"),
                   PGD(steps=args.steps, loss="dlr"), Square(n_queries=1000)]
        res = evaluate_robustness(model, x, y, attacks, [eps], cascade=False)
        acc = {k: v[f"{eps:g}"] for k, v in res.robust_accuracy.items()}
        drop = acc["pgd_ce"] - min(acc[a.name] for a in attacks[1:])
        ok = acc[WORST] >= 0.65 and drop <= 0.03
        print(f"adversarial training: clean {res.clean_accuracy:.3f}, "
              + ", ".join(f"{k} {v:.3f}" for k, v in acc.items())
              + f"; largest drop below PGD-CE {drop:+.3f}  {'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    main()
