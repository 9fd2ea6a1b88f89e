"""A significant drop against FP32 (Welch's t-test) is marked in every format: the xlsx Δ cell
(number format and a comment with t, df, p), Markdown, HTML; and the unstable-task note."""

from __future__ import annotations

import openpyxl
import pytest
from conftest import sweep_cli
from test_collect import write_job


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("welch") / "sweep"
    base = {"model_name_or_path": "bert-base-uncased"}
    for seed, (fp, low, same) in enumerate([(0.85, 0.80, 0.86), (0.86, 0.82, 0.85),
                                            (0.84, 0.78, 0.84)], start=1):
        for method, bits, value in (("fp32", None, fp), ("p2", 2, low), ("lin", 8, same)):
            config = {**base, "task": "rte", "method": method, "seed": seed}
            if bits:
                config["nbits"] = bits
            write_job(root, f"{method}-{seed}", config, {"eval_accuracy": value})
    write_job(root, "lin-4", {**base, "task": "rte", "method": "lin", "nbits": 4},
              {"eval_accuracy": 0.83})  # one run: not tested, and the seeds note
    return root


def test_xlsx_marks_the_drop_on_its_delta(sweep, tmp_path):
    out = tmp_path / "r.xlsx"
    assert sweep_cli("collect", str(sweep), "--to", "xlsx", "-o", str(out)).returncode == 0
    ws = openpyxl.load_workbook(out)["RTE"]
    rows = {(r[0].value, r[1].value): r for r in ws.iter_rows(min_row=2) if r[1].value}
    p2_delta = rows[("Power of 2", 2)][5]
    assert p2_delta.value == pytest.approx(-0.05) and '" *"' in p2_delta.number_format
    # by hand: se^2 = 0.0004/3 + 0.0001/3, t = -0.05/se = -3.87, Welch df = 2.94
    assert p2_delta.comment.text.startswith("welch t = -3.87, df = 2.9, p = 0.03")
    lin_delta = rows[("Linear", 8)][5]
    assert '" *"' not in lin_delta.number_format and lin_delta.comment.text.startswith("welch")
    assert rows[("Linear", 4)][5].comment is None  # one run: no test
    notes = [c.value for c in ws["A"] if isinstance(c.value, str)]
    assert any(n.startswith("* significantly below FP32: Welch's t-test") for n in notes)
    assert any(n.startswith("RTE varies across fine-tuning seeds: 1 of 4 rows") for n in notes)


def test_markdown_and_html_mark_it_too(sweep, tmp_path):
    md, html = tmp_path / "r.md", tmp_path / "r.html"
    assert sweep_cli("collect", str(sweep), "--to", "md", "-o", str(md)).returncode == 0
    assert sweep_cli("collect", str(sweep), "--to", "html", "-o", str(html)).returncode == 0
    text = md.read_text()
    assert "| Power of 2 | 2 | 3 | 0.8000 ± 0.0200 * | -0.0500 |" in text
    assert "| Linear | 8 | 3 | 0.8500 ± 0.0100 | +0.0000 |" in text
    assert "RTE varies across fine-tuning seeds" in text
    page = html.read_text()
    assert "0.8000 ± 0.0200 *</td>" in page
    assert 'title="welch t = -3.87, df = 2.9, p = 0.03' in page
    assert "significantly below FP32: Welch" in page
