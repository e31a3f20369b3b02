"""Every GPU-specific path in one short run, each step with its own PASS / FAIL / SKIP line.

Made for the first minutes on a GPU machine (under 10 minutes on one GPU):

    .venv/bin/python benchmarks/gpu_check.py [--out DIR]

1. ``fit`` of the teacher with ``bf16-mixed``, the ``AdversarialEvaluation`` callback inside it
   (its metrics must be logged and finite);
2. the same with ``torch.compile`` (``--model.init_args.compile``: inductor on a GPU);
3. ``fit`` of the distilled student from step 1's checkpoint, ``bf16-mixed``;
4. a 1-device audit of step 1's checkpoint against a CPU audit of it: the worst case at every eps
   must agree within the 95% intervals (each value inside the other's interval);
5. a 2-process audit (NCCL) when two GPUs exist, else SKIP.

On a machine without a GPU (or with ``--cpu``) it runs the same steps on the CPU with tiny settings,
so CI keeps the script honest (``tests/test_gpu_check.py``): step 2 compiles with ``aot_eager``
(Dynamo's graph capture without inductor's C++ build), step 4 compares two CPU audits and step 5
runs two gloo processes. Data: the synthetic set (nothing to download). Exit code 1 when a step fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from lit_defense.lightning_cli import LitDefenseCLI
from lit_defense.pipeline import CONFIGS

RESULTS: list[tuple[str, str, str]] = []


def step(name: str, fn: Callable[[], str]) -> None:
    """Run one step; print and keep its PASS / FAIL / SKIP line."""
    start = time.perf_counter()
    try:
        detail = fn()
        state = "SKIP" if detail.startswith("skip") else "PASS"
    except Exception as err:  # a failing step must not stop the others
        state, detail = "FAIL", f"{type(err).__name__}: {err}".splitlines()[0]
        traceback.print_exc(file=sys.stderr)
    line = f"{state} {name} ({time.perf_counter() - start:.0f} s): {detail}"
    RESULTS.append((state, name, detail))
    print(line, flush=True)


def data_args(tiny: bool) -> list[str]:
    size = ["--data.init_args.synthetic_train_size=256", "--data.init_args.val_size=64"] if tiny else \
        ["--data.init_args.synthetic_train_size=8192", "--data.init_args.val_size=1000"]
    return ["--data.init_args.dataset=synthetic", "--data.init_args.synthetic_test_size=256", *size,
            "--data.init_args.batch_size=64", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false"]


def fit(config: str, out: Path, name: str, accelerator: str, tiny: bool, *extra: str) -> tuple[Path, dict]:
    """``lit-defense fit`` of a shipped recipe; returns the last checkpoint and the logged metrics."""
    args = ["fit", "--config", str(CONFIGS / config), f"--trainer.accelerator={accelerator}", "--trainer.devices=1",
            "--trainer.max_epochs=1", f"--trainer.logger.init_args.save_dir={out}",
            f"--trainer.logger.init_args.name={name}", "--trainer.logger.init_args.version=0",
            *data_args(tiny), *extra]
    if tiny:
        args.append("--trainer.limit_train_batches=4")
    cli = LitDefenseCLI(args=args)
    ckpt = out / name / "version_0" / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise RuntimeError(f"no checkpoint at {ckpt}")
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if v.numel() == 1}
    return ckpt, metrics


def check_callback(metrics: dict) -> str:
    adv = {k: v for k, v in metrics.items() if k.startswith("adv/") and k.endswith("/acc")}
    if "adv/worst/eps=0.1/acc" not in adv or not all(math.isfinite(v) and 0 <= v <= 1 for v in adv.values()):
        raise RuntimeError(f"the callback's metrics are missing or not finite: {adv}")
    return f"val/acc {metrics.get('val/acc', float('nan')):.3f}, adv/worst/eps=0.1/acc {adv['adv/worst/eps=0.1/acc']:.3f}"


def audit(ckpt: Path, out: Path, device: str, tiny: bool) -> dict:
    from lit_defense.audit import AttackSuite, ModelSpec, run_audit
    from lit_defense.data import VisionDataModule

    suite = AttackSuite(steps=5, apgd_steps=5, apgd_targets=1, min_norm_steps=5, square_queries=20,
                        random_samples=2, rays_queries=0) if tiny else AttackSuite(square_queries=300)
    run_audit([ModelSpec(name="teacher", checkpoint=str(ckpt))],
              VisionDataModule("synthetic", synthetic_test_size=256), eps=[0.05, 0.1], num_samples=64 if tiny else 256,
              suite=suite, output_dir=out, overwrite=True, device=device, tensorboard=False, log=lambda line: None,
              check_samples=32 if tiny else 128)
    return json.loads((out / "report.json").read_text())["models"][0]


def agree(a: dict, b: dict) -> str:
    parts = []
    for key, ea in a["worst_case"].items():
        eb = b["worst_case"][key]
        inside = ea["ci"][0] <= eb["value"] <= ea["ci"][1] and eb["ci"][0] <= ea["value"] <= eb["ci"][1]
        if not inside:
            raise RuntimeError(f"worst case at eps {key}: {ea['value']:.3f} {ea['ci']} vs {eb['value']:.3f} {eb['ci']}")
        parts.append(f"eps {key}: {ea['value']:.3f} vs {eb['value']:.3f}")
    return "; ".join(parts)


def ddp_audit(ckpt: Path, out: Path, accelerator: str, tiny: bool) -> str:
    n = 64 if tiny else 256
    command = [str(Path(sys.executable).with_name("lit-defense")), "audit", "--checkpoints", str(ckpt),
               "--data.class_path=lit_defense.data.VisionDataModule", "--data.init_args.dataset=synthetic",
               "--data.init_args.synthetic_test_size=256", f"--num_samples={n}", "--eps=[0.1]", "--suite.steps=5",
               "--suite.apgd_steps=5", "--suite.apgd_targets=1", "--suite.min_norm_steps=5",
               "--suite.square_queries=20", "--suite.random_samples=2", "--check_samples=32", "--tensorboard=false",
               f"--output_dir={out}", f"--trainer.accelerator={accelerator}", "--trainer.devices=2",
               "--trainer.strategy=ddp"]
    res = subprocess.run(command, capture_output=True, text=True, timeout=540,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if res.returncode != 0:
        raise RuntimeError((res.stderr.strip().splitlines() or ["(no output)"])[-1])
    report = json.loads((out / "report.json").read_text())
    if report["processes"] != 2:
        raise RuntimeError(f"the report says {report['processes']} process(es)")
    worst = report["models"][0]["worst_case"]["0.1"]
    return f"2 processes, worst case at eps 0.1 {worst['value']:.3f} {worst['ci']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="CPU with tiny settings even where a GPU exists.")
    parser.add_argument("--out", default=None, help="Where runs and reports go (default: a temporary folder).")
    args = parser.parse_args(argv)
    gpu = torch.cuda.is_available() and not args.cpu
    accelerator, device, tiny = ("gpu", "cuda", False) if gpu else ("cpu", "cpu", True)
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu_check-"))
    out.mkdir(parents=True, exist_ok=True)
    where = torch.cuda.get_device_name(0) if gpu else "CPU (tiny settings)"
    print(f"gpu_check on {where}, torch {torch.__version__}: {out}", flush=True)
    found: dict[str, Path] = {}

    def teacher() -> str:
        found["teacher"], metrics = fit("fashion_mnist/teacher.yaml", out, "teacher_bf16", accelerator, tiny,
                                        "--trainer.precision=bf16-mixed")
        return check_callback(metrics)

    def compiled() -> str:
        backend = "true" if gpu else "aot_eager"
        _, metrics = fit("fashion_mnist/teacher.yaml", out, "teacher_compiled", accelerator, tiny,
                         "--trainer.precision=bf16-mixed", f"--model.init_args.compile={backend}")
        return f"compile={backend}; " + check_callback(metrics)

    def student() -> str:
        if "teacher" not in found:
            return "skip: no teacher checkpoint (step 1 failed)"
        _, metrics = fit("fashion_mnist/distilled.yaml", out, "student_bf16", accelerator, tiny,
                         "--trainer.precision=bf16-mixed", f"--model.init_args.teacher_checkpoint={found['teacher']}")
        return check_callback(metrics)

    def device_vs_cpu() -> str:
        if "teacher" not in found:
            return "skip: no teacher checkpoint (step 1 failed)"
        on_device = audit(found["teacher"], out / "audit_device", device, tiny)
        on_cpu = audit(found["teacher"], out / "audit_cpu", "cpu", tiny)
        return f"{device} vs cpu: " + agree(on_device, on_cpu)

    def two_processes() -> str:
        if "teacher" not in found:
            return "skip: no teacher checkpoint (step 1 failed)"
        if gpu and torch.cuda.device_count() < 2:
            return f"skip: needs 2 GPUs, found {torch.cuda.device_count()}"
        return ddp_audit(found["teacher"], out / "audit_ddp", accelerator, tiny)

    step("fit teacher, bf16-mixed, AdversarialEvaluation inside", teacher)
    step("fit teacher, bf16-mixed, torch.compile", compiled)
    step("fit distilled student, bf16-mixed", student)
    step(f"audit on {device} agrees with an audit on cpu", device_vs_cpu)
    step(f"2-process audit ({'nccl' if gpu else 'gloo'})", two_processes)
    failed = [name for state, name, _ in RESULTS if state == "FAIL"]
    print(f"gpu_check: {len(RESULTS) - len(failed)}/{len(RESULTS)} steps passed or skipped"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
