"""The attacks by short name: one registry; a recipe's ``class_path: PGD`` and ``create_attack("pgd")`` agree."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch

import lit_defense.attacks as attacks
from lit_defense.attacks import (
    ATTACKS,
    PGD,
    Attack,
    attack_class,
    create_attack,
    list_attacks,
    register_attack,
)
from lit_defense.errors import ConfigError


def test_every_shipped_attack_is_registered_under_its_class_name():
    shipped = {name for name in attacks.__all__ if inspect.isclass(getattr(attacks, name))
               and issubclass(getattr(attacks, name), Attack) and not inspect.isabstract(getattr(attacks, name))}
    assert shipped and shipped <= set(list_attacks())
    for name in shipped:
        assert ATTACKS[name] is getattr(attacks, name)


def test_create_attack_from_a_short_name_or_a_recipe_mapping():
    pgd = create_attack("pgd", steps=7, loss="margin")
    assert isinstance(pgd, PGD) and pgd.steps == 7 and pgd.init_args["loss"] == "margin"
    eot = create_attack({"class_path": "EOT", "init_args": {"samples": 3, "attack": {"class_path": "PGD",
                                                                                       "init_args": {"steps": 2}}}})
    assert type(eot).__name__ == "EOT" and isinstance(eot.attack, PGD) and eot.attack.steps == 2
    full = create_attack({"class_path": "lit_defense.attacks.Square", "init_args": {"n_queries": 10}})
    assert full.init_args["n_queries"] == 10
    assert create_attack(pgd) is pgd and create_attack(pgd, steps=3).steps == 3


def test_bad_names_and_arguments_get_one_clear_error():
    with pytest.raises(ConfigError, match="unknown attack 'pgdd'; choose one of: .*PGD"):
        create_attack("pgdd")
    with pytest.raises(ConfigError, match=r"PGD takes no argument \['stepz'\]"):
        create_attack("PGD", stepz=3)
    with pytest.raises(ConfigError, match="class_path"):
        create_attack({"init_args": {}})


def test_a_users_attack_registers_with_one_decorator_and_names_stay_unique():
    @register_attack(name="ToyNoise")
    class ToyNoise(Attack):
        def perturb(self, model, x, y, generator):
            return x + self.eps * generator.signs(tuple(x.shape))

    try:
        assert attack_class("toynoise") is ToyNoise
        toy = create_attack("ToyNoise", eps=0.05)
        x = torch.rand(3, 1, 4, 4)
        assert isinstance(toy, ToyNoise) and (toy(torch.nn.Flatten(), x, torch.zeros(3, dtype=torch.long)) - x).abs().max() <= 0.05 + 1e-6
        with pytest.raises(ValueError, match="already registered"):
            register_attack(type("ToyNoise", (PGD,), {}))
        with pytest.raises(TypeError, match="Attack subclass"):
            register_attack(int)
    finally:
        ATTACKS.pop("ToyNoise", None)


def test_a_recipe_names_each_attack_by_its_short_name():
    """LightningCLI (jsonargparse) resolves ``class_path: <short name>`` to the registered class.

    In a fresh process: another test's own class named like a shipped one (``my_pkg.PGD``) would
    make the short name ambiguous here, as it would in a user's process (jsonargparse then asks for
    the full path).
    """
    code = """
from jsonargparse import ArgumentParser
from lit_defense.attacks import ATTACKS, Attack, list_attacks
parser = ArgumentParser(exit_on_error=False)
parser.add_argument("--attacks", type=list[Attack])
simple = [n for n in list_attacks() if n not in ("BPDA", "EOT", "Transfer")]  # these wrap another attack
built = parser.instantiate(parser.parse_object({"attacks": [{"class_path": n} for n in simple]})).attacks
assert [type(a) for a in built] == [ATTACKS[n] for n in simple], built
print(len(built))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) >= 9
