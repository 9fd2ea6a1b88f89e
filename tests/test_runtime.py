"""The job entry point (jobs.runtime): a failure recorded with its reason, a config it cannot
read, its usage. (Its lock: test_launcher_faults; requeues: test_requeue_limit; signals:
test_preemption; a later stage started too early: test_lsf_dependencies.)"""

from __future__ import annotations

import json

import pytest
from test_data import write_task

from jobs import runtime


def test_failure_is_recorded_with_its_reason(tmp_path, tiny_model):
    config = {"task": "rte", "method": "lin", "nbits": 4, "model_name_or_path": str(tiny_model),
              "data_dir": str(tmp_path), "output_dir": str(tmp_path / "out"),
              "quantize_modules": ["no.such.module*"]}
    write_task(tmp_path, "rte")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert runtime.main([str(path)]) == 1
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert status["state"] == "failed"
    assert "quantize_modules matches no nn.Linear" in status["reason"]
    assert not (tmp_path / "out" / "eval_results.json").exists()


def test_unreadable_config(tmp_path, capsys):
    assert runtime.main([str(tmp_path / "missing.json")]) == 2
    assert "cannot read the job config" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["a", "b"]])
def test_usage(argv):
    assert runtime.main(argv) == 2
