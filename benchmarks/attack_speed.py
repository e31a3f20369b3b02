"""Attack speed, measured side by side in one run, printed as ratios.

1. PGD per-step cost vs the bare forward + backward-to-input cost on the same batch.
2. Robust-accuracy evaluation with PGD-20 (CE, L-inf eps=0.1, 1000 Fashion-MNIST test images,
   undefended Papernot CNN): lit-defense's evaluation vs torchattacks' PGD-20, same step size
   (2.5 * eps / 20) and random start: time and robust accuracy. Ours is shown both as PGD-20
   alone (it skips misclassified points and drops fooled points every 5 steps) and as the
   default-style cascade FGSM -> PGD-20.
3. AdversarialEvaluation overhead: the callback's evaluation with default settings, as a fraction
   of one Fashion-MNIST training epoch of the same model.

torchattacks is a benchmark-only dependency (it pins an old `requests`):
    .venv/bin/pip install --no-deps torchattacks==3.5.1 scipy
    .venv/bin/python benchmarks/attack_speed.py [--checkpoint runs/fashion_mnist/teacher/version_0/checkpoints/last.ckpt]
"""

from __future__ import annotations

import argparse
import glob
import statistics
import time
import warnings

import lightning as L
import torch
import torch.nn.functional as F
from _data import benchmark_datamodule

from lit_defense.attacks import FGSM, PGD
from lit_defense.data import fixed_subset
from lit_defense.evaluation import evaluate_robustness, robustness_counts
from lit_defense.modules import Classifier
from lit_defense.modules.loading import module_from_checkpoint
from lit_defense_callbacks.adversarial_evaluation import AdversarialEvaluation


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def per_step(model, x, y, steps, repeats):
    def bare():
        for _ in range(steps):
            xi = x.detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xi), y, reduction="sum"), xi)

    attack = PGD(eps=0.1, steps=steps, early_stop_every=0)
    bare()  # warm-up
    attack(model, x, y)
    t_bare, t_pgd = [], []
    for _ in range(repeats):  # alternate, so both see the same machine load
        t_bare.append(_median_time(bare, 1))
        t_pgd.append(_median_time(lambda: attack(model, x, y), 1))
    ratios = [p / b for p, b in zip(t_pgd, t_bare, strict=True)]
    return statistics.median(t_bare) / steps, statistics.median(t_pgd) / steps, statistics.median(ratios)


def torchattacks_eval(model, x, y, eps, alpha, steps, batch):
    import torchattacks

    atk = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    correct = 0
    for xb, yb in zip(x.split(batch), y.split(batch), strict=True):
        adv = atk(xb, yb)
        with torch.no_grad():
            correct += (model(adv).argmax(1) == yb).sum().item()
    return correct / len(y)


def load_model(checkpoint, dm):
    paths = [checkpoint] if checkpoint else sorted(glob.glob("runs/fashion_mnist/teacher/version_*/checkpoints/last.ckpt"))
    if paths:
        print(f"model: {paths[-1]}")
        return module_from_checkpoint(paths[-1])
    print("model: no teacher checkpoint found; training one epoch")
    L.seed_everything(0)
    model = Classifier(mean=dm.mean, std=dm.std)
    L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0).fit(model, dm)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--n", type=int, default=1000, help="test images for the evaluation")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-epoch", action="store_true", help="skip part 3 (one training epoch)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    dm = benchmark_datamodule("fashion_mnist", stages=("fit", "test"))
    model = load_model(args.checkpoint, dm)
    x = dm.test_set.images[: args.n].float() / 255
    y = dm.test_set.labels[: args.n]

    # 1. per-step cost
    t_bare, t_pgd, ratio = per_step(model, x[:256], y[:256], steps=20, repeats=max(7, args.repeats))
    print("\n[1] PGD step vs bare forward+backward-to-input (batch 256)")
    print(f"    bare forward+backward : {t_bare * 1e3:7.2f} ms/step")
    print(f"    lit-defense PGD       : {t_pgd * 1e3:7.2f} ms/step")
    print(f"    ratio PGD / bare      : {ratio:.3f}x (median of 7+ alternated pairs)")

    # 2. evaluation vs torchattacks
    eps, steps = 0.1, 20
    alpha = 2.5 * eps / steps
    ours_pgd = [PGD(eps=eps, steps=steps, loss="ce", step_size=alpha)]
    ours_cascade = [FGSM(eps=eps), PGD(eps=eps, steps=steps, loss="ce", step_size=alpha)]
    rows = {"ours PGD-20": [], "ours FGSM->PGD-20": [], "torchattacks PGD-20": []}
    accs = {}
    for _ in range(args.repeats):
        start = time.perf_counter()
        accs["ours PGD-20"] = evaluate_robustness(model, x, y, ours_pgd, [eps], batch_size=250).worst(eps)
        rows["ours PGD-20"].append(time.perf_counter() - start)
        start = time.perf_counter()
        accs["ours FGSM->PGD-20"] = evaluate_robustness(model, x, y, ours_cascade, [eps], batch_size=250).worst(eps)
        rows["ours FGSM->PGD-20"].append(time.perf_counter() - start)
        start = time.perf_counter()
        accs["torchattacks PGD-20"] = torchattacks_eval(model, x, y, eps, alpha, steps, 250)
        rows["torchattacks PGD-20"].append(time.perf_counter() - start)
    ref = statistics.median(rows["torchattacks PGD-20"])
    print(f"\n[2] robust accuracy, PGD-20 CE, Linf eps={eps}, step {alpha}, {len(y)} test images")
    for name, times in rows.items():
        t = statistics.median(times)
        print(f"    {name:22s}: {t:7.2f} s  robust acc {accs[name]:.4f}  speed-up vs torchattacks {ref / t:5.2f}x")

    # 3. callback overhead vs a training epoch, on the undefended model and on T=100 models
    cb = AdversarialEvaluation()
    xv, yv = fixed_subset(dm.val_set, cb.num_samples, cb.seed)  # the callback's own subset
    models = {"undefended": model}
    for pattern in ("runs/fashion_mnist/distillation_teacher_T100/version_*/checkpoints/last.ckpt",
                    "runs/fashion_mnist/distilled_T100/version_*/checkpoints/last.ckpt"):
        found = sorted(glob.glob(pattern))
        if found:
            models[found[-1].split("/")[2]] = module_from_checkpoint(found[-1])
    print(f"\n[3] AdversarialEvaluation defaults ({[a.name for a in cb.attacks]}, eps={cb.eps}, "
          f"{cb.num_samples} samples)")
    t_cb = {}
    for name, m in models.items():
        t_cb[name] = _median_time(
            lambda m=m: robustness_counts(m, xv, yv, cb.attacks, cb.eps, cb.batch_size, cb.cascade), args.repeats)
        print(f"    {name:28s}: {t_cb[name]:.2f} s")
    if not args.skip_epoch:
        L.seed_everything(0)
        fresh = Classifier(mean=dm.mean, std=dm.std)
        trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
        start = time.perf_counter()
        trainer.fit(fresh, train_dataloaders=dm.train_dataloader())
        t_epoch = time.perf_counter() - start
        print(f"    one training epoch ({len(dm.train_set)} images): {t_epoch:.1f} s")
        for name, t in t_cb.items():
            print(f"    callback / epoch, {name:17s}: {t / t_epoch:.3f} ({100 * t / t_epoch:.1f}% added per epoch)")


if __name__ == "__main__":
    main()
