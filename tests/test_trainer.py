"""The trainer on other task shapes: regression (STS-B), three classes + mismatched (MNLI),
MCC (CoLA), through the job entry point (jobs.runtime)."""

from __future__ import annotations

import json
import math

from test_data import write_task

from jobs import runtime


def job(tmp_path, tiny_model, task, glue_dir, method="fp32", **extra):
    data = write_task(tmp_path / glue_dir, task)
    config = {"task": task, "method": method, "model_name_or_path": str(tiny_model),
              "data_dir": str(data), "max_seq_length": 32, "batch_size": 4,
              "finetune_epochs": 1, "epochs_per_stage": 1, "output_dir": str(tmp_path / "out"),
              **extra}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert runtime.main([str(path)]) == 0
    return json.loads((tmp_path / "out" / "eval_results.json").read_text())


def test_stsb_regression(tmp_path, tiny_model):
    results = job(tmp_path, tiny_model, "stsb", "STS-B")
    assert {"eval_pearson", "eval_spearmanr", "eval_combined_score"} <= set(results)
    # one dev example: a correlation is undefined, and says so
    assert math.isnan(results["eval_pearson"])
    txt = (tmp_path / "out" / "eval_results.txt").read_text().splitlines()
    assert [line.split(" = ")[0] for line in txt] == ["corr", "pearson", "spearmanr"]


def test_mnli_matched_and_mismatched_with_inq(tmp_path, tiny_model):
    results = job(tmp_path, tiny_model, "mnli", "MNLI", method="mb", nbits=2)
    assert 0 <= results["eval_accuracy"] <= 1 and 0 <= results["eval_accuracy_mm"] <= 1
    assert "eval_loss_mm" in results
    assert results["quantized_fraction"] == 1.0
    assert results["max_distinct_values"] <= 4  # 2 binary terms per row: 4 values
    txt = (tmp_path / "out" / "eval_results.txt").read_text()
    assert "acc = " in txt and "mnli-mm_acc = " in txt


def test_cola_mcc(tmp_path, tiny_model):
    results = job(tmp_path, tiny_model, "cola", "CoLA", method="p2", nbits=4)
    assert -1 <= results["eval_matthews_correlation"] <= 1
    assert (tmp_path / "out" / "eval_results.txt").read_text().startswith("mcc = ")


def test_head_of_another_task_is_replaced_and_finetuned(tmp_path):
    from quantlib.configs import build
    from quantlib.demo import write_model
    from quantlib.trainer import prepare

    mnli_like = write_model(tmp_path / "mnli-model", num_labels=3)
    write_task(tmp_path / "RTE", "rte")
    args, method = build({"task": "rte", "method": "fp32", "model_name_or_path": str(mnli_like),
                          "data_dir": str(tmp_path / "RTE")})
    ctx = prepare(args, method, tmp_path / "out")
    assert ctx.model.classifier.out_features == 2
    assert ctx.needs_finetune and ctx.info["finetuned_checkpoint"] is False
    same_task = write_model(tmp_path / "rte-model", num_labels=2)
    args, method = build({"task": "rte", "method": "fp32", "model_name_or_path": str(same_task),
                          "data_dir": str(tmp_path / "RTE")})
    assert prepare(args, method, tmp_path / "out2").needs_finetune is False
