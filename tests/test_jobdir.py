"""quantlib.jobdir: the job directory contract (status.json, eval_results.*, the completed
rule), its bounded reader, scheduler ids, the launch lock, and the state rule `job_state`
(files first, the scheduler's word advisory, UNSURE never lost)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from datetime import datetime
from pathlib import Path

import pytest

from quantlib import jobdir
from quantlib.errors import UserError
from quantlib.jobdir import (
    EVAL_JSON,
    EVAL_TXT,
    LAUNCH_LOCK,
    LOST_AFTER_S,
    STATUS,
    TIME_FORMAT,
    UNSURE,
    RefusedFile,
    completed,
    elapsed,
    entry_path,
    is_complete,
    job_state,
    launcher_active,
    old_name,
    open_lock,
    read_json,
    read_regular,
    read_status,
    valid_id,
    write_results,
    write_status,
)


def stamp(seconds_ago: float) -> str:
    """A time stamp as status.json and the ledger write it, `seconds_ago` before now."""
    return time.strftime(TIME_FORMAT, time.localtime(time.time() - seconds_ago))


def marker(out, **status) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / STATUS).write_text(json.dumps(status))


# --- the completed rule ----------------------------------------------------------------------

@pytest.mark.parametrize("status, results, want", [
    ({"state": "completed"}, {}, True),
    ({"state": "completed"}, {"eval_accuracy": 0.5}, True),
    ({"state": "completed"}, [], False),  # results not an object
    ({"state": "completed"}, None, False),
    ({"state": "running"}, {}, False),
    ({"state": "failed"}, {}, False),
    ({}, {}, False),
    (None, {}, False),
    ("completed", {}, False),  # a marker that is not an object
])
def test_completed_rule(status, results, want):
    assert completed(status, results) is want


@pytest.mark.parametrize("status, results, want", [
    ('{"state": "completed"}', '{"eval_accuracy": 0.9}', True),
    ('{"state": "completed"}', None, False),  # no results file
    ('{"state": "completed"}', '{"eval_accuracy": 0.', False),  # truncated
    ('{"state": "completed"}', "[1, 2]", False),  # JSON, not an object
    ('{"state": "completed"}', "", False),
    ('{"state": "running"}', '{"eval_accuracy": 0.9}', False),
    (None, '{"eval_accuracy": 0.9}', False),  # no marker
    ('{"state": "compl', '{"eval_accuracy": 0.9}', False),  # garbled marker
])
def test_is_complete_needs_the_marker_and_readable_results(tmp_path, status, results, want):
    if status is not None:
        (tmp_path / STATUS).write_text(status)
    if results is not None:
        (tmp_path / EVAL_JSON).write_text(results)
    assert is_complete(tmp_path) is want


def test_is_complete_of_a_directory_that_does_not_exist(tmp_path):
    assert is_complete(tmp_path / "never") is False


def test_is_complete_refuses_a_fifo_as_results(tmp_path):
    (tmp_path / STATUS).write_text('{"state": "completed"}')
    os.mkfifo(tmp_path / EVAL_JSON)
    assert is_complete(tmp_path) is False  # and returns: the FIFO is never read


# --- status.json ------------------------------------------------------------------------------

def test_write_status_merges_the_fields(tmp_path):
    write_status(tmp_path, "running", started="2026-01-01T10:00:00+0000", pid=7)
    first = read_status(tmp_path)
    assert first["state"] == "running" and first["pid"] == 7
    assert first["host"] == socket.gethostname()
    datetime.strptime(first["updated"], TIME_FORMAT)  # in the one stamp format
    write_status(tmp_path, "completed", elapsed_s=12, pid=8)
    second = read_status(tmp_path)
    assert second["state"] == "completed"
    assert second["started"] == "2026-01-01T10:00:00+0000"  # kept from the first write
    assert second["pid"] == 8 and second["elapsed_s"] == 12  # extra fields win
    assert set(second) == {"state", "updated", "host", "started", "pid", "elapsed_s"}


def test_write_status_over_a_garbled_marker_starts_afresh(tmp_path):
    (tmp_path / STATUS).write_text('{"state": "runn')
    write_status(tmp_path, "failed", reason="boom")
    assert {k: v for k, v in read_status(tmp_path).items() if k in ("state", "reason")} == {
        "state": "failed", "reason": "boom"}


# --- results ----------------------------------------------------------------------------------

def test_write_results_json_and_old_text(tmp_path):
    write_results(tmp_path, "stsb", {"combined_score": 0.5, "pearson": 0.4, "loss": 1.25},
                  {"train_loss": 2.0})
    assert json.loads((tmp_path / EVAL_JSON).read_text()) == {
        "train_loss": 2.0, "eval_combined_score": 0.5, "eval_pearson": 0.4, "eval_loss": 1.25}
    # only the metrics the old run_glue names, sorted; STS-B's combined score is "corr"
    assert (tmp_path / EVAL_TXT).read_text() == "corr = 0.5\npearson = 0.4\n"


def test_write_results_metrics_override_info_of_the_same_name(tmp_path):
    write_results(tmp_path, "mrpc", {"accuracy": 0.75, "f1": 0.5}, {"eval_accuracy": 0.0})
    assert json.loads((tmp_path / EVAL_JSON).read_text()) == {"eval_accuracy": 0.75,
                                                              "eval_f1": 0.5}
    assert (tmp_path / EVAL_TXT).read_text() == "acc = 0.75\nf1 = 0.5\n"


@pytest.mark.parametrize("task, metric, want", [
    ("mrpc", "accuracy", "acc"), ("mrpc", "combined_score", "acc_and_f1"),
    ("stsb", "combined_score", "corr"), ("cola", "matthews_correlation", "mcc"),
    ("mnli", "accuracy_mm", "mnli-mm_acc"), ("squad", "exact_match", "exact_match"),
    ("mrpc", "loss", "loss"),  # no old name: kept as it is
])
def test_old_names(task, metric, want):
    assert old_name(task, metric) == want


# --- the bounded reader ----------------------------------------------------------------------

def test_read_regular_reads_a_small_file(tmp_path):
    (tmp_path / "f").write_bytes(b"0123456789")
    assert read_regular(tmp_path / "f") == b"0123456789"
    assert read_regular(tmp_path / "f", limit=10) == b"0123456789"  # the limit itself is fine
    assert read_regular(tmp_path / "f", limit=10, stat_first=False) == b"0123456789"


def test_read_regular_refuses_an_oversized_file(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 11)
    with pytest.raises(RefusedFile) as info:
        read_regular(tmp_path / "f", limit=10)
    assert info.value.errno == errno.EFBIG and info.value.filename == str(tmp_path / "f")
    assert info.value.strerror == "11 bytes, more than the 10 a result file may hold"
    # with head: only the head is read, whatever the size
    assert read_regular(tmp_path / "f", limit=10, head=3) == b"xxx"


@pytest.mark.parametrize("stat_first", [True, False])
def test_read_regular_refuses_a_fifo_without_blocking(tmp_path, stat_first):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(RefusedFile) as info:
        read_regular(tmp_path / "fifo", stat_first=stat_first)
    assert info.value.errno == errno.EINVAL
    assert info.value.strerror == "not a regular file (a FIFO)"


def test_read_regular_refuses_a_directory(tmp_path):
    with pytest.raises(RefusedFile, match=r"not a regular file \(a directory\)"):
        read_regular(tmp_path)


def test_read_regular_of_a_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "nope")


@pytest.mark.parametrize("content, want", [
    (b'{"a": 1}', {"a": 1}),
    (b"[1]", None),
    (b'"text"', None),
    (b"{", None),
    (b'{"a": "\xff"}', None),  # not UTF-8
    (b"[" * 100_000 + b"]" * 100_000, None),  # nested past the parser
])
def test_read_json_is_an_object_or_none(tmp_path, content, want):
    (tmp_path / "f.json").write_bytes(content)
    assert read_json(tmp_path / "f.json") == want


def test_read_json_of_what_is_not_there_or_too_big(tmp_path):
    assert read_json(tmp_path / "nope.json") is None
    with open(tmp_path / "big.json", "wb") as fh:
        fh.truncate(jobdir.MAX_READ_BYTES + 1)  # sparse: refused by its size, never read
    assert read_json(tmp_path / "big.json") is None


# --- scheduler ids ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, ok", [
    ("123", True), ("123_4", True), ("123[4]", True), ("9" * 18, True), ("1_0", True),
    ("0", False), ("0123", False), ("-1", False), ("123\n", False), (" 123", False),
    ("1 2", False), ("all", False), ("123_", False), ("123[4", False), ("123[]", False),
    ("-u x", False), ("\u0663", False), ("", False), (123, False), (None, False),
    (["123"], False), ("9" * 19, False),
])
def test_valid_scheduler_id(text, ok):
    assert valid_id(text) is ok


@pytest.mark.parametrize("text", ["0_1", "0[1]", "123_4_5", "123[4][5]", "123_1234567890",
                                  "1e3", "+1", "123 "])
def test_more_ids_that_are_not_scheduler_ids(text):
    assert valid_id(text) is False


# --- ledger paths -----------------------------------------------------------------------------

def test_entry_path(tmp_path):
    assert entry_path(tmp_path, "jobs/a") == tmp_path / "jobs" / "a"
    assert entry_path(tmp_path, "jobs/../b") == tmp_path / "b"  # normalised
    assert entry_path(tmp_path, "/elsewhere/x") == Path("/elsewhere/x")
    assert entry_path(tmp_path, None) == tmp_path  # no path: the sweep directory itself
    assert entry_path(os.path.relpath(tmp_path), "a").is_absolute()


# --- the launch lock --------------------------------------------------------------------------

def test_launcher_active_only_while_the_lock_is_held(tmp_path):
    assert launcher_active(tmp_path) is False  # no lock file
    with open_lock(tmp_path / LAUNCH_LOCK, create=True) as fh:
        assert launcher_active(tmp_path) is False  # the file alone is no launch
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert launcher_active(tmp_path) is True
        fcntl.flock(fh, fcntl.LOCK_UN)
        assert launcher_active(tmp_path) is False


def test_a_fifo_as_launch_lock_is_no_launch_and_refused(tmp_path):
    os.mkfifo(tmp_path / LAUNCH_LOCK)
    assert launcher_active(tmp_path) is False  # and returns at once
    with pytest.raises(UserError, match="the launch lock is not a regular file; remove it"):
        open_lock(tmp_path / LAUNCH_LOCK, create=True)


def test_a_link_as_launch_lock_is_refused(tmp_path):
    (tmp_path / "target").write_text("")
    (tmp_path / LAUNCH_LOCK).symlink_to(tmp_path / "target")
    with pytest.raises(UserError, match="cannot open the launch lock"):
        open_lock(tmp_path / LAUNCH_LOCK, create=False)
    assert launcher_active(tmp_path) is False


def test_open_lock_without_create_of_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_lock(tmp_path / LAUNCH_LOCK, create=False)
    assert not (tmp_path / LAUNCH_LOCK).exists()


# --- job_state --------------------------------------------------------------------------------

@pytest.mark.parametrize("entry, sched, launcher, want", [
    ({"backend": "slurm", "submitted": "2000-01-01T00:00:00+0000"}, "PENDING", False, "pending"),
    ({"backend": "slurm"}, "RUNNING", False, "running"),
    ({"backend": "lsf"}, "COMPLETED", False, "failed"),  # exited without results
    ({"backend": "slurm"}, "TIMEOUT", False, "failed"),
    ({"backend": "slurm"}, "CANCELLED", False, "cancelled"),
    ({"backend": "slurm", "state": "cancelled"}, "UNKNOWN", False, "cancelled"),
    ({"backend": "slurm", "submitted": "2000-01-01T00:00:00+0000"}, "UNKNOWN", False, "failed"),
    ({"backend": "slurm", "submitted": "2999-01-01T00:00:00+0000"}, "UNKNOWN", False, "pending"),
    ({"backend": "local", "state": "running"}, None, True, "running"),
    ({"backend": "local", "state": "running"}, None, False, "interrupted"),  # launcher gone
    ({"backend": "local", "state": "pending"}, None, False, "missing"),
    ({"state": "missing"}, None, False, "missing"),  # never launched
])
def test_state_resolution(tmp_path, entry, sched, launcher, want):
    entry = {**entry, "output_dir": str(tmp_path / "none")}
    assert job_state(entry, sched, launcher)[0] == want


def test_a_failure_marker_older_than_the_resubmission_is_not_the_rerun(tmp_path):
    # the failed job went again; the scheduler does not list the new id yet (sacct lags)
    (tmp_path / "status.json").write_text(json.dumps(
        {"state": "failed", "reason": "boom", "updated": "2026-01-01T10:00:00+0000"}))
    recent = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    entry = {"backend": "slurm", "output_dir": str(tmp_path), "submitted": recent}
    assert job_state(entry, "UNKNOWN") == ("pending", None)
    assert job_state(entry, None) == ("pending", None)
    # the rerun failed too: its marker is newer than the submission
    (tmp_path / "status.json").write_text(json.dumps(
        {"state": "failed", "reason": "boom again", "updated": "2999-01-01T10:00:00+0000"}))
    assert job_state(entry, "UNKNOWN") == ("failed", "boom again")


def test_results_on_disk_win_over_the_scheduler(tmp_path):
    (tmp_path / "status.json").write_text('{"state": "completed"}')
    (tmp_path / "eval_results.json").write_text("{}")
    for sched in ("RUNNING", "FAILED", "UNKNOWN", None):
        assert job_state({"backend": "slurm", "output_dir": str(tmp_path)}, sched)[0] \
            == "completed"
    assert job_state({"backend": "slurm", "output_dir": str(tmp_path / "x"),
                      "submitted": "2000-01-01T00:00:00+0000"}, "UNKNOWN")[1].startswith("lost")


def test_results_on_disk_win_over_an_unsure_scheduler_and_a_cancel(tmp_path):
    (tmp_path / STATUS).write_text('{"state": "completed"}')
    (tmp_path / EVAL_JSON).write_text('{"eval_accuracy": 1.0}')
    entry = {"backend": "lsf", "state": "cancelled", "output_dir": str(tmp_path)}
    assert job_state(entry, f"{UNSURE}bjobs timed out") == ("completed", None)
    assert job_state(entry, "CANCELLED") == ("completed", None)


def test_an_unsure_scheduler_never_makes_a_job_lost(tmp_path):
    old = {"backend": "slurm", "state": "submitted", "output_dir": str(tmp_path / "none"),
           "submitted": "2000-01-01T00:00:00+0000"}
    sched = f"{UNSURE}the scheduler did not answer: timeout"
    assert job_state(old, sched) == (
        "unknown", "the scheduler did not answer: timeout (last known: submitted)")
    # a job that wrote `running` or `interrupted` may run on or be requeued: still unknown
    for state in ("running", "interrupted"):
        marker(tmp_path / state, state=state)
        entry = {**old, "state": "running", "output_dir": str(tmp_path / state)}
        assert job_state(entry, sched) == (
            "unknown", "the scheduler did not answer: timeout (last known: running)")
    no_state = {k: v for k, v in old.items() if k != "state"}
    assert job_state(no_state, sched)[1].endswith("(last known: submitted)")


def test_an_unsure_scheduler_keeps_what_is_final(tmp_path):
    marker(tmp_path / "f", state="failed", reason="CUDA out of memory")
    failed = {"backend": "slurm", "state": "running", "output_dir": str(tmp_path / "f")}
    assert job_state(failed, f"{UNSURE}x") == ("failed", "CUDA out of memory")
    cancelled = {"backend": "slurm", "state": "cancelled", "output_dir": str(tmp_path / "n")}
    assert job_state(cancelled, f"{UNSURE}x") == ("cancelled", "cancelled")
    assert job_state({**cancelled, "reason": "by sweep cancel"}, f"{UNSURE}x") == (
        "cancelled", "by sweep cancel")


@pytest.mark.parametrize("sched", sorted(jobdir.QUEUED))
def test_queued_states_are_pending(tmp_path, sched):
    assert job_state({"backend": "slurm", "output_dir": str(tmp_path)}, sched) == (
        "pending", None)


@pytest.mark.parametrize("sched", sorted(jobdir.ACTIVE))
def test_active_states_are_running_unless_the_job_said_failed(tmp_path, sched):
    entry = {"backend": "slurm", "output_dir": str(tmp_path)}
    assert job_state(entry, sched) == ("running", None)
    marker(tmp_path, state="failed", reason="loss is NaN")
    assert job_state(entry, sched) == ("failed", "loss is NaN")


def test_a_completed_marker_without_readable_results_is_failed(tmp_path):
    marker(tmp_path, state="completed")
    (tmp_path / EVAL_JSON).write_text("{trunc")
    entry = {"backend": "slurm", "output_dir": str(tmp_path)}
    for sched in (None, "UNKNOWN", "COMPLETED"):
        assert job_state(entry, sched) == ("failed", f"{EVAL_JSON} is missing or unreadable")


def test_cancelled_reasons(tmp_path):
    entry = {"backend": "slurm", "state": "cancelled", "output_dir": str(tmp_path)}
    assert job_state(entry, "UNKNOWN") == ("cancelled", "cancelled")
    assert job_state({**entry, "reason": "mine"}, None) == ("cancelled", "mine")
    marker(tmp_path, state="interrupted", reason="SIGTERM")
    assert job_state({**entry, "reason": "mine"}, None) == ("cancelled", "SIGTERM")
    assert job_state({"backend": "lsf", "output_dir": str(tmp_path / "x")}, "CANCELLED") == (
        "cancelled", "cancelled on the scheduler")


def test_the_markers_word_when_the_scheduler_forgot_the_job(tmp_path):
    marker(tmp_path, state="interrupted", reason="preempted")
    entry = {"backend": "lsf", "output_dir": str(tmp_path)}
    assert job_state(entry, "UNKNOWN") == ("interrupted", "preempted")
    assert job_state(entry, "COMPLETED") == ("interrupted", "preempted")
    assert job_state(entry, "TIMEOUT") == ("interrupted", "preempted")


def test_scheduler_verdicts_without_results(tmp_path):
    entry = {"backend": "slurm", "output_dir": str(tmp_path)}
    assert job_state(entry, "COMPLETED") == ("failed", "exited without results")
    assert job_state(entry, "OUT_OF_MEMORY") == ("failed", "scheduler: OUT_OF_MEMORY")
    assert job_state(entry, "NODE_FAIL") == ("failed", "scheduler: NODE_FAIL")


def test_a_cluster_job_the_scheduler_does_not_know(tmp_path):
    """Pending for LOST_AFTER_S after its submission (the scheduler may not list it yet), then
    failed: lost. Unasked (sched None), its own `running` marker is trusted."""
    lost = ("failed", "lost: the scheduler no longer knows the job and it left no results")
    base = {"backend": "slurm", "output_dir": str(tmp_path / "none")}
    young = {**base, "submitted": stamp(LOST_AFTER_S - 60)}
    aged = {**base, "submitted": stamp(LOST_AFTER_S + 60)}
    for sched in ("UNKNOWN", None):
        assert job_state(young, sched) == ("pending", None)
        assert job_state(aged, sched) == lost
    assert job_state(base, "UNKNOWN") == lost  # no submission time: lost
    assert job_state({**base, "submitted": "yesterday"}, "UNKNOWN") == lost
    marker(tmp_path / "r", state="running")
    running = {**aged, "output_dir": str(tmp_path / "r")}
    assert job_state(running, None) == ("running", None)
    assert job_state(running, "UNKNOWN") == lost  # asked, and it does not know it


def test_local_jobs(tmp_path):
    out = str(tmp_path / "none")
    local = {"backend": "local", "output_dir": out}
    assert job_state({**local, "state": "failed", "reason": "exit status 1"}, None) == (
        "failed", "exit status 1")
    # recorded completed, but no results on disk: to be run again
    assert job_state({**local, "state": "completed"}, None) == ("missing", None)
    assert job_state({**local, "state": "running"}, None) == (
        "interrupted", "the launcher stopped")
    assert job_state({**local, "state": "pending"}, None, launcher_active=True) == (
        "pending", None)
    assert job_state(local, None) == ("missing", None)  # no state recorded


def test_an_orphaned_local_job_is_running(tmp_path):
    from quantlib.procs import start_token

    pid = os.getpid()
    if start_token(pid) is None:
        pytest.skip("no /proc: a process's start time cannot be read")
    entry = {"backend": "local", "state": "running", "output_dir": str(tmp_path), "pid": pid,
             "pid_start": start_token(pid), "host": socket.gethostname()}
    assert job_state(entry, None) == (
        "running", f"orphaned: its launcher stopped, the job runs on (pid {pid}); a relaunch "
                   "adopts it")
    # another process under that pid (another start time) is not the job
    assert job_state({**entry, "pid_start": "1"}, None) == (
        "interrupted", "the launcher stopped")
    assert job_state({**entry, "host": "another-host.invalid"}, None)[0] == "interrupted"


# --- elapsed ----------------------------------------------------------------------------------

def test_elapsed(tmp_path):
    entry = {"output_dir": str(tmp_path)}
    assert elapsed(entry) == "-"  # no marker
    marker(tmp_path, state="completed", elapsed_s=3725.9)
    assert elapsed(entry) == "1:02:05"
    marker(tmp_path, state="failed", elapsed_s=59)
    assert elapsed(entry) == "0:00:59"


def test_elapsed_of_a_running_job_counts_from_its_start(tmp_path):
    entry = {"output_dir": str(tmp_path)}
    marker(tmp_path, state="running", started=stamp(2 * 3600 + 60))
    hours, minutes, _ = elapsed(entry).split(":")
    assert (hours, minutes) in (("2", "01"), ("2", "02"))
    # killed without a word (the marker still says running): no end to count to
    assert elapsed(entry, "interrupted") == "-"
    marker(tmp_path, state="running", started="not a time")
    assert elapsed(entry) == "-"


def test_an_entry_without_an_output_dir_never_reads_the_current_directory(tmp_path,
                                                                            monkeypatch):
    """A ledger entry whose output_dir was dropped (a wrong type) names no directory: the
    files of the directory `sweep` runs in are not its job's."""
    (tmp_path / STATUS).write_text(json.dumps({"state": "completed", "elapsed_s": 5}))
    (tmp_path / EVAL_JSON).write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert job_state({"backend": "slurm", "state": "failed"}, "FAILED") == (
        "failed", "scheduler: FAILED")
    assert elapsed({"backend": "slurm"}) == "-"



@pytest.mark.parametrize("sched,want", [("RUNNING", "running"), ("PENDING", "pending"),
                                        ("FAILED", "failed")])
def test_a_failure_marker_of_the_resubmissions_second_is_the_old_attempts(tmp_path, sched,
                                                                          want):
    """A relaunch resubmits a failed job within the second its first attempt failed (stamps are
    whole seconds; the ledger's is taken after the submission): while the rerun has not
    written its own marker, the old `failed` does not speak for it (the scheduler does); once
    the scheduler says it ended, a job that left no newer marker has failed."""
    from quantlib.jobdir import job_state, write_status

    out = tmp_path / "job"
    out.mkdir()
    write_status(out, "failed", reason="data_dir missing")
    stamp = json.loads((out / "status.json").read_text())["updated"]
    entry = {"state": "submitted", "backend": "lsf", "scheduler_id": "7",
             "output_dir": str(out), "submitted": stamp}
    state, _ = job_state(entry, sched)
    assert state == want
