"""``lit-defense audit``: every model on a fixed, seeded subset, under any Lightning strategy, resumable.

``run_audit`` loads the data and the models, audits each (``plan.audit_model``) and writes the
report on rank 0. Started by ``launch`` under a Lightning strategy (the training recipes' trainer
options: accelerator, devices, strategy, num_nodes), each process attacks its shard of every stage;
under SLURM or torchrun the processes are already there and Lightning reads the environment.
With an ``output_dir`` the audit records its progress there and a re-run of the same command
continues where a crash or Ctrl-C stopped it (``progress``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from lit_defense.attacks import PGD
from lit_defense.audit.context import AuditRuntime
from lit_defense.audit.display import AuditProgress
from lit_defense.audit.models import ModelSpec, check_model_outputs, load_model
from lit_defense.audit.options import AuditOptions
from lit_defense.audit.plan import audit_model
from lit_defense.audit.progress import ProgressLog, file_digest
from lit_defense.audit.sharding import Collective
from lit_defense.errors import ConfigError
from lit_defense.evaluation import check_attacks
from lit_defense.interrupt import CTRL_C, Interrupted, stopped_by
from lit_defense.lightning_private import relaunches_command_line
from lit_defense.results import ModelAudit, eps_key, num

T = TypeVar("T")


@dataclass
class AuditTrainer:
    """The trainer options the audit reads: the training recipes' ``trainer:`` presets apply as they are.

    Args:
        accelerator: ``cpu``, ``gpu``/``cuda``, ``mps`` or ``auto``.
        devices: processes per node: a count, a list of device ids, ``-1`` or ``"auto"`` for all.
        strategy: ``auto``, ``ddp``, ``ddp_spawn``, ... Sharded-model strategies (FSDP, DeepSpeed)
            shard the audit's samples the way DDP does: every process holds the whole model.
        num_nodes: machines (SLURM or torchrun set the ranks; see README, "Auditing at scale").
        precision: accepted so that the presets apply; attacks compute in float32 whatever it says.
        sync_batchnorm: accepted for the presets; the audited models are in eval mode.
        use_distributed_sampler: accepted for the presets; the audit shards its own subset.
        benchmark: ``torch.backends.cudnn.benchmark`` (None: leave it).
    """

    accelerator: str = "auto"
    devices: int | str | list[int] = 1
    strategy: str | dict[str, Any] = "auto"
    num_nodes: int = 1
    precision: str | int | None = None
    sync_batchnorm: bool = False
    use_distributed_sampler: bool = True
    benchmark: bool | None = None


def _fabric_strategy(strategy: str | dict[str, Any]) -> str:
    """The Fabric strategy that shards samples as ``strategy`` would (``ddp`` for sharded models)."""
    name = strategy.get("class_path", "") if isinstance(strategy, dict) else str(strategy)
    low = name.rsplit(".", 1)[-1].lower()
    return "ddp" if "fsdp" in low or "deepspeed" in low or low == "ddpstrategy" else name


def launch(trainer: AuditTrainer, main: Callable[[torch.device], T], from_command_line: bool) -> T:
    """Run ``main(device)`` in every process of ``trainer``'s strategy (Lightning Fabric launches them).

    A multi-process run started from Python (not the command line, not torchrun/SLURM) is refused:
    Lightning starts the other processes by running the command line again.
    """
    from lightning.fabric import Fabric

    if trainer.benchmark is not None:
        torch.backends.cudnn.benchmark = trainer.benchmark
    try:
        fabric = Fabric(accelerator=trainer.accelerator, devices=trainer.devices,
                        strategy=_fabric_strategy(trainer.strategy), num_nodes=trainer.num_nodes, precision="32-true")
    except (ValueError, RuntimeError, TypeError) as err:
        raise ConfigError(f"trainer options {dataclasses.asdict(trainer)} cannot run the audit: {err}") from None
    launcher = getattr(fabric.strategy, "launcher", None)
    relaunches = launcher is not None and relaunches_command_line(launcher) and fabric.world_size > 1
    if relaunches and not from_command_line and not _already_launched():
        raise ConfigError("a multi-process audit starts from the command line (`lit-defense audit "
                          "--trainer.devices N ...`) or under torchrun/srun; from Python, call run_audit in one process.")
    return fabric.launch(lambda f: main(f.device))


def _already_launched() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def _settings(models: Sequence[ModelSpec], names: Sequence[str], data: Any, options: AuditOptions,
              num_samples: int) -> dict[str, Any]:
    """What the audit is (the models, the data, the options marked identity): a re-run with other settings must not resume it."""
    def model_entry(spec: ModelSpec, name: str) -> dict[str, Any]:
        entry = {"name": name, "checkpoint": spec.checkpoint, "class_path": spec.class_path,
                 "init_args": spec.init_args, "weights": spec.weights,
                 **({"preprocessing": spec.preprocessing, "bounds": spec.bounds}
                    if spec.preprocessing is not None or spec.bounds is not None else {})}
        for key in ("checkpoint", "weights"):
            if entry[key] and Path(entry[key]).is_file():
                entry[f"{key}_sha256"] = file_digest(entry[key])
        return entry

    hparams = getattr(data, "hparams", {})
    return {
        "models": [model_entry(s, n) for s, n in zip(models, names, strict=True)],
        "data": {"class": type(data).__name__, "dataset": str(getattr(data, "dataset", "")),
                 "init": {k: repr(v) for k, v in sorted(dict(hparams).items())}},
        **options.identity(), "num_samples": num_samples,
    }


def _check_request(models: Sequence[ModelSpec], opts: AuditOptions) -> list[str]:
    """The models' names, after the checks that need no data: one clear error for a bad request."""
    if not models:
        raise ConfigError("give at least one model to audit (--checkpoints PATH ... or `models:` in the config).")
    names = [m.display_name() for m in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"model names must be unique (they name report rows and plots), got {names}; set `name:`.")
    if opts.split not in ("test", "val"):
        raise ConfigError(f"split must be 'test' or 'val', got {opts.split!r}.")
    check_attacks([PGD(norm=opts.norm)], opts.eps)
    if opts.num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {opts.num_samples}.")
    return names


def _device(device: str | torch.device) -> torch.device:
    """The device of ``--device`` (``auto``: cuda when there is one)."""
    if isinstance(device, torch.device):
        return device
    return torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                        "cpu" if device == "auto" else device)


def _audited_inputs(data: Any, opts: AuditOptions, dev: torch.device
                    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The fixed, seeded subset of the split (on ``dev``), and which images it holds."""
    from lit_defense.data import fixed_subset, fixed_subset_indices

    split = opts.split
    data.prepare_data()
    data.setup("test" if split == "test" else "validate")
    dataset = getattr(data, "test_set" if split == "test" else "val_set", None)
    if dataset is None:
        loader = data.test_dataloader() if split == "test" else data.val_dataloader()
        dataset = loader.dataset
    x, y = fixed_subset(dataset, opts.num_samples, opts.seed)
    samples = {"index": fixed_subset_indices(len(dataset), opts.num_samples, opts.seed), "label": y.tolist()}
    return x.to(dev), y.to(dev), samples


def _load(spec: ModelSpec, name: str, x: torch.Tensor, y: torch.Tensor, num_classes: int,
          allow_probabilities: bool) -> nn.Module:
    """One model on ``x``'s device, checked on ``(x, y)`` (our own copy: attacks need input gradients only)."""
    model = load_model(spec).to(x.device)
    model.requires_grad_(False)
    check_model_outputs(model, x, num_classes, name, allow_probabilities, y=y)
    return model


def run_audit(
    models: Sequence[ModelSpec],
    data: Any,
    options: AuditOptions | None = None,
    *,
    log: Callable[[str], None] = print,
    bars: bool | None = None,
    **changes: Any,
) -> tuple[list[ModelAudit], dict[str, Path]]:
    """Audit every model on a fixed, seeded subset of ``data``'s ``split`` and write the report.

    ``options`` (``AuditOptions``) says how; options given by name change it, so
    ``run_audit(models, data, eps=[0.1], num_samples=200, suite=AttackSuite(steps=50))`` works
    without building one (an unknown name is refused, with the list of the known ones).
    In every process of a distributed run (``launch``): each attacks its shards, all hold the
    results, rank 0 logs and writes. Progress is recorded in ``output_dir/progress``; the same call
    after a crash resumes, a call with other settings is refused (``overwrite=True`` starts over).
    """
    from lit_defense import __version__
    from lit_defense.report import write_report

    if options is not None and not isinstance(options, AuditOptions):
        raise ConfigError(f"run_audit's third argument is an AuditOptions, got {type(options).__name__}; "
                          "pass options by name, e.g. run_audit(models, data, eps=[0.1], num_samples=200).")
    opts = (options or AuditOptions()).replace(**changes)
    overwrite = opts.overwrite
    collective = Collective()
    main = collective.is_main
    say = log if main else (lambda line: None)
    names = _check_request(models, opts)
    out = Path(opts.output_dir) if opts.output_dir else Path("runs") / "audit" / time.strftime("%Y%m%d-%H%M%S")
    out = Path(collective.broadcast(str(out), "setup"))  # one folder, whatever each process's clock says
    if (out / "report.json").exists() and not overwrite:
        raise ConfigError(f"{out} already holds a report; choose another --output_dir or pass --overwrite true.")
    dev = _device(opts.device)
    x, y, samples = _audited_inputs(data, opts, dev)
    num_classes = int(getattr(data, "num_classes", int(y.max()) + 1))

    loaded = [(spec, name, _load(spec, name, x, y, num_classes, opts.allow_probabilities))  # all before the long part
              for spec, name in zip(models, names, strict=True)]

    settings = _settings(models, names, data, opts, int(x.shape[0]))
    resume = not overwrite and ProgressLog.check_settings(out, settings)  # every process refuses alike
    collective.barrier("setup")
    if main:
        if resume:
            say(f"audit: resuming the audit in {out} (finished batches are not attacked again)")
        else:
            ProgressLog.start(out, settings, fresh=True)
            say(f"audit: progress is recorded in {out / 'progress'}; after a crash, Ctrl-C or SIGTERM, the same command "
                f"with --output_dir {out} resumes it")
    collective.barrier("setup")
    progress_log = ProgressLog(out, collective.rank).load()
    progress = AuditProgress(len(loaded), log=say, enabled=main, bars=bars)
    audits = []
    try:
        for spec, name, model in loaded:
            say(f"audit: {name} ...")
            audit = audit_model(model, x, y, name=name, source=spec.checkpoint or spec.class_path or "",
                                options=opts, runtime=AuditRuntime(collective, progress_log, progress))
            progress.model_done()
            audits.append(audit)
            say(_summary_line(audit))
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM under lit_defense.interrupt.sigterm_as_interrupt
        raise Interrupted(stopped_by(err) or CTRL_C, "audit", f"the same command with --output_dir {out} resumes it "
                          "(finished batches are not attacked again)", folder=str(out)) from None
    finally:
        progress_log.close()
    paths: dict[str, Path] = {}
    if main:
        meta = {"version": __version__, "data": getattr(data, "dataset", type(data).__name__), "split": opts.split,
                "num_samples": int(x.shape[0]), "norm": opts.norm, "eps": sorted(float(e) for e in opts.eps),
                "seed": opts.seed,
                "device": str(dev), "processes": collective.world_size,
                "class_names": [str(c) for c in getattr(data, "class_names", ())]}
        paths = write_report(audits, out, meta, tensorboard=opts.tensorboard, samples=samples)
        say(f"audit: report written to {paths['markdown']} and {paths['json']}")
    collective.barrier("report")
    return audits, paths


def _summary_line(audit: ModelAudit) -> str:
    """One line per audited model: its numbers, its verdict and the time it took."""
    summary = ", ".join(f"{k} {v:.3f}" for k, v in audit_metrics_summary(audit).items() if v is not None)
    v = audit.gradient_masking
    masking = f"suspected ({', '.join(v.triggered)})" if v.suspected else \
        f"inconclusive ({', '.join(v.inconclusive)})" if v.state == "inconclusive" else "not suspected"
    return f"audit: {audit.name}: {summary}; gradient masking {masking}; {audit.seconds:.0f} s"


def audit_metrics_summary(audit: ModelAudit) -> dict[str, float | None]:
    """Compact numbers for logs: clean, naive and worst-case accuracy at each eps."""
    out: dict[str, float | None] = {"clean": num(audit.clean_accuracy)}
    naive = audit.curve(audit.roles.naive)
    for e in audit.eps:
        out[f"naive@{eps_key(e)}"] = num(naive.get(e))
        out[f"worst@{eps_key(e)}"] = num(audit.worst_case[eps_key(e)])
    return out


__all__ = ["AuditTrainer", "audit_metrics_summary", "launch", "run_audit"]
