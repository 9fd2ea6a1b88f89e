"""The local backend's scheduling, with stand-in job scripts: GPU pinning, parallelism, threads."""

from __future__ import annotations

import io
from pathlib import Path

from conftest import write_spec

from jobs.backends.local import LocalRun, visible_gpus
from jobs.grid import expand
from jobs.ledger import Ledger
from jobs.spec import load_spec

JOB = """#!/usr/bin/env bash
set -e
mkdir -p {out}
echo "$CUDA_VISIBLE_DEVICES $OMP_NUM_THREADS $(date +%s.%N)" > {out}/env
sleep 0.6
echo "$(date +%s.%N)" >> {out}/env
echo '{{"state": "completed"}}' > {out}/status.json
echo '{{"eval_accuracy": 1.0}}' > {out}/eval_results.json
{fail}
"""


def runner(tmp_path, n_jobs, max_parallel, gpus, pool, fail_index=None):
    spec = load_spec(write_spec(tmp_path, f"name: r\ngrid: {{task: [rte], method: [fp32], "
                                          f"seed: 1..{n_jobs}}}\nsweep_dir: {tmp_path}/sw\n"))
    jobs = expand(spec)
    ledger = Ledger(tmp_path / "sw")
    ledger.register(spec.name, spec.path, jobs)
    work = []
    for i, job in enumerate(jobs):
        script = tmp_path / f"job{i}.sh"
        script.write_text(JOB.format(out=job.output_dir,
                                     fail="exit 3" if i == fail_index else ""))
        work.append((job, (script, 1), f"seed={i + 1}"))
    stream = io.StringIO()
    run = LocalRun(ledger, work, max_parallel, gpus, pool, tmp_path / "sw" / "logs", stream)
    return run, jobs, ledger, stream


def env_of(job):
    lines = (Path(job.output_dir) / "env").read_text().split("\n")
    devices, threads, start = lines[0].split(" ")  # devices is "" for CPU jobs
    return devices, int(threads), float(start), float(lines[1])


def test_each_job_gets_its_own_gpu(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    run, jobs, ledger, stream = runner(tmp_path, 4, 2, 1, ["0", "1"])
    assert run.run() == 0
    envs = [env_of(j) for j in jobs]
    assert sorted({e[0] for e in envs}) == ["0", "1"]
    for a in envs:  # jobs that overlap in time never share a GPU
        for b in envs:
            if a is not b and a[2] < b[3] and b[2] < a[3]:
                assert a[0] != b[0]
    assert {e["state"] for e in ledger.jobs.values()} == {"completed"}
    assert "done 4 | running 0 | failed 0 | left 0" in stream.getvalue()


def test_parallelism_is_bounded_and_cores_are_shared(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    run, jobs, _, _ = runner(tmp_path, 5, 2, 0, [])
    assert run.run() == 0
    envs = [env_of(j) for j in jobs]
    assert all(e[1] == 4 for e in envs)  # 8 cores over 2 jobs at once
    events = sorted([(e[2], 1) for e in envs] + [(e[3], -1) for e in envs])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    assert peak == 2
    assert all(e[0] == "" for e in envs)  # CPU jobs see no GPU


def test_failed_job_is_marked_and_the_rest_go_on(tmp_path):
    run, jobs, ledger, _ = runner(tmp_path, 3, 1, 0, [], fail_index=1)
    assert run.run() == 1
    states = [ledger.jobs[j.id]["state"] for j in jobs]
    assert states == ["completed", "failed", "completed"]
    assert ledger.jobs[jobs[1].id]["exit_status"] == 3
    saved = Ledger(tmp_path / "sw").data
    assert saved["jobs"][jobs[1].id]["reason"] == "exit status 3"


def test_visible_gpus_from_the_environment(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
