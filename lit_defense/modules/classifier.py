"""``Classifier``: a backbone trained at a softmax temperature T and deployed at T=1.

It is the undefended model, the teacher of defensive distillation, and the base class of every
other LightningModule of the project. ``forward`` maps [0, 1] pixels to deployment logits
(normalisation is the first layer of ``self.net``); the temperature only divides the logits inside
the training loss, ``softmax(z / T)``.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lit_defense.backbones import Normalize, create_backbone
from lit_defense.errors import ConfigError, NonFiniteLossError
from lit_defense.gradients import input_gradient


def unpack_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(x, y)`` or ``(x, y, index)`` (as ``VisionDataModule`` yields) -> ``(x, y, index|None)``."""
    if isinstance(batch, dict):
        return batch["image"], batch["label"], batch.get("index")
    if isinstance(batch, (list, tuple)) and len(batch) in (2, 3):
        return batch[0], batch[1], batch[2] if len(batch) == 3 else None
    raise ConfigError(
        "batches must be (images, labels), (images, labels, indices) or a dict with 'image' and "
        f"'label'; got {type(batch).__name__}."
    )


def zero_input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample flag: is the cross-entropy gradient w.r.t. the input exactly zero?

    Works inside ``trainer.validate``/``test`` (inference mode): the batch is cloned into a normal
    tensor and gradients are taken w.r.t. the input only (``autograd.grad``), so parameter
    ``.grad`` is untouched.
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        grad = input_gradient(F.cross_entropy(model(x), y.clone(), reduction="sum"), x)
    return grad.flatten(1).abs().amax(1) == 0


class Classifier(L.LightningModule):
    """Image classifier: ``Normalize -> backbone``, trained with cross-entropy at temperature T.

    Args:
        backbone: registered backbone name (``papernot_mnist``, ``papernot_cifar``) or
            ``timm/<model>``; see ``lit_defense.backbones``.
        backbone_kwargs: extra keyword arguments of the backbone (e.g. ``dropout``).
        num_classes, in_chans, image_size: shape of the data; linked from the DataModule by the CLI.
        mean, std: per-channel normalisation applied inside the model (linked from the
            DataModule by the CLI; ``None``: no normalisation).
        temperature: softmax temperature T of the training loss, ``CE(softmax(logits / T), y)``.
            ``forward`` always returns logits at deployment temperature T=1.
        optimizer: optimizer factory (LightningCLI: ``class_path``/``init_args``). Adam is the
            default because its step size does not shrink with the 1/T factor that scales every
            gradient at high temperature (SGD at lr=0.05 does not learn at all at T=100).
        lr_scheduler: optional LR scheduler factory; stepped every epoch (or every step with
            ``lr_scheduler_interval="step"``). ``ReduceLROnPlateau`` monitors ``val/loss``.
        log_gradient_stats: at validation and test, also log ``<stage>/logit_scale`` (mean
            max-logit) and ``<stage>/zero_grad_frac`` (fraction of inputs whose cross-entropy
            input gradient at T=1 is exactly zero): the mechanism of defensive distillation made
            visible. Costs one extra forward+backward per evaluation batch.
        head_lr_temperature_scaling: multiply the learning rate of the classification head (the
            backbone's last linear layer) by T. Under Adam a step of the head moves the logits
            the loss sees, ``z / T``, T times less than at T=1, so at T=100 the head learns ~100x
            slower in loss space and training lags (measured on Fashion-MNIST: 3 epochs at
            T=100 reach 84.5% test accuracy unscaled, 87.9% scaled; T=1: 89.2%). A no-op at
            T=1. The network still learns its ~T-times-larger logits itself.
        channels_last: keep weights and inputs in the channels-last memory format (faster
            convolutions with mixed precision on recent GPUs).
        compile: run the network through ``torch.compile`` (training, evaluation and attacks);
            ``True`` uses the default backend (inductor), a string names another (``"eager"``,
            ``"aot_eager"``). The compiled graph is kept outside the module tree, so checkpoints
            are unchanged.
    """

    def __init__(
        self,
        backbone: str = "papernot_mnist",
        backbone_kwargs: dict[str, Any] | None = None,
        num_classes: int = 10,
        in_chans: int = 1,
        image_size: int = 28,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        temperature: float = 1.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        log_gradient_stats: bool = True,
        head_lr_temperature_scaling: bool = True,
        channels_last: bool = False,
        compile: bool | str = False,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}.")
        if num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes}.")
        if (mean is None) != (std is None):
            raise ConfigError("give both mean and std for normalisation, or neither.")
        if mean is not None and len(mean) != in_chans:
            raise ConfigError(f"mean/std have {len(mean)} channels but in_chans={in_chans}.")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.temperature = float(temperature)
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.lr_scheduler_interval = lr_scheduler_interval
        self.log_gradient_stats = log_gradient_stats
        self.head_lr_temperature_scaling = head_lr_temperature_scaling
        self.channels_last = channels_last
        self.compile_net = compile
        self._compiled_net = None
        self.configure_models()
        self.example_input_array = torch.zeros(2, in_chans, image_size, image_size)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    # ------------------------------------------------------------------------------------ model
    def configure_models(self) -> None:
        """Build the networks from ``self.hparams``, once, at the end of ``__init__``.

        The one place a module's networks are made (as torchgeo's ``BaseTask`` does): a subclass
        that adds a part (an input defense, a frozen teacher) overrides this hook and has every
        hyper-parameter at hand, instead of preparing state before ``Classifier.__init__`` runs.
        """
        self.net = self.build_net()

    def build_backbone(self, in_chans: int) -> nn.Module:
        """The backbone for ``in_chans`` input channels (an input defense may change them)."""
        hp = self.hparams
        return create_backbone(
            hp.backbone, num_classes=hp.num_classes, in_chans=in_chans,
            image_size=hp.image_size, **(hp.backbone_kwargs or {}),
        )

    def build_net(self, defense: nn.Module | None = None) -> nn.Sequential:
        """``[0,1] pixels -> logits``: ``defense`` (if any), normalisation, backbone.

        Normalisation follows the defense when it keeps the channel count; a defense that
        changes it (thermometer encoding) feeds the backbone directly.
        """
        hp = self.hparams
        in_chans = defense.out_chans(hp.in_chans) if defense is not None else hp.in_chans
        keeps_chans = in_chans == hp.in_chans
        normalize = Normalize(hp.mean, hp.std) if hp.mean is not None and keeps_chans else nn.Identity()
        parts = OrderedDict(defense=defense) if defense is not None else OrderedDict()
        parts.update(normalize=normalize, backbone=self.build_backbone(in_chans))
        return nn.Sequential(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deployment logits (T=1) for images in [0, 1]."""
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.compile_net:
            if self._compiled_net is None:
                # stored without registering a submodule: state_dict keys stay "net.*"
                backend = self.compile_net if isinstance(self.compile_net, str) else "inductor"
                object.__setattr__(self, "_compiled_net", torch.compile(self.net, backend=backend))
            return self._compiled_net(x)
        return self.net(x)

    @override
    def configure_model(self) -> None:
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # which class to rebuild (LightningCLI also stores it as hparams["_class_path"])
        checkpoint["lit_defense_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        # RNG states (tensors and ints only: loadable with weights_only=True), so a resumed run
        # draws the same dropout masks and augmentations as an uninterrupted one
        checkpoint["lit_defense_rng"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
        }

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("lit_defense_rng")
        trainer = self._trainer
        if rng is None or trainer is None or trainer.state.fn != "fit":
            return
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
        version, state, gauss = rng["python"]
        random.setstate((version, tuple(state), gauss))

    @classmethod
    def inference_hparams(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        """Hyper-parameters to rebuild this model from a checkpoint for inference only."""
        return hparams

    # ------------------------------------------------------------------------------------- loss
    def loss(self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
             index: torch.Tensor | None) -> torch.Tensor:
        """Training objective: cross-entropy of ``softmax(logits / T)``. Subclasses override."""
        return F.cross_entropy(logits / self.temperature, y)

    # ------------------------------------------------------------------------------------ steps
    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self._check_previous_loss()
        x, y, index = unpack_batch(batch)
        logits = self(x)
        loss = self.loss(logits, y, x, index)
        self._pending_finite = (torch.isfinite(loss.detach()), self.global_step, self.current_epoch, batch_idx)
        self.train_acc(logits.detach(), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    _pending_finite: tuple[torch.Tensor, int, int, int] | None = None

    def _check_previous_loss(self) -> None:
        """Stop on a NaN/inf training loss, naming its step.

        The check reads the flag of the previous step, which the device has finished by now, so it
        costs no pipeline stall.
        """
        pending, self._pending_finite = self._pending_finite, None
        if pending is not None and not bool(pending[0]):
            _, step, epoch, batch_idx = pending
            raise NonFiniteLossError(
                f"training loss is NaN or infinite at global step {step} (epoch {epoch}, batch {batch_idx}); "
                "checkpoints written before it are kept. Lower the learning rate, check the data for "
                "NaNs, or use gradient clipping (--trainer.gradient_clip_val=1.0)."
            )

    @override
    def on_train_epoch_end(self) -> None:
        self._check_previous_loss()

    @override
    def on_validation_start(self) -> None:
        # before validation, hence before ModelCheckpoint could save diverged weights
        self._check_previous_loss()

    def _eval_step(self, batch: Any, stage: str) -> None:
        x, y, _ = unpack_batch(batch)
        logits = self(x)
        metric = self.val_acc if stage == "val" else self.test_acc
        metric(logits, y)
        # val/test loss: the plain cross-entropy at the training temperature (what training
        # minimises, up to the distillation targets), comparable across epochs.
        self.log(f"{stage}/loss", F.cross_entropy(logits / self.temperature, y), sync_dist=True)
        self.log(f"{stage}/acc", metric, prog_bar=True)
        if self.log_gradient_stats:
            zero = zero_input_gradient(self, x, y)
            self.log(f"{stage}/logit_scale", logits.detach().amax(-1).mean(), sync_dist=True)
            self.log(f"{stage}/zero_grad_frac", zero.float().mean(), sync_dist=True)

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    @override
    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x = unpack_batch(batch)[0] if isinstance(batch, (list, tuple, dict)) else batch
        logits = self(x)
        return {"logits": logits, "probs": logits.softmax(-1), "preds": logits.argmax(-1)}

    # ------------------------------------------------------------------------------- optimizers
    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the classification head.

        From timm's ``get_classifier()``, else the backbone's last ``nn.Linear``.
        """
        backbone = self.net.backbone
        head = backbone.get_classifier() if hasattr(backbone, "get_classifier") else None
        if not isinstance(head, nn.Module):
            linears = [m for m in backbone.modules() if isinstance(m, nn.Linear)]
            head = linears[-1] if linears else None
        return list(head.parameters()) if head is not None else []

    @override
    def configure_optimizers(self) -> OptimizerLRScheduler:
        head = self.head_parameters() if self.head_lr_temperature_scaling and self.temperature != 1 else []
        if head:
            head_ids = {id(p) for p in head}
            rest = [p for p in self.parameters() if id(p) not in head_ids]
            optimizer = self.optimizer_factory([{"params": rest}, {"params": head}])
            optimizer.param_groups[1]["lr"] *= self.temperature
            if "initial_lr" in optimizer.param_groups[1]:
                optimizer.param_groups[1]["initial_lr"] *= self.temperature
        else:
            optimizer = self.optimizer_factory(self.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        config = {"scheduler": scheduler, "interval": self.lr_scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}
