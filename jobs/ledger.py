"""The ledger: one JSON file per sweep recording every job launched, its state and exit status.

Files in each job's output directory are the truth about completion; the ledger mirrors them
and adds what only the launcher knows (backend, attempts, log file, exit status).
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jobs.atomic import write_json
from jobs.errors import UserError
from jobs.grid import Job
from quantlib.outputs import now

LEDGER = "ledger.json"


class Ledger:
    def __init__(self, sweep_dir: str | os.PathLike):
        self.sweep_dir = Path(sweep_dir)
        self.path = self.sweep_dir / LEDGER
        self.data: dict[str, Any] = self._load()

    def _load(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return {"jobs": {}}
        except (OSError, ValueError) as exc:
            raise UserError(f"{self.path}: unreadable ledger ({exc}); move it aside to start "
                            "a fresh record") from None
        if not isinstance(data, dict) or not isinstance(data.get("jobs"), dict):
            raise UserError(f"{self.path}: jobs: not a quantsweep ledger")
        return data

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        return self.data["jobs"]

    def save(self) -> None:
        write_json(self.path, self.data)

    @contextmanager
    def locked(self):
        """Hold the sweep's launch lock; a second launch of the same sweep is refused."""
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.sweep_dir / ".launch.lock", "w")
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"{self.sweep_dir}: another launch of this sweep is running; "
                                "wait for it or stop it first") from None
            self.data = self._load()
            yield self
        finally:
            fh.close()

    def launcher_active(self) -> bool:
        """Is a launch of this sweep running now (holding its lock)?"""
        try:
            fh = open(self.sweep_dir / ".launch.lock")
        except FileNotFoundError:
            return False
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
            return False

    def register(self, spec_name: str, spec_path: str, jobs: list[Job]) -> None:
        self.data["sweep"] = spec_name
        self.data["spec"] = str(Path(spec_path).absolute())
        try:  # the spec as launched, for the report (the file may change later)
            self.data["spec_text"] = Path(spec_path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            pass
        for job in jobs:
            entry = self.jobs.setdefault(job.id, {"state": "missing", "attempts": 0})
            entry.update(index=job.index, config=job.config, output_dir=str(job.output_dir))
            if job.stage:
                entry.update(stage=job.stage, after=job.after)
        self.save()

    def update(self, job_id: str, **fields: Any) -> None:
        self.jobs[job_id].update(fields, updated=now())
        self.save()
