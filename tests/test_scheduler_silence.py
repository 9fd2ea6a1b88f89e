"""A scheduler that does not answer is not evidence: a status query that fails, hangs, answers
"busy" or prints what does not parse leaves every job `unknown` (never lost), a relaunch then
submits nothing (one line, exit 2, unless --force), and once the scheduler answers again the
states are right. In-process against scripted commands, then on the real schedulers: volclava
(its mbatchd frozen, then killed and restarted by sbatchd) and the test SLURM (its slurmdbd
frozen)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import LSF_DIR, SLURM_CONF, recording, write_spec

from jobs.backends.base import NotAnswered, run_query
from jobs.ledger import Ledger

BUSY_ANSWERS = [
    ("LSF is processing your request. Please wait ...", 255),
    ("Batch system concurrent query limit exceeded", 255),
    ("batch system daemon not responding ... still trying", 255),
    ("sacct: error: slurm_persist_conn_open_without_init: failed to open persistent "
     "connection to host:localhost:6819: Connection refused", 1),
    ("sacct: error: Socket timed out on send/recv operation", 1),
]


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def quick(monkeypatch):
    """Short query timeouts and retries, so that a silent scheduler costs seconds here."""
    monkeypatch.setenv("QUANTSWEEP_QUERY_TIMEOUT_S", "1")
    monkeypatch.setenv("QUANTSWEEP_QUERY_RETRIES", "0.2,0.4")


@pytest.mark.parametrize("text, rc", BUSY_ANSWERS)
def test_busy_answers_are_no_answer(tmp_path, quick, text, rc):
    # a busy mbatchd prints an ERROR record for every id as well: "not found" is not believed
    record = json.dumps({"RECORDS": [{"JOBID": "5", "ERROR": "Job <5> is not found"}]})
    cmd = script(tmp_path / "q", f"echo '{record}'; echo '{text}' >&2; exit {rc}")
    with pytest.raises(NotAnswered, match=text.split()[0]):
        run_query([str(cmd)], accept_rc=(0, 255), parse=json.loads)
    calls = tmp_path / "calls"
    counted = script(tmp_path / "c", f"echo x >> {calls}; echo '{text}' >&2; exit {rc}")
    with pytest.raises(NotAnswered):
        run_query([str(counted)], accept_rc=(0, 255))
    assert len(calls.read_text().split()) == 3  # retried with backoff, then given up


def test_hangs_garbage_and_errors_are_no_answer_in_bounded_time(tmp_path, quick):
    for body in ("sleep 30", "echo '<html>proxy error</html>'", "echo 'oops' >&2; exit 3",
                 "exit 0"):
        cmd = script(tmp_path / "q", body)
        start = time.monotonic()
        with pytest.raises(NotAnswered):
            run_query([str(cmd)], parse=lambda out: json.loads(out) if out else json.loads("x"))
        assert time.monotonic() - start < 30, body  # bounded: 3 attempts of 1 s and 2 waits
    good = script(tmp_path / "ok", "echo '{\"RECORDS\": []}'; exit 255")
    assert run_query([str(good)], accept_rc=(0, 255), parse=json.loads) == {"RECORDS": []}


def _fake_lsf(tmp_path: Path, mode: Path) -> Path:
    """bsub / bjobs / bhist / bkill that record their calls; bjobs answers as `mode` says."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    script(bin_dir / "bsub", f'echo "bsub $*" >> {calls}; n=$(wc -l < {calls}); '
                             'echo "Job <$((700 + n))> is submitted to queue <normal>."')
    script(bin_dir / "bkill", f'echo "bkill $*" >> {calls}')
    script(bin_dir / "bhist", 'echo "No matching job found"; exit 255')
    script(bin_dir / "lsid", 'echo "volclava project 2.2, Dec  1 2026"')
    script(bin_dir / "bjobs", f"""echo "bjobs $*" >> {calls}
case "$(cat {mode})" in
  busy) echo "LSF is processing your request. Please wait ..." >&2; exit 255 ;;
  hang) sleep 30 ;;
  garbage) echo "Segmentation fault" ;;
  unknown) echo '{{"RECORDS": [{{"JOBID": "701", "ERROR": "Job <701> is not found"}}]}}'
           exit 255 ;;
  *) echo '{{"RECORDS": [{{"JOBID": "701", "STAT": "RUN", "JOB_NAME": "x[1]"}},
       {{"JOBID": "701", "STAT": "PEND", "JOB_NAME": "x[2]"}}]}}' ;;
esac""")
    return bin_dir


SPEC = """
name: quiet
grid: {task: [sst2], method: [fp32], seed: [1, 2]}
base: {model_name_or_path: /nonexistent/model, data_dir: /nonexistent/data}
resources: {cpus: 1, mem: 1000, time: 20}
"""


def test_a_silent_lsf_loses_no_job_and_nothing_is_submitted_twice(tmp_path, quick,
                                                                   monkeypatch, capsys):
    from jobs.cli import main

    mode = tmp_path / "mode"
    mode.write_text("ok")
    monkeypatch.setenv("PATH", f"{_fake_lsf(tmp_path, mode)}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    from jobs.backends import lsf

    lsf._lsid_cache.clear()
    spec = write_spec(tmp_path, SPEC)
    assert main(["launch", str(spec), "--backend", "lsf", "--no-prefetch"]) == 0
    calls = tmp_path / "calls"
    assert sum(1 for c in calls.read_text().splitlines() if c.startswith("bsub")) == 1
    ledger = Ledger(tmp_path / "runs/quiet")
    for entry in ledger.jobs.values():  # submitted long ago: a forgotten job would be lost
        entry["submitted"] = "2000-01-01T00:00:00+0000"
    ledger.save()
    for silence in ("busy", "garbage"):  # a hang: the unit test above, and volclava frozen
        mode.write_text(silence)
        capsys.readouterr()
        assert main(["status", "runs/quiet", "--long"]) == 0
        out = capsys.readouterr().out
        assert "2 jobs: 2 unknown" in out, (silence, out)
        assert "the scheduler did not answer" in out and "lost" not in out
        assert main(["launch", str(spec), "--backend", "lsf", "--no-prefetch"]) == 2
        err = capsys.readouterr().err
        assert "cannot be established" in err and "nothing was submitted" in err
        assert len(err.strip().splitlines()) == 1
        assert sum(1 for c in calls.read_text().splitlines() if c.startswith("bsub")) == 1
        cancel = main(["cancel", "runs/quiet"])  # unknown is not pending: no bkill on a guess
        assert cancel == 0 and "bkill" not in calls.read_text()
    mode.write_text("ok")  # it answers again: the states are right
    capsys.readouterr()
    assert main(["status", "runs/quiet"]) == 0
    assert "2 jobs: 1 pending, 1 running" in capsys.readouterr().out
    mode.write_text("unknown")  # it answers that it does not know them, no history, no files
    assert main(["status", "runs/quiet", "--long"]) == 0
    out = capsys.readouterr().out
    assert "2 jobs: 2 failed" in out and "lost" in out


def test_a_ledger_id_is_never_an_option_or_every_job(tmp_path, quick, monkeypatch, capsys):
    """`0` is every job of the user to bkill, `-u` an option: ids read back are checked."""
    from jobs.cli import main

    mode = tmp_path / "mode"
    mode.write_text("ok")
    monkeypatch.setenv("PATH", f"{_fake_lsf(tmp_path, mode)}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, SPEC)
    assert main(["launch", str(spec), "--backend", "lsf", "--no-prefetch"]) == 0
    ledger = Ledger(tmp_path / "runs/quiet")
    for entry, bad in zip(ledger.jobs.values(), ["0", "-u all"]):
        entry["scheduler_id"] = bad
    ledger.save()
    assert main(["cancel", "runs/quiet"]) == 0
    called = (tmp_path / "calls").read_text()
    assert "bkill" not in called and "bjobs -a -o jobid stat job_name -json 0" not in called


# --- the real schedulers ------------------------------------------------------------------
# jobs that must still be running after the freeze, however fast the machine: they would train
# for hours; each test cancels them at its end (the scheduler fixtures too, pass or fail), and
# nothing waits for them to finish
LONG = """
name: {name}
grid: {{task: [sst2], method: [fp32], seed: [1, 2]}}
base:
  model_name_or_path: {model}
  data_dir: {data}
  finetune_epochs: 100000
  max_train_samples: 64
  max_eval_samples: 32
resources: {{cpus: 1, mem: 1000, time: 30}}
"""


def cli(env, cwd, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def totals(env, cwd, name) -> str:
    proc = cli(env, cwd, "status", name, "--long")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def wait_totals(env, cwd, name, want: str, seconds=180) -> str:
    deadline = time.monotonic() + seconds
    while True:
        out = totals(env, cwd, name)
        if want in out:
            return out
        assert time.monotonic() < deadline, out
        time.sleep(2)


def silence_scenario(env, tmp_path, name, backend, freeze, thaw, count_submissions):
    """Jobs run; the scheduler's state query is frozen (and, on LSF, its daemon killed): every
    job is unknown, the relaunch refuses, nothing is submitted twice; then status is right."""
    ledger_path = tmp_path / "runs" / name
    wait_totals(env, tmp_path, name, "2 jobs: 2 running")
    ledger = Ledger(ledger_path)
    for entry in ledger.jobs.values():  # long ago: a job read as forgotten would be lost
        entry["submitted"] = "2000-01-01T00:00:00+0000"
    ledger.save()
    quick = {**env, "QUANTSWEEP_QUERY_TIMEOUT_S": "3", "QUANTSWEEP_QUERY_RETRIES": "0.5"}
    before = count_submissions()
    freeze()
    try:
        out = totals(quick, tmp_path, name)
        assert "2 jobs: 2 unknown" in out and "the scheduler did not answer" in out, out
        again = cli(quick, tmp_path, "launch", str(tmp_path / "spec.yaml"), "--backend",
                    backend, "--no-prefetch")
        assert again.returncode == 2 and "cannot be established" in again.stderr, again.stderr
        assert count_submissions() == before
    finally:
        thaw()
    out = wait_totals(env, tmp_path, name, "2 jobs: 2 running", seconds=240)
    assert "lost" not in out
    relaunch = cli(env, tmp_path, "launch", str(tmp_path / "spec.yaml"), "--backend", backend,
                   "--no-prefetch")
    assert relaunch.returncode == 0 and "nothing to submit" in relaunch.stdout
    assert count_submissions() == before


def _pids_of(exe: Path) -> list[int]:
    """The processes running this very executable (our private install: no other has it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "exe") == str(exe):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_volclava_frozen_then_restarted(volclava, tmp_path, tiny_model, demo_task):
    spec = write_spec(tmp_path, LONG.format(name="silent", model=tiny_model, data=demo_task))
    env, calls = recording(volclava, tmp_path, "bsub")
    launched = cli(env, tmp_path, "launch", str(spec), "--backend", "lsf", "--no-prefetch")
    assert launched.returncode == 0, launched.stderr
    mbatchd = LSF_DIR / "volclava" / "sbin" / "mbatchd"

    def count() -> int:
        return len(calls.read_text().splitlines()) if calls.exists() else 0

    def freeze():  # mbatchd stopped: bjobs hangs
        for pid in _pids_of(mbatchd):
            os.kill(pid, signal.SIGSTOP)

    def thaw():  # ... and then killed: bjobs says "not responding" until sbatchd restarts it
        for pid in _pids_of(mbatchd):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
        quick = {**env, "QUANTSWEEP_QUERY_TIMEOUT_S": "3", "QUANTSWEEP_QUERY_RETRIES": "0.5"}
        out = totals(quick, tmp_path, "silent")
        assert "lost" not in out and "failed" not in out, out

    silence_scenario(env, tmp_path, "silent", "lsf", freeze, thaw, count)
    cli(env, tmp_path, "cancel", "silent")


@pytest.mark.slow
def test_slurm_accounting_frozen(slurm, tmp_path, tiny_model, demo_task):
    spec = write_spec(tmp_path, LONG.format(name="silent", model=tiny_model, data=demo_task))
    launched = cli(slurm, tmp_path, "launch", str(spec), "--backend", "slurm", "--no-prefetch")
    assert launched.returncode == 0, launched.stderr
    pid_file = SLURM_CONF.parent / "run" / "slurmdbd.pid"
    pid = int(pid_file.read_text().split()[0])

    def count() -> int:
        return len(Ledger(tmp_path / "runs/silent").jobs) and sum(
            e.get("attempts", 0) for e in Ledger(tmp_path / "runs/silent").jobs.values())

    silence_scenario(slurm, tmp_path, "silent", "slurm", lambda: os.kill(pid, signal.SIGSTOP),
                     lambda: os.kill(pid, signal.SIGCONT), count)
    cli(slurm, tmp_path, "cancel", "silent")
