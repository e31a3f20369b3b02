"""The binarization test (a positive control for the attacks): where it reads features, that it is
reproducible, that the attacks pass it on a plain model, and that it has teeth: gradient attacks
that cannot see through a non-differentiable defence fail it, the same behind BPDA pass it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lit_defense.adequacy import BinarizationSettings, Binarized, binarization_test, find_readout
from lit_defense.attacks import BPDA, PGD, masked_modules
from lit_defense.data import VisionDataModule
from lit_defense.defenses import BitDepthReduction
from lit_defense.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from toy_models import TinyNet, train_tiny_net  # noqa: E402

EPS = 0.1


@pytest.fixture(scope="module")
def data():
    dm = VisionDataModule("synthetic", synthetic_test_size=64, synthetic_train_size=512, val_size=64,
                          synthetic_noise=0.3)
    dm.setup("fit")
    x = dm.train_set.images.float() / 255
    y = dm.train_set.labels
    net = train_tiny_net(x, y, epochs=2)
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
    pgd = [PGD(norm="linf", steps=5, loss="margin")]
    with pytest.raises(ConfigError, match="12 inputs, 3 labels"):
        binarization_test(net, x, y[:3], pgd, EPS)
    with pytest.raises(ConfigError, match="eps must be a positive number"):
        binarization_test(net, x, y, pgd, 0.0)
    with pytest.raises(ConfigError, match="give the attacks to control"):
        binarization_test(net, x, y, [], EPS)
    empty = binarization_test(net, x[:0], y[:0], pgd, EPS)
    assert empty.to_dict()["rate"] is None and empty.to_dict()["samples"] == 0


def _audit(model, x, y, eps, **suite):
    from lit_defense.audit import AttackSuite, audit_model

    budgets = {"steps": 10, "apgd_steps": 10, "apgd_targets": 1, "min_norm_steps": 10, "square_queries": 0,
               "random_samples": 0, "rays_queries": 0, "refine_restarts": 0, "adequacy_samples": 6, **suite}
    return audit_model(model, x, y, [eps], suite=AttackSuite(**budgets), check_samples=8, keep_examples=0)


def test_the_audit_runs_the_control_and_attack_inadequate_decides_the_verdict(data):
    """Bit depth audited by gradient attacks alone: without BPDA they fail the control (and the check
    says so in the verdict); with BPDA, the audit's default for such a model, they pass it."""
    net, x, y = data
    masked = nn.Sequential(BitDepthReduction(bits=3), net).eval()
    with_bpda = _audit(masked, x, y, 0.03)
    stripped_model = nn.Sequential(BitDepthReduction(bits=3), net).eval()
    stripped_model[0].differentiable = True  # no module declared for BPDA: the suite is stripped of it
    stripped = _audit(stripped_model, x, y, 0.03)
    for audit, passes in ((with_bpda, True), (stripped, False)):
        ad = audit.adequacy
        check = next(c for c in audit.gradient_masking.checks if c.name == "attack_inadequate")
        assert ad["test"] == "binarization" and ad["eps"] == 0.03 and ad["samples"] <= 6 and ad["valid"] >= 3, ad
        assert ad["ids"] and all(audit.per_sample.robust_to(None, 0.03)[i] for i in ad["ids"])  # robust inputs only
        assert audit.stages["adequacy"]["inputs"] == ad["samples"]
        if passes:
            assert ad["passed"] == ad["valid"] and check.state == "pass", (ad, check.summary)
        else:
            assert ad["passed"] == 0 and check.state == "fail", (ad, check.summary)
            assert "attack_inadequate" in audit.gradient_masking.triggered
        assert audit.to_dict()["adequacy"]["rate"] == ad["rate"]
        assert ("adequacy/rate" in audit.metrics()) is True


def test_no_robust_input_makes_the_check_not_applicable_not_a_crash(data):
    net, x, y = data
    audit = _audit(net, x, y, 0.5)  # every input falls at this eps
    check = next(c for c in audit.gradient_masking.checks if c.name == "attack_inadequate")
    assert audit.adequacy["samples"] == 0 and audit.adequacy["rate"] is None
    assert check.state == "pass" and check.summary.startswith("Not applicable") and not check.evidence["applicable"]


def test_the_control_is_recorded_per_input_and_a_resumed_audit_does_not_redo_it(data, tmp_path, monkeypatch):
    from lit_defense.audit import AttackSuite, AuditRuntime, audit_model
    from lit_defense.audit.progress import ProgressLog

    net, x, y = data
    masked = nn.Sequential(BitDepthReduction(bits=3), net).eval()
    suite = AttackSuite(steps=10, apgd_steps=0, min_norm_steps=0, square_queries=0, random_samples=0,
                        rays_queries=0, refine_restarts=0, adequacy_samples=4)
    log = ProgressLog(tmp_path, 0).load()
    first = audit_model(masked, x, y, [0.03], suite=suite, check_samples=8, keep_examples=0,
                        runtime=AuditRuntime(log=log))
    log.close()
    assert first.adequacy["samples"] == 4
    assert log.get("model", "adequacy", "binarization", first.adequacy["ids"]) is not None

    def refit(*_args, **_kwargs):
        raise AssertionError("a recorded input was tested again")

    monkeypatch.setattr("lit_defense.adequacy.fit_readout", refit)
    again = audit_model(masked, x, y, [0.03], suite=suite, check_samples=8, keep_examples=0,
                        runtime=AuditRuntime(log=ProgressLog(tmp_path, 0).load()))
    assert {k: again.adequacy[k] for k in ("valid", "passed", "ids")} == \
        {k: first.adequacy[k] for k in ("valid", "passed", "ids")}


def test_a_randomized_model_is_judged_in_expectation_and_eot_has_teeth():
    """Gaussian noise (sigma 0.1) in front of the CNN: the readout is fitted on features averaged
    over draws and every task is judged by the mean score of fresh draws. PGD behind EOT solves the
    valid tasks; PGD on single-draw gradients misses a significant share of them, and the check
    attack_inadequate says so (measured on the native, AVX2 and plain kernels alike: 13 of 21 valid
    tasks without EOT, 24 of 24 with it)."""
    from lit_defense.attacks import EOT
    from lit_defense.defenses import GaussianNoise
    from lit_defense.diagnostics import MaskingThresholds
    from lit_defense.diagnostics.checklist import check_attack_inadequate

    dm = VisionDataModule("synthetic", synthetic_test_size=64, synthetic_train_size=512, val_size=64,
                          synthetic_noise=0.3)
    dm.setup("fit")
    x, y = dm.train_set.images.float() / 255, dm.train_set.labels
    net = train_tiny_net(x, y, epochs=2).eval().requires_grad_(False)
    noisy = nn.Sequential(GaussianNoise(sigma=0.1), net).eval()
    with torch.no_grad():
        assert not torch.equal(noisy(x[:2]), noisy(x[:2]))
    x, y = x[:24], y[:24]
    results = {}
    for name, attack in (("plain", PGD(norm="linf", steps=20, loss="margin")),
                         ("eot", EOT(PGD(norm="linf", steps=20, loss="margin"), samples=16))):
        torch.manual_seed(0)  # the defence draws from torch's generator
        results[name] = binarization_test(noisy, x, y, [attack], EPS, settings=BinarizationSettings(inner_points=200, draws=8))
    eot, plain = results["eot"].estimate, results["plain"].estimate
    assert eot.n >= 12 and eot.k == eot.n, results["eot"].to_dict()
    assert plain.n >= 12, results["plain"].to_dict()
    check = check_attack_inadequate(results["plain"].to_dict(), MaskingThresholds())
    assert check.state == "fail", (check.summary, results["plain"].to_dict())
