"""``AuditOptions``: every option of an audit, declared once.

The one place an audit option is spelled. ``run_audit`` takes it; ``lit-defense audit`` builds its
parser from its fields (help from the docstring below), so ``--print_config`` shows every one of
them; the pipeline's profiles (``configs/audit/<profile>.yaml``) are files of the same options; and
the resume record (``progress/settings.json``) holds the fields marked ``identity``: a re-run whose
identity differs starts over instead of resuming.

What is audited (the models, the DataModule) and where the processes run (``AuditTrainer``) are
not options of one audit: ``run_audit`` takes the first two as arguments, ``launch`` the third.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field, fields
from typing import Any

from lit_defense.attacks import Attack
from lit_defense.audit.suite import DEFAULT_EPS, AttackSuite
from lit_defense.diagnostics import MaskingThresholds
from lit_defense.errors import ConfigError

IDENTITY = {"identity": True}  # the option changes what the audit measures: part of the resume record


@dataclass
class AuditOptions:
    """How to audit: the threat model, the subset, the attacks' budgets, what to write.

    Args:
        eps: The eps grid (L-inf or L2 radii on [0, 1] pixels).
        norm: linf or l2.
        split: test or val: the DataModule's split that is attacked.
        num_samples: Size of the fixed, seeded subset of the split.
        seed: Seed of the subset and of every attack's random numbers.
        suite: The default attacks' budgets (steps, restarts, queries, targets).
        extra_attacks: Attacks a user adds to the audit: they run after the gradient-free attacks
            on the survivors (any ``lit_defense.attacks.Attack``, e.g. lit_defense.transfer.Transfer).
        transfer: Deprecated alias of extra_attacks (removed in the next release).
        check_samples: Inputs of the checklist's own attacks and finite-difference probe.
        thresholds: When a check of the gradient-masking checklist fails.
        output_dir: Where the report and the progress record go. Default: runs/audit/<timestamp>.
        overwrite: Replace a report in output_dir (and start over instead of resuming).
        batch_size: Inputs per attack call (results do not depend on it).
        device: One process on this device (cpu, cuda, cuda:1); auto: the --trainer options
            decide (in run_audit: cuda when there is one).
        tensorboard: Also write TensorBoard runs.
        allow_probabilities: Audit a model that returns probabilities instead of refusing it.
        keep_examples: Inputs whose adversarial examples the report shows.
    """

    eps: list[float] = field(default_factory=lambda: list(DEFAULT_EPS), metadata=IDENTITY)
    norm: str = field(default="linf", metadata=IDENTITY)
    split: str = field(default="test", metadata=IDENTITY)
    num_samples: int = field(default=1000, metadata=IDENTITY)
    seed: int = field(default=0, metadata=IDENTITY)
    suite: AttackSuite = field(default_factory=AttackSuite, metadata=IDENTITY)
    extra_attacks: list[Attack] = field(default_factory=list, metadata=IDENTITY)
    transfer: list[Attack] = field(default_factory=list)
    check_samples: int = field(default=200, metadata=IDENTITY)
    thresholds: MaskingThresholds = field(default_factory=MaskingThresholds)
    output_dir: str | None = None
    overwrite: bool = False
    batch_size: int = 500
    device: str = "auto"
    tensorboard: bool = True
    allow_probabilities: bool = False
    keep_examples: int = 8

    def __post_init__(self) -> None:
        if self.transfer:
            warnings.warn("the audit option `transfer` is now `extra_attacks` (the old name goes in the next "
                          "release)", DeprecationWarning, stacklevel=3)
            self.extra_attacks = [*self.extra_attacks, *self.transfer]
            self.transfer = []

    @classmethod
    def names(cls) -> list[str]:
        """Every option's name (the CLI's options beyond the models, the data and the trainer)."""
        return [f.name for f in fields(cls)]

    def replace(self, **changes: Any) -> AuditOptions:
        """A copy with ``changes``; an unknown name is one clear error listing the known ones."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise ConfigError(f"unknown audit option(s) {unknown}; the options are {self.names()} "
                              "(lit_defense.audit.AuditOptions).")
        if isinstance(changes.get("suite"), dict):
            changes["suite"] = AttackSuite(**changes["suite"])
        if isinstance(changes.get("thresholds"), dict):
            changes["thresholds"] = MaskingThresholds(**changes["thresholds"])
        return dataclasses.replace(self, **changes)

    def identity(self) -> dict[str, Any]:
        """The options that define what the audit measures, as plain JSON (the resume record)."""
        out = {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.metadata.get("identity")}
        out["eps"] = sorted(float(e) for e in self.eps)
        return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Attack):
        return {"class": type(value).__name__, "name": value.name,
                "init": {k: repr(v) for k, v in value.init_args.items()}}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


__all__ = ["AuditOptions"]
