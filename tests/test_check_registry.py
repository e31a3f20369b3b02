"""One registry of checks: every check is one registered function named after the check it returns."""

from __future__ import annotations

import inspect

import pytest
import torch

import lit_defense.diagnostics as diagnostics
from lit_defense.diagnostics import CHECKS, MaskingThresholds, conclude, register_check, verdict
from lit_defense.diagnostics.registry import CheckSpec
from lit_defense.results import Check


def test_every_check_function_is_registered_under_the_name_it_returns():
    functions = {name: f for name, f in vars(diagnostics).items()
                 if name.startswith("check_") and inspect.isfunction(f)}
    assert {f"check_{name}" for name in CHECKS} == set(functions)
    fields = set(vars(MaskingThresholds()))
    for name, spec in CHECKS.items():
        assert spec.function is functions[f"check_{name}"]
        assert spec.kind in ("mechanism", "signature", "outcome", "advisory")
        assert spec.threshold is None or spec.threshold in fields


def test_a_check_reports_its_registered_kind_and_name():
    n = 400
    robust = torch.zeros(n, dtype=torch.bool)
    robust[:200] = True
    cases = {
        "one_step_beats_iterative": lambda: diagnostics.check_one_step_beats_iterative({0.1: robust}, {0.1: robust}),
        "adaptive_beats_naive": lambda: diagnostics.check_adaptive_beats_naive({0.1: robust}, {"m": {0.1: robust}}),
        "not_monotone_in_eps": lambda: diagnostics.check_not_monotone_in_eps({"a": {0.1: robust}}, robust),
        "unbounded_attack_fails": lambda: diagnostics.check_unbounded_attack_fails("pgd", 1.0, robust),
        "incomplete_optimisation": lambda: diagnostics.check_incomplete_optimisation("pgd", 10, 20, 0.1, robust, robust),
        "silent_success": lambda: diagnostics.check_silent_success("pgd", robust, robust),
        "softmax_saturation": lambda: diagnostics.check_softmax_saturation(torch.randn(n, 10)),
        "attack_inadequate": lambda: diagnostics.check_attack_inadequate({"valid": 20, "passed": 20, "eps": 0.1}),
    }
    for name, run in cases.items():
        check = run()
        assert check.name == name and check.kind == CHECKS[name].kind
        assert check.advisory == (CHECKS[name].kind == "advisory")


def test_one_sentence_for_an_undecided_check():
    """The inconclusive sentence is written once, with the registered threshold and the option to re-run."""
    check = diagnostics.check_unbounded_attack_fails("pgd", 1.0, torch.tensor([True] * 15 + [False]))
    assert check.state == "inconclusive"
    assert check.summary.endswith("which 16 inputs cannot tell from the 95% threshold.")
    assert check.evidence["samples_option"] == "--check_samples"
    v = verdict([check])
    assert v.state == "inconclusive" and not v.suspected and "--check_samples=" in v.explain()


def test_a_check_from_outside_the_package_is_one_function_and_one_decorator():
    @register_check("toy_logits_are_constant", "mechanism", "zero_gradient_fraction")
    def check_toy_logits_are_constant(logits: torch.Tensor) -> Check:
        constant = bool((logits == logits[:1]).all())
        return conclude("toy_logits_are_constant", "fail" if constant else "pass", float(constant), {},
                        fail="Every input gets the same logits.", ok="The logits depend on the input.")

    try:
        assert isinstance(CHECKS["toy_logits_are_constant"], CheckSpec)
        failed = check_toy_logits_are_constant(torch.ones(4, 3))
        assert failed.state == "fail" and failed.kind == "mechanism"
        assert verdict([failed]).triggered == ["toy_logits_are_constant"]
        assert check_toy_logits_are_constant(torch.randn(4, 3)).passed
        with pytest.raises(ValueError, match="already registered"):
            register_check("toy_logits_are_constant", "mechanism")(check_toy_logits_are_constant)
    finally:
        CHECKS.pop("toy_logits_are_constant", None)
    with pytest.raises(ValueError, match="must be the function check_misnamed"):
        register_check("misnamed", "mechanism")(check_toy_logits_are_constant)
    with pytest.raises(ValueError, match="not a field of MaskingThresholds"):
        register_check("x", "mechanism", "no_such_threshold")


def test_old_names_still_work_for_one_release():
    with pytest.warns(DeprecationWarning, match="check_gradient_mismatch"):
        assert diagnostics.check_gradient_vs_finite_differences is diagnostics.check_gradient_mismatch


def test_stored_checks_round_trip():
    check = diagnostics.check_silent_success("pgd", torch.ones(8, dtype=torch.bool), torch.ones(8, dtype=torch.bool))
    data = check.to_dict()
    assert data["advisory"] is True and data["kind"] == "advisory"
    assert Check.from_dict(data) == check
    old = {**data, "kind": "mechanism"}  # a report written when advisory was its own field
    assert Check.from_dict(old).kind == "advisory"


def test_the_docs_table_lists_every_registered_check_with_its_kind():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "audit.md").read_text()
    table = dict(re.findall(r"^\| `([a-z_]+)` \| ([a-z]+) \|", text, flags=re.M))
    assert table == {name: spec.kind for name, spec in CHECKS.items()}
