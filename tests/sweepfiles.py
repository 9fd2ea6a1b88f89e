"""Reading what a launch wrote into a sweep directory, for tests: the configs files
(configs/<digest>.jsonl, a JSON line per job; quantlib.jobdir.write_configs_file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def sweep_configs(sweep_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every config the sweep's launches wrote, by job id (a later launch's entry wins)."""
    files = sorted(Path(sweep_dir, "configs").glob("*.jsonl"), key=lambda p: p.stat().st_mtime_ns)
    return {c["job_id"]: c for path in files
            for c in map(json.loads, path.read_text().splitlines())}
