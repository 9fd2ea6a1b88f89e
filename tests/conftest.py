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
