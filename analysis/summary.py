"""Per-task summaries: method × nbits with mean ± std over seeds, the run count and the delta to
the FP32 baseline of the same task; and the chart data (metric vs nbits, a series per method).

Built from the measurements blocks, so a method's variants (a block each) stay apart here too.
The workbook's task sheets, the Markdown tables and the HTML report all show these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from analysis.measurements import ROWS, Block, Cell
from quantlib.tasks import TASKS

CHART_METRIC = {"squad": "f1"}  # else the task's first metric


@dataclass
class Stat:
    cell: Cell
    delta: float | None  # mean - FP32 mean of the same task and metric

    @property
    def mean(self) -> float:
        return self.cell.mean

    @property
    def std(self) -> float | None:
        return self.cell.std

    @property
    def n(self) -> int:
        return self.cell.n

    @property
    def collapsed(self) -> list[str]:
        return self.cell.collapsed


@dataclass
class Row:
    title: str  # the block's title: method display name and what sets the block apart
    method: str
    bits: int  # 32 for methods without a bit width
    stats: dict[str, Stat] = field(default_factory=dict)  # row label -> Stat

    @property
    def runs(self) -> int:
        return max(s.n for s in self.stats.values())


@dataclass
class Series:
    name: str
    values: list[float | None]  # one per chart bit width; None where no run


@dataclass
class TaskSummary:
    task: str
    display: str
    labels: list[str]  # Task(metric) labels with a result, in the seed's order
    rows: list[Row]
    baseline: str | None  # title of the FP32 block the deltas refer to
    chart_label: str | None = None
    chart_bits: list[int] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)


def _finite(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def summarize(blocks: list[Block]) -> list[TaskSummary]:
    tasks = [t for t, _, _ in ROWS]
    out: list[TaskSummary] = []
    for task in dict.fromkeys(tasks):
        labels = [label for t, _, label in ROWS if t == task
                  and any((label, b) in blk.cells for blk in blocks for b in blk.bits)]
        if not labels:
            continue
        baseline = next((blk for blk in blocks if blk.method == "fp32"
                         and any((label, 32) in blk.cells for label in labels)), None)
        rows: list[Row] = []
        # the FP32 baseline first, then the methods in the measurements sheet's order
        for blk in sorted(blocks, key=lambda b: b.method != "fp32"):
            for bits in sorted(blk.bits, reverse=True):
                stats: dict[str, Stat] = {}
                for label in labels:
                    cell = blk.cells.get((label, bits))
                    if cell is None:
                        continue
                    base = baseline.cells.get((label, 32)) if baseline else None
                    delta = (cell.mean - base.mean if base and _finite(base.mean)
                             and _finite(cell.mean) else None)
                    stats[label] = Stat(cell, delta)
                if stats:
                    rows.append(Row(blk.title, blk.method, bits, stats))
        entry = TASKS.get(task)
        summary = TaskSummary(task, entry.display if entry else task, labels, rows,
                              baseline.title if baseline else None)
        _chart(summary, blocks, entry.metrics if entry else ())
        out.append(summary)
    return out


def _chart(summary: TaskSummary, blocks: list[Block], metrics: tuple[str, ...]) -> None:
    """Metric vs nbits: a series per quantized block; methods without a bit width (FP32, a
    pruned model) are flat reference lines across the bit widths."""
    wanted = CHART_METRIC.get(summary.task) or (metrics[0] if metrics else None)
    label = next((lbl for t, m, lbl in ROWS if t == summary.task and m == wanted
                  and lbl in summary.labels), summary.labels[0])
    bits = sorted({r.bits for r in summary.rows if r.bits != 32 and label in r.stats},
                  reverse=True)
    if not bits:
        return
    summary.chart_label, summary.chart_bits = label, bits
    for blk in blocks:
        if blk.bits == [32]:
            cell = blk.cells.get((label, 32))
            if cell is not None and _finite(cell.mean):
                summary.series.append(Series(f"{blk.title} (32-bit)", [cell.mean] * len(bits)))
            continue
        values: list[float | None] = []
        for b in bits:
            cell = blk.cells.get((label, b))
            values.append(cell.mean if cell is not None and _finite(cell.mean) else None)
        if any(v is not None for v in values):
            summary.series.append(Series(blk.title, values))


def _digits(task: str) -> int:
    return 2 if task == "squad" else 4  # SQuAD EM/F1 are 0-100, GLUE metrics 0-1


def format_stat(stat: Stat, task: str) -> str:
    """`0.8412 ± 0.0031` (`0.8412` for a single run), `nan` where the metric was NaN."""
    d = _digits(task)
    if math.isnan(stat.mean):
        return "nan"
    text = f"{stat.mean:.{d}f}"
    if stat.std is not None:
        text += " ± nan" if math.isnan(stat.std) else f" ± {stat.std:.{d}f}"
    return text


def format_delta(stat: Stat | None, task: str) -> str:
    if stat is None or stat.delta is None:
        return ""
    return f"{stat.delta:+.{_digits(task)}f}"
