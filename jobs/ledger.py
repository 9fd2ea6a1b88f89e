"""The ledger: one JSON file per sweep recording every job launched, its state and exit status.

Files in each job's output directory are the truth about completion; the ledger mirrors them
and adds what only the launcher knows (backend, attempts, log file, exit status).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jobs.atomic import write_json
from jobs.errors import UserError
from jobs.grid import Job
from quantlib.configs import ConfigError, identity, resolve
from quantlib.outputs import is_complete, now

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

    def register(self, spec_name: str, spec_path: str, jobs: list[Job],
                 force: bool = False) -> list[Job]:
        """Record the sweep's jobs; returns them, a job kept where an earlier record of it
        completed (see _adoptable)."""
        self.data["sweep"] = spec_name
        self.data["spec"] = str(Path(spec_path).absolute())
        try:  # the spec as launched, for the report (the file may change later)
            self.data["spec_text"] = Path(spec_path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            pass
        adoptable = self._adoptable(jobs, force)
        out = []
        for job in jobs:
            if job.id not in self.jobs and _identity_key(job.config) in adoptable:
                old_id = adoptable.pop(_identity_key(job.config))
                self.jobs[job.id] = {**self.jobs.pop(old_id), "adopted_from": old_id}
            entry = self.jobs.setdefault(job.id, {"state": "missing", "attempts": 0})
            kept = entry.get("adopted_from") and not force and is_complete(
                entry.get("output_dir", ""))
            if kept:  # a completed job recorded under an earlier id stays where it ran
                job = dataclasses.replace(job, output_dir=Path(entry["output_dir"]))
            entry.update(index=job.index, config=job.config, output_dir=str(job.output_dir))
            if job.stage:
                entry.update(stage=job.stage, after=job.after)
            out.append(job)
        dirs = {j.id: j.output_dir for j in out}
        out = [dataclasses.replace(j, upstream_dir=dirs[j.after])
               if j.after in dirs and j.upstream_dir != dirs[j.after] else j for j in out]
        self.save()
        return out

    def _adoptable(self, jobs: list[Job], force: bool) -> dict[str, str]:
        """Completed entries under an id no current job has (recorded by an earlier version's
        id rule, or under another output directory) whose configuration is a current job's:
        {identity: old id}. They are the same job, so it is not run again."""
        if force:
            return {}
        current = {j.id for j in jobs}
        out: dict[str, str] = {}
        for old_id, entry in self.jobs.items():
            if old_id in current or not is_complete(entry.get("output_dir", "")):
                continue
            config = entry.get("config")
            try:
                key = _identity_key(resolve(config))
            except (ConfigError, KeyError, TypeError, AttributeError):
                continue
            out.setdefault(key, old_id)
        return out

    def update(self, job_id: str, **fields: Any) -> None:
        self.jobs[job_id].update(fields, updated=now())
        self.save()


def _identity_key(config: dict[str, Any]) -> str:
    return json.dumps(identity(config), sort_keys=True, default=list)
