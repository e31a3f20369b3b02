"""``DistilledStudent``: defensive distillation (Papernot et al. 2016).

A teacher trained at temperature T labels the training data with ``softmax(teacher(x) / T)``; the
student, usually of the same architecture, is trained at the same T on these soft labels and
deployed at T=1. Its deployed logits come out roughly T times larger than an ordinary model's,
so softmax saturates and the cross-entropy input gradient underflows to exactly zero in float32:
gradient attacks on the cross-entropy fail while margin (logit) losses do not (Carlini & Wagner
2016). ``val/logit_scale`` and ``val/zero_grad_frac`` show the mechanism every epoch.

The teacher is loaded safely (``weights_only=True``), kept in eval mode with gradients off, is not
a submodule (never trained, never moved by the optimizer, never saved in the student's
checkpoint) and is loaded on every rank under DDP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lit_defense.checkpoints import (
    is_lightning_checkpoint,
    load_checkpoint_file,
    load_weights,
)
from lit_defense.errors import ConfigError, DataNotFoundError
from lit_defense.modules.classifier import Classifier
from lit_defense.modules.loading import module_from_checkpoint, own_hyperparameters


@dataclass(frozen=True)
class FrozenTeacher:
    """Holds the teacher outside the student's module tree.

    ``nn.Module`` registers a module assigned as an attribute; one held by this plain object is
    not a submodule, so it stays out of the student's ``state_dict``, ``parameters()`` (and so
    the optimizer), ``.train()`` and ``.to()``.
    """

    net: torch.nn.Module | None


class DistilledStudent(Classifier):
    """A Classifier trained on a frozen teacher's soft labels at temperature T, deployed at T=1.

    Args:
        teacher_checkpoint: the teacher: a lit-defense ``.ckpt`` (its architecture is read from
            it) or a plain state dict of a network with this student's architecture (or of
            ``teacher_backbone``). Required for training; ``None`` only when the student is
            rebuilt for inference.
        teacher_backbone, teacher_backbone_kwargs: architecture of a plain state-dict teacher,
            when it differs from the student's.
        hard_label_weight: weight ``w`` of the true labels. 0 (the default, Papernot et al.):
            loss = CE(softmax(teacher/T), log_softmax(student/T)). Otherwise (Hinton et al.):
            ``(1 - w) * T^2 * soft + w * CE(student, y)``; T^2 keeps the soft term's gradient
            on the scale of the hard term's.
        cache_teacher: compute each training sample's soft label once (keyed by the sample index
            the DataModule yields) and reuse it in later epochs. Refused when the training data
            are augmented; verified every epoch on one batch.
        **kwargs: every ``Classifier`` argument (backbone, temperature, optimizer, ...).
    """

    def __init__(
        self,
        teacher_checkpoint: str | None = None,
        teacher_backbone: str | None = None,
        teacher_backbone_kwargs: dict[str, Any] | None = None,
        hard_label_weight: float = 0.0,
        cache_teacher: bool = True,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= hard_label_weight <= 1.0:
            raise ConfigError(f"hard_label_weight must lie in [0, 1], got {hard_label_weight}.")
        super().__init__(**kwargs)  # builds the student and loads the teacher: configure_models
        self.hard_label_weight = hard_label_weight
        self.cache_teacher = cache_teacher
        self._cache: torch.Tensor | None = None
        self._cached: torch.Tensor | None = None
        self._verify_batch = False

    @override
    @classmethod
    def inference_hparams(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        return {**hparams, "teacher_checkpoint": None}

    # ---------------------------------------------------------------------------------- teacher
    def configure_models(self) -> None:
        """The student's network, then the teacher from ``hparams.teacher_checkpoint`` (if any)."""
        super().configure_models()
        hp = self.hparams
        path = hp.get("teacher_checkpoint")
        teacher = None if path is None else self._load_teacher(
            path, hp.get("teacher_backbone"), hp.get("teacher_backbone_kwargs"))
        self._frozen_teacher = FrozenTeacher(teacher)

    def _load_teacher(self, path: str, backbone: str | None, backbone_kwargs: dict | None) -> torch.nn.Module:
        hp = self.hparams
        if not path:
            raise DataNotFoundError("teacher_checkpoint is empty; give the path of the teacher's .ckpt.")
        ckpt = load_checkpoint_file(path, "teacher checkpoint")
        if is_lightning_checkpoint(ckpt):
            teacher = module_from_checkpoint(path, "teacher checkpoint", ckpt=ckpt)
        else:
            state = ckpt.get("state_dict", ckpt)
            with own_hyperparameters():
                teacher = Classifier(
                    backbone=backbone or hp.backbone,
                    backbone_kwargs=backbone_kwargs if backbone else hp.backbone_kwargs,
                    num_classes=hp.num_classes, in_chans=hp.in_chans, image_size=hp.image_size,
                    mean=hp.mean, std=hp.std, log_gradient_stats=False,
                )
            if not any(k.startswith("net.") for k in state):
                prefix = "net." if any(k.startswith(("normalize.", "backbone.")) for k in state) else "net.backbone."
                state = {prefix + k: v for k, v in state.items()}
                if prefix == "net.backbone." and hp.mean is not None:
                    state.update({f"net.normalize.{k}": v for k, v in teacher.net.normalize.state_dict().items()})
            load_weights(teacher, state, path, "teacher checkpoint")
        self._check_teacher(teacher, path)
        teacher.eval().requires_grad_(False)
        return teacher

    def _check_teacher(self, teacher: torch.nn.Module, path: str) -> None:
        hp = self.hparams
        t_classes = getattr(teacher, "num_classes", None)
        if t_classes is not None and t_classes != hp.num_classes:
            raise ConfigError(
                f"teacher {path} has {t_classes} classes but the student has {hp.num_classes}; "
                "distil a teacher trained on the same dataset."
            )
        t_hp = getattr(teacher, "hparams", {})
        for key in ("in_chans", "image_size"):
            if key in t_hp and t_hp[key] != hp[key]:
                raise ConfigError(
                    f"teacher {path} takes {key}={t_hp[key]} but the student's data have "
                    f"{key}={hp[key]}; distil a teacher trained on the same dataset."
                )
        probe = torch.zeros(2, hp.in_chans, hp.image_size, hp.image_size)
        try:
            with torch.no_grad():
                out = teacher.eval()(probe)
        except RuntimeError as err:
            raise ConfigError(
                f"teacher {path} cannot take the student's input shape "
                f"{tuple(probe.shape[1:])}: {str(err).splitlines()[0]}"
            ) from None
        if out.shape != (2, hp.num_classes):
            raise ConfigError(
                f"teacher {path} outputs shape {tuple(out.shape[1:])} per image, expected ({hp.num_classes},)."
            )

    @property
    def teacher(self) -> torch.nn.Module | None:
        """The frozen teacher (``None`` when the student was rebuilt for inference)."""
        return self._frozen_teacher.net

    def _teacher_soft_labels(self, x: torch.Tensor) -> torch.Tensor:
        teacher = self.teacher
        if next(teacher.parameters()).device != x.device:
            teacher.to(x.device)
        with torch.no_grad():
            return F.softmax(teacher(x).float() / self.temperature, dim=-1)

    # ------------------------------------------------------------------------------------ hooks
    @override
    def on_fit_start(self) -> None:
        if self.teacher is None:
            raise ConfigError(
                "DistilledStudent needs a teacher: pass --model.init_args.teacher_checkpoint="
                "runs/<teacher run>/version_*/checkpoints/last.ckpt (train one with "
                "configs/<dataset>/distillation_teacher.yaml)."
            )
        self.teacher.to(self.device).eval()
        self._cache = self._cached = None  # a new fit may bring other data: start a fresh cache
        dm = getattr(self.trainer, "datamodule", None)
        if self.cache_teacher and getattr(dm, "augment", False):
            raise ConfigError(
                "cache_teacher=true but the training data are augmented (data.augment=true): "
                "cached soft labels would be stale. Set --model.init_args.cache_teacher=false "
                "(the teacher labels every augmented batch) or turn augmentation off."
            )

    @override
    def on_train_start(self) -> None:
        if self.cache_teacher and self._cache is None:
            size = len(self.trainer.train_dataloader.dataset)
            self._cache = torch.zeros(size, self.hparams.num_classes, device=self.device)
            self._cached = torch.zeros(size, dtype=torch.bool, device=self.device)
            rank_zero_info(f"DistilledStudent: caching the teacher's soft labels for {size} training samples")

    def soft_labels(self, x: torch.Tensor, index: torch.Tensor | None, verify: bool = False) -> torch.Tensor:
        """The teacher's ``softmax(z / T)`` for ``x``, from the cache when possible."""
        if not self.cache_teacher or not self.training:
            return self._teacher_soft_labels(x)
        if index is None:
            raise ConfigError(
                "cache_teacher=true needs batches (images, labels, indices) as VisionDataModule "
                "yields; set --model.init_args.cache_teacher=false for other DataModules."
            )
        if self._cache is None:  # training_step called outside Trainer.fit
            raise ConfigError("the soft-label cache is set up when training starts; train through Trainer.fit.")
        index = index.to(self._cache.device)
        hit = self._cached[index]
        if bool(hit.all()):
            labels = self._cache[index]
            if verify:
                fresh = self._teacher_soft_labels(x)
                if not torch.allclose(fresh, labels, atol=1e-4):
                    raise ConfigError(
                        "cached teacher soft labels no longer match the training inputs (the same "
                        "sample index now holds a different image: augmentation or a reshuffled "
                        "dataset). Set --model.init_args.cache_teacher=false."
                    )
            return labels
        labels = self._teacher_soft_labels(x)
        self._cache[index] = labels
        self._cached[index] = True
        return labels

    # ------------------------------------------------------------------------------------- loss
    @override
    def loss(self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
             index: torch.Tensor | None) -> torch.Tensor:
        soft = self.soft_labels(x, index, verify=self._verify_batch)
        temp = self.temperature
        soft_loss = -(soft * F.log_softmax(logits / temp, dim=-1)).sum(-1).mean()
        w = self.hard_label_weight
        if w == 0.0:
            return soft_loss
        return (1.0 - w) * temp**2 * soft_loss + w * F.cross_entropy(logits, y)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        # Check the cache against a fresh teacher pass on the first batch of every later epoch.
        self._verify_batch = batch_idx == 0 and self.current_epoch > 0
        return super().training_step(batch, batch_idx)
