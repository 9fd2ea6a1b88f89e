"""Sweeps on clusters through `sweep`: launch returns at once, status, relaunch, cancel, logs,
collect. LSF against the stand-in in tests/lsf_standin; SLURM against the real single-node
cluster that tests/slurm/start.sh starts (skipped with the reason when none answers)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_spec

from jobs.ledger import Ledger
from jobs.state import job_state

STANDIN = Path(__file__).parent / "lsf_standin" / "bin"
SLURM_CONF = Path(os.environ.get("QUANTSWEEP_SLURM_DIR", "/tmp/quantsweep-slurm")) / "slurm.conf"

SPEC = """
name: {name}
grid: {{task: [sst2], method: [fp32], seed: [1, 2]}}
include:
  - {{task: sst2, method: fp32, seed: 3, finetune_epochs: 500}}
  - {{task: sst2, method: fp32, seed: 4, data_dir: {missing}}}
base:
  model_name_or_path: {model}
  data_dir: {data}
  finetune_epochs: 0.25
  max_train_samples: 64
  max_eval_samples: 32
resources: {{cpus: 1, mem: 1000, time: 20}}
"""


def slurm_state(env: dict[str, str]) -> tuple[bool | None, str]:
    """(the controller answered: True, refused: False, too slow to tell: None; sinfo's text)."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%N %T"], env=env, capture_output=True,
                             text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return None, "sinfo took over 10 s"
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"sinfo: {exc}"
    text = (out.stdout + out.stderr).strip() or f"sinfo exit status {out.returncode}"
    return out.returncode == 0, text


def slurm_env(wait: float = 0.0) -> tuple[dict[str, str] | None, str]:
    """(environment, "") once the test SLURM's node can take jobs (idle, mixed, allocated or
    still completing a previous test's job), waiting up to `wait` seconds; else (None, why)."""
    if not SLURM_CONF.is_file() or shutil.which("sinfo") is None:
        return None, f"no SLURM configured (looked for {SLURM_CONF})"
    env = {**os.environ, "SLURM_CONF": str(SLURM_CONF)}
    deadline = time.monotonic() + wait
    while True:
        answered, state = slurm_state(env)
        if answered and re.search(r"\b(idle|mixed|allocated|alloc|completing)\b", state):
            return env, ""
        if answered is False or time.monotonic() >= deadline:  # no waiting on a dead one
            return None, f"SLURM at {SLURM_CONF} does not take jobs: {state}"
        time.sleep(2)


@pytest.fixture
def lsf_env(tmp_path):
    return {**os.environ, "PATH": f"{STANDIN}{os.pathsep}{os.environ['PATH']}",
            "LSF_STANDIN_DIR": str(tmp_path / "lsf-state"),
            "LSF_STANDIN_TERMINATE_INTERVAL": "2"}


@pytest.fixture
def slurm():
    """The test SLURM's environment; every job a test leaves on it is cancelled at the test's
    end, pass or fail (the test cluster is this suite's own: tests run one at a time)."""
    env, why = slurm_env(wait=60.0)
    if env is None:
        if os.environ.get("CI") and SLURM_CONF.is_file():  # .ci/run started it: must work
            pytest.fail(why)
        pytest.skip(f"{why} (start one with tests/slurm/start.sh)")
    yield env
    import getpass

    subprocess.run(["scancel", f"--user={getpass.getuser()}"], env=env, capture_output=True,
                   timeout=60)


def cli(env, cwd, *args):
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def table(env, cwd, sweep) -> dict[str, list[str]]:
    """seed -> row of `sweep status`."""
    proc = cli(env, cwd, "status", sweep)
    assert proc.returncode == 0, proc.stderr
    ledger = Ledger(cwd / "runs" / sweep).data["jobs"]
    seeds = {jid: e["config"]["seed"] for jid, e in ledger.items()}
    rows = {}
    for line in proc.stdout.splitlines()[2:-1]:
        cols = re.split(r"\s{2,}", line.strip())
        rows[seeds[cols[0]]] = cols
    return rows


def wait_for(env, cwd, sweep, want: dict[int, str], seconds=240):
    deadline = time.monotonic() + seconds
    while True:
        rows = table(env, cwd, sweep)
        got = {seed: row[5] for seed, row in rows.items() if seed in want}
        if got == want:
            return rows
        if time.monotonic() > deadline:
            pytest.fail(f"states {got}, wanted {want}\n{cli(env, cwd, 'status', sweep).stdout}")
        time.sleep(1.0)


def scenario(env, tmp_path, tiny_model, demo_task, backend):
    name = f"on{backend}"
    spec = write_spec(tmp_path, SPEC.format(name=name, model=tiny_model, data=demo_task,
                                            missing=tmp_path / "missing"))
    start = time.monotonic()
    # --no-prefetch: the job with a missing data_dir must reach the cluster and fail there
    launched = cli(env, tmp_path, "launch", str(spec), "--backend", backend, "--no-prefetch")
    assert launched.returncode == 0, launched.stderr
    assert time.monotonic() - start < 30  # returns once submitted, not when done
    assert f"submitted 4 jobs to {backend.upper()}" in launched.stdout
    assert "follow with: sweep status runs/" in launched.stdout
    rows = wait_for(env, tmp_path, name, {1: "completed", 2: "completed", 3: "running",
                                          4: "failed"})
    assert "data_dir" in rows[4][7]  # the failure's reason, from the job's status.json
    assert all(rows[s][4] != "-" for s in rows)  # scheduler ids recorded
    again = cli(env, tmp_path, "launch", str(spec), "--backend", backend, "--no-prefetch")
    assert "nothing to submit" not in again.stdout  # the failed job goes again ...
    assert "submitted 1 jobs" in again.stdout and "1 queued or running" in again.stdout
    cancelled = cli(env, tmp_path, "cancel", name, "--where", "seed=3")
    assert cancelled.returncode == 0 and "cancelled 1 jobs" in cancelled.stdout
    rows = wait_for(env, tmp_path, name, {1: "completed", 2: "completed", 3: "cancelled",
                                          4: "failed"})
    totals = cli(env, tmp_path, "status", name).stdout.splitlines()[-1]
    assert totals == "4 jobs: 1 cancelled, 2 completed, 1 failed"
    log = cli(env, tmp_path, "logs", rows[1][0], name)
    assert log.returncode == 0 and "quantlib.run: completed" in log.stdout
    collected = cli(env, tmp_path, "collect", f"runs/{name}", "-o", "r.xlsx")
    assert collected.returncode == 0 and collected.stdout.startswith("4 jobs")
    return name, spec


def test_lsf_sweep(lsf_env, tmp_path, tiny_model, demo_task):
    name, spec = scenario(lsf_env, tmp_path, tiny_model, demo_task, "lsf")
    scripts = [p.read_text() for p in (tmp_path / "runs" / name / "submitit").glob("*.sh")]
    array = next(s for s in scripts if '#BSUB -J "onlsf[1-4]"' in s)  # then a rerun of 1
    assert '#BSUB -R "rusage[mem=1000MB]"' in array
    # the LSF stand-in forgets finished jobs: files keep the states
    (tmp_path / "lsf-state" / "jobs").rename(tmp_path / "lsf-forgotten")
    (tmp_path / "lsf-state" / "jobs").mkdir()
    rows = table(lsf_env, tmp_path, name)
    assert [rows[s][5] for s in (1, 2, 3, 4)] == ["completed", "completed", "cancelled",
                                                  "failed"]


def test_slurm_sweep(slurm, tmp_path, tiny_model, demo_task):
    name, spec = scenario(slurm, tmp_path, tiny_model, demo_task, "slurm")
    # what SLURM received for the first launch (its stored copy of the batch script) is what
    # the dry run renders for the sweep: the same script
    jobs = Ledger(tmp_path / "runs" / name).jobs
    first = next(e for e in jobs.values() if e["config"]["seed"] == 1)["scheduler_id"]
    stored = subprocess.run(["scontrol", "write", "batch_script", first.split("_")[0], "-"],
                            env=slurm, capture_output=True, text=True)
    assert stored.returncode == 0, stored.stderr
    dry = cli(slurm, tmp_path, "launch", str(spec), "--backend", "slurm", "--dry-run",
              "--no-prefetch")  # as launched
    assert dry.returncode == 0, dry.stderr
    shown = (tmp_path / "runs" / name / "scripts" / "slurm_array_1.sh").read_text()
    assert stored.stdout.strip() == shown.strip()
    assert "#SBATCH --array=0-3" in shown and "#SBATCH --mem=1000M" in shown
    assert "#SBATCH --time=00:20:00" in shown and "#SBATCH --signal=B:USR2@90" in shown
    # its logs are where the script says and `sweep logs` looks
    log = next(e["log"] for e in Ledger(tmp_path / "runs" / name).jobs.values())
    assert Path(log).parent == tmp_path / "runs" / name / "logs" and Path(log).exists()


def test_launch_without_the_scheduler_is_a_clear_error(tmp_path, tiny_model, demo_task):
    spec = write_spec(tmp_path, SPEC.format(name="x", model=tiny_model, data=demo_task,
                                            missing="m"))
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}
    proc = cli(env, tmp_path, "launch", str(spec), "--backend", "lsf")
    assert proc.returncode == 2
    assert "`bsub` is not on PATH" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("entry, sched, launcher, want", [
    ({"backend": "slurm", "submitted": "2000-01-01T00:00:00+0000"}, "PENDING", False, "pending"),
    ({"backend": "slurm"}, "RUNNING", False, "running"),
    ({"backend": "lsf"}, "COMPLETED", False, "failed"),  # exited without results
    ({"backend": "slurm"}, "TIMEOUT", False, "failed"),
    ({"backend": "slurm"}, "CANCELLED", False, "cancelled"),
    ({"backend": "slurm", "state": "cancelled"}, "UNKNOWN", False, "cancelled"),
    ({"backend": "slurm", "submitted": "2000-01-01T00:00:00+0000"}, "UNKNOWN", False, "failed"),
    ({"backend": "slurm", "submitted": "2999-01-01T00:00:00+0000"}, "UNKNOWN", False, "pending"),
    ({"backend": "local", "state": "running"}, None, True, "running"),
    ({"backend": "local", "state": "running"}, None, False, "interrupted"),  # launcher gone
    ({"backend": "local", "state": "pending"}, None, False, "missing"),
    ({"state": "missing"}, None, False, "missing"),  # never launched
])
def test_state_resolution(tmp_path, entry, sched, launcher, want):
    entry = {**entry, "output_dir": str(tmp_path / "none")}
    assert job_state(entry, sched, launcher)[0] == want


def test_a_failure_marker_older_than_the_resubmission_is_not_the_rerun(tmp_path):
    # the failed job went again; the scheduler does not list the new id yet (sacct lags)
    (tmp_path / "status.json").write_text(json.dumps(
        {"state": "failed", "reason": "boom", "updated": "2026-01-01T10:00:00+0000"}))
    recent = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    entry = {"backend": "slurm", "output_dir": str(tmp_path), "submitted": recent}
    assert job_state(entry, "UNKNOWN") == ("pending", None)
    assert job_state(entry, None) == ("pending", None)
    # the rerun failed too: its marker is newer than the submission
    (tmp_path / "status.json").write_text(json.dumps(
        {"state": "failed", "reason": "boom again", "updated": "2999-01-01T10:00:00+0000"}))
    assert job_state(entry, "UNKNOWN") == ("failed", "boom again")


def test_results_on_disk_win_over_the_scheduler(tmp_path):
    (tmp_path / "status.json").write_text('{"state": "completed"}')
    (tmp_path / "eval_results.json").write_text("{}")
    for sched in ("RUNNING", "FAILED", "UNKNOWN", None):
        assert job_state({"backend": "slurm", "output_dir": str(tmp_path)}, sched)[0] \
            == "completed"
    assert job_state({"backend": "slurm", "output_dir": str(tmp_path / "x"),
                      "submitted": "2000-01-01T00:00:00+0000"}, "UNKNOWN")[1].startswith("lost")


LONG = """
name: {name}
grid: {{task: [sst2], method: [lin], nbits: [2]}}
base:
  model_name_or_path: {model}
  data_dir: {data}
  max_seq_length: 24
  batch_size: 16
  learning_rate: 5.0e-4
  finetune_epochs: 150
  epochs_per_stage: 4
  max_train_samples: 400
  max_eval_samples: 64
  seed: 11
resources: {resources}
"""


def resume_scenario(env, tmp_path, tiny_model, demo_task, backend, resources) -> dict:
    """Training (45 s on an idle 2-core machine, 200 s on a busy one) outlasts the time limit's
    warning (about 12 s of training after start-up): the job checkpoints, requeues itself
    (as often as it takes), resumes, and ends with the results of an uninterrupted run."""
    spec = write_spec(tmp_path, LONG.format(name="limited", model=tiny_model, data=demo_task,
                                            resources=resources))
    launched = cli(env, tmp_path, "launch", str(spec), "--backend", backend)
    assert launched.returncode == 0, launched.stderr
    ledger_path = tmp_path / "runs/limited/ledger.json"
    deadline = time.monotonic() + 600
    while True:
        jid, entry = next(iter(Ledger(ledger_path.parent).jobs.items()))
        out = Path(entry["output_dir"])
        if (out / "eval_results.json").exists():
            break
        if time.monotonic() > deadline:
            pytest.fail(cli(env, tmp_path, "status", "limited").stdout)
        time.sleep(2)
    resumed = json.loads((out / "eval_results.json").read_text())
    assert resumed.get("resumed_from_step", 0) > 0  # it was cut, and came back
    config = json.loads((tmp_path / "runs/limited/configs" / f"{jid}.json").read_text())
    config["output_dir"] = str(tmp_path / "uninterrupted")
    (tmp_path / "plain.json").write_text(json.dumps(config))
    plain = subprocess.run([sys.executable, "-m", "quantlib.run", str(tmp_path / "plain.json")],
                           capture_output=True, text=True, timeout=600)
    assert plain.returncode == 0, plain.stderr[-2000:]
    reference = json.loads((tmp_path / "uninterrupted" / "eval_results.json").read_text())
    for key in ("eval_accuracy", "eval_loss", "train_steps"):
        assert resumed[key] == reference[key], key
    return entry


def test_slurm_time_limit_checkpoint_requeue_resume(slurm, tmp_path, tiny_model, demo_task):
    """USR2 40 s before a 1-minute limit (--signal=B:USR2@40, to the job's Python, which
    requeues the job itself)."""
    entry = resume_scenario(slurm, tmp_path, tiny_model, demo_task, "slurm",
                            "{cpus: 1, mem: 2000, time: 1, max_requeues: 20, "
                            "slurm: {signal_seconds: 40}}")
    sacct = subprocess.run(["sacct", "-j", entry["scheduler_id"].split("_")[0], "-D", "-X",
                            "-n", "-o", "State"], env=slurm, capture_output=True, text=True)
    assert len(sacct.stdout.split()) >= 2, sacct.stdout  # -D: every run of the requeued job


def test_lsf_run_limit_warning_checkpoint_requeue_resume(lsf_env, tmp_path, tiny_model,
                                                          demo_task):
    """-W 2 with -wa USR2 -wt 1, one LSF minute being 20 s in the stand-in: USR2 at 20 s."""
    env = {**lsf_env, "LSF_STANDIN_MINUTE": "20"}
    resume_scenario(env, tmp_path, tiny_model, demo_task, "lsf",
                    "{cpus: 1, mem: 2000, time: 2, max_requeues: 20, lsf: {warn_minutes: 1}}")


def test_a_second_launch_of_a_sweep_is_refused_while_one_runs(lsf_env, tmp_path, tiny_model,
                                                              demo_task):
    from jobs.ledger import Ledger

    spec = write_spec(tmp_path, SPEC.format(name="busy", model=tiny_model, data=demo_task,
                                            missing="m"))
    with Ledger(tmp_path / "runs" / "busy").locked():  # a launch in progress holds the lock
        second = cli(lsf_env, tmp_path, "launch", str(spec), "--backend", "lsf")
    assert second.returncode == 2
    assert "another launch of this sweep is running" in second.stderr
    assert not (tmp_path / "lsf-state" / "jobs").exists() or not any(
        (tmp_path / "lsf-state" / "jobs").iterdir())  # nothing was submitted


def test_a_refused_submission_is_a_one_line_error(lsf_env, tmp_path, tiny_model, demo_task):
    spec = write_spec(tmp_path, SPEC.format(name="refused", model=tiny_model, data=demo_task,
                                            missing="m")
                      .replace("time: 20}", "time: 20, lsf: {extra: ['-Z bogus']}}"))
    proc = cli(lsf_env, tmp_path, "launch", str(spec), "--backend", "lsf", "--no-prefetch")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("sweep: error: --backend lsf: `bsub` refused the submission:")
    assert "Illegal option" in last and "Traceback" not in proc.stderr
    ledger = Ledger(tmp_path / "runs/refused").data["jobs"]
    assert all(e["state"] == "missing" for e in ledger.values())  # nothing recorded as queued


STAGED = """
name: {name}
base:
  task: sst2
  model_name_or_path: {model}
  max_train_samples: 64
  max_eval_samples: 32
stages:
  - name: first
    zip:
      - seed: [1, 2]
        data_dir: [{data}, {missing}]
    base: {{method: fp32, finetune_epochs: 0.25}}
  - name: second
    base: {{method: ptq, quant_mode: ft1, calibrator: max, num_calib_batch: 1}}
resources: {{cpus: 1, mem: 1000, time: 20}}
"""


def staged_rows(env, cwd, sweep) -> dict[tuple[str, int], list[str]]:
    """(stage, seed) -> row of `sweep status`."""
    proc = cli(env, cwd, "status", sweep)
    assert proc.returncode == 0, proc.stderr
    ledger = Ledger(cwd / "runs" / sweep).data["jobs"]
    keys = {jid: ("first" if e["config"]["method"] == "fp32" else "second",
                  e["config"]["seed"]) for jid, e in ledger.items()}
    return {keys[cols[0]]: cols for cols in (re.split(r"\s{2,}", line.strip())
                                             for line in proc.stdout.splitlines()[2:-1])}


def staged_scenario(env, tmp_path, tiny_model, demo_task, backend, never: str):
    """A two-stage sweep on a cluster: the second stage waits for the first through the
    scheduler (afterok / done()); the child of a failed first-stage job never runs (`never`:
    the state the scheduler leaves it in); a relaunch resubmits the failed job and its child,
    the child waiting for the new id."""
    name = f"staged{backend}"
    spec = write_spec(tmp_path, STAGED.format(name=name, model=tiny_model, data=demo_task,
                                              missing=tmp_path / "missing"))
    start = time.monotonic()
    # --no-prefetch: the job with a missing data_dir must reach the cluster and fail there
    launched = cli(env, tmp_path, "launch", str(spec), "--backend", backend, "--no-prefetch")
    assert launched.returncode == 0, launched.stderr
    assert time.monotonic() - start < 30  # submitted, not run
    assert "submitted 4 jobs" in launched.stdout
    assert "2 wait for their previous-stage job" in launched.stdout
    ledger_path = tmp_path / "runs" / name / "ledger.json"
    ledger = Ledger(ledger_path.parent).jobs
    for entry in ledger.values():
        parent = ledger.get(entry.get("after") or "")
        assert entry.get("waits_for") == (parent["scheduler_id"] if parent else None)
    deadline = time.monotonic() + 240
    want = {("first", 1): "completed", ("second", 1): "completed", ("first", 2): "failed",
            ("second", 2): never}
    while True:
        rows = staged_rows(env, tmp_path, name)
        got = {k: row[5] for k, row in rows.items()}
        if got == want:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"{got}\n{cli(env, tmp_path, 'status', name).stdout}")
        time.sleep(1.0)
    ledger = Ledger(ledger_path.parent).jobs
    child = next(e for e in ledger.values() if e["config"]["method"] == "ptq"
                 and e["config"]["seed"] == 1)
    parent = ledger[child["after"]]
    child_status = json.loads((Path(child["output_dir"]) / "status.json").read_text())
    parent_status = json.loads((Path(parent["output_dir"]) / "status.json").read_text())
    assert child_status["started"] >= parent_status["ended"]
    child_config = json.loads((Path(child["output_dir"]) / "config.json").read_text())
    assert child_config["model_name_or_path"] == parent["output_dir"] + "/model"
    orphan = next(e for e in ledger.values() if e["config"]["method"] == "ptq"
                  and e["config"]["seed"] == 2)
    assert not (Path(orphan["output_dir"]) / "status.json").exists()  # it never started
    again = cli(env, tmp_path, "launch", str(spec), "--backend", backend, "--no-prefetch")
    assert again.returncode == 0, again.stderr
    assert "submitted 2 jobs" in again.stdout and "2 already completed" in again.stdout
    assert "1 wait for their previous-stage job" in again.stdout
    ledger = Ledger(ledger_path.parent).jobs
    orphan = next(e for e in ledger.values() if e["config"]["method"] == "ptq"
                  and e["config"]["seed"] == 2)
    assert orphan["waits_for"] == ledger[orphan["after"]]["scheduler_id"]
    assert orphan["attempts"] == 2
    cli(env, tmp_path, "cancel", name)
    return ledger


def test_lsf_staged_sweep_waits_with_done(lsf_env, tmp_path, tiny_model, demo_task):
    ledger = staged_scenario(lsf_env, tmp_path, tiny_model, demo_task, "lsf", never="pending")
    scripts = (tmp_path / "runs" / "stagedlsf" / "submitit").glob("*.sh")
    conditions = {m for p in scripts for m in re.findall(r'#BSUB -w "(.*)"', p.read_text())}
    first = {e["scheduler_id"] for e in ledger.values() if e["config"]["method"] == "fp32"}
    # one first-stage job still holds its array element id, the other was resubmitted alone
    array = next(i for i in first if "_" in i).split("_")[0]
    # the children of the first launch waited for array elements, the resubmitted one for
    # the resubmitted (single) job
    assert conditions == {f"done({array}[1])", f"done({array}[2])",
                          f"done({(first - {array + '_1'}).pop()})"}, conditions


def test_slurm_staged_sweep_waits_with_afterok(slurm, tmp_path, tiny_model, demo_task):
    wrapper = tmp_path / "bin"  # records every sbatch call, then submits it
    wrapper.mkdir()
    calls = tmp_path / "sbatch-calls"
    (wrapper / "sbatch").write_text(f'#!/bin/bash\necho "$*" >> {calls}\n'
                                    f'exec {shutil.which("sbatch", path=slurm["PATH"])} "$@"\n')
    (wrapper / "sbatch").chmod(0o755)
    env = {**slurm, "PATH": f"{wrapper}{os.pathsep}{slurm['PATH']}"}
    ledger = staged_scenario(env, tmp_path, tiny_model, demo_task, "slurm", never="cancelled")
    lines = calls.read_text().splitlines()
    deps = {m for line in lines for m in re.findall(r"--dependency=(\S+)", line)}
    first = {e["scheduler_id"] for e in ledger.values() if e["config"]["method"] == "fp32"}
    # one first-stage job still holds its element of the first array, the other was
    # resubmitted (an array of one) and its child waits for the new id
    array = min((i.split("_")[0] for i in first), key=int)
    (new,) = [i for i in first if not i.startswith(array + "_")]
    assert deps == {f"afterok:{array}_0", f"afterok:{array}_1", f"afterok:{new}"}, deps
    assert all("--kill-on-invalid-dep=yes" in line for line in lines if "--dependency" in line)


TEN_THOUSAND = """
name: big
grid: {{task: [rte], method: [fp32], seed: 1..10000}}
resources: {{cpus: 1, mem: 1000, time: 20, {hold}}}
"""


def submissions_of_10000(env, tmp_path, backend, hold):
    """10,000 jobs go out as 10 arrays of 1,000 (held, never run), and are cancelled."""
    spec = write_spec(tmp_path, TEN_THOUSAND.format(hold=hold))
    start = time.monotonic()
    proc = cli(env, tmp_path, "launch", str(spec), "--backend", backend, "--no-prefetch")
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert "submitted 10000 jobs" in proc.stdout, proc.stdout
    ledger = Ledger(tmp_path / "runs/big").data["jobs"]
    arrays = {e["scheduler_id"].split("_")[0] for e in ledger.values()}
    assert len(ledger) == 10000 and len(arrays) == 10, sorted(arrays)
    counts = sorted(sum(1 for e in ledger.values() if e["scheduler_id"].startswith(a + "_"))
                    for a in arrays)
    assert counts == [1000] * 10
    return sorted(arrays), elapsed


def test_lsf_10000_jobs_in_10_submissions(lsf_env, tmp_path):
    arrays = []
    try:
        arrays, elapsed = submissions_of_10000(lsf_env, tmp_path, "lsf", "lsf: {extra: [-H]}")
        scripts = list((tmp_path / "lsf-state" / "jobs").glob("*.sh"))
        assert len(scripts) == 10  # ten bsub calls
        assert all('#BSUB -J "big[1-1000]"' in p.read_text() for p in scripts)
        out = subprocess.run(["bjobs", "-a", "-o", "jobid jobindex stat exit_code", "-json",
                              arrays[0]], env=lsf_env, capture_output=True, text=True)
        stats = {r["STAT"] for r in json.loads(out.stdout)["RECORDS"]}
        assert stats == {"PSUSP"}  # held: nothing ran
    finally:
        if arrays:
            subprocess.run(["bkill", *arrays], env=lsf_env, capture_output=True)


def test_slurm_10000_jobs_in_10_submissions(slurm, tmp_path):
    arrays = []
    try:
        arrays, elapsed = submissions_of_10000(slurm, tmp_path, "slurm",
                                               "slurm: {extra: [--hold]}")
        scripts = [p.read_text() for p in (tmp_path / "runs/big/scripts").glob("slurm_*.sh")]
        assert len(scripts) == 10  # what each sbatch received: the dry run's scripts
        assert all("#SBATCH --array=0-999" in s and "#SBATCH --hold" in s for s in scripts)
        squeue = subprocess.run(["squeue", "-h", "-r", "-o", "%i %r", "-j", ",".join(arrays)],
                                env=slurm, capture_output=True, text=True)
        reasons = {line.split()[1] for line in squeue.stdout.splitlines() if line.strip()}
        assert reasons and reasons <= {"JobHeldUser", "JobHeldAdmin"}, squeue.stdout[:300]
    finally:
        if arrays:
            subprocess.run(["scancel", *arrays], env=slurm, capture_output=True)


def test_a_submission_refused_midway_keeps_what_was_submitted(lsf_env, tmp_path):
    """1,001 jobs: the first array (1,000) is taken, the second bsub is refused (as a site's
    esub may refuse a job: "Request aborted by esub. Job not submitted."). The 1,000 are in the
    ledger; the relaunch submits the one left, never the 1,000 again."""
    wrapper = tmp_path / "bin"
    wrapper.mkdir()
    calls = tmp_path / "bsub-calls"
    (wrapper / "bsub").write_text(f"""#!/bin/bash
n=$(($(cat {calls} 2>/dev/null || echo 0) + 1)); echo $n > {calls}
if [ "$n" = 2 ]; then echo "Request aborted by esub. Job not submitted." >&2; exit 255; fi
exec {STANDIN}/bsub "$@"
""")
    (wrapper / "bsub").chmod(0o755)
    env = {**lsf_env, "PATH": f"{wrapper}{os.pathsep}{lsf_env['PATH']}"}
    spec = write_spec(tmp_path, TEN_THOUSAND.format(hold="lsf: {extra: [-H]}")
                      .replace("1..10000", "1..1001"))
    arrays: list[str] = []
    try:
        first = cli(env, tmp_path, "launch", str(spec), "--backend", "lsf", "--no-prefetch")
        assert first.returncode == 2
        assert "Request aborted by esub" in first.stderr
        assert "1000 jobs submitted before that are recorded" in first.stderr
        ledger = Ledger(tmp_path / "runs/big").data["jobs"]
        ids = [e.get("scheduler_id") for e in ledger.values()]
        assert sum(1 for i in ids if i) == 1000
        arrays = sorted({i.split("_")[0] for i in ids if i})
        again = cli(env, tmp_path, "launch", str(spec), "--backend", "lsf", "--no-prefetch")
        assert again.returncode == 0, again.stderr
        assert "submitted 1 jobs" in again.stdout and "1000 queued or running" in again.stdout
        ledger = Ledger(tmp_path / "runs/big").data["jobs"]
        arrays = sorted({e["scheduler_id"].split("_")[0] for e in ledger.values()})
        assert all(e["attempts"] == 1 for e in ledger.values())
    finally:
        if arrays:
            subprocess.run(["bkill", *arrays], env=lsf_env, capture_output=True)


def test_a_running_array_element_is_not_read_as_pending():
    """sacct still lists the element in the array's pending range for a while after it
    started; the element's own record decides (`sweep status` said pending for ~15 s)."""
    from jobs.cluster import _slurm_watcher

    watcher = _slurm_watcher()
    for lines in (["6_4|RUNNING|node1", "6_[4-5%6]|PENDING|None Assigned"],
                  ["6_[4-5%6]|PENDING|None Assigned", "6_4|RUNNING|node1"]):
        info = watcher.read_info("\n".join(["JobID|State|NodeList", *lines,
                                            "6_4.batch|RUNNING|node1"]))
        assert info["6_4"]["State"] == "RUNNING" and info["6_5"]["State"] == "PENDING"
