"""``benchmarks/gpu_check.py`` in its CPU mode: every step the first GPU will run, kept honest by CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_runs_every_step_on_cpu(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=900, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    lines = [line for line in res.stdout.splitlines() if line.split(" ", 1)[0] in ("PASS", "FAIL", "SKIP")]
    # on CPU nothing is skipped: the 2-process step runs with gloo
    assert len(lines) == 5 and all(line.startswith("PASS") for line in lines), res.stdout
    assert "compile=aot_eager" in res.stdout and "2 processes" in res.stdout
    assert (tmp_path / "audit_ddp" / "report.json").is_file()
