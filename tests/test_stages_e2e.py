"""The staged sweeps shipped in sweeps/ run end to end through the local backend on tiny models
and tiny data (hub ids mapped to local tiny checkpoints, epochs and sizes shrunk, one task):
stages in order, each job starting from its parent's saved model; sparsity patterns kept;
SQuAD EM/F1 and sparsity collected; a relaunch resumes at the first unfinished stage; a failed
first-stage job never starts its second stage."""

from __future__ import annotations

import json
import re
from pathlib import Path

import openpyxl
import pytest
import yaml
from conftest import REPO, sweep_cli, write_spec

from jobs.ledger import Ledger

EPOCHS = {"finetune_epochs": 6, "epochs": 2, "distil_epochs": 2, "qat_epochs": 1,
          "sparse_epochs": 1}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from quantlib.demo import (
        sparsify,
        write_distilbert,
        write_glue_tsv,
        write_model,
        write_squad_json,
    )
    from quantlib.job import run_job

    root = tmp_path_factory.mktemp("assets")
    bert = write_model(root / "bert")  # SQuAD's question words come out as word pieces
    sst2 = write_glue_tsv(root / "SST-2", n_train=3000, n_dev=300)
    teacher_cfg = {"task": "sst2", "method": "fp32", "model_name_or_path": str(bert),
                   "data_dir": str(sst2), "max_seq_length": 32, "batch_size": 32,
                   "learning_rate": 5e-4, "finetune_epochs": 10, "save_model": True,
                   "logging_steps": 1000}
    results, _ = run_job(teacher_cfg, root / "sst2-teacher")
    assert results["accuracy"] > 0.7, results
    return {
        "bert": bert, "distil": write_distilbert(root / "distil"),
        "squad": write_squad_json(root / "squad", n_train=1000, n_dev=150,
                                  positive_answer=True),
        "sst2": sst2, "sst2_teacher": root / "sst2-teacher" / "model",
        # pre-sparsified (50% / 75%) copies of the fine-tuned tiny BERT: Prune OFA's job is to
        # recover from the pruning with the pattern fixed (a tiny model trained from scratch
        # needs ~10 epochs to learn the task at all)
        "sparse90": sparsify(root / "sst2-teacher" / "model", root / "sparse90", 0.75),
        "sparse85": sparsify(root / "sst2-teacher" / "model", root / "sparse85", 0.5),
    }


def shrink(name: str, assets: dict, task: str, data: Path, **base) -> dict:
    """A shipped spec with hub checkpoints mapped to tiny local ones, fewer epochs, small
    sizes, and only `task`'s rows of any zip over tasks."""
    raw = yaml.safe_load((REPO / "sweeps" / f"{name}.yaml").read_text())
    hub = {"bert-base-uncased": assets["bert"], "distilbert-base-uncased": assets["distil"],
           "Intel/bert-base-uncased-sparse-90-unstructured-pruneofa": assets["sparse90"],
           "Intel/bert-base-uncased-sparse-85-unstructured-pruneofa": assets["sparse85"],
           "yoshitomo-matsubara/bert-base-uncased-sst2": assets["sst2_teacher"]}

    def value(key, v):
        if key in EPOCHS:
            return EPOCHS[key]
        if key == "learning_rate":
            return 1e-3
        return str(hub[v]) if isinstance(v, str) and v in hub else v

    def fix(part: dict) -> None:
        for key, v in list(part.get("base", {}).items()):
            part["base"][key] = value(key, v)
        for key, vs in list(part.get("grid", {}).items()):
            part["grid"][key] = [value(key, v) for v in vs] if isinstance(vs, list) else vs
        zips = part.get("zip", [])
        for group in [zips] if isinstance(zips, dict) else zips:
            keep = [i for i, t in enumerate(group.get("task", [])) if t == task]
            for key, vs in list(group.items()):
                vs = [vs[i] for i in keep] if "task" in group else vs
                group[key] = [value(key, v) for v in vs]
        if task in (part.get("grid", {}).get("task") or []):
            part["grid"]["task"] = [task]

    fix(raw)
    for stage in raw.get("stages", []):
        fix(stage)
    seq = 64 if task == "squad" else 32
    raw.setdefault("base", {}).update(
        data_dir=str(data), max_seq_length=seq, batch_size=32, logging_steps=1000,
        **({"doc_stride": 16, "max_query_length": 16} if task == "squad" else {}), **base)
    raw.pop("resources", None)
    return raw


def launch(tmp_path: Path, raw: dict, *extra: str):
    spec = write_spec(tmp_path, yaml.safe_dump(raw), f"{raw['name']}.yaml")
    return sweep_cli("launch", str(spec), "--backend", "local", "--max-parallel", "2",
                     "--sweep-dir", str(tmp_path / raw["name"]), *extra)


def ledger(sweep_dir: Path) -> dict:
    return Ledger(sweep_dir).data["jobs"]


def outputs(entry: dict) -> tuple[dict, dict, dict]:
    out = Path(entry["output_dir"])
    return (json.loads((out / "config.json").read_text()),
            json.loads((out / "status.json").read_text()),
            json.loads((out / "eval_results.json").read_text()))


def check_order(jobs: dict) -> None:
    """Every later-stage job started from its parent's model, after the parent ended."""
    for entry in jobs.values():
        config, status, _ = outputs(entry)
        if not config.get("after"):
            continue
        parent = jobs[config["after"]]
        _, pstatus, _ = outputs(parent)
        assert status["started"] >= pstatus["ended"]
        filled = [v for k, v in config.items()
                  if k in ("model_name_or_path", "teacher_name_or_path")
                  and v == str(Path(parent["output_dir"]) / "model")]
        assert filled, config


@pytest.fixture(scope="module")
def ptq_squad(tmp_path_factory, assets):
    tmp = tmp_path_factory.mktemp("ptq_squad")
    raw = shrink("ptq_squad_modes", assets, "squad", assets["squad"])
    raw["stages"][2]["base"]["kd_scale"] = 10.0  # 10000 swamps the tiny model's CE
    proc = launch(tmp, raw)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp / raw["name"], raw, tmp


def test_ptq_squad_stages_run_in_order_from_the_calibrated_checkpoint(ptq_squad):
    sweep_dir, _, _ = ptq_squad
    jobs = ledger(sweep_dir)
    assert len(jobs) == 7 and all(e["state"] == "completed" for e in jobs.values())
    check_order(jobs)
    by_method: dict[str, list] = {}
    for entry in jobs.values():
        config, _, results = outputs(entry)
        by_method.setdefault(config["method"], []).append((config, results))
        assert 0.0 <= results["eval_exact_match"] <= results["eval_f1"] <= 100.0
    (fp_config, fp), = by_method["fp32"]
    assert fp["eval_f1"] > 70.0  # the tiny task is learnt (one of 2-3 ratings: chance ~42)
    for config, results in by_method["ptq"]:
        assert results["calib_batches"] == 16 and results["quant_mode"] == config["quant_mode"]
        assert results["eval_f1"] > fp["eval_f1"] - 15.0
    for _config, results in by_method["qat"] + by_method["qat-kd"]:
        assert results["calibration"].startswith("loaded from"), results["calibration"]
        assert "calib_batches" not in results  # no recalibration
    assert len(by_method["qat-kd"]) == 2 and "kl(" in by_method["qat-kd"][0][1]["kd_loss"]


def test_ptq_squad_collect_has_a_squad_block_per_method(ptq_squad):
    sweep_dir, _, tmp = ptq_squad
    proc = sweep_cli("collect", str(sweep_dir), "--to", "xlsx", "-o", str(tmp / "out.xlsx"))
    assert proc.returncode == 0, proc.stderr
    ws = openpyxl.load_workbook(tmp / "out.xlsx").worksheets[0]
    rows = [[c for c in r] for r in ws.iter_rows(values_only=True)]
    titles = [r[0] for r in rows if r and r[-1] == "Bits" or (r and "Bits" in r)]
    assert titles == ["FP32", "PTQ (quant_mode=ft1)", "PTQ (quant_mode=ft2)",
                      "QAT (quant_mode=ft1)", "QAT (quant_mode=ft2)",
                      "QAT+KD (quant_mode=ft1)", "QAT+KD (quant_mode=ft2)"], titles
    labels = [r[0] for r in rows if r and r[0] in ("SQuAD(EM)", "SQuAD(F1)")]
    assert labels == ["SQuAD(EM)", "SQuAD(F1)"] * 7


def test_relaunch_resumes_at_the_first_unfinished_stage(ptq_squad):
    sweep_dir, raw, tmp = ptq_squad
    jobs = ledger(sweep_dir)
    attempts = {jid: e["attempts"] for jid, e in jobs.items()}
    proc = launch(tmp, raw)
    assert proc.returncode == 0 and "7 already completed" in proc.stdout, proc.stdout
    # a last-stage job that did not finish (its results lost): only it runs again, from its
    # parent's saved model; the stages before it are not rerun
    qat = next(jid for jid, e in jobs.items() if e["config"]["method"] == "qat")
    (Path(jobs[qat]["output_dir"]) / "status.json").unlink()
    proc = launch(tmp, raw)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6 already completed" in proc.stdout and "1 to run" in proc.stdout, proc.stdout
    again = ledger(sweep_dir)
    assert {jid: e["attempts"] - attempts[jid] for jid, e in again.items()} == {
        jid: int(jid == qat) for jid in jobs}
    check_order(again)


def test_a_failed_first_stage_never_starts_its_second(tmp_path, assets):
    raw = shrink("ptq_squad_modes", assets, "squad", assets["squad"])
    raw["stages"] = raw["stages"][:2]
    raw["stages"][0]["grid"] = {"model_name_or_path": [str(assets["bert"]),
                                                       str(tmp_path / "no-such-model")]}
    raw["stages"][1]["grid"] = {"quant_mode": ["ft1"]}
    raw["name"] = "fails"
    proc = launch(tmp_path, raw, "--no-prefetch")  # the missing model fails its job
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 skipped (previous stage failed)" in proc.stdout
    jobs = ledger(tmp_path / "fails")
    states = sorted((e.get("stage", ""), e["state"]) for e in jobs.values())
    by_state = {}
    for jid, e in jobs.items():
        by_state.setdefault(e["state"], []).append(jid)
    assert sorted(by_state) == ["completed", "failed", "skipped"]
    assert len(by_state["completed"]) == 2, states
    skipped = jobs[by_state["skipped"][0]]
    assert "previous-stage job" in skipped["reason"] and "failed" in skipped["reason"]
    assert not (Path(skipped["output_dir"]) / "status.json").exists()  # never started
    status = sweep_cli("status", str(tmp_path / "fails"))
    rows = {r.split()[0]: re.split(r"\s{2,}", r.strip()) for r in status.stdout.splitlines()[2:-1]}
    row = rows[by_state["skipped"][0]]
    assert row[5] == "skipped" and row[-2:] == ["ptq", skipped["after"]], row
    # relaunch: the failed job runs again (and fails), the completed branch is not rerun
    proc = launch(tmp_path, raw, "--no-prefetch")
    assert "2 already completed" in proc.stdout and proc.returncode == 1


def test_pruneofa_keeps_the_pattern_through_both_stages(tmp_path, assets):
    import torch
    from safetensors.torch import load_file

    raw = shrink("pruneofa_glue", assets, "sst2", assets["sst2"], save_model=True)
    proc = launch(tmp_path, raw)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = ledger(tmp_path / raw["name"])
    assert len(jobs) == 4 and all(e["state"] == "completed" for e in jobs.values())
    check_order(jobs)
    sparse = {str(assets["sparse90"]): 0.75, str(assets["sparse85"]): 0.5}
    for entry in jobs.values():
        config, _, results = outputs(entry)
        origin = config
        while origin.get("after"):
            origin = outputs(jobs[origin["after"]])[0]
        start = Path(origin["model_name_or_path"])
        before = load_file(str(start / "model.safetensors"))
        after = load_file(str(Path(entry["output_dir"]) / "model" / "model.safetensors"))
        locked = [k for k in before if ".encoder.layer." in k and k.endswith(".weight")
                  and before[k].dim() == 2]
        assert len(locked) == 12  # 2 layers x 6 Linears
        for k in locked:
            assert torch.equal(before[k] == 0, after[k] == 0), k  # the same zeros
        assert results["pruned_sparsity"] == pytest.approx(sparse[str(start)], abs=0.01)
        assert results["sparsity"] == results["pruned_sparsity"]
        assert results["eval_accuracy"] > 0.6 and results["eval_pred_classes"] == 2
        assert results["best_epoch"] in [h["epoch"] for h in results["epoch_history"]]
        assert "T^2 * kl_batchmean" in results["kd_loss"]
        if config.get("qat"):
            assert results["quantizers_enabled"] > 0 and config["epochs"] == 2


def test_distilbert_squad_distils_the_stage_one_teacher(tmp_path, assets):
    raw = shrink("distilbert_squad", assets, "squad", assets["squad"])
    proc = launch(tmp_path, raw)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = ledger(tmp_path / raw["name"])
    check_order(jobs)
    (student,) = [e for e in jobs.values() if e["config"]["method"] == "distil-squad"]
    config, _, results = outputs(student)
    assert config["model_name_or_path"] == str(assets["distil"])
    assert results["student_parameters"] < results["teacher_parameters"]
    assert results["kd_loss"].startswith("0.5 * task loss + 0.5 * T^2 * kl_batchmean")
    assert results["eval_f1"] > 20.0


def test_sparse_glue_2to4_and_magnitude_with_and_without_qat(tmp_path, assets):
    import torch
    from safetensors.torch import load_file

    from quantlib.sparsity import is_24

    raw = shrink("sparse_glue", assets, "sst2", assets["sst2"], save_model=True)
    proc = launch(tmp_path, raw)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = ledger(tmp_path / raw["name"])
    assert len(jobs) == 6
    for entry in jobs.values():
        config, _, results = outputs(entry)
        weights = load_file(str(Path(entry["output_dir"]) / "model" / "model.safetensors"))
        locked = {k: v for k, v in weights.items() if ".encoder.layer." in k
                  and k.endswith(".weight") and v.dim() == 2}
        zeros = sum(int((v == 0).sum()) for v in locked.values()) / sum(
            v.numel() for v in locked.values())
        if config["method"] == "sparse24":
            assert all(is_24(v) for v in locked.values())
            assert zeros == pytest.approx(0.5, abs=1e-3)
        else:
            assert zeros == pytest.approx(config["target_sparsity"], abs=1e-3)
        assert results["sparsity"] == pytest.approx(zeros)
        assert results["eval_accuracy"] > 0.6, (config, results)
        if config["qat"]:
            assert results["quantizers_enabled"] > 0 and results["calib_batches"] == 4
        else:
            assert "quantizers" not in results
        assert torch.isfinite(torch.tensor(results["eval_loss"]))
