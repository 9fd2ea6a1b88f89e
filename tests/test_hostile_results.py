"""Hostile result trees: names that are not UTF-8, control characters, NaN and infinite metrics,
a 5,000-digit number, strings that a spreadsheet would run as formulas (OWASP CSV injection).
Every output format is written, reopens, names the bad files, and never runs a formula."""

from __future__ import annotations

import csv
import json
import os

import openpyxl
import pytest
from conftest import sweep_cli

FORMULAS = ['=HYPERLINK("http://example.invalid","click")', "+1+2", "-2+3", "@SUM(A1)",
            "=1+1"]


def job(root: bytes, name: bytes, config: dict, results: str | dict,
        state: str = "completed") -> None:
    out = os.path.join(root, name)
    os.makedirs(out, exist_ok=True)
    for fname, data in ((b"config.json", json.dumps(config)),
                        (b"status.json", json.dumps({"state": state})),
                        (b"eval_results.json", results if isinstance(results, str)
                         else json.dumps(results))):
        with open(os.path.join(out, fname), "w", encoding="utf-8") as fh:
            fh.write(data)


@pytest.fixture
def tree(tmp_path):
    root = os.fsencode(tmp_path / "t")
    good = {"eval_accuracy": 0.7, "eval_f1": 0.8}
    job(root, b"bad\xffname", {"task": "mrpc", "method": "lin", "nbits": 4}, good)
    job(root, b"formula", {"task": "mrpc", "method": FORMULAS[0], "nbits": 4,
                           "note": FORMULAS[1], "x": FORMULAS[2], "y": FORMULAS[3]}, good)
    job(root, b"control", {"task": "mrpc", "method": "p2", "nbits": 2, "note": "a\x07b\x1bc",
                           "lone": "\udcff"}, good)
    job(root, b"nan", {"task": "mrpc", "method": "p2", "nbits": 4},
        '{"eval_accuracy": NaN, "eval_f1": Infinity}')
    job(root, b"nan2", {"task": "mrpc", "method": "p2", "nbits": 8},
        {"eval_accuracy": 0.6, "eval_f1": 0.7})
    job(root, b"bigint", {"task": "mrpc", "method": "p2", "nbits": 3},
        '{"eval_accuracy": 0.5, "eval_f1": ' + "9" * 5000 + "}")
    job(root, b"reason", {"task": "mrpc", "method": "mb", "nbits": 2}, "{}", state="failed")
    foreign = os.path.join(root, b"foreign", b"mrpc_linquant2bit\xfe")
    os.makedirs(foreign)
    with open(os.path.join(foreign, b"eval_results.txt"), "w") as fh:
        fh.write("acc = 0.7\nf1 = 0.8\n")
    with open(os.path.join(root, b"foreign", b"\xffeval_results.txt"), "w") as fh:
        fh.write(FORMULAS[4] + " = 0.5\n")
    return tmp_path


@pytest.mark.parametrize("to", ["xlsx", "csv", "md", "html"])
def test_every_format_survives_a_hostile_tree(tree, to):
    proc = sweep_cli("collect", "t", "--to", to, "-o", f"out.{to}", cwd=tree)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "bigint/eval_results.json" in proc.stderr  # named, with the reason
    assert "\\udcfe" in proc.stderr or "\\udcff" in proc.stderr  # bad names, escaped
    data = (tree / f"out.{to}").read_bytes()
    if to == "xlsx":
        wb = openpyxl.load_workbook(tree / "out.xlsx")
        strings = []
        for ws in wb.worksheets:
            for row in ws.iter_rows():
                for cell in row:
                    assert cell.data_type != "f", (ws.title, cell.coordinate, cell.value)
                    if isinstance(cell.value, str):
                        strings.append(cell.value)
        joined = "\n".join(strings)
        assert FORMULAS[0] in joined and FORMULAS[3] in joined  # kept, as text
        assert "bad\\xffname" in joined or "bad\\udcffname" in joined
        assert "a\\x07b\\x1bc" in joined
    else:
        text = data.decode("utf-8")  # it is UTF-8, whatever the names were
        assert "\udcff" not in text
    if to == "csv":
        rows = list(csv.reader(data.decode().splitlines()))
        cells = [c for r in rows for c in r]
        for formula in FORMULAS[:4]:
            assert formula not in cells and "'" + formula in cells
        assert not any(c.startswith(("=", "+", "@")) for c in cells)
    if to == "html":
        html = data.decode()
        assert "<script" not in html.lower()
        assert "HYPERLINK(&#34;" in html or "HYPERLINK(&quot;" in html


def test_html_with_only_nan_metrics(tmp_path):
    root = os.fsencode(tmp_path / "t")
    job(root, b"a", {"task": "rte", "method": "lin", "nbits": 4}, '{"eval_accuracy": NaN}')
    job(root, b"b", {"task": "rte", "method": "lin", "nbits": 8}, '{"eval_accuracy": 0.5}')
    proc = sweep_cli("collect", "t", "--to", "html", "-o", "r.html", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "nan" in (tmp_path / "r.html").read_text()
