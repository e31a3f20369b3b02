"""``lit-defense audit`` end to end on synthetic data: report files, their schema, bad input."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from lit_defense.cli import main
from lit_defense.data import VisionDataModule
from lit_defense.modules import Classifier

DATA = ["--data.class_path=lit_defense.data.VisionDataModule", "--data.init_args.dataset=synthetic",
        "--data.init_args.synthetic_test_size=96"]
FAST = ["--num_samples=96", "--eps=[0.05,0.1,0.2]", "--suite.steps=5", "--suite.square_queries=50",
        "--suite.random_samples=5", "--suite.eot_samples=2", "--suite.apgd_steps=10",
        "--suite.apgd_targets=2", "--suite.min_norm_steps=10", "--suite.rays_queries=50", "--tensorboard=true"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    L.seed_everything(0)
    dm = VisionDataModule("synthetic", val_size=128, synthetic_train_size=512, batch_size=64)
    model = Classifier(mean=dm.mean, std=dm.std)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    path = folder / "runs" / "teacher" / "version_0" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    trainer.save_checkpoint(path)
    # a TinyNet trained 2 epochs (an untrained one predicts one class for everything: refused)
    from toy_models import train_tiny_net

    dm.setup("fit")
    net = train_tiny_net(dm.train_set.images.float() / 255, dm.train_set.labels, epochs=2)
    torch.save(net.state_dict(), folder / "tiny.pt")
    return path


def test_audit_writes_report_json_md_plots_and_tensorboard(checkpoint, in_tmp, capsys):
    weights = checkpoint.parents[4] / "tiny.pt"
    config = in_tmp / "audit.yaml"
    config.write_text(
        "models:\n"
        f"  - checkpoint: {checkpoint}\n"
        "  - name: tiny\n"
        "    class_path: toy_models.TinyNet\n"
        "    init_args: {num_classes: 10}\n"
        f"    weights: {weights}\n"
    )
    assert main(["audit", "--config", str(config), *DATA, *FAST, "--output_dir=out"]) == 0
    out = in_tmp / "out"
    report = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["teacher", "tiny"]  # name from the run folder
    for m in report["models"]:
        # accuracies are estimates: {value, ci: [low, high], k, n}, the interval exact (Clopper-Pearson)
        clean = m["clean_accuracy"]
        assert set(clean) == {"value", "ci", "k", "n"} and clean["n"] == 96 and clean["k"] == round(96 * clean["value"])
        assert 0 <= clean["ci"][0] <= clean["value"] <= clean["ci"][1] <= 1
        assert set(m["worst_case"]) == {"0.05", "0.1", "0.2"}
        assert all({"attack", "eps", "robust_accuracy", "ci", "n"} <= set(r) for r in m["results"])
        gm = m["gradient_masking"]
        assert isinstance(gm["suspected"], bool) and gm["state"] in ("suspected", "not suspected", "inconclusive")
        assert all({"name", "state", "kind", "passed", "evidence"} <= set(c) for c in gm["checks"])
        assert len(gm["checks"]) >= 14
        # the positive control runs by default on every model with a robust input at the middle eps
        if m["worst_case"]["0.1"]["k"] > 0:
            assert m["adequacy"]["test"] == "binarization" and m["adequacy"]["samples"] >= 1, m.get("adequacy")
        for r in m["results"]:  # worst case is the minimum over every attack
            assert m["worst_case"][f"{r['eps']:g}"]["value"] <= r["robust_accuracy"] + 1e-9
            assert r["ci"][0] <= r["robust_accuracy"] <= r["ci"][1]
    # per-sample results: plain JSON, consistent with the report's numbers
    per = json.loads((out / "per_sample.json").read_text())
    assert len(per["index"]) == len(per["label"]) == 96 and per["index"] == sorted(per["index"])
    for m in report["models"]:
        ps = per["models"][m["name"]]
        n = len(ps["clean_correct"])
        assert n == 96 and sum(ps["clean_correct"]) / n == pytest.approx(m["clean_accuracy"]["value"])
        for key, robust in ps["robust"].items():
            assert sum(robust) / n == pytest.approx(m["worst_case"][key]["value"])
            for i, r in enumerate(robust):
                assert not r or ps["clean_correct"][i]
                assert not (r and any(f[key][i] for f in ps["fooled_by"].values())), (m["name"], key, i)
                for norms in ps["min_norm"].values():  # a minimum-norm attack within eps fooled it
                    assert not (r and norms[i] is not None and norms[i] <= float(key) * (1 - 1e-4))
        assert set(ps["fooled_by"]) >= {"fgsm", "pgd_ce", "pgd_margin"} and ps["min_norm"]
    md = (out / "report.md").read_text()
    assert "## Comparison" in md and "| teacher |" in md and "| tiny |" in md and "worst case" in md
    assert "Verdict" in md
    assert md.count("(`--suite.adequacy_samples 0` turns this test off.)") == sum("adequacy" in m for m in report["models"]) > 0
    assert "Classes: 0, 1, 2" in md and report["class_names"][:3] == ["0", "1", "2"]  # the DataModule's names
    for png in ("robust_accuracy_all.png", "adversarial_examples.png", "robust_accuracy_teacher.png",
                "robust_accuracy_tiny.png"):
        assert (out / png).stat().st_size > 1000, png
    assert any((out / "tensorboard" / "teacher").glob("events.out.tfevents*"))
    printed = capsys.readouterr().out
    assert "audit: teacher:" in printed and "report written" in printed
    # a second run never overwrites the report it would replace
    with pytest.raises(SystemExit) as info:
        main(["audit", "--checkpoints", str(checkpoint), *DATA, *FAST, "--output_dir=out"])
    assert info.value.code == 2
    assert "already holds a report" in capsys.readouterr().err
    assert json.loads((out / "report.json").read_text()) == report


@pytest.mark.parametrize(
    "model_args, message",
    [
        (["--checkpoints", "missing.ckpt"], "does not exist"),
        (['--models=[{"class_path": "toy_models.SoftmaxNet"}]'], "returns probabilities"),
        (['--models=[{"class_path": "toy_models.FlatNet"}]'], "needs logits of shape (N, 10)"),
        (['--models=[{"class_path": "toy_models.EchoNet"}]'], "needs logits of shape (N, 10)"),
        (['--models=[{"class_path": "toy_models.NoSuchNet"}]'], "cannot import model class"),
        (['--models=[{"class_path": "toy_models.TinyNet", "init_args": {"in_chans": 3}}]'],
         "fails on a batch of shape (64, 1, 28, 28)"),
        (['--models=[{"name": "x"}]'], "exactly one of `checkpoint`"),
        (["--checkpoints", "a.ckpt", "--eps=[1.5]"], "impossible"),
        ([], "at least one model"),
    ],
    ids=["missing_ckpt", "probabilities", "wrong_shape", "not_logits", "bad_class", "image_mismatch", "no_source",
         "eps", "none"],
)
def test_audit_bad_input_is_one_line_and_exit_2(in_tmp, capsys, model_args, message):
    with pytest.raises(SystemExit) as info:
        main(["audit", *DATA, *FAST, *model_args])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lit-defense: error:") and message in err, err
    assert len(err.splitlines()) == 1
    assert not (in_tmp / "runs").exists() or not any((in_tmp / "runs").rglob("report.json"))


def test_audit_allow_probabilities_flags_them(in_tmp):
    args = ['--models=[{"class_path": "toy_models.SoftmaxNet", "name": "probs"}]', "--allow_probabilities=true",
            "--tensorboard=false", "--output_dir=p"]
    assert main(["audit", *args, *DATA, *FAST[:-1]]) == 0
    model = json.loads((in_tmp / "p" / "report.json").read_text())["models"][0]
    assert model["gradient_masking"]["suspected"]
    assert "probability_outputs" in model["gradient_masking"]["triggered"]
