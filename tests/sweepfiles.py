"""Reading what a launch wrote into a sweep directory, for tests: the configs files
(configs/<digest>.jsonl: quantlib.jobdir.write_configs_file, read_configs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantlib.jobdir import read_configs


def sweep_configs(sweep_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every config the sweep's launches wrote, by job id (a later launch's entry wins)."""
    files = sorted(Path(sweep_dir, "configs").glob("*.jsonl"), key=lambda p: p.stat().st_mtime_ns)
    return {c["job_id"]: c for path in files for c in read_configs(path)}
