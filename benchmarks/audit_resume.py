"""The audit killed half-way and resumed, against the same audit uninterrupted (side by side, one run).

    .venv/bin/python benchmarks/audit_resume.py --run runs/<make-run folder> [--kill_at 0.5] [--ddp]

1. ``lit-defense audit`` of the run's models, uninterrupted: ``T`` seconds (wall, the whole command).
2. The same command into a fresh folder, SIGKILLed after ``kill_at * T`` seconds: ``t_kill``.
3. The same command again: it resumes, ``R`` seconds.

Prints the report equality (numbers, verdicts, per-sample results) and ``R`` against the unfinished
share ``T - t_kill``; the bar is ``R <= (T - t_kill) + 0.15 T``. With ``--ddp`` it also times the
uninterrupted audit with two CPU processes (``--trainer.devices 2 --trainer.strategy ddp``).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXE = str(Path(sys.executable).with_name("lit-defense"))


def command(checkpoints: list[Path], out: Path, args: argparse.Namespace, *extra: str) -> list[str]:
    return [EXE, "audit", "--checkpoints", *map(str, checkpoints), f"--output_dir={out}",
            f"--num_samples={args.num_samples}", "--tensorboard=false", "--data.init_args.dataset=fashion_mnist",
            *extra]


def numbers(out: Path) -> tuple:
    report = json.loads((out / "report.json").read_text())
    per = json.loads((out / "per_sample.json").read_text())
    return ([(m["name"], m["results"], m["worst_case"], m["gradient_masking"]["triggered"]) for m in report["models"]],
            per["models"])


def timed(cmd: list[str], kill_after: float | None = None) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    took = time.perf_counter() - start
    if proc.returncode not in (0, -signal.SIGKILL):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read()[-2000:]}")
    return took, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a `make run` folder")
    parser.add_argument("--models", nargs="+", default=["teacher", "distilled"])
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--kill_at", type=float, default=0.5)
    parser.add_argument("--ddp", action="store_true")
    args = parser.parse_args()
    checkpoints = [args.run / m / "version_0" / "checkpoints" / "last.ckpt" for m in args.models]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        full, _ = timed(command(checkpoints, tmp / "full", args))
        t_kill, rc = timed(command(checkpoints, tmp / "killed", args), kill_after=args.kill_at * full)
        if rc != -signal.SIGKILL:
            raise SystemExit("the audit finished before the kill; lower --kill_at")
        lines = sum(1 for _ in (tmp / "killed" / "progress" / "rank-0.jsonl").open())
        total = sum(1 for _ in (tmp / "full" / "progress" / "rank-0.jsonl").open())
        resumed, _ = timed(command(checkpoints, tmp / "killed", args))
        same = numbers(tmp / "full") == numbers(tmp / "killed")
        unfinished = full - t_kill
        print(f"uninterrupted audit: {full:.1f} s; killed after {t_kill:.1f} s with {lines}/{total} batches recorded")
        print(f"resumed: {resumed:.1f} s; unfinished share of the time: {unfinished:.1f} s")
        print(f"resumed / unfinished share: {resumed / unfinished:.2f}; "
              f"(resumed - unfinished) / uninterrupted: {(resumed - unfinished) / full:+.3f} (bar <= +0.15)")
        print(f"report, verdicts and per-sample results equal to the uninterrupted run: {same}")
        if args.ddp:
            ddp, _ = timed(command(checkpoints, tmp / "ddp", args, "--trainer.accelerator=cpu", "--trainer.devices=2",
                                   "--trainer.strategy=ddp"))
            print(f"2 DDP processes: {ddp:.1f} s; uninterrupted 1 process / 2 processes: {full / ddp:.2f}x; "
                  f"equal results: {numbers(tmp / 'full') == numbers(tmp / 'ddp')}")


if __name__ == "__main__":
    main()
