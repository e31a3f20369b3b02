"""The audit's resumable progress: per-sample results of finished work, in its output folder.

``<output_dir>/progress/`` holds

- ``config.json``: what the audit is (models and their checkpoints' digests, data, split, samples,
  eps, norm, seed, attack settings). A re-run with other settings is refused, never mixed in;
- ``rank-<r>.jsonl``: one JSON line per finished batch of one unit (model, stage, attack, eps):
  the ids of the samples and their results. Lines are appended, flushed and fsync'ed as batches
  finish, so a crash (SIGKILL, Ctrl-C, a lost node) loses at most the batch in flight; a torn last
  line is ignored.

A re-run of the same command reads every rank's file (any number of processes), skips the batches
whose samples are all recorded and attacks the rest. Plain JSON: nothing in it can execute code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from lit_defense.errors import ConfigError

FOLDER = "progress"


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file (a checkpoint: the audit of other weights is another audit)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _first_difference(old: Any, new: Any, path: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
    return f"{path or 'settings'}: {json.dumps(old)} there, {json.dumps(new)} now"


class ProgressLog:
    """The per-sample results of finished batches (read from every rank, appended by this one).

    Args:
        output_dir: the audit's output folder.
        rank: this process's rank (it appends to ``rank-<rank>.jsonl``).
    """

    def __init__(self, output_dir: str | Path, rank: int = 0) -> None:
        self.folder = Path(output_dir) / FOLDER
        self.rank = rank
        self._units: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = {}
        self._blobs: dict[tuple[str, str], Any] = {}
        self._file: Any = None
        self.recorded = 0  # batches recorded by this process in this run

    # --------------------------------------------------------------------------- settings
    @staticmethod
    def check_settings(output_dir: str | Path, settings: dict[str, Any]) -> bool:
        """Whether ``output_dir`` holds progress of these settings (resume); refuse other settings."""
        path = Path(output_dir) / FOLDER / "config.json"
        if not path.is_file():
            return False
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old != settings:
            what = _first_difference(old, settings) if isinstance(old, dict) else "its config.json is unreadable"
            raise ConfigError(
                f"{output_dir} holds an unfinished audit with other settings ({what}); re-run with the same "
                "settings to resume it, choose another --output_dir, or pass --overwrite true to discard it."
            )
        return True

    @staticmethod
    def start(output_dir: str | Path, settings: dict[str, Any], fresh: bool) -> None:
        """Rank 0: write the settings (and drop old progress when ``fresh``), atomically."""
        folder = Path(output_dir) / FOLDER
        if fresh and folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "config.json.tmp"
        tmp.write_text(json.dumps(settings, indent=1, sort_keys=True))
        os.replace(tmp, folder / "config.json")

    # ------------------------------------------------------------------------------ reading
    def load(self) -> ProgressLog:
        """Read every rank's file."""
        for path in sorted(self.folder.glob("rank-*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a crash: its batch is attacked again
                if "blob" in rec:
                    self._blobs[(rec["model"], rec["stage"])] = rec["blob"]
                    continue
                self._remember(rec["model"], rec["stage"], rec["unit"], rec["ids"], rec["values"])
        return self

    def get(self, model: str, stage: str, unit: str, ids: list[int]) -> dict[str, list] | None:
        """The recorded values of ``unit`` for exactly these samples, or ``None`` if any is missing."""
        known = self._units.get((model, stage, unit))
        if not known or any(i not in known for i in ids):
            return None
        keys = known[ids[0]].keys() if ids else ()
        return {k: [known[i][k] for i in ids] for k in keys}

    def blob(self, model: str, stage: str) -> Any:
        """A recorded stage-level result (the model checks), or ``None``."""
        return self._blobs.get((model, stage))

    # ------------------------------------------------------------------------------ writing
    def _append(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._file = open(self.folder / f"rank-{self.rank}.jsonl", "a")  # noqa: SIM115 (held open)
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.recorded += 1

    def put(self, model: str, stage: str, unit: str, ids: list[int], values: dict[str, list]) -> None:
        """Record one finished batch of ``unit``."""
        self._append({"model": model, "stage": stage, "unit": unit, "ids": ids, "values": values})
        self._remember(model, stage, unit, ids, values)

    def _remember(self, model: str, stage: str, unit: str, ids: list[int], values: dict[str, list]) -> None:
        """Index one batch's values by sample (what ``get`` reads)."""
        known = self._units.setdefault((model, stage, unit), {})
        for pos, sample in enumerate(ids):
            known[sample] = {k: v[pos] for k, v in values.items()}

    def put_blob(self, model: str, stage: str, blob: Any) -> None:
        """Record a stage-level result."""
        self._append({"model": model, "stage": stage, "blob": blob})
        self._blobs[(model, stage)] = blob

    def view(self, model: str, stage: str) -> StageRecord:
        """The ``lit_defense.evaluation.UnitRecord`` of one model's stage."""
        return StageRecord(self, model, stage)

    def close(self) -> None:
        """Close this process's file."""
        if self._file is not None:
            self._file.close()
            self._file = None


class StageRecord:
    """One model's stage of a ``ProgressLog``, as ``robustness_counts`` reads and writes it."""

    def __init__(self, log: ProgressLog, model: str, stage: str) -> None:
        self.log, self.model, self.stage = log, model, stage

    def get(self, unit: str, ids: list[int]) -> dict[str, list] | None:
        """Recorded values of ``unit`` for these samples, or ``None``."""
        return self.log.get(self.model, self.stage, unit, ids)

    def put(self, unit: str, ids: list[int], values: dict[str, list]) -> None:
        """Record one batch of ``unit``."""
        self.log.put(self.model, self.stage, unit, ids, values)


__all__ = ["ProgressLog", "StageRecord", "file_digest"]
