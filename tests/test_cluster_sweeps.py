"""Sweeps on clusters through `sweep`: launch returns at once, status, relaunch, cancel, logs,
collect. LSF against the real LSF-family scheduler tests/lsf/start.sh starts (volclava; the
fixture `volclava`), and against the LSF 10.1 stand-in (tests/lsf_standin) only for what
volclava lacks, each such test saying which; SLURM against the real single-node cluster that
tests/slurm/start.sh starts. Each is skipped with the reason when its scheduler does not
answer."""

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
from conftest import recording, write_spec
from sweepfiles import sweep_configs

from jobs.ledger import Ledger

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from hold import held_until_warned  # noqa: E402

# seed 3 must still run through a relaunch and `cancel --where seed=3` on any machine: it would
# train for hours, and is always cancelled (nothing reads its results)
SPEC = """
name: {name}
grid: {{task: [sst2], method: [fp32], seed: [1, 2]}}
include:
  - {{task: sst2, method: fp32, seed: 3, finetune_epochs: 100000}}
  - {{task: sst2, method: fp32, seed: 4, data_dir: {missing}}}
base:
  model_name_or_path: {model}
  data_dir: {data}
  finetune_epochs: 0.25
  max_train_samples: 64
  max_eval_samples: 32
resources: {{cpus: 1, mem: 1000, time: 20}}
"""


@pytest.fixture
def lsf_env(volclava):
    """The real LSF-family scheduler's client environment."""
    return volclava


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
    # --no-prefetch: the job with a missing data_dir must reach the cluster and fail there
    launched = cli(env, tmp_path, "launch", str(spec), "--backend", backend, "--no-prefetch")
    assert launched.returncode == 0, launched.stderr
    assert table(env, tmp_path, name)[3][5] in ("pending", "running")  # returned once submitted
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
    assert log.returncode == 0 and "jobs.runtime: completed" in log.stdout
    collected = cli(env, tmp_path, "collect", f"runs/{name}", "-o", "r.xlsx")
    assert collected.returncode == 0 and collected.stdout.startswith("4 jobs")
    return name, spec


def test_lsf_sweep(lsf_env, tmp_path, tiny_model, demo_task):
    name, spec = scenario(lsf_env, tmp_path, tiny_model, demo_task, "lsf")
    array = (tmp_path / "runs" / name / "scripts" / "lsf_array_1.sh").read_text()
    assert '#BSUB -R "rusage[mem=1000] span[hosts=1]"' in array.splitlines()  # one -R, no unit
    # volclava forgets finished jobs after CLEAN_PERIOD (15 s here): files keep the states
    ids = [e["scheduler_id"] for e in Ledger(tmp_path / "runs" / name).jobs.values()]
    deadline = time.monotonic() + 90
    while any(f"<{i.split('_')[0]}>" not in subprocess.run(
            ["bjobs", "-a", "-o", "jobid stat", "-json", i.split("_")[0]], env=lsf_env,
            capture_output=True, text=True).stdout for i in ids):
        assert time.monotonic() < deadline, "volclava never forgot the jobs"
        time.sleep(2)
    rows = table(lsf_env, tmp_path, name)
    assert [rows[s][5] for s in (1, 2, 3, 4)] == ["completed", "completed", "cancelled",
                                                  "failed"]


def test_lsf_launch_submits_the_dry_runs_script(lsf_env, tmp_path, tiny_model, demo_task):
    """What volclava received (its job file, LSB_SHAREDIR/logdir/info: the script between its
    _USER_SCRIPT_ markers) is the dry run's file, byte for byte."""
    from conftest import LSF_DIR

    spec = write_spec(tmp_path, SPEC.format(name="held", model=tiny_model, data=demo_task,
                                            missing=tmp_path / "missing")
                      .replace("time: 20}", "time: 20, lsf: {extra: [-H]}}"))
    launched = cli(lsf_env, tmp_path, "launch", str(spec), "--backend", "lsf", "--no-prefetch")
    assert launched.returncode == 0, launched.stderr
    array = next(iter(Ledger(tmp_path / "runs/held").jobs.values()))["scheduler_id"]
    main = array.split("_")[0]
    received = None
    for info in (LSF_DIR / "work" / "logdir" / "info").glob(f"*.{main}"):
        lines = info.read_bytes().split(b"\n")
        start = next(i for i, ln in enumerate(lines) if ln.startswith(b"( cat <<_USER_"))
        end = next(i for i, ln in enumerate(lines) if ln == b"_USER_SCRIPT_")
        received = b"\n".join(lines[start + 1:end]).decode()
    assert received is not None, "volclava kept no job file"
    dry = cli(lsf_env, tmp_path, "launch", str(spec), "--backend", "lsf", "--dry-run",
              "--no-prefetch")
    assert dry.returncode == 0, dry.stderr
    assert "LSF: dialect openlava (lsid: 'volclava project" in dry.stdout
    shown = (tmp_path / "runs/held/scripts/lsf_array_1.sh").read_text()
    assert received.strip() == shown.strip()
    for absent in ("-wa", "-wt", "-gpu", "-outdir", "MB]"):
        assert absent not in shown  # options volclava lacks or misreads


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


LONG = """
name: {name}
grid: {{task: [sst2], method: [lin], nbits: [2], seed: {seeds}}}
base:
  model_name_or_path: {model}
  data_dir: {data}
  max_seq_length: 24
  batch_size: 16
  learning_rate: 5.0e-4
  finetune_epochs: 40
  epochs_per_stage: 4
  max_train_samples: 400
  max_eval_samples: 64
resources: {resources}
"""


def resume_scenario(env, tmp_path, tiny_model, demo_task, backend, resources,
                    warned_by_s: float, seeds: str = "[11]", threads: int | None = None
                    ) -> dict[str, dict]:
    """The job's training (about 12 s on an idle 2-core machine, a minute on a busy one) is
    stopped from its start until the time limit's warning is pending on it (at most
    `warned_by_s`: hold.held_until_warned), so it outlasts the warning on any machine: the job
    checkpoints, requeues itself (as often as it takes), resumes, and ends with the results of
    an uninterrupted run. With several jobs in a pack (resources.pack), the first to start is
    held; a job that completed before the warning is not run again by the requeue. `threads`:
    the intra-op threads a job got (a packed job: its share of the cores), which the
    uninterrupted run is given too (another count sums in another order). Returns the ledger's
    entries."""
    spec = write_spec(tmp_path, LONG.format(name="limited", model=tiny_model, data=demo_task,
                                            resources=resources, seeds=seeds))
    launched = cli(env, tmp_path, "launch", str(spec), "--backend", backend)
    assert launched.returncode == 0, launched.stderr
    sweep = tmp_path / "runs/limited"
    held_until_warned(sweep, warned_by_s)
    deadline = time.monotonic() + 600
    while True:
        ledger = Ledger(sweep).jobs
        if all((Path(e["output_dir"]) / "eval_results.json").exists() for e in ledger.values()):
            break
        if time.monotonic() > deadline:
            pytest.fail(cli(env, tmp_path, "status", "limited").stdout)
        time.sleep(2)
    resumed = {jid: json.loads((Path(e["output_dir"]) / "eval_results.json").read_text())
               for jid, e in ledger.items()}
    cut = [jid for jid, r in resumed.items() if r.get("resumed_from_step", 0) > 0]
    assert cut, resumed  # the held one was cut, and came back
    for jid in cut:
        config = sweep_configs(sweep)[jid]
        config["output_dir"] = str(tmp_path / f"uninterrupted-{jid}")
        (tmp_path / "plain.json").write_text(json.dumps(config))
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        plain = subprocess.run([sys.executable, "-m", "jobs.runtime",
                                str(tmp_path / "plain.json")],
                               capture_output=True, text=True, timeout=600, env=env)
        assert plain.returncode == 0, plain.stderr[-2000:]
        reference = json.loads((Path(config["output_dir"]) / "eval_results.json").read_text())
        for key in ("eval_accuracy", "eval_loss", "train_steps"):
            assert resumed[jid][key] == reference[key], key
    return ledger


def test_slurm_time_limit_checkpoint_requeue_resume_in_a_pack(slurm, tmp_path, tiny_model,
                                                               demo_task):
    """USR2 100 s before a 2-minute limit (--signal=B:USR2@100, to the batch shell, which is
    the pack's runner: jobs.pack passes it to its two jobs and requeues the allocation itself,
    once). slurmctld checks time limits every 30 s, so the warning comes 20 to 50 s into a run
    and the kill at 120 s or up to 30 s later: after the hold lets the held job go, it has over
    a minute to checkpoint, however late either pass. The other job of the pack, not held,
    usually completes first: then the requeued pack does not run it again."""
    ledger = resume_scenario(slurm, tmp_path, tiny_model, demo_task, "slurm",
                             "{cpus: 1, mem: 2000, time: 2, max_requeues: 20, pack: 2, "
                             "slurm: {signal_seconds: 100}}",
                             warned_by_s=55,  # the latest warning (50 s), well before the kill
                             seeds="[11, 12]", threads=1)  # cpus: 1 each
    (sid,) = {e["scheduler_id"] for e in ledger.values()}  # one allocation for both
    sacct = subprocess.run(["sacct", "-j", sid.split("_")[0], "-D", "-X", "-n", "-o", "State"],
                           env=slurm, capture_output=True, text=True)
    assert len(sacct.stdout.split()) >= 2, sacct.stdout  # -D: every run of the requeued pack
    logs = tmp_path / "runs/limited/logs"
    pack_log = "".join((logs / f"{sid}{ext}").read_text() for ext in (".out", ".err")
                       if (logs / f"{sid}{ext}").exists())
    assert f"requeueing SLURM job {sid}" in pack_log, pack_log
    for jid, e in ledger.items():
        status = json.loads((Path(e["output_dir"]) / "status.json").read_text())
        runs = Path(e["log"]).read_text().count("jobs.runtime: completed")
        assert runs == 1, (jid, runs)  # each completed once, in its own log
        if not status.get("requeues"):  # it completed before the warning: not rerun
            assert (f"{jid} completed already: not run again" in pack_log
                    or f"{jid} ended before the requeue: not run again" in pack_log), pack_log


def test_a_second_launch_of_a_sweep_is_refused_while_one_runs(lsf_env, tmp_path, tiny_model,
                                                              demo_task):
    from jobs.ledger import Ledger

    spec = write_spec(tmp_path, SPEC.format(name="busy", model=tiny_model, data=demo_task,
                                            missing="m"))
    with Ledger(tmp_path / "runs" / "busy").locked():  # a launch in progress holds the lock
        second = cli(lsf_env, tmp_path, "launch", str(spec), "--backend", "lsf")
    assert second.returncode == 2
    assert "another launch of this sweep is running" in second.stderr
    assert not (tmp_path / "runs/busy/logs").exists()  # nothing was submitted


def test_a_refused_submission_is_a_one_line_error(lsf_env, tmp_path, tiny_model, demo_task):
    spec = write_spec(tmp_path, SPEC.format(name="refused", model=tiny_model, data=demo_task,
                                            missing="m")
                      .replace("time: 20}", "time: 20, queue: nosuchqueue}"))
    proc = cli(lsf_env, tmp_path, "launch", str(spec), "--backend", "lsf", "--no-prefetch")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("sweep: error: --backend lsf: `bsub` refused the submission:")
    assert "queue" in last.lower() and "Traceback" not in proc.stderr
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
    # --no-prefetch: the job with a missing data_dir must reach the cluster and fail there
    launched = cli(env, tmp_path, "launch", str(spec), "--backend", backend, "--no-prefetch")
    assert launched.returncode == 0, launched.stderr
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
    env, calls = recording(lsf_env, tmp_path, "bsub")
    ledger = staged_scenario(env, tmp_path, tiny_model, demo_task, "lsf", never="pending")
    conditions = set(re.findall(r"-w (done\(\S+\))", calls.read_text()))
    first = {e["scheduler_id"] for e in ledger.values() if e["config"]["method"] == "fp32"}
    # one first-stage job still holds its element of the first array, the other was
    # resubmitted (an array of one, as on SLURM) and its child waits for the new element
    array = min((i.split("_")[0] for i in first), key=int)
    (new,) = [i for i in first if not i.startswith(array + "_")]
    assert conditions == {f"done({array}[1])", f"done({array}[2])",
                          f"done({new.replace('_', '[')}])"}, conditions


def test_slurm_staged_sweep_waits_with_afterok(slurm, tmp_path, tiny_model, demo_task):
    env, calls = recording(slurm, tmp_path, "sbatch")
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
        scripts = list((tmp_path / "runs/big/scripts").glob("lsf_array_*.sh"))
        assert len(scripts) == 10  # ten bsub calls, of the dry run's scripts
        assert all(re.search(r'#BSUB -J "big\.\d+\[1-1000\]"', p.read_text()) for p in scripts)
        out = subprocess.run(["bjobs", "-a", "-o", "jobid stat job_name", "-json",
                              arrays[0]], env=lsf_env, capture_output=True, text=True)
        stats = {r["STAT"] for r in json.loads(out.stdout)["RECORDS"]}
        assert stats == {"PSUSP"}  # held: nothing ran
    finally:
        if arrays:
            subprocess.run(["bkill", *arrays], env=lsf_env, capture_output=True)


def test_slurm_10000_jobs_in_10_submissions(slurm, tmp_path):
    arrays = []
    try:
        # the test SLURM's MaxArraySize is 1001 (arrays of 1001, read from scontrol): the spec
        # asks for 1000 per array (resources.max_array_size overrides the site's limit)
        dry = cli(slurm, tmp_path, "launch", str(write_spec(tmp_path, TEN_THOUSAND.format(
            hold="slurm: {extra: [--hold]}"))), "--backend", "slurm", "--dry-run")
        assert "MaxArraySize = 1001 (scontrol show config)" in dry.stdout, dry.stdout[-800:]
        assert "1001 jobs per array (the SLURM site's limit)" in dry.stdout
        arrays, elapsed = submissions_of_10000(slurm, tmp_path, "slurm",
                                               "max_array_size: 1000, slurm: {extra: [--hold]}")
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
exec {shutil.which("bsub", path=lsf_env["PATH"])} "$@"
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
    from jobs.backends.slurm import read_sacct

    for lines in (["6_4|RUNNING", "6_[4-5%6]|PENDING"], ["6_[4-5%6]|PENDING", "6_4|RUNNING"]):
        info = read_sacct("\n".join(["JobID|State", *lines, "6_4.batch|RUNNING"]))
        assert info["6_4"] == "RUNNING" and info["6_5"] == "PENDING"
