"""The workbook from known inputs: the measurements sheet cell by cell against a reference written
out by hand, the task sheets (mean ± std, runs, Δ FP32), collapsed runs marked in every sheet,
colour scales, frozen headers, and native line charts with the right series."""

from __future__ import annotations

import math
import re
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import openpyxl
import pytest
from conftest import sweep_cli
from test_collect import write_job as write_collect_job

NAN = float("nan")
STD_2 = math.sqrt(2 * 0.01 ** 2)  # sample std of two values 0.02 apart


BASE = {"model_name_or_path": "bert-base-uncased", "learning_rate": 2e-5}


def write_job(root: Path, name: str, config: dict, results: dict | None, state="completed"):
    return write_collect_job(root, name, {**BASE, **config}, results, state)


def known_inputs(root: Path) -> None:
    mrpc = lambda acc, f1: {"eval_accuracy": acc, "eval_f1": f1,  # noqa: E731
                            "eval_combined_score": (acc + f1) / 2}
    write_job(root, "mrpc-p2-8-s1", {"task": "mrpc", "method": "p2", "nbits": 8, "seed": 1},
              mrpc(0.80, 0.85))
    write_job(root, "mrpc-p2-8-s2", {"task": "mrpc", "method": "p2", "nbits": 8, "seed": 2},
              mrpc(0.82, 0.87))
    write_job(root, "mrpc-p2-2-s1", {"task": "mrpc", "method": "p2", "nbits": 2, "seed": 1},
              mrpc(0.70, 0.75))
    write_job(root, "mrpc-fp32", {"task": "mrpc", "method": "fp32", "seed": 1}, mrpc(0.84, 0.88))
    write_job(root, "rte-p2-4", {"task": "rte", "method": "p2", "nbits": 4}, {"eval_accuracy": NAN})
    write_job(root, "cola-lin-2", {"task": "cola", "method": "lin", "nbits": 2},
              {"eval_matthews_correlation": 0.0})  # MCC 0: a single-class predictor
    write_job(root, "cola-lin-1", {"task": "cola", "method": "lin", "nbits": 1}, None,
              state="failed")


# the measurements sheet those inputs must give, row by row (None: an empty cell)
REFERENCE = [
    [],
    ["Power of 2", 8, 7, 6, 5, 4, 3, 2, 1, "Bits"],
    ["RTE(acc)", None, None, None, None, "nan"],
    ["MRPC(acc)", 0.81, None, None, None, None, None, 0.70],
    ["MRPC(acc_f1)", (0.825 + 0.845) / 2, None, None, None, None, None, 0.725],
    ["MRPC(f1)", 0.86, None, None, None, None, None, 0.75],
    [], [],
    ["Linear", 8, 7, 6, 5, 4, 3, 2, 1, "Bits"],
    ["CoLA(mcc)", None, None, None, None, None, None, 0.0],
    [], [],
    ["FP32", 32, "Bits"],
    ["MRPC(acc)", 0.84],
    ["MRPC(acc_f1)", 0.86],
    ["MRPC(f1)", 0.88],
]


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    root = tmp_path_factory.mktemp("known") / "sweep"
    known_inputs(root)
    out = root.parent / "out.xlsx"
    proc = sweep_cli("collect", str(root), "--to", "xlsx", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "7 jobs (6 completed, 1 failed)" in proc.stdout
    return out, openpyxl.load_workbook(out)


def test_measurements_sheet_matches_the_reference_cell_by_cell(book):
    _, wb = book
    # tasks in the seed's order
    assert wb.sheetnames == ["measurements", "CoLA", "RTE", "MRPC", "runs", "settings"]
    ws = wb["measurements"]
    assert ws.max_row == len(REFERENCE)
    for r, want in enumerate(REFERENCE, start=1):
        got = [ws.cell(row=r, column=c).value for c in range(1, 11)]
        want = want + [None] * (10 - len(want))
        for c, (g, w) in enumerate(zip(got, want), start=1):
            if isinstance(w, float):
                assert g == pytest.approx(w, abs=1e-12), (r, c)
            else:
                assert g == w, (r, c)
    assert ws.freeze_panes == "B1"


def test_task_sheets_mean_std_runs_and_delta_to_fp32(book):
    _, wb = book
    ws = wb["MRPC"]
    assert [c.value for c in ws[1]][:12] == [
        "method", "bits", "runs", "MRPC(acc)", "± std", "Δ FP32", "MRPC(acc_f1)", "± std",
        "Δ FP32", "MRPC(f1)", "± std", "Δ FP32"]
    rows = [[c.value for c in row][:12] for row in ws.iter_rows(min_row=2, max_row=4)]
    assert rows[0][:6] == ["FP32", 32, 1, 0.84, None, 0.0]
    assert rows[1][:3] == ["Power of 2", 8, 2]
    assert rows[1][3:6] == pytest.approx([0.81, STD_2, 0.81 - 0.84])
    assert rows[1][9:12] == pytest.approx([0.86, STD_2, 0.86 - 0.88])
    assert rows[2][:4] == ["Power of 2", 2, 1, 0.70] and rows[2][4] is None
    assert rows[2][5] == pytest.approx(0.70 - 0.84)
    assert ws["A5"].value is None and "FP32" in ws["A7"].value  # notes below the table
    assert ws.freeze_panes == "B2" and ws.auto_filter.ref == "A1:L4"
    rte = wb["RTE"]
    assert [c.value for c in rte[2]][:6] == ["Power of 2", 4, 1, "nan", None, None]
    assert any("no FP32 run of this task" in str(c.value) for c in rte["A"])


def test_collapsed_runs_are_marked_in_every_sheet(book):
    _, wb = book
    ws = wb["measurements"]
    cell = ws["H10"]  # CoLA(mcc), 2 bits
    assert cell.value == 0.0 and cell.font.color.rgb == "FFC00000" and cell.font.bold
    assert "cola-lin-2" in cell.comment.text and "MCC 0" in cell.comment.text
    assert ws["B4"].comment is None  # MRPC(acc) 8 bits learned something
    cola = wb["CoLA"]
    assert cola["A2"].value == "Linear" and cola["D2"].value == 0.0
    assert cola["D2"].font.italic and "cola-lin-2" in cola["D2"].comment.text
    mrpc = wb["MRPC"]
    assert all(mrpc.cell(row=r, column=4).comment is None for r in range(2, 5))
    runs = wb["runs"]
    header = [c.value for c in runs[1]]
    by_dir = {runs.cell(row=r, column=header.index("output_dir") + 1).value.rsplit("/", 1)[1]: r
              for r in range(2, runs.max_row + 1)}
    row = by_dir["cola-lin-2"]
    assert "MCC 0" in runs.cell(row=row, column=header.index("collapsed") + 1).value
    assert runs.cell(row=row, column=1).fill.start_color.rgb == "FFF4CCCC"
    assert runs.cell(row=by_dir["mrpc-fp32"], column=1).fill.start_color.rgb != "FFF4CCCC"
    assert runs.cell(row=by_dir["cola-lin-1"], column=header.index("state") + 1).value == "failed"
    assert runs.freeze_panes == "B2"


def test_colour_scales_and_column_widths(book):
    _, wb = book

    def scaled(ws):
        return {str(rng.sqref): [r.colorScale is not None for r in rules]
                for rng, rules in ws.conditional_formatting._cf_rules.items()}

    mrpc = scaled(wb["MRPC"])
    assert mrpc["D2:D4"] == [True] and mrpc["F2:F4"] == [True]  # means and deltas
    assert {"G2:G4", "J2:J4", "I2:I4", "L2:L4"} <= set(mrpc)
    meas = scaled(wb["measurements"])
    assert "B4:H4" in meas  # MRPC(acc) of Power of 2, along the bit widths
    runs = wb["runs"]
    header = [c.value for c in runs[1]]
    col = openpyxl.utils.get_column_letter(header.index("eval_accuracy") + 1)
    assert f"{col}2:{col}8" in scaled(runs)
    loss = [h for h in header if h == "eval_loss"]
    assert not loss  # (no loss in these inputs; a loss column would carry no scale)
    assert wb["MRPC"].column_dimensions["A"].width >= len("Power of 2")
    assert runs.column_dimensions[col].width >= len("eval_accuracy")


def _charts(path: Path) -> list[dict]:
    """Each chart of the workbook: its title and its series (name, values, categories) as the
    cell references Excel will read, resolved in the workbook."""
    wb = openpyxl.load_workbook(path)

    def resolve(ref: str) -> list:
        sheet, cells = ref.rsplit("!", 1)
        ws = wb[sheet.strip("'")]
        got = ws[cells.replace("$", "")]
        if not isinstance(got, tuple):
            return [got.value]
        return [c.value for row in got for c in (row if isinstance(row, tuple) else (row,))]

    ns = {"c": "http://schemas.openxmlformats.org/drawingml/2006/chart",
          "a": "http://schemas.openxmlformats.org/drawingml/2006/main"}
    charts = []
    with zipfile.ZipFile(path) as z:
        for name in sorted(n for n in z.namelist() if re.match(r"xl/charts/chart\d+\.xml", n)):
            root = ElementTree.fromstring(z.read(name))
            plot = root.find("c:chart/c:plotArea", ns)
            assert [child.tag.split("}")[1] for child in plot if child.tag.endswith("Chart")] == [
                "lineChart"]
            title = "".join(t.text for t in root.findall("c:chart/c:title//a:t", ns))
            series = []
            for ser in plot.findall("c:lineChart/c:ser", ns):
                series.append((resolve(ser.find("c:tx/c:strRef/c:f", ns).text)[0],
                               resolve(ser.find("c:val/c:numRef/c:f", ns).text),
                               resolve(ser.find("c:cat//c:f", ns).text)))
            charts.append({"title": title, "series": series})
    return charts


def test_one_line_chart_per_task_with_a_series_per_method(book):
    path, _ = book
    charts = {c["title"]: c["series"] for c in _charts(path)}
    assert set(charts) == {"MRPC: MRPC(acc) vs bits", "CoLA: CoLA(mcc) vs bits"}  # RTE: NaN only
    mrpc = charts["MRPC: MRPC(acc) vs bits"]
    assert [(name, vals, cats) for name, vals, cats in mrpc] == [
        ("Power of 2", [0.81, 0.70], [8, 2]),
        ("FP32 (32-bit)", [0.84, 0.84], [8, 2]),
    ]
    assert charts["CoLA: CoLA(mcc) vs bits"] == [("Linear", [0.0], [2])]


def test_settings_the_same_in_every_run_leave_the_runs_sheet(book):
    _, wb = book
    header = [c.value for c in wb["runs"][1]]
    assert "model_name_or_path" not in header and "learning_rate" not in header
    assert {"job_id", "task", "method", "nbits", "seed", "eval_accuracy", "state"} <= set(header)
    settings = {r[0]: r[1] for r in wb["settings"].iter_rows(min_row=2, values_only=True)}
    assert settings == {"model_name_or_path": "bert-base-uncased", "learning_rate": 2e-5}
