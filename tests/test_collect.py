"""`sweep collect`: the seed layout cell by cell, the tidy sheet, collapse flags, bad files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import openpyxl
import pytest
from conftest import sweep_cli

from analysis.blocks import ROWS

SEED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "measurements.xlsx"
needs_seed = pytest.mark.skipif(not SEED.is_file(), reason=f"no seed spreadsheet at {SEED}")
DISPLAY_TO_METHOD = {"Power of 2": "p2", "Linear": "lin", "mbq": "mb"}
LABEL_TO_METRIC = {label: (task, metric) for task, metric, label in ROWS}


def seed_cells():
    ws = openpyxl.load_workbook(SEED).worksheets[0]
    return {(c.row, c.column): c.value for row in ws.iter_rows() for c in row
            if c.value is not None}, ws.max_row, ws.max_column


def write_job(root: Path, name: str, config: dict, results: dict | None, state="completed"):
    out = root / name
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({**config, "sweep": root.name}))
    (out / "status.json").write_text(json.dumps({"state": state}))
    if results is not None:
        (out / "eval_results.json").write_text(json.dumps(results))
    return out


OLD_NAMES = {"accuracy": "acc", "f1": "f1", "combined_score": "acc_and_f1",
             "matthews_correlation": "mcc", "pearson": "pearson", "spearmanr": "spearmanr"}


def old_script_job(root: Path, task: str, method: str, b: int, results: dict) -> None:
    """What the seed's own script left: `<task>_<method>quant<bits>bit/eval_results.txt` in
    run_glue's `key = value` format, no config, MNLI-mm in the `-MM` sibling directory."""
    out = root / f"{task}_{method}quant{b}bit"
    lines: dict[Path, dict[str, float]] = {}
    for key, value in results.items():
        metric = key[len("eval_"):]
        if metric == "accuracy_mm":
            lines.setdefault(out.with_name(out.name + "-MM"), {})["acc"] = value
        else:
            name = "corr" if (task, metric) == ("stsb", "combined_score") else OLD_NAMES[metric]
            lines.setdefault(out, {})[name] = value
    for path, result in lines.items():
        path.mkdir(parents=True)
        with open(path / "eval_results.txt", "w") as writer:
            for key in sorted(result):
                writer.write("%s = %s\n" % (key, str(result[key])))  # noqa: UP031


def jobs_from_seed(root: Path, old_format: bool = False) -> None:
    """One job directory per (method, task, bits) of the seed sheet, holding its numbers."""
    cells, max_row, _ = seed_cells()
    jobs: dict[tuple[str, str, int], dict] = {}
    method = None
    for r in range(1, max_row + 1):
        label = cells.get((r, 1))
        if label in DISPLAY_TO_METHOD:
            method = DISPLAY_TO_METHOD[label]
            bits = {c: cells[(r, c)] for c in range(2, 10)}
            continue
        if label is None:
            continue
        task, metric = LABEL_TO_METRIC[label]
        for c, b in bits.items():
            if (r, c) in cells:
                value = cells[(r, c)]
                value = float("nan") if value == "nan" else value
                jobs.setdefault((method, task, b), {})[f"eval_{metric}"] = value
    for (method, task, b), results in jobs.items():
        if old_format:
            old_script_job(root, task, method, b, results)
        else:
            write_job(root, f"{task}_{method}quant{b}bit", {"task": task, "method": method,
                                                            "nbits": b}, results)


@needs_seed
@pytest.mark.parametrize("old_format", [False, True], ids=["quantsweep", "seed-script-files"])
def test_measurements_sheet_reproduces_the_seed_layout_cell_by_cell(tmp_path, old_format):
    root = tmp_path / "seed"
    jobs_from_seed(root, old_format)
    out = tmp_path / "out.xlsx"
    proc = sweep_cli("collect", str(root), "--to", "xlsx", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    want, max_row, max_col = seed_cells()
    ws = openpyxl.load_workbook(out).worksheets[0]
    got = {(c.row, c.column): c.value for row in ws.iter_rows() for c in row
           if c.value is not None}
    assert (ws.max_row, ws.max_column) == (max_row, max_col)
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, abs=1e-15), key
        else:
            assert got[key] == value, key
    # the seed's numbers are single-class predictors: collect flags them
    mrpc_8bit_p2 = ws.cell(row=11, column=2)  # MRPC(acc) 0.6838 at 8 bits, Power of 2
    assert mrpc_8bit_p2.comment is not None and "all-positive" in mrpc_8bit_p2.comment.text
    assert ws.cell(row=11, column=2).fill.start_color.rgb.endswith("F4CCCC")
    assert ws.cell(row=7, column=8).comment is not None  # STS-B corr 'nan': constant output
    assert "collapsed" in proc.stdout


def make_sweep(root: Path):
    write_job(root, "a", {"task": "mrpc", "method": "fp32", "seed": 1},
              {"eval_accuracy": 0.85, "eval_f1": 0.89, "eval_combined_score": 0.87,
               "eval_pred_classes": 2, "train_loss": 0.3})
    write_job(root, "b", {"task": "mrpc", "method": "lin", "nbits": 4, "seed": 1},
              {"eval_accuracy": 0.80, "eval_f1": 0.86, "eval_combined_score": 0.83,
               "eval_pred_classes": 2, "quantized_fraction": 1.0})
    write_job(root, "c", {"task": "mrpc", "method": "lin", "nbits": 4, "seed": 2},
              {"eval_accuracy": 0.70, "eval_f1": 0.76, "eval_combined_score": 0.73,
               "eval_pred_classes": 1})
    write_job(root, "d", {"task": "mrpc", "method": "lin", "nbits": 2, "seed": 1}, None,
              state="failed")


def test_blocks_average_seeds_and_fp32_gets_its_own_block(tmp_path):
    make_sweep(tmp_path / "s")
    out = tmp_path / "r.xlsx"
    assert sweep_cli("collect", str(tmp_path / "s"), "-o", str(out)).returncode == 0
    ws = openpyxl.load_workbook(out)["measurements"]
    rows = [[c.value for c in row] for row in ws.iter_rows()]
    assert rows[1][:10] == ["Linear", 8, 7, 6, 5, 4, 3, 2, 1, "Bits"]
    assert rows[2][0] == "MRPC(acc)" and rows[2][5] == pytest.approx(0.75)  # mean of 2 seeds
    assert rows[2][7] is None  # the failed 2-bit job has no result
    assert rows[4][0] == "MRPC(f1)"
    assert rows[7][:3] == ["FP32", 32, "Bits"]
    assert rows[8][:2] == ["MRPC(acc)", 0.85]
    assert ws.cell(row=3, column=6).comment is not None  # one of the seeds collapsed


def test_tidy_sheet_and_csv(tmp_path):
    make_sweep(tmp_path / "s")
    out = tmp_path / "r.xlsx"
    assert sweep_cli("collect", str(tmp_path / "s"), "-o", str(out)).returncode == 0
    runs = openpyxl.load_workbook(out)["runs"]
    header = [c.value for c in runs[1]]
    assert header[:5] == ["job_id", "sweep", "task", "method", "nbits"]
    for col in ("seed", "eval_accuracy", "eval_f1", "quantized_fraction", "train_loss",
                "state", "collapsed", "output_dir"):
        assert col in header
    body = [dict(zip(header, [c.value for c in row])) for row in runs.iter_rows(min_row=2)]
    assert len(body) == 4
    by_dir = {Path(r["output_dir"]).name: r for r in body}
    assert by_dir["c"]["collapsed"] == "predicts a single class"
    assert by_dir["d"]["state"] == "failed" and by_dir["d"]["eval_accuracy"] is None
    assert by_dir["b"]["nbits"] == 4 and by_dir["a"]["nbits"] is None
    csv_out = tmp_path / "r.csv"
    assert sweep_cli("collect", str(tmp_path / "s"), "--to", "csv", "-o",
                     str(csv_out)).returncode == 0
    rows = list(csv.DictReader(csv_out.open()))
    assert len(rows) == 4 and {r["state"] for r in rows} == {"completed", "failed"}


def test_nan_metric_is_written_as_the_string_nan(tmp_path):
    write_job(tmp_path / "s", "x", {"task": "stsb", "method": "p2", "nbits": 3},
              {"eval_pearson": math.nan, "eval_spearmanr": math.nan,
               "eval_combined_score": math.nan})
    out = tmp_path / "r.xlsx"
    assert sweep_cli("collect", str(tmp_path / "s"), "-o", str(out)).returncode == 0
    ws = openpyxl.load_workbook(out)["measurements"]
    assert [ws.cell(row=r, column=7).value for r in (3, 4, 5)] == ["nan"] * 3


def test_unreadable_results_are_reported_and_skipped(tmp_path):
    make_sweep(tmp_path / "s")
    (tmp_path / "s" / "b" / "eval_results.json").write_text("{not json")
    out = tmp_path / "r.xlsx"
    proc = sweep_cli("collect", str(tmp_path / "s"), "-o", str(out))
    assert proc.returncode == 0
    assert "skipped" in proc.stderr and "eval_results.json" in proc.stderr
    assert "not valid JSON" in proc.stderr


def test_missing_directory_is_a_clear_error(tmp_path):
    proc = sweep_cli("collect", str(tmp_path / "nowhere"))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("sweep: error:") and "no such directory" in proc.stderr


def test_model_directories_are_not_jobs(tmp_path):
    make_sweep(tmp_path / "s")
    model = tmp_path / "s" / "assets" / "tiny-bert"  # an HF checkpoint: config.json, weights
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    proc = sweep_cli("collect", str(tmp_path / "s"), "-o", str(tmp_path / "r.xlsx"))
    assert proc.returncode == 0 and proc.stdout.startswith("4 jobs")


def test_settings_that_change_only_with_the_task_do_not_split_blocks(tmp_path):
    root = tmp_path / "s"
    for task, acc in (("sst2", 0.91), ("rte", 0.66)):
        for calibrator, delta in (("max", 0.0), ("entropy", 0.01)):
            write_job(root, f"{task}-{calibrator}",
                      {"task": task, "method": "ptq", "nbits": 8, "calibrator": calibrator,
                       "model_name_or_path": f"teachers/bert-{task}",  # zipped with the task
                       "data_dir": f"glue/{task}"},
                      {"eval_accuracy": acc + delta, "eval_pred_classes": 2})
    out = tmp_path / "r.xlsx"
    assert sweep_cli("collect", str(root), "-o", str(out)).returncode == 0
    rows = [[c.value for c in row] for row in openpyxl.load_workbook(out)["measurements"]
            .iter_rows()]
    blocks = {r[0]: i for i, r in enumerate(rows) if r and r[1] == 8}
    assert list(blocks) == ["PTQ (calibrator=entropy)", "PTQ (calibrator=max)"]
    for title, delta in (("PTQ (calibrator=entropy)", 0.01), ("PTQ (calibrator=max)", 0.0)):
        i = blocks[title]
        assert rows[i + 1][:2] == ["RTE(acc)", pytest.approx(0.66 + delta)]
        assert rows[i + 2][:2] == ["SST-2(acc)", pytest.approx(0.91 + delta)]


def test_staged_runs_get_blocks_by_stage_and_by_their_first_stage_ancestor(tmp_path):
    """Prune OFA from two pre-sparsified checkpoints, then QAT from each: four blocks; the QAT
    runs are told apart by the checkpoint their parent started from, not by the parent's
    path; SQuAD rows carry EM and F1."""
    root = tmp_path / "ofa"
    parents = {}
    for i, (start, task, em, f1) in enumerate([("Intel/s90", "squad", 70.0, 80.0),
                                               ("Intel/s85", "squad", 72.0, 82.0)]):
        out = write_job(root, f"distill{i}", {
            "task": task, "method": "pruneofa", "model_name_or_path": start, "stage": "distill",
            "epochs": 9.0, "qat": False, "after": None},
            {"eval_exact_match": em, "eval_f1": f1, "sparsity": 0.9})
        parents[start] = out
    for i, (start, em) in enumerate([("Intel/s90", 60.0), ("Intel/s85", 65.0)]):
        write_job(root, f"qat{i}", {
            "task": "squad", "method": "pruneofa", "model_name_or_path":
            str(parents[start] / "model"), "stage": "qat", "epochs": 3.0, "qat": True,
            "nbits": 8, "after": f"id{i}", "upstream_dir": str(parents[start])},
            {"eval_exact_match": em, "eval_f1": em + 10})
    out = tmp_path / "r.xlsx"
    proc = sweep_cli("collect", str(root), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = [list(r) for r in openpyxl.load_workbook(out).worksheets[0].iter_rows(
        values_only=True)]
    blocks = {}
    title = None
    for r in rows:
        if r and r[0] and "Bits" in r:
            title = r[0]
        elif r and r[0] in ("SQuAD(EM)", "SQuAD(F1)"):
            blocks.setdefault(title, {})[r[0]] = [v for v in r[1:] if v is not None]
    assert blocks == {
        "Prune OFA (stage=distill, model_name_or_path=Intel/s85)":
            {"SQuAD(EM)": [72.0], "SQuAD(F1)": [82.0]},
        "Prune OFA (stage=distill, model_name_or_path=Intel/s90)":
            {"SQuAD(EM)": [70.0], "SQuAD(F1)": [80.0]},
        "Prune OFA (stage=qat, model_name_or_path=Intel/s85)":
            {"SQuAD(EM)": [65.0], "SQuAD(F1)": [75.0]},
        "Prune OFA (stage=qat, model_name_or_path=Intel/s90)":
            {"SQuAD(EM)": [60.0], "SQuAD(F1)": [70.0]},
    }, blocks
    runs = openpyxl.load_workbook(out)["runs"]
    header = [c.value for c in runs[1]]
    assert "sparsity" in header and "eval_exact_match" in header
    assert "upstream_dir" not in header  # the launcher's bookkeeping (quantlib.jobdir.RUN_KEYS)


def test_runs_on_different_data_of_one_task_are_not_averaged(tmp_path):
    """The demo task and its harder variant: one task, two data directories. Each method gets
    a block per data set, compared with the FP32 block on the same data."""
    root = tmp_path / "s"
    for data, fp32, gptq in (("data/SST-2", 0.92, 0.91), ("data/SST-2-hard", 0.77, 0.70)):
        for seed in (1, 2):
            base = {"task": "sst2", "data_dir": data, "seed": seed}
            write_job(root, f"fp32-{data[-4:]}-{seed}", {**base, "method": "fp32"},
                      {"eval_accuracy": fp32, "eval_pred_classes": 2})
            write_job(root, f"gptq-{data[-4:]}-{seed}", {**base, "method": "gptq", "nbits": 2},
                      {"eval_accuracy": gptq, "eval_pred_classes": 2})
    out = tmp_path / "r.md"
    assert sweep_cli("collect", str(root), "--to", "md", "-o", str(out)).returncode == 0
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")
            for line in out.read_text().splitlines() if line.startswith("| ")}
    easy, hard = "GPTQ (data\\_dir=data/SST-2)", "GPTQ (data\\_dir=data/SST-2-hard)"
    assert rows[easy][3].startswith("0.9100") and rows[easy][4].startswith("-0.0100")
    assert rows[hard][3].startswith("0.7000") and rows[hard][4].startswith("-0.0700")
    assert "FP32 on the same data" in out.read_text()


def test_a_delta_is_only_against_fp32_on_the_same_data(tmp_path):
    """FP32 on data A only, GPTQ on A and B: B's rows get no delta (not A's FP32); FP32 on A
    and B, GPTQ on B only: its delta is against B's FP32."""
    for fp32_on, gptq_on, want in ((["A"], ["A", "B"], {"A": "-0.0100", "B": ""}),
                                   (["A", "B"], ["B"], {"B": "-0.0100"})):
        root = tmp_path / f"s{len(fp32_on)}{len(gptq_on)}"
        acc = {"A": 0.92, "B": 0.77}
        for d in fp32_on:
            write_job(root, f"fp32-{d}", {"task": "sst2", "method": "fp32", "data_dir": d},
                      {"eval_accuracy": acc[d], "eval_pred_classes": 2})
        for d in gptq_on:
            write_job(root, f"gptq-{d}", {"task": "sst2", "method": "gptq", "nbits": 2,
                                          "data_dir": d},
                      {"eval_accuracy": acc[d] - 0.01, "eval_pred_classes": 2})
        out = root.with_suffix(".md")
        assert sweep_cli("collect", str(root), "--to", "md", "-o", str(out)).returncode == 0
        lines = [line.split(" | ") for line in out.read_text().splitlines()
                 if line.startswith("| GPTQ")]
        got = {cols[0].rsplit("=", 1)[-1].rstrip(")") if "=" in cols[0] else gptq_on[0]:
               cols[4].strip(" |") for cols in lines}
        assert got == want, out.read_text()
