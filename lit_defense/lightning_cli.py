"""``LitDefenseCLI``: the project's LightningCLI (``fit``, ``validate``, ``test``, ``predict``).

Models and DataModules are chosen with ``class_path``/``init_args`` (subclass mode), so a user's
own ``LightningModule`` or ``LightningDataModule`` plugs in from YAML. The DataModule's
``num_classes``, ``in_chans``, ``image_size``, ``mean`` and ``std`` are linked into the model.
``lit_defense.cli`` adds the ``audit`` and ``run`` subcommands and the one-line errors;
``lit_defense.pipeline`` drives this class to train its stages.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lit_defense.checkpoints import ResumableModelCheckpoint
from lit_defense.modules.classifier import Classifier

# Linked from the DataModule into the model, so a config names the dataset once.
DATA_TO_MODEL_LINKS = ("num_classes", "in_chans", "image_size", "mean", "std")


class LitDefenseCLI(LightningCLI):
    """LightningCLI with the project's links, checkpointing defaults and a ``--test_after_fit``."""

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # reproducible by default: every run seeds 0 unless --seed_everything says otherwise
        # (LightningCLI's own default draws a random seed); the recipes need not repeat it
        kwargs.setdefault("seed_everything_default", 0)
        super().__init__(
            model_class=Classifier,
            # any DataModule with VisionDataModule's facts (num_classes, in_chans, image_size, mean,
            # std): VisionDataModule, ImageFolderDataModule or the user's own
            datamodule_class=LightningDataModule,
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

    @override
    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # Raise instead of printing a 70-line usage: main() prints one line and exits with 2.
        kwargs["exit_on_error"] = False
        return super().init_parser(**kwargs)

    # the private LightningCLI methods overridden here are listed in lit_defense.lightning_private
    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if "weights_only" in self._subcommand_method_arguments[subcommand]:
            # --ckpt_path restores through torch.load(weights_only=True): no code in a checkpoint runs
            parser.set_defaults({"weights_only": True})
        return parser

    @override
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

    @override
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
        """``--ckpt_path last`` resumes the newest run of this recipe.

        The latest ``<save_dir>/<name>/version_*/checkpoints/last.ckpt``, logging on into the same
        version.
        """
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
        logger._version = version  # continue the same version folder (lit_defense.lightning_private)
        config["ckpt_path"] = str(ckpt)
        rank_zero_info(f"resuming from {ckpt}")

    def after_fit(self) -> None:
        """With ``--test_after_fit true``: test the best checkpoint after training."""
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


__all__ = ["DATA_TO_MODEL_LINKS", "LitDefenseCLI"]
