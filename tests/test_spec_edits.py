"""Editing a spec never loses or repeats work: a job's id and output directory depend on its own
configuration alone; a relaunch after an edit runs only what is new; collect counts each job
once and averages only runs that differ in their seed alone."""

from __future__ import annotations

import json
import shutil

import openpyxl
from conftest import sweep_cli, write_spec

from jobs.grid import expand
from jobs.ledger import Ledger
from jobs.spec import load_spec

BASE = """
name: edit
grid:
  task: [sst2]
  method: [fp32]
  learning_rate: [5.0e-4, 1.0e-3]
base:
  model_name_or_path: {model}
  data_dir: {data}
  max_seq_length: 16
  finetune_epochs: 1
  max_train_samples: 64
  max_eval_samples: 32
  logging_steps: 1000
"""


def ids_and_dirs(path):
    return {j.id: j.output_dir for j in expand(load_spec(path))}


def test_ids_and_directories_do_not_depend_on_other_jobs(tmp_path):
    spec = "name: e\ngrid: {task: [mrpc], method: [lin, p2], nbits: [4, 8]}\n"
    before = ids_and_dirs(write_spec(tmp_path, spec))
    edits = [
        spec + "include:\n  - {task: mrpc, method: fp32, warmup_ratio: 0.2}\n",  # a new key
        spec.replace("nbits: [4, 8]", "nbits: [4, 8], seed: [42]"),  # the default, explicit
        spec + "base: {learning_rate: 2.0e-5, weight_decay: 0.01}\n",  # defaults, explicit
        spec.replace("method: [lin, p2]", "method: [p2, lin, mb]"),  # reordered, one more
    ]
    for text in edits:
        after = ids_and_dirs(write_spec(tmp_path, text))
        assert {k: after[k] for k in before} == before, text


def test_relaunch_after_an_edit_runs_only_the_new_job(tmp_path, tiny_model, demo_task):
    text = BASE.format(model=tiny_model, data=demo_task)
    spec = write_spec(tmp_path, text)
    first = sweep_cli("launch", str(spec), "--backend", "local", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    ledger = Ledger(tmp_path / "runs/edit").data["jobs"]
    dirs = {jid: e["output_dir"] for jid, e in ledger.items()}
    # a new job that varies a key no other job has, and the default seed written out
    edited = text.replace("logging_steps: 1000", "logging_steps: 1000\n  seed: 42")
    write_spec(tmp_path, edited + "include:\n  - {task: sst2, method: fp32, learning_rate: "
                                  "5.0e-4, warmup_ratio: 0.3}\n")
    second = sweep_cli("launch", str(spec), "--backend", "local", cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "3 jobs, 2 already completed" in second.stdout and "1 to run" in second.stdout
    ledger = Ledger(tmp_path / "runs/edit").data["jobs"]
    assert {jid: ledger[jid]["output_dir"] for jid in dirs} == dirs
    assert sum(e["attempts"] for e in ledger.values()) == 3

    # an old copy of a job directory (a rename by an earlier version, a copied sweep) is
    # collected once and reported; different learning rates are never averaged as seeds
    jid, out = next(iter(dirs.items()))
    shutil.copytree(tmp_path / out, tmp_path / "runs/edit/jobs/old-name")
    proc = sweep_cli("collect", "runs/edit", "-o", "r.xlsx", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3 jobs" in proc.stdout
    assert "old-name" in proc.stderr and "counted once" in proc.stderr
    wb = openpyxl.load_workbook(tmp_path / "r.xlsx")
    runs = wb["runs"]
    header = [c.value for c in runs[1]]
    assert runs.max_row == 4  # three jobs, one row each
    sheet = wb["SST-2"]
    head = [c.value for c in sheet[1]]
    counts = [row[head.index("runs")] for row in sheet.iter_rows(min_row=2, values_only=True)
              if row[0] and str(row[0]).startswith("FP32")]
    assert counts == [1, 1, 1], counts  # three blocks, none averaged with another
    assert "learning_rate" in header or "learning_rate" in [
        c.value for c in wb["settings"]["A"]]


def test_a_job_recorded_under_an_earlier_id_is_not_run_again(tmp_path, tiny_model, demo_task):
    """A sweep launched by an earlier version (another id rule, another directory name): the
    relaunch finds the completed job by its configuration and keeps it where it ran."""
    spec = write_spec(tmp_path, BASE.format(model=tiny_model, data=demo_task)
                      .replace("[5.0e-4, 1.0e-3]", "[5.0e-4]"))
    assert sweep_cli("launch", str(spec), cwd=tmp_path).returncode == 0
    path = tmp_path / "runs/edit/ledger.json"
    data = json.loads(path.read_text())
    (jid, entry), = data["jobs"].items()
    old_dir = tmp_path / "runs/edit/jobs/task=sst2_lr-old"
    (tmp_path / "runs/edit" / entry["output_dir"]).rename(old_dir)
    entry["output_dir"] = str(old_dir)
    data["jobs"] = {"0ldid00000": entry}
    path.write_text(json.dumps(data))
    again = sweep_cli("launch", str(spec), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "1 already completed" in again.stdout and "0 to run" in again.stdout
    data = Ledger(path.parent).data
    assert list(data["jobs"]) == [jid]
    assert data["jobs"][jid]["output_dir"] == str(old_dir)
    assert data["jobs"][jid]["adopted_from"] == "0ldid00000"
    status = sweep_cli("status", "runs/edit", cwd=tmp_path)
    assert "1 jobs: 1 completed" in status.stdout
    forced = sweep_cli("launch", str(spec), "--force", cwd=tmp_path)  # --force: run anew
    assert forced.returncode == 0 and "1 to run" in forced.stdout
