"""Find every job of the given sweeps and read what it left: config, state, metrics."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.errors import UserError
from quantlib.outputs import CONFIG, EVAL_JSON, STATUS

LEDGER = "ledger.json"
SKIP_DIRS = {"checkpoints", "model", "logs", "scripts", "configs", "__pycache__"}
RUN_KEYS = ("job_id", "sweep", "output_dir", "nproc_per_node")  # bookkeeping, not config


@dataclass
class Run:
    output_dir: Path
    config: dict[str, Any]
    state: str  # completed / failed / interrupted / running / pending / missing
    metrics: dict[str, float] = field(default_factory=dict)  # HF names, no eval_ prefix
    info: dict[str, Any] = field(default_factory=dict)  # train_loss, quantized_fraction, ...
    reason: str | None = None
    sweep: str = ""
    job_id: str = ""

    @property
    def task(self) -> str:
        return str(self.config.get("task", ""))

    @property
    def method(self) -> str:
        return str(self.config.get("method", ""))

    @property
    def nbits(self) -> int | None:
        value = self.config.get("nbits")
        return value if isinstance(value, int) else None


def _warn(path: Path, reason: str) -> None:
    print(f"sweep collect: skipped {path}: {reason}", file=sys.stderr)


def _read(path: Path) -> dict[str, Any] | None:
    """A JSON object, or None if absent; unreadable files are reported and skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        _warn(path, exc.strerror or str(exc))
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        _warn(path, f"not valid JSON ({exc})")
        return None
    if not isinstance(data, dict):
        _warn(path, "not a JSON object")
        return None
    return data


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.lower() == "nan":
        return float("nan")
    return None


def read_job_dir(out_dir: Path, ledger_entry: dict[str, Any] | None = None) -> Run:
    ledger_entry = ledger_entry or {}
    config = _read(out_dir / CONFIG) or dict(ledger_entry.get("config") or {})
    status = _read(out_dir / STATUS) or {}
    results = _read(out_dir / EVAL_JSON)
    state = status.get("state") or ledger_entry.get("state") or "missing"
    if state == "completed" and results is None:
        state, reason = "failed", f"{EVAL_JSON} is missing"
    else:
        reason = status.get("reason") or ledger_entry.get("reason")
    metrics, info = {}, {}
    for key, value in (results or {}).items():
        if key.startswith("eval_"):
            number = _number(value)
            if number is not None:
                metrics[key[len("eval_"):]] = number
        else:
            info[key] = value
    return Run(out_dir, {k: v for k, v in config.items() if k not in RUN_KEYS}, state,
               metrics, info, reason, sweep=str(config.get("sweep", "")),
               job_id=str(config.get("job_id") or ""))


def _is_job_dir(path: Path) -> bool:
    """A job wrote its status or results here (a bare config.json may be a model's)."""
    return (path / STATUS).is_file() or (path / EVAL_JSON).is_file()


def find_runs(paths: list[str]) -> list[Run]:
    """Runs under the given sweep or job directories, each once, in a stable order."""
    runs: dict[str, Run] = {}
    for raw in paths:
        root = Path(raw)
        if not root.is_dir():
            raise UserError(f"{raw}: no such directory (give sweep directories such as runs/NAME)")
        for dirpath, dirnames, _ in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS
                                 and not d.startswith("."))
            ledger = _read(here / LEDGER) if (here / LEDGER).is_file() else None
            if ledger and isinstance(ledger.get("jobs"), dict):
                for jid, entry in ledger["jobs"].items():
                    out = Path(entry.get("output_dir", ""))
                    key = os.path.realpath(out)
                    if key not in runs:
                        run = read_job_dir(out, entry)
                        run.job_id = run.job_id or jid
                        run.sweep = run.sweep or str(ledger.get("sweep", ""))
                        runs[key] = run
            if _is_job_dir(here):
                key = os.path.realpath(here)
                if key not in runs:
                    runs[key] = read_job_dir(here)
                dirnames[:] = []  # a job directory holds no further jobs
    return sorted(runs.values(), key=lambda r: (r.sweep, str(r.output_dir)))
