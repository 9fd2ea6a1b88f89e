"""`sweep collect`: every job's results into a workbook (xlsx), a tidy CSV, Markdown tables or a
self-contained HTML report."""

from __future__ import annotations

import csv
import gc
import io
from pathlib import Path

from analysis import safe_text
from analysis.baselines import collapse_reason
from analysis.measurements import build_blocks
from analysis.results import find_runs
from analysis.safe_text import csv_cell
from analysis.summary import summarize
from analysis.tables import tidy
from jobs.atomic import write_text
from jobs.errors import UserError

FORMATS = ("xlsx", "csv", "md", "html", "tex")


def collect(paths: list[str], to: str, output: str | None = None,
            patterns: list[str] | None = None) -> int:
    # tens of thousands of small dicts, no cycles worth collecting: the cyclic GC's passes over
    # a growing heap cost a third of a 10,000-job collection (benchmarks/collect_bench.py)
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _collect(paths, to, output, patterns)
    finally:
        if enabled:
            gc.enable()


def _collect(paths: list[str], to: str, output: str | None,
             patterns: list[str] | None) -> int:
    if to not in FORMATS:
        raise UserError(f"--to {to}: not a format (allowed: {', '.join(FORMATS)})")
    collection = find_runs(paths, patterns)
    runs = collection.runs
    if not runs:
        raise UserError(f"{', '.join(paths)}: no job results found (launch a sweep first, or "
                        "give its directory; results of other tools: eval_results.txt / "
                        ".json, all_results.json, evaluate-v1.1 or dllogger output)")
    out = Path(output) if output else Path(paths[0]) / f"results.{to}"
    if out.is_dir():
        raise UserError(f"-o {out}: is a directory (give a file name such as {out}/results.{to})")
    header, rows = tidy(runs)
    blocks = build_blocks(runs)
    states: dict[str, int] = {}
    for r in runs:
        states[r.state] = states.get(r.state, 0) + 1
    if to == "xlsx":
        from analysis.workbook import write_xlsx

        write_xlsx(out, blocks, summarize(blocks), header, rows)
    elif to == "md":
        from analysis.markdown import render

        write_text(out, safe_text.text(render(summarize(blocks), states)))
    elif to == "tex":
        from analysis.latex import render as render_tex

        write_text(out, render_tex(summarize(blocks)))
    elif to == "html":
        from analysis.report import render as render_html

        write_text(out, safe_text.text(render_html(collection, blocks, summarize(blocks), header,
                                                   rows, states)))
    else:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([csv_cell(h) for h in header])
        writer.writerows([[csv_cell(v) for v in row] for row in rows])
        write_text(out, buf.getvalue())
    collapsed = [r for r in runs if r.metrics and collapse_reason(r.task, r.metrics)]
    summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    print(f"{len(runs)} jobs ({summary}) -> {out}")
    for r in collapsed:
        print(f"  collapsed: {r.output_dir.name}: {collapse_reason(r.task, r.metrics)}")
    if collection.problems:
        print(f"  {len(collection.problems)} files skipped (listed above)")
    return 0
