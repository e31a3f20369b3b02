"""One way to record the constructor arguments an object was built with (``RecordsInitArgs``).

Attacks and input defences inherit it: ``obj.init_args`` is what rebuilds the object
(``type(obj)(**obj.init_args)``), what a checkpoint stores for a defence and what the resume
record stores for an attack. LightningModules keep theirs the Lightning way (``save_hyperparameters``).
"""

from __future__ import annotations

import inspect
from typing import Any


class RecordsInitArgs:
    """A base that records the arguments its ``__init__`` was called with, defaults filled in.

    ``**kwargs`` of the constructor are recorded flat. ``copy``/``pickle`` (which call ``__new__``
    without arguments) restore the recorded arguments with the object's state.
    """

    _init_args: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        """A new object with the arguments of its ``__init__`` call recorded."""
        self = super().__new__(cls)
        signature = inspect.signature(cls.__init__)
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError:  # copy/pickle call __new__ without arguments; __init__ reports bad ones
            return self
        bound.apply_defaults()
        params = dict(bound.arguments)
        params.pop("self")
        for name, param in signature.parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                params.update(params.pop(name, {}))
        self._init_args = params
        return self

    @property
    def init_args(self) -> dict[str, Any]:
        """The constructor arguments this object was built with."""
        return dict(getattr(self, "_init_args", {}))

    def _record_init_args(self, **changes: Any) -> None:
        """Record that this object now stands for other constructor arguments (a copy changed in place)."""
        self._init_args = {**self.init_args, **changes}


__all__ = ["RecordsInitArgs"]
