"""The files of a sweep are the truth, and others can read them: results that cannot be read
are not a completed job (status, relaunch and collect agree); a job whose status.json is gone
is missing everywhere; every file written takes the mode the umask gives (not mkstemp's 0600)."""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_BASE, write_spec

from jobs.ledger import Ledger

SPEC = """
name: files
grid: {{task: [sst2], method: [fp32], seed: [1, 2]}}
""" + TINY_BASE


def cli(cwd, *args, umask=0o022):
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: os.umask(umask))


@pytest.fixture(scope="module")
def launched(tmp_path_factory, tiny_model, demo_task) -> Path:
    """The sweep launched once (two jobs run); each test gets its own copy of it."""
    where = tmp_path_factory.mktemp("launched")
    spec = write_spec(where, SPEC.format(model=tiny_model, data=demo_task))
    proc = cli(where, "launch", str(spec))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return where


@pytest.fixture
def sweep(tmp_path, launched):
    """A copy of the launched sweep (its spec and runs/): paths inside a sweep are relative to
    it, which test_a_sweep_moved_or_copied_is_itself checks on such a copy."""
    import shutil

    shutil.copytree(launched, tmp_path, dirs_exist_ok=True)
    spec = tmp_path / "spec.yaml"
    ledger = Ledger(tmp_path / "runs/files").data["jobs"]
    dirs = {e["config"]["seed"]: Path(e["output_dir"]) for e in ledger.values()}
    assert all(tmp_path in d.parents for d in dirs.values())  # the copy's own jobs
    return tmp_path, spec, dirs


def states(cwd) -> list[str]:
    out = cli(cwd, "status", "runs/files").stdout.splitlines()
    return sorted(line.split()[5] for line in out[2:-1])


@pytest.mark.parametrize("damage", ["truncated", "garbage", "array", "status gone"])
def test_unreadable_results_are_not_a_completed_job(sweep, damage):
    cwd, spec, dirs = sweep
    out = dirs[1]
    if damage == "status gone":
        (out / "status.json").unlink()
    else:
        text = (out / "eval_results.json").read_text()
        (out / "eval_results.json").write_text({"truncated": text[:len(text) // 2],
                                                "garbage": "\x00\x01 not json",
                                                "array": "[1, 2]"}[damage])
    want = "missing" if damage == "status gone" else "failed"
    assert states(cwd) == ["completed", want]
    collected = cli(cwd, "collect", "runs/files", "--to", "csv", "-o", "r.csv")
    assert collected.returncode == 0, collected.stderr
    assert "2 jobs (1 completed, 1 " in collected.stdout, collected.stdout
    again = cli(cwd, "launch", str(spec))
    assert "1 already completed" in again.stdout and "1 to run" in again.stdout, again.stdout
    assert states(cwd) == ["completed", "completed"]


def test_files_take_the_mode_the_umask_gives(sweep):
    cwd, spec, dirs = sweep
    for to in ("xlsx", "csv", "md", "html"):
        assert cli(cwd, "collect", "runs/files", "--to", to, "-o", f"r.{to}").returncode == 0
    files = [cwd / f"r.{to}" for to in ("xlsx", "csv", "md", "html")]
    files += [cwd / "runs/files/ledger.json"]
    files += [dirs[1] / name for name in ("eval_results.json", "eval_results.txt",
                                          "status.json", "config.json")]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert cli(cwd, "collect", "runs/files", "-o", "private.xlsx", umask=0o077).returncode == 0
    assert stat.S_IMODE((cwd / "private.xlsx").stat().st_mode) == 0o600


def test_a_sweep_moved_or_copied_is_itself(sweep):
    """Paths inside a sweep are relative to it: a copy collects as itself, a moved sweep's
    status, collect and relaunch find its jobs; the same job found twice counts once."""
    import shutil

    cwd, spec, dirs = sweep
    ledger_text = (cwd / "runs/files/ledger.json").read_text()
    for entry in json.loads(ledger_text)["jobs"].values():
        assert not os.path.isabs(entry["output_dir"]) and not os.path.isabs(entry["log"])
    shutil.copytree(cwd / "runs/files", cwd / "copy")
    # the copy's results differ from the original's: which one is read shows
    for out in (cwd / "copy/jobs").iterdir():
        results = json.loads((out / "eval_results.json").read_text())
        results["eval_accuracy"] = 0.125
        (out / "eval_results.json").write_text(json.dumps(results))
    for where in ("copy", "runs/files"):
        name = f"{where.replace('/', '_')}.csv"
        proc = cli(cwd, "collect", where, "--to", "csv", "-o", name)
        assert proc.returncode == 0, proc.stderr
        assert "2 jobs (2 completed" in proc.stdout, proc.stdout
        with open(cwd / name, newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert {Path(r["output_dir"]).parent.parent for r in rows} == {cwd / where}, rows
        assert [float(r["eval_accuracy"]) == 0.125 for r in rows] == [where == "copy"] * 2
    both = cli(cwd, "collect", "copy", "runs/files", "--to", "csv", "-o", "both.csv")
    assert "2 jobs (2 completed" in both.stdout, both.stdout + both.stderr
    assert "counted once" in both.stderr

    (cwd / "elsewhere").mkdir()
    shutil.move(cwd / "runs/files", cwd / "elsewhere/files")
    status = cli(cwd, "status", "elsewhere/files").stdout
    assert status.count(" completed ") == 2 and "missing" not in status, status
    assert "2 jobs (2 completed" in cli(cwd, "collect", "elsewhere/files", "--to", "csv", "-o",
                                        "moved.csv").stdout
    again = cli(cwd, "launch", str(spec), "--sweep-dir", "elsewhere/files")
    assert "2 already completed" in again.stdout and "0 to run" in again.stdout, again.stdout
    assert not (cwd / "runs/files").exists()


def test_collect_states_what_status_states(sweep):
    """A job killed without a word (its status.json still says running, its process is gone):
    status and collect both call it interrupted, and its elapsed time does not keep growing."""
    from jobs.ledger import Ledger

    cwd, spec, dirs = sweep
    out = dirs[2]
    (out / "eval_results.json").unlink()
    status = json.loads((out / "status.json").read_text())
    status.update(state="running", started="2020-01-01T00:00:00+0000", elapsed_s=None)
    (out / "status.json").write_text(json.dumps(status))
    ledger = Ledger(cwd / "runs/files")
    (jid,) = [j for j, e in ledger.jobs.items() if e["config"]["seed"] == 2]
    ledger.jobs[jid].update(state="running", pid=2 ** 22 + 7, pid_start="1")  # long gone
    ledger.save()
    rows = cli(cwd, "status", "runs/files").stdout.splitlines()
    (row,) = [r for r in rows if r.startswith(jid)]
    assert row.split()[5] == "interrupted" and row.split()[6] == "-", row
    collected = cli(cwd, "collect", "runs/files", "--to", "csv", "-o", "r.csv")
    assert "1 completed, 1 interrupted" in collected.stdout, collected.stdout
