"""Two-process DDP on CPU (gloo), through the CLI exactly as the README's "Scaling out" shows.

``strategy=ddp`` re-launches the command line, so each run is a subprocess of ``lit-defense``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, SYNTHETIC

TEACHER = CONFIGS / "fashion_mnist" / "teacher.yaml"
STUDENT = CONFIGS / "fashion_mnist" / "distilled.yaml"
ROBUST_STUDENT = CONFIGS / "fashion_mnist" / "robust_distilled.yaml"
DDP = CONFIGS / "trainer" / "ddp.yaml"
# the README's CPU variant of configs/trainer/ddp.yaml
DDP_CPU = ["--config", str(DDP), "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.precision=32-true"]
# deterministic attacks (no random start): DDP must reproduce the single-process numbers exactly
EVAL = """\
trainer:
  callbacks:
    - class_path: lit_defense_callbacks.AdversarialEvaluation
      init_args:
        num_samples: 128
        eps: [0.05, 0.1]
        attacks:
          - class_path: lit_defense.attacks.FGSM
          - class_path: lit_defense.attacks.PGD
            init_args: {steps: 5, loss: ce, random_start: false}
          - class_path: lit_defense.attacks.PGD
            init_args: {steps: 5, loss: margin, random_start: false}
    - class_path: lit_defense_callbacks.GradientMaskingMonitor
      init_args: {num_samples: 64}
"""


def _cli(args, cwd):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    exe = str(Path(sys.executable).with_name("lit-defense"))
    res = subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _scalars(run_dir: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for events in sorted(run_dir.glob("events.out.tfevents*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out[tag] = acc.Scalars(tag)[-1].value
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("ddp")


@pytest.fixture(scope="module")
def teacher_ckpt(workdir):
    """A teacher trained with 2-process DDP (what the test checks first)."""
    (workdir / "eval.yaml").write_text(EVAL)
    _cli(["fit", "--config", str(TEACHER), *DDP_CPU, *SYNTHETIC, "--trainer.max_epochs=2",
          "--model.init_args.lr_scheduler.init_args.T_max=2", "--trainer.logger.init_args.name=teacher",
          "--config", str(workdir / "eval.yaml")], workdir)
    return workdir / "runs/teacher/version_0/checkpoints/last.ckpt"


def test_ddp_teacher_fit_writes_one_run_with_adversarial_and_masking_metrics(workdir, teacher_ckpt):
    run = workdir / "runs/teacher"
    assert [p.name for p in run.iterdir()] == ["version_0"]  # rank 1 wrote no run of its own
    ckpts = sorted(p.name for p in (run / "version_0/checkpoints").iterdir())
    assert "last.ckpt" in ckpts and sum(n.startswith("best-") for n in ckpts) == 1
    assert not any(n.startswith(".") for n in ckpts)  # no stray temporary files
    ckpt = torch.load(teacher_ckpt, weights_only=True)
    assert ckpt["epoch"] == 1
    metrics = _scalars(run / "version_0")
    for key in ("val/acc", "adv/fgsm/eps=0.1/acc", "adv/worst/eps=0.1/acc", "masking/suspected"):
        assert key in metrics, sorted(metrics)
    assert metrics["val/acc"] > 0.3  # chance: 0.1; 6 steps of training


def test_ddp_adversarial_numbers_equal_single_process(workdir, teacher_ckpt):
    common = ["validate", "--config", str(TEACHER), *SYNTHETIC, f"--ckpt_path={teacher_ckpt}",
              "--config", str(workdir / "eval.yaml")]
    _cli([*common, *DDP_CPU, "--trainer.logger.init_args.name=val_ddp"], workdir)
    _cli([*common, "--trainer.devices=1", "--trainer.accelerator=cpu", "--trainer.logger.init_args.name=val_single"],
         workdir)
    ddp = _scalars(workdir / "runs/val_ddp/version_0")
    single = _scalars(workdir / "runs/val_single/version_0")
    adv = sorted(k for k in single if k.startswith("adv/") and k != "adv/seconds")
    assert len(adv) >= 8
    for key in adv:
        assert ddp[key] == single[key], (key, ddp[key], single[key])
    assert ddp["masking/suspected"] == single["masking/suspected"] == 0.0


def test_ddp_student_fit_with_teacher_on_every_rank(workdir, teacher_ckpt):
    _cli(["fit", "--config", str(STUDENT), *DDP_CPU, *SYNTHETIC, "--trainer.max_epochs=2",
          "--model.init_args.lr_scheduler.init_args.T_max=2", f"--model.init_args.teacher_checkpoint={teacher_ckpt}",
          "--model.init_args.temperature=1", "--trainer.logger.init_args.name=student",
          "--config", str(workdir / "eval.yaml")], workdir)
    run = workdir / "runs/student/version_0"
    metrics = _scalars(run)
    assert metrics["val/acc"] > 0.2 and "adv/worst/eps=0.1/acc" in metrics  # chance: 0.1
    student = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert not any(k.startswith("teacher") for k in student["state_dict"])  # the teacher stays out


def test_ddp_robust_student_fit_in_bf16(workdir, teacher_ckpt):
    """RSLAD under 2-process DDP and bf16 mixed precision: every rank loads the teacher, checks it
    and crafts its own adversarial examples; one run, the teacher outside the checkpoint."""
    _cli(["fit", "--config", str(ROBUST_STUDENT), *DDP_CPU, *SYNTHETIC, "--trainer.precision=bf16-mixed",
                "--trainer.max_epochs=1", "--model.init_args.lr_scheduler.init_args.T_max=1",
                "--model.init_args.attack_steps=2", "--model.init_args.teacher_check_samples=64",
                f"--model.init_args.teacher_checkpoint={teacher_ckpt}", "--trainer.logger.init_args.name=robust",
                "--config", str(workdir / "eval.yaml")], workdir)
    run = workdir / "runs/robust/version_0"
    metrics = _scalars(run)
    # one short epoch asserts the mechanism (the half-width student is still near chance after it)
    assert "val/acc" in metrics and "adv/worst/eps=0.1/acc" in metrics, sorted(metrics)
    assert math.isfinite(metrics["train/loss_epoch"]), metrics
    student = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert not any(k.startswith("teacher") for k in student["state_dict"])
    assert student["hyper_parameters"]["method"] == "rslad" and student["epoch"] == 0
