"""Array sizes from the scheduler: LSF's MAX_JOB_ARRAY_SIZE (bparams -l), SLURM's MaxArraySize
and MaxJobCount (scontrol show config) and the association's MaxSubmitJobs (sacctmgr); a spec
value overrides; a scheduler that does not say keeps 1,000. The dry run says what was read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import write_spec

from jobs.backends import lsf, slurm
from jobs.backends.lsf import read_bparams
from jobs.backends.slurm import read_config

SPEC = """
name: limits
grid: {{task: [rte], method: [fp32], seed: 1..25}}
resources: {{cpus: 1, mem: 1000, time: 20{extra}}}
"""


def fake(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text("#!/bin/bash\n" + body + "\n")
    (bin_dir / name).chmod(0o755)


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    lsf._bparams_cache.clear()
    slurm._limits_cache.clear()
    lsf._lsid_cache.clear()
    monkeypatch.setenv("QUANTSWEEP_QUERY_RETRIES", "")
    yield
    lsf._bparams_cache.clear()
    slurm._limits_cache.clear()


def test_parsing():
    assert read_bparams("The maximum number of jobs in a job array.\n"
                        "    MAX_JOB_ARRAY_SIZE = 10\n") == 10
    assert read_bparams("nothing here") is None
    conf = read_config("Configuration data as of 2026-12-01T00:00:00\n"
                       "MaxArraySize            = 1001\nMaxJobCount             = 10000\n")
    assert conf["MaxArraySize"] == "1001" and conf["MaxJobCount"] == "10000"
    with pytest.raises(ValueError):
        read_config("slurm_load_ctl_conf error: Unable to contact slurm controller")


def run_dry(tmp_path, monkeypatch, capsys, backend, extra=""):
    from jobs.cli import main

    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, SPEC.format(extra=extra))
    assert main(["launch", str(spec), "--backend", backend, "--dry-run"]) == 0
    out = capsys.readouterr().out
    return out, sorted((tmp_path / "runs/limits/scripts").glob(f"{backend}_array_*.sh"))


def test_lsf_arrays_fit_max_job_array_size(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    fake(bin_dir, "bparams", 'echo "    MAX_JOB_ARRAY_SIZE = 10"')
    fake(bin_dir, "lsid", 'echo "volclava project 2.2, Dec  1 2026"')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out, scripts = run_dry(tmp_path, monkeypatch, capsys, "lsf")
    assert "MAX_JOB_ARRAY_SIZE = 10 (bparams -l)" in out and "10 jobs per array" in out
    assert len(scripts) == 3  # 25 jobs: 10 + 10 + 5
    assert '#BSUB -J "limits.3[1-5]"' in scripts[2].read_text()


def test_a_spec_value_overrides_and_silence_keeps_1000(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(Path(os.__file__).parent))  # no scheduler commands at all
    out, scripts = run_dry(tmp_path, monkeypatch, capsys, "slurm", ", max_array_size: 12")
    assert "12 jobs per array (resources.max_array_size)" in out and len(scripts) == 3
    lsf._bparams_cache.clear()
    slurm._limits_cache.clear()
    (tmp_path / "runs").rename(tmp_path / "old")
    out, scripts = run_dry(tmp_path, monkeypatch, capsys, "slurm")
    assert "MaxArraySize not read" in out and "1000 jobs per array" in out
    assert len(scripts) == 1


def test_slurm_limits_are_read_and_said(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    fake(bin_dir, "scontrol", 'echo "MaxArraySize            = 8"; '
                              'echo "MaxJobCount             = 20"')
    fake(bin_dir, "sacctmgr", 'echo "15"')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out, scripts = run_dry(tmp_path, monkeypatch, capsys, "slurm")
    assert "MaxArraySize = 8" in out and "MaxJobCount = 20" in out
    assert "MaxSubmitJobs = 15" in out and "8 jobs per array" in out
    assert len(scripts) == 4  # 8 + 8 + 8 + 1
    assert "#SBATCH --array=0-7" in scripts[0].read_text()
