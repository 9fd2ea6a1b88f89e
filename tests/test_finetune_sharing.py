"""Shared FP32 fine-tuning (jobs.sharing): jobs whose fine-tuning is the same take it from one
implicit first-stage job and compute what they compute alone (metrics and quantized weights
bit-equal on the tiny model); the dry run and the status show it as a stage; a spec opts out;
relaunches never fine-tune again for jobs that completed, shared or not."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, sweep_cli, write_spec
from sweepfiles import sweep_configs

from jobs.grid import expand
from jobs.ledger import Ledger
from jobs.spec import FINETUNE_STAGE, load_spec
from quantlib.jobdir import FINETUNED

INQ_MRPC = REPO / "sweeps" / "inq_mrpc.yaml"


def _spec(tmp_path: Path, text: str, name: str = "spec.yaml"):
    return load_spec(write_spec(tmp_path, text, name))


def test_the_seed_study_fine_tunes_once(tmp_path):
    """24 jobs of one model, task and seed: one shared fine-tuning job, 24 children after it,
    69 of the 216 epochs saved (216 -> 147), in one array submitted after the parent."""
    proc = sweep_cli("launch", str(INQ_MRPC), "--backend", "slurm", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == "sweep inq_mrpc: 25 jobs (dry run, backend slurm; nothing submitted)"
    table = [line.split() for line in out[2:27]]
    parent = table[0]
    assert parent[0] == FINETUNE_STAGE and parent[3] == "fp32", parent
    assert all(row[0] == "-" and row[5] == parent[1] for row in table[1:]), table
    assert "24 jobs, which resume from its checkpoint" in proc.stdout
    assert "69 fine-tuning epochs fewer" in proc.stdout  # 24 x 3 - 3: 216 -> 147 epochs
    sweep = tmp_path / "runs/inq_mrpc"
    scripts = sorted(p.name for p in (sweep / "scripts").iterdir())
    assert scripts == ["slurm_array_after_1.sh", f"slurm_array_{FINETUNE_STAGE}_1.sh",
                       "submit_slurm.sh"]
    lines = [x.strip() for x in out if x.strip().startswith("A")]
    assert lines[0].startswith(f"A1=$(sbatch --parsable {sweep.absolute()}/scripts/"
                               f"slurm_array_{FINETUNE_STAGE}_1.sh)")
    assert lines[1].startswith("A2=$(sbatch --parsable --array=0-23 --dependency=afterok:"
                               "${A1}_0 --kill-on-invalid-dep=yes")
    configs = sweep_configs(sweep)
    pconf = configs[parent[1]]
    assert pconf["method"] == "fp32" and pconf["finetune_checkpoint"] is True
    assert pconf["finetune_epochs"] == 3 and pconf["learning_rate"] == 2e-5
    child = configs[table[1][1]]
    assert child["finetune_from"] == str(Path(pconf["output_dir"]) / FINETUNED)
    assert child["after"] == parent[1] and child["method"] == "lin"
    for script in (sweep / "scripts").iterdir():
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_sharing_keeps_ids_and_directories_and_opts_out(tmp_path):
    text = INQ_MRPC.read_text()
    shared = expand(_spec(tmp_path, text, "a.yaml"))
    alone = expand(_spec(tmp_path, text + "\nfinetune_sharing: false\n", "b.yaml"))
    assert len(shared) == 25 and len(alone) == 24
    assert all(j.after is None for j in alone)
    children = shared[1:]
    # the same jobs, under the same ids and directories: a sweep launched unshared relaunches
    # shared (or back) without rerunning anything
    assert [(j.id, j.output_dir.name) for j in children] == [
        (j.id, j.output_dir.name) for j in alone]
    assert [j.index for j in shared] == list(range(1, 26))
    # a changed fine-tuning argument is another parent, and other children
    edited = expand(_spec(tmp_path, text.replace("learning_rate: 2.0e-5",
                                                 "learning_rate: 3.0e-5"), "c.yaml"))
    assert edited[0].id != shared[0].id
    assert not {j.id for j in edited} & {j.id for j in shared}
    # a changed argument of the compression alone keeps the parent
    other = expand(_spec(tmp_path, text.replace("epochs_per_stage: 2", "epochs_per_stage: 1"),
                         "d.yaml"))
    assert other[0].id == shared[0].id and other[1].id != shared[1].id


def test_what_shares_and_what_does_not(tmp_path):
    base = "base: {model_name_or_path: m, finetune_epochs: 2, nbits: 4}\n"
    spec = _spec(tmp_path, "name: s\ngrid:\n  task: [rte]\n  method: [lin, q8bert, gptq, ptq, "
                 "qat, qat-kd, distill-quant, sparse24]\n" + base)
    jobs = expand(spec)
    parents = [j for j in jobs if j.stage == FINETUNE_STAGE]
    assert len(parents) == 1
    shared = sorted(j.get("method") for j in jobs if j.after == parents[0].id)
    # qat, qat-kd and distill-quant run their FP32 stage through other attention kernels
    assert shared == ["gptq", "lin", "ptq", "q8bert", "sparse24"]
    # one job alone, fractional epochs, no fine-tuning: nothing to share
    for extra in ("grid: {task: [rte], method: [lin], nbits: [2]}\n",
                  "grid: {task: [rte], method: [lin, p2], nbits: [2]}\n"
                  "base: {finetune_epochs: 0.5}\n",
                  "grid: {task: [rte], method: [lin, p2], nbits: [2]}\nbase: {finetune: never}\n",
                  "grid: {task: [rte], method: [lin, p2], nbits: [2], seed: [1, 2]}\n"
                  "exclude: [{method: p2}]\n"):
        jobs = expand(_spec(tmp_path, "name: s\n" + extra))
        assert all(j.after is None for j in jobs), extra


def test_a_stage_may_not_take_the_shared_stage_name(tmp_path):
    path = write_spec(tmp_path, f"name: s\nstages:\n  - name: {FINETUNE_STAGE}\n"
                      "    grid: {task: [rte], method: [lin], nbits: [2]}\n")
    proc = sweep_cli("launch", str(path), "--dry-run")
    assert proc.returncode == 2 and "stages[0].name" in proc.stderr
    assert "Traceback" not in proc.stderr
    path = write_spec(tmp_path, "name: s\nfinetune_sharing: sometimes\n"
                      "grid: {task: [rte], method: [lin], nbits: [2]}\n")
    proc = sweep_cli("launch", str(path), "--dry-run")
    assert proc.returncode == 2 and "finetune_sharing" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_lsf_submits_the_children_as_one_element_range(tmp_path):
    path = write_spec(tmp_path, "name: s\ngrid: {task: [rte, mrpc], method: [lin, p2], "
                      "nbits: [2, 4]}\nresources: {array_parallelism: 3}\n")
    proc = sweep_cli("launch", str(path), "--backend", "lsf", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [x.strip() for x in proc.stdout.splitlines() if x.strip().startswith("A")]
    assert len(lines) == 3, lines
    assert lines[1].startswith("A2=$(bsub -J 's.after[1-4]%3' -w \"done(${A1}[1])\"")
    assert lines[2].startswith("A3=$(bsub -J 's.after[5-8]%3' -w \"done(${A1}[2])\"")
    script = (tmp_path / "runs/s/scripts/lsf_array_after_1.sh").read_text()
    assert '#BSUB -J "s.after[1-8]%3"' in script  # the command line's -J picks the range


# -- the real thing: the tiny model, trained with and without sharing ----------------------
SPEC = """
name: share
{extra}
grid:
  task: [sst2]
  method: [lin, q8bert, ptq, fp32]
base:
  model_name_or_path: {model}
  data_dir: {data}
  max_seq_length: 24
  batch_size: 16
  learning_rate: 5.0e-4
  finetune_epochs: 2
  max_train_samples: 160
  max_eval_samples: 64
  nbits: 4
  epochs_per_stage: 1
  qat_epochs: 1
  head_start_step: 3
  save_model: true
  logging_steps: 1000
"""


def _results(sweep: Path) -> dict[str, dict]:
    out = {}
    for path in sweep.glob("jobs/**/eval_results.json"):
        out[path.parent.name] = json.loads(path.read_text())
    return out


@pytest.mark.slow
def test_shared_fine_tuning_computes_what_each_job_computes_alone(tmp_path, tiny_model,
                                                                   demo_task):
    from safetensors.torch import load_file

    runs = {}
    for name, extra in (("alone", "finetune_sharing: false"), ("shared", "")):
        spec = write_spec(tmp_path, SPEC.format(extra=extra, model=tiny_model, data=demo_task),
                          f"{name}.yaml")
        proc = sweep_cli("launch", str(spec), "--backend", "local", "--max-parallel", "2",
                         "--sweep-dir", str(tmp_path / name))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[name] = _results(tmp_path / name)
    alone, shared = runs["alone"], runs["shared"]
    parents = [d for d in (tmp_path / "shared/jobs" / FINETUNE_STAGE).iterdir()]
    assert len(parents) == 1 and (parents[0] / FINETUNED / "optimizer.pt").is_file()
    assert set(shared) == set(alone) | {parents[0].name}
    for name, a in alone.items():
        b = shared[name]
        assert b["finetune_shared"] is True, (name, b.get("finetune_shared_reason"))
        assert "finetune_shared" not in a
        for key in ("eval_accuracy", "eval_loss", "train_steps", "eval_pred_classes"):
            assert a[key] == b[key], (name, key)
        wa = load_file(tmp_path / "alone/jobs" / name / "model/model.safetensors")
        wb = load_file(tmp_path / "shared/jobs" / name / "model/model.safetensors")
        assert wa.keys() == wb.keys()
        assert all(bool((wa[k] == wb[k]).all()) for k in wa), name
    # the status shows the implicit stage like an explicit one
    proc = sweep_cli("status", str(tmp_path / "shared"))
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert any(FINETUNE_STAGE in row and "completed" in row for row in rows), proc.stdout
    ended = json.loads((parents[0] / "status.json").read_text())["ended"]

    # a relaunch runs nothing; a new job after the same fine-tuning resumes from the kept
    # checkpoint, and the completed parent is not run again
    grown = write_spec(tmp_path, SPEC.format(extra="", model=tiny_model, data=demo_task)
                       .replace("method: [lin, q8bert, ptq, fp32]",
                                "method: [lin, q8bert, ptq, fp32, p2]"), "grown.yaml")
    proc = sweep_cli("launch", str(grown), "--backend", "local", "--sweep-dir",
                     str(tmp_path / "shared"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "5 already completed (rerun: --force), 1 to run" in proc.stdout, proc.stdout
    assert json.loads((parents[0] / "status.json").read_text())["ended"] == ended
    (p2,) = [r for n, r in _results(tmp_path / "shared").items() if "_p2_" in n]
    assert p2["finetune_shared"] is True

    # the sweep that ran alone relaunches shared: every job completed, the parent not needed
    spec = write_spec(tmp_path, SPEC.format(extra="", model=tiny_model, data=demo_task),
                      "alone-again.yaml")
    proc = sweep_cli("launch", str(spec), "--backend", "local", "--sweep-dir",
                     str(tmp_path / "alone"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "4 already completed (rerun: --force), 0 to run" in proc.stdout, proc.stdout
    assert not (tmp_path / "alone/jobs" / FINETUNE_STAGE).exists()
    ledger = Ledger(tmp_path / "alone")
    assert sum(1 for e in ledger.jobs.values() if e.get("state") == "completed") == 4


def test_a_checkpoint_fine_tuned_for_the_task_has_nothing_to_share(tmp_path):
    """finetune: auto on a checkpoint that carries the task's head fine-tunes nothing: no
    shared job (its config.json read locally, or from the hub cache's snapshot)."""
    ckpt = tmp_path / "bert-sst2"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({
        "architectures": ["BertForSequenceClassification"], "id2label": {"0": "a", "1": "b"},
        "finetuning_task": "sst2"}))
    grid = "grid: {task: [sst2], method: [lin, p2], nbits: [2]}\n"
    jobs = expand(_spec(tmp_path, f"name: s\n{grid}base: {{model_name_or_path: {ckpt}}}\n"))
    assert len(jobs) == 2 and all(j.after is None for j in jobs)
    jobs = expand(_spec(tmp_path, f"name: s\n{grid}base: {{model_name_or_path: {ckpt}, "
                        "finetune: always}\n"))
    assert len(jobs) == 3  # fine-tuned again on request: shared
    # another task's head (3 labels for MNLI): fine-tuned first, shared
    jobs = expand(_spec(tmp_path, f"name: s\ngrid: {{task: [mnli], method: [lin, p2], nbits: "
                        f"[2]}}\nbase: {{model_name_or_path: {ckpt}}}\n"))
    assert len(jobs) == 3


def test_the_hub_cache_tells_a_fine_tuned_hub_checkpoint(tmp_path, monkeypatch):
    repo = tmp_path / "hub" / "models--someone--bert-sst2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps({
        "architectures": ["BertForSequenceClassification"], "num_labels": 2}))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    grid = "grid: {task: [sst2], method: [lin, p2], nbits: [2]}\n"
    jobs = expand(_spec(tmp_path, f"name: s\n{grid}base: {{model_name_or_path: "
                        "someone/bert-sst2}\n"))
    assert len(jobs) == 2
    jobs = expand(_spec(tmp_path, f"name: s\n{grid}base: {{model_name_or_path: "
                        "someone/not-cached}\n"))
    assert len(jobs) == 3  # not known here: shared (the shared job finds out)


def test_a_checkpoint_found_fine_tuned_after_the_prefetch_drops_its_shared_job(tmp_path,
                                                                              monkeypatch):
    """Expanded before the launch fetched it, a hub checkpoint is unknown (shared); once its
    config.json is in the hub cache and says it carries the task's head, the shared job goes
    and its children run on their own (jobs.launch calls this after the prefetch)."""
    from jobs.sharing import unshare_known

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    grid = "grid: {task: [sst2], method: [lin, p2], nbits: [2]}\n"
    spec = _spec(tmp_path, f"name: s\n{grid}base: {{model_name_or_path: someone/bert-sst2}}\n")
    jobs = expand(spec)
    assert len(jobs) == 3
    assert unshare_known(jobs) == (jobs, set())  # still not known: kept
    snap = tmp_path / "hub" / "models--someone--bert-sst2" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc")
    (snap / "config.json").write_text(json.dumps({
        "architectures": ["BertForSequenceClassification"], "num_labels": 2}))
    kept, dropped = unshare_known(jobs)
    assert dropped == {jobs[0].id} and [j.id for j in kept] == [j.id for j in jobs[1:]]
    assert all(j.after is None and not j.shared_finetune for j in kept)
