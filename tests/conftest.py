"""Shared fixtures: tiny models and small data written to temp dirs (nothing is downloaded)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


TOKEN_VAR = "QUANTSWEEP_TEST_TOKEN"


def processes_with(token: str) -> list[int]:
    """The processes whose environment carries `token` (those a test started, and theirs: job
    scripts, the LSF stand-in's dispatchers and jobs, SLURM jobs, which inherit it)."""
    needle = f"{TOKEN_VAR}={token}".encode() + b"\0"
    found = []
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                if needle in fh.read() + b"\0":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture(autouse=True)
def reap_leaked_processes(monkeypatch):
    """Every process a test starts ends with the test, pass or fail: a failing test must not
    leave a job requeueing itself for an hour under every later test."""
    import signal
    import uuid

    token = uuid.uuid4().hex
    monkeypatch.setenv(TOKEN_VAR, token)
    yield
    for pid in processes_with(token):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from quantlib.demo import write_model

    return write_model(tmp_path_factory.mktemp("model") / "tiny-bert")


@pytest.fixture(scope="session")
def demo_task(tmp_path_factory) -> Path:
    from quantlib.demo import write_glue_tsv

    return write_glue_tsv(tmp_path_factory.mktemp("glue") / "SST-2", n_train=400, n_dev=100)


# the base of a tiny sweep that trains for seconds (format with model= and data=)
TINY_BASE = """
base:
  model_name_or_path: {model}
  data_dir: {data}
  max_seq_length: 16
  finetune_epochs: 0.25
  max_train_samples: 32
  max_eval_samples: 16
"""


def write_spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def sweep_cli(*args: str, cwd: Path | None = None):
    """Run the `sweep` CLI in a fresh interpreter, as a user would."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
