"""resources.pack: several jobs in one allocation (jobs.pack). The runner is run here with a
stand-in member (a small script in place of `python -m jobs.runtime`) that records what it was
given and ends as told; the real jobs run packed on the test SLURM and volclava in
tests/test_cluster_sharing.py."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest

from jobs import pack
from jobs.grid import expand
from jobs.running import cancel
from jobs.scripts import packs_of, write_configs
from jobs.spec import load_spec
from quantlib import preemption
from quantlib.jobdir import CANCEL_REQUEST, job_state, read_json

# The stand-in member: `python FAKE CONFIGS ENTRY`. What it does is chosen by the job's seed:
# 1 completes, 2 stops at a checkpoint on SIGUSR2 (exit REQUEUE), 3 fails, 4 runs until
# SIGINT (interrupted).
FAKE = r'''
import json, os, signal, sys, time
sys.path.insert(0, os.environ["QS_ROOT"])
from quantlib.jobdir import read_config, write_results, write_status
config = read_config(sys.argv[1], int(sys.argv[2]))
seed, out = config["seed"], config["output_dir"]
got = []
signal.signal(signal.SIGINT, lambda *a: got.append("INT"))
signal.signal(signal.SIGUSR2, (lambda *a: got.append("USR2")) if seed == 2 else signal.SIG_IGN)
os.makedirs(out, exist_ok=True)
write_status(out, "running")
seen = {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "omp": os.environ.get("OMP_NUM_THREADS"),
        "cores": sorted(os.sched_getaffinity(0)), "requeue": os.environ.get("QUANTSWEEP_REQUEUE"),
        "job": os.environ.get("QUANTSWEEP_JOB_ID")}
with open(os.path.join(out, "seen.jsonl"), "a") as fh:
    fh.write(json.dumps(seen) + "\n")
if seed == 1:
    write_results(out, config["task"], {"accuracy": 0.5})
    write_status(out, "completed")
    sys.exit(0)
if seed == 3:
    write_status(out, "failed", reason="boom")
    sys.exit(1)
while not got:
    time.sleep(0.05)
if got[0] == "USR2":
    write_status(out, "interrupted", reason="preempted", checkpoint_step=10)
    sys.exit(75)
write_status(out, "interrupted", reason="SIGINT")
sys.exit(130)
'''

SPEC = """
name: pk
grid: {task: [mrpc], method: [fp32], seed: [1, 2, 3, 4]}
base: {data_dir: data}
resources: {pack: 4, cpus: 1}
finetune_sharing: false
"""


@pytest.fixture
def packed(tmp_path, monkeypatch):
    """A 4-job sweep's configs, the stand-in member, a fake `scontrol` that records its
    arguments, and the environment of SLURM array element 77_0."""
    (tmp_path / "spec.yaml").write_text(SPEC)
    spec = load_spec(str(tmp_path / "spec.yaml"))
    spec.sweep_dir = str(tmp_path / "sw")
    jobs = expand(spec)
    refs = write_configs(spec, jobs, Path(spec.sweep_dir))
    fake = tmp_path / "member.py"
    fake.write_text(FAKE)
    monkeypatch.setattr(pack, "MEMBER", (str(fake),))
    monkeypatch.setattr(pack, "POLL_S", 0.05)
    monkeypatch.setenv("QS_ROOT", str(Path(__file__).resolve().parents[1]))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/scontrol.calls\n")
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("QUANTSWEEP_REQUEUE", "slurm")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    argv = ["--gpus", "2", "--cpus", "1"] + [w for j in jobs for w in refs[j.id].argv()]
    return jobs, argv, tmp_path


def seen(job) -> list[dict]:
    path = job.output_dir / "seen.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def later(sig: int, *members, delay: float = 0.3) -> threading.Thread:
    """Send `sig` to this process (the runner's main thread handles it) once each of
    `members` has started (its handlers are in place), `delay` s after that."""
    counts = [len(seen(m)) for m in members]

    def send():
        deadline = time.monotonic() + 60
        while any(len(seen(m)) <= c for m, c in zip(members, counts)):
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        time.sleep(delay)
        os.kill(os.getpid(), sig)

    t = threading.Thread(target=send)
    t.start()
    return t


def test_slots_split_what_the_allocation_has():
    assert pack.slots(list("abcdefgh"), 2, 4) == [["a", "b"], ["c", "d"], ["e", "f"], ["g", "h"]]
    assert pack.slots([0, 1, 2], 2, 3) == [[0], [1], [2]]  # too few: an even share each
    assert pack.slots([0, 1], 1, 4) == [[0], [1], [0], [1]]  # fewer than members: shared
    assert pack.slots([], 1, 2) == [[], []]


def test_packs_keep_jobs_that_wait_for_different_jobs_apart(tmp_path):
    (tmp_path / "spec.yaml").write_text(
        "name: s\ngrid: {task: [rte, mrpc], method: [lin], nbits: [2, 4, 8]}\n"
        "base: {data_dir: data}\nresources: {pack: 2}\n")
    spec = load_spec(str(tmp_path / "spec.yaml"))
    jobs = expand(spec)  # 2 shared fine-tunings, then 3 jobs after each
    children = [j for j in jobs if j.after]
    packs = packs_of(children, 2)
    assert [len(p) for p in packs] == [2, 1, 2, 1]
    assert all(len({j.after for j in p}) == 1 for p in packs)
    assert [j for p in packs for j in p] == children  # the order kept
    assert packs_of(children, 1) == [[j] for j in children]


def test_a_pack_pins_its_members_requeues_once_and_reruns_only_the_requeued(packed):
    jobs, argv, tmp = packed
    by_seed = {j.config["seed"]: j for j in jobs}
    # the warning reaches the pack while seeds 2 and 4 run: 2 stops at its checkpoint, 4 does
    # not (it ends on the SIGINT that follows, as bkill / scancel would send)
    t = later(signal.SIGUSR2, by_seed[2], by_seed[4])
    t2 = later(signal.SIGINT, by_seed[2], by_seed[4], delay=1.5)
    rc = pack.main(argv)
    t.join()
    t2.join()
    assert rc == preemption.REQUEUE
    assert (tmp / "scontrol.calls").read_text().split("\n")[0] == "requeue 77_0"  # once
    calls = (tmp / "scontrol.calls").read_text().splitlines()
    assert len(calls) == 1
    first = {s: seen(j)[0] for s, j in by_seed.items()}
    assert [first[s]["cuda"] for s in (1, 2, 3, 4)] == ["0,1", "2,3", "4,5", "6,7"]
    cores = sorted(os.sched_getaffinity(0))
    for s in (1, 2, 3, 4):
        assert first[s]["requeue"] is None  # the members never requeue the pack themselves
        assert first[s]["job"] == by_seed[s].id
        assert len(first[s]["cores"]) == 1 and set(first[s]["cores"]) <= set(cores)
        assert first[s]["omp"] == "1"
        log = tmp / "sw" / "logs" / f"77_0.{by_seed[s].id}.out"
        assert log.is_file()  # each member its own log
    if len(cores) >= 4:
        assert len({tuple(first[s]["cores"]) for s in (1, 2, 3, 4)}) == 4  # its own core
    status2 = read_json(by_seed[2].output_dir / "status.json")
    assert status2["state"] == "interrupted" and status2["requeues"] == 1
    assert status2["requeued_job"] == "77_0"
    plan = read_json(tmp / "sw" / "logs" / "77_0.pack.json")
    assert plan["requeued"] == [by_seed[2].id]
    # the requeued run of the same element: only seed 2 runs again (1 completed, 3 failed,
    # 4 was interrupted by the SIGINT, not by the warning: its relaunch reruns it)
    t = later(signal.SIGINT, by_seed[2])
    rc = pack.main(argv)
    t.join()
    assert rc == 0
    assert [len(seen(by_seed[s])) for s in (1, 2, 3, 4)] == [1, 2, 1, 1]
    assert seen(by_seed[2])[1]["cuda"] == "2,3"  # the same slot as before


def test_a_cancel_request_stops_one_member_and_the_pack_runs_on(packed, monkeypatch):
    jobs, argv, tmp = packed
    by_seed = {j.config["seed"]: j for j in jobs}
    marker = by_seed[4].output_dir / CANCEL_REQUEST

    def request():
        while len(seen(by_seed[4])) < 1 or len(seen(by_seed[2])) < 1:
            time.sleep(0.05)
        time.sleep(0.3)
        marker.write_text("sweep cancel\n")
        while read_json(by_seed[4].output_dir / "status.json")["state"] == "running":
            time.sleep(0.05)
        assert by_seed[2].output_dir.joinpath("status.json").read_text().count("running")
        os.kill(os.getpid(), signal.SIGUSR2)  # then the warning: seed 2 stops at its checkpoint

    t = threading.Thread(target=request)
    t.start()
    rc = pack.main(argv)
    t.join()
    assert read_json(by_seed[4].output_dir / "status.json")["reason"] == "SIGINT"
    assert read_json(by_seed[1].output_dir / "status.json")["state"] == "completed"
    assert rc == preemption.REQUEUE
    # a member whose cancel was asked before the pack started is never started
    for j in jobs:
        (j.output_dir / "seen.jsonl").unlink()
    (tmp / "sw" / "logs" / "77_0.pack.json").unlink()
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")  # another element: no plan
    t = later(signal.SIGINT, by_seed[2])
    pack.main(argv)
    t.join()
    assert seen(by_seed[4]) == [] and len(seen(by_seed[2])) == 1


def test_too_few_gpus_fail_the_members_with_the_reason(packed, monkeypatch):
    jobs, argv, tmp = packed
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    assert pack.main(argv) == 0
    for j in jobs:
        status = read_json(j.output_dir / "status.json")
        assert status["state"] == "failed"
        assert "needs 4 x 2 GPUs; the allocation shows 0,1,2" in status["reason"]
        assert seen(j) == []


def test_bad_command_lines_exit_2(tmp_path, capsys):
    assert pack.main(["--gpus", "1"]) == 2
    assert pack.main([str(tmp_path / "c.jsonl"), "x"]) == 2
    assert pack.main([str(tmp_path / "missing.jsonl"), "0"]) == 2  # no member readable
    assert "cannot read the job config" in capsys.readouterr().err


def test_cancel_of_some_members_asks_the_pack_and_of_all_cancels_the_id(tmp_path, monkeypatch):
    """sweep cancel: a member whose pack runs on for others gets a cancel request; a pack all
    of whose members are picked is cancelled on the scheduler, once."""
    from jobs import backends
    from jobs.ledger import Ledger

    (tmp_path / "spec.yaml").write_text(SPEC)
    spec = load_spec(str(tmp_path / "spec.yaml"))
    spec.sweep_dir = str(tmp_path / "sw")
    jobs = expand(spec)
    ledger = Ledger(Path(spec.sweep_dir))
    with ledger.locked():
        ledger.register(spec.name, spec.path, jobs, False)
        for i, j in enumerate(jobs):  # seeds 1, 2 in pack 5_0; seeds 3, 4 in pack 5_1
            ledger.jobs[j.id].update(state="submitted", backend="slurm",
                                     scheduler_id=f"5_{i // 2}",
                                     submitted="2026-12-03T10:00:00+0000")
        ledger.save()
    cancelled: list[list[str]] = []
    slurm = backends.get("slurm")
    monkeypatch.setattr(type(slurm), "states", lambda self, d, ids: {i: "RUNNING" for i in ids})
    monkeypatch.setattr(type(slurm), "cancel", lambda self, d, ids: cancelled.append(ids))
    cancel([str(tmp_path / "sw")], ["seed=1"])
    assert cancelled == [] and (jobs[0].output_dir / CANCEL_REQUEST).is_file()
    assert not (jobs[1].output_dir / CANCEL_REQUEST).exists()
    entry = Ledger(Path(spec.sweep_dir)).jobs[jobs[0].id]
    (jobs[0].output_dir / "status.json").write_text('{"state": "running"}')
    assert job_state(entry, "RUNNING") == ("running", None)  # until it has stopped
    (jobs[0].output_dir / "status.json").write_text('{"state": "interrupted"}')
    assert job_state(entry, "RUNNING")[0] == "cancelled"
    assert job_state(entry, "PENDING")[0] == "cancelled"
    cancel([str(tmp_path / "sw")], ["method=fp32"])  # the rest: every live member of both
    assert [sorted(c) for c in cancelled] == [["5_0", "5_1"]]  # each pack once, on the scheduler
    assert not any((j.output_dir / CANCEL_REQUEST).exists() for j in jobs[1:])
