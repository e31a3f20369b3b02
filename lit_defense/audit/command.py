"""The ``lit-defense audit`` command line: its parser and the objects a parsed configuration builds.

The options are ``AuditOptions``' fields (declared there once, help from its docstring); this
module adds what is audited (``models``, ``checkpoints``, ``data``) and where (``trainer``).
``lit-defense audit --print_config`` prints a complete configuration; the pipeline's profiles
read their audit from files of the same form (``configs/audit/quick.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lit_defense.audit.options import AuditOptions
from lit_defense.audit.run import AuditTrainer
from lit_defense.data import VisionDataModule

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser

# the options of `lit-defense audit` that are not AuditOptions fields: what is audited and where it runs
AUDIT_INPUTS = ("config", "models", "checkpoints", "data", "trainer")


def audit_parser() -> ArgumentParser:
    """The parser of ``lit-defense audit``: ``AuditOptions``' fields plus the models, the data and the trainer."""
    from jsonargparse import ActionConfigFile, ArgumentParser, lazy_instance
    from lightning.pytorch import LightningDataModule

    parser = ArgumentParser(
        prog="lit-defense audit", exit_on_error=False,
        description="Attack models with attacks that see through gradient masking, run the masking "
        "checklist and write report.json, report.md and plots. Example: lit-defense audit "
        "--checkpoints runs/fashion_mnist/teacher/version_0/checkpoints/last.ckpt. "
        "`--print_config` shows every option; the profiles of `lit-defense run` are such files "
        "(configs/audit/quick.yaml).",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML file with any of these options.")
    parser.add_argument("--models", type=list[dict[str, Any]], default=[],
                        help="Models: {name, checkpoint} or {name, class_path, init_args, weights}.")
    parser.add_argument("--checkpoints", type=str, nargs="+", default=[],
                        help="Shorthand for models given as lit-defense .ckpt files.")
    parser.add_subclass_arguments(LightningDataModule, "data", default=lazy_instance(VisionDataModule),
                                  help="The DataModule whose test (or val) split is attacked.")
    parser.add_class_arguments(AuditOptions, None)
    parser.add_class_arguments(AuditTrainer, "trainer", help="Processes and devices, as in the training recipes "
                               "(--config configs/trainer/ddp.yaml, --trainer.devices 2 --trainer.strategy ddp).")
    return parser


@dataclass
class AuditCall:
    """A parsed ``lit-defense audit`` configuration, instantiated: what ``run_audit`` and ``launch`` take."""

    models: list[Any]
    data: Any
    options: Any
    trainer: Any


def read_audit_config(args: list[str]) -> AuditCall:
    """Parse ``lit-defense audit`` arguments (``--config FILE`` included) and build their objects."""
    from lit_defense.audit.models import ModelSpec

    parser = audit_parser()
    cfg = parser.parse_args(args)
    init = getattr(parser, "instantiate", parser.instantiate_classes)(cfg)
    models = [*(ModelSpec.from_dict(m) for m in init.models), *(ModelSpec(checkpoint=c) for c in init.checkpoints)]
    options = AuditOptions(**{name: init[name] for name in AuditOptions.names()})
    trainer = init.trainer if isinstance(init.trainer, AuditTrainer) else AuditTrainer(**vars(init.trainer))
    return AuditCall(models, init.data, options, trainer)




__all__ = ["AUDIT_INPUTS", "AuditCall", "audit_parser", "read_audit_config"]
