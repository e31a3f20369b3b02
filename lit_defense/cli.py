"""``lit-defense``: the LightningCLI of the project.

    lit-defense fit  --config configs/fashion_mnist/teacher.yaml
    lit-defense test --config configs/fashion_mnist/teacher.yaml --ckpt_path runs/.../last.ckpt
    lit-defense fit  --config configs/fashion_mnist/teacher.yaml --print_config
    lit-defense audit --checkpoints runs/.../last.ckpt other.ckpt --output_dir runs/audit/mine

Models and DataModules are chosen with ``class_path``/``init_args`` (subclass mode), so a user's
own ``LightningModule`` or ``LightningDataModule`` plugs in from YAML. The DataModule's
``num_classes``, ``in_chans``, ``image_size``, ``mean`` and ``std`` are linked into the model.

Bad input (unknown names, impossible values, missing data or checkpoints) ends with one line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import pickle
import re
import sys
import traceback
import warnings
from argparse import ArgumentError
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lit_defense.data import VisionDataModule
from lit_defense.errors import LitDefenseError
from lit_defense.lightning_cli import LitDefenseCLI

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser

_BOILERPLATE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Problem with given class_path",
    "Given value",
    "Expected a <class 'NoneType'>",
)


def _condense_parse_error(message: str) -> str:
    """Jsonargparse's nested error -> ``key.path: what is wrong``."""
    keys: list[str] = []
    lines = message.splitlines()
    for i, line in enumerate(lines):
        text = line.strip()
        match = re.match(r'Parser key "([^"]+)":?\s*(.*)', text)
        if match:
            keys.append(match.group(1))
            text = match.group(2)
        text = text.lstrip("- ").strip()
        if not text or text.startswith(_BOILERPLATE):
            continue
        if "Got value" not in text:
            given = next((x.strip() for x in lines[i + 1:] if x.strip().startswith("Given value:")), None)
            if given and "Namespace(" not in given:
                text = f"{text.rstrip('.')}; {given}"
        return f"{'.'.join(keys)}: {text}" if keys else text
    return message.strip().splitlines()[0] if message.strip() else "invalid arguments"


def _find_own_error(err: BaseException) -> BaseException | None:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, LitDefenseError):
            return err
        err = err.__cause__ or err.__context__
    return None


def _one_line(err: BaseException) -> str:
    own = _find_own_error(err)
    if own is not None:
        return str(own)
    if isinstance(err, pickle.UnpicklingError):
        detail = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line), "")
        return (
            "refused to load the checkpoint: it holds Python objects beyond tensors and plain "
            f"containers, which could execute code (loaded with weights_only=True). {detail}"
        ).strip()
    if isinstance(err, ArgumentError):
        return _condense_parse_error(str(err)) + " (see `lit-defense <subcommand> --help`)"
    frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    where = f" (raised at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(err).__name__}: {err}{where}"


def audit_parser() -> ArgumentParser:
    """The parser of ``lit-defense audit`` (jsonargparse, same YAML style as the other subcommands)."""
    from jsonargparse import ActionConfigFile, ArgumentParser, lazy_instance
    from lightning.pytorch import LightningDataModule

    from lit_defense.attacks import Attack
    from lit_defense.audit import DEFAULT_EPS, AttackSuite, AuditTrainer
    from lit_defense.diagnostics import MaskingThresholds

    parser = ArgumentParser(
        prog="lit-defense audit", exit_on_error=False,
        description="Attack models with attacks that see through gradient masking, run the masking "
        "checklist and write report.json, report.md and plots. Example: lit-defense audit "
        "--checkpoints runs/fashion_mnist/teacher/version_0/checkpoints/last.ckpt",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML file with any of these options.")
    parser.add_argument("--models", type=list[dict[str, Any]], default=[],
                        help="Models: {name, checkpoint} or {name, class_path, init_args, weights}.")
    parser.add_argument("--checkpoints", type=str, nargs="+", default=[],
                        help="Shorthand for models given as lit-defense .ckpt files.")
    parser.add_subclass_arguments(LightningDataModule, "data", default=lazy_instance(VisionDataModule),
                                  help="The DataModule whose test (or val) split is attacked.")
    parser.add_argument("--split", type=str, default="test", help="test or val.")
    parser.add_argument("--eps", type=list[float], default=list(DEFAULT_EPS), help="The eps grid.")
    parser.add_argument("--norm", type=str, default="linf", help="linf or l2.")
    parser.add_argument("--num_samples", type=int, default=1000, help="Fixed, seeded subset size.")
    parser.add_argument("--output_dir", type=str | None, default=None, help="Default: runs/audit/<timestamp>.")
    parser.add_argument("--overwrite", type=bool, default=False, help="Replace a report in output_dir.")
    parser.add_class_arguments(AttackSuite, "suite")
    parser.add_argument("--transfer", type=list[Attack], default=[],
                        help="Extra gradient-free attacks, e.g. lit_defense.transfer.Transfer.")
    parser.add_class_arguments(MaskingThresholds, "thresholds")
    parser.add_argument("--batch_size", type=int, default=500)
    parser.add_argument("--check_samples", type=int, default=200,
                        help="Inputs of the checklist's own attacks and finite-difference probe.")
    parser.add_argument("--device", type=str, default="auto",
                        help="One process on this device (cpu, cuda, cuda:1); auto: the --trainer options decide.")
    parser.add_class_arguments(AuditTrainer, "trainer", help="Processes and devices, as in the training recipes "
                               "(--config configs/trainer/ddp.yaml, --trainer.devices 2 --trainer.strategy ddp).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tensorboard", type=bool, default=True, help="Also write TensorBoard runs.")
    parser.add_argument("--allow_probabilities", type=bool, default=False,
                        help="Audit a model that returns probabilities instead of refusing it.")
    return parser


def audit_main(args: list[str], from_command_line: bool = False) -> int:
    """``lit-defense audit``: parse, then run in one process or in every process of the trainer's strategy."""
    from lit_defense.audit import AuditTrainer, ModelSpec, launch, run_audit

    parser = audit_parser()
    cfg = parser.parse_args(args)
    init = getattr(parser, "instantiate", parser.instantiate_classes)(cfg)
    models = [*(ModelSpec.from_dict(m) for m in init.models), *(ModelSpec(checkpoint=c) for c in init.checkpoints)]

    def audit(device: Any) -> int:
        run_audit(
            models, init.data, init.eps, norm=init.norm, split=init.split, num_samples=init.num_samples,
            output_dir=init.output_dir, suite=init.suite, thresholds=init.thresholds, transfer=init.transfer,
            batch_size=init.batch_size, device=device, seed=init.seed, tensorboard=init.tensorboard,
            allow_probabilities=init.allow_probabilities, overwrite=init.overwrite,
            check_samples=init.check_samples, log=lambda line: print(line, flush=True),
        )
        return 0

    if init.device != "auto":
        return audit(init.device)
    trainer = init.trainer if isinstance(init.trainer, AuditTrainer) else AuditTrainer(**vars(init.trainer))
    return launch(trainer, audit, from_command_line)


def _config_files(argv: list[str]) -> list[str]:
    files = []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def _yaml_problem(argv: list[str]) -> str | None:
    """``FILE: YAML syntax error at line L, column C: problem`` for the first broken --config."""
    import yaml

    for name in _config_files(argv):
        try:
            yaml.safe_load(Path(name).read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            context = getattr(err, "context", None)
            return (f"config file {name}: YAML syntax error{where}: {problem}"
                    + (f" ({context})" if context else "") + ". Fix the YAML there.")
        except OSError:
            continue
    return None


SUBCOMMANDS = {
    "fit": "train a model from a recipe: --config configs/<dataset>/<recipe>.yaml",
    "validate": "evaluate a checkpoint on the validation split (--ckpt_path)",
    "test": "evaluate a checkpoint on the test split (--ckpt_path)",
    "predict": "predictions of a checkpoint (--ckpt_path)",
    "audit": "attack models with attacks that see through gradient masking; write a report",
    "run": "train the six models of the story and audit them (what `make run` does)",
}


def top_level_help() -> str:
    """``lit-defense --help``: every subcommand with one line (each has its own ``--help``)."""
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: lit-defense <subcommand> [options]", "",
             "Lightning training templates for defensive distillation and gradient-masked models, and",
             "an audit that finds out whether their robustness is real.", "",
             "subcommands (`lit-defense <subcommand> --help` for each one's options):"]
    lines += [f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``lit-defense``. Returns 0, or exits with 2 and one line on bad input."""
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] in (["-h"], ["--help"]):
        print(top_level_help())
        return 0
    if not argv:
        print(top_level_help(), file=sys.stderr)
        raise SystemExit(2)
    try:
        if argv and argv[0] == "audit":
            return audit_main(argv[1:], from_command_line=args is None)
        if argv and argv[0] == "run":
            from lit_defense.pipeline import main as run_main

            return run_main(argv[1:])
        LitDefenseCLI(args=args)
    except (LitDefenseError, ArgumentError, ValueError, FileNotFoundError, pickle.UnpicklingError) as err:
        message = _yaml_problem(argv) if "Problems parsing config" in str(err) else None
        print(f"lit-defense: error: {message or _one_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    return 0


__all__ = ["LitDefenseCLI", "main"]

if __name__ == "__main__":
    main()
