"""Checkpoint on the scheduler's warning signal (SIGUSR2), resume on the next run, and finish
with the same results as an uninterrupted run (INQ state included)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from quantlib.preemption import REQUEUE


def config(tmp_path: Path, name: str, model: Path, data: Path) -> Path:
    cfg = {"task": "sst2", "method": "lin", "nbits": 2, "model_name_or_path": str(model),
           "data_dir": str(data), "max_seq_length": 24, "batch_size": 16,
           "learning_rate": 5e-4, "finetune_epochs": 6, "epochs_per_stage": 2,
           "max_train_samples": 160, "max_eval_samples": 64, "logging_steps": 2,
           "output_dir": str(tmp_path / name), "seed": 7}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def run(path: Path, signal_after_step: int | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "quantlib.run", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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


def test_preempted_job_resumes_to_the_same_results(tmp_path, tiny_model, demo_task):
    plain = run(config(tmp_path, "plain", tiny_model, demo_task))
    assert plain.returncode == 0, plain.stdout[-2000:]

    path = config(tmp_path, "cut", tiny_model, demo_task)
    first = run(path, signal_after_step=66)  # inside the first INQ stage (60 FP32 steps)
    assert first.returncode == REQUEUE, first.stdout[-2000:]
    status = json.loads((tmp_path / "cut" / "status.json").read_text())
    assert status["state"] == "interrupted" and "preempted (SIGUSR2)" in status["reason"]
    checkpoints = sorted((tmp_path / "cut" / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / "inq_state.pt").is_file()
    step = int(checkpoints[0].name.split("-")[1])
    assert 60 < step < 100

    second = run(path)
    assert second.returncode == 0, second.stdout[-2000:]
    assert f"resuming from {checkpoints[0]}" in second.stdout
    a, b = results(tmp_path, "plain"), results(tmp_path, "cut")
    assert b["resumed_from_step"] == step
    for key in ("eval_accuracy", "eval_loss", "train_steps", "max_distinct_values"):
        assert a[key] == b[key], key
    assert not (tmp_path / "cut" / "checkpoints").exists()  # cleaned up once finished
