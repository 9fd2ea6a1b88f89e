"""Size columns, the Pareto front and the metric-vs-size scatter chart, from known results."""

from __future__ import annotations

import re
import zipfile
from xml.etree import ElementTree

import openpyxl
import pytest
from conftest import sweep_cli
from test_collect import write_job

from analysis.summary import Point, pareto

BASE = {"model_name_or_path": "bert-base-uncased"}


def sized(acc, size, ratio):
    return {"eval_accuracy": acc, "eval_f1": acc, "eval_combined_score": acc,
            "model_size_mb": size, "fp32_size_mb": 438.0, "compression_ratio": ratio}


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    root = tmp_path_factory.mktemp("sizes") / "sweep"
    jobs = [("fp32", None, 1, 0.84, 438.0, 1.0), ("p2", 8, 1, 0.80, 120.0, 3.65),
            ("p2", 8, 2, 0.82, 120.0, 3.65), ("p2", 2, 1, 0.70, 40.0, 10.95),
            ("lin", 4, 1, 0.83, 60.0, 7.3)]
    for method, bits, seed, acc, size, ratio in jobs:
        config = {**BASE, "task": "mrpc", "method": method, "seed": seed}
        if bits:
            config["nbits"] = bits
        results = sized(acc, size, ratio)
        if method == "lin":  # an 8-bit export's figures
            results.update(onnx_latency_ms=3.5, onnx_speedup=1.4)
        write_job(root, f"{method}-{bits}-{seed}", config, results)
    out = root.parent / "out.xlsx"
    proc = sweep_cli("collect", str(root), "--to", "xlsx", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    return out, openpyxl.load_workbook(out)


def test_pareto_front_by_hand():
    pts = [Point("a", 8, 120.0, 0.81), Point("b", 4, 60.0, 0.83), Point("c", 2, 40.0, 0.70),
           Point("fp32", 32, 438.0, 0.84), Point("d", 4, 60.0, 0.83)]
    pareto(pts)
    # a is dominated by b (smaller and better); b and d tie: neither dominates the other
    assert [p.on_front for p in pts] == [False, True, True, True, True]


def test_task_sheet_has_size_and_ratio(book):
    _, wb = book
    ws = wb["MRPC"]
    header = [c.value for c in ws[1]]
    size_col, ratio_col = header.index("size (MB)"), header.index("× smaller")
    rows = {(r[0], r[1]): (r[size_col], r[ratio_col])
            for r in ws.iter_rows(min_row=2, values_only=True) if r[1] is not None}
    assert rows[("FP32", 32)] == (438.0, 1.0)
    assert rows[("Power of 2", 8)] == (120.0, 3.65)  # the mean of its two seeds
    assert rows[("Linear", 4)] == (60.0, 7.3)
    at = header.index("ONNX INT8 (ms)")
    assert header[at - 2:at + 2] == ["size (MB)", "× smaller", "ONNX INT8 (ms)", "ONNX speedup"]
    onnx = {r[0]: r[at:at + 2] for r in ws.iter_rows(min_row=2, values_only=True)
            if r[1] is not None}
    assert onnx["Linear"] == (3.5, 1.4) and onnx["FP32"] == (None, None)
    runs = [c.value for c in wb["runs"][1]]
    assert {"model_size_mb", "compression_ratio"} <= set(runs)


def test_scatter_chart_with_a_series_per_method_and_the_front(book):
    path, wb = book
    ns = {"c": "http://schemas.openxmlformats.org/drawingml/2006/chart",
          "a": "http://schemas.openxmlformats.org/drawingml/2006/main"}

    def resolve(ref):
        sheet, cells = ref.rsplit("!", 1)
        got = wb[sheet.strip("'")][cells.replace("$", "")]
        return [c.value for row in got for c in row] if isinstance(got, tuple) else [got.value]

    scatters = {}
    with zipfile.ZipFile(path) as z:
        for name in (n for n in z.namelist() if re.match(r"xl/charts/chart\d+\.xml", n)):
            root = ElementTree.fromstring(z.read(name))
            plot = root.find("c:chart/c:plotArea/c:scatterChart", ns)
            if plot is None:
                continue
            title = "".join(t.text for t in root.findall("c:chart/c:title//a:t", ns))
            scatters[title] = {
                "".join(t.text for t in ser.findall("c:tx//c:v", ns)):
                    list(zip(resolve(ser.find("c:xVal/c:numRef/c:f", ns).text),
                             resolve(ser.find("c:yVal/c:numRef/c:f", ns).text)))
                for ser in plot.findall("c:ser", ns)}
    assert scatters == {"MRPC: MRPC(acc) vs model size": {
        "FP32": [(438.0, 0.84)],
        "Power of 2": [(40.0, 0.70), (120.0, pytest.approx(0.81))],
        "Linear": [(60.0, 0.83)],
        "Pareto front": [(40.0, 0.70), (60.0, 0.83), (438.0, 0.84)],
    }}


def test_html_and_markdown_show_sizes_and_the_scatter(book, tmp_path):
    import base64

    path, _ = book
    root = path.parent / "sweep"
    html = tmp_path / "r.html"
    assert sweep_cli("collect", str(root), "--to", "html", "-o", str(html)).returncode == 0
    text = html.read_text()
    m = re.search(r'<img class="chart" src="data:image/svg\+xml;base64,([^"]+)" '
                  r'alt="MRPC: MRPC\(acc\) vs model size"', text)
    assert m, "no scatter chart"
    svg = base64.b64decode(m.group(1)).decode()
    assert svg.count("<circle") == 4 + 3  # 4 rows (p2 8 bits: 2 seeds averaged), 3 legend
    assert "Pareto front" in svg and "stroke-dasharray" in svg
    assert svg.count('stroke="#000"') == 3  # the front's points are ringed
    md = tmp_path / "r.md"
    assert sweep_cli("collect", str(root), "--to", "md", "-o", str(md)).returncode == 0
    assert "| size (MB) | × smaller | ONNX INT8 (ms) | ONNX speedup |" in md.read_text()
    line = next(t for t in md.read_text().splitlines() if t.startswith("| Linear | 4 | 1 |"))
    assert line.endswith("| 60.0 | 7.30× | 3.50 | 1.40× |"), line
