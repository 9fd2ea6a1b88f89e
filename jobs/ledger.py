"""The ledger: one JSON file per sweep recording every job launched, its state and exit status.

Files in each job's output directory are the truth about completion; the ledger mirrors them
and adds what only the launcher knows (backend, attempts, log file, exit status).

Paths inside the sweep directory are stored relative to it (PATH_KEYS), so that a sweep moved
or copied elsewhere is still itself; in memory they are absolute. A path outside the sweep (an
output_dir of an older ledger, say) stays as written.

A ledger is read as untrusted input (an edit by hand, another tool's file, a truncated copy):
only a regular file of at most MAX_BYTES, JSON nested at most as deep as Python's parser goes.
A file that is not a ledger at all (not an object with a `jobs` object) is a UserError naming
it. Inside a ledger, what is not ours is dropped with one warning on stderr, and the sweep
goes on: an entry that is not an object (its job is then missing, and the relaunch runs it
unless its output directory says it completed), a field of the wrong type (a number where a
path or a time stamp goes: the field is absent), and a scheduler id that is not one
(`valid_id`: the job keeps its state, its id is absent: the scheduler is never asked
about it nor told to cancel it). The file is rewritten clean with the next save.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jobs.grid import Job
from jobs.safeyaml import Unreadable, read_bounded
from quantlib.atomic import write_json
from quantlib.configs import ConfigError, identity_key, resolve
from quantlib.errors import UserError, os_error, quote, shorten
from quantlib.jobdir import (
    LAUNCH_LOCK,
    LEDGER,
    entry_path,
    is_complete,
    launcher_active,
    now,
    open_lock,
    valid_id,
)

PATH_KEYS = ("output_dir", "log")  # the entries' fields that name files
# a ledger of 100,000 jobs (the default max_jobs) is about 100 MB; /dev/zero or a runaway
# file must not be read into memory whole
MAX_BYTES = 1 << 30
# our job ids are 10 hex digits; earlier rules made other lengths: any short word is kept
JOB_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_STR, _INT = (str,), (int,)
# the entries' fields and the types they may have (None: the field is cleared); a field of
# another type is dropped (absent), an unknown field is kept as it is
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "state": _STR, "backend": _STR, "scheduler_id": _STR, "output_dir": _STR, "log": _STR,
    "config": (dict,), "index": _INT, "attempts": _INT, "pid": _INT, "pid_start": _STR,
    "host": _STR, "submitted": _STR, "updated": _STR, "reason": _STR, "exit_status": _INT,
    "stage": _STR, "after": _STR, "waits_for": _STR, "adopted_from": _STR, "gpus": (list,),
}
TOP_TYPES: dict[str, tuple[type, ...]] = {"sweep": _STR, "spec": _STR, "spec_text": _STR}


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
            data = json.loads(read_bounded(self.path, MAX_BYTES, "ledger"))
        except FileNotFoundError:
            return {"jobs": {}}
        except Unreadable as exc:
            raise UserError(f"{self.path}: {exc}; move it aside to start a fresh record"
                            ) from None
        except RecursionError:
            raise UserError(f"{self.path}: not a quantsweep ledger: its JSON is nested too "
                            "deeply; move it aside to start a fresh record") from None
        except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSON errors among them
            raise UserError(f"{self.path}: unreadable ledger ({shorten(str(exc), 120)}); "
                            "move it aside to start a fresh record") from None
        if not isinstance(data, dict) or not isinstance(data.get("jobs"), dict):
            raise UserError(f"{self.path}: jobs: not a quantsweep ledger (no object of jobs); "
                            "move it aside to start a fresh record")
        dropped = _clean(data)
        if dropped:
            print(f"sweep: warning: {self.path}: dropped what is not a ledger's: "
                  f"{'; '.join(dropped[:3])}" + (f" (and {len(dropped) - 3} more)"
                                                  if len(dropped) > 3 else ""),
                  file=sys.stderr, flush=True)
        for entry in data["jobs"].values():
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
        fh = open_lock(self.sweep_dir / LAUNCH_LOCK, create=True)
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
        return launcher_active(self.sweep_dir)

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
            if job.id not in self.jobs and identity_key(job.config) in adoptable:
                old_id = adoptable.pop(identity_key(job.config))
                self.jobs[job.id] = {**self.jobs.pop(old_id), "adopted_from": old_id}
            entry = self.jobs.setdefault(job.id, {"state": "missing", "attempts": 0})
            kept = entry.get("adopted_from") and not force and is_complete(
                entry.get("output_dir", ""))
            if kept:  # a completed job recorded under an earlier id stays where it ran
                job = dataclasses.replace(job, output_dir=Path(entry["output_dir"]))
            entry.update(index=job.index, config=job.config, output_dir=str(job.output_dir))
            if job.stage or job.after:
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
                key = identity_key(resolve(config))
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


def _clean(data: dict[str, Any]) -> list[str]:
    """Drop, in place, what in a loaded ledger is not ours (see the module's docstring); say
    what was dropped, one short phrase each."""
    dropped: list[str] = []
    for key, types in TOP_TYPES.items():
        if key in data and not isinstance(data[key], types):
            dropped.append(f"{key} ({type(data[key]).__name__}, not a string)")
            del data[key]
    jobs = data["jobs"]
    for jid in list(jobs):
        entry = jobs[jid]
        if not JOB_ID.fullmatch(jid):
            dropped.append(f"the entry {quote(jid, 40)} (not a job id)")
            del jobs[jid]
            continue
        if not isinstance(entry, dict):
            dropped.append(f"job {jid} ({type(entry).__name__}, not an object)")
            del jobs[jid]
            continue
        for key, types in FIELD_TYPES.items():
            value = entry.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, types):  # bool is an int
                dropped.append(f"job {jid}: {key} ({type(value).__name__}, not "
                               f"{' or '.join(t.__name__ for t in types)})")
                del entry[key]
            elif key in PATH_KEYS and "\0" in value:  # no OS call takes it
                dropped.append(f"job {jid}: {key} (holds NUL)")
                del entry[key]
        sid = entry.get("scheduler_id")
        if sid is not None and not valid_id(sid):
            dropped.append(f"job {jid}: scheduler_id {quote(sid, 40)} (not a scheduler id)")
            del entry["scheduler_id"]
    return dropped

