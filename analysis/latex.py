"""`sweep collect --to tex`: a LaTeX booktabs table per task, for a paper.

Rows method × bits; columns: the runs (seeds), per metric mean ± std and Δ FP32, and the
compressed model's size. The best value of each column is bold (highest metric and Δ, smallest
size); a cell significantly below FP32 (Welch's t-test, p < 0.05, at least 2 runs) carries a
star, a run equal to a single-class baseline a dagger. Rendered by pandas' Styler.to_latex
(hrules: booktabs' \\toprule, \\midrule, \\bottomrule). Every string that comes from a sweep
(method titles, hence spec values) is escaped; control characters are dropped. Brackets are
braced ({[}): a row whose first cell starts with `[` follows the previous row's `\\\\` and
would be read as its optional argument (`\\\\[1em]`); so is a `*` (`\\\\*`).
"""

from __future__ import annotations

import math
import re

from analysis.summary import TaskSummary, drop_note, format_extra

SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
           "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
           "^": r"\textasciicircum{}", "[": "{[}", "]": "{]}", "*": "{*}"}
UNICODE = {"±": r"$\pm$", "Δ": r"$\Delta$", "×": r"$\times$", "†": r"$^{\dagger}$",
           "−": "-"}


def escape(text: str) -> str:
    text = re.sub(r"[\x00-\x1f\x7f]", " ", str(text))
    out = "".join(SPECIAL.get(ch, ch) for ch in text)
    for ch, repl in UNICODE.items():
        out = out.replace(ch, repl)
    return out


def _num(value: float, digits: int) -> str:
    return str(value) if not math.isfinite(value) else f"{value:.{digits}f}"  # nan, inf


def _table(summary: TaskSummary):
    import pandas as pd

    digits = 2 if summary.task == "squad" else 4
    extras = summary.extra_keys
    titles = {"model_size_mb": "size (MB)", "compression_ratio": r"$\times$ smaller",
              "onnx_latency_ms": "ONNX INT8 (ms)", "onnx_speedup": "ONNX speedup"}
    # the best: the smallest size and latency, the largest ratio and speedup
    sign = {"model_size_mb": -1, "onnx_latency_ms": -1, "compression_ratio": 1,
            "onnx_speedup": 1}
    columns = [("", "method"), ("", "bits"), ("", "runs")]
    for label in summary.labels:
        columns += [(escape(label), r"mean $\pm$ std"), (escape(label), r"$\Delta$ FP32")]
    columns += [("", titles[k]) for k in extras]
    text_rows, keys = [], []  # keys: per column the number that ranks it (None: not ranked)
    for row in summary.rows:
        cells: list[str] = [escape(row.title), str(row.bits), str(row.runs)]
        ranks: list[float | None] = [None, None, None]
        for label in summary.labels:
            stat = row.stats.get(label)
            if stat is None:
                cells += ["", ""]
                ranks += [None, None]
                continue
            text = _num(stat.mean, digits)
            if stat.std is not None:
                text += r" $\pm$ " + _num(stat.std, digits)
            if stat.collapsed:
                text += r"$^{\dagger}$"
            if stat.dropped:
                text += r"$^{*}$"
            delta = "" if stat.delta is None else f"{stat.delta:+.{digits}f}"
            cells += [text, delta]
            ranks += [None if not math.isfinite(stat.mean) else stat.mean,
                      None if stat.delta is None or row.method == "fp32" else stat.delta]
        for k in extras:
            value = row.extras.get(k)
            cells.append(escape(format_extra(k, value)))
            ranks.append(None if value is None else sign[k] * value)
        text_rows.append(cells)
        keys.append(ranks)
    frame = pd.DataFrame(text_rows, columns=pd.MultiIndex.from_tuples(columns))
    best = []
    for c in range(len(columns)):
        values = [k[c] for k in keys if k[c] is not None]
        top = max(values) if values else None
        best.append([top is not None and k[c] == top for k in keys])

    def bold(col):
        c = columns.index(col.name)
        return ["textbf:--rwrap;" if b else "" for b in best[c]]

    styler = frame.style.hide(axis="index").apply(bold, axis=0)
    caption = (f"{escape(summary.display)}: mean $\\pm$ sample standard deviation over the "
               "runs (seeds); bits 32: no quantization. Bold: the best of each column.")
    if summary.baseline:
        caption += f" $\\Delta$ FP32: against {escape(summary.baseline)}."
    if summary.any_dropped:
        caption += " " + escape(drop_note()).replace("{*}", "$^{*}$", 1) + "."
    if any(s.collapsed for r in summary.rows for s in r.stats.values()):
        caption += r" $^{\dagger}$ a run equals a single-class baseline."
    if summary.seeds_note:
        caption += " " + escape(summary.seeds_note) + "."
    if "model_size_mb" in extras:
        caption += (" Size: the bytes the compressed model needs (MB = $10^6$ bytes); "
                    r"$\times$ smaller: the same architecture in FP32 $\div$ size.")
    label = "tab:" + re.sub(r"[^a-z0-9]+", "-", summary.task.lower())
    if "onnx_speedup" in extras:
        caption += (" ONNX: the 8-bit export (QDQ) run by onnxruntime on the CPU, batch 1; "
                    "speedup against the FP32 export of the same model.")
    align = "lrr" + "rr" * len(summary.labels) + "r" * len(extras)
    return styler.to_latex(hrules=True, column_format=align, caption=caption, label=label,
                           position_float="centering", position="t", multicol_align="c")


def render(summaries: list[TaskSummary]) -> str:
    out = ["% quantsweep: a table per task; needs \\usepackage{booktabs}", ""]
    for summary in summaries:
        out += [_table(summary), ""]
    return "\n".join(out)
