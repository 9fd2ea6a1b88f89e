"""Per-task summaries: method × nbits with mean ± std over seeds, the run count, the delta to
the FP32 baseline of the same task and the compressed model's size; and the chart data (metric
vs nbits, a series per method; metric vs model size, with the Pareto front).

Built from the measurements blocks, so a method's variants (a block each) stay apart here too.
The workbook's task sheets, the Markdown tables and the HTML report all show these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from analysis.blocks import EXTRAS, ROWS, Block, Cell
from analysis.stats import TTest, against_baseline, significant_drop
from quantlib.tasks import TASKS

# tasks whose fine-tuning results swing across seeds (BERT paper, Dodge et al. 2020)
UNSTABLE_TASKS = {"rte", "mrpc", "cola", "stsb"}
MIN_SEEDS = 3
DROP_MARK = "*"

CHART_METRIC = {"squad": "f1"}  # else the task's first metric


@dataclass
class Stat:
    cell: Cell
    delta: float | None  # mean - FP32 mean of the same task and metric
    test: TTest | None = None  # against the FP32 runs (>= 2 runs in this cell)

    @property
    def dropped(self) -> bool:
        """Significantly below FP32 (Welch's t-test, p < 0.05)."""
        return significant_drop(self.test)

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
    extras: dict[str, float] = field(default_factory=dict)  # EXTRAS key -> mean of the runs

    @property
    def size_mb(self) -> float | None:
        return self.extras.get("model_size_mb")

    @property
    def ratio(self) -> float | None:
        return self.extras.get("compression_ratio")

    @property
    def runs(self) -> int:
        return max(s.n for s in self.stats.values())


@dataclass
class Series:
    name: str
    values: list[float | None]  # one per chart bit width; None where no run


@dataclass
class Point:
    """A row of the table in the metric-vs-size chart."""

    series: str  # the block's title
    bits: int
    size_mb: float
    value: float
    on_front: bool = False  # no other point is at most as large and at least as good


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
    points: list[Point] = field(default_factory=list)  # chart_label vs model size

    @property
    def extra_keys(self) -> list[str]:
        """The EXTRAS some row has, in EXTRAS' order: the tables' last columns."""
        return [k for k in EXTRAS if any(k in r.extras for r in self.rows)]

    @property
    def any_dropped(self) -> bool:
        return any(s.dropped for r in self.rows for s in r.stats.values())

    @property
    def seeds_note(self) -> str | None:
        """For a task known to vary across seeds, when some row has fewer than 3 runs."""
        few = [r for r in self.rows if r.runs < MIN_SEEDS]
        if self.task not in UNSTABLE_TASKS or not few:
            return None
        return (f"{self.display} varies across fine-tuning seeds: {len(few)} of "
                f"{len(self.rows)} rows have fewer than {MIN_SEEDS} runs (seeds); differences "
                "there may be noise")


def _finite(value: float | None) -> bool:
    """A mean that can be compared, charted and subtracted: not NaN, not ±inf (an inf metric
    would crash a chart's axis and make every delta inf or NaN). Tables show the others as
    text (nan, inf)."""
    return value is not None and math.isfinite(value)


PLOT_LIMIT = 1e12  # metrics are 0-1 or 0-100: beyond this a chart's axis is all one value


def _plottable(value: float | None) -> bool:
    return _finite(value) and abs(value) <= PLOT_LIMIT  # type: ignore[arg-type]


def own_fp32(blk: Block, task: str, fp32: list[Block]) -> Block | None:
    """The FP32 block measured on the same data as blk's runs of the task (the first such);
    none when FP32 ran on other data only."""
    if blk.method == "fp32":
        return blk
    seen = blk.data.get(task)
    return next((b for b in fp32 if b.data.get(task) == seen), None)


def summarize(blocks: list[Block]) -> list[TaskSummary]:
    tasks = [t for t, _, _ in ROWS]
    out: list[TaskSummary] = []
    for task in dict.fromkeys(tasks):
        labels = [label for t, _, label in ROWS if t == task
                  and any((label, b) in blk.cells for blk in blocks for b in blk.bits)]
        if not labels:
            continue
        fp32 = [blk for blk in blocks if blk.method == "fp32"
                and any((label, 32) in blk.cells for label in labels)]
        baseline = fp32[0] if fp32 else None
        rows: list[Row] = []
        # the FP32 baseline first, then the methods in the measurements sheet's order
        for blk in sorted(blocks, key=lambda b: b.method != "fp32"):
            own = own_fp32(blk, task, fp32)
            for bits in sorted(blk.bits, reverse=True):
                stats: dict[str, Stat] = {}
                for label in labels:
                    cell = blk.cells.get((label, bits))
                    if cell is None:
                        continue
                    base = own.cells.get((label, 32)) if own else None
                    delta = (cell.mean - base.mean if base and _finite(base.mean)
                             and _finite(cell.mean) else None)
                    test = (against_baseline(cell.values, base.values)
                            if base is not None and blk is not own else None)
                    stats[label] = Stat(cell, delta, test)
                if stats:
                    extras = {k: sum(v) / len(v) for k, by in blk.extras.items()
                              if (v := by.get((task, bits)))}
                    rows.append(Row(blk.title, blk.method, bits, stats, extras))
        entry = TASKS.get(task)
        datasets = {frozenset(b.data.get(task, ())) for b in fp32}
        named = (baseline.title if len(datasets) < 2 else
                 "FP32 on the same data (" + "; ".join(b.title for b in fp32) + ")"
                 ) if baseline else None
        summary = TaskSummary(task, entry.display if entry else task, labels, rows, named)
        _chart(summary, blocks, entry.metrics if entry else ())
        _points(summary)
        out.append(summary)
    return out


def pareto(points: list[Point]) -> None:
    """Mark the points no other point dominates (at most as large and at least as good, one of
    the two strictly): the best metric each size can buy."""
    for p in points:
        p.on_front = not any(
            q is not p and q.size_mb <= p.size_mb and q.value >= p.value
            and (q.size_mb < p.size_mb or q.value > p.value) for q in points)


def _points(summary: TaskSummary) -> None:
    label = summary.chart_label or (summary.labels[0] if summary.labels else None)
    if label is None:
        return
    for row in summary.rows:
        stat = row.stats.get(label)
        if stat is not None and _plottable(row.size_mb) and _plottable(stat.mean):
            summary.points.append(Point(row.title, row.bits, row.size_mb, stat.mean))
    pareto(summary.points)
    if summary.points and summary.chart_label is None:
        summary.chart_label = label


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
            if cell is not None and _plottable(cell.mean):
                summary.series.append(Series(f"{blk.title} (32-bit)", [cell.mean] * len(bits)))
            continue
        values: list[float | None] = []
        for b in bits:
            cell = blk.cells.get((label, b))
            values.append(cell.mean if cell is not None and _plottable(cell.mean) else None)
        if any(v is not None for v in values):
            summary.series.append(Series(blk.title, values))


def _digits(task: str) -> int:
    return 2 if task == "squad" else 4  # SQuAD EM/F1 are 0-100, GLUE metrics 0-1


def format_stat(stat: Stat, task: str) -> str:
    """`0.8412 ± 0.0031` (`0.8412` for a single run), `nan` where the metric was NaN."""
    d = _digits(task)
    if not math.isfinite(stat.mean):
        return str(stat.mean)  # nan, inf, -inf
    text = f"{stat.mean:.{d}f}"
    if stat.std is not None:
        text += f" ± {stat.std}" if not math.isfinite(stat.std) else f" ± {stat.std:.{d}f}"
    return text


def format_delta(stat: Stat | None, task: str) -> str:
    if stat is None or stat.delta is None:
        return ""
    return f"{stat.delta:+.{_digits(task)}f}"


def format_size(size_mb: float | None) -> str:
    return "" if size_mb is None else f"{size_mb:.3f}" if size_mb < 10 else f"{size_mb:.1f}"


def format_ratio(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.2f}×"


def format_extra(key: str, value: float | None) -> str:
    if value is None:
        return ""
    if key == "model_size_mb":
        return format_size(value)
    if key in ("compression_ratio", "onnx_speedup"):
        return format_ratio(value)
    return f"{value:.2f}"


EXTRA_FORMATS = {"model_size_mb": "0.000", "compression_ratio": "0.00", "onnx_latency_ms": "0.00",
                 "onnx_speedup": "0.00"}


def drop_note() -> str:
    return (f"{DROP_MARK} significantly below FP32: Welch's t-test over the runs (seeds), "
            "p < 0.05 (against a single FP32 run: a one-sample t-test); tested where a row has "
            "at least 2 runs")


def test_text(stat: Stat) -> str:
    t = stat.test
    if t is None:
        return ""
    return f"{t.kind} t = {t.t:.2f}, df = {t.df:.1f}, p = {t.p:.3g}"
