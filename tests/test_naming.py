"""One way to turn a name into a class (``lit_defense.naming``): exact class paths are honoured,
short names resolve among the project's own classes, and a checkpoint never imports code."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
import yaml

from lit_defense.errors import ConfigError
from lit_defense.naming import resolve_class, restricted_imports

MY_PKG = '''
import torch
from torch import nn

from lit_defense.attacks import PGD as _PGD
from lit_defense.defenses import InputDefense


class BitDepthReduction(InputDefense):
    """Shares its name with lit-defense's defense; marks what it saw."""

    differentiable = True

    def __init__(self, shift: float = 0.0):
        super().__init__()
        self.shift = shift

    def forward(self, x):
        return x


class PGD(_PGD):
    """Shares its name with lit-defense's PGD."""


class TinyNet(nn.Module):
    """Takes num_classes and in_chans, but not image_size."""

    def __init__(self, num_classes: int, in_chans: int, width: int = 8):
        super().__init__()
        self.width = width
        self.net = nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    def forward(self, x):
        return self.net(x)
'''


@pytest.fixture
def my_pkg(tmp_path, monkeypatch):
    pkg = tmp_path / "my_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(MY_PKG))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_pkg", raising=False)
    yield "my_pkg"
    sys.modules.pop("my_pkg", None)


def _cli(tmp_path, model: dict, callbacks: list | None = None):
    from lit_defense.lightning_cli import LitDefenseCLI

    config = {
        "model": model,
        "data": {"class_path": "lit_defense.data.VisionDataModule",
                 "init_args": {"dataset": "synthetic", "synthetic_train_size": 64, "synthetic_test_size": 32,
                               "val_size": 16, "batch_size": 16}},
        "trainer": {"logger": False, "callbacks": callbacks or []},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return LitDefenseCLI(args=["--config", str(path)], run=False)


def test_a_users_defense_attack_and_backbone_given_by_class_path_are_the_ones_used(my_pkg, tmp_path):
    cli = _cli(
        tmp_path,
        {"class_path": "lit_defense.modules.MaskedClassifier",
         "init_args": {"defense": {"class_path": "my_pkg.BitDepthReduction", "init_args": {"shift": 0.5}},
                       "backbone": "my_pkg.TinyNet", "backbone_kwargs": {"width": 3}}},
        callbacks=[{"class_path": "lit_defense_callbacks.AdversarialEvaluation",
                    "init_args": {"attacks": [{"class_path": "my_pkg.PGD", "init_args": {"steps": 2}}],
                                  "eps": [0.1], "num_samples": 8}}],
    )
    import my_pkg as users

    defense = cli.model.defense
    assert type(defense) is users.BitDepthReduction and defense.shift == 0.5
    assert type(cli.model.net.backbone) is users.TinyNet and cli.model.net.backbone.width == 3
    # the checkpoint keeps the exact class path, not the last name
    assert cli.model.hparams["defense"]["class_path"] == "my_pkg.BitDepthReduction"
    (callback,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "AdversarialEvaluation"]
    assert [type(a) for a in callback.attacks] == [users.PGD]


def test_build_defense_honours_the_exact_class_path(my_pkg):
    import my_pkg as users

    from lit_defense.defenses import BitDepthReduction, build_defense

    assert type(build_defense({"class_path": "my_pkg.BitDepthReduction"})) is users.BitDepthReduction
    assert type(build_defense({"class_path": "lit_defense.defenses.BitDepthReduction"})) is BitDepthReduction
    assert type(build_defense("bit_depth")) is BitDepthReduction
    with pytest.raises(ConfigError, match="no attribute 'Nope'"):
        build_defense({"class_path": "my_pkg.Nope"})
    with pytest.raises(ConfigError, match="not a subclass of lit_defense.defenses.InputDefense"):
        build_defense({"class_path": "my_pkg.TinyNet"})


def test_a_checkpoint_imports_no_module_the_user_has_not_imported(my_pkg):
    assert "my_pkg" not in sys.modules
    with restricted_imports(), pytest.raises(ConfigError, match="not imported; import it yourself"):
        resolve_class("my_pkg.TinyNet", torch.nn.Module, what="backbone")
    assert "my_pkg" not in sys.modules  # refused without importing it
    import my_pkg as users

    with restricted_imports():  # imported by the user's own code: allowed
        assert resolve_class("my_pkg.TinyNet", torch.nn.Module, what="backbone") is users.TinyNet


def test_a_saved_user_defense_comes_back_from_its_checkpoint(my_pkg, tmp_path):
    import lightning as L
    import my_pkg as users

    from lit_defense.modules import MaskedClassifier
    from lit_defense.modules.loading import module_from_checkpoint

    model = MaskedClassifier(defense=users.BitDepthReduction(shift=0.25), num_classes=10, in_chans=1, image_size=28)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_epochs=0, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    restored = module_from_checkpoint(tmp_path / "m.ckpt")
    assert type(restored.defense) is users.BitDepthReduction and restored.defense.shift == 0.25


def test_unknown_short_names_list_the_known_ones():
    with pytest.raises(ConfigError, match="unknown defense 'jpg'; choose one of: .*jpeg"):
        resolve_class("jpg", torch.nn.Module, what="defense", short_names={"jpeg": torch.nn.Identity})
