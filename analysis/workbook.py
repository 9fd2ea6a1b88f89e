"""Write the workbook: the seed-layout measurements sheet, a sheet per task (method × nbits with
mean ± std, run count and delta to FP32, and a line chart of the metric vs nbits), the tidy
runs sheet (a row per job; settings the same in every job go to the settings sheet), and for a
sensitivity study (analysis.sensitivity) a `sensitivity` sheet. Metric
cells carry a colour scale; a cell with a run equal to a single-class baseline is marked (red
bold italic, a comment naming the run; the runs sheet also fills its row) in every sheet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from openpyxl import Workbook
from openpyxl.chart import BarChart, LineChart, Reference, ScatterChart, Series
from openpyxl.comments import Comment
from openpyxl.formatting.rule import ColorScaleRule
from openpyxl.styles import Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet

from analysis.blocks import EXTRAS, ROWS, Block, sheet_rows
from analysis.safe_text import harden_workbook
from analysis.sensitivity import Study
from analysis.summary import DROP_MARK, EXTRA_FORMATS, TaskSummary, drop_note, test_text
from analysis.tables import LEAD, TAIL
from quantlib.atomic import replace_with

COLLAPSED_FILL = PatternFill("solid", start_color="FFF4CCCC", end_color="FFF4CCCC")
COLLAPSED_FONT = Font(color="FFC00000", bold=True, italic=True)
BOLD = Font(bold=True)
SCALE = {"start_type": "min", "start_color": "FFF8696B", "mid_type": "percentile",
         "mid_value": 50, "mid_color": "FFFFEB84", "end_type": "max", "end_color": "FF63BE7B"}
DELTA_SCALE = {"start_type": "min", "start_color": "FFF8696B", "mid_type": "num", "mid_value": 0,
               "mid_color": "FFFFFFFF", "end_type": "max", "end_color": "FF63BE7B"}
METRICS = {m for _, m, _ in ROWS} | {f"{m}_mm" for _, m, _ in ROWS}
PERCENT_TASKS = {"squad"}  # metrics on a 0-100 scale
LINE_CHART_COLUMNS = 11  # columns the 18 cm line chart covers, and one more


def _mark(cell: Any, collapsed: list[str]) -> None:
    cell.font = COLLAPSED_FONT
    cell.comment = Comment("single-class predictor: " + "; ".join(collapsed), "quantsweep")


def _widths(ws: Worksheet, minimum: int = 6, maximum: int = 48,
            fixed: dict[int, int] | None = None) -> None:
    widths: dict[int, int] = {}
    for row in ws.iter_rows():
        for cell in row:
            if cell.value is not None:
                text = f"{cell.value:.4f}" if isinstance(cell.value, float) else str(cell.value)
                widths[cell.column] = max(widths.get(cell.column, 0), len(text))
    for col, width in {**widths, **(fixed or {})}.items():
        ws.column_dimensions[get_column_letter(col)].width = min(max(width + 2, minimum), maximum)


def _measurements(ws: Worksheet, blocks: list[Block]) -> None:
    for r, (values, cells) in enumerate(sheet_rows(blocks), start=1):
        for c, value in enumerate(values, start=1):
            if value is not None:
                ws.cell(row=r, column=c, value=value)
        if cells:  # a Task(metric) row of a block: colour along the bit widths
            first, last = min(cells) + 1, max(cells) + 1
            ws.conditional_formatting.add(
                f"{get_column_letter(first)}{r}:{get_column_letter(last)}{r}",
                ColorScaleRule(**SCALE))
        for col, cell in cells.items():
            if cell.collapsed:
                target = ws.cell(row=r, column=col + 1)
                target.fill = COLLAPSED_FILL
                _mark(target, cell.collapsed)
    ws.freeze_panes = "B1"  # as the seed sheet: the Task(metric) column stays
    ws.column_dimensions["A"].width = 18


def _task_sheet(ws: Worksheet, summary: TaskSummary) -> None:
    header: list[Any] = ["method", "bits", "runs"]
    for label in summary.labels:
        header += [label, "± std", "Δ FP32"]
    extras = summary.extra_keys
    header += [EXTRAS[k] for k in extras]
    ws.append(header)
    for cell in ws[1]:
        cell.font = BOLD
    number = "0.00" if summary.task in PERCENT_TASKS else "0.0000"
    for r, row in enumerate(summary.rows, start=2):
        ws.cell(row=r, column=1, value=row.title)
        ws.cell(row=r, column=2, value=row.bits)
        ws.cell(row=r, column=3, value=row.runs)
        for i, label in enumerate(summary.labels):
            stat = row.stats.get(label)
            if stat is None:
                continue
            col = 4 + 3 * i
            mean = ws.cell(row=r, column=col, value="nan" if stat.mean != stat.mean
                           else stat.mean)
            mean.number_format = number
            if stat.std is not None:
                std = ws.cell(row=r, column=col + 1,
                              value="nan" if stat.std != stat.std else stat.std)
                std.number_format = number
            if stat.delta is not None:
                delta = ws.cell(row=r, column=col + 2, value=stat.delta)
                mark = f'" {DROP_MARK}"' if stat.dropped else ""
                delta.number_format = f"+{number}{mark};-{number}{mark};{number}{mark}"
                if stat.test is not None:
                    delta.comment = Comment(test_text(stat), "quantsweep")
            if stat.collapsed:
                _mark(mean, stat.collapsed)
        for j, key in enumerate(extras):
            if key in row.extras:
                ws.cell(row=r, column=4 + 3 * len(summary.labels) + j,
                        value=row.extras[key]).number_format = EXTRA_FORMATS[key]
    last = len(summary.rows) + 1
    if summary.rows:
        for i in range(len(summary.labels)):
            mean_col = get_column_letter(4 + 3 * i)
            delta_col = get_column_letter(6 + 3 * i)
            ws.conditional_formatting.add(f"{mean_col}2:{mean_col}{last}", ColorScaleRule(**SCALE))
            ws.conditional_formatting.add(f"{delta_col}2:{delta_col}{last}",
                                          ColorScaleRule(**DELTA_SCALE))
        ws.auto_filter.ref = f"A1:{get_column_letter(len(header))}{last}"
    notes = [
        "mean over the runs (seeds) of each method and bit width; ± std: sample standard "
        "deviation (blank for a single run); runs: how many runs the row averages",
        f"Δ FP32 = mean − the mean of {summary.baseline!r} on this task" if summary.baseline
        else "no FP32 run of this task: no deltas",
        "red bold italic: a run equal to a single-class baseline (its comment names the run)",
    ]
    if summary.any_dropped:
        notes.append(drop_note() + " (the Δ FP32 cell; its comment gives t, df and p)")
    if summary.seeds_note:
        notes.append(summary.seeds_note)
    if "onnx_speedup" in extras:
        notes.append("ONNX: the 8-bit model exported with QDQ nodes and run by onnxruntime on "
                     "the CPU; INT8 latency at batch 1 (ms) and speedup = the FP32 export's "
                     "latency ÷ the INT8 one, measured in the same job")
    if "model_size_mb" in extras:
        notes.append("size: the bytes the compressed model needs (quantized weights packed at "
                     "their bit width with their scales, sparse weights in a sparse layout, "
                     "the rest FP32; MB = 10^6 bytes); × smaller: the same architecture in "
                     "FP32 ÷ size")
    for i, note in enumerate(notes):
        ws.cell(row=last + 2 + i, column=1, value=note)
    # the notes overflow to the right: column A is as wide as the method titles only
    _widths(ws, fixed={1: max([len(r.title) for r in summary.rows] + [10])})
    ws.freeze_panes = "B2"
    col = len(header) + 2
    _chart(ws, summary, col)
    if summary.points:
        # right of the line chart's data and of the chart itself (18 cm: about 10 columns)
        _scatter(ws, summary, col + (max(len(summary.chart_bits) + 2, LINE_CHART_COLUMNS)
                                     if summary.series else 0))


def _titled(chart: Any, summary: TaskSummary, against: str, x_title: str) -> Any:
    """A chart of the task's metric: its title, both axes titled and shown, 18 x 10 cm."""
    chart.title = f"{summary.display}: {summary.chart_label} vs {against}"
    chart.x_axis.title = x_title
    chart.y_axis.title = summary.chart_label
    chart.x_axis.delete = False
    chart.y_axis.delete = False
    chart.width, chart.height = 18, 10
    return chart


def _chart(ws: Worksheet, summary: TaskSummary, col: int) -> None:
    """The chart's data beside the table (row: a method, columns: bit widths) and a native
    line chart of it: one series per method, the bit widths as categories."""
    if not summary.series:
        return
    ws.cell(row=1, column=col, value=f"{summary.chart_label} (mean)").font = BOLD
    for j, bits in enumerate(summary.chart_bits, start=1):
        ws.cell(row=1, column=col + j, value=bits).font = BOLD
    for i, series in enumerate(summary.series, start=2):
        ws.cell(row=i, column=col, value=series.name)
        for j, value in enumerate(series.values, start=1):
            if value is not None:
                ws.cell(row=i, column=col + j, value=value).number_format = "0.0000"
    last_row = len(summary.series) + 1
    chart = _titled(LineChart(), summary, "bits", "bits")
    chart.display_blanks = "gap"
    data = Reference(ws, min_col=col, max_col=col + len(summary.chart_bits), min_row=2,
                     max_row=last_row)
    chart.add_data(data, from_rows=True, titles_from_data=True)
    chart.set_categories(Reference(ws, min_col=col + 1, max_col=col + len(summary.chart_bits),
                                   min_row=1, max_row=1))
    for series in chart.series:
        series.marker.symbol = "circle"
        series.smooth = False
    ws.add_chart(chart, f"{get_column_letter(col)}{last_row + 2}")
    ws.column_dimensions[get_column_letter(col)].width = min(
        max(len(s.name) for s in summary.series) + 2, 48)


def _scatter(ws: Worksheet, summary: TaskSummary, col: int) -> None:
    """The metric against the model's size: the points beside the table (grouped by series),
    a native scatter chart with a series per method and the Pareto front as a line."""
    head = ["series", "size (MB)", f"{summary.chart_label} (mean)", "bits", "Pareto front"]
    for j, text in enumerate(head):
        ws.cell(row=1, column=col + j, value=text).font = BOLD
    groups: dict[str, list] = {}
    for p in summary.points:
        groups.setdefault(p.series, []).append(p)
    front = sorted((p for p in summary.points if p.on_front), key=lambda p: p.size_mb)
    ranges: list[tuple[str, int, int]] = []
    r = 2
    for name, pts in [*groups.items(), ("Pareto front", front)]:
        start = r
        for p in sorted(pts, key=lambda p: p.size_mb):
            ws.cell(row=r, column=col, value=name)
            ws.cell(row=r, column=col + 1, value=p.size_mb).number_format = "0.000"
            ws.cell(row=r, column=col + 2, value=p.value).number_format = "0.0000"
            ws.cell(row=r, column=col + 3, value=p.bits)
            ws.cell(row=r, column=col + 4, value="yes" if p.on_front else "")
            r += 1
        ranges.append((name, start, r - 1))
    chart = _titled(ScatterChart(), summary, "model size", "model size (MB)")
    for name, first, last in ranges:
        xs = Reference(ws, min_col=col + 1, min_row=first, max_row=last)
        ys = Reference(ws, min_col=col + 2, min_row=first, max_row=last)
        series = Series(ys, xs, title=name)
        if name == "Pareto front":
            series.marker.symbol = "none"
            series.graphicalProperties.line.dashStyle = "dash"
        else:
            series.marker.symbol = "circle"
            series.graphicalProperties.line.noFill = True
        chart.series.append(series)
    ws.add_chart(chart, f"{get_column_letter(col)}{r + 2}")
    ws.column_dimensions[get_column_letter(col)].width = min(
        max(len(p.series) for p in summary.points) + 2, 48)


def split_constant(header: list[str], rows: list[list[Any]]) -> tuple[
        list[str], list[list[Any]], list[tuple[str, Any]]]:
    """Columns with one value in every run (with several runs) leave the runs sheet for the
    settings sheet: the runs sheet shows what varies, each constant once. The job's identity,
    its metrics and state always stay."""
    keep = set(LEAD) | set(TAIL)
    constant = [] if len(rows) < 2 else [
        c for c, name in enumerate(header) if name not in keep
        and not name.startswith("eval_") and all(r[c] == rows[0][c] for r in rows)]
    if not constant:
        return header, rows, []
    drop = set(constant)
    cols = [c for c in range(len(header)) if c not in drop]
    return ([header[c] for c in cols], [[r[c] for c in cols] for r in rows],
            [(header[c], rows[0][c]) for c in constant])


def _settings(ws: Worksheet, settings: list[tuple[str, Any]]) -> None:
    ws.append(["setting", "value (the same in every run)"])
    for cell in ws[1]:
        cell.font = BOLD
    for name, value in settings:
        ws.append([name, value])
    ws.freeze_panes = "A2"
    _widths(ws, maximum=80)


def _runs(ws: Worksheet, header: list[str], rows: list[list[Any]]) -> None:
    ws.append(header)
    for cell in ws[1]:
        cell.font = BOLD
    collapsed_col = header.index("collapsed")
    for r, row in enumerate(rows, start=2):
        ws.append(row)
        if row[collapsed_col]:
            for c in range(1, len(header) + 1):
                cell = ws.cell(row=r, column=c)
                cell.fill = COLLAPSED_FILL
                cell.font = COLLAPSED_FONT
    last = len(rows) + 1
    if rows:
        for c, name in enumerate(header, start=1):
            if name.startswith("eval_") and name[len("eval_"):] in METRICS:
                letter = get_column_letter(c)
                ws.conditional_formatting.add(f"{letter}2:{letter}{last}", ColorScaleRule(**SCALE))
        ws.auto_filter.ref = f"A1:{get_column_letter(len(header))}{last}"
    ws.freeze_panes = "B2"
    for c, name in enumerate(header, start=1):  # from the header and the first 200 rows
        width = max([len(name)] + [len(str(r[c - 1])) for r in rows[:200] if r[c - 1] is not None])
        ws.column_dimensions[get_column_letter(c)].width = min(max(width + 2, 8), 48)


def _sensitivity(ws: Worksheet, study: Study) -> None:
    """Group x bits: the metric's change against FP32 (a colour scale: red below, white at 0,
    green above) and the megabytes each saves, then a clustered bar chart of the changes."""
    bits = study.bits
    head = (["module group"] + [f"Δ {study.metric} at {b} bits" for b in bits]
            + [f"MB saved at {b} bits" for b in bits] + ["runs"])
    for j, text in enumerate(head, start=1):
        ws.cell(row=1, column=j, value=text).font = BOLD
    for i, g in enumerate(study.groups, start=2):
        ws.cell(row=i, column=1, value=study.label(g))
        runs = 0
        for j, b in enumerate(bits):
            m = study.cells.get((g, b))
            if m is None:
                continue
            runs += len(m.deltas)
            ws.cell(row=i, column=2 + j, value=m.delta).number_format = "+0.0000;-0.0000;0"
            if m.saved_mb:
                ws.cell(row=i, column=2 + len(bits) + j, value=m.saved).number_format = "0.0000"
        ws.cell(row=i, column=2 + 2 * len(bits), value=runs)
    last = len(study.groups) + 1
    ws.conditional_formatting.add(
        f"B2:{get_column_letter(1 + len(bits))}{last}", ColorScaleRule(**DELTA_SCALE))
    ws.freeze_panes = "B2"
    note = (f"{study.task}, {study.method}: each group quantized alone, the rest FP32; Δ = mean "
            f"over seeds of {study.metric} - the FP32 mean ({study.fp32_mean:.4f}, "
            f"{study.fp32_runs} runs; FP32 size {study.fp32_size_mb:.4f} MB). "
            "sweep plan-bits allocates bits per group under a size budget from these.")
    ws.cell(row=last + 2, column=1, value=note)
    chart = BarChart()
    chart.type, chart.grouping = "col", "clustered"
    chart.title = f"{study.task}: Δ {study.metric} per module group and bit width"
    chart.x_axis.title, chart.y_axis.title = "module group", f"Δ {study.metric}"
    chart.x_axis.delete = chart.y_axis.delete = False
    chart.width, chart.height = 18, 10
    chart.add_data(Reference(ws, min_col=2, max_col=1 + len(bits), min_row=1, max_row=last),
                   titles_from_data=True)
    chart.set_categories(Reference(ws, min_col=1, min_row=2, max_row=last))
    ws.add_chart(chart, f"A{last + 4}")
    ws.column_dimensions["A"].width = min(max(len(study.label(g)) for g in study.groups) + 2, 60)
    for j in range(2, 3 + 2 * len(bits)):
        ws.column_dimensions[get_column_letter(j)].width = 16


def build_workbook(blocks: list[Block], summaries: list[TaskSummary], header: list[str],
                   rows: list[list[Any]], study: Study | None = None) -> Workbook:
    wb = Workbook()
    ws = wb.active
    ws.title = "measurements"
    _measurements(ws, blocks)
    for summary in summaries:
        _task_sheet(wb.create_sheet(summary.display), summary)
    if study is not None:
        _sensitivity(wb.create_sheet("sensitivity"), study)
    header, rows, settings = split_constant(header, rows)
    _runs(wb.create_sheet("runs"), header, rows)
    if settings:
        _settings(wb.create_sheet("settings"), settings)
    harden_workbook(wb)
    return wb


def write_xlsx(path: Path, blocks: list[Block], summaries: list[TaskSummary],
               header: list[str], rows: list[list[Any]], study: Study | None = None) -> None:
    replace_with(path, build_workbook(blocks, summaries, header, rows, study).save)
