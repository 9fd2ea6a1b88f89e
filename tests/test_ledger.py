"""jobs.ledger: a sweep's record of its jobs. Paths relative to the sweep directory on disk and
absolute in memory, what is not a ledger's dropped with one warning (or, for a file that is no
ledger at all, a UserError naming it), the launch lock, the registration of a sweep's jobs and
the adoption of a completed job recorded under an earlier id, updates the disk refuses."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from jobs.grid import Job, job_id
from jobs.ledger import Ledger
from quantlib.configs import resolve
from quantlib.errors import UserError
from quantlib.jobdir import EVAL_JSON, LEDGER, STATUS

# --- 13. ledgers that are not ours (moved from tests/test_hostile_specs_v2.py) ----------------

def ledger_at(tmp_path: Path, content: str | bytes) -> Path:
    sweep = tmp_path / "runs" / "l"
    sweep.mkdir(parents=True)
    data = content.encode() if isinstance(content, str) else content
    (sweep / "ledger.json").write_bytes(data)
    return sweep


GOOD_ENTRY = {"state": "submitted", "backend": "slurm", "scheduler_id": "123_4",
              "output_dir": "jobs/a", "config": {"task": "mrpc"}, "index": 1, "attempts": 1}


def test_bad_entries_are_dropped_with_one_warning(tmp_path, capsys):
    from jobs.ledger import Ledger
    from quantlib.jobdir import elapsed, job_state

    jobs = {"good": GOOD_ENTRY, "alist": [1, 2], "astring": "x",
            "nums": {"state": "failed", "output_dir": 5, "log": 7.5, "submitted": 12345,
                     "updated": [], "index": "1", "attempts": True, "config": "x"},
            "bad\nid": {"state": "failed"}}
    sweep = ledger_at(tmp_path, json.dumps({"sweep": "l", "jobs": jobs}))
    ledger = Ledger(sweep)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sweep: warning: {sweep / 'ledger.json'}: "), err
    assert "job alist (list, not an object)" in err[0]
    assert set(ledger.jobs) == {"good", "nums"}
    assert ledger.jobs["good"]["output_dir"] == str(sweep / "jobs" / "a")
    assert ledger.jobs["nums"] == {"state": "failed"}  # every field of the wrong type dropped
    for entry in ledger.jobs.values():  # a numeric path used to be a TypeError here
        job_state(entry, None)
        elapsed(entry)
    ledger.save()  # the file is clean from now on
    Ledger(sweep)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("content, fragment", [
    ('{"jobs": {"a": ' + "[" * 100_000 + "]" * 100_000 + "}}", "nested too deeply"),
    ("[1, 2]", "not a quantsweep ledger"),
    ('{"jobs": [1]}', "not a quantsweep ledger"),
    ('{"jobs": {"a": {}}', "unreadable ledger"),
    (b'{"jobs": {"\xff": {}}}', "unreadable ledger"),
    ('{"jobs": {"a": ' + "9" * 5000 + "}}", "unreadable ledger"),
])
def test_ledgers_that_are_not_ours_are_one_line(tmp_path, content, fragment):
    from jobs.ledger import Ledger

    sweep = ledger_at(tmp_path, content)
    with pytest.raises(UserError) as info:
        Ledger(sweep)
    message = str(info.value)
    assert message.startswith(f"{sweep / 'ledger.json'}: ") and fragment in message, message
    assert "\n" not in message and len(message) < 600


def test_only_regular_ledgers_of_bounded_size_are_read(tmp_path, monkeypatch):
    from jobs import ledger as ledger_module

    sweep = tmp_path / "runs" / "f"
    sweep.mkdir(parents=True)
    os.mkfifo(sweep / "ledger.json")
    with pytest.raises(UserError, match="a FIFO, not a regular file"):
        ledger_module.Ledger(sweep)
    (sweep / "ledger.json").unlink()
    if os.path.exists("/dev/zero"):
        (sweep / "ledger.json").symlink_to("/dev/zero")
        with pytest.raises(UserError, match="device, not a regular file"):
            ledger_module.Ledger(sweep)
        (sweep / "ledger.json").unlink()
    (sweep / "ledger.json").write_text(json.dumps({"jobs": {}, "pad": "x" * 5000}))
    monkeypatch.setattr(ledger_module, "MAX_BYTES", 1000)
    with pytest.raises(UserError, match="at most 1000 bytes"):
        ledger_module.Ledger(sweep)


def test_an_invalid_scheduler_id_is_absent_and_the_job_keeps_its_state(tmp_path, capsys):
    from jobs.ledger import Ledger

    jobs = {"a": {**GOOD_ENTRY, "scheduler_id": "0"}, "b": {**GOOD_ENTRY, "scheduler_id": "-u x"},
            "c": GOOD_ENTRY}
    ledger = Ledger(ledger_at(tmp_path, json.dumps({"jobs": jobs})))
    assert "not a scheduler id" in capsys.readouterr().err
    for jid in ("a", "b"):
        assert "scheduler_id" not in ledger.jobs[jid]
        assert ledger.jobs[jid]["state"] == "submitted" and ledger.jobs[jid]["backend"] == "slurm"
    assert ledger.jobs["c"]["scheduler_id"] == "123_4"


# --- paths: relative on disk, absolute in memory ----------------------------------------------

def make_job(sweep: Path, index: int = 1, out: Path | None = None, **args) -> Job:
    config = resolve({"task": "mrpc", "method": "fp32", **args})
    jid = job_id(config)
    return Job(jid, index, config, out or sweep / "jobs" / jid, "grid")


def spec_file(tmp_path: Path, text: str = "name: l\n") -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def complete(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / STATUS).write_text('{"state": "completed"}')
    (out / EVAL_JSON).write_text('{"eval_accuracy": 0.5}')


def on_disk(sweep: Path) -> dict:
    return json.loads((sweep / LEDGER).read_text())


def test_a_new_ledger_is_empty_and_writes_nothing(tmp_path):
    ledger = Ledger(tmp_path / "sw")
    assert ledger.data == {"jobs": {}} and ledger.jobs == {}
    assert ledger.path == tmp_path / "sw" / LEDGER
    assert not (tmp_path / "sw").exists()


def test_paths_are_stored_relative_and_read_absolute(tmp_path):
    sweep = tmp_path / "sw"
    job = make_job(sweep, seed=1)
    outside = make_job(sweep, 2, out=tmp_path / "elsewhere" / "x", seed=2)
    ledger = Ledger(sweep)
    ledger.register("l", str(spec_file(tmp_path)), [job, outside])
    ledger.update(job.id, state="submitted", log=str(sweep / "logs" / "1.out"))
    stored = on_disk(sweep)["jobs"]
    assert stored[job.id]["output_dir"] == f"jobs/{job.id}"
    assert stored[job.id]["log"] == "logs/1.out"
    assert stored[outside.id]["output_dir"] == str(tmp_path / "elsewhere" / "x")  # as written
    # in memory: absolute, before and after reading the file back
    assert ledger.jobs[job.id]["output_dir"] == str(sweep / "jobs" / job.id)
    again = Ledger(sweep)
    assert again.jobs[job.id]["output_dir"] == str(sweep / "jobs" / job.id)
    assert again.jobs[job.id]["log"] == str(sweep / "logs" / "1.out")
    assert again.jobs[outside.id]["output_dir"] == str(tmp_path / "elsewhere" / "x")


def test_a_moved_sweep_is_still_itself(tmp_path):
    sweep = tmp_path / "sw"
    job = make_job(sweep)
    Ledger(sweep).register("l", str(spec_file(tmp_path)), [job])
    shutil.move(sweep, tmp_path / "moved")
    moved = Ledger(tmp_path / "moved")
    assert moved.jobs[job.id]["output_dir"] == str(tmp_path / "moved" / "jobs" / job.id)


def test_a_relative_sweep_dir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ledger = Ledger("runs/x")
    assert ledger.sweep_dir == tmp_path / "runs" / "x" and ledger.sweep_dir.is_absolute()


def test_register_records_the_sweep_and_its_jobs(tmp_path):
    sweep = tmp_path / "sw"
    jobs = [make_job(sweep, 1, seed=1), make_job(sweep, 2, seed=2)]
    spec = spec_file(tmp_path, "name: l\n# as launched\n")
    out = Ledger(sweep).register("l", str(spec), jobs)
    assert out == jobs
    data = on_disk(sweep)
    assert data["sweep"] == "l" and data["spec"] == str(spec.absolute())
    assert data["spec_text"] == "name: l\n# as launched\n"
    for job in jobs:
        assert data["jobs"][job.id] == {"state": "missing", "attempts": 0, "index": job.index,
                                        "config": job.config,
                                        "output_dir": f"jobs/{job.id}"}


def test_register_keeps_what_an_earlier_launch_recorded(tmp_path):
    sweep = tmp_path / "sw"
    job = make_job(sweep)
    ledger = Ledger(sweep)
    ledger.register("l", str(spec_file(tmp_path)), [job])
    ledger.update(job.id, state="failed", attempts=1, reason="boom")
    Ledger(sweep).register("l", str(spec_file(tmp_path)), [job])
    entry = Ledger(sweep).jobs[job.id]
    assert (entry["state"], entry["attempts"], entry["reason"]) == ("failed", 1, "boom")


def test_an_unreadable_spec_text_is_left_out(tmp_path):
    sweep = tmp_path / "sw"
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(b"name: \xff\n")
    Ledger(sweep).register("l", str(spec), [make_job(sweep)])
    assert "spec_text" not in on_disk(sweep) and on_disk(sweep)["spec"] == str(spec)


# --- adoption by identity ---------------------------------------------------------------------

def old_record(sweep: Path, job: Job, old_dir: Path, old_id: str = "0ldid00000") -> None:
    sweep.mkdir(parents=True, exist_ok=True)
    (sweep / LEDGER).write_text(json.dumps({"jobs": {old_id: {
        "state": "completed", "backend": "local", "attempts": 1, "config": job.config,
        "output_dir": str(old_dir)}}}))


def test_a_completed_job_under_an_earlier_id_is_adopted(tmp_path):
    sweep = tmp_path / "sw"
    job = make_job(sweep, seed=7)
    old_dir = sweep / "jobs" / "old-name"
    complete(old_dir)
    old_record(sweep, job, old_dir)
    (kept,) = Ledger(sweep).register("l", str(spec_file(tmp_path)), [job])
    assert kept.id == job.id and kept.output_dir == old_dir  # stays where it ran
    jobs = Ledger(sweep).jobs
    assert set(jobs) == {job.id}
    assert jobs[job.id]["adopted_from"] == "0ldid00000"
    assert jobs[job.id]["state"] == "completed" and jobs[job.id]["attempts"] == 1
    assert jobs[job.id]["output_dir"] == str(old_dir)


def test_an_adopted_parent_is_the_upstream_of_its_child(tmp_path):
    sweep = tmp_path / "sw"
    parent = make_job(sweep, 1, seed=7, save_model=True)
    child = make_job(sweep, 2, seed=8)
    child = Job(child.id, 2, child.config, child.output_dir, "stages[1].grid", "q", parent.id,
                parent.output_dir)
    old_dir = sweep / "jobs" / "old-parent"
    complete(old_dir)
    old_record(sweep, parent, old_dir)
    _, got = Ledger(sweep).register("l", str(spec_file(tmp_path)), [parent, child])
    assert got.upstream_dir == old_dir and got.after == parent.id
    assert Ledger(sweep).jobs[child.id]["stage"] == "q"
    assert Ledger(sweep).jobs[child.id]["after"] == parent.id


@pytest.mark.parametrize("case", ["not completed", "forced", "another config"])
def test_what_is_not_adopted(tmp_path, case):
    sweep = tmp_path / "sw"
    job = make_job(sweep, seed=7)
    old_dir = sweep / "jobs" / "old-name"
    if case != "not completed":
        complete(old_dir)
    recorded = make_job(sweep, seed=8) if case == "another config" else job
    old_record(sweep, recorded, old_dir)
    (got,) = Ledger(sweep).register("l", str(spec_file(tmp_path)), [job],
                                    force=case == "forced")
    assert got.output_dir == sweep / "jobs" / job.id
    jobs = Ledger(sweep).jobs
    assert set(jobs) == {"0ldid00000", job.id}
    assert jobs[job.id]["state"] == "missing" and "adopted_from" not in jobs[job.id]


def test_a_recorded_config_that_no_longer_resolves_is_not_adopted(tmp_path):
    sweep = tmp_path / "sw"
    job = make_job(sweep)
    old_dir = sweep / "jobs" / "old"
    complete(old_dir)
    sweep.mkdir(parents=True, exist_ok=True)
    (sweep / LEDGER).write_text(json.dumps({"jobs": {"0ldid00000": {
        "state": "completed", "config": {"task": "mrpc", "method": "gone"},
        "output_dir": str(old_dir)}}}))
    (got,) = Ledger(sweep).register("l", str(spec_file(tmp_path)), [job])
    assert got.output_dir == job.output_dir and "0ldid00000" in Ledger(sweep).jobs


# --- the launch lock --------------------------------------------------------------------------

def test_locked_refuses_a_second_launch(tmp_path):
    sweep = tmp_path / "sw"
    first = Ledger(sweep)
    with first.locked() as held:
        assert held is first and first.launcher_active()
        with pytest.raises(UserError) as info:
            with Ledger(sweep).locked():
                pass
        assert str(info.value) == (f"{sweep}: another launch of this sweep is running; wait "
                                   "for it or stop it first")
    assert not first.launcher_active()
    with Ledger(sweep).locked():  # free again
        pass


def test_locked_reads_the_ledger_anew(tmp_path):
    sweep = tmp_path / "sw"
    ledger = Ledger(sweep)
    job = make_job(sweep)
    Ledger(sweep).register("l", str(spec_file(tmp_path)), [job])  # another process, say
    assert ledger.jobs == {}
    with ledger.locked():
        assert set(ledger.jobs) == {job.id}


# --- updates ----------------------------------------------------------------------------------

def test_update_saves_the_fields_with_a_time(tmp_path):
    sweep = tmp_path / "sw"
    job = make_job(sweep)
    ledger = Ledger(sweep)
    ledger.register("l", str(spec_file(tmp_path)), [job])
    ledger.update(job.id, state="submitted", scheduler_id="77_1", attempts=1)
    entry = on_disk(sweep)["jobs"][job.id]
    assert (entry["state"], entry["scheduler_id"], entry["attempts"]) == ("submitted", "77_1", 1)
    from datetime import datetime

    from quantlib.jobdir import TIME_FORMAT

    datetime.strptime(entry["updated"], TIME_FORMAT)


def test_an_update_the_disk_refuses_is_said_once_and_kept(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sw"
    job = make_job(sweep)
    ledger = Ledger(sweep)
    ledger.register("l", str(spec_file(tmp_path)), [job])
    capsys.readouterr()

    def full():
        raise OSError(errno.ENOSPC, "No space left on device", str(ledger.path))

    monkeypatch.setattr(ledger, "save", full)
    ledger.update(job.id, state="running")
    ledger.update(job.id, state="failed", reason="x")
    err = capsys.readouterr().err.splitlines()
    assert err == [f"sweep: warning: {ledger.path}: disk full (No space left on device): the "
                   "ledger could not be saved; the launcher goes on and tries again"]
    assert ledger.unsaved and ledger.jobs[job.id]["state"] == "failed"  # kept in memory
    assert on_disk(sweep)["jobs"][job.id]["state"] == "missing"
    monkeypatch.undo()
    ledger.update(job.id, attempts=1)
    assert not ledger.unsaved
    assert on_disk(sweep)["jobs"][job.id]["state"] == "failed"


# --- more of what is not a ledger's -----------------------------------------------------------

def test_dropped_fields_are_summed_up_after_three(tmp_path, capsys):
    entry = {"state": 1, "backend": 2, "output_dir": "a\0b", "pid": "12", "gpus": "0",
             "mine": {"kept": True}}
    sweep = ledger_at(tmp_path, json.dumps({"sweep": 5, "spec": "s.yaml", "jobs": {"j": entry},
                                            "extra": [1]}))
    ledger = Ledger(sweep)
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (f"sweep: warning: {sweep / LEDGER}: dropped what is not a ledger's: "
                    "sweep (int, not a string); job j: state (int, not str); "
                    "job j: backend (int, not str) (and 3 more)")
    assert ledger.jobs == {"j": {"mine": {"kept": True}}}  # an unknown field is kept
    assert ledger.data["spec"] == "s.yaml" and "sweep" not in ledger.data
    assert ledger.data["extra"] == [1]


def test_a_nul_in_a_path_is_dropped(tmp_path, capsys):
    sweep = ledger_at(tmp_path, json.dumps({"jobs": {"j": {"state": "failed",
                                                           "log": "logs/a\0b"}}}))
    assert Ledger(sweep).jobs == {"j": {"state": "failed"}}
    assert "job j: log (holds NUL)" in capsys.readouterr().err


@pytest.mark.parametrize("jid", ["a/b", "../x", "", "x" * 65, "a b"])
def test_an_entry_under_what_is_no_job_id_is_dropped(tmp_path, capsys, jid):
    sweep = ledger_at(tmp_path, json.dumps({"jobs": {jid: {"state": "failed"},
                                                     "ok-1.2_3": {"state": "failed"}}}))
    assert set(Ledger(sweep).jobs) == {"ok-1.2_3"}
    assert "(not a job id)" in capsys.readouterr().err


def test_nulls_are_kept_and_a_clean_ledger_says_nothing(tmp_path, capsys):
    sweep = ledger_at(tmp_path, json.dumps({"sweep": "l", "jobs": {"j": {
        "state": "failed", "scheduler_id": None, "reason": None, "output_dir": None}}}))
    assert Ledger(sweep).jobs["j"] == {"state": "failed", "scheduler_id": None, "reason": None,
                                       "output_dir": None}
    assert capsys.readouterr().err == ""


def test_an_empty_file_is_an_unreadable_ledger(tmp_path):
    sweep = ledger_at(tmp_path, "")
    with pytest.raises(UserError, match=r"unreadable ledger \(.*\); move it aside"):
        Ledger(sweep)
