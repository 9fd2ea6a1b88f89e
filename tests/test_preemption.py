"""Checkpoint on the scheduler's warning signal (SIGUSR2), resume on the next run, and finish
with the same results as an uninterrupted run (INQ partition, calibrated amax, FP teacher,
EMA thresholds included)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from quantlib.preemption import REQUEUE

# 60 FP32 fine-tuning steps, then the compression stages (40 steps)
METHODS = {
    "lin": {"method": "lin", "nbits": 2, "epochs_per_stage": 2},
    # calibrated amax and the FP teacher must come back from the checkpoint
    "qat-kd": {"method": "qat-kd", "qat_epochs": 4, "kd_scale": 10.0, "num_calib_batch": 2},
    # EMA thresholds, their step counts and the delayed head must come back
    "q8bert": {"method": "q8bert", "nbits": 4, "qat_epochs": 4, "head_start_step": 10},
    # the 2:4 masks (made at the sparse stage's start) come back; the QAT stage follows
    "sparse24": {"method": "sparse24", "sparse_epochs": 2, "qat": True, "qat_epochs": 2,
                 "num_calib_batch": 2},
    # no fine-tuning stage: 100 steps of pattern lock + distillation + QAT; the masks and the
    # best epoch so far come back
    "pruneofa": {"method": "pruneofa", "epochs": 10, "qat": True, "ce_weight": 0.5},
}
# what must be equal between the interrupted and the uninterrupted run, besides the metrics
EXTRA_KEYS = {"lin": ["max_distinct_values"], "qat-kd": ["kd_loss", "calib_batches"],
              "q8bert": ["quantizers_enabled"], "sparse24": ["pruned_sparsity", "calib_batches"],
              "pruneofa": ["pruned_sparsity", "best_epoch", "epoch_history"]}
STATE_FILE = {"lin": "inq_state.pt", "qat-kd": "teacher.pt", "q8bert": None,
              "sparse24": "masks.pt", "pruneofa": "best.pt"}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A (random) BERT with an SST-2 head: a teacher checkpoint for pruneofa."""
    from quantlib.demo import write_model

    return write_model(tmp_path_factory.mktemp("teacher"), num_labels=2, seed=3)


def config(tmp_path: Path, name: str, model: Path, data: Path, method: str = "lin",
           teacher: Path | None = None) -> Path:
    extra = {"teacher_name_or_path": str(teacher)} if method == "pruneofa" else {}
    cfg = {**extra, "task": "sst2", "model_name_or_path": str(model),
           "data_dir": str(data), "max_seq_length": 24, "batch_size": 16,
           "learning_rate": 5e-4, "finetune_epochs": 6,
           "max_train_samples": 160, "max_eval_samples": 64, "logging_steps": 2,
           "output_dir": str(tmp_path / name), "seed": 7, **METHODS[method]}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def run(path: Path, signal_after_step: int | None = None) -> subprocess.CompletedProcess:
    # unbuffered: the trainer's loss lines must reach us as they are logged, not in blocks at
    # the end (then the signal would come after the last step)
    proc = subprocess.Popen([sys.executable, "-m", "jobs.runtime", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = []
    if signal_after_step is not None:
        for line in proc.stdout:  # the trainer logs every 2 steps
            out.append(line)
            if "'loss'" in line and len([x for x in out if "'loss'" in x]) * 2 >= \
                    signal_after_step:
                proc.send_signal(signal.SIGUSR2)
                break
    rest, _ = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(out) + rest)


def results(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / name / "eval_results.json").read_text())


@pytest.mark.parametrize("method", list(METHODS))
def test_preempted_job_resumes_to_the_same_results(tmp_path, tiny_model, demo_task, method,
                                                   teacher):
    plain = run(config(tmp_path, "plain", tiny_model, demo_task, method, teacher))
    assert plain.returncode == 0, plain.stdout[-2000:]

    path = config(tmp_path, "cut", tiny_model, demo_task, method, teacher)
    first = run(path, signal_after_step=66)  # inside the compression stage (60 FP32 steps)
    assert first.returncode == REQUEUE, first.stdout[-2000:]
    status = json.loads((tmp_path / "cut" / "status.json").read_text())
    assert status["state"] == "interrupted" and "preempted (SIGUSR2)" in status["reason"]
    checkpoints = sorted((tmp_path / "cut" / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1
    if STATE_FILE[method]:
        assert (checkpoints[0] / STATE_FILE[method]).is_file()
    if method in ("sparse24", "pruneofa"):
        assert (checkpoints[0] / "masks.pt").is_file()
    step = int(checkpoints[0].name.split("-")[1])
    assert 60 < step < 100

    second = run(path)
    assert second.returncode == 0, second.stdout[-2000:]
    assert f"resuming from {checkpoints[0]}" in second.stdout
    a, b = results(tmp_path, "plain"), results(tmp_path, "cut")
    assert b["resumed_from_step"] == step
    for key in ("eval_accuracy", "eval_loss", "train_steps", *EXTRA_KEYS[method]):
        assert a[key] == b[key], key
    assert not (tmp_path / "cut" / "checkpoints").exists()  # cleaned up once finished
