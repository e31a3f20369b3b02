"""The audit at scale: two DDP processes give the single-process report; a killed audit resumes.

Both go through the command line in subprocesses (Lightning re-launches ``lit-defense audit`` for
the second process; a SIGKILL needs a process of its own).
"""

from __future__ import annotations

import json
import os
import shlex
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
         "--suite.adequacy_samples=0", "--tensorboard=false"]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """Two models of the same trained weights: plain logits, and logits x100 (saturated softmax)."""
    sys.path.insert(0, str(TESTS))
    from toy_models import train_tiny_net

    from lit_defense.data import VisionDataModule

    folder = tmp_path_factory.mktemp("scale")
    dm = VisionDataModule("synthetic", synthetic_train_size=1024, synthetic_noise=0.4, val_size=64)
    dm.setup("fit")
    x = dm.train_set.images.float() / 255
    y = dm.train_set.labels
    net = train_tiny_net(x, y, epochs=3)
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
             "verdict": m["gradient_masking"]["state"], "triggered": m["gradient_masking"]["triggered"],
             "checks": {c["name"]: (c["state"], c["value"], c["evidence"]) for c in m["gradient_masking"]["checks"]}}
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
        for stage in ("white_box", "cascade", "refine", "checks"):
            info = model["stages"][stage]
            assert len(info["per_process"]) == 2 and max(info["per_process"]) - min(info["per_process"]) <= 1
            assert info["collectives"] == 1  # one gather per stage, whatever the number of batches
        assert model["stages"]["white_box"]["per_process"] == [N // 2, N // 2]


def test_one_failing_process_ends_every_process_with_one_line_and_the_rerun_resumes(config, tmp_path):
    """Under DDP a model that raises in one process only: both processes end at once (not after the
    process group's 30-minute timeout) with its one-line error and exit 2; fixed, the same command resumes."""
    cfg = tmp_path / "failing.yaml"
    cfg.write_text(f"models:\n  - {{name: tiny, class_path: toy_models.FailsOnOneRank, weights: {config.parent / 'tiny.pt'}}}\n")
    out = tmp_path / "failing"
    command = _command(cfg, out, "--num_samples=96", "--check_samples=48", "--batch_size=16",
                       "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp")
    start = time.time()
    res = subprocess.run(command, env={**_env(), "TOY_FAIL_RANK": "1"}, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-3000:]
    assert time.time() - start < 120
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    failed = {line for line in res.stderr.splitlines() if "failed" in line}
    assert len(failed) == 1, res.stderr[-3000:]  # both processes print the same line
    (line,) = failed
    assert "process 1" in line and "stage white_box" in line and "cannot be evaluated" in line and "resume" in line
    before = _records(out)
    assert before and all(stage in ("probe", "white_box") for _, stage, _, _ in before)  # rank 0's batches

    res = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming" in res.stdout and (out / "report.json").is_file()
    after = _records(out)
    assert set(before) < set(after) and len(after) == len(set(after)), "a finished batch was attacked again"


def test_collectives_per_stage_do_not_grow_with_batches(config, one_process, tmp_path):
    report = json.loads((one_process / "report.json").read_text())
    out = tmp_path / "small_batches"
    assert main(_command(config, out, "--batch_size=16")[1:]) == 0  # 25 batches a stage instead of 7
    small = json.loads((out / "report.json").read_text())
    assert _numbers(out) == _numbers(one_process)
    for a, b in zip(report["models"], small["models"], strict=True):
        calls = {k: v["collectives"] for k, v in a["stages"].items()}
        assert calls == {k: v["collectives"] for k, v in b["stages"].items()}
        assert set(calls) == {"probe", "white_box", "cascade", "black_box_random", "black_box_square", "refine", "checks"}
        assert set(calls.values()) == {1}


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


def _stop_when(proc: subprocess.Popen, log: Path, text: str, sig: int) -> float:
    """Send ``sig`` to ``proc`` once ``log`` holds ``text``; returns when it was sent."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and text in log.read_text():
            proc.send_signal(sig)
            return time.time()
        time.sleep(0.02)
    raise AssertionError(f"the audit finished (or hung) before {text} was recorded")


def test_a_stopped_then_killed_audit_resumes_to_the_same_report_without_redoing_work(config, one_process, tmp_path):
    """A scheduler's SIGTERM (SLURM, Kubernetes): the audit ends within seconds, exit 143, one line whose
    command, run as printed, resumes; that run SIGKILLed in turn; other settings refused; the same command
    then writes the uninterrupted report, and no recorded batch is attacked twice."""
    out = tmp_path / "stopped"
    log = out / "progress" / "rank-0.jsonl"
    proc = subprocess.Popen(_command(config, out, "--batch_size=64"), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    sent = _stop_when(proc, log, '"stage":"cascade"', signal.SIGTERM)  # the first model's cascade has a batch
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr[-3000:]
    assert time.time() - sent < 10, "SIGTERM did not end the audit within a scheduler's grace period"
    assert not (out / "report.json").exists() and "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if line.strip()]
    assert line.startswith("lit-defense: audit stopped by SIGTERM; `lit-defense audit ") and "resumes it" in line
    command = [_command(config, out)[0], *shlex.split(line.split("`")[1])[1:]]
    assert f"--output_dir={out}" in command
    stopped = _records(out)
    assert stopped

    # the printed command resumes; SIGKILLed once the second model has a batch recorded
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _stop_when(proc, log, '"model":"tiny_x100"', signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (out / "report.json").exists()
    before = _records(out)
    assert set(stopped) < set(before) and len(before) == len(set(before)), "a finished batch was attacked again"

    # a changed configuration is refused with one line, and what was recorded stays as it was
    saved = {p.name: p.read_bytes() for p in (out / "progress").iterdir()}
    res = subprocess.run([*command, "--eps=[0.1]"], env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    message = res.stderr.strip().splitlines()
    assert len(message) == 1 and "other settings" in message[0] and "eps" in message[0], res.stderr
    assert {p.name: p.read_bytes() for p in (out / "progress").iterdir()} == saved

    # the same command resumes: same report, and no batch recorded twice
    res = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming" in res.stdout
    assert _numbers(out) == _numbers(one_process)
    assert _per_sample(out) == _per_sample(one_process)
    after = _records(out)
    assert len(after) == len(set(after)), "a finished batch was attacked again"
    assert set(before) < set(after) == set(_records(one_process))


def test_results_of_shards_merge_even_when_a_shard_was_empty():
    from lit_defense.audit.stage import default_fill, merge

    empty = {"ids": torch.zeros(0, dtype=torch.long), "values": {"fooled": {"apgd": {}}, "min_norm": {}}}
    full = {"ids": torch.tensor([3]), "values": {"fooled": {"apgd": {"0.1": torch.tensor([True])}},
                                                  "min_norm": {"fmn": torch.tensor([0.2])}}}
    for parts in ([empty, full], [full, empty]):
        merged = merge(parts, 5, default_fill)
        assert merged["fooled"]["apgd"]["0.1"].tolist() == [False, False, False, True, False]
        assert merged["min_norm"]["fmn"][3] == pytest.approx(0.2) and merged["min_norm"]["fmn"][0] == float("inf")


def test_the_training_presets_configure_the_audit():
    from lit_defense.audit.command import audit_parser

    presets = Path(__file__).parents[1] / "configs" / "trainer"
    for preset in sorted(presets.glob("*.yaml")):
        cfg = audit_parser().parse_args(["--config", str(preset)])
        assert cfg.trainer.accelerator in ("cpu", "gpu"), preset.name
    cfg = audit_parser().parse_args(["--config", str(presets / "ddp.yaml"), "--trainer.devices=2"])
    assert (cfg.trainer.strategy, cfg.trainer.devices) == ("ddp", 2)


def test_stage_lines_say_the_time_left_and_bars_draw_on_a_terminal(capsys):
    from lit_defense.audit.display import AuditProgress

    lines = []
    progress = AuditProgress(2, log=lines.append, bars=True)
    progress.stage("teacher", "white_box")
    for done in (0, 5, 10):
        progress.attack("pgd_ce", done, 10)
    progress.stage_done(10)
    assert lines[0].startswith("audit: teacher: white_box on 10 inputs") and "left" in lines[0]
    assert "teacher white_box pgd_ce" in capsys.readouterr().err
    quiet = AuditProgress(1, log=lines.append, enabled=False)
    quiet.stage("teacher", "cascade")
    quiet.attack("apgd_ce", 0, 3)
    quiet.stage_done(3)
    assert len(lines) == 1 and not capsys.readouterr().err  # other ranks show nothing


def test_the_progress_log_ignores_a_torn_line_and_reads_every_rank(tmp_path):
    from lit_defense.audit.progress import ProgressLog

    ProgressLog.start(tmp_path, {"eps": [0.1]}, fresh=True)
    for rank, ids in ((0, [0, 2]), (1, [1, 3])):
        log = ProgressLog(tmp_path, rank)
        log.put("m", "white_box", "fgsm@0.1", ids, {"fooled": [True, False]})
        log.close()
    with open(tmp_path / "progress" / "rank-0.jsonl", "a") as f:
        f.write('{"model": "m", "stage": "white_box", "unit": "pgd@0.1", "ids": [0, 2], "val')  # SIGKILL here
    log = ProgressLog(tmp_path, 0).load()
    assert log.get("m", "white_box", "fgsm@0.1", [3, 0]) == {"fooled": [False, True]}
    assert log.get("m", "white_box", "fgsm@0.1", [0, 4]) is None  # sample 4 was never attacked
    assert log.get("m", "white_box", "pgd@0.1", [0, 2]) is None  # the torn batch is attacked again
    assert ProgressLog.check_settings(tmp_path, {"eps": [0.1]})
    with pytest.raises(Exception, match=r"other settings \(eps: \[0.1\] there, \[0.2\] now\)"):
        ProgressLog.check_settings(tmp_path, {"eps": [0.2]})
    ProgressLog.start(tmp_path, {"eps": [0.2]}, fresh=True)  # --overwrite true: the old progress goes
    assert ProgressLog(tmp_path, 0).load().get("m", "white_box", "fgsm@0.1", [0]) is None


def test_a_multi_process_audit_from_python_is_refused_before_launching():
    from lit_defense.audit import AuditTrainer, launch
    from lit_defense.errors import ConfigError

    with pytest.raises(ConfigError, match="starts from the command line"):
        launch(AuditTrainer(accelerator="cpu", devices=2, strategy="ddp"), lambda device: 0, from_command_line=False)
    assert launch(AuditTrainer(accelerator="cpu"), lambda device: str(device), from_command_line=False) == "cpu"
