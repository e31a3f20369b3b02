"""The binarization test (a positive control for the attacks): where it reads features, that it is
reproducible, that the attacks pass it on a plain model, and that it has teeth: gradient attacks
that cannot see through a non-differentiable defence fail it, the same behind BPDA pass it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lit_defense.adequacy import Binarized, binarization_test, find_readout
from lit_defense.attacks import BPDA, PGD, masked_modules
from lit_defense.data import VisionDataModule
from lit_defense.defenses import BitDepthReduction
from lit_defense.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from toy_models import TinyNet  # noqa: E402

EPS = 0.1


@pytest.fixture(scope="module")
def data():
    dm = VisionDataModule("synthetic", synthetic_test_size=64, synthetic_train_size=512, val_size=64,
                          synthetic_noise=0.3)
    dm.setup("fit")
    x = dm.train_set.images.float() / 255
    y = dm.train_set.labels
    torch.manual_seed(0)
    net = TinyNet()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(2):
        for xb, yb in zip(x.split(64), y.split(64), strict=True):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xb), yb).backward()
            opt.step()
    net.eval().requires_grad_(False)
    return net, x[:12], y[:12]


class WithFeatures(TinyNet):
    def features(self, x):
        return self.net[:-1](x)


def test_the_features_are_the_input_of_the_last_linear_layer_or_a_features_method(data):
    net, x, _ = data
    readout = find_readout(net, x[:1])
    assert readout.kind == "linear" and readout.layer is net.net[-1] and "net.4" in readout.note
    assert readout(net, x[:3]).shape == (3, 8 * 16)
    assert find_readout(WithFeatures(), x[:1]).kind == "features"
    conv_only = nn.Sequential(nn.Conv2d(1, 10, 28), nn.Flatten())
    fallback = find_readout(conv_only, x[:1])
    assert fallback.kind == "logits" and "no nn.Linear" in fallback.note


def test_a_plain_model_passes_and_the_result_is_reproducible_per_input(data):
    net, x, y = data
    pgd = PGD(norm="linf", steps=20, loss="margin")
    first = binarization_test(net, x, y, [pgd], EPS)
    est = first.estimate
    assert est.n >= 4, first.to_dict()  # enough tasks were valid to say something
    assert est.k == est.n, first.to_dict()  # the gradient attack solves every one of them
    again = binarization_test(net, x[4:8], y[4:8], [pgd], EPS, ids=torch.arange(4, 8))
    assert again.valid == first.valid[4:8] and again.passed == first.passed[4:8]
    report = first.to_dict()
    assert report["test"] == "binarization" and report["samples"] == 12 and report["valid"] == est.n
    assert report["rate"] == 1.0 and report["ci"][1] == 1.0 and report["ci"][0] < 1.0
    assert sum(report["dropped"].values()) == 12 - est.n


def test_the_control_has_teeth_bit_depth_without_bpda_fails_with_bpda_passes(data):
    net, x, y = data
    masked = nn.Sequential(BitDepthReduction(bits=3), net).eval()
    binarized = Binarized(masked, find_readout(masked, x[:1]), torch.zeros(8 * 16), torch.zeros(()))
    assert masked_modules(binarized), "BPDA must find the defence inside the binarized model"
    plain = binarization_test(masked, x, y, [PGD(norm="linf", steps=20, loss="margin")], EPS)
    bpda = binarization_test(masked, x, y, [BPDA(PGD(norm="linf", steps=20, loss="margin"))], EPS)
    assert plain.valid == bpda.valid and sum(plain.valid) >= 4, plain.to_dict()
    assert plain.estimate.k == 0, plain.to_dict()  # zero gradients: the attack never moves
    assert bpda.estimate.k == bpda.estimate.n, bpda.to_dict()


def test_bad_input_is_one_clear_error_and_no_input_is_not_applicable(data):
    net, x, y = data
    with pytest.raises(ConfigError, match="12 inputs, 3 labels"):
        binarization_test(net, x, y[:3], None, EPS)
    with pytest.raises(ConfigError, match="eps must be a positive number"):
        binarization_test(net, x, y, None, 0.0)
    empty = binarization_test(net, x[:0], y[:0], None, EPS)
    assert empty.to_dict()["rate"] is None and empty.to_dict()["samples"] == 0
