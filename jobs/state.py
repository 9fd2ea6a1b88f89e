"""A job's state from what is on disk, the ledger and (advisory) the scheduler.

Files are the truth: a job whose results exist is completed whatever the scheduler says; a job
the scheduler no longer knows and that left no results is failed, never "running" forever.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from jobs.procs import job_process_alive
from quantlib.outputs import EVAL_JSON, is_complete, read_status

QUEUED = {"PENDING", "REQUEUED", "READY", "CONFIGURING", "RESV_DEL_HOLD", "REQUEUE_HOLD"}
ACTIVE = {"RUNNING", "COMPLETING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "RESIZING"}
LOST_AFTER_S = 120  # a submission the scheduler never heard of by then is lost


def _epoch(stamp: Any) -> float | None:
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def _age_s(stamp: str | None) -> float | None:
    when = _epoch(stamp)
    return None if when is None else time.time() - when


def job_state(entry: dict[str, Any], sched: str | None,
              launcher_active: bool = False) -> tuple[str, str | None]:
    """(state, reason): completed, pending, running, failed, interrupted, cancelled or missing
    (never launched). sched: the scheduler's state for the job's id, None when not asked;
    launcher_active: a local launch of the sweep is running now."""
    out = Path(entry.get("output_dir", ""))
    if is_complete(out):
        return "completed", None
    status = read_status(out) or {}
    file_state, file_reason = status.get("state"), status.get("reason")
    written, submitted = _epoch(status.get("updated")), _epoch(entry.get("submitted"))
    if written is not None and submitted is not None and written < submitted:
        # the marker of an attempt before the latest submission: the rerun has not started yet
        # (and the scheduler may not list it yet), so the old failure says nothing about it
        file_state = None
    if sched in QUEUED:
        return "pending", None
    if sched in ACTIVE:
        if file_state == "failed":  # the job has said so and is ending (epilog, COMPLETING)
            return "failed", file_reason
        return "running", None
    if file_state == "completed":  # but is_complete says its results cannot be read
        return "failed", f"{EVAL_JSON} is missing or unreadable"
    if entry.get("state") == "cancelled":
        return "cancelled", file_reason or entry.get("reason") or "cancelled"
    if sched == "CANCELLED":
        return "cancelled", "cancelled on the scheduler"
    if file_state in ("failed", "interrupted"):
        return file_state, file_reason
    if sched == "COMPLETED":
        return "failed", "exited without results"
    if sched and sched != "UNKNOWN":
        return "failed", f"scheduler: {sched}"
    if entry.get("backend") is None:
        return "missing", None
    if entry.get("backend") == "local":
        state = entry.get("state", "missing")
        if state == "running" and not launcher_active and job_process_alive(entry):
            return "running", (f"orphaned: its launcher stopped, the job runs on (pid "
                               f"{entry.get('pid')}); a relaunch adopts it")
        if state in ("pending", "running") and not launcher_active:
            return ("interrupted", "the launcher stopped") if state == "running" else (
                "missing", None)
        return ("missing" if state == "completed" else state), entry.get("reason")
    # a cluster job the scheduler does not know (any more) and that left no results
    if sched is None and file_state == "running":
        return "running", None  # the scheduler was not asked: trust the job's marker
    age = _age_s(entry.get("submitted"))
    if age is not None and age < LOST_AFTER_S:
        return "pending", None
    return "failed", "lost: the scheduler no longer knows the job and it left no results"


def elapsed(entry: dict[str, Any], state: str | None = None) -> str:
    """How long the job ran (or runs: `state`, the resolved one, is running). A job killed
    without a word (its status.json still says running) has no end to count to: "-"."""
    status = read_status(entry.get("output_dir", "")) or {}
    seconds = status.get("elapsed_s")
    if seconds is None and status.get("state") == "running" and state in (None, "running"):
        seconds = _age_s(status.get("started"))
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
