"""Stopping on SIGTERM as on Ctrl-C: one line that names the command to resume.

Job schedulers (SLURM, Kubernetes, every batch system) end a job with SIGTERM, then SIGKILL after a
grace period. ``sigterm_as_interrupt()`` makes SIGTERM stop lit-defense the way Ctrl-C does:

- outside training (loading, the audit, the claims) SIGTERM raises ``Stopped`` (a
  ``KeyboardInterrupt``) at once: what the audit recorded is already on disk (fsync'ed), so the
  same command resumes it;
- during Lightning's ``fit``, Lightning owns SIGTERM (its signal connector composes our handler
  with its own): it finishes the batch it is on and raises its ``SIGTERMException``; under SLURM
  with ``auto_requeue`` it has already saved and requeued on the warning signal. We add no second
  mechanism: ``last.ckpt`` of the last finished epoch is what a re-run resumes from.

``stopped_by(err)`` says whether an exception is such a stop (SIGTERM, or Ctrl-C, also when
Lightning turned Ctrl-C into ``sys.exit(1)``) and ``Interrupted`` carries it up to the command
line, which prints one line and exits with 128 + the signal's number (143 for SIGTERM, 130 for
Ctrl-C), as a shell reports a process ended by that signal.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from lit_defense.errors import LitDefenseError

SIGTERM = "SIGTERM"
CTRL_C = "Ctrl-C"
EXIT_CODES = {SIGTERM: 128 + int(signal.SIGTERM), CTRL_C: 128 + int(signal.SIGINT)}


class Stopped(KeyboardInterrupt):
    """SIGTERM received outside Lightning's loops (handled wherever Ctrl-C is)."""

    signal_name = SIGTERM


class Interrupted(LitDefenseError):
    """A command stopped by SIGTERM or Ctrl-C; ``resume`` says how to go on, ``folder`` where it was writing."""

    def __init__(self, how: str, what: str, resume: str, folder: str | None = None) -> None:
        self.how, self.what, self.resume, self.folder = how, what, resume, folder
        super().__init__(f"{what} stopped by {how}; {resume}")

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process ended by it."""
        return EXIT_CODES.get(self.how, 1)


def stopped_by(err: BaseException | None) -> str | None:
    """``SIGTERM``, ``Ctrl-C`` or None: whether ``err`` (or what it was raised from) is a stop."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, Interrupted):
            return err.how
        if isinstance(err, (Stopped, SIGTERMException)):
            return SIGTERM
        if isinstance(err, KeyboardInterrupt):
            return CTRL_C
        err = err.__cause__ or err.__context__  # Lightning's Ctrl-C: sys.exit(1) inside `except KeyboardInterrupt`
    return None


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if signal.getsignal(signal.SIGTERM) is not _on_sigterm:
        # called from inside Lightning's handler (it composes the one it found): its loops stop at
        # the end of the batch with SIGTERMException
        return
    raise Stopped()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM stops it as Ctrl-C does; restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["CTRL_C", "EXIT_CODES", "SIGTERM", "Interrupted", "Stopped", "sigterm_as_interrupt", "stopped_by"]
