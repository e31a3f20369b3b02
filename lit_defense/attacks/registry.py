"""The attacks by short name: one registry, like the backbones' (``register_backbone``).

A recipe may name an attack by its short name, the class name (``class_path: PGD``: LightningCLI
resolves it among the imported ``Attack`` subclasses; this registry keeps the registered names
unique, and where a user's own class shares a name the recipe needs the full path). In Python, ``create_attack("pgd", steps=50)`` or
``create_attack({"class_path": "EOT", "init_args": {"attack": {"class_path": "PGD"}}})`` builds one
from its name, in any case. A new attack registers itself with ``@register_attack``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from lit_defense.attacks.base import Attack
from lit_defense.errors import ConfigError

A = TypeVar("A", bound=type[Attack])
ATTACKS: dict[str, type[Attack]] = {}


def register_attack(cls: A | None = None, *, name: str | None = None) -> A | Callable[[A], A]:
    """Register an ``Attack`` subclass under ``name`` (default: its class name); a decorator.

    Names are unique whatever their case (a recipe's ``class_path: PGD`` must mean one class).
    """

    def register(attack: A) -> A:
        if not (isinstance(attack, type) and issubclass(attack, Attack)):
            raise TypeError(f"register_attack takes an Attack subclass, got {attack!r}")
        key = name or attack.__name__
        clash = next((k for k in ATTACKS if k.lower() == key.lower()), None)
        if clash is not None and ATTACKS[clash] is not attack:
            raise ValueError(f"an attack named {clash!r} is already registered ({ATTACKS[clash].__module__})")
        ATTACKS[key] = attack
        return attack

    return register(cls) if cls is not None else register


def list_attacks() -> list[str]:
    """The registered attacks' short names."""
    return sorted(ATTACKS)


def attack_class(name: str) -> type[Attack]:
    """The attack class registered as ``name`` (any case), or a ``ConfigError`` that lists the names."""
    found = {k.lower(): v for k, v in ATTACKS.items()}.get(name.lower())
    if found is None:
        raise ConfigError(f"unknown attack {name!r}; choose one of: {', '.join(list_attacks())}, or register yours "
                          "with lit_defense.attacks.register_attack.")
    return found


def create_attack(spec: str | Mapping[str, Any] | Attack, **init_args: Any) -> Attack:
    """An attack from its short name and arguments, from a recipe's mapping, or the attack itself.

    ``spec``: ``"pgd"`` (with ``init_args`` as keywords), ``{"class_path": "PGD", "init_args": {...}}``
    (an attack inside, like EOT's ``attack``, may be such a mapping too), or an ``Attack``.
    """
    if isinstance(spec, Attack):
        return spec.replace(**init_args) if init_args else spec
    if isinstance(spec, str):
        return _build(attack_class(spec), init_args)
    if not isinstance(spec, Mapping) or "class_path" not in spec:
        raise ConfigError(f"an attack is a short name, a mapping with class_path (and init_args) or an Attack; "
                          f"got {spec!r}.")
    path = str(spec["class_path"]).rsplit(".", 1)[-1]
    return _build(attack_class(path), {**dict(spec.get("init_args") or {}), **init_args})


def _build(cls: type[Attack], init_args: Mapping[str, Any]) -> Attack:
    """``cls`` built from ``init_args``; an attack inside given as a mapping (EOT's ``attack``) built too."""
    args = {k: create_attack(v) if isinstance(v, Mapping) and "class_path" in v else v for k, v in init_args.items()}
    params = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    unknown = sorted(set(args) - set(params))
    if unknown:
        raise ConfigError(f"{cls.__name__} takes no argument {unknown}; it takes {params}.")
    return cls(**args)


__all__ = ["ATTACKS", "attack_class", "create_attack", "list_attacks", "register_attack"]
