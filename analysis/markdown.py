"""`sweep collect --to md`: a Markdown table per task (method × nbits, mean ± std over seeds, run
count, delta to FP32), ready for a paper's draft or a README.

Every value from a spec, a sweep directory or a result file (method titles, task names, states)
goes through `escape`: a Markdown renderer passes raw HTML through (`<img onerror=...>`,
`<script>`) and makes links of `[x](javascript:...)` and `<javascript:...>`, so `&`, `<`, `>`
become entities, Markdown's punctuation is backslash-escaped and line breaks become spaces
(a cell or heading cannot end early and start a block of its own).
"""

from __future__ import annotations

import re

from analysis.blocks import EXTRAS
from analysis.summary import (
    DROP_MARK,
    TaskSummary,
    drop_note,
    format_delta,
    format_extra,
    format_stat,
)

DAGGER = " †"


_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
# what makes links ([x](url), ![x](url)), code, emphasis, strikethrough, table cells and
# heading closers; `(` `)` `:` need no escape once `[` `]` `<` cannot open a link
_PUNCT = {ch: "\\" + ch for ch in "\\`*_[]|~#"}
_BREAK = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+")
_LEAD = re.compile(r"^(\s*\d*)([-+=.)])")  # a list item or setext underline at a line start


def escape(text: str) -> str:
    """`text` as Markdown that renders as exactly that text: no HTML, link, emphasis, table
    cell boundary or line break of its own."""
    text = _BREAK.sub(" ", str(text))
    text = "".join(_HTML.get(ch) or _PUNCT.get(ch) or ch for ch in text)
    return _LEAD.sub(r"\1\\\2", text)




def task_table(summary: TaskSummary) -> list[str]:
    header = ["method", "bits", "runs"]
    for label in summary.labels:
        header += [label, "Δ FP32"]
    header += [EXTRAS[k] for k in summary.extra_keys]
    lines = ["| " + " | ".join(header) + " |",  # our own labels (ROWS, EXTRAS)
             "|---|" + "---:|" * (len(header) - 1)]
    for row in summary.rows:
        cells = [escape(row.title), str(row.bits), str(row.runs)]
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
    states = ", ".join(f"{n} {escape(s)}" for s, n in sorted(counts.items()))
    out = [f"# Results ({total} jobs: {states})", ""]
    any_collapsed = False
    for summary in summaries:
        display = escape(summary.display)
        out += [f"## {display}", ""]
        out += task_table(summary)
        any_collapsed |= any(s.collapsed for r in summary.rows for s in r.stats.values())
        base = (f"Δ FP32: difference to the mean of {escape(summary.baseline)} on {display}."
                if summary.baseline else f"No FP32 run of {display}: no deltas.")
        out += ["", base, ""]
        if summary.any_dropped:
            out += [escape(drop_note()), ""]
        if summary.seeds_note:
            out += [escape(summary.seeds_note) + ".", ""]
    out.append("Mean ± sample standard deviation over the runs (seeds) of each method and bit "
               "width; bits 32: no quantization.")
    if any_collapsed:
        out.append("† at least one run equals a single-class baseline (it learned nothing).")
    return "\n".join(out) + "\n"
