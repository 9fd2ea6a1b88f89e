"""`sweep collect` on result trees written by someone hostile: no spreadsheet formula or row
planted through a line break (CSV), no HTML or link of its own (Markdown), no bracket read as
LaTeX's optional argument, no input destroyed by `-o`, nothing read from outside the tree, no
crash on deep, oddly shaped or huge values, no hang on a FIFO, no terminal escape printed.

Everything runs in-process (jobs.cli.main, capsys): a collection of a few jobs takes
milliseconds."""

from __future__ import annotations

import csv
import json
import os
import re
import resource
import signal
from contextlib import contextmanager
from pathlib import Path

import openpyxl
import pytest

from analysis.latex import escape as tex_escape
from analysis.safe_text import csv_cell
from jobs.cli import main

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
GOOD = {"eval_accuracy": 0.7, "eval_f1": 0.8, "eval_combined_score": 0.75}


def write_job(root: Path, name: str, config: dict | None = None,
              results: dict | str | None = None, state: str = "completed") -> Path:
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    config = config or {"task": "mrpc", "method": "lin", "nbits": 4}
    (out / "config.json").write_text(json.dumps(config))
    (out / "status.json").write_text(json.dumps({"state": state}))
    if results is not None:
        (out / "eval_results.json").write_text(results if isinstance(results, str)
                                               else json.dumps(results))
    return out


def write_ledger(sweep_dir: Path, jobs: dict, **extra) -> Path:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / "ledger.json"
    path.write_text(json.dumps({"sweep": sweep_dir.name, "jobs": jobs, **extra}))
    return path


def collect(capsys, *args) -> tuple[int, str, str]:
    rc = main(["collect", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


class Blocked(BaseException):
    """Not an Exception: no `except Exception` in the code under test may swallow it."""


@contextmanager
def deadline(seconds: float):
    """Fail, not hang, where a read would block forever (a FIFO): SIGALRM interrupts it."""
    def expired(signum, frame):
        raise Blocked(f"blocked for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def memory_cap(extra_mib: int = 512):
    """A read of /dev/zero fails with MemoryError within `extra_mib`, not with the machine."""
    with open("/proc/self/status") as fh:
        size_kib = next(int(line.split()[1]) for line in fh if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size_kib * 1024 + extra_mib * 2**20, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def spreadsheet_cells(text: str) -> list[str]:
    """The cells a spreadsheet program sees: a row ends at any CR or LF, quoted or not (a lone
    CR starts a row in Excel and LibreOffice)."""
    cells = []
    for line in re.split(r"\r\n|\r|\n|\u2028|\u2029|\x85", text):
        for row in csv.reader([line]):
            cells += row
    return cells


def is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return cell.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity")


# ---------------------------------------------------------------------------------------------
# 1. CSV: a line break inside a cell must not plant a row, or a cell, that starts a formula

LINE_BREAK_FORMULAS = {"cr": "x\r=1+1", "lf": "y\n+2+3", "crlf": "z\r\n@SUM(A1)",
                       "u2028": "w\u2028-4+5", "nel": "v\x85=HYPERLINK(\"http://e.invalid\")",
                       "tab": "\t=1+1", "spaces": "  =1+1"}


def test_csv_no_row_or_cell_starts_a_formula_after_a_line_break(tmp_path, capsys):
    root = tmp_path / "t"
    for i, (key, value) in enumerate(LINE_BREAK_FORMULAS.items()):
        write_job(root, f"j{i}", {"task": "mrpc", "method": "lin", "nbits": 4, "seed": i,
                                  "note": value, key + "\r=key": 1},
                  {**GOOD, "eval_accuracy": -0.5}, state="completed")
    write_job(root, "reason", {"task": "mrpc", "method": "lin", "nbits": 2}, None,
              state="failed")
    (root / "reason" / "status.json").write_text(json.dumps(
        {"state": "failed", "reason": "boom\r=2+2\n@x"}))
    rc, _, err = collect(capsys, root, "--to", "csv", "-o", tmp_path / "r.csv")
    assert rc == 0, err
    text = (tmp_path / "r.csv").read_bytes().decode("utf-8")
    assert "\r" not in text and "\u2028" not in text and "\x85" not in text
    assert len(text.splitlines()) == len(LINE_BREAK_FORMULAS) + 2  # header + a row per job
    for cell in spreadsheet_cells(text):
        assert is_number(cell) or not cell.lstrip(" ").startswith(FORMULA_START), cell
    assert "-0.5" in spreadsheet_cells(text)  # a negative number stays a number
    rows = list(csv.DictReader(text.splitlines()))
    assert rows[0]["note"].startswith(("x", "'"))  # the text kept, its break escaped
    assert any("=1+1" in r["note"] for r in rows)


def test_csv_cell_neutralises_every_formula_start():
    assert csv_cell("x\r=1+1") == "x\\x0d=1+1"
    assert csv_cell("\r=1+1") == "\\x0d=1+1"  # starts with a backslash: no formula
    assert csv_cell(float("-inf")) == "'-inf" and csv_cell(float("nan")) == "nan"
    assert csv_cell(-0.5) == -0.5 and csv_cell(3) == 3
    assert csv_cell(" @SUM(A1)") == "' @SUM(A1)"


# ---------------------------------------------------------------------------------------------
# 2. Markdown and LaTeX: values from the tree render as text, never as HTML, links or commands

HTML_PAYLOADS = ["<img src=x onerror=alert(1)>", "<svg onload=alert(2)>",
                 "<iframe src=javascript:alert(3)></iframe>", "<script>alert(4)</script>",
                 "[click](javascript:alert(5))", "<javascript:alert(6)>", "a | b\n# heading",
                 "![img](javascript:alert(7))", "*bold* _x_ `code`"]


def hostile_methods(root: Path, payloads: list[str]) -> None:
    write_job(root, "fp32", {"task": "mrpc", "method": "fp32"}, GOOD)
    for i, payload in enumerate(payloads):
        write_job(root, f"m{i}", {"task": "mrpc", "method": payload, "nbits": 4}, GOOD)
    write_job(root, "state", {"task": "mrpc", "method": "lin", "nbits": 2}, None,
              state="<img src=x onerror=alert(8)>")


def test_markdown_escapes_html_and_links_from_the_tree(tmp_path, capsys):
    root = tmp_path / "t"
    hostile_methods(root, HTML_PAYLOADS)
    rc, _, err = collect(capsys, root, "--to", "md", "-o", tmp_path / "r.md")
    assert rc == 0, err
    md = (tmp_path / "r.md").read_text()
    for tag in ("<img", "<svg", "<iframe", "<script", "<javascript"):
        assert tag not in md.lower()
    assert not re.search(r"(?<!\\)\]\(", md)  # no link: every ] escaped
    assert "&lt;svg onload=alert(2)&gt;" in md
    for line in md.splitlines():  # a value's line break did not start a heading
        assert not line.startswith("# heading")
    table_rows = [line for line in md.splitlines() if line.startswith("| ")]
    widths = {len(re.split(r"(?<!\\)\|", line)) for line in table_rows}
    assert len(widths) == 1  # no value added a cell of its own
    markdown_it = pytest.importorskip("markdown_it")
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(md)
    for tag in ("<img", "<svg", "<iframe", "<script"):
        assert tag not in html.lower()
    assert "javascript:" not in "".join(re.findall(r'href="([^"]*)"', html))


def test_markdown_escape_unit():
    from analysis.markdown import escape as md_escape

    assert md_escape("<b>&") == "&lt;b&gt;&amp;"
    assert md_escape("[x](y)") == "\\[x\\](y)"
    assert md_escape("a\r\nb|c") == "a b\\|c"
    assert md_escape("- item") == "\\- item"
    assert md_escape("Power of 2") == "Power of 2"


def test_latex_row_starting_with_a_bracket_is_no_optional_argument(tmp_path, capsys):
    root = tmp_path / "t"
    hostile_methods(root, ["[1em]evil", "*star", " [2em]spaced", "a\\b{c}$%"])
    rc, _, err = collect(capsys, root, "--to", "tex", "-o", tmp_path / "r.tex")
    assert rc == 0, err
    tex = (tmp_path / "r.tex").read_text()
    # after \\ (a row's end) or a booktabs rule, a [ or * would be read as an argument
    assert not re.search(r"(\\\\|\\midrule|\\toprule|\\bottomrule)\s*[\[*]", tex), tex
    assert "{[}1em{]}evil" in tex
    assert r"a\textbackslash{}b\{c\}\$\%" in tex


def test_latex_escape_unit():
    assert tex_escape("[x]") == "{[}x{]}"
    assert tex_escape("*") == "{*}"


# ---------------------------------------------------------------------------------------------
# 3. -o naming one of collect's own inputs is refused; nothing is written

def sweep_with_ledger(root: Path) -> Path:
    sweep = root / "s"
    write_job(sweep, "a", {"task": "mrpc", "method": "lin", "nbits": 4}, GOOD)
    foreign = sweep / "old" / "mrpc_linquant2bit"
    foreign.mkdir(parents=True)
    (foreign / "eval_results.txt").write_text("acc = 0.7\nf1 = 0.8\n")
    write_ledger(sweep, {"j1": {"output_dir": "a", "config": {"task": "mrpc"}}},
                 spec_text="name: s\n")
    return sweep


@pytest.mark.parametrize("target", ["a/eval_results.json", "a/config.json", "a/status.json",
                                    "ledger.json", "old/mrpc_linquant2bit/eval_results.txt",
                                    "a/new-report.xlsx", "a/logs/r.csv", "link-to-results"])
def test_output_may_not_name_an_input(tmp_path, capsys, target):
    sweep = sweep_with_ledger(tmp_path)
    (sweep / "link-to-results").symlink_to(sweep / "a" / "eval_results.json")
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    out = sweep / target
    rc, stdout, err = collect(capsys, sweep, "--to", "csv", "-o", out)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("sweep: error: -o ")
    assert str(out) in err and ("collect reads" in err)
    after = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    assert after == before  # nothing overwritten, nothing new
    assert stdout == ""


def test_output_beside_the_jobs_is_fine(tmp_path, capsys):
    sweep = sweep_with_ledger(tmp_path)
    rc, _, err = collect(capsys, sweep, "--to", "csv", "-o", sweep / "results.csv")
    assert rc == 0, err
    rc, _, err = collect(capsys, sweep, "--to", "csv")  # the default: the sweep directory
    assert rc == 0, err


# ---------------------------------------------------------------------------------------------
# 4. nothing outside the tree is read: ledger paths, links

SECRET = "TOPSECRET-7f3a"


def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "shadow"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SECRET + "\n")
    return path


def test_ledger_spec_outside_the_sweep_is_not_read(tmp_path, capsys):
    secret = secret_file(tmp_path)
    sweep = tmp_path / "runs" / "s"
    write_job(sweep, "a", results=GOOD)
    write_ledger(sweep, {"j1": {"output_dir": "a"}}, spec=str(secret))
    rc, _, err = collect(capsys, sweep, "--to", "html", "-o", tmp_path / "r.html")
    assert rc == 0, err
    assert SECRET not in (tmp_path / "r.html").read_text()
    assert "spec" in err and "not inside the sweep directory" in err
    write_ledger(sweep, {"j1": {"output_dir": "a"}}, spec="../../outside/shadow")
    rc, _, err = collect(capsys, sweep, "--to", "html", "-o", tmp_path / "r.html")
    assert rc == 0 and SECRET not in (tmp_path / "r.html").read_text()


def test_ledger_copy_of_the_spec_is_preferred(tmp_path, capsys):
    secret = secret_file(tmp_path)
    sweep = tmp_path / "runs" / "s"
    write_job(sweep, "a", results=GOOD)
    write_ledger(sweep, {"j1": {"output_dir": "a"}}, spec=str(secret),
                 spec_text="name: the-copy\n")
    rc, _, err = collect(capsys, sweep, "--to", "html", "-o", tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert rc == 0 and "the-copy" in html and SECRET not in html
    assert "spec" not in err  # the copy was there: nothing to report


@pytest.mark.parametrize("where", ["dotdot", "absolute", "link"])
def test_ledger_output_dir_and_log_outside_the_sweep_are_not_read(tmp_path, capsys, where):
    outside = write_job(tmp_path / "elsewhere", "job", {"task": "mrpc", "method": "p2",
                                                         "nbits": 3},
                        {"eval_accuracy": 0.424242, "eval_f1": 0.5})
    sweep = tmp_path / "runs" / "s"
    write_job(sweep, "a", results=GOOD)
    if where == "link":
        (sweep / "jump").symlink_to(outside)
        value = "jump"
    else:
        value = "../../elsewhere/job" if where == "dotdot" else str(outside)
    write_ledger(sweep, {"j1": {"output_dir": "a", "log": str(secret_file(tmp_path))},
                         "j2": {"output_dir": value, "log": "../../../x.log"}})
    rc, _, err = collect(capsys, sweep, "--to", "csv", "-o", tmp_path / "r.csv")
    assert rc == 0, err
    text = (tmp_path / "r.csv").read_text()
    assert "0.424242" not in text and "elsewhere" not in text
    assert "jobs.j2: output_dir" in err and "not inside the sweep directory" in err
    assert "jobs.j1: log" in err


def test_result_files_linking_out_of_the_tree_are_not_read(tmp_path, capsys):
    secret = tmp_path / "outside" / "eval_results.json"
    secret.parent.mkdir()
    secret.write_text(json.dumps({"eval_accuracy": 0.424242, "eval_f1": 0.5}))
    (tmp_path / "outside" / "acc.txt").write_text("acc = 0.434343\n")
    root = tmp_path / "t"
    ours = write_job(root, "ours", results=None)
    (ours / "eval_results.json").symlink_to(secret)
    foreign = root / "mrpc_linquant2bit"
    foreign.mkdir()
    (foreign / "eval_results.txt").symlink_to(tmp_path / "outside" / "acc.txt")
    (foreign / "notes.txt").symlink_to("/etc/passwd")
    inside = write_job(root, "inside", {"task": "mrpc", "method": "p2", "nbits": 8}, None)
    (inside / "eval_results.json").symlink_to(root / "ours" / "config.json")  # in the tree
    write_job(root, "good", {"task": "mrpc", "method": "p2", "nbits": 4}, GOOD)
    rc, _, err = collect(capsys, root, "--to", "csv", "-o", tmp_path / "r.csv")
    assert rc == 0, err
    text = (tmp_path / "r.csv").read_text()
    assert "0.424242" not in text and "0.434343" not in text and "root:" not in text
    for name in ("ours/eval_results.json", "mrpc_linquant2bit/eval_results.txt",
                 "mrpc_linquant2bit/notes.txt"):
        line = next(line for line in err.splitlines() if name in line)
        assert "outside the collected directories" in line
    assert "inside/eval_results.json" not in err  # a link within the tree is read
    model = root / "assets" / "tiny-bert"  # a model's config.json, a link to a cache: unread
    model.mkdir(parents=True)
    (model / "config.json").symlink_to(secret)
    rc, _, err = collect(capsys, root, "--to", "csv", "-o", tmp_path / "r.csv")
    assert rc == 0 and "tiny-bert" not in err


# ---------------------------------------------------------------------------------------------
# 5. deep JSON and ledgers that are not ours in shape: reported, never a crash

def deep_array(depth: int) -> str:
    return '{"eval_accuracy": 0.5, "x": ' + "[" * depth + "]" * depth + "}"


@pytest.mark.parametrize("name", ["eval_results.json", "config.json", "status.json",
                                  "ledger.json"])
def test_json_nested_100000_deep_is_a_skipped_file(tmp_path, capsys, name):
    root = tmp_path / "t"
    job = write_job(root, "a", results=GOOD)
    write_job(root, "b", {"task": "mrpc", "method": "p2", "nbits": 2}, GOOD)
    target = root / name if name == "ledger.json" else job / name
    target.write_text(deep_array(100_000))
    rc, _, err = collect(capsys, root, "--to", "csv", "-o", tmp_path / "r.csv")
    assert rc == 0, err
    assert f"{target}: JSON nested too deep" in err


def test_deep_dllogger_record_is_a_skipped_file(tmp_path, capsys):
    root = tmp_path / "t" / "squad_linquant4bit"
    root.mkdir(parents=True)
    (root / "dllogger.json").write_text("DLLL " + deep_array(100_000) + "\n")
    write_job(tmp_path / "t", "b", {"task": "mrpc", "method": "p2", "nbits": 2}, GOOD)
    rc, _, err = collect(capsys, tmp_path / "t", "--to", "csv", "-o", tmp_path / "r.csv")
    assert rc == 0, err
    assert "nested too deep" in err


def deep_object(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("to", ["csv", "xlsx", "html", "md", "tex"])
def test_valid_900_deep_values_are_cut_not_a_crash(tmp_path, capsys, to):
    root = tmp_path / "t"
    write_job(root, "a", {"task": "mrpc", "method": "lin", "nbits": 4,
                          "deep": deep_object(900)}, {**GOOD, "info": deep_object(900)})
    write_job(root, "b", {"task": "mrpc", "method": "lin", "nbits": 4, "seed": 2,
                          "deep": [deep_object(900)]}, GOOD)
    rc, _, err = collect(capsys, root, "--to", to, "-o", tmp_path / f"r.{to}")
    assert rc == 0, err
    assert "nested more than 32 deep" in err


def test_ledger_entries_of_other_shapes(tmp_path, capsys):
    sweep = tmp_path / "s"
    write_job(sweep, "a", results=GOOD)
    write_job(sweep, "b", {"task": "mrpc", "method": "p2", "nbits": 2}, GOOD)
    (sweep / "b" / "status.json").write_text(json.dumps(
        {"state": ["completed"], "reason": {"x": 1}, "updated": 5}))
    write_ledger(sweep, {
        "list": [1, 2], "string": "a", "number": 7, "null": None,
        "numeric": {"output_dir": 5, "log": 6, "submitted": 1.5},
        "empty": {"output_dir": ""},
        "nul": {"output_dir": "a\u0000b"},
        "a": {"output_dir": "a", "config": "not a dict", "state": ["x"], "reason": 5,
              "submitted": 1700000000, "backend": 3, "scheduler_id": "../../x", "pid": "x"},
        "b": {"output_dir": "b", "config": [["task", "mrpc"]], "state": {"s": 1},
              "backend": "slurm", "scheduler_id": 12, "attempts": "many"},
    }, spec=12, sweep=["not", "a", "name"], spec_text=7)
    for to in ("csv", "html", "xlsx"):
        rc, _, err = collect(capsys, sweep, "--to", to, "-o", tmp_path / f"r.{to}")
        assert rc == 0, err
    for jid in ("list", "string", "number", "null", "numeric", "empty", "nul"):
        assert f"jobs.{jid}: " in err
    rows = list(csv.DictReader((tmp_path / "r.csv").read_text().splitlines()))
    assert len(rows) == 2


# ---------------------------------------------------------------------------------------------
# 6. FIFOs, devices and huge files: never opened for a blocking or unbounded read

def test_fifo_result_files_do_not_block(tmp_path, capsys):
    root = tmp_path / "t"
    ours = write_job(root, "ours", results=None)
    os.mkfifo(ours / "eval_results.json")
    foreign = root / "mrpc_linquant2bit"
    foreign.mkdir()
    (foreign / "eval_results.txt").write_text("acc = 0.7\nf1 = 0.8\n")
    os.mkfifo(foreign / "train.log")
    os.mkfifo(foreign / "all_results.json")
    sweep = root / "s"
    listed = write_job(sweep, "job", results=GOOD)
    (listed / "status.json").unlink()
    os.mkfifo(listed / "status.json")
    os.mkfifo(sweep / ".launch.lock")
    write_ledger(sweep, {"j": {"output_dir": "job", "backend": "local", "state": "running"}})
    other = root / "s2"
    write_job(other, "job", results=GOOD)
    os.mkfifo(other / "ledger.json")
    with deadline(20):
        rc, _, err = collect(capsys, root, "--to", "csv", "-o", tmp_path / "r.csv")
    assert rc == 0, err
    for name in ("ours/eval_results.json", "mrpc_linquant2bit/train.log",
                 "mrpc_linquant2bit/all_results.json", "s/job/status.json", "s2/ledger.json"):
        line = next(line for line in err.splitlines() if name in line)
        assert "not a regular file (a FIFO)" in line


def test_huge_result_file_is_refused_by_its_size(tmp_path, capsys):
    root = tmp_path / "t"
    job = write_job(root, "a", results=GOOD)
    with open(job / "eval_results.json", "r+b") as fh:
        fh.truncate(65 * 2**20)  # sparse: no disk, but 65 MiB to read
    write_job(root, "b", {"task": "mrpc", "method": "p2", "nbits": 2}, GOOD)
    foreign = root / "mrpc_linquant2bit"
    foreign.mkdir()
    (foreign / "eval_results.txt").write_text("acc = 0.7\nf1 = 0.8\n")
    with open(foreign / "train.log", "wb") as fh:
        fh.truncate(70 * 2**20)  # a long run's log: sniffed by its head, not read whole
    rc, _, err = collect(capsys, root, "--to", "csv", "-o", tmp_path / "r.csv")
    assert rc == 0, err
    assert f"{job / 'eval_results.json'}: {65 * 2**20} bytes, more than the" in err
    assert "train.log" not in err
    assert len(list(csv.DictReader((tmp_path / "r.csv").read_text().splitlines()))) == 3


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_dev_zero_is_never_read(tmp_path, capsys):
    from quantlib.jobdir import read_json, read_status

    root = tmp_path / "t"
    job = write_job(root, "a", results=None)
    (job / "eval_results.json").symlink_to("/dev/zero")
    write_job(root, "b", {"task": "mrpc", "method": "p2", "nbits": 2}, GOOD)
    with memory_cap():
        assert read_json("/dev/zero") is None  # quantlib.jobdir.job_state's reader too
        (job / "status.json").unlink()
        (job / "status.json").symlink_to("/dev/zero")
        assert read_status(job) is None
        rc, _, err = collect(capsys, root, "--to", "csv", "-o", tmp_path / "r.csv")
    assert rc == 0, err
    assert "a/eval_results.json: resolves to /dev/zero" in err


# ---------------------------------------------------------------------------------------------
# 7. NaN, ±inf and 401-digit metrics: text in tables, out of charts, no crash in any format

def test_non_finite_metrics_leave_the_charts(tmp_path, capsys):
    root = tmp_path / "t"
    size = {"model_size_mb": 100.0, "compression_ratio": 4.0}
    write_job(root, "fp32", {"task": "mrpc", "method": "fp32"}, {**GOOD, **size})
    write_job(root, "inf", {"task": "mrpc", "method": "lin", "nbits": 4},
              '{"eval_accuracy": Infinity, "eval_f1": -Infinity, "model_size_mb": 12.0}')
    write_job(root, "nan", {"task": "mrpc", "method": "lin", "nbits": 2},
              '{"eval_accuracy": NaN, "eval_f1": 0.5, "model_size_mb": 6.0}')
    write_job(root, "ok", {"task": "mrpc", "method": "lin", "nbits": 8},
              {**GOOD, "model_size_mb": 25.0})
    write_job(root, "huge", {"task": "mrpc", "method": "p2", "nbits": 8},
              {"eval_accuracy": 1e308, "eval_f1": -1e308, "model_size_mb": 1e308})
    write_job(root, "huge2", {"task": "mrpc", "method": "p2", "nbits": 8, "seed": 2},
              {"eval_accuracy": -1e308, "eval_f1": 1e308, "model_size_mb": 1e308})
    for to in ("html", "xlsx", "md", "tex", "csv"):
        rc, _, err = collect(capsys, root, "--to", to, "-o", tmp_path / f"r.{to}")
        assert rc == 0, (to, err)
    html = (tmp_path / "r.html").read_text()
    assert ">inf<" in html and ">nan<" in html and "data:image/svg+xml" in html
    wb = openpyxl.load_workbook(tmp_path / "r.xlsx")
    values = [c.value for ws in wb.worksheets for row in ws.iter_rows() for c in row]
    assert "inf" in values and "-inf" in values
    assert not any(isinstance(v, float) and v != v for v in values)


@pytest.mark.parametrize("to", ["xlsx", "csv", "md", "html", "tex"])
def test_a_401_digit_integer_is_no_metric(tmp_path, capsys, to):
    root = tmp_path / "t"
    big = "9" * 401
    write_job(root, "fp32", {"task": "mrpc", "method": "fp32"}, GOOD)
    write_job(root, "big", {"task": "mrpc", "method": "lin", "nbits": 4, "steps": int(big)},
              '{"eval_accuracy": 0.5, "eval_f1": ' + big + ', "model_size_mb": ' + big
              + ', "train_samples": ' + "1" * 30 + "}")
    foreign = root / "mrpc_linquant2bit"
    foreign.mkdir()
    (foreign / "all_results.json").write_text('{"eval_accuracy": ' + big + ', "eval_f1": 0.5}')
    rc, _, err = collect(capsys, root, "--to", to, "-o", tmp_path / f"r.{to}")
    assert rc == 0, err
    assert "big/eval_results.json: eval_f1: an integer of 401 digits is no metric" in err
    assert "all_results.json: eval_accuracy: an integer of 401 digits" in err
    if to == "xlsx":
        wb = openpyxl.load_workbook(tmp_path / "r.xlsx")
        runs = wb["runs"]
        header = [c.value for c in runs[1]]
        cells = [c.value for row in runs.iter_rows(min_row=2) for c in row]
        assert "1" * 30 in cells and big in cells  # kept whole, as text
        assert "eval_f1" in header


# ---------------------------------------------------------------------------------------------
# 8. nothing collect prints carries a terminal escape from the tree

ESCAPES = ["\x1b[2J", "\x1b]8;;http://evil.invalid\x1b\\click\x1b]8;;\x1b\\", "\r", "\x9b31m",
           "\u202e", "\u2066", "\x07"]
RAW = ("\x1b", "\r", "\x9b", "\x9d", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",
       "\u2066", "\u2067", "\u2068", "\u2069", "\x07")


def test_console_output_escapes_terminal_sequences(tmp_path, capsys):
    root = tmp_path / "t"
    name = "run" + "".join(ESCAPES)
    write_job(root, name, {"task": "mrpc", "method": "lin", "nbits": 4},
              {"eval_accuracy": 0.6838, "eval_f1": 0.8122, "eval_pred_classes": 1})
    write_job(root, name + "-bad", {"task": "mrpc", "method": "lin", "nbits": 2}, "{not json")
    write_job(root, name + "-state", {"task": "mrpc", "method": "lin", "nbits": 8}, None,
              state="fail\x1b[31med\u202e")
    write_ledger(root, {"x\x1b[1m\u202e": [1]})
    rc, out, err = collect(capsys, root, "--to", "csv", "-o", tmp_path / "r.csv")
    assert rc == 0, err
    assert "collapsed:" in out and "skipped" in err
    for ch in RAW:
        assert ch not in out and ch not in err, repr(ch)
    assert "\\x1b" in err and "\\u202e" in err and "\\x0d" in out


def test_error_lines_escape_terminal_sequences(tmp_path, capsys):
    sweep = sweep_with_ledger(tmp_path)
    bad = sweep / "a" / "out\x1b]8;;x\x07\u202e.csv"
    rc, out, err = collect(capsys, sweep, "--to", "csv", "-o", bad)
    assert rc == 2 and err.count("\n") == 1
    for ch in RAW:
        assert ch not in err, repr(ch)
    rc, _, err = collect(capsys, tmp_path / "no\x1bwhere")
    assert rc == 2 and "\x1b" not in err and "no\\x1bwhere" in err


def test_terminal_unit():
    from analysis.safe_text import terminal

    assert terminal("a\x1b[2Jb\r\u202e\x9b") == "a\\x1b[2Jb\\x0d\\u202e\\x9b"
    assert terminal("plain ascii / é ü ±") == "plain ascii / é ü ±"
    assert terminal("\udcff") == "\\udcff"
