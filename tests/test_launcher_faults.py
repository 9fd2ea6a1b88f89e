"""Faults around the local launcher, from the user's side (real processes, real signals):

- a launcher killed outright leaves its jobs running: `status` says so (orphaned), the relaunch
  adopts them and never starts a second copy;
- a second run of a job whose directory is held is refused before it writes anything;
- a read-only logs/ or sweep directory, a full disk: one line, exit status 2, states stay true,
  and a job that failed for a full disk says so (read-only and full file systems are made in a
  private mount namespace, so that they hold for root too).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY_BASE, write_spec
from sweepfiles import sweep_configs

from jobs.ledger import Ledger

SLOW = """
name: faults
grid: {{task: [sst2], method: [fp32], seed: [1, 2]}}
resources: {{setup: ["{setup}"]}}
""" + TINY_BASE
NO_SETUP = "sleep 0"


def gated(release: Path) -> str:
    """A setup line that holds the job until `release` exists (the test makes it once it has
    seen what it needs), not for a fixed time that the test's own calls must beat; bounded
    (300 s) so that a test that never releases it does not leave it waiting forever."""
    return (f"i=0; until [ -e {shlex.quote(str(release))} ] || [ $i -ge 1500 ]; do sleep 0.2; "
            "i=$((i + 1)); done")


def cli(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def status_rows(cwd: Path) -> dict[str, list[str]]:
    out = cli(cwd, "status", "runs/faults").stdout.splitlines()
    return {line.split()[0]: line.split() for line in out[2:] if len(line.split()) > 6}


def wait_for(what, timeout: float, message: str):
    """Poll until what() is truthy (an event, not a fixed sleep); generous bounds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(message)


@pytest.fixture
def reaper():
    """Process groups a test starts are killed at its end, pass or fail."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def test_a_killed_launcher_s_jobs_are_adopted_not_run_twice(tmp_path, tiny_model, demo_task,
                                                             reaper):
    release = tmp_path / "release"
    spec = write_spec(tmp_path, SLOW.format(setup=gated(release), model=tiny_model,
                                            data=demo_task))
    launcher = subprocess.Popen([sys.executable, "-m", "jobs.cli", "launch", str(spec),
                                 "--max-parallel", "2"], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger_dir = tmp_path / "runs/faults"

    def both_running():
        if not (ledger_dir / "ledger.json").exists():
            return None
        jobs = Ledger(ledger_dir).jobs
        pids = [e.get("pid") for e in jobs.values() if e.get("state") == "running"]
        return pids if len(pids) == 2 and all(pids) else None

    pids = wait_for(both_running, 120, "the two jobs never started")
    reaper.extend(pids)  # each job leads its own process group
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    rows = status_rows(tmp_path)
    assert [r[5] for r in rows.values()] == ["running", "running"], rows
    long = cli(tmp_path, "status", "runs/faults", "--long").stdout
    assert long.count("a relaunch adopts it") == 2, long

    relaunch = subprocess.Popen([sys.executable, "-m", "jobs.cli", "launch", str(spec),
                                 "--max-parallel", "2"], cwd=tmp_path, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []
    for line in relaunch.stdout:  # it says what it adopts, then waits for the jobs
        seen.append(line)
        if "still running" in line:
            break
    release.write_text("go")  # the jobs end only now: adopted while they ran
    rest, err = relaunch.communicate(timeout=600)
    again = subprocess.CompletedProcess(relaunch.args, relaunch.returncode, "".join(seen) + rest,
                                        err)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 to run" in again.stdout and "2 still running" in again.stdout, again.stdout
    jobs = Ledger(ledger_dir).jobs
    for entry in jobs.values():
        assert entry["state"] == "completed", entry
        log = Path(entry["log"]).read_text()
        assert log.count("quantsweep: job ") == 1, log  # started once, by the first launcher
        assert log.count("jobs.runtime: completed") == 1, log
    assert sorted(e["pid"] for e in jobs.values() if e.get("pid")) == []  # all finished
    assert "adopted" in again.stderr
    assert [r[5] for r in status_rows(tmp_path).values()] == ["completed", "completed"]


def test_a_second_run_of_a_running_job_is_refused(tmp_path, tiny_model, demo_task):
    spec = write_spec(tmp_path, SLOW.format(setup=NO_SETUP, model=tiny_model, data=demo_task))
    assert cli(tmp_path, "launch", str(spec), "--dry-run").returncode == 0
    first = sorted(sweep_configs(tmp_path / "runs/faults").values(), key=lambda c: c["job_id"])[0]
    config = tmp_path / "config.json"  # the job's config as a file of its own
    config.write_text(json.dumps(first))
    out_dir = Path(first["output_dir"])
    out_dir.mkdir(parents=True)
    from jobs.runtime import _job_lock

    with _job_lock(out_dir):  # this process runs the job
        second = subprocess.run([sys.executable, "-m", "jobs.runtime", str(config)],
                                capture_output=True, text=True, timeout=120)
    assert second.returncode == 3, second.stderr
    assert "already running there (pid" in second.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == [".run.lock"]  # nothing written


def _namespaces_work() -> bool:
    try:
        return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


needs_namespace = pytest.mark.skipif(not _namespaces_work(),
                                     reason="unshare --user --mount is not allowed here")


def in_namespace(cwd: Path, script: str) -> subprocess.CompletedProcess:
    """Run a shell script as root of a private user and mount namespace (mounts it makes are
    seen by nobody else and end with it)."""
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-euc",
                           script], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def _sweep_cmd(*args: str) -> str:
    return shlex.join([sys.executable, "-m", "jobs.cli", *args])


@needs_namespace
@pytest.mark.parametrize("where", ["logs", "sweep"])
def test_a_read_only_directory_is_one_line(tmp_path, tiny_model, demo_task, where):
    spec = write_spec(tmp_path, SLOW.format(setup=NO_SETUP, model=tiny_model, data=demo_task))
    target = tmp_path / "runs/faults" / ("logs" if where == "logs" else "")
    target.mkdir(parents=True)
    if where == "sweep":  # it ran before: its ledger and results must stay as they are
        assert cli(tmp_path, "launch", str(spec)).returncode == 0
    before = {p: p.read_bytes() for p in (tmp_path / "runs").rglob("*") if p.is_file()}
    proc = in_namespace(tmp_path, f"mount --bind {shlex.quote(str(target))} "
                                  f"{shlex.quote(str(target))}\n"
                                  f"mount -o remount,bind,ro {shlex.quote(str(target))}\n"
                                  + _sweep_cmd("launch", str(spec), "--force"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("sweep: error: ") and "read-only file system" in line, line
    assert "Traceback" not in proc.stderr
    status = cli(tmp_path, "status", "runs/faults")
    assert status.returncode == 0, status.stderr
    rows = status_rows(tmp_path)
    want = "completed" if where == "sweep" else "missing"  # never started: not pending
    assert [r[5] for r in rows.values()] == [want, want], status.stdout
    if where == "sweep":  # nothing there was touched
        assert {p: p.read_bytes() for p in before} == before


@needs_namespace
def test_a_job_on_a_full_disk_says_so(tmp_path, tiny_model, demo_task):
    spec = write_spec(tmp_path, SLOW.format(setup=NO_SETUP, model=tiny_model, data=demo_task)
                      .replace("seed: [1, 2]", "seed: [1]"))
    assert cli(tmp_path, "launch", str(spec), "--dry-run").returncode == 0
    out_dir = Path(next(iter(sweep_configs(tmp_path / "runs/faults").values()))["output_dir"])
    out_dir.mkdir(parents=True)
    q = shlex.quote(str(out_dir))
    proc = in_namespace(tmp_path, f"mount -t tmpfs -o size=16k tmpfs {q}\n"
                                  f"head -c 16384 /dev/zero > {q}/filler 2>/dev/null || true\n"
                                  + _sweep_cmd("launch", str(spec)) + " || echo rc=$?")
    assert "rc=1" in proc.stdout, proc.stdout + proc.stderr  # the job failed
    assert "Traceback" not in proc.stdout + proc.stderr
    (entry,) = Ledger(tmp_path / "runs/faults").jobs.values()
    assert entry["state"] == "failed" and "disk full" in entry["reason"], entry
    assert "disk full" in proc.stdout  # the launcher's summary names the reason
    rows = status_rows(tmp_path)  # outside the namespace the job wrote nothing
    assert [r[5] for r in rows.values()] == ["failed"]
    assert "disk full" in cli(tmp_path, "status", "runs/faults", "--long").stdout


def test_processes_a_test_starts_are_found_for_the_reaper():
    """conftest's finaliser kills what a test started, by the token in their environment, even
    in a session of their own (as local jobs and the LSF stand-in's dispatchers are)."""
    from conftest import TOKEN_VAR, processes_with

    child = subprocess.Popen(["bash", "-c", "sleep 120"], start_new_session=True)
    try:
        assert child.pid in processes_with(os.environ[TOKEN_VAR])
        assert child.pid not in processes_with("another-token")
    finally:
        child.kill()
        child.wait()
