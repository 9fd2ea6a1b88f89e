"""`sweep collect --to md`: a Markdown table per task (method × nbits, mean ± std over seeds, run
count, delta to FP32), ready for a paper's draft or a README."""

from __future__ import annotations

from analysis.measurements import EXTRAS
from analysis.summary import (
    DROP_MARK,
    TaskSummary,
    drop_note,
    format_delta,
    format_extra,
    format_stat,
)

DAGGER = " †"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def task_table(summary: TaskSummary) -> list[str]:
    header = ["method", "bits", "runs"]
    for label in summary.labels:
        header += [label, "Δ FP32"]
    header += [EXTRAS[k] for k in summary.extra_keys]
    lines = ["| " + " | ".join(_escape(h) for h in header) + " |",
             "|---|" + "---:|" * (len(header) - 1)]
    for row in summary.rows:
        cells = [_escape(row.title), str(row.bits), str(row.runs)]
        for label in summary.labels:
            stat = row.stats.get(label)
            if stat is None:
                cells += ["", ""]
                continue
            text = (format_stat(stat, summary.task) + (DAGGER if stat.collapsed else "")
                    + (" " + DROP_MARK if stat.dropped else ""))
            cells += [text, format_delta(stat, summary.task)]
        cells += [format_extra(k, row.extras.get(k)) for k in summary.extra_keys]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render(summaries: list[TaskSummary], counts: dict[str, int]) -> str:
    total = sum(counts.values())
    states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    out = [f"# Results ({total} jobs: {states})", ""]
    any_collapsed = False
    for summary in summaries:
        out += [f"## {summary.display}", ""]
        out += task_table(summary)
        any_collapsed |= any(s.collapsed for r in summary.rows for s in r.stats.values())
        base = (f"Δ FP32: difference to the mean of {summary.baseline} on {summary.display}."
                if summary.baseline else f"No FP32 run of {summary.display}: no deltas.")
        out += ["", base, ""]
        if summary.any_dropped:
            out += [_escape(drop_note()), ""]
        if summary.seeds_note:
            out += [summary.seeds_note + ".", ""]
    out.append("Mean ± sample standard deviation over the runs (seeds) of each method and bit "
               "width; bits 32: no quantization.")
    if any_collapsed:
        out.append("† at least one run equals a single-class baseline (it learned nothing).")
    return "\n".join(out) + "\n"
