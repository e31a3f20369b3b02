from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lit_defense.attacks import BPDA, EOT, PGD, bpda_hooks
from lit_defense.defenses import (
    DEFENSES,
    BitDepthReduction,
    GaussianNoise,
    InputDefense,
    JPEGCompression,
    MedianSmoothing,
    RandomResizePad,
    ThermometerEncoding,
    build_defense,
)
from lit_defense.errors import ConfigError
from lit_defense.modules import AdversarialTraining, MaskedClassifier
from lit_defense.modules.loading import module_from_checkpoint


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_defense_range_shape_and_declared_randomness(name):
    defense = DEFENSES[name]()
    x = torch.rand(4, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    a = defense(x)
    torch.manual_seed(1)
    b = defense(x)
    assert a.shape == (4, defense.out_chans(3), 28, 28)
    assert a.min() >= 0 and a.max() <= 1
    if defense.randomized:
        assert not torch.equal(a, b), f"{name} declares randomized but two draws agree"
    else:
        assert torch.equal(a, b), f"{name} is deterministic but two calls differ"


@pytest.mark.parametrize("defense", [BitDepthReduction(), JPEGCompression(), ThermometerEncoding()],
                         ids=lambda d: type(d).__name__)
def test_non_differentiable_defenses_have_zero_or_absent_naive_gradient(defense):
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    out = defense(x)
    if not out.requires_grad:
        return  # absent: computed outside autograd
    (g,) = torch.autograd.grad(out.sum() * 1.0, x, allow_unused=True)
    assert g is None or torch.count_nonzero(g) == 0
    assert defense.differentiable is False


def test_bpda_gives_a_nonzero_gradient_through_every_non_differentiable_defense():
    for defense in (BitDepthReduction(), JPEGCompression(), ThermometerEncoding(), MedianSmoothing()):
        model = MaskedClassifier(defense=defense).eval()
        x = torch.rand(2, 1, 28, 28)
        y = torch.tensor([0, 1])
        with bpda_hooks(model) as hooked:
            xi = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(model(xi), y), xi)
        assert hooked == 1 and torch.count_nonzero(g) > 0, type(defense).__name__


def test_thermometer_surrogate_is_the_relaxed_step():
    """clip(L * (x - k/L), 0, 1) ramps from 0 at each threshold to 1 one level later: it never
    exceeds the step and catches up with it within one level."""
    t = ThermometerEncoding(levels=4)
    x = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(0)) * 0.75
    relaxed, step = t.bpda_surrogate(x), t(x)
    assert (relaxed <= step).all()
    assert (t.bpda_surrogate(x + 0.25) >= step).all()
    assert t.out_chans(3) == 12


def test_bit_depth_and_median_behave():
    x = torch.tensor([0.2, 0.7, 0.49, 0.51]).view(1, 1, 2, 2)
    assert BitDepthReduction(bits=1)(x).flatten().tolist() == [0.0, 1.0, 0.0, 1.0]
    img = torch.zeros(1, 1, 5, 5)
    img[0, 0, 2, 2] = 1.0  # salt noise: a median filter removes it
    assert MedianSmoothing(3)(img).max() == 0


@pytest.mark.parametrize("size,top,left", [(22, 3, 5), (28, 0, 0), (25, 0, 3), (23, 5, 5)])
def test_random_resize_pad_is_bilinear_resize_then_zero_pad(size, top, left):
    x = torch.rand(3, 2, 28, 28, generator=torch.Generator().manual_seed(0))
    ref = F.pad(F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False),
                (left, 28 - size - left, top, 28 - size - top))
    full = torch.full((3,), size)
    out = RandomResizePad.place(x, full, full, torch.full((3,), top), torch.full((3,), left))
    assert torch.allclose(out, ref, atol=1e-5)


def test_random_resize_pad_draws_per_image():
    """Identical images in one batch get different sizes and positions; over many draws every size
    in [min_scale * S, S] shows up (the image fills the canvas exactly at full size)."""
    x = torch.ones(256, 1, 28, 28)
    torch.manual_seed(0)
    out = RandomResizePad(min_scale=0.8)(x)
    assert len({tuple(o.flatten().tolist()) for o in out[:16]}) > 1
    covered = (out > 0.5).flatten(1).sum(1)  # the pixels the resized all-ones image covers
    sizes = sorted({round(c ** 0.5) for c in covered.tolist()})
    assert sizes == list(range(22, 29))


def test_build_defense_and_errors():
    assert isinstance(build_defense("jpeg"), JPEGCompression)
    d = build_defense({"class_path": "lit_defense.defenses.GaussianNoise", "init_args": {"sigma": 0.1}})
    assert isinstance(d, GaussianNoise) and d.sigma == 0.1
    with pytest.raises(ConfigError, match="unknown defense 'jpg'; choose one of: bit_depth, jpeg"):
        build_defense("jpg")
    with pytest.raises(ConfigError, match="'os.system' is not a subclass of lit_defense.defenses.InputDefense"):
        build_defense({"class_path": "os.system"})
    with pytest.raises(ConfigError):
        BitDepthReduction(bits=0)
    with pytest.raises(ConfigError):
        RandomResizePad(min_scale=0)


def _dm():
    from lit_defense.data import VisionDataModule

    return VisionDataModule("synthetic", val_size=128, synthetic_train_size=512, batch_size=64)


@pytest.mark.parametrize("defense", ["bit_depth", "thermometer", "gaussian_noise"])
def test_masked_classifier_trains_and_checkpoints_safely(defense, tmp_path):
    L.seed_everything(0)
    dm = _dm()
    model = MaskedClassifier(defense=defense, mean=dm.mean, std=dm.std)
    assert isinstance(model.defense, InputDefense)
    trainer = L.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    assert trainer.callback_metrics["val/acc"] > 0.8
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["hyper_parameters"]["defense"]["class_path"].startswith("lit_defense.defenses.")
    restored = module_from_checkpoint(path)
    x = torch.rand(4, 1, 28, 28)
    if not model.defense.randomized:
        assert torch.equal(restored(x), model.eval()(x))


def test_adaptive_attacks_on_masked_models_run():
    model = MaskedClassifier(defense=RandomResizePad()).eval()
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    out = EOT(PGD(eps=0.1, steps=2), samples=2)(model, x, y)
    assert (out - x).abs().max() <= 0.1 + 1e-6
    jpeg = MaskedClassifier(defense=JPEGCompression()).eval()
    with torch.no_grad():
        y = jpeg(x).argmax(1)  # correctly classified, so the attacks have to move
    naive = PGD(eps=0.1, steps=2, random_start=False)(jpeg, x, y)
    assert torch.equal(naive, x)  # absent gradient: the naive attack cannot move
    assert not torch.equal(BPDA(PGD(eps=0.1, steps=2, random_start=False))(jpeg, x, y), x)


def test_adversarial_training_step_keeps_only_training_loss_grads():
    L.seed_everything(0)
    model = AdversarialTraining(attack_eps=0.1, attack_steps=3)
    model.train()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    torch.manual_seed(0)
    loss = model.loss(model(x), y, x, None)
    assert model.training
    assert all(p.grad is None for p in model.parameters())  # crafting left no gradient
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    # the same gradients from the loss on the same adversarial batch, recomputed by hand
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    x_adv = model._craft(x, y, None)
    torch.manual_seed(0)
    model.train()
    # dropout draws differ after crafting; compare with dropout off
    model.eval()
    ref_loss = F.cross_entropy(model(x_adv), y)
    (ref,) = torch.autograd.grad(ref_loss, [model.net.backbone.features[0].weight])
    assert ref.abs().sum() > 0 and grads[0].abs().sum() > 0
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6


def test_trades_loss_runs():
    model = AdversarialTraining(attack_eps=0.1, attack_steps=2, trades_beta=6.0).train()
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    loss = model.loss(model(x), y, x, None)
    assert torch.isfinite(loss) and loss.requires_grad
