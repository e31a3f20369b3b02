"""Every audit option is declared once (``AuditOptions``): the CLI, ``run_audit``, the resume record
and the pipeline's profiles all read it, so none of them can drift from the others."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import yaml
from conftest import CONFIGS

from lit_defense.audit import AttackSuite, AuditOptions, ModelSpec, run_audit
from lit_defense.audit.command import AUDIT_INPUTS, audit_parser, read_audit_config
from lit_defense.cli import main
from lit_defense.errors import ConfigError
from lit_defense.pipeline import STAGES, load_profile, profiles


def test_the_cli_options_are_the_config_fields_and_nothing_else(capsys):
    with pytest.raises(SystemExit) as info:
        main(["audit", "--print_config"])
    assert info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert set(printed) == set(AuditOptions.names()) | (set(AUDIT_INPUTS) - {"config"})
    # nested options too: every field of the suite and the thresholds, with the dataclasses' defaults
    defaults = AuditOptions()
    for name in ("suite", "thresholds"):
        assert printed[name] == dataclasses.asdict(getattr(defaults, name)), name
    for field in dataclasses.fields(AuditOptions):
        if field.name not in ("suite", "thresholds"):
            value = getattr(defaults, field.name)
            assert printed[field.name] == value, (field.name, printed[field.name], value)
    # run_audit names no option itself: they are AuditOptions' (given whole or by name)
    params = inspect.signature(run_audit).parameters
    assert set(params) == {"models", "data", "options", "log", "bars", "changes"}


def test_print_config_gives_a_file_that_reads_back_to_the_same_options(tmp_path, capsys):
    args = ["--eps=[0.1,0.3]", "--suite.steps=7", "--num_samples=64", "--checkpoints", "a.ckpt"]
    with pytest.raises(SystemExit):
        main(["audit", *args, "--print_config"])
    path = tmp_path / "audit.yaml"
    path.write_text(capsys.readouterr().out)
    again = read_audit_config(["--config", str(path)])
    direct = read_audit_config(args)
    assert again.options == direct.options
    assert again.options.eps == [0.1, 0.3] and again.options.suite.steps == 7
    assert [m.checkpoint for m in again.models] == ["a.ckpt"]


def test_the_resume_record_holds_the_identity_options_only():
    opts = AuditOptions(eps=[0.2, 0.1], suite=AttackSuite(steps=3))
    identity = opts.identity()
    marked = {f.name for f in dataclasses.fields(AuditOptions) if f.metadata.get("identity")}
    assert set(identity) == marked
    assert identity["eps"] == [0.1, 0.2] and identity["suite"]["steps"] == 3
    # how the results are written or batched does not change what is measured
    assert opts.replace(batch_size=7, output_dir="x", tensorboard=False).identity() == identity
    assert opts.replace(seed=1).identity() != identity


def test_unknown_options_and_a_positional_eps_are_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown audit option\(s\) \['steps'\].*suite"):
        AuditOptions().replace(steps=3)
    with pytest.raises(ConfigError, match="AuditOptions, got list.*eps=\\[0.1\\]"):
        run_audit([ModelSpec(checkpoint="x.ckpt")], None, [0.1])


def test_every_profile_is_a_file_whose_audit_is_an_audit_config(tmp_path):
    assert set(profiles()) >= {"quick", "smoke", "full"}
    for name in profiles():
        profile = load_profile(name)
        assert set(profile.epochs) == {s.name for s in STAGES}, name
        call = profile.audit_config(tmp_path)
        # every stage once; the robust student beside the defensively distilled one
        names = [m.name for m in call.models]
        assert sorted(names) == sorted(s.name for s in STAGES)
        assert names.index("robust_distilled") == names.index("distilled") + 1
        assert call.options.output_dir == str(tmp_path) and call.options.overwrite
        # the same file audits a user's models as they are
        alone = read_audit_config(["--config", str((CONFIGS / "run" / profile.audit).resolve())])
        assert dataclasses.replace(alone.options, output_dir=str(tmp_path), overwrite=True) == call.options
    quick = load_profile("quick").audit_config(tmp_path).options
    assert quick.num_samples == 400 and quick.suite.apgd_targets == 4 and quick.eps == [0.05, 0.1, 0.2]


def test_a_copied_profile_runs_by_path_and_a_broken_one_is_one_line(tmp_path, capsys):
    text = (CONFIGS / "run" / "smoke.yaml").read_text()
    mine = tmp_path / "mine.yaml"
    mine.write_text(text.replace("../audit/smoke.yaml", str(CONFIGS / "audit" / "smoke.yaml")))
    profile = load_profile(mine)
    assert profile.name == "mine" and profile.epochs == load_profile("smoke").epochs
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("  teacher: 3\n", "  teachr: 3\n"))
    with pytest.raises(ConfigError, match=r"missing: \['teacher'\]; unknown: \['teachr'\]"):
        load_profile(bad)
    for profile_arg, needle in ((str(tmp_path / "nope.yaml"), "does not exist"), ("nope", "unknown profile 'nope'")):
        with pytest.raises(SystemExit) as info:
            main(["run", "--profile", profile_arg, "--root", str(tmp_path)])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


def test_the_parser_reads_an_option_where_the_dataclass_declares_it():
    """A new field of AuditOptions reaches the CLI with no other edit (its help from the docstring)."""
    help_text = audit_parser().format_help()
    for field in dataclasses.fields(AuditOptions):
        assert f"--{field.name}" in help_text, field.name
    assert "Inputs of the checklist's own attacks" in help_text
