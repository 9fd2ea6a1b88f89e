"""`sweep collect` reads what other tools leave behind, written here the way those tools write it:
old run_glue (and its -MM sibling), transformers 3 run_glue, HF Trainer (its own save_metrics),
nlp-architect, SQuAD evaluate-v1.1, NVIDIA dllogger; run names from directory patterns."""

from __future__ import annotations

import datetime
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import sweep_cli

from analysis.formats import metric_name
from analysis.naming import compile_pattern, method_name, task_name
from analysis.results import find_runs
from quantlib.errors import UserError
from quantlib.squad_metrics import evaluate


def old_run_glue(output_dir: Path, result: dict) -> None:
    """transformers 2.x / pytorch-transformers run_glue.py evaluate(), and the INQ seed script."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "eval_results.txt", "w") as writer:
        for key in sorted(result.keys()):
            writer.write("%s = %s\n" % (key, str(result[key])))  # noqa: UP031 (as the script)


def transformers3_run_glue(output_dir: Path, task: str, eval_result: dict) -> None:
    """transformers 3.x run_glue.py: eval_results_<task>.txt, Trainer.evaluate()'s keys."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / f"eval_results_{task}.txt", "w") as writer:
        for key, value in eval_result.items():
            writer.write("%s = %s\n" % (key, value))  # noqa: UP031


def hf_trainer_save_metrics(output_dir: Path, split: str, metrics: dict) -> None:
    """transformers' own Trainer.save_metrics, on a stand-in for the Trainer."""
    from transformers import Trainer

    output_dir.mkdir(parents=True, exist_ok=True)
    stub = SimpleNamespace(is_world_process_zero=lambda: True,
                           args=SimpleNamespace(output_dir=str(output_dir)))
    Trainer.save_metrics(stub, split, metrics)


class DLLLStream:
    """dllogger's JSONStreamBackend: `DLLL {json}` lines, the file opened with "w"."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "w")  # noqa: SIM115
        self.start = datetime.datetime.now()

    def _now(self) -> tuple[datetime.datetime, datetime.timedelta]:
        now = datetime.datetime.now()
        return now, now - self.start

    def metadata(self, metric: str, metadata: dict) -> None:
        ts, el = self._now()
        self.file.write("DLLL {}\n".format(json.dumps(dict(
            timestamp=str(ts.timestamp()), elapsedtime=str(el), datetime=str(ts),
            type="METADATA", metric=metric, metadata=metadata))))

    def log(self, step, data: dict) -> None:
        ts, el = self._now()
        self.file.write("DLLL {}\n".format(json.dumps(dict(
            timestamp=str(ts.timestamp()), datetime=str(ts), elapsedtime=str(el), type="LOG",
            step=step, data=data))))

    def close(self) -> None:
        self.file.close()


def one(root: Path, patterns=None):
    runs = find_runs([str(root)], patterns).runs
    assert len(runs) == 1, [r.output_dir for r in runs]
    return runs[0]


def test_old_run_glue_with_its_mnli_mm_sibling_and_the_seed_naming(tmp_path):
    # transformers 2.x names the metrics "<task>/acc"; pytorch-transformers 1.x just "acc"
    old_run_glue(tmp_path / "mnli_mbquant4bit", {"mnli/acc": 0.3445746306673459})
    old_run_glue(tmp_path / "mnli_mbquant4bit-MM", {"mnli-mm/acc": 0.336452400325467})
    old_run_glue(tmp_path / "mnli_linquant2bit", {"acc": 0.35})
    old_run_glue(tmp_path / "mnli_linquant2bit-MM", {"acc": 0.33})
    old_run_glue(tmp_path / "MRPC_p2quant8bit", {"acc": 0.6838235294117647, "acc_and_f1":
                                                 0.7480253018237863, "f1": 0.8122270742358079})
    old_run_glue(tmp_path / "STS-B_p2quant2bit", {"corr": float("nan"), "pearson":
                                                  float("nan"), "spearmanr": float("nan")})
    runs = {r.output_dir.name: r for r in find_runs([str(tmp_path)]).runs}
    assert set(runs) == {"mnli_mbquant4bit", "mnli_linquant2bit", "MRPC_p2quant8bit",
                         "STS-B_p2quant2bit"}  # the -MM directories joined their siblings
    mnli = runs["mnli_mbquant4bit"]
    assert mnli.config == {"task": "mnli", "method": "mb", "nbits": 4}
    assert mnli.metrics == {"accuracy": 0.3445746306673459, "accuracy_mm": 0.336452400325467}
    assert runs["mnli_linquant2bit"].metrics == {"accuracy": 0.35, "accuracy_mm": 0.33}
    mrpc = runs["MRPC_p2quant8bit"]
    assert mrpc.config == {"task": "mrpc", "method": "p2", "nbits": 8}
    assert mrpc.metrics == {"accuracy": 0.6838235294117647, "combined_score": 0.7480253018237863,
                            "f1": 0.8122270742358079}
    assert mrpc.state == "completed" and mrpc.source == "eval_results.txt"
    stsb = runs["STS-B_p2quant2bit"]
    assert stsb.task == "stsb" and all(math.isnan(v) for v in stsb.metrics.values())
    assert set(stsb.metrics) == {"combined_score", "pearson", "spearmanr"}


def test_an_mm_directory_without_its_sibling_is_a_run_of_its_own(tmp_path):
    old_run_glue(tmp_path / "mnli_mbquant3bit-MM", {"acc": 0.3194})
    run = one(tmp_path)
    assert run.config == {"task": "mnli", "method": "mb", "nbits": 3}
    assert run.metrics == {"accuracy_mm": 0.3194}


def test_transformers3_run_glue_text_files(tmp_path):
    out = tmp_path / "mnli_lin_8"
    transformers3_run_glue(out, "mnli", {"eval_loss": 0.61, "eval_mnli/acc": 0.84, "epoch": 3.0})
    transformers3_run_glue(out, "mnli-mm", {"eval_loss": 0.6, "eval_mnli-mm/acc": 0.845,
                                            "epoch": 3.0})
    run = one(tmp_path, ["{task}_{method}_{nbits}"])
    assert run.config == {"task": "mnli", "method": "lin", "nbits": 8}
    assert run.metrics == {"loss": 0.61, "loss_mm": 0.6, "accuracy": 0.84, "accuracy_mm": 0.845}
    assert run.info == {"epoch": 3.0}


def test_hf_trainer_results_written_by_trainer_save_metrics(tmp_path):
    out = tmp_path / "bert-base-mnli"  # matches no pattern: the task comes from the model config
    hf_trainer_save_metrics(out, "train", {"epoch": 3.0, "train_loss": 0.41,
                                           "train_runtime": 1000.5, "train_samples": 392702})
    combined = {"epoch": 3.0, "eval_accuracy": 0.8432, "eval_loss": 0.45, "eval_samples": 9815}
    combined.update({f"{k}_mm": v for k, v in {"eval_accuracy": 0.8461, "eval_loss": 0.44,
                                                 "eval_samples": 9832}.items()})
    hf_trainer_save_metrics(out, "eval", combined)
    (out / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"],
                                                 "finetuning_task": "mnli", "model_type": "bert"}))
    (out / "checkpoint-500").mkdir()
    (out / "checkpoint-500" / "config.json").write_text("{}")
    run = one(tmp_path)
    assert run.task == "mnli" and run.method == "" and run.nbits is None
    assert run.metrics["accuracy"] == 0.8432 and run.metrics["accuracy_mm"] == 0.8461
    assert run.metrics["loss_mm"] == 0.44
    assert run.info["train_loss"] == 0.41 and run.info["epoch"] == 3.0
    assert run.source == "HF Trainer eval_results.json, HF Trainer all_results.json"


def test_nlp_architect_file_rewritten_at_every_evaluation(tmp_path, capsys):
    out = tmp_path / "sst2_q8bert_8"
    for acc in (0.71, 0.88, 0.9243):  # each evaluation opens the file with "w"
        old_run_glue(out, {"acc": acc})
    run = one(tmp_path, ["{task}_{method}_{nbits}"])
    assert run.config == {"task": "sst2", "method": "q8bert", "nbits": 8}
    assert run.metrics == {"accuracy": 0.9243}
    # caught between two evaluations: emptied, or cut short, the file is reported and skipped
    (out / "eval_results.txt").write_text("")
    run = one(tmp_path, ["{task}_{method}_{nbits}"])
    assert run.state == "failed" and "empty" in run.reason
    assert "eval_results.txt: empty" in capsys.readouterr().err
    (out / "eval_results.txt").write_text("acc = 0.92")
    run = one(tmp_path, ["{task}_{method}_{nbits}"])
    assert run.state == "failed" and "partial" in run.reason


def test_squad_evaluate_v11_line_in_whatever_file_it_was_sent_to(tmp_path):
    examples = [("q1", ["Denver Broncos"]), ("q2", ["Santa Clara, California", "Levi's"]),
                ("q3", ["gold"])]
    predictions = {"q1": "the Denver Broncos", "q2": "Santa Clara", "q3": "golden"}
    scores = evaluate(examples, predictions)
    out = tmp_path / "squad_ptq_8"
    out.mkdir()
    # `python evaluate-v1.1.py dev-v1.1.json predictions.json > eval.log`: print(json.dumps(..))
    (out / "eval.log").write_text(json.dumps(scores) + "\n")
    (out / "predictions.json").write_text(json.dumps(predictions))
    run = one(tmp_path, ["{task}_{method}_{nbits}"])
    assert run.config == {"task": "squad", "method": "ptq", "nbits": 8}
    assert run.metrics == pytest.approx({"exact_match": 100 / 3, "f1": (100 + 80 + 0) / 3})
    assert run.source == "SQuAD evaluate-v1.1"


def test_dllogger_summary_with_capital_f1(tmp_path):
    out = tmp_path / "ft" / "squad" / "qat_8bit"
    stream = DLLLStream(out / "dllogger.json")
    stream.log("PARAMETER", {"init_checkpoint": "/ckpt", "num_train_epochs": 2.0, "seed": 1})
    stream.metadata("e2e_train_time", {"unit": "s"})
    stream.metadata("exact_match", {"unit": None})
    for step in range(3):
        stream.log((0, step), {"step_loss": 1.0 / (step + 1), "learning_rate": 3e-5})
    stream.log((), {"e2e_train_time": 1200.5, "training_sequences_per_second": 310.2,
                    "final_loss": 0.9})
    stream.log((), {"e2e_inference_time": 30.1, "inference_sequences_per_second": 370.0})
    stream.log((), {"exact_match": 82.17, "F1": 89.37})
    stream.close()
    run = one(tmp_path, ["{task}/{method}_{nbits}bit"])
    assert run.config == {"task": "squad", "method": "qat", "nbits": 8}
    assert run.metrics == {"exact_match": 82.17, "f1": 89.37}
    assert run.info["e2e_inference_time"] == 30.1 and run.info["final_loss"] == 0.9
    assert run.source == "dllogger"


def test_dllogger_of_a_run_that_did_not_finish_is_partial(tmp_path, capsys):
    out = tmp_path / "squad_qat_8"
    stream = DLLLStream(out / "log.json")
    stream.log("PARAMETER", {"seed": 1})
    stream.log((0, 1), {"step_loss": 2.0})
    stream.close()
    with open(out / "log.json", "a") as fh:  # killed in the middle of a record
        fh.write('DLLL {"timestamp": "1", "type": "LO')
    run = one(tmp_path, ["{task}_{method}_{nbits}"])
    assert run.state == "failed" and "partial" in run.reason
    err = capsys.readouterr().err
    assert "log.json: partial: line 3 is cut short" in err


def test_unreadable_files_are_reported_and_the_rest_collected(tmp_path, capsys):
    old_run_glue(tmp_path / "rte_linquant4bit", {"acc": 0.53})
    bad = tmp_path / "rte_linquant2bit"
    bad.mkdir()
    (bad / "eval_results.txt").write_text("acc = 0.5\nthis line is not a metric\n")
    worse = tmp_path / "rte_p2quant2bit"
    worse.mkdir()
    (worse / "all_results.json").write_text('{"eval_accuracy": 0.5')  # cut short
    (worse / "eval_results.txt").write_bytes(b"acc = \xff\n")
    proc = sweep_cli("collect", str(tmp_path), "--to", "csv", "-o", str(tmp_path / "r.csv"))
    assert proc.returncode == 0, proc.stderr
    assert "rte_linquant2bit/eval_results.txt: line 2: not `key = value`" in proc.stderr
    assert "rte_p2quant2bit/all_results.json: not valid JSON" in proc.stderr
    assert "rte_p2quant2bit/eval_results.txt: not UTF-8 text" in proc.stderr
    assert "3 jobs (1 completed, 2 failed)" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_a_directory_whose_task_cannot_be_told_is_reported(tmp_path):
    old_run_glue(tmp_path / "experiment-17", {"acc": 0.8})
    proc = sweep_cli("collect", str(tmp_path), "--to", "csv", "-o", str(tmp_path / "r.csv"))
    assert proc.returncode == 0, proc.stderr
    assert "experiment-17: task unknown" in proc.stderr
    assert "{task}_{method}quant{nbits}bit" in proc.stderr


def test_patterns_with_directories_and_extra_fields(tmp_path):
    for seed, acc in ((1, 0.91), (2, 0.93)):
        old_run_glue(tmp_path / "SST-2" / "Linear" / f"4bit-seed{seed}", {"acc": acc})
    runs = find_runs([str(tmp_path)], ["{task}/{method}/{nbits}bit-seed{seed}"]).runs
    assert sorted((r.task, r.method, r.nbits, r.config["seed"], r.metrics["accuracy"])
                  for r in runs) == [("sst2", "lin", 4, 1, 0.91), ("sst2", "lin", 4, 2, 0.93)]
    # the first pattern that matches wins
    runs = find_runs([str(tmp_path)], ["{task}/{method}/{nbits}bit-seed1",
                                       "{task}/{method}/{other}"]).runs
    assert sorted(r.config.get("other", "-") for r in runs) == ["-", "4bit-seed2"]


@pytest.mark.parametrize("bad,why", [("{task", "unbalanced brace"), ("{task}_{task}", "twice"),
                                     ("{1x}", "not a field name"), ("plain", "names no field"),
                                     ("/{task}", "starts/ends")])
def test_bad_patterns_are_one_line_errors(tmp_path, bad, why):
    with pytest.raises(UserError, match=why):
        compile_pattern(bad)
    old_run_glue(tmp_path / "a", {"acc": 0.5})
    proc = sweep_cli("collect", str(tmp_path), "--pattern", bad, "-o", str(tmp_path / "r.csv"),
                     "--to", "csv")
    assert proc.returncode == 2
    assert proc.stderr.startswith("sweep: error: --pattern") and why in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "r.csv").exists()


def test_metric_task_and_method_names():
    assert [metric_name(k) for k in ("acc", "eval_acc", "mnli/acc", "mnli-mm/acc",
                                     "eval_mnli-mm/acc", "mcc", "corr", "acc_and_f1", "F1",
                                     "eval_accuracy_mm", "mnli-mm_acc", "exact_match")] == [
        "accuracy", "accuracy", "accuracy", "accuracy_mm", "accuracy_mm",
        "matthews_correlation", "combined_score", "combined_score", "f1", "accuracy_mm",
        "accuracy_mm", "exact_match"]
    assert [task_name(t) for t in ("SST-2", "sts-b", "CoLA", "MNLI-MM", "squad1.1", "xnli")] == [
        "sst2", "stsb", "cola", "mnli", "squad", "xnli"]
    assert [method_name(m) for m in ("mbq", "Linear", "Power of 2", "q8bert", "new")] == [
        "mb", "lin", "p2", "q8bert", "new"]


def test_our_own_jobs_beside_foreign_ones(tmp_path):
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "config.json").write_text(json.dumps({"task": "rte", "method": "lin", "nbits": 2}))
    (ours / "status.json").write_text(json.dumps({"state": "completed"}))
    (ours / "eval_results.json").write_text(json.dumps({"eval_accuracy": 0.6}))
    (ours / "eval_results.txt").write_text("acc = 0.6\n")
    old_run_glue(tmp_path / "rte_linquant2bit", {"acc": 0.55})
    runs = {r.output_dir.name: r for r in find_runs([str(tmp_path)]).runs}
    assert runs["ours"].source == "quantsweep" and runs["ours"].metrics == {"accuracy": 0.6}
    assert runs["rte_linquant2bit"].source == "eval_results.txt"


def test_collect_never_imports_torch_even_for_foreign_formats(tmp_path):
    old_run_glue(tmp_path / "rte_linquant2bit", {"acc": 0.55})
    out = str(tmp_path / "r.html")
    code = ("import sys; from jobs.cli import main; "
            f"main(['collect', {str(tmp_path)!r}, '--to', 'html', '-o', {out!r}]); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    import subprocess
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
