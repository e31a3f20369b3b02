from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, SYNTHETIC

from lit_defense.cli import main

# configs/<dataset>/*.yaml are recipes; trainer/, data/, optim/ and callbacks/ hold the parts they
# are composed of (a recipe names a part by its relative path, a trainer preset is a second --config)
PARTS = ("trainer", "data", "optim", "callbacks")
# audit/ holds `lit-defense audit` configs, run/ the profiles of `lit-defense run`
RECIPES = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name not in (*PARTS, "audit", "run"))
AUDIT_CONFIGS = sorted((CONFIGS / "audit").glob("*.yaml"))
TEACHER = CONFIGS / "fashion_mnist" / "teacher.yaml"


def _needs_root(config: Path) -> list[str]:
    """The image-folder recipes name no folder (the user gives it): one for them."""
    return ["--data.init_args.root=images"] if config.parent.name == "image_folder" else []


@pytest.mark.parametrize("config", RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_parses(config, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(config), *_needs_root(config), "--print_config"])
    assert info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "class_path: lit_defense." in out
    assert "checkpoint:" in out and "monitor: val/acc" in out
    # the parts a recipe names by path are read in: data, optimizer, callbacks
    data = ("lit_defense.image_folder.ImageFolderDataModule" if config.parent.name == "image_folder"
            else "lit_defense.data.VisionDataModule")
    assert f"class_path: {data}" in out and "class_path: torch.optim." in out
    assert "class_path: lit_defense_callbacks.AdversarialEvaluation" in out
    assert ".yaml" not in out.split("ckpt_path")[0], "a part's path was left unresolved"


@pytest.mark.parametrize("config", AUDIT_CONFIGS, ids=lambda p: p.stem)
def test_every_audit_example_parses(config):
    from lit_defense.audit.command import audit_parser
    from lit_defense.pipeline import profiles

    cfg = audit_parser().parse_args(["--config", str(config), *_needs_root(config)])
    # a profile's audit names no model (the run gives its own), the image-folder one leaves them to the user
    names_models = config.stem not in profiles() and "image_folder" not in config.stem
    assert cfg.num_samples > 0 and cfg.eps and bool(cfg.checkpoints or cfg.models) == names_models
    assert cfg.data.class_path.startswith("lit_defense.")


def test_every_shared_part_is_used_by_a_recipe():
    used = "\n".join(p.read_text() for p in RECIPES)
    for part in sorted(p for name in PARTS[1:] for p in (CONFIGS / name).glob("*.yaml")):
        assert f"../{part.parent.name}/{part.name}" in used, f"{part} is shipped but no recipe uses it"


TRAINER_PRESETS = sorted((CONFIGS / "trainer").glob("*.yaml"))


@pytest.mark.parametrize("preset", TRAINER_PRESETS, ids=lambda p: p.stem)
def test_trainer_presets_compose_with_a_recipe(preset, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(TEACHER), "--config", str(preset), "--print_config"])
    assert info.value.code in (0, None)
    import yaml

    merged = yaml.safe_load(capsys.readouterr().out)["trainer"]
    for key, value in yaml.safe_load(preset.read_text())["trainer"].items():
        if isinstance(value, dict):  # class_path + the given init_args (print_config adds defaults)
            assert merged[key]["class_path"] == value["class_path"]
            assert value["init_args"].items() <= merged[key]["init_args"].items(), key
        else:
            assert merged[key] == value, (key, merged[key], value)
    assert merged["max_epochs"] == 10 and merged["callbacks"]  # the recipe's own settings survive


def test_fit_fast_dev_run_from_config(in_tmp):
    assert main(["fit", "--config", str(TEACHER), *SYNTHETIC, "--trainer.fast_dev_run=true"]) == 0
    written = [p for p in in_tmp.rglob("*") if p.is_file()]
    assert written == [], f"a fast_dev_run must write nothing, wrote {written}"


def test_fit_then_test_writes_best_and_last_checkpoints(in_tmp, caplog):
    caplog.set_level("INFO")
    main([
        "fit", "--config", str(TEACHER), *SYNTHETIC, "--trainer.max_epochs=2",
        "--model.init_args.lr_scheduler.init_args.T_max=2", "--test_after_fit=true",
        "--trainer.logger.init_args.name=t",
    ])
    ckpts = sorted(p.name for p in (in_tmp / "runs" / "t").rglob("*.ckpt"))
    assert "last.ckpt" in ckpts and any(name.startswith("best-epoch=") for name in ckpts)
    assert (in_tmp / "runs" / "t" / "version_0" / "config.yaml").is_file()
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("test/acc"))
    acc = float(line.split()[2])
    assert acc > 0.5, line  # 2 epochs on synthetic data: far above the 0.1 chance level
    ckpt = torch.load(next((in_tmp / "runs" / "t").rglob("last.ckpt")), weights_only=True)
    assert ckpt["hyper_parameters"]["_class_path"] == "lit_defense.modules.Classifier"
    assert ckpt["hyper_parameters"]["num_classes"] == 10  # linked from the DataModule


def test_test_subcommand_on_checkpoint(in_tmp, caplog):
    main(["fit", "--config", str(TEACHER), *SYNTHETIC, "--trainer.max_epochs=1",
          "--trainer.logger.init_args.name=t"])
    last = next((in_tmp / "runs" / "t").rglob("last.ckpt"))
    assert main(["test", "--config", str(TEACHER), *SYNTHETIC, f"--ckpt_path={last}"]) == 0


def _run_cli(args, cwd, **env_vars):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **env_vars}
    exe = Path(sys.executable).with_name("lit-defense")
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_missing_offline_data_is_one_line_exit_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _run_cli(["fit", "--config", str(TEACHER), f"--data.init_args.data_dir={empty}",
                    "--data.init_args.download=false", "--trainer.fast_dev_run=true"], tmp_path)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("lit-defense: error:")]
    assert len(errors) == 1
    assert "apt-get install dataset-fashion-mnist" in errors[0] and str(empty) in errors[0]


def test_pretrained_weights_missing_offline_is_one_line_exit_2(tmp_path):
    res = _run_cli(["fit", "--config", str(TEACHER), *SYNTHETIC, "--model.init_args.backbone=timm/resnet18",
                    "--model.init_args.backbone_kwargs={pretrained: true}", "--trainer.fast_dev_run=true"],
                   tmp_path, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    assert res.returncode == 2, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("lit-defense: error:")]
    assert len(errors) == 1 and "pretrained weights of timm model 'resnet18'" in errors[0], res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    "override, needle",
    [
        ("--data.init_args.dataset=imagenet", "imagenet"),
        ("--model.init_args.backbone=lenet9", "unknown backbone 'lenet9'"),
        ("--model.init_args.temperature=0", "temperature must be > 0"),
        ("--model.init_args.backbone=timm/resnet18 --model.init_args.backbone_kwargs={dropout: 0.5}",
         "backbone 'timm/resnet18' does not take the keyword(s) ['dropout']"),
    ],
)
def test_bad_names_and_values_exit_2(in_tmp, capsys, override, needle):
    overrides = override.split(" --")
    overrides = overrides[:1] + ["--" + o for o in overrides[1:]]
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(TEACHER), *overrides, "--trainer.fast_dev_run=true"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err
    assert "Traceback" not in err


class _Boom:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_ckpt_path_is_restored_with_weights_only(in_tmp, capsys):
    """A checkpoint that would execute code when unpickled is refused by `test --ckpt_path`."""
    main(["fit", "--config", str(TEACHER), *SYNTHETIC, "--trainer.max_epochs=1",
          "--trainer.logger.init_args.name=t"])
    last = next((in_tmp / "runs" / "t").rglob("last.ckpt"))
    ckpt = torch.load(last, weights_only=True)
    ckpt["evil"] = _Boom()
    evil = in_tmp / "evil.ckpt"
    torch.save(ckpt, evil)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["test", "--config", str(TEACHER), *SYNTHETIC, f"--ckpt_path={evil}"])
    out, err = capsys.readouterr()
    assert info.value.code == 2
    assert "pickled code ran" not in out
    assert "refused to load the checkpoint" in err and "Traceback" not in err


# students need a teacher: test_distillation and test_robust_distillation train them from one
TRAINABLE = [p for p in RECIPES if p.name not in ("distilled.yaml", "robust_distilled.yaml")]


@pytest.mark.parametrize("config", TRAINABLE, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_recipe_runs_fast_dev_run(config, in_tmp):
    """Each shipped recipe trains one batch, validates and runs its adversarial evaluation."""
    if config.parent.name == "image_folder":  # a small folder of PNGs, timm's tiny test network
        from test_image_folder import write_folder

        root = write_folder(in_tmp / "images", {"train": 24}, size=32)
        data = [f"--data.init_args.root={root}", "--data.init_args.image_size=32", "--data.init_args.num_workers=0",
                "--data.init_args.batch_size=8", "--model.init_args.backbone=timm/test_resnet",
                "--model.init_args.backbone_kwargs={pretrained: false}", *SYNTHETIC[-2:]]
    elif "backbone: timm/" in config.read_text():  # a ResNet on the CPU: the same path on fewer images
        data = [*SYNTHETIC, "--data.init_args.batch_size=8", "--data.init_args.val_size=16"]
    else:
        data = SYNTHETIC
    assert main(["fit", "--config", str(config), *data, "--trainer.fast_dev_run=true"]) == 0


@pytest.mark.parametrize(
    "edit, old, new, needle, recipe",
    [
        ("callbacks/adversarial_evaluation.yaml", "eps: [0.1]", "eps: [1.5]", "eps=1.5 is impossible for linf",
         "fashion_mnist/teacher.yaml"),
        ("fashion_mnist/masked_jpeg.yaml", "lit_defense.defenses.JPEGCompression", "lit_defense.defenses.Nope",
         "Nope", "fashion_mnist/masked_jpeg.yaml"),
        ("fashion_mnist/teacher.yaml", "max_epochs: 10", "max_epochs: [10", "YAML syntax error at line",
         "fashion_mnist/teacher.yaml"),
        ("callbacks/masked_bpda.yaml", "lit_defense.attacks.BPDA", "lit_defense.attacks.Nope", "Nope",
         "fashion_mnist/masked_bit_depth.yaml"),
        ("callbacks/masked_bpda.yaml", "class_path: lit_defense.attacks.BPDA", "class_path: Nope",
         "no class is named 'Nope'; a short class_path names a registered attack", "fashion_mnist/masked_bit_depth.yaml"),
        ("callbacks/adversarial_evaluation.yaml", "eps: [0.1]", "eps: [-0.1]", "eps=-0.1 is impossible",
         "fashion_mnist/teacher.yaml"),
        ("fashion_mnist/teacher.yaml", "../data/fashion_mnist.yaml", "../data/nope.yaml", "nope.yaml",
         "fashion_mnist/teacher.yaml"),
    ],
    ids=["impossible-eps", "unknown-defense", "yaml-syntax", "unknown-attack", "unknown-short-name", "negative-eps",
         "missing-part"],
)
def test_bad_configs_are_one_line_exit_2(in_tmp, capsys, edit, old, new, needle, recipe):
    """A mistake in a recipe or in a shared part it names: one line on stderr, exit code 2."""
    import shutil

    configs = in_tmp / "configs"
    shutil.copytree(CONFIGS, configs)
    text = (configs / edit).read_text()
    assert old in text
    (configs / edit).write_text(text.replace(old, new))
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(configs / recipe), *SYNTHETIC, "--trainer.fast_dev_run=true"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    lines = [line for line in err.splitlines() if line.startswith("lit-defense: error:")]
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("fit", "validate", "test", "predict", "audit", "run"):
        assert f"\n  {name} " in out, out
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2 and "audit" in capsys.readouterr().err


def test_a_timm_backbone_replaces_the_recipe_backbone_with_one_override(in_tmp):
    """Architecture-specific settings live in each backbone's defaults, so nothing leaks."""
    assert main(["fit", "--config", str(TEACHER), *SYNTHETIC, "--model.init_args.backbone=timm/resnet18",
                 "--trainer.fast_dev_run=true"]) == 0
