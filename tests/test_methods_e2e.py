"""Every QAT / PTQ / distillation method from one sweep through the local backend, on a tiny
BERT fine-tuned on the demo task: each beats chance, records what it ran with, and gets its own
block in the collected workbook."""

from __future__ import annotations

import json
from pathlib import Path

import openpyxl
import pytest
from conftest import sweep_cli, write_spec

from jobs.ledger import Ledger

SPEC = """
name: methods
grid:
  task: [sst2]
  method: [q8bert, qat, qat-kd, distill-quant]
include:
  - {{task: sst2, method: ptq, quant_mode: ft1, calibrator: max}}
  - {{task: sst2, method: ptq, quant_mode: ft2, calibrator: percentile}}
  - {{task: sst2, method: ptq, quant_mode: ft2, calibrator: mse}}
  - {{task: sst2, method: ptq, quant_mode: ft3, calibrator: entropy}}
  - {{task: sst2, method: q8bert, nbits: 4, ste: clip}}
  - {{task: sst2, method: distill-quant, nbits: 4, weight_granularity: group, weight_groups: 8,
      act_granularity: token}}
base:
  model_name_or_path: {model}
  data_dir: {data}
  max_seq_length: 32
  batch_size: 32
  learning_rate: 1.0e-4
  qat_epochs: 1
  head_start_step: 10
  kd_scale: 100.0
  logging_steps: 1000
"""


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A tiny BERT fine-tuned in FP32 on the demo task, saved like a hub checkpoint."""
    from quantlib.demo import write_glue_tsv, write_model
    from quantlib.job import run_job

    root = tmp_path_factory.mktemp("finetuned")
    data = write_glue_tsv(root / "SST-2", n_train=3000, n_dev=300, seed=0)
    model = write_model(root / "init")
    config = {"task": "sst2", "method": "fp32", "model_name_or_path": str(model),
              "data_dir": str(data), "max_seq_length": 32, "batch_size": 32,
              "learning_rate": 5e-4, "finetune_epochs": 10, "save_model": True,
              "logging_steps": 1000}
    results, _ = run_job(config, root / "fp32")
    assert results["accuracy"] > 0.75, results  # the teacher knows the task
    return root / "fp32" / "model", data, results["accuracy"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, finetuned):
    model, data, _ = finetuned
    root = tmp_path_factory.mktemp("methods")
    spec = write_spec(root, SPEC.format(model=model, data=data))
    proc = sweep_cli("launch", str(spec), "--backend", "local", "--max-parallel", "2", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = Ledger(root / "runs/methods").data["jobs"]
    runs = [(e["config"], json.loads((Path(e["output_dir"]) / "eval_results.json").read_text()))
            for e in jobs.values()]
    return root, runs


def test_every_method_beats_chance_and_stays_near_its_teacher(sweep, finetuned):
    _, runs = sweep
    teacher = finetuned[2]
    assert len(runs) == 10
    for config, results in runs:
        label = f"{config['method']} {config.get('quant_mode', '')} {config.get('nbits')}"
        assert results["eval_pred_classes"] == 2.0, label  # not a single-class predictor
        assert results["eval_accuracy"] > 0.65, label  # chance is 0.5
        assert results["eval_accuracy"] > teacher - 0.12, label
        assert results["finetuned_checkpoint"] is True and results["finetune_ran"] is False
        assert results["quantizers_enabled"] == results["quantizers"] > 0, label


def test_each_run_records_what_it_ran_with(sweep):
    _, runs = sweep
    seen = {}
    for config, results in runs:
        seen.setdefault(config["method"], []).append(results)
        if config["method"] == "ptq":
            assert results["calibrator"] == config["calibrator"]
            assert results["calib_batches"] == 4
            assert results["qkv_fused"] == (0 if config["quant_mode"] == "ft1" else 6)
            assert results["weight_granularity"] == ("channel" if config["quant_mode"] == "ft1"
                                                     else "tensor")
            # FT's inventory: 16 / 24 / 25 per layer, 2 layers
            assert results["quantizers"] == {"ft1": 32, "ft2": 48, "ft3": 50}[
                config["quant_mode"]]
    assert {r["ste"] for r in seen["q8bert"]} == {"plain", "clip"}
    assert all(r["integer_inference"] is True for r in seen["q8bert"])
    assert seen["qat-kd"][0]["kd_loss"].startswith("ce + 100 * kl(")
    assert seen["qat"][0]["ste"] == "clip" and "kd_loss" not in seen["qat"][0]
    assert all("sum mse(layer outputs)" in r["kd_loss"] for r in seen["distill-quant"])


def test_collect_gives_each_method_its_own_block(sweep):
    root, _ = sweep
    proc = sweep_cli("collect", "--to", "xlsx", "--out", "m.xlsx", cwd=root)
    assert proc.returncode == 0, proc.stderr
    ws = openpyxl.load_workbook(root / "m.xlsx")["measurements"]
    titles = [row[0] for row in ws.iter_rows(values_only=True)
              if row[0] and row[1] == 8]
    # in registry order; only the settings that vary within a method split its blocks
    assert titles == [
        "Q8BERT (ste=clip)", "Q8BERT (ste=plain)",
        "PTQ (calibrator=entropy, quant_mode=ft3)", "PTQ (calibrator=max, quant_mode=ft1)",
        "PTQ (calibrator=mse, quant_mode=ft2)", "PTQ (calibrator=percentile, quant_mode=ft2)",
        "QAT", "QAT+KD",
        "Distill-Quant (act_granularity=tensor, weight_granularity=tensor, weight_groups=48)",
        "Distill-Quant (act_granularity=token, weight_granularity=group, weight_groups=8)"]
    q8 = [row for row in ws.iter_rows(values_only=True) if row[0] == "SST-2(acc)"]
    assert len(q8) == 10 and all(isinstance(v, float) for row in q8 for v in row[1:] if v)
