"""Write the workbook: the seed-layout measurements sheet first, then the tidy runs sheet."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from openpyxl import Workbook
from openpyxl.comments import Comment
from openpyxl.styles import Font, PatternFill

from analysis.measurements import Block, sheet_rows

COLLAPSED_FILL = PatternFill("solid", start_color="FFF4CCCC", end_color="FFF4CCCC")


def write_xlsx(path: Path, blocks: list[Block], header: list[str],
               rows: list[list[Any]]) -> None:
    wb = Workbook()
    ws = wb.active
    ws.title = "measurements"
    for r, (values, cells) in enumerate(sheet_rows(blocks), start=1):
        for c, value in enumerate(values, start=1):
            if value is not None:
                ws.cell(row=r, column=c, value=value)
        for col, cell in cells.items():
            if cell.collapsed:
                target = ws.cell(row=r, column=col + 1)
                target.fill = COLLAPSED_FILL
                target.comment = Comment("single-class predictor: " + "; ".join(cell.collapsed),
                                         "quantsweep")
    ws.column_dimensions["A"].width = 18

    runs = wb.create_sheet("runs")
    runs.append(header)
    for cell in runs[1]:
        cell.font = Font(bold=True)
    collapsed_col = header.index("collapsed")
    for row in rows:
        runs.append(row)
        if row[collapsed_col]:
            for cell in runs[runs.max_row]:
                cell.fill = COLLAPSED_FILL
    runs.freeze_panes = "A2"

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        wb.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
