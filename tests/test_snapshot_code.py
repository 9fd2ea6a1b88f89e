"""Jobs run the code snapshot whatever the working directory: launched from the checkout itself
(as the README says), on the local backend and through the LSF plugin, a job imports the
sweep's snapshot, not the checkout (`python -m` would put the working directory first)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY_BASE, write_spec

from jobs.ledger import Ledger
from jobs.snapshot import pythonpath_line

SPEC = """
name: fromrepo
grid: {{task: [sst2], method: [fp32]}}
resources: {{cpus: 1, mem: 1000, time: 20}}
""" + TINY_BASE
STANDIN = Path(__file__).parent / "lsf_standin" / "bin"


@pytest.mark.parametrize("backend", ["local", "lsf"])
def test_a_job_launched_from_the_checkout_runs_the_snapshot(tmp_path, tiny_model, demo_task,
                                                            backend):
    import subprocess
    import sys

    spec = write_spec(tmp_path, SPEC.format(model=tiny_model, data=demo_task))
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PATH": f"{STANDIN}{os.pathsep}{os.environ['PATH']}",
           "LSF_STANDIN_DIR": str(tmp_path / "lsf-state")}
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "launch", str(spec), "--backend",
                           backend, "--sweep-dir", str(sweep)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    deadline = time.monotonic() + 300
    while True:
        (entry,) = Ledger(sweep).data["jobs"].values()
        status_path = Path(entry["output_dir"]) / "status.json"
        status = json.loads(status_path.read_text()) if status_path.exists() else {}
        if status.get("state") in ("completed", "failed"):
            break
        assert time.monotonic() < deadline, status
        time.sleep(1)
    assert status["state"] == "completed", status
    snapshots = list((sweep / "snapshots").iterdir())
    assert status["code"] == str(snapshots[0]), (status["code"], REPO)


def test_the_setup_line_keeps_the_working_directory_off_sys_path(tmp_path):
    """What the cluster scripts run first: from a directory holding a `jobs` of its own,
    `python -m jobs.runtime` still imports the snapshot's."""
    import subprocess

    snap, cwd = tmp_path / "snap", tmp_path / "checkout"
    for root, tag in ((snap, "snapshot"), (cwd, "checkout")):
        (root / "jobs").mkdir(parents=True)
        (root / "jobs" / "__init__.py").write_text("")
        (root / "jobs" / "runtime.py").write_text(f"print({tag!r})\n")
    script = f"{pythonpath_line(snap)}\nexec {sys_executable()} -m jobs.runtime\n"
    out = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.stdout.strip() == "snapshot", out.stderr


def sys_executable() -> str:
    import shlex
    import sys

    return shlex.quote(sys.executable)
