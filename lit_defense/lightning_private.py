"""The one place that names Lightning's private API, and why each name is used.

Lightning gives no public hook for these; each use is small and falls back safely where it can.
``tests/test_lightning_private.py`` resolves every name of ``PRIVATE`` against the installed
Lightning, so an upgrade that renames or removes one fails a test by name instead of changing
behaviour quietly.
"""

from __future__ import annotations

import contextvars
import importlib
from typing import Any

PRIVATE: dict[str, str] = {
    # lit_defense.lightning_cli.LitDefenseCLI
    "lightning.pytorch.cli.LightningCLI._prepare_subcommand_parser":
        "--ckpt_path restores with weights_only=True by default (the subcommand parser is built there)",
    "lightning.pytorch.cli.LightningCLI._subcommand_method_arguments":
        "which arguments a subcommand's Trainer method takes (is weights_only one of them)",
    "lightning.pytorch.cli.LightningCLI._instantiate_trainer":
        "fast_dev_run writes nothing: its ModelCheckpoint is dropped before the Trainer is built",
    "lightning.pytorch.cli.LightningCLI._get":
        "reads a value of the parsed config whether or not it is nested under a subcommand",
    "lightning.pytorch.loggers.TensorBoardLogger._version":
        "--ckpt_path last logs on into the resumed run's version folder instead of a new one",
    # lit_defense.modules.loading.own_hyperparameters
    "lightning.pytorch.core.mixins.hparams_mixin._given_hyperparameters":
        "a teacher built inside the student's __init__ keeps its own hyper-parameters under LightningCLI",
    # lit_defense.audit.run.launch
    "lightning.fabric.strategies.launchers.subprocess_script._SubprocessScriptLauncher":
        "a multi-process audit that Lightning would start by re-running the command line is refused from Python",
}


def resolve(dotted: str) -> Any:  # noqa: ANN401 (a module attribute of any kind)
    """The object a dotted name of ``PRIVATE`` stands for.

    An attribute that ``__init__`` sets exists only on instances: it is looked up in the class's
    source, and its name returned.
    """
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for j, name in enumerate(parts[i:], start=i):
            if not hasattr(obj, name):
                if j == len(parts) - 1 and isinstance(obj, type) and _assigned_in_source(obj, name):
                    return name
                raise AttributeError(f"{'.'.join(parts[:j])} has no {name!r}")
            obj = getattr(obj, name)
        return obj
    raise ImportError(f"no module in {dotted!r}")


def _assigned_in_source(cls: type, name: str) -> bool:
    import inspect
    import re

    pattern = re.compile(rf"self\.{re.escape(name)}\s*(:[^=\n]*)?=")
    for klass in cls.__mro__:  # set by the class or one of its bases
        try:
            if pattern.search(inspect.getsource(klass)):
                return True
        except (OSError, TypeError):  # builtins (object) have no source
            continue
    return False


def given_hyperparameters() -> contextvars.ContextVar | None:
    """LightningCLI's context variable for the hyper-parameters of ``save_hyperparameters()`` calls.

    ``None`` on a Lightning without it.
    """
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:
        return None
    return _given_hyperparameters


def relaunches_command_line(launcher: Any) -> bool:  # noqa: ANN401 (a Fabric launcher)
    """Whether Fabric's ``launcher`` starts the other processes by running the command line again."""
    return type(launcher).__name__ == "_SubprocessScriptLauncher" and not launcher.is_interactive_compatible


__all__ = ["PRIVATE", "given_hyperparameters", "relaunches_command_line", "resolve"]
