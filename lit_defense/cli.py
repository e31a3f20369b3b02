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
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from lit_defense.checkpoints import ResumableModelCheckpoint
from lit_defense.data import VisionDataModule
from lit_defense.errors import LitDefenseError
from lit_defense.modules.classifier import Classifier

# Linked from the DataModule into the model, so a config names the dataset once.
DATA_TO_MODEL_LINKS = ("num_classes", "in_chans", "image_size", "mean", "std")


class LitDefenseCLI(LightningCLI):
    """LightningCLI with the project's links, checkpointing defaults and a ``--test_after_fit``."""

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any):
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            model_class=Classifier,
            datamodule_class=VisionDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults={
                "logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "runs", "name": "default"},
                },
                # a crash while saving never destroys the previous checkpoint
                "plugins": [{"class_path": "lit_defense.checkpoints.AtomicCheckpointIO"}],
            },
            args=args,
            run=run,
            **kwargs,
        )

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # Raise instead of printing a 70-line usage: main() prints one line and exits with 2.
        kwargs["exit_on_error"] = False
        return super().init_parser(**kwargs)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if "weights_only" in self._subcommand_method_arguments[subcommand]:
            # --ckpt_path restores through torch.load(weights_only=True): no code in a checkpoint runs
            parser.set_defaults({"weights_only": True})
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in DATA_TO_MODEL_LINKS:
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")
        parser.add_lightning_class_args(ResumableModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch={epoch}-step={step}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After `fit`, run `test` on the best checkpoint (or the final weights when no "
            "checkpoint was saved) and print test/acc.",
        )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        wants_bar = config.get("enable_progress_bar") is not False
        has_bar = any(isinstance(cb, ProgressBar) for cb in (config.get("callbacks") or []))
        if wants_bar and not has_bar and sys.stdout.isatty():
            kwargs.setdefault("callbacks", [*(config.get("callbacks") or []), RichProgressBar()])
        return super().instantiate_trainer(**kwargs)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Trainer:
        if config.get("fast_dev_run"):
            # a smoke run writes nothing: without this, ModelCheckpoint(save_last=True) drops a
            # last.ckpt into ./checkpoints of whatever folder the user is in
            callbacks = [cb for cb in callbacks if not isinstance(cb, ModelCheckpoint)]
        return super()._instantiate_trainer(config, callbacks)

    def before_fit(self) -> None:
        """``--ckpt_path last`` resumes the newest run of this recipe: the latest
        ``<save_dir>/<name>/version_*/checkpoints/last.ckpt``, logging on into the same version."""
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") != "last":
            return
        logger = self.trainer.logger
        root = Path(getattr(logger, "root_dir", "") or "") if logger is not None else None
        found = []
        if root is not None and root.is_dir():
            for ckpt in root.glob("version_*/checkpoints/last.ckpt"):
                version = ckpt.parent.parent.name.removeprefix("version_")
                if version.isdigit():
                    found.append((int(version), ckpt))
        if not found:
            rank_zero_info(f"--ckpt_path last: no last.ckpt under {root}/version_*/checkpoints; starting a new run.")
            config["ckpt_path"] = None
            return
        version, ckpt = max(found)
        logger._version = version  # TensorBoard/CSV loggers: continue the same version folder
        config["ckpt_path"] = str(ckpt)
        rank_zero_info(f"resuming from {ckpt}")

    def after_fit(self) -> None:
        if not self._get(self.config, "test_after_fit"):
            return
        ckpt = self.trainer.checkpoint_callback
        ckpt_path = "best" if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path else None
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path, verbose=False,
                                    weights_only=True)
        if results:
            used = ckpt.best_model_path if ckpt_path == "best" else "final weights"
            rank_zero_info(
                f"test/acc = {results[0]['test/acc']:.4f}  test/loss = {results[0]['test/loss']:.4f}  ({used})"
            )


_BOILERPLATE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Problem with given class_path",
    "Given value",
    "Expected a <class 'NoneType'>",
)


def _condense_parse_error(message: str) -> str:
    """jsonargparse's nested error -> ``key.path: what is wrong``."""
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


def audit_parser():
    """The parser of ``lit-defense audit`` (jsonargparse, same YAML style as the other subcommands)."""
    from jsonargparse import ActionConfigFile, ArgumentParser, lazy_instance
    from lightning.pytorch import LightningDataModule

    from lit_defense.attacks import Attack
    from lit_defense.audit import AttackSuite
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
    parser.add_argument("--eps", type=list[float], default=[0.05, 0.1, 0.2], help="The eps grid.")
    parser.add_argument("--norm", type=str, default="linf", help="linf or l2.")
    parser.add_argument("--num_samples", type=int, default=1000, help="Fixed, seeded subset size.")
    parser.add_argument("--output_dir", type=str | None, default=None, help="Default: runs/audit/<timestamp>.")
    parser.add_argument("--overwrite", type=bool, default=False, help="Replace a report in output_dir.")
    parser.add_class_arguments(AttackSuite, "suite")
    parser.add_argument("--transfer", type=list[Attack], default=[],
                        help="Extra gradient-free attacks, e.g. lit_defense.attacks.Transfer.")
    parser.add_class_arguments(MaskingThresholds, "thresholds")
    parser.add_argument("--batch_size", type=int, default=500)
    parser.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tensorboard", type=bool, default=True, help="Also write TensorBoard runs.")
    parser.add_argument("--allow_probabilities", type=bool, default=False,
                        help="Audit a model that returns probabilities instead of refusing it.")
    return parser


def audit_main(args: list[str]) -> int:
    from lit_defense.audit import ModelSpec, run_audit

    parser = audit_parser()
    cfg = parser.parse_args(args)
    init = getattr(parser, "instantiate", parser.instantiate_classes)(cfg)
    models = [*(ModelSpec.from_dict(m) for m in init.models), *(ModelSpec(checkpoint=c) for c in init.checkpoints)]
    run_audit(
        models, init.data, init.eps, norm=init.norm, split=init.split, num_samples=init.num_samples,
        output_dir=init.output_dir, suite=init.suite, thresholds=init.thresholds, transfer=init.transfer,
        batch_size=init.batch_size, device=init.device, seed=init.seed, tensorboard=init.tensorboard,
        allow_probabilities=init.allow_probabilities, overwrite=init.overwrite,
        log=lambda line: print(line, flush=True),
    )
    return 0


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


def main(args: list[str] | None = None) -> int:
    """Entry point of ``lit-defense``. Returns 0, or exits with 2 and one line on bad input."""
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if argv and argv[0] == "audit":
            return audit_main(argv[1:])
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
