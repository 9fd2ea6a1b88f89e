"""The ledger: one JSON file per sweep recording every job launched, its state and exit status.

Files in each job's output directory are the truth about completion; the ledger mirrors them
and adds what only the launcher knows (backend, attempts, log file, exit status).

Paths inside the sweep directory are stored relative to it (PATH_KEYS), so that a sweep moved
or copied elsewhere is still itself; in memory they are absolute. A path outside the sweep (an
output_dir of an older ledger, say) stays as written.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jobs.atomic import write_json
from jobs.errors import UserError, os_error
from jobs.grid import Job
from quantlib.configs import ConfigError, identity, resolve
from quantlib.outputs import is_complete, now

LEDGER = "ledger.json"
PATH_KEYS = ("output_dir", "log")  # the entries' fields that name files


def entry_path(sweep_dir: str | os.PathLike, value: Any) -> Path:
    """A path as the ledger stores it (relative to the sweep directory, or absolute), as a path
    usable from here."""
    path = Path(str(value or ""))
    return path if path.is_absolute() else Path(os.path.abspath(Path(sweep_dir) / path))


def _stored_path(sweep_dir: Path, value: Any) -> Any:
    """The form a path takes in the file: relative to the sweep directory when inside it."""
    if not isinstance(value, str) or not value or not os.path.isabs(value):
        return value
    rel = os.path.relpath(value, sweep_dir)
    return value if rel == ".." or rel.startswith("../") else rel


class Ledger:
    def __init__(self, sweep_dir: str | os.PathLike):
        self.sweep_dir = Path(os.path.abspath(sweep_dir))
        self.path = self.sweep_dir / LEDGER
        self.data: dict[str, Any] = self._load()
        self.unsaved = False  # a save the disk refused (see update)

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
        for entry in data["jobs"].values():
            if isinstance(entry, dict):
                for key in PATH_KEYS:
                    if isinstance(entry.get(key), str) and entry[key]:
                        entry[key] = str(entry_path(self.sweep_dir, entry[key]))
        return data

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        return self.data["jobs"]

    def save(self) -> None:
        jobs = {jid: {**e, **{k: _stored_path(self.sweep_dir, e[k]) for k in PATH_KEYS
                              if k in e}} if isinstance(e, dict) else e
                for jid, e in self.jobs.items()}
        write_json(self.path, {**self.data, "jobs": jobs})

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
        """Record a job's new state. While jobs run, a save the disk refuses (full, read-only)
        does not stop the launcher: the record is kept here, said once on stderr, and saved
        with the next update or at the end (where a failure is the launch's error)."""
        self.jobs[job_id].update(fields, updated=now())
        try:
            self.save()
        except OSError as exc:
            if not self.unsaved:
                print(f"sweep: warning: {os_error(exc)}: the ledger could not be saved; the "
                      "launcher goes on and tries again", file=sys.stderr, flush=True)
            self.unsaved = True
        else:
            self.unsaved = False


def _identity_key(config: dict[str, Any]) -> str:
    return json.dumps(identity(config), sort_keys=True, default=list)
