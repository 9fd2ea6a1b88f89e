"""Requeues are capped: resources.max_requeues (default 3, as submitit's max_num_timeout), and a
requeue whose checkpoint did not advance past the previous one stops the job as failed."""

from __future__ import annotations

import pytest
from conftest import write_spec

from jobs.resources import Resources, parse_resources
from jobs.runtime import _count_requeue
from jobs.spec import SpecError
from quantlib.jobdir import read_status, write_status


def preempted_at(out, step: int) -> None:
    write_status(out, "interrupted", reason=f"preempted (SIGUSR2): checkpoint at step {step}",
                 checkpoint_step=step)


def test_each_requeue_is_counted_and_the_limit_stops_the_job(tmp_path):
    for n, step in enumerate((10, 20, 30)):
        preempted_at(tmp_path, step)
        assert _count_requeue(tmp_path, 3, "77_1") == 3 - n - 1  # left after this one
    assert read_status(tmp_path)["requeues"] == 3
    preempted_at(tmp_path, 40)
    with pytest.raises(RuntimeError, match="max_requeues"):
        _count_requeue(tmp_path, 3, "77_1")
    status = read_status(tmp_path)
    assert status["state"] == "failed" and "requeued 3 times" in status["reason"]


def test_no_progress_between_requeues_fails_the_job(tmp_path):
    preempted_at(tmp_path, 0)  # the limit came before the first step: one more chance
    assert _count_requeue(tmp_path, 3, "5") == 2
    preempted_at(tmp_path, 0)
    with pytest.raises(RuntimeError, match="no progress"):
        _count_requeue(tmp_path, 3, "5")
    status = read_status(tmp_path)
    assert status["state"] == "failed"
    assert status["reason"].startswith("time limit too short: no progress between requeues")


def test_a_new_submission_counts_anew(tmp_path):
    for step in (1, 2, 3):
        preempted_at(tmp_path, step)
        _count_requeue(tmp_path, 3, "100")
    preempted_at(tmp_path, 3)  # the relaunch resubmits it: another scheduler id
    assert _count_requeue(tmp_path, 3, "200") == 2


def test_max_requeues_in_the_spec(tmp_path):
    assert Resources().max_requeues == 3
    assert parse_resources({"max_requeues": 0}, "s.yaml").max_requeues == 0
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(SpecError, match="resources.max_requeues"):
            parse_resources({"max_requeues": bad}, "s.yaml")
    from jobs.grid import expand
    from jobs.scripts import write_configs
    from jobs.spec import load_spec
    from quantlib.jobdir import read_config

    spec = load_spec(write_spec(tmp_path, "name: r\ngrid: {task: [sst2], method: [fp32]}\n"
                                          "resources: {max_requeues: 5}\n"))
    jobs = expand(spec)
    (ref,) = write_configs(spec, jobs, tmp_path / "sw").values()
    assert read_config(ref.path, ref.entry)["max_requeues"] == 5
