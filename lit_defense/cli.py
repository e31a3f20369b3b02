"""``lit-defense``: the LightningCLI of the project.

    lit-defense fit  --config configs/fashion_mnist/teacher.yaml
    lit-defense test --config configs/fashion_mnist/teacher.yaml --ckpt_path runs/.../last.ckpt
    lit-defense fit  --config configs/fashion_mnist/teacher.yaml --print_config
    lit-defense audit --checkpoints runs/.../last.ckpt other.ckpt --output_dir runs/audit/mine

Models and DataModules are chosen with ``class_path``/``init_args`` (subclass mode), so a user's
own ``LightningModule`` or ``LightningDataModule`` plugs in from YAML. The DataModule's
``num_classes``, ``in_chans``, ``image_size``, ``mean`` and ``std`` are linked into the model.

Bad input (unknown names, impossible values, missing data or checkpoints) ends with one line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import os
import pickle
import re
import shlex
import sys
import traceback
import warnings
from argparse import ArgumentError
from pathlib import Path
from typing import Any

from lit_defense.errors import LitDefenseError
from lit_defense.interrupt import EXIT_CODES, Interrupted, sigterm_as_interrupt, stopped_by
from lit_defense.lightning_cli import LitDefenseCLI

_BOILERPLATE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Problem with given class_path",
    "Given value",
    "Expected a <class 'NoneType'>",
)


def _condense_parse_error(message: str) -> str:
    """Jsonargparse's nested error -> ``key.path: what is wrong``."""
    keys: list[str] = []
    lines = message.splitlines()
    for i, line in enumerate(lines):
        text = line.strip()
        match = re.match(r'Parser key "([^"]+)":?\s*(.*)', text)
        if match:
            keys.append(match.group(1))
            text = match.group(2)
        text = text.lstrip("- ").strip()
        if not text or text.startswith(_BOILERPLATE):
            continue
        if "Got value" not in text:
            given = next((x.strip() for x in lines[i + 1:] if x.strip().startswith("Given value:")), None)
            if given and "Namespace(" not in given:
                text = f"{text.rstrip('.')}; {given}"
        return f"{'.'.join(keys)}: {text}" if keys else text
    return message.strip().splitlines()[0] if message.strip() else "invalid arguments"


def _unknown_short_name(message: str) -> str:
    """Jsonargparse's "Expected a dot import path string: Nope" said as what it means for a short name."""
    match = re.search(r"Expected a dot import path string: ([A-Za-z_]\w*)$", message)
    if not match:
        return message
    from lit_defense.attacks import list_attacks

    where = message[:message.index("Expected")].rstrip(": ")
    return (f"{where}: no class is named {match.group(1)!r}; a short class_path names a registered attack "
            f"({', '.join(list_attacks())}); anything else takes its full dotted path")


def _find_own_error(err: BaseException) -> BaseException | None:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, LitDefenseError):
            return err
        err = err.__cause__ or err.__context__
    return None


def _one_line(err: BaseException) -> str:
    own = _find_own_error(err)
    if own is not None:
        return str(own)
    if isinstance(err, pickle.UnpicklingError):
        detail = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line), "")
        return (
            "refused to load the checkpoint: it holds Python objects beyond tensors and plain "
            f"containers, which could execute code (loaded with weights_only=True). {detail}"
        ).strip()
    if isinstance(err, ArgumentError):
        return _unknown_short_name(_condense_parse_error(str(err))) + " (see `lit-defense <subcommand> --help`)"
    frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    where = f" (raised at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(err).__name__}: {err}{where}"


def audit_main(args: list[str], from_command_line: bool = False) -> int:
    """``lit-defense audit``: parse, then run in one process or in every process of the trainer's strategy."""
    from lit_defense.audit import launch, run_audit
    from lit_defense.audit.command import read_audit_config

    call = read_audit_config(args)

    def audit(device: Any) -> int:
        run_audit(call.models, call.data, call.options, device=device, log=lambda line: print(line, flush=True))
        return 0

    if call.options.device != "auto":
        return audit(call.options.device)
    return launch(call.trainer, audit, from_command_line)


def _config_files(argv: list[str]) -> list[str]:
    files = []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def _yaml_problem(argv: list[str]) -> str | None:
    """``FILE: YAML syntax error at line L, column C: problem`` for the first broken --config."""
    import yaml

    for name in _config_files(argv):
        try:
            yaml.safe_load(Path(name).read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            context = getattr(err, "context", None)
            return (f"config file {name}: YAML syntax error{where}: {problem}"
                    + (f" ({context})" if context else "") + ". Fix the YAML there.")
        except OSError:
            continue
    return None


SUBCOMMANDS = {
    "fit": "train a model from a recipe: --config configs/<dataset>/<recipe>.yaml",
    "validate": "evaluate a checkpoint on the validation split (--ckpt_path)",
    "test": "evaluate a checkpoint on the test split (--ckpt_path)",
    "predict": "predictions of a checkpoint (--ckpt_path)",
    "audit": "attack models with attacks that see through gradient masking; write a report",
    "run": "train the six models of the story and audit them (what `make run` does)",
}


def top_level_help() -> str:
    """``lit-defense --help``: every subcommand with one line (each has its own ``--help``)."""
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: lit-defense <subcommand> [options]", "",
             "Lightning training templates for defensive distillation and gradient-masked models, and",
             "an audit that finds out whether their robustness is real.", "",
             "subcommands (`lit-defense <subcommand> --help` for each one's options):"]
    lines += [f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items()]
    return "\n".join(lines)


def _with_option(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with ``flag value`` added unless it already sets ``flag``."""
    if any(a == flag or a.startswith(flag + "=") for a in argv):
        return argv
    return [*argv, flag, value]


def _stopped_line(argv: list[str], err: BaseException, how: str) -> str:
    """One line for a command stopped by SIGTERM or Ctrl-C: what stopped, and the command that resumes it."""
    folder = err.folder if isinstance(err, Interrupted) else None
    what = err.what if isinstance(err, Interrupted) else (argv[0] if argv else "lit-defense")
    if argv[:1] == ["audit"] and folder:
        again = _with_option(argv, "--output_dir", folder)
        kept = "finished batches are not attacked again"
    elif argv[:1] == ["run"] and folder:
        again = _with_option(argv, "--run_dir", folder)
        kept = "finished epochs and audited batches are kept"
    elif argv[:1] == ["fit"]:
        again = _with_option(argv, "--ckpt_path", "last")
        kept = "it goes on from last.ckpt, the last finished epoch"
    else:
        return f"{what} stopped by {how}; nothing to resume."
    return f"{what} stopped by {how}; `{shlex.join(['lit-defense', *again])}` resumes it ({kept})."


def main(args: list[str] | None = None) -> int:
    """Entry point of ``lit-defense``. Returns 0, or exits with 2 and one line on bad input.

    SIGTERM (a scheduler's end of a job) and Ctrl-C end it with one line that names the command
    resuming it, and exit code 143 or 130 (``lit_defense.interrupt``).
    """
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] in (["-h"], ["--help"]):
        print(top_level_help())
        return 0
    if not argv:
        print(top_level_help(), file=sys.stderr)
        raise SystemExit(2)
    try:
        with sigterm_as_interrupt():
            if argv and argv[0] == "audit":
                return audit_main(argv[1:], from_command_line=args is None)
            if argv and argv[0] == "run":
                from lit_defense.pipeline import main as run_main

                return run_main(argv[1:])
            LitDefenseCLI(args=args)
    except BaseException as err:  # SIGTERM, Ctrl-C (also as Lightning's sys.exit(1)) and bad input
        how = stopped_by(err)
        if how is not None:
            print(f"lit-defense: {_stopped_line(argv, err, how)}", file=sys.stderr, flush=True)
            _exit(EXIT_CODES[how], from_command_line=args is None)  # 128 + the signal, as a shell reports it
        if not isinstance(err, (LitDefenseError, ArgumentError, ValueError, FileNotFoundError,
                                pickle.UnpicklingError)):
            raise
        message = _yaml_problem(argv) if "Problems parsing config" in str(err) else None
        print(f"lit-defense: error: {message or _one_line(err)}", file=sys.stderr, flush=True)
        _exit(2, from_command_line=args is None)
    return 0


def _exit(code: int, from_command_line: bool) -> None:
    """End with ``code`` after a stop or an error (everything worth keeping is written by then).

    From the command line the process ends at once (``os._exit``, streams flushed): a worker
    thread of torch or of a process group left mid-call by the interruption must not abort the
    process at exit ("terminate called without an active exception", exit 134 instead of ours).
    Called from Python (tests, notebooks): ``SystemExit``.
    """
    if from_command_line:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code) from None


__all__ = ["LitDefenseCLI", "main"]

if __name__ == "__main__":
    main()
