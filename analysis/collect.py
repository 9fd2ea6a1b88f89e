"""`sweep collect`: every job's results into a workbook (xlsx), a tidy CSV, Markdown tables or a
self-contained HTML report."""

from __future__ import annotations

import gc
import os
from pathlib import Path

from analysis.baselines import collapse_reason
from analysis.blocks import build_blocks
from analysis.results import Collection, SweepStates, find_runs
from analysis.safe_text import terminal
from analysis.tables import tidy
from analysis.writers import FORMATS, WRITERS, Collected
from quantlib.errors import UserError, os_error


def collect(paths: list[str], to: str, output: str | None = None,
            patterns: list[str] | None = None, sweep_states: SweepStates | None = None) -> int:
    """Write the runs under `paths` as format `to`. sweep_states: the scheduler's view of our
    jobs, handed in by the caller (the CLI gives jobs.running.sweep_states), so that collect
    states what `sweep status` states; without it, states come from the job directories."""
    # tens of thousands of small dicts, no cycles worth collecting: the cyclic GC's passes over
    # a growing heap cost a third of a 10,000-job collection (benchmarks/collect_bench.py)
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _collect(paths, to, output, patterns, sweep_states)
    finally:
        if enabled:
            gc.enable()


def _collect(paths: list[str], to: str, output: str | None,
             patterns: list[str] | None, sweep_states: SweepStates | None) -> int:
    if to not in FORMATS:
        raise UserError(f"--to {terminal(to)}: not a format (allowed: {', '.join(FORMATS)})")
    collection = find_runs(paths, patterns, sweep_states)
    runs = collection.runs
    if not runs:
        raise UserError(f"{terminal(', '.join(paths))}: no job results found (launch a sweep "
                        "first, or give its directory; results of other tools: "
                        "eval_results.txt / .json, all_results.json, evaluate-v1.1 or dllogger "
                        "output)")
    out = Path(output) if output else Path(paths[0]) / f"results.{to}"
    if out.is_dir():
        raise UserError(f"-o {terminal(out)}: is a directory (give a file name such as "
                        f"{terminal(out)}/results.{to})")
    refuse_own_input(out, collection)
    try:
        _write(out, to, collection)
    except OSError as exc:  # the file and why, escaped: a path may hold terminal escapes
        raise UserError(terminal(os_error(exc))) from None
    _report(out, collection)
    return 0


def refuse_own_input(out: Path, collection: Collection) -> None:
    """-o may not name a file collect reads (a job's results, a ledger) nor lie in a job
    directory it collects (the next run, or the next collect, would find it, or it would
    overwrite what the job wrote there): refused before anything is written."""
    real = os.path.realpath(out)
    if real in collection.inputs:
        raise UserError(f"-o {terminal(out)}: collect reads this file (it is one of the results "
                        "or ledgers collected): give a file outside the job directories")
    for parent in Path(real).parents:
        if str(parent) in collection.job_dirs:
            raise UserError(f"-o {terminal(out)}: inside the job directory "
                            f"{terminal(parent)}, which collect reads: give a file outside "
                            "the job directories")


def _write(out: Path, to: str, collection: Collection) -> None:
    runs = collection.runs
    header, rows = tidy(runs)
    WRITERS[to][1](out, Collected(collection, header, rows, build_blocks(runs),
                                  _states(collection)))


def _states(collection: Collection) -> dict[str, int]:
    states: dict[str, int] = {}
    for r in collection.runs:
        states[r.state] = states.get(r.state, 0) + 1
    return states


def _report(out: Path, collection: Collection) -> None:
    """The console summary; every name and state from the tree escaped for the terminal."""
    runs = collection.runs
    collapsed = [r for r in runs if r.metrics and collapse_reason(r.task, r.metrics)]
    summary = ", ".join(f"{n} {s}" for s, n in sorted(_states(collection).items()))
    print(terminal(f"{len(runs)} jobs ({summary}) -> {out}"))
    for r in collapsed:
        print(terminal(f"  collapsed: {r.output_dir.name}: {collapse_reason(r.task, r.metrics)}"))
    if collection.problems:
        print(f"  {len(collection.problems)} files skipped (listed above)")
