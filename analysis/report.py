"""`sweep collect --to html`: a self-contained report (one file, no external resources) from
templates/report.html.j2: the per-task tables with their charts as images, the measurements
sheet, the failed and missing jobs, the collapsed runs, the files skipped, and the sweep specs."""

from __future__ import annotations

import math
import time
from typing import Any

import jinja2

import templates
from analysis.baselines import collapse_reason
from analysis.blocks import EXTRAS, Block, sheet_rows
from analysis.results import Collection
from analysis.summary import (
    DROP_MARK,
    TaskSummary,
    drop_note,
    format_delta,
    format_extra,
    format_stat,
    test_text,
)
from analysis.svgchart import data_uri, line_chart_svg, scatter_chart_svg

RUNS_TABLE_LIMIT = 2000  # larger collections: the runs table is in the xlsx / csv
LOW, MID, HIGH = (0xF8, 0x69, 0x6B), (0xFF, 0xEB, 0x84), (0x63, 0xBE, 0x7B)


def _mix(a: tuple[int, ...], b: tuple[int, ...], t: float) -> str:
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(a, b))


def colour(value: float, values: list[float]) -> str:
    """Excel's three-colour scale: red at the column's minimum, yellow at its median, green at
    its maximum."""
    ordered = sorted(v for v in values if math.isfinite(v))
    if not ordered or not math.isfinite(value):
        return ""  # NaN or infinite: no colour (Excel's scale skips them too)
    lo, hi = ordered[0], ordered[-1]
    mid = ordered[len(ordered) // 2] if len(ordered) % 2 else (
        ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2
    if hi == lo:
        return _mix(MID, MID, 0)
    if value <= mid:
        return _mix(LOW, MID, 0 if mid == lo else (value - lo) / (mid - lo))
    return _mix(MID, HIGH, 1 if hi == mid else (value - mid) / (hi - mid))


def _cell(text: Any, num: bool = False, bg: str | None = None,
          collapsed: str | None = None, tip: str | None = None) -> dict[str, Any]:
    return {"text": text, "num": num, "bg": bg, "collapsed": collapsed, "tip": tip}


def _task(summary: TaskSummary) -> dict[str, Any]:
    header = ["method", "bits", "runs"]
    for label in summary.labels:
        header += [label, "Δ FP32"]
    header += [EXTRAS[k] for k in summary.extra_keys]
    finite = {label: [r.stats[label].mean for r in summary.rows if label in r.stats
                      and not math.isnan(r.stats[label].mean)] for label in summary.labels}
    rows = []
    for row in summary.rows:
        cells = [_cell(row.title), _cell(row.bits, True), _cell(row.runs, True)]
        for label in summary.labels:
            stat = row.stats.get(label)
            if stat is None:
                cells += [_cell(""), _cell("")]
                continue
            cell = _cell(format_stat(stat, summary.task), True)
            if not math.isnan(stat.mean):
                cell["bg"] = colour(stat.mean, finite[label])
            if stat.collapsed:
                cell["collapsed"] = "single-class predictor: " + "; ".join(stat.collapsed)
            if stat.dropped:
                cell["text"] += " " + DROP_MARK
            cells += [cell, _cell(format_delta(stat, summary.task), True,
                                  tip=test_text(stat) or None)]
        cells += [_cell(format_extra(k, row.extras.get(k)), True) for k in summary.extra_keys]
        rows.append(cells)
    chart = data_uri(line_chart_svg(summary)) if summary.series else None
    scatter = data_uri(scatter_chart_svg(summary)) if summary.points else None
    return {"display": summary.display, "header": header, "rows": rows, "chart": chart,
            "chart_alt": f"{summary.display}: {summary.chart_label} vs bits",
            "scatter": scatter,
            "drop_note": drop_note() if summary.any_dropped else None,
            "seeds_note": summary.seeds_note,
            "scatter_alt": f"{summary.display}: {summary.chart_label} vs model size",
            "baseline": summary.baseline}


def _measurements(blocks: list[Block]) -> list[dict[str, Any]]:
    """The measurements sheet's rows: a block's header, a Task(metric) row, or a blank."""
    out = []
    for values, cells in sheet_rows(blocks)[1:]:
        row = []
        for c, value in enumerate(values):
            cell = cells.get(c)
            text = f"{value:.4f}" if isinstance(value, float) else ("" if value is None
                                                                    else str(value))
            row.append(_cell(text, isinstance(value, (int, float)), None,
                             "single-class predictor: " + "; ".join(cell.collapsed)
                             if cell is not None and cell.collapsed else None))
        kind = "blank" if not values else "header" if values[-1] == "Bits" else "data"
        out.append({"kind": kind, "cells": row})
    return out


def render(collection: Collection, blocks: list[Block], summaries: list[TaskSummary],
           header: list[str], rows: list[list[Any]], counts: dict[str, int]) -> str:
    runs = collection.runs
    unfinished = [r for r in runs if r.state != "completed"]
    collapsed = [(r, reason) for r in runs if r.metrics
                 and (reason := collapse_reason(r.task, r.metrics))]
    env = jinja2.Environment(loader=templates.loader(),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    names = sorted({r.sweep for r in runs if r.sweep}) or sorted({s.name for s in
                                                                  collection.sweeps})
    return env.get_template("report.html.j2").render(
        title="quantsweep results" + (": " + ", ".join(names) if names else ""),
        generated=time.strftime("%Y-%m-%d %H:%M %Z"),
        total=len(runs), counts=sorted(counts.items()),
        tasks=[_task(s) for s in summaries], measurements=_measurements(blocks),
        unfinished=unfinished, collapsed=collapsed, problems=collection.problems,
        sweeps=collection.sweeps, runs_header=header,
        runs_rows=rows if len(rows) <= RUNS_TABLE_LIMIT else None,
        runs_limit=RUNS_TABLE_LIMIT)
