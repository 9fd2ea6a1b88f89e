"""`--to md`, `--to csv` and `--to html` from a launched sweep's ledger: the same tables as the
workbook, the failed and missing jobs, the sweep spec; the HTML report rendered by Debian's
headless Chromium, its chart images decoded and on screen."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import sweep_cli

from jobs.grid import expand
from jobs.ledger import Ledger
from jobs.spec import load_spec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SPEC = """\
# a small study: FP32 and power-of-two INQ on MRPC
name: report_demo
finetune_sharing: false
grid:
  task: [mrpc]
  method: [p2]
  nbits: [8, 2]
  seed: [1, 2]
include:
  - {task: mrpc, method: fp32, seed: 1}
base:
  model_name_or_path: bert-base-uncased
output_dir: "{task}_{method}{nbits}_s{seed}"
"""


def mrpc(acc: float, f1: float) -> dict:
    return {"eval_accuracy": acc, "eval_f1": f1, "eval_combined_score": (acc + f1) / 2}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A launched sweep: its ledger (as `sweep launch` registers it), the FP32 job and three p2
    jobs completed (the 2-bit one a single-class predictor), one p2 job never started."""
    base = tmp_path_factory.mktemp("report")
    spec_path = base / "report_demo.yaml"
    spec_path.write_text(SPEC)
    spec = load_spec(spec_path)
    spec.sweep_dir = str(base / "runs" / "report_demo")
    jobs = expand(spec)
    ledger = Ledger(spec.sweep_dir)
    ledger.register(spec.name, str(spec_path), jobs)
    results = {(8, 1): mrpc(0.80, 0.85), (8, 2): mrpc(0.82, 0.87), (2, 1): mrpc(0.6838, 0.8122),
               (None, 1): mrpc(0.84, 0.88)}
    for job in jobs:
        key = (job.config.get("nbits"), job.config["seed"])
        out = Path(job.output_dir)
        if key == (2, 2):
            continue  # never started: missing
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps({**job.config, "job_id": job.id,
                                                     "sweep": spec.name}))
        state = "completed" if key in results else "failed"
        (out / "status.json").write_text(json.dumps({"state": state}))
        if key in results:
            (out / "eval_results.json").write_text(json.dumps(results[key]))
        ledger.update(job.id, state=state)
    return Path(spec.sweep_dir)


def test_ledger_keeps_the_spec_as_launched(sweep):
    data = Ledger(sweep).data
    assert data["spec_text"] == SPEC


def test_markdown_tables(sweep, tmp_path):
    out = tmp_path / "results.md"
    proc = sweep_cli("collect", str(sweep), "--to", "md", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert text.startswith("# Results (5 jobs: 4 completed, 1 missing)\n")
    std = (2 * 0.01 ** 2) ** 0.5
    table = text.split("## MRPC\n\n")[1].split("\n\n")[0].splitlines()
    assert table == [
        "| method | bits | runs | MRPC(acc) | Δ FP32 | MRPC(acc_f1) | Δ FP32 | MRPC(f1) | Δ FP32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| FP32 | 32 | 1 | 0.8400 | +0.0000 | 0.8600 | +0.0000 | 0.8800 | +0.0000 |",
        f"| Power of 2 | 8 | 2 | 0.8100 ± {std:.4f} | -0.0300 | 0.8350 ± {std:.4f} | -0.0250 "
        f"| 0.8600 ± {std:.4f} | -0.0200 |",
        "| Power of 2 | 2 | 1 | 0.6838 † | -0.1562 | 0.7480 † | -0.1120 | 0.8122 † | -0.0678 |",
    ]
    assert "† at least one run equals a single-class baseline" in text


def test_csv_is_the_tidy_table(sweep, tmp_path):
    out = tmp_path / "results.csv"
    assert sweep_cli("collect", str(sweep), "--to", "csv", "-o", str(out)).returncode == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 5
    assert sorted(r["state"] for r in rows) == ["completed"] * 4 + ["missing"]
    collapsed = [r for r in rows if r["collapsed"]]
    assert [(r["nbits"], r["seed"], r["eval_accuracy"]) for r in collapsed] == [("2", "1",
                                                                                 "0.6838")]


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("html") / "report.html"
    proc = sweep_cli("collect", str(sweep), "--to", "html", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_html_report_is_self_contained_with_tables_specs_and_unfinished_jobs(report):
    import base64

    html = report.read_text()
    page = _Page()
    page.feed(html)
    text = " ".join(page.text)
    tags = [t for t, _ in page.tags]
    assert "script" not in tags and "link" not in tags  # nothing to fetch, nothing to run
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    images = [a["src"] for t, a in page.tags if t == "img"]
    assert len(images) == 1 and images[0].startswith("data:image/svg+xml;base64,")
    svg = base64.b64decode(images[0].split(",", 1)[1]).decode()
    assert "MRPC: MRPC(acc) vs bits" in svg and "Power of 2" in svg and "FP32 (32-bit)" in svg
    assert svg.count("<polyline") == 2  # Power of 2 over 8 and 2 bits, the flat FP32 line
    # the task table, the seed-layout table, the missing job, the spec as launched
    assert "0.8100 ± 0.0141" in text and "-0.1562" in text
    assert "Power of 2" in text and "Bits" in text
    assert "missing" in text and "mrpc_p22_s2" in text
    assert "name: report_demo" in text and "# a small study" in text
    collapsed = [a for t, a in page.tags if t == "td" and "collapsed" in a.get("class", "")]
    assert collapsed and all("mrpc_p22_s1" in a["title"] for a in collapsed)


def _png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Rows of RGB(A) pixels of a non-interlaced 8-bit PNG (what Chromium's screenshots are)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, bpp, rows


def _chromium(*args: str) -> subprocess.CompletedProcess:
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"qs-chromium-{os.getpid()}"
    try:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="no chromium (apt-get install chromium; .ci/run installs it, and CI fails without)")


@needs_chromium
def test_html_report_in_headless_chromium(report, tmp_path):
    assert CHROMIUM, "CI must have Debian's chromium (.ci/run installs it)"
    # the browser decodes the chart image: a probe script appended to a copy of the report
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", (
        "<script>window.addEventListener('load', () => document.body.setAttribute('data-probe',"
        " Array.from(document.images).map(i => i.complete + ':' + i.naturalWidth + 'x' +"
        " i.naturalHeight).join(',') + ';tables=' + document.querySelectorAll('table').length"
        "));</script></body>")))
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    probed = re.search(r'data-probe="([^"]*)"', dom.stdout)
    assert probed, dom.stdout[-2000:]
    assert probed.group(1) == "true:720x380;tables=4"  # task, measurements, unfinished, runs
    shot = tmp_path / "report.png"
    proc = _chromium("--window-size=1200,1400", f"--screenshot={shot}", report.as_uri())
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    width, bpp, rows = _png_pixels(shot)
    assert (width, len(rows)) == (1200, 1400)

    def count(rgb: tuple[int, int, int], tol: int = 12) -> int:
        n = 0
        for row in rows:
            for x in range(0, width * bpp, bpp):
                if all(abs(row[x + k] - rgb[k]) <= tol for k in range(3)):
                    n += 1
        return n

    assert count((0x1F, 0x77, 0xB4)) > 200  # the Power of 2 series, drawn on screen
    assert count((0xFF, 0x7F, 0x0E)) > 200  # the FP32 reference line
    assert count((0x63, 0xBE, 0x7B)) > 100  # the colour scale's green: the best cell
    assert count((0xF8, 0x69, 0x6B)) > 100  # ... and its red: the collapsed 2-bit run
