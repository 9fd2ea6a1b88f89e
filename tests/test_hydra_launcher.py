"""`hydra/launcher=submitit_lsf`: a Hydra multirun app runs as one LSF job array (on the LSF
stand-in), each element one Hydra job with its own output directory and return value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("hydra")

HERE = Path(__file__).parent
STANDIN = HERE / "lsf_standin" / "bin"


def test_a_multirun_is_one_lsf_array(tmp_path):
    env = {**os.environ, "PATH": f"{STANDIN}{os.pathsep}{os.environ['PATH']}",
           "LSF_STANDIN_DIR": str(tmp_path / "lsf-state"),
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE / "hydra_app")])}
    sweep = tmp_path / "multirun"
    proc = subprocess.run([sys.executable, str(HERE / "hydra_app" / "square.py"), "-m",
                           "hydra/launcher=submitit_lsf", "x=2,3,4", f"hydra.sweep.dir={sweep}",
                           "hydra.launcher.timeout_min=5", "hydra.launcher.array_limit=2",
                           "hydra.launcher.queue=short"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    submitted = list((tmp_path / "lsf-state" / "jobs").glob("*.json"))
    assert len(submitted) == 1  # one bsub for the whole sweep
    job = json.loads(submitted[0].read_text())
    assert job["array"] and sorted(job["elements"]) == ["1", "2", "3"]
    assert job["limit"] == 2 and job["queue"] == "short"
    results = sorted((json.loads((sweep / str(n) / "result.json").read_text())
                      for n in range(3)), key=lambda r: r["x"])
    assert [r["square"] for r in results] == [4, 9, 16]
    assert {r["lsf_job"] for r in results} == {job["jobid"]}
    assert sorted(r["lsf_index"] for r in results) == ["1", "2", "3"]


def test_the_launcher_has_every_lsf_option_with_the_spec_s_default():
    from hydra_plugins.quantsweep_lsf_launcher.config import LsfQueueConf
    from jobs.lsf.lsf import LSF_OPTIONS

    conf = LsfQueueConf()
    assert {k: getattr(conf, k, "missing") for k in LSF_OPTIONS} == LSF_OPTIONS
