"""The seed study on a real LSF-family scheduler (issue: "the seed study on a real scheduler"):
sweeps/inq_mrpc.yaml's array on the test volclava (here 6 of its 24 jobs; the benchmark runs
all 24), tiny assets through a spec override — launch, status while running, cancel --where,
relaunch, collect — and a 1-minute -W run limit: checkpoint -> brequeue -> resume to the
uninterrupted results. The steps and their checks are benchmarks/seed_study_volclava.py's
(it prints the timings)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import seed_study_volclava as study  # noqa: E402

pytestmark = pytest.mark.slow


def test_the_seed_study_on_volclava(volclava, tmp_path):
    """The seed spec with two of its eight bit widths (6 jobs: CI time); the benchmark runs all
    24 (4 minutes here)."""
    env = {**volclava, "PYTHONPATH": str(study.REPO)}
    figures = study.seed_study(env, tmp_path, nbits=[2, 8])
    assert figures["completed_at_launch"] == 0  # launch returned once submitted


def test_a_run_limit_on_volclava_checkpoints_requeues_and_resumes(volclava, tmp_path):
    from quantlib.demo import write_model

    write_model(tmp_path / "tiny-bert")
    study.write_mrpc(tmp_path / "MRPC", n_train=256)
    figures = study.run_limit({**volclava, "PYTHONPATH": str(study.REPO)}, tmp_path)
    assert figures["requeues"] >= 1
