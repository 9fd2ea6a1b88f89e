"""report_to: the HF Trainer's integrations set up per job (run name = job id, group = sweep),
offline where there is no network, and `sweep status` saying where the curves are."""

from __future__ import annotations

import importlib.util
import os

import pytest
from conftest import sweep_cli, write_spec

from jobs.ledger import Ledger
from quantlib import tracking

SPEC = """
name: curves
grid:
  task: [sst2]
  method: [fp32]
base:
  model_name_or_path: {model}
  data_dir: {data}
  max_seq_length: 16
  batch_size: 16
  finetune_epochs: 1
  max_train_samples: 64
  logging_steps: 1
  report_to: tensorboard
"""


def test_tensorboard_event_files_in_the_job_and_status_says_where(tmp_path, tiny_model,
                                                                   demo_task):
    spec = write_spec(tmp_path, SPEC.format(model=tiny_model, data=demo_task))
    proc = sweep_cli("launch", str(spec), "--backend", "local", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (entry,) = Ledger(tmp_path / "runs/curves").jobs.values()
    out = tmp_path / "runs/curves" / entry["output_dir"]
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events, sorted(p.name for p in out.iterdir())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"]
    assert len(acc.Scalars("train/loss")) == 4  # 64 samples / 16 per step, logged every step
    status = sweep_cli("status", str(tmp_path / "runs/curves"), cwd=tmp_path)
    assert "training curves (tensorboard): tensorboard --logdir runs/curves/jobs/" in status.stdout


def test_a_missing_package_is_one_clear_line(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(tracking.TrackingError, match="report_to wandb: the wandb package is "
                                                     "not installed"):
        tracking.setup("wandb", tmp_path, "abc", "sweep")


def test_wandb_offline_without_network_and_names(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(tracking, "_reachable", lambda host, timeout=3.0: False)
    for key in ("WANDB_MODE", "WANDB_DIR", "WANDB_RUN_GROUP", "WANDB_NAME", "WANDB_PROJECT"):
        monkeypatch.delenv(key, raising=False)
    env = tracking.setup("wandb", tmp_path, "0926fba252", "demo")
    assert env == {"WANDB_DIR": str(tmp_path), "WANDB_RUN_GROUP": "demo",
                   "WANDB_NAME": "0926fba252", "WANDB_PROJECT": "demo", "WANDB_MODE": "offline"}
    assert os.environ["WANDB_MODE"] == "offline"
    monkeypatch.setenv("WANDB_PROJECT", "mine")  # the user's choice wins
    monkeypatch.setenv("WANDB_MODE", "online")
    assert "WANDB_PROJECT" not in tracking.setup("wandb", tmp_path, "x", "demo")


def test_mlflow_file_store_in_the_job(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_NAME"):
        monkeypatch.delenv(key, raising=False)
    env = tracking.setup("mlflow", tmp_path, "abc", "demo")
    assert env["MLFLOW_TRACKING_URI"] == (tmp_path / "mlruns").as_uri()
    assert env["MLFLOW_EXPERIMENT_NAME"] == "demo" and env["MLFLOW_RUN_NAME"] == "abc"
    assert tracking.setup("none", tmp_path, "abc", "demo") == {}


def test_report_to_is_validated(tmp_path):
    spec = write_spec(tmp_path, SPEC.format(model="m", data="d").replace(
        "report_to: tensorboard", "report_to: comet"))
    proc = sweep_cli("launch", str(spec), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2
    assert "report_to: 'comet' is not allowed" in proc.stderr
    assert "allowed: none, tensorboard, wandb, mlflow" in proc.stderr
