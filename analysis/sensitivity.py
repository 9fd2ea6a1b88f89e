"""A sensitivity study: jobs that each quantize one module group (`quantize_modules`, the rest
FP32) at one bit width, beside FP32 runs of the same task and data. Read from the collected
runs: per group and bit width, the change of the task's metric against the FP32 mean (means
over seeds) and the megabytes the group's quantization saves (FP32 size - the job's
model_size_mb). collect gives it a sheet (analysis.workbook: group x bits, a colour scale,
a chart) and `sweep plan-bits` allocates bits from it (analysis.bitplan).

A study is found where runs of one task, method, data set and settings (all but PER_RUN) differ
in `quantize_modules` (two groups or more, no pattern in two groups; runs with their own
`nbits_per_module` are planned models, not measurements); where several are, the one with the
most runs is taken.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from analysis.blocks import data_of
from analysis.results import Run
from analysis.summary import CHART_METRIC
from quantlib.bitwidths import PATTERN
from quantlib.configs import METHODS

# what differs between a study's runs by design, or per job (its fine-tuning's id and path)
PER_RUN = {"quantize_modules", "nbits", "seed", "after", "finetune_from", "upstream_dir",
           "stage", "output_dir", "job_id", "sweep", "sweep_dir"}


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
    """The run's one module group, or None: not a list of module patterns (a result file's
    odd value), or a run with bits of its own per module (a planned model, not a measurement)."""
    value = run.config.get("quantize_modules")
    if isinstance(value, str):
        value = [value]
    if (not isinstance(value, list) or not value or run.config.get("nbits_per_module")
            or not all(isinstance(v, str) and PATTERN.fullmatch(v) for v in value)):
        return None
    return tuple(value)


def _natural(group: tuple[str, ...]) -> list:
    """layer.2 before layer.10 (the split's odd pieces are the ASCII digit runs)."""
    return [[(0, int(t), "") if i % 2 else (1, 0, t)
             for i, t in enumerate(re.split(r"([0-9]+)", p))] for p in group]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def metric_of(task: str) -> str:
    from quantlib.tasks import TASKS

    entry = TASKS.get(task)
    return CHART_METRIC.get(task) or (entry.metrics[0] if entry else "accuracy")


def _setting(run: Run) -> str:
    """What a study's runs share: their configuration less PER_RUN (data, model, method's
    arguments), as JSON text."""
    return json.dumps({k: v for k, v in run.config.items() if k not in PER_RUN},
                      sort_keys=True, default=str)


def _disjoint(groups: set[tuple[str, ...]]) -> bool:
    patterns = [p for g in groups for p in g]
    return len(patterns) == len(set(patterns))


def find_study(runs: list[Run], metric: str | None = None) -> Study | None:
    done = [r for r in runs if r.state == "completed" and r.metrics]
    candidates: dict[tuple, list[Run]] = {}
    for r in done:
        if (r.nbits is not None and r.method in METHODS and r.method != "fp32"
                and "nbits" in METHODS[r.method].config.__dataclass_fields__
                and _group(r) is not None):
            candidates.setdefault((r.task, r.method, data_of(r), _setting(r)), []).append(r)
    studies = [(k, rs) for k, rs in candidates.items()
               if len(gs := {_group(r) for r in rs}) >= 2 and _disjoint(gs)]  # type: ignore
    if not studies:
        return None
    (task, method, data, _), members = max(studies, key=lambda kv: len(kv[1]))
    name = metric or metric_of(task)
    base = [r for r in done if r.method == "fp32" and r.task == task and data_of(r) == data
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
        # the formula's size where the job wrote its packed file (whose header each group's
        # job counts once: summed over groups it would be counted again and again)
        size = r.info.get("model_size_computed_mb", r.info.get("model_size_mb"))
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
