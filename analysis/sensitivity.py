"""A sensitivity study: jobs that each quantize one module group (`quantize_modules`, the rest
FP32) at one bit width, beside FP32 runs of the same task and data. Read from the collected
runs: per group and bit width, the change of the task's metric against the FP32 mean (means
over seeds) and the megabytes the group's quantization saves (FP32 size - the job's
model_size_mb). collect gives it a sheet (analysis.workbook: group x bits, a colour scale,
a chart) and `sweep plan-bits` allocates bits from it (analysis.bitplan).

A study is found where runs of one task, method and data set differ in `quantize_modules`
(two groups or more); where several are, the one with the most runs is taken.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from analysis.results import Run
from quantlib.tasks import TASKS

CHART_METRIC = {"squad": "f1"}  # else the task's first metric


@dataclass
class Measurement:
    deltas: list[float] = field(default_factory=list)  # per run: metric - FP32 mean
    saved_mb: list[float] = field(default_factory=list)

    @property
    def delta(self) -> float:
        return sum(self.deltas) / len(self.deltas)

    @property
    def saved(self) -> float:
        return sum(self.saved_mb) / len(self.saved_mb) if self.saved_mb else 0.0


@dataclass
class Study:
    task: str
    method: str
    metric: str
    data: Any
    fp32_mean: float
    fp32_runs: int
    fp32_size_mb: float
    groups: list[tuple[str, ...]]
    bits: list[int]
    cells: dict[tuple[tuple[str, ...], int], Measurement]
    settings: dict[str, Any]  # configuration every run of the study shares

    def label(self, group: tuple[str, ...]) -> str:
        return ", ".join(group)


def _group(run: Run) -> tuple[str, ...] | None:
    value = run.config.get("quantize_modules")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        return None
    return tuple(value)


def _natural(group: tuple[str, ...]) -> list:
    """layer.2 before layer.10."""
    return [[int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p)] for p in group]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def metric_of(task: str) -> str:
    entry = TASKS.get(task)
    return CHART_METRIC.get(task) or (entry.metrics[0] if entry else "accuracy")


def _data(run: Run) -> Any:
    return (repr(run.config.get("data_dir")), repr(run.config.get("dataset_name")))


def find_study(runs: list[Run], metric: str | None = None) -> Study | None:
    done = [r for r in runs if r.state == "completed" and r.metrics]
    candidates: dict[tuple, list[Run]] = {}
    for r in done:
        if r.nbits is not None and r.method != "fp32" and _group(r) is not None:
            candidates.setdefault((r.task, r.method, _data(r)), []).append(r)
    studies = [(k, rs) for k, rs in candidates.items() if len({_group(r) for r in rs}) >= 2]
    if not studies:
        return None
    (task, method, data), members = max(studies, key=lambda kv: len(kv[1]))
    name = metric or metric_of(task)
    base = [r for r in done if r.method == "fp32" and r.task == task and _data(r) == data
            and _finite(r.metrics.get(name))]
    if not base:
        return None
    fp32 = sum(r.metrics[name] for r in base) / len(base)
    sizes = [r.info["fp32_size_mb"] for r in members + base if _finite(r.info.get("fp32_size_mb"))]
    fp32_size = max(sizes) if sizes else 0.0
    cells: dict[tuple[tuple[str, ...], int], Measurement] = {}
    groups: list[tuple[str, ...]] = []
    for r in members:
        value = r.metrics.get(name)
        if not _finite(value):
            continue
        g = _group(r)
        assert g is not None and r.nbits is not None
        if g not in groups:
            groups.append(g)
        cell = cells.setdefault((g, r.nbits), Measurement())
        cell.deltas.append(float(value) - fp32)
        size = r.info.get("model_size_mb")
        if _finite(size) and _finite(r.info.get("fp32_size_mb")):
            cell.saved_mb.append(float(r.info["fp32_size_mb"]) - float(size))
    if len(groups) < 2:
        return None
    groups.sort(key=_natural)
    shared = dict(members[0].config)
    for r in members[1:]:
        shared = {k: v for k, v in shared.items() if r.config.get(k) == v}
    return Study(task, method, name, data, fp32, len(base), fp32_size, groups,
                 sorted({b for _, b in cells}), cells, shared)
