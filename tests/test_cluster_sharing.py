"""Shared fine-tuning on real schedulers: the jobs after a shared FP32 fine-tuning go out as
element ranges of one array script, each range held until its parent completed (SLURM
afterok, LSF done() on volclava: packed here; unpacked there in
tests/test_seed_study_volclava.py), and resume from the parent's checkpoint. Packed
(resources.pack: 2, jobs.pack): the two fine-tunings share one allocation, and each parent's two
jobs another, each job with its own directory, status and log."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import recording, write_spec

from jobs.ledger import Ledger
from jobs.spec import FINETUNE_STAGE

SPEC = """
name: {name}
grid: {{task: [sst2], method: [lin, p2], nbits: [2], seed: [1, 2]}}
base:
  model_name_or_path: {model}
  data_dir: {data}
  finetune_epochs: 1
  epochs_per_stage: 0.5
  max_seq_length: 16
  max_train_samples: 64
  max_eval_samples: 32
resources: {{cpus: 1, mem: 1000, time: 20, pack: {pack}}}
"""


def cli(env, cwd, *args):
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def scenario(env, tmp_path, tiny_model, demo_task, backend, pack=1) -> dict:
    name = f"share{backend}"
    spec = write_spec(tmp_path, SPEC.format(name=name, model=tiny_model, data=demo_task,
                                            pack=pack))
    launched = cli(env, tmp_path, "launch", str(spec), "--backend", backend, "--no-prefetch")
    assert launched.returncode == 0, launched.stderr
    assert f"submitted 6 jobs to {backend.upper()}" in launched.stdout, launched.stdout
    assert "4 wait for their previous-stage job" in launched.stdout
    sweep = tmp_path / "runs" / name
    deadline = time.monotonic() + 300
    while True:
        proc = cli(env, tmp_path, "status", str(sweep))
        if proc.stdout.splitlines()[-1:] == ["6 jobs: 6 completed"]:
            break
        if time.monotonic() > deadline or "failed" in proc.stdout.splitlines()[-1]:
            pytest.fail(proc.stdout)
        time.sleep(1.0)
    ledger = Ledger(sweep).jobs
    parents = {jid: e for jid, e in ledger.items() if e.get("stage") == FINETUNE_STAGE}
    assert len(parents) == 2
    for jid, e in ledger.items():
        if jid in parents:
            assert (Path(e["output_dir"]) / "finetuned" / "trainer_state.json").is_file()
            continue
        parent = parents[e["after"]]
        assert e["waits_for"] == parent["scheduler_id"]
        mine = json.loads((Path(e["output_dir"]) / "status.json").read_text())
        theirs = json.loads((Path(parent["output_dir"]) / "status.json").read_text())
        assert mine["started"] >= theirs["ended"]
        results = json.loads((Path(e["output_dir"]) / "eval_results.json").read_text())
        assert results["finetune_shared"] is True and results["finetune_job"] == e["after"]
    children = [e for jid, e in ledger.items() if jid not in parents]
    assert len({e["scheduler_id"].split("_")[0] for e in children}) == 2  # a range a parent
    if pack == 1:  # each child ran once: one log per element
        assert len({e["scheduler_id"] for e in children}) == 4
        return ledger
    # packed: the two parents in one allocation, each parent's two children in another
    assert len({e["scheduler_id"] for e in parents.values()}) == 1
    assert len({e["scheduler_id"] for e in children}) == 2
    for jid, e in ledger.items():
        sid = e["scheduler_id"]
        log = Path(e["log"])
        assert log == sweep / "logs" / f"{sid}.{jid}.out"  # its own log
        assert "jobs.runtime: completed" in log.read_text()
        # the pack's own log says when each started and ended (the scheduler may write it
        # after the member's results: LSF copies its spooled output when the job ends)
        deadline = time.monotonic() + 60
        while True:
            pack_log = "".join(p.read_text() for p in (sweep / "logs").glob(f"{sid}.*")
                               if p.suffix in (".out", ".err") and p.stem == sid)
            if f"started {jid}" in pack_log and f"{jid} ended (exit 0)" in pack_log:
                break
            assert time.monotonic() < deadline, pack_log
            time.sleep(1.0)
    status = cli(env, tmp_path, "status", str(sweep))  # the members are jobs there
    assert status.stdout.splitlines()[-1] == "6 jobs: 6 completed"
    jid, e = next(iter(ledger.items()))
    shown = cli(env, tmp_path, "logs", jid, str(sweep))  # its own log, then its pack's
    assert shown.returncode == 0, shown.stderr
    heads = [line for line in shown.stdout.splitlines() if line.startswith("==> ")]
    sid = e["scheduler_id"]
    assert [h.split("/")[-1] for h in heads] == [f"{sid}.{jid}.out <==", f"{sid}.out <==",
                                                 f"{sid}.err <=="], shown.stdout
    assert "jobs.runtime: completed" in shown.stdout and f"started {jid}" in shown.stdout
    ambiguous = cli(env, tmp_path, "logs", sid, str(sweep))
    assert ambiguous.returncode == 2 and "it is a pack (resources.pack)" in ambiguous.stderr
    again = cli(env, tmp_path, "launch", str(spec), "--backend", backend, "--no-prefetch")
    assert again.returncode == 0 and "nothing to submit (6 completed" in again.stdout, again
    collected = cli(env, tmp_path, "collect", str(sweep), "--to", "csv", "-o",
                    str(tmp_path / "runs.csv"))
    assert collected.returncode == 0, collected.stderr
    assert len((tmp_path / "runs.csv").read_text().splitlines()) == 1 + 6  # a row a job
    return ledger


def test_slurm_runs_the_children_after_their_shared_fine_tuning(slurm, tmp_path, tiny_model,
                                                                 demo_task):
    env, calls = recording(slurm, tmp_path, "sbatch")
    ledger = scenario(env, tmp_path, tiny_model, demo_task, "slurm")
    lines = calls.read_text().splitlines()
    ranges = sorted(re.findall(r"--array=(\S+) --dependency=afterok:(\S+)", " ".join(lines)))
    parents = sorted(e["scheduler_id"] for e in ledger.values()
                     if e.get("stage") == FINETUNE_STAGE)
    assert ranges == [("0-1", parents[0]), ("2-3", parents[1])], lines


def test_slurm_runs_packed_jobs_side_by_side(slurm, tmp_path, tiny_model, demo_task):
    env, calls = recording(slurm, tmp_path, "sbatch")
    ledger = scenario(env, tmp_path, tiny_model, demo_task, "slurm", pack=2)
    lines = calls.read_text().splitlines()
    ranges = sorted(re.findall(r"--array=(\S+) --dependency=afterok:(\S+)", " ".join(lines)))
    (parents,) = {e["scheduler_id"] for e in ledger.values() if e.get("stage") == FINETUNE_STAGE}
    assert ranges == [("0-0", parents), ("1-1", parents)], lines
    script = Path(lines[0].split()[-1]).read_text()
    assert "#SBATCH --cpus-per-task=2" in script and "#SBATCH --mem=2000M" in script


def test_lsf_runs_packed_jobs_side_by_side(volclava, tmp_path, tiny_model, demo_task):
    env, calls = recording(volclava, tmp_path, "bsub")
    ledger = scenario(env, tmp_path, tiny_model, demo_task, "lsf", pack=2)
    (parents,) = {e["scheduler_id"] for e in ledger.values() if e.get("stage") == FINETUNE_STAGE}
    text = calls.read_text()
    ranges = sorted((re.search(r"-J sharelsf\.after\[(\d+-\d+)\]", line).group(1),
                     re.search(r"-w done\((\S+)\)", line).group(1))
                    for line in text.splitlines() if "-J" in line)
    target = parents.replace("_", "[") + "]"
    assert ranges == [("1-1", target), ("2-2", target)], text
