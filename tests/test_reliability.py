"""Reliability: resume after SIGKILL, atomic checkpoints, NaN loss, bad YAML, huge/tiny logits."""

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
from conftest import CONFIGS, SYNTHETIC, ScaledLogits

from lit_defense.cli import main

TEACHER = CONFIGS / "fashion_mnist" / "teacher.yaml"
TESTS = Path(__file__).resolve().parent


def _fit_args(name: str) -> list[str]:
    return [
        "fit", "--config", str(TEACHER), *SYNTHETIC, "--trainer.max_epochs=3",
        "--model.init_args.lr_scheduler.init_args.T_max=3", "--trainer.deterministic=true",
        "--seed_everything=0", f"--trainer.logger.init_args.name={name}",
    ]


def _env():
    return {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _cli():
    return str(Path(sys.executable).with_name("lit-defense"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The last checkpoint of an uninterrupted 3-epoch run of ``_fit_args``."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    here = os.getcwd()
    os.chdir(folder)
    try:
        assert main(_fit_args("ref")) == 0
    finally:
        os.chdir(here)
    return torch.load(folder / "runs/ref/version_0/checkpoints/last.ckpt", weights_only=True)


def _paused_mid_epoch_1(folder: Path, name: str) -> subprocess.Popen:
    """``_fit_args(name)`` in a process of its own, paused in the middle of epoch 1 (epoch 0's checkpoint on disk)."""
    marker = folder / f"paused-{name}"
    pause = ["--trainer.callbacks+=crash_helpers.PauseMidEpoch", f"--trainer.callbacks.marker={marker}"]
    proc = subprocess.Popen([_cli(), *_fit_args(name), *pause], cwd=folder, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), proc.stderr.read() if proc.poll() is not None else "run never paused"
    return proc


def _same_as_uninterrupted(ref: dict, resumed: dict) -> None:
    assert resumed["epoch"] == ref["epoch"] == 2
    assert resumed["global_step"] == ref["global_step"]
    for key, value in ref["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    best_ref = ref["callbacks"][next(k for k in ref["callbacks"] if "ModelCheckpoint" in k)]["best_model_score"]
    best_res = resumed["callbacks"][next(k for k in resumed["callbacks"] if "ModelCheckpoint" in k)]["best_model_score"]
    assert torch.equal(best_ref, best_res)


def test_sigkill_mid_epoch_then_ckpt_path_last_matches_an_uninterrupted_run(in_tmp, uninterrupted):
    # the run, killed with SIGKILL in the middle of epoch 1 (epoch 0's checkpoint is on disk)
    proc = _paused_mid_epoch_1(in_tmp, "crash")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    last = in_tmp / "runs/crash/version_0/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0  # the killed epoch left no checkpoint

    # resume: `--ckpt_path last` finds the run and finishes it in the same version folder
    assert main([*_fit_args("crash"), "--ckpt_path=last"]) == 0
    assert not (in_tmp / "runs/crash/version_1").exists()
    _same_as_uninterrupted(uninterrupted, torch.load(last, weights_only=True))


def test_sigterm_mid_epoch_ends_training_with_one_line_whose_command_resumes_it(in_tmp, uninterrupted):
    """A scheduler's SIGTERM: Lightning ends the batch it is on; exit 143 and one line; the printed
    command goes on from the last finished epoch to the uninterrupted run's weights."""
    proc = _paused_mid_epoch_1(in_tmp, "term")
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr[-3000:]
    assert time.time() - sent < 10 and "Traceback" not in stderr
    (line,) = [x for x in stderr.splitlines() if x.startswith("lit-defense:")]
    assert line.startswith("lit-defense: fit stopped by SIGTERM; `lit-defense fit ") and "resumes it" in line, line
    command = shlex.split(line.split("`")[1])
    assert command[-2:] == ["--ckpt_path", "last"]
    last = in_tmp / "runs/term/version_0/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0  # the stopped epoch is not saved half-done

    resumed_args = [a for a in command[1:] if not a.startswith(("--trainer.callbacks", "--trainer.callbacks."))]
    assert main(resumed_args) == 0
    assert not (in_tmp / "runs/term/version_1").exists()
    resumed = torch.load(last, weights_only=True)
    _same_as_uninterrupted(uninterrupted, resumed)


def test_last_checkpoint_is_the_latest_epoch_even_without_improvement(in_tmp):
    # lr=0: val/acc never improves after epoch 0, so Lightning 2.6 alone would leave last.ckpt at epoch 0
    args = [a for a in _fit_args("flat") if "max_epochs" not in a and "T_max" not in a]
    assert main([*args, "--trainer.max_epochs=3", "--model.init_args.optimizer.init_args.lr=0"]) == 0
    ckpts = in_tmp / "runs/flat/version_0/checkpoints"
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["epoch"] == 2
    assert [p.name for p in ckpts.glob("best-*")] == ["best-epoch=0-step=6.ckpt"]


def test_ckpt_path_last_without_a_previous_run_starts_fresh(in_tmp):
    args = [a for a in _fit_args("fresh") if "max_epochs" not in a and "T_max" not in a]
    assert main([*args, "--trainer.max_epochs=1", "--ckpt_path=last"]) == 0
    assert (in_tmp / "runs/fresh/version_0/checkpoints/last.ckpt").is_file()


def test_sigkill_while_saving_keeps_the_previous_checkpoint(tmp_path):
    from lit_defense.checkpoints import AtomicCheckpointIO

    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"weights": torch.ones(1000)}, path)
    before = path.read_bytes()
    code = f"import crash_helpers; crash_helpers.kill_during_write({str(path)!r})"
    res = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert path.read_bytes() == before  # untouched
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.ones(1000))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.ckpt"]
    assert leftovers and all(name.startswith(".last.ckpt.tmp-") for name in leftovers)  # the half-written temp


def test_nan_loss_stops_with_the_step_and_keeps_checkpoints(in_tmp, capsys):
    args = [a for a in _fit_args("nan") if "max_epochs" not in a and "T_max" not in a]
    poison = ["--trainer.callbacks+=crash_helpers.PoisonWeights", "--trainer.callbacks.epoch=1"]
    with pytest.raises(SystemExit) as info:
        main([*args, "--trainer.max_epochs=3", *poison])
    err = capsys.readouterr().err
    assert info.value.code == 2
    line = next(ln for ln in err.splitlines() if ln.startswith("lit-defense: error:"))
    assert "NaN or infinite at global step 8 (epoch 1, batch 2)" in line  # 6 batches per epoch and "Traceback" not in err
    # epoch 0's checkpoint is kept, and the diverged weights never replaced it
    last = torch.load(in_tmp / "runs/nan/version_0/checkpoints/last.ckpt", weights_only=True)
    assert last["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_yaml_syntax_error_names_file_and_line(in_tmp, capsys):
    bad = in_tmp / "bad.yaml"
    bad.write_text(TEACHER.read_text().replace("max_epochs: 10", "max_epochs: [10"))
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(bad), "--trainer.fast_dev_run=true"])
    assert info.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("lit-defense: error:") and str(bad) in line and "line " in line, line


def test_audit_weights_that_would_run_code_are_refused(in_tmp, capsys):
    class Boom:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    torch.save({"net.0.weight": Boom()}, in_tmp / "evil.pt")
    with pytest.raises(SystemExit) as info:
        main(["audit", '--models=[{"class_path": "toy_models.TinyNet", "weights": "evil.pt"}]',
              "--data.class_path=lit_defense.data.VisionDataModule", "--data.init_args.dataset=synthetic"])
    out, err = capsys.readouterr()
    assert info.value.code == 2 and "pickled code ran" not in out
    assert "refused to load model weights" in err and "weights_only" in err


@pytest.mark.parametrize("scale", [1e4, 1e-6])
def test_attacks_and_reports_survive_huge_and_tiny_logits(trained, scale):
    from lit_defense.attacks import PGD, Square
    from lit_defense.audit import AttackSuite, audit_model
    from lit_defense.evaluation import evaluate_robustness

    model, x, y = trained
    x, y = x[:64], y[:64]
    scaled = ScaledLogits(model, scale)
    attacks = [PGD(steps=10, loss="margin"), PGD(steps=10, loss="dlr"), Square(n_queries=50)]
    plain = evaluate_robustness(model, x, y, attacks, [0.1], cascade=False)
    res = evaluate_robustness(scaled, x, y, attacks, [0.1], cascade=False)
    for a in attacks[:2]:  # logit losses with sign steps are scale-invariant
        assert abs(res.robust_accuracy[a.name]["0.1"] - plain.robust_accuracy[a.name]["0.1"]) <= 0.05
    audit = audit_model(scaled, x, y, [0.1], suite=AttackSuite(steps=5, square_queries=20, random_samples=2, apgd_steps=5,
                                                              apgd_targets=1, min_norm_steps=5, rays_queries=20, adequacy_samples=0),
                        check_samples=32)
    json.dumps(audit.to_dict(), allow_nan=False)


def test_attacks_on_tied_logits_return_finite_points():
    from lit_defense.attacks import FGSM, PGD, Square
    from lit_defense.attacks.base import dlr_loss, margin_loss

    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 10) + 0 * x.flatten(1)[:, :1]

    x, y = torch.rand(8, 1, 28, 28), torch.arange(8)
    for attack in (FGSM(), PGD(steps=3, loss="ce"), PGD(steps=3, loss="dlr"), Square(n_queries=5)):
        out = attack(Constant(), x, y)
        assert torch.isfinite(out).all() and attack.threat.contains(out, x).all()
    logits = torch.zeros(4, 10)
    assert torch.isfinite(margin_loss(logits, torch.zeros(4, dtype=torch.long))).all()
    assert torch.isfinite(dlr_loss(logits, torch.zeros(4, dtype=torch.long))).all()


def test_bf16_autocast_keeps_the_saturation_mechanism_and_margin_attacks(trained):
    """Under bf16 autocast the logits are bf16 (3 significant digits) but every attack loss is
    computed in float32: the CE gradient of a saturated model still vanishes, the margin attack
    still works, and robust accuracy moves by rounding only."""
    from lit_defense.attacks import PGD
    from lit_defense.diagnostics import check_zero_gradients
    from lit_defense.evaluation import evaluate_robustness

    model, x, y = trained
    x, y = x[:64], y[:64]
    scaled = ScaledLogits(model, 1e3)
    attacks = [PGD(steps=10, loss="ce", random_start=False), PGD(steps=10, loss="margin", random_start=False)]
    fp32 = evaluate_robustness(scaled, x, y, attacks, [0.1], cascade=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert scaled(x).dtype == torch.bfloat16
        bf16 = evaluate_robustness(scaled, x, y, attacks, [0.1], cascade=False)
        zero = check_zero_gradients(scaled, x, y)
    assert zero.evidence["ce"]["vanishing"] > 0.5 and zero.evidence["margin"]["vanishing"] == 0.0
    for name in ("pgd_ce", "pgd_margin"):
        assert abs(bf16.robust_accuracy[name]["0.1"] - fp32.robust_accuracy[name]["0.1"]) <= 0.1, name
    assert bf16.robust_accuracy["pgd_margin"]["0.1"] < bf16.robust_accuracy["pgd_ce"]["0.1"]


def test_channels_last_and_compile_switches_keep_outputs_and_checkpoint_keys():
    from lit_defense.modules import Classifier

    torch.manual_seed(0)
    plain = Classifier().eval()
    fast = Classifier(channels_last=True, compile="eager").eval()
    fast.load_state_dict(plain.state_dict())
    fast.configure_model()
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(plain(x), fast(x), atol=1e-5)
    assert set(fast.state_dict()) == set(plain.state_dict())  # no "_orig_mod." keys


def _val_acc_epochs(version: Path) -> list[int]:
    """The steps of every ``val/acc`` point in a Lightning TensorBoard folder (one per epoch validated)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for events in sorted(version.glob("events.out.tfevents*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "val/acc" in acc.Tags()["scalars"]:
            steps += [e.step for e in acc.Scalars("val/acc")]
    return steps


def test_sigterm_ends_lit_defense_run_with_one_line_and_the_printed_command_resumes_it(tmp_path):
    """SIGTERM in the teacher's second epoch: exit 143 and one line naming the command; that command
    resumes the teacher from its last finished epoch (no epoch validated twice) and goes on."""
    root = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "lit_defense", "run", "--profile", "smoke", "--root", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.time() + 300
    ckpts: list[Path] = []
    while time.time() < deadline and proc.poll() is None and not ckpts:
        ckpts = list(root.glob("*-smoke/teacher/version_0/checkpoints/last.ckpt"))
        time.sleep(0.05)
    assert ckpts, proc.communicate()[1][-3000:]
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-3000:]
    assert time.time() - sent < 10 and "Traceback" not in out + err
    (line,) = [x for x in err.splitlines() if x.startswith("lit-defense:")]
    (folder,) = [p for p in root.iterdir() if p.name.endswith("-smoke")]
    assert line.startswith("lit-defense: [1/8] teacher: training stopped by SIGTERM; `lit-defense run "), line
    command = shlex.split(line.split("`")[1])
    assert command[-2:] == ["--run_dir", str(folder)]
    stopped_at = torch.load(ckpts[0], weights_only=True)["epoch"]
    assert stopped_at < 2  # stopped in the middle of the teacher's 3 epochs

    # the printed command: resumes the teacher, finishes it, goes on (stopped again in the next stage)
    proc = subprocess.Popen([sys.executable, "-m", "lit_defense", *command[1:]], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    shown = []
    for text in proc.stdout:
        shown.append(text)
        if "[1/8] teacher: done" in text:
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, "".join(shown) + err[-3000:]
    assert any("[1/8] teacher: resuming 3 epoch(s)" in x for x in shown), shown
    # stopped between the stages or in the second one: the same resuming command either way
    (line,) = [x for x in err.splitlines() if x.startswith("lit-defense:")]
    assert "stopped by SIGTERM; `lit-defense run " in line and f"--run_dir {folder}` resumes it" in line, line
    assert torch.load(ckpts[0], weights_only=True)["epoch"] == 2
    epochs = _val_acc_epochs(folder / "teacher" / "version_0")
    assert len(epochs) == 3 and len(set(epochs)) == 3, epochs  # no finished epoch trained and validated twice
