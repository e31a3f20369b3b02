"""``lit-defense run``: the whole distillation-vs-masking story, end to end (what ``make run`` does).

Trains, on the shared DataModule (Fashion-MNIST by default), each with ``AdversarialEvaluation``
every epoch:

1. ``teacher``: the undefended model, T=1;
2. ``distillation_teacher``: the same network at T=100;
3. ``distilled``: the student on its soft labels at T=100, deployed at T=1;
4. ``masked_bit_depth``: bit-depth reduction in front of the network (non-differentiable);
5. ``masked_random_resize_pad``: random resizing and padding (randomized);
6. ``adv_train``: PGD adversarial training, the honest baseline;
7. ``robust_distilled``: a half-width student distilled from ``adv_train`` by RSLAD (robust
   distillation: its robustness is real, unlike defensive distillation's);

then audits all of them (``lit-defense audit``) and checks the claims of the distillation and
gradient-masking papers against the numbers. Everything lands in one folder,
``runs/<timestamp>-<profile>/``: one TensorBoard run and checkpoints per model, ``report.md``,
``report.json`` and the plots.

Re-running resumes: the newest unfinished run folder of the profile is reused, finished stages are
skipped and an interrupted one continues from its ``last.ckpt``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lit_defense.errors import ConfigError
from lit_defense.interrupt import Interrupted, stopped_by


def recipes() -> Path:
    """The shipped recipes: ``configs/`` of a checkout, installed as ``lit_defense.recipes``."""
    return Path(str(resources.files("lit_defense.recipes")))


CONFIGS = recipes()


@dataclass
class Training:
    """One model the pipeline trains: its name, its recipe, the one whose checkpoint is its teacher.

    (The audit's ``lit_defense.audit.stage.Stage`` is a step of attacks; this is a step of training.)
    """

    name: str
    config: str
    needs: str | None = None  # a stage whose checkpoint is this one's teacher
    extra: list[str] = field(default_factory=list)
    beside: str | None = None  # the report shows this model right after that one (else in training order)


STAGES = [
    Training("teacher", "fashion_mnist/teacher.yaml"),
    Training("distillation_teacher", "fashion_mnist/distillation_teacher.yaml"),
    Training("distilled", "fashion_mnist/distilled.yaml", needs="distillation_teacher"),
    Training("masked_bit_depth", "fashion_mnist/masked_bit_depth.yaml"),
    Training("masked_random_resize_pad", "fashion_mnist/masked_random_resize_pad.yaml"),
    Training("adv_train", "fashion_mnist/adv_train.yaml"),
    Training("robust_distilled", "fashion_mnist/robust_distilled.yaml", needs="adv_train", beside="distilled"),
]


# the models the claims compare on ``claim_samples`` test images under the white-box attacks: the
# teacher and the defensively distilled student (the distillation claims), the robust teacher and its
# robust student (robust distillation keeps robustness: 400 audited inputs cannot resolve 5 points)
ATTACKED_FOR_CLAIMS = ("teacher", "distilled", "adv_train", "robust_distilled")


def report_order(stages: list[Training] = STAGES) -> list[Training]:
    """The stages in the order the audit's report shows them.

    Training order, except that a stage ``beside`` another follows it (the robust student beside
    the defensively distilled one).
    """
    out = [s for s in stages if s.beside is None]
    for stage in (s for s in stages if s.beside is not None):
        out.insert(next(i for i, s in enumerate(out) if s.name == stage.beside) + 1, stage)
    return out


@dataclass
class Profile:
    """A profile of ``lit-defense run``: a YAML file (``configs/run/<name>.yaml``; copy one to make yours).

    Args:
        epochs: Epochs per stage; every stage of the story must be there.
        extra: ``lit-defense fit`` overrides of one stage.
        common: ``lit-defense fit`` overrides of every stage.
        audit: A ``lit-defense audit --config`` file (relative to the profile's folder): the data,
            the eps grid and every other audit option; the run sets the models and the output.
        claim_samples: Test images of the audit's data attacked on the teacher and the student for
            the distillation claims (``measure_for_claims``).
        claim_data: Changes to the audit's DataModule arguments for those claims (e.g. a larger
            synthetic test split).
    """

    epochs: dict[str, int]
    extra: dict[str, list[str]] = field(default_factory=dict)
    common: list[str] = field(default_factory=list)
    audit: str = "../audit/full.yaml"
    claim_samples: int = 2000
    claim_data: dict[str, Any] = field(default_factory=dict)
    name: str = field(default="", metadata={"internal": True})  # the file's stem: names the run folders
    folder: str = field(default="", metadata={"internal": True})  # where ``audit`` is relative to

    def audit_config(self, folder: Path, **changes: Any) -> Any:
        """The profile's audit (``lit_defense.audit.command.AuditCall``) of the stages' last checkpoints in ``folder``."""
        from lit_defense.audit import ModelSpec
        from lit_defense.audit.command import read_audit_config

        path = (Path(self.folder) / self.audit).resolve()
        if not path.is_file():
            raise ConfigError(f"profile {self.name!r}: its audit config {self.audit} ({path}) does not exist.")
        call = read_audit_config(["--config", str(path), "--output_dir", str(folder), "--overwrite", "true"])
        call.models = [ModelSpec(name=s.name, checkpoint=str(_last_ckpt(folder, s.name))) for s in report_order()]
        call.options = call.options.replace(**changes)
        return call


def profiles() -> list[str]:
    """The shipped profiles' names (``configs/run/*.yaml``)."""
    return sorted(p.stem for p in (CONFIGS / "run").glob("*.yaml"))


def load_profile(name_or_path: str | Path) -> Profile:
    """A shipped profile by name (``quick``, ``smoke``, ``full``) or any profile file by path."""
    from jsonargparse import ArgumentParser

    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIGS / "run" / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown profile {str(name_or_path)!r}; choose one of: {', '.join(profiles())}, "
                              "or give a profile file (a copy of configs/run/quick.yaml).")
    elif not path.is_file():
        raise ConfigError(f"profile file {path} does not exist; copy one of lit-defense's "
                          f"({CONFIGS / 'run'}) to make yours.")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(Profile, None, skip={"name", "folder"})
    cfg = parser.parse_path(str(path))
    profile = Profile(**{k: v for k, v in vars(cfg).items() if not k.startswith("__")},
                      name=path.stem, folder=str(path.resolve().parent))
    missing = [s.name for s in STAGES if s.name not in profile.epochs]
    unknown = sorted((set(profile.epochs) | set(profile.extra)) - {s.name for s in STAGES})
    if missing or unknown:
        raise ConfigError(f"profile {path}: `epochs` needs every stage ({', '.join(s.name for s in STAGES)})"
                          + (f"; missing: {missing}" if missing else "") + (f"; unknown: {unknown}" if unknown else ""))
    return profile


def _last_ckpt(run_dir: Path, stage: str) -> Path:
    return run_dir / stage / "version_0" / "checkpoints" / "last.ckpt"


def _find_run_dir(root: Path, profile: str) -> Path | None:
    """The newest run folder of ``profile`` that is not finished."""
    for folder in sorted(root.glob(f"*-{profile}"), reverse=True):
        state = folder / "pipeline.json"
        if state.is_file() and not json.loads(state.read_text()).get("finished"):
            return folder
    return None


def stage_args(stage: Training, profile: Profile, run_dir: Path) -> list[str]:
    """The ``lit-defense fit`` arguments of one stage of a profile, in ``run_dir``."""
    epochs = profile.epochs[stage.name]
    args = [
        "fit", "--config", str(CONFIGS / stage.config),
        f"--trainer.max_epochs={epochs}", f"--model.init_args.lr_scheduler.init_args.T_max={epochs}",
        f"--trainer.logger.init_args.save_dir={run_dir}", f"--trainer.logger.init_args.name={stage.name}",
        "--trainer.logger.init_args.version=0", "--ckpt_path=last",
        *profile.common, *profile.extra.get(stage.name, []), *stage.extra,
    ]
    if stage.needs:
        args.append(f"--model.init_args.teacher_checkpoint={_last_ckpt(run_dir, stage.needs)}")
    return args


def stage_log(run_dir: Path, stage: str) -> Path:
    """Where a training stage's own output goes (Lightning's summaries, warnings, progress bar)."""
    return run_dir / stage / "fit.log"


@contextlib.contextmanager
def _output_into(path: Path | None) -> Iterator[None]:
    """Everything the block prints, Python's and C's, goes to ``path`` (appended); ``None``: the terminal."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(path, "a", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            os.dup2(log.fileno(), 1)  # C and subprocesses, and handlers holding the terminal's streams
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                log.flush()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


@contextlib.contextmanager
def _stops_resumable(folder: Path, doing: list[str]) -> Iterator[None]:
    """SIGTERM or Ctrl-C inside the block -> ``Interrupted``: a re-run with ``--run_dir folder`` resumes.

    ``doing[-1]`` says what was going on (the stage). Training stops at the end of the batch it is
    on (Lightning's own SIGTERM handling) and resumes from ``last.ckpt``, the last finished epoch;
    the audit resumes from its recorded batches.
    """
    try:
        yield
    except BaseException as err:
        how = stopped_by(err)
        if how is None:
            raise
        raise Interrupted(how, doing[-1], f"`lit-defense run --run_dir {folder}` (or the same command) resumes it: "
                          "finished epochs and audited batches are kept", folder=str(folder)) from None


def _stage_done(run_dir: Path, stage: Training, epochs: int) -> bool:
    import torch

    path = _last_ckpt(run_dir, stage.name)
    if not path.is_file():
        return False
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"]) >= epochs - 1
    except Exception:
        return False


def run(profile_name: str | Path = "quick", root: str | Path = "runs", run_dir: str | Path | None = None,
        log: Callable[[str], None] = print, verbose: bool = False) -> Path:
    """Run (or resume) the pipeline; returns the run folder.

    Each training stage shows two lines; what it prints besides (Lightning's model summary and
    notices, warnings, the progress bar) goes to ``<run>/<stage>/fit.log`` unless ``verbose``.
    """
    profile = load_profile(profile_name)
    profile_name = profile.name
    root = Path(root)
    if run_dir is not None:
        folder = Path(run_dir)
    else:
        folder = _find_run_dir(root, profile_name) or root / f"{time.strftime('%Y%m%d-%H%M%S')}-{profile_name}"
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / "pipeline.json"
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {
        "profile": profile_name, "stages": {}, "finished": False}

    def save_state() -> None:
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(state_path)

    save_state()
    log(f"lit-defense run ({profile_name}): {folder}")
    doing = ["lit-defense run"]  # what a stop interrupts (the stage)
    with _stops_resumable(folder, doing):
        _run_stages(profile, folder, state, save_state, log, verbose, doing)
    return folder


def _run_stages(profile: Profile, folder: Path, state: dict[str, Any], save_state: Callable[[], None],
                log: Callable[[str], None], verbose: bool, doing: list[str]) -> None:
    """``run``'s stages in ``folder``: the training stages not yet done, then the audit and the claims."""
    from lit_defense.lightning_cli import LitDefenseCLI

    total = len(STAGES) + 1
    for i, stage in enumerate(STAGES, 1):
        epochs = profile.epochs[stage.name]
        prefix = f"[{i}/{total}] {stage.name}"
        if _stage_done(folder, stage, epochs):
            log(f"{prefix}: done already ({epochs} epochs), skipped")
            continue
        resumed = _last_ckpt(folder, stage.name).is_file()
        where = "" if verbose else f" (output: {stage_log(folder, stage.name)})"
        log(f"{prefix}: {'resuming' if resumed else 'training'} {epochs} epoch(s){where} ...")
        start = time.perf_counter()
        doing.append(f"{prefix}: training")
        with _output_into(None if verbose else stage_log(folder, stage.name)):
            cli = LitDefenseCLI(args=stage_args(stage, profile, folder))
        metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()
                   if k in ("val/acc", "adv/worst/eps=0.1/acc") and v.numel() == 1}
        seconds = time.perf_counter() - start
        state["stages"][stage.name] = {"epochs": epochs, "seconds": round(seconds, 1), **metrics}
        save_state()
        shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
        log(f"{prefix}: done in {seconds:.0f} s ({shown})")
        doing.append("lit-defense run")
    if (folder / "report.json").is_file() and state.get("audited"):
        log(f"[{total}/{total}] audit: done already, skipped")
    else:
        log(f"[{total}/{total}] audit of {len(STAGES)} models ...")
        start = time.perf_counter()
        doing.append(f"[{total}/{total}] audit")
        audit_stages(profile, folder, log)
        measure_for_claims(profile, folder)
        from lit_defense.claims import add_claims_to_report

        claims = add_claims_to_report(folder)
        state["audited"] = True
        state["audit_seconds"] = round(time.perf_counter() - start, 1)
        state["claims"] = {c["claim"]: c["holds"] for c in claims}
        undecided = [c["claim"] for c in claims if c["state"] == "inconclusive"]
        log(f"[{total}/{total}] audit: done in {state['audit_seconds']:.0f} s; claims hold: "
            f"{sum(c['holds'] for c in claims)}/{len(claims)}"
            + (f" (inconclusive: {', '.join(undecided)})" if undecided else ""))
    state["finished"] = True
    save_state()
    log(f"report: {folder / 'report.md'}  (TensorBoard: tensorboard --logdir {folder})")


def audit_stages(profile: Profile, folder: Path, log: Callable[[str], None] = print) -> None:
    """``run_audit`` on every stage's last checkpoint, with the profile's settings.

    The report lands in ``folder``.
    """
    from lit_defense.audit import run_audit

    call = profile.audit_config(folder)
    # an audit stopped half-way resumes from its recorded batches; a finished one (its report
    # written, the claims not yet) starts over
    run_audit(call.models, call.data, call.options.replace(overwrite=(folder / "report.json").is_file()), log=log)


def measure_for_claims(profile: Profile, folder: Path, batch_size: int = 1000) -> dict[str, Any]:
    """What the claims compare, measured where it can be measured well: ``folder/test_split.json``.

    - every stage's per-sample correctness on the whole test split (10,000 Fashion-MNIST images, a
      forward pass each: seconds), not on the few hundred audited images, whose 95% interval is
      about +-5 points;
    - the per-sample robustness of the models of ``ATTACKED_FOR_CLAIMS`` (the teacher, the
      defensively distilled student, the adversarially trained model and the robust student) under
      the audit's white-box attacks (FGSM, PGD-CE, PGD-margin) at eps 0.1 on
      ``profile.claim_samples`` seeded test images: the distillation claims compare the models on
      those same inputs (paired).

    The clean estimates (``{value, ci, k, n}``) also go into ``report.json`` as ``test_split``.
    """
    import torch

    from lit_defense.audit import ModelSpec
    from lit_defense.audit.models import load_model
    from lit_defense.audit.suite import default_attacks
    from lit_defense.data import VisionDataModule, fixed_subset, fixed_subset_indices
    from lit_defense.evaluation import robustness_counts
    from lit_defense.results import eps_key
    from lit_defense.stats import Estimate

    audit = profile.audit_config(folder)
    data = VisionDataModule(**{**dict(audit.data.hparams), **profile.claim_data})
    data.prepare_data()
    data.setup("test")
    eps = 0.1
    roles = default_attacks("linf", audit.options.suite, masked=False, randomized=False)
    attacks = [roles.one_step, roles.naive, roles.margin]
    x, y = fixed_subset(data.test_set, profile.claim_samples, seed=0)
    out: dict[str, Any] = {"split": "test", "data": data.dataset, "n": 0, "models": {},
                           "attacks": {"eps": eps, "n": int(x.shape[0]), "seed": 0,
                                       "index": fixed_subset_indices(len(data.test_set), profile.claim_samples, 0),
                                       "models": {}}}
    for stage in STAGES:
        model = load_model(ModelSpec(name=stage.name, checkpoint=str(_last_ckpt(folder, stage.name))))
        correct: list[bool] = []
        # a randomized model draws from the global generator: seeded here, so its accuracy does not
        # depend on what ran before in the process (the caller's generator is left as it was)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for xb, yb, *_ in data.test_dataloader():
                correct += (model(xb).argmax(1) == yb).tolist()
        out["n"] = len(correct)
        out["models"][stage.name] = {"accuracy": Estimate(sum(correct), len(correct)).to_dict(), "correct": correct}
        if stage.name in ATTACKED_FOR_CLAIMS:
            _, ex = robustness_counts(model, x, y, attacks, [eps], batch_size, cascade=False)
            out["attacks"]["models"][stage.name] = {
                "clean_correct": ex.clean_correct.tolist(),
                "robust": {a.name: (ex.clean_correct & ~ex.fooled[a.name][eps_key(eps)]).tolist()
                           for a in attacks}}
    (folder / "test_split.json").write_text(json.dumps(out) + "\n")
    report_path = folder / "report.json"
    report = json.loads(report_path.read_text())
    report["test_split"] = {"split": out["split"], "n": out["n"],
                            "accuracy": {name: m["accuracy"] for name, m in out["models"].items()},
                            "attacked": {"eps": eps, "n": int(x.shape[0]), "attacks": [a.name for a in attacks]}}
    report_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    """``lit-defense run``: train every stage (resuming), then audit; returns the exit code."""
    parser = argparse.ArgumentParser(prog="lit-defense run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick",
                        help=f"A shipped profile ({', '.join(profiles())}: configs/run/<name>.yaml) or a profile file.")
    parser.add_argument("--root", default="runs", help="Where run folders are created.")
    parser.add_argument("--run_dir", default=None, help="Use (or resume) this folder instead.")
    parser.add_argument("--verbose", action="store_true",
                        help="Show everything training prints (else in <run>/<stage>/fit.log).")
    args = parser.parse_args(argv)
    run(args.profile, args.root, args.run_dir, log=lambda line: print(line, flush=True), verbose=args.verbose)
    return 0


__all__ = ["STAGES", "Profile", "report_order", "audit_stages", "load_profile", "profiles", "main", "run", "measure_for_claims", "stage_args",
           "stage_log"]
