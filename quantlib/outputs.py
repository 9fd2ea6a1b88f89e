"""What a job leaves in its output directory, read and written in one place (torch-free).

- config.json        the full resolved configuration the job ran with
- status.json        state marker: running / completed / failed / interrupted, reason, times
- eval_results.json  HF Trainer style: eval_ prefixed metrics, indent 4, sorted keys
- eval_results.txt   the old run_glue format: one `key = value` line per metric, sorted
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from jobs.atomic import write_json, write_text

CONFIG = "config.json"
STATUS = "status.json"
EVAL_JSON = "eval_results.json"
EVAL_TXT = "eval_results.txt"

# HF Trainer metric names -> the old run_glue names the seed spreadsheet uses
OLD_NAMES = {
    "accuracy": "acc",
    "accuracy_mm": "mnli-mm_acc",
    "f1": "f1",
    "combined_score": "acc_and_f1",  # STS-B: "corr", see old_name()
    "matthews_correlation": "mcc",
    "pearson": "pearson",
    "spearmanr": "spearmanr",
    "exact_match": "exact_match",  # SQuAD, 0-100 as evaluate-v1.1.py
}


def old_name(task: str, metric: str) -> str:
    if metric == "combined_score" and task == "stsb":
        return "corr"
    return OLD_NAMES.get(metric, metric)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_status(out_dir: str | os.PathLike, state: str, **extra: Any) -> None:
    path = Path(out_dir) / STATUS
    previous = read_json(path) or {}
    status = {**previous, "state": state, "updated": now(), "host": socket.gethostname(),
              **extra}
    write_json(path, status)


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_status(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    return read_json(Path(out_dir) / STATUS)


def is_complete(out_dir: str | os.PathLike) -> bool:
    """A job is done when its marker says so and its results can be read (a JSON object):
    files are the truth. A truncated or garbled eval_results.json is not a completed job, for
    `sweep status`, the relaunch and `collect` alike."""
    status = read_status(out_dir)
    return bool(status and status.get("state") == "completed"
                and read_json(Path(out_dir) / EVAL_JSON) is not None)


def write_results(out_dir: str | os.PathLike, task: str, metrics: dict[str, float],
                  info: dict[str, Any] | None = None) -> None:
    """metrics: HF names without prefix (accuracy, f1, loss, pred_classes, ...) stored with the
    eval_ prefix; info: facts about the run (train_loss, quantized_fraction, ...) stored as is."""
    data = {**(info or {}), **{f"eval_{k}": v for k, v in metrics.items()}}
    write_json(Path(out_dir) / EVAL_JSON, data)
    lines = [f"{old_name(task, k)} = {v}" for k, v in metrics.items() if k in OLD_NAMES]
    write_text(Path(out_dir) / EVAL_TXT, "".join(f"{line}\n" for line in sorted(lines)))
