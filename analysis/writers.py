"""`sweep collect --to FORMAT`: one writer per format, registered by name. A new format is one
function here (its renderer in a module of its own, imported when it is used) and its
`@writer` line; the CLI's choices and help come from this registry. Light on purpose: the
parser reads it for every command, so nothing heavy is imported at the top."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from analysis import safe_text
from quantlib.atomic import write_text


@dataclass
class Collected:
    """What every writer may use: the runs found, their tidy table, the blocks of the
    seed-study layout (their per-task summary computed once, when a writer asks), the states."""

    collection: Any
    header: list[str]
    rows: list[list[Any]]
    blocks: Any
    states: dict[str, int] = field(default_factory=dict)

    @cached_property
    def summary(self) -> Any:
        from analysis.summary import summarize

        return summarize(self.blocks)


Writer = Callable[[Path, Collected], None]
WRITERS: dict[str, tuple[str, Writer]] = {}


def writer(name: str, help_text: str) -> Callable[[Writer], Writer]:
    def register(fn: Writer) -> Writer:
        WRITERS[name] = (help_text, fn)
        return fn
    return register


@writer("xlsx", "the seed study's workbook with a sheet per task")
def _xlsx(out: Path, c: Collected) -> None:
    from analysis.sensitivity import find_study
    from analysis.workbook import write_xlsx

    write_xlsx(out, c.blocks, c.summary, c.header, c.rows, find_study(c.collection.runs))


@writer("csv", "every run, one row each")
def _csv(out: Path, c: Collected) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([safe_text.csv_cell(h) for h in c.header])
    w.writerows([[safe_text.csv_cell(v) for v in row] for row in c.rows])
    write_text(out, buf.getvalue())


@writer("md", "a table per task")
def _md(out: Path, c: Collected) -> None:
    from analysis.markdown import render

    write_text(out, safe_text.text(render(c.summary, c.states)))


@writer("html", "a self-contained report")
def _html(out: Path, c: Collected) -> None:
    from analysis.report import render

    write_text(out, safe_text.text(render(c.collection, c.blocks, c.summary, c.header, c.rows,
                                          c.states)))


@writer("tex", "a LaTeX booktabs table per task")
def _tex(out: Path, c: Collected) -> None:
    from analysis.latex import render

    write_text(out, render(c.summary))


FORMATS = tuple(WRITERS)


def formats_help() -> str:
    return "; ".join(f"{name}: {text}" for name, (text, _) in WRITERS.items())
