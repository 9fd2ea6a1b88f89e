"""`sweep collect`: every job's results into a workbook (xlsx) or a tidy CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from analysis.baselines import collapse_reason
from analysis.measurements import build_blocks
from analysis.results import find_runs
from analysis.tables import tidy
from jobs.atomic import write_text
from jobs.errors import UserError


def collect(paths: list[str], to: str, output: str | None = None) -> int:
    runs = find_runs(paths)
    if not runs:
        raise UserError(f"{', '.join(paths)}: no job results found (launch a sweep first, or "
                        "give its directory)")
    out = Path(output) if output else Path(paths[0]) / f"results.{to}"
    header, rows = tidy(runs)
    if to == "xlsx":
        from analysis.workbook import write_xlsx

        write_xlsx(out, build_blocks(runs), header, rows)
    else:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
        write_text(out, buf.getvalue())
    states: dict[str, int] = {}
    for r in runs:
        states[r.state] = states.get(r.state, 0) + 1
    collapsed = [r for r in runs if r.metrics and collapse_reason(r.task, r.metrics)]
    summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    print(f"{len(runs)} jobs ({summary}) -> {out}")
    for r in collapsed:
        print(f"  collapsed: {r.output_dir.name}: {collapse_reason(r.task, r.metrics)}")
    return 0
