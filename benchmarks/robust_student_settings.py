"""The robust student's training settings on the quick profile: epochs x learning rate, each measured
the way its claim is (``robust_distilled_keeps_robustness``).

    python benchmarks/robust_student_settings.py --run runs/<make-run-folder> \
        --settings 2:0.002 2:0.003 2:0.005 3:0.001 3:0.002 3:0.003 3:0.005 \
        --output benchmarks/results/robust_student_settings.json

For every ``epochs:lr``: trains the quick profile's ``robust_distilled`` stage (its recipe and
overrides, the run's ``adv_train`` as teacher, the given epochs and Adam learning rate) into a
scratch folder, attacks the claims' 2000 seeded test images with the audit's white-box attacks
(FGSM, PGD-CE, PGD-margin; ``lit-defense run``'s ``measure_for_claims``) and prints the student's
worst case minus the teacher's (from the run's ``test_split.json``), paired, with its 95% interval
and the claim's decision against the 5-point bar. Each setting takes about 1-2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from lit_defense.audit import ModelSpec
from lit_defense.audit.models import load_model
from lit_defense.audit.suite import default_attacks
from lit_defense.data import VisionDataModule, fixed_subset
from lit_defense.evaluation import robustness_counts
from lit_defense.lightning_cli import LitDefenseCLI
from lit_defense.pipeline import STAGES, _last_ckpt, load_profile, stage_args
from lit_defense.stats import paired


def teacher_worst(run: Path) -> torch.Tensor:
    """adv_train's white-box worst case on the claim images, as the run measured it."""
    found = json.loads((run / "test_split.json").read_text())["attacks"]["models"]["adv_train"]
    return torch.stack([torch.tensor(r, dtype=torch.bool) for r in found["robust"].values()]).all(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a quick `make run` folder (runs/<timestamp>-quick)")
    parser.add_argument("--settings", nargs="+", default=["2:0.005", "3:0.001"], metavar="EPOCHS:LR")
    parser.add_argument("--output", help="write the rows as JSON here (after every setting)")
    args = parser.parse_args()
    run = Path(args.run)
    profile = load_profile("quick")
    stage = next(s for s in STAGES if s.name == "robust_distilled")
    data = VisionDataModule(**dict(profile.audit_config(run).data.hparams))
    data.prepare_data()
    data.setup("test")
    x, y = fixed_subset(data.test_set, profile.claim_samples, seed=0)
    roles = default_attacks("linf", profile.audit_config(run).options.suite, masked=False, randomized=False)
    attacks = [roles.one_step, roles.naive, roles.margin]
    teacher = teacher_worst(run)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for setting in args.settings:
            epochs, lr = setting.split(":")
            name = f"e{epochs}_lr{lr}"
            fit = stage_args(stage, profile, Path(scratch)) + [
                f"--trainer.logger.init_args.name={name}", f"--trainer.max_epochs={epochs}",
                f"--model.init_args.lr_scheduler.init_args.T_max={epochs}",
                f"--model.init_args.optimizer.init_args.lr={lr}",
                f"--model.init_args.teacher_checkpoint={_last_ckpt(run, 'adv_train')}"]
            start = time.perf_counter()
            LitDefenseCLI(args=fit)
            seconds = time.perf_counter() - start
            student = load_model(ModelSpec(name=name, checkpoint=str(_last_ckpt(Path(scratch), name))))
            _, outcome = robustness_counts(student, x, y, attacks, [0.1], 1000, cascade=True)
            worst = outcome.robust["0.1"]
            pair = paired(worst, teacher)
            decision = pair.decide(-0.05, above=False, strict=True)
            rows.append({"epochs": int(epochs), "lr": float(lr), "train_seconds": round(seconds, 1),
                         "student": float(worst.double().mean()), "teacher": float(teacher.double().mean()),
                         "difference": pair.difference, "ci": list(decision.ci), "state": decision.state,
                         "n": int(x.shape[0])})
            r = rows[-1]
            print(f"{epochs} epochs, lr {lr}: student {r['student']:.1%} vs adv_train {r['teacher']:.1%}, "
                  f"{r['difference']:+.1%} [{r['ci'][0]:+.1%}, {r['ci'][1]:+.1%}] ({r['state']}), "
                  f"trained in {seconds:.0f} s", flush=True)
            if args.output:
                Path(args.output).write_text(json.dumps({"run": str(run), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
