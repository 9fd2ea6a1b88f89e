"""The tidy table: one row per job with every config axis, metric, state and output dir."""

from __future__ import annotations

import json
import math
from typing import Any

from analysis.baselines import collapse_reason
from analysis.results import Run

LEAD = ["job_id", "sweep", "task", "method", "nbits"]
TAIL = ["state", "reason", "collapsed", "source", "output_dir"]


def _cell(value: Any) -> Any:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # nan, inf, -inf: text in every format
    return value


def tidy(runs: list[Run]) -> tuple[list[str], list[list[Any]]]:
    config_keys = sorted({k for r in runs for k in r.config} - set(LEAD))
    metric_keys = sorted({k for r in runs for k in r.metrics})
    # facts a job records about its configuration (quant_mode, calibrator, ...) repeat a config
    # column: one column each, the config's
    taken = set(LEAD) | set(config_keys) | set(TAIL)
    info_keys = sorted({k for r in runs for k, v in r.info.items()
                        if isinstance(v, (int, float, str, bool)) and k not in taken})
    header = (LEAD + config_keys + [f"eval_{m}" for m in metric_keys] + info_keys + TAIL)
    rows = []
    for r in runs:
        base = {"job_id": r.job_id, "sweep": r.sweep, **r.config}
        row = [_cell(base[k] if k in base else r.info.get(k)) for k in LEAD + config_keys]
        row += [_cell(r.metrics.get(m)) for m in metric_keys]
        row += [_cell(r.info.get(k)) for k in info_keys]
        collapsed = collapse_reason(r.task, r.metrics) if r.metrics else None
        row += [r.state, r.reason, collapsed or "", r.source, str(r.output_dir)]
        rows.append(row)
    return header, rows
