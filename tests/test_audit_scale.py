"""The audit at scale: two DDP processes give the single-process report; a killed audit resumes.

Both go through the command line in subprocesses (Lightning re-launches ``lit-defense audit`` for
the second process; a SIGKILL needs a process of its own).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lit_defense.audit.sharding import shard
from lit_defense.cli import main

TESTS = Path(__file__).parent
N = 400
DATA = ["--data.class_path=lit_defense.data.VisionDataModule", "--data.init_args.dataset=synthetic",
        f"--data.init_args.synthetic_test_size={N}", "--data.init_args.synthetic_noise=0.4"]
# every kind of attack of the suite, random ones included, at small budgets
SUITE = [f"--num_samples={N}", "--eps=[0.05,0.1,0.2]", "--suite.steps=5", "--suite.apgd_steps=10",
         "--suite.apgd_targets=2", "--suite.apgd_targeted_steps=10", "--suite.min_norm_steps=10",
         "--suite.square_queries=60", "--suite.random_samples=4", "--suite.rays_queries=50", "--check_samples=100",
         "--tensorboard=false"]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """Two models of the same trained weights: plain logits, and logits x100 (saturated softmax)."""
    sys.path.insert(0, str(TESTS))
    from toy_models import TinyNet

    from lit_defense.data import VisionDataModule

    folder = tmp_path_factory.mktemp("scale")
    dm = VisionDataModule("synthetic", synthetic_train_size=1024, synthetic_noise=0.4, val_size=64)
    dm.setup("fit")
    x = dm.train_set.images.float() / 255
    y = dm.train_set.labels
    torch.manual_seed(0)
    net = TinyNet()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(3):
        for xb, yb in zip(x.split(64), y.split(64), strict=True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xb), yb).backward()
            opt.step()
    torch.save(net.state_dict(), folder / "tiny.pt")
    path = folder / "audit.yaml"
    path.write_text(
        "models:\n"
        f"  - {{name: tiny, class_path: toy_models.TinyNet, weights: {folder / 'tiny.pt'}}}\n"
        f"  - {{name: tiny_x100, class_path: toy_models.ScaledTinyNet, init_args: {{scale: 100.0}}, "
        f"weights: {folder / 'tiny.pt'}}}\n"
    )
    return path


def _command(config: Path, out: Path, *extra: str) -> list[str]:
    return [str(Path(sys.executable).with_name("lit-defense")), "audit", "--config", str(config), *DATA, *SUITE,
            f"--output_dir={out}", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def _numbers(out: Path) -> list[dict]:
    """What must not depend on processes, batches or interruptions: every number and verdict."""
    report = json.loads((out / "report.json").read_text())
    return [{"name": m["name"], "clean": m["clean_accuracy"], "results": m["results"], "worst": m["worst_case"],
             "suspected": m["gradient_masking"]["suspected"], "triggered": m["gradient_masking"]["triggered"],
             "checks": {c["name"]: (c["passed"], c["value"]) for c in m["gradient_masking"]["checks"]}}
            for m in report["models"]]


def _per_sample(out: Path) -> dict:
    return json.loads((out / "per_sample.json").read_text())


@pytest.fixture(scope="module")
def one_process(config, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "audit"
    sys.path.insert(0, str(TESTS))
    assert main(_command(config, out, "--batch_size=64")[1:]) == 0
    return out


def test_two_ddp_processes_write_the_single_process_report(config, one_process, tmp_path):
    out = tmp_path / "ddp"
    res = subprocess.run(_command(config, out, "--batch_size=48", "--trainer.accelerator=cpu", "--trainer.devices=2",
                                  "--trainer.strategy=ddp"), env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _numbers(out) == _numbers(one_process)
    assert _per_sample(out) == _per_sample(one_process)  # every input's result, random attacks included
    report = json.loads((out / "report.json").read_text())
    assert report["processes"] == 2
    for model in report["models"]:
        for stage in ("white_box", "cascade", "checks"):
            info = model["stages"][stage]
            assert len(info["per_process"]) == 2 and max(info["per_process"]) - min(info["per_process"]) <= 1
            assert info["collectives"] == 1  # one gather per stage, whatever the number of batches
        assert model["stages"]["white_box"]["per_process"] == [N // 2, N // 2]


def test_collectives_per_stage_do_not_grow_with_batches(config, one_process, tmp_path):
    report = json.loads((one_process / "report.json").read_text())
    out = tmp_path / "small_batches"
    assert main(_command(config, out, "--batch_size=16")[1:]) == 0  # 25 batches a stage instead of 7
    small = json.loads((out / "report.json").read_text())
    assert _numbers(out) == _numbers(one_process)
    for a, b in zip(report["models"], small["models"], strict=True):
        assert {k: v["collectives"] for k, v in a["stages"].items()} == \
            {k: v["collectives"] for k, v in b["stages"].items()} == {"probe": 1, "white_box": 1, "cascade": 1, "checks": 1}


def test_shards_differ_by_at_most_one():
    ids = torch.arange(11)
    parts = [shard(ids, r, 3) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(11))
    assert [len(p) for p in parts] == [4, 4, 3]


def _records(out: Path) -> list[tuple]:
    rows = []
    for path in sorted((out / "progress").glob("rank-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows.append((rec["model"], rec["stage"], rec.get("unit", "blob"), tuple(rec.get("ids", ()))))
    return rows


def test_a_killed_audit_resumes_to_the_same_report_without_redoing_work(config, one_process, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(_command(config, out, "--batch_size=64"), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    log = out / "progress" / "rank-0.jsonl"
    deadline = time.time() + 300
    # kill in the middle: once the first model's cascade has recorded a batch
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and '"stage":"cascade"' in log.read_text():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the audit finished before it could be killed"
    assert not (out / "report.json").exists()
    before = _records(out)
    assert before

    # a changed configuration is refused with one line, and what was recorded stays as it was
    saved = {p.name: p.read_bytes() for p in (out / "progress").iterdir()}
    res = subprocess.run([*_command(config, out, "--batch_size=64"), "--eps=[0.1]"], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    message = res.stderr.strip().splitlines()
    assert len(message) == 1 and "other settings" in message[0] and "eps" in message[0], res.stderr
    assert {p.name: p.read_bytes() for p in (out / "progress").iterdir()} == saved

    # the same command resumes: same report, and no batch recorded twice
    res = subprocess.run(_command(config, out, "--batch_size=64"), env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming" in res.stdout
    assert _numbers(out) == _numbers(one_process)
    assert _per_sample(out) == _per_sample(one_process)
    after = _records(out)
    assert len(after) == len(set(after)), "a finished batch was attacked again"
    assert set(before) < set(after) == set(_records(one_process))
