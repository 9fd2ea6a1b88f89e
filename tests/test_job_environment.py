"""resources.env / resources.setup / resources.python: rendered into every backend's scripts
(local, LSF and SLURM dry runs, and what launch submits through submitit and our LSF plugin),
values quoted, setup lines as written, before the job starts; the offline hub variables after
them when the launch prefetched."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from conftest import sweep_cli, write_spec

from jobs.scripts import env_lines
from jobs.spec import load_spec

SPEC = """
name: envs
finetune_sharing: false  # two scripts with the env lines (sharing: tests/test_finetune_sharing.py)
grid: {task: [mrpc], method: [lin, p2], nbits: [4]}
resources:
  env: {HF_HOME: "/scratch/my hf", TAG: "a'b $(x)", N: 3}
  setup: ["module load cuda/12.1", "export FROM_SETUP=1"]
"""
EXPECTED = ["export HF_HOME='/scratch/my hf'", "export TAG='a'\"'\"'b $(x)'", "export N=3",
            "module load cuda/12.1", "export FROM_SETUP=1"]


def test_dry_run_scripts_of_every_backend(tmp_path):
    spec = write_spec(tmp_path, SPEC)
    for backend in ("local", "lsf", "slurm"):
        proc = sweep_cli("launch", str(spec), "--backend", backend, "--dry-run", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    scripts = sorted((tmp_path / "runs/envs/scripts").glob("*.sh"))
    assert len(scripts) == 3  # the local script of both jobs, an LSF and a SLURM array
    for script in scripts:
        lines = script.read_text().splitlines()
        start = lines.index(EXPECTED[0])
        assert lines[start:start + len(EXPECTED)] == EXPECTED, script.name
        offline = lines[start + len(EXPECTED)]
        assert offline.startswith("export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1")
        assert lines.index("set -euo pipefail") > start  # setup runs before strict mode
    assert shlex.split(EXPECTED[1])[1] == "TAG=a'b $(x)"  # the quoting round-trips


def test_the_exports_reach_the_job(tmp_path):
    """Executed, the local script exports the values exactly (no expansion)."""
    fake = tmp_path / "fakepy"
    fake.write_text('#!/bin/bash\nenv > "$FAKE_OUT"\n')
    fake.chmod(0o755)
    spec = write_spec(tmp_path, SPEC.replace("module load cuda/12.1", "true")
                      + f"  python: {fake}\n")
    assert sweep_cli("launch", str(spec), "--dry-run", cwd=tmp_path).returncode == 0
    script = next((tmp_path / "runs/envs/scripts").glob("*.sh"))
    out = tmp_path / "env.txt"
    subprocess.run(["bash", str(script)], cwd=tmp_path, check=True,
                   env={**os.environ, "FAKE_OUT": str(out), "QUANTSWEEP_TASK": "1"})
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert env["HF_HOME"] == "/scratch/my hf" and env["TAG"] == "a'b $(x)"
    assert env["N"] == "3" and env["FROM_SETUP"] == "1" and env["HF_HUB_OFFLINE"] == "1"


def test_the_submitit_plugin_runs_the_same_lines_first(tmp_path, monkeypatch):
    """`launch --backend lsf` submits the dry run's scripts themselves (compared with what
    volclava received in tests/test_cluster_sweeps.py); the submitit plugin, given the same
    lines as its shell_setup, runs them before its command."""
    from jobs.lsf import LsfExecutor

    spec = load_spec(write_spec(tmp_path, SPEC))
    spec.offline = True
    setup = env_lines(spec)
    monkeypatch.setenv("PATH", f"{Path(__file__).parent / 'lsf_standin' / 'bin'}:"
                               f"{os.environ['PATH']}")
    lsf = LsfExecutor(folder=tmp_path / "l")
    lsf.update_parameters(shell_setup=setup, dialect="openlava", jobname="envs")
    lines = lsf._make_submission_file_text("echo run", "uid").splitlines()
    start = lines.index(EXPECTED[0])
    assert lines[start:start + len(EXPECTED) + 1] == EXPECTED + [setup[-1]]
    assert min(i for i, line in enumerate(lines) if "echo run" in line) > start
