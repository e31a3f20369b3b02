"""One way to turn a name into a class, used everywhere a config or a checkpoint names one.

``resolve_class(name, base, what=..., short_names=...)``:

- a short name (``jpeg``, ``papernot_mnist``) is looked up among the project's own names;
- a dotted class path (``my_pkg.defenses.BitDepthReduction``) is honoured exactly: that module's
  class, never a lit-defense class that happens to share its last name;
- the class must be a subclass of ``base`` (or, for factories, a callable when ``base`` is None).

Imports follow the checkpoint rule. A user's own config may name any importable module. While a
checkpoint is being rebuilt (``restricted_imports()``), only ``lit_defense`` modules are imported;
any other module must already have been imported by the user's own code, so a checkpoint never
makes us import (and run) code it names.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from lit_defense.errors import ConfigError

_RESTRICTED = contextvars.ContextVar("lit_defense_restricted_imports", default=False)


@contextlib.contextmanager
def restricted_imports() -> Iterator[None]:
    """Inside this block, names from a checkpoint import only ``lit_defense`` modules (see module doc)."""
    token = _RESTRICTED.set(True)
    try:
        yield
    finally:
        _RESTRICTED.reset(token)


def _module(module_name: str, name: str, what: str) -> Any:
    if _RESTRICTED.get() and module_name.split(".")[0] != "lit_defense":
        if module_name not in sys.modules:
            raise ConfigError(
                f"{what} {name!r} comes from module {module_name!r}, which is not imported; import it yourself "
                "before loading the checkpoint (a checkpoint never triggers imports of code it names)."
            )
        return sys.modules[module_name]
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"cannot import {what} {name!r}: {err}. Check the class path.") from None


def resolve_class(name: str, base: type | None, *, what: str, short_names: Mapping[str, Any] | None = None) -> Any:
    """The class (or factory, with ``base=None``) that ``name`` stands for (see module doc)."""
    short_names = short_names or {}
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{what} must be named by a string, got {name!r}.")
    if name in short_names:
        return short_names[name]
    module_name, _, attr = name.rpartition(".")
    if not module_name:
        known = f"choose one of: {', '.join(short_names)}, or " if short_names else ""
        raise ConfigError(f"unknown {what} {name!r}; {known}give a class path like 'my_pkg.module.Class'.")
    obj = getattr(_module(module_name, name, what), attr, None)
    if obj is None:
        raise ConfigError(f"cannot import {what} {name!r}: module {module_name!r} has no attribute {attr!r}.")
    if base is None:
        if not callable(obj):
            raise ConfigError(f"{what} {name!r} is not callable.")
    elif not (isinstance(obj, type) and issubclass(obj, base)):
        raise ConfigError(f"{what} {name!r} is not a subclass of {base.__module__}.{base.__qualname__}.")
    return obj


def class_path(obj: Any) -> str:
    """The exact dotted path of an object's class (what ``resolve_class`` reads back)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


__all__ = ["class_path", "resolve_class", "restricted_imports"]
