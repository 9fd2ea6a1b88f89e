"""A tiny sweep through the local backend and the real entry point: ledger skip / rerun /
--force, a failing job, Ctrl-C, and the collected workbook."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openpyxl
import pytest
from conftest import sweep_cli, write_spec

from jobs.ledger import Ledger

SPEC = """
name: tiny
grid:
  task: [sst2]
  method: [lin, p2]
  nbits: [8]
include:
  - {{task: sst2, method: fp32}}
  - {{task: sst2, method: fp32, model_name_or_path: {finetuned}}}
base:
  model_name_or_path: {model}
  data_dir: {data}
  max_seq_length: 24
  batch_size: 32
  learning_rate: 5.0e-4
  finetune_epochs: 2
  epochs_per_stage: 0.5
  max_train_samples: 256
  logging_steps: 1000
"""


@pytest.fixture(scope="module")
def finetuned_model(tmp_path_factory):
    from quantlib.demo import write_model

    return write_model(tmp_path_factory.mktemp("ft") / "bert-sst2", num_labels=2, seed=1)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_model, demo_task, finetuned_model):
    root = tmp_path_factory.mktemp("sweep")
    spec = write_spec(root, SPEC.format(model=tiny_model, data=demo_task,
                                        finetuned=finetuned_model))
    proc = sweep_cli("launch", str(spec), "--backend", "local", cwd=root)
    return root, spec, proc


def ledger(root: Path) -> dict:
    return Ledger(root / "runs/tiny").data["jobs"]


def by_method(jobs: dict) -> dict:
    return {(e["config"]["method"], e["config"].get("model_name_or_path", "")[-9:]): e
            for e in jobs.values()}


def test_first_launch_runs_every_job(sweep):
    root, _, proc = sweep
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # lin, p2 and fp32 from the random init fine-tune once, in a shared job (jobs.sharing)
    assert "5 jobs, 0 already completed, 5 to run locally, at most 1 at once on CPU" in proc.stdout
    assert "done 5 | running 0 | failed 0 | left 0" in proc.stderr
    jobs = ledger(root)
    assert {e["state"] for e in jobs.values()} == {"completed"}
    for e in jobs.values():
        out = Path(e["output_dir"])
        assert e["attempts"] == 1 and e["exit_status"] == 0
        assert json.loads((out / "status.json").read_text())["state"] == "completed"
        assert json.loads((out / "config.json").read_text())["job_id"] in jobs
        results = json.loads((out / "eval_results.json").read_text())
        assert 0.0 <= results["eval_accuracy"] <= 1.0
        assert (out / "eval_results.txt").read_text().startswith("acc = ")
        assert Path(e["log"]).read_text().count("jobs.runtime: completed") == 1


def test_quantized_jobs_are_fully_quantized(sweep):
    root, _, _ = sweep
    for e in ledger(root).values():
        results = json.loads((Path(e["output_dir"]) / "eval_results.json").read_text())
        assert results["compression_ratio"] == pytest.approx(
            results["fp32_size_mb"] / results["model_size_mb"])
        if e["config"]["method"] in ("lin", "p2"):
            assert results["quantized_fraction"] == 1.0
            assert results["max_distinct_values"] <= results["level_limit"]
            assert results["finetune_ran"] is True  # random init: fine-tuned in FP32 first
            assert results["inq_scale"] == "max" and 0 <= results["zero_fraction"] < 1
            assert results["compression_ratio"] > 1.5  # the encoder's Linears at 8 bits
        else:
            assert results["compression_ratio"] == 1.0


def test_finetuned_checkpoint_skips_finetuning(sweep):
    root, _, _ = sweep
    entry = by_method(ledger(root))[("fp32", "bert-sst2")]
    results = json.loads((Path(entry["output_dir"]) / "eval_results.json").read_text())
    assert results["finetuned_checkpoint"] is True and results["finetune_ran"] is False
    assert "train_steps" not in results


def test_relaunch_skips_completed_and_reruns_missing(sweep):
    root, spec, _ = sweep
    again = sweep_cli("launch", str(spec), "--backend", "local", cwd=root)
    assert again.returncode == 0
    assert "5 jobs, 5 already completed (rerun: --force), 0 to run" in again.stdout
    lin = next(e for e in ledger(root).values() if e["config"]["method"] == "lin")
    (Path(lin["output_dir"]) / "eval_results.json").unlink()  # its results are gone
    rerun = sweep_cli("launch", str(spec), "--backend", "local", cwd=root)
    assert rerun.returncode == 0, rerun.stderr
    # the shared fine-tuning completed: not run again, lin resumes from its checkpoint
    assert "4 already completed" in rerun.stdout and "1 to run" in rerun.stdout
    after = ledger(root)
    assert [e["attempts"] for e in after.values()].count(2) == 1
    assert after[[k for k, e in after.items() if e["attempts"] == 2][0]]["config"]["method"] \
        == "lin"


def test_failed_job_is_recorded_and_rerun(tmp_path, tiny_model):
    spec = write_spec(tmp_path, f"""
name: broken
grid: {{task: [sst2], method: [fp32]}}
base: {{model_name_or_path: {tiny_model}, data_dir: {tmp_path}/no-such-dir}}
""")
    # --no-prefetch: the missing data_dir reaches the job (else the launch refuses it)
    first = sweep_cli("launch", str(spec), "--no-prefetch", cwd=tmp_path)
    assert first.returncode == 1
    assert "0 completed, 1 failed" in first.stdout
    assert "failed:" in first.stdout and "FileNotFoundError" in first.stdout
    entry = next(iter(Ledger(tmp_path / "runs/broken").data
                      ["jobs"].values()))
    assert entry["state"] == "failed" and entry["exit_status"] == 1
    assert "no-such-dir is not a directory" in entry["reason"]
    status = json.loads((Path(entry["output_dir"]) / "status.json").read_text())
    assert status["state"] == "failed"
    second = sweep_cli("launch", str(spec), "--no-prefetch", cwd=tmp_path)
    assert "0 already completed" in second.stdout and "1 to run" in second.stdout
    entry = next(iter(Ledger(tmp_path / "runs/broken").data
                      ["jobs"].values()))
    assert entry["attempts"] == 2


def test_force_reruns_everything(tmp_path, tiny_model, demo_task):
    spec = write_spec(tmp_path, f"""
name: forced
grid: {{task: [sst2], method: [fp32]}}
base: {{model_name_or_path: {tiny_model}, data_dir: {demo_task}, finetune_epochs: 0.25,
        max_train_samples: 64, max_eval_samples: 32}}
""")
    assert sweep_cli("launch", str(spec), cwd=tmp_path).returncode == 0
    forced = sweep_cli("launch", str(spec), "--force", cwd=tmp_path)
    assert forced.returncode == 0 and "1 to run" in forced.stdout
    entry = next(iter(Ledger(tmp_path / "runs/forced").data
                      ["jobs"].values()))
    assert entry["attempts"] == 2 and entry["state"] == "completed"


def test_ctrl_c_marks_running_jobs_interrupted(tmp_path, tiny_model, demo_task):
    spec = write_spec(tmp_path, f"""
name: stopped
grid: {{task: [sst2], method: [fp32], seed: [1, 2]}}
base: {{model_name_or_path: {tiny_model}, data_dir: {demo_task}, finetune_epochs: 500,
        logging_steps: 1}}
""")
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "launch", str(spec)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    ledger_path = tmp_path / "runs/stopped/ledger.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the first job is training
        if ledger_path.exists():
            jobs = Ledger(ledger_path.parent).jobs
            running = [e for e in jobs.values() if e["state"] == "running"]
            # training (the trainer logs its loss every step), not still preparing the data
            if running and "'loss'" in Path(running[0]["log"]).read_text(errors="replace"):
                break
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the job never started training")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "interrupted" in err
    states = sorted(e["state"] for e in Ledger(ledger_path.parent).jobs.values())
    assert states == ["interrupted", "pending"]  # the second job never started
    entry = next(e for e in Ledger(ledger_path.parent).jobs.values()
                 if e["state"] == "interrupted")
    status = json.loads((Path(entry["output_dir"]) / "status.json").read_text())
    assert status["state"] == "interrupted" and status["reason"] == "SIGINT"
    assert os.path.exists(entry["log"])


def test_collected_workbook(sweep):
    root, _, _ = sweep
    out = root / "tiny.xlsx"
    proc = sweep_cli("collect", str(root / "runs/tiny"), "--to", "xlsx", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("4 jobs (4 completed)")
    wb = openpyxl.load_workbook(out)
    rows = [[c.value for c in r] for r in wb["measurements"].iter_rows()]
    titles = [r[0] for r in rows if r and r[-1] == "Bits" or (r and r[1:3] == [32, "Bits"])]
    assert [t.split(" (")[0] for t in titles] == ["Power of 2", "Linear", "FP32", "FP32"]
    assert rows[2][0] == "SST-2(acc)" and isinstance(rows[2][1], float)
    assert len(list(wb["runs"].iter_rows())) == 5


def test_status_of_a_finished_local_sweep(sweep):
    root, _, _ = sweep
    proc = sweep_cli("status", str(root / "runs/tiny"), cwd=root)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1].split()[:6] == ["job", "id", "task", "method", "nbits", "scheduler"]
    assert lines[-1] == "5 jobs: 5 completed"  # with the shared fine-tuning
    assert all(" completed " in line for line in lines[2:-1])
