"""The LSF backend as a submitit plugin, through submitit's own API, against the LSF stand-in
in tests/lsf_standin (bsub/bjobs/bkill/brequeue behaving as LSF 10.1 documents)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import submitit
from submitit.core import plugins

from jobs.lsf import LsfExecutor, LsfInfoWatcher, LsfJobEnvironment, lsf_target
from jobs.lsf import lsf as lsf_module

STANDIN = Path(__file__).parent / "lsf_standin" / "bin"


@pytest.fixture
def lsf(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{STANDIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("LSF_STANDIN_DIR", str(tmp_path / "lsf-state"))
    monkeypatch.setenv("LSF_STANDIN_TERMINATE_INTERVAL", "1")
    monkeypatch.setenv("LSB_BJOBS_CONSISTENT_EXIT_CODE", "Y")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "should-be-unset-by-the-script")
    # jobs unpickle this module's functions; LSF hands them the submitter's environment
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    LsfExecutor.job_class.watcher.clear()
    return tmp_path


def wait(job, seconds=60):
    """Until the job is done and its script has recorded its exit code."""
    deadline = time.monotonic() + seconds
    while not (job.done(force_check=True) and job.exit_code_file.exists()):
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(f"job {job.job_id} did not finish in {seconds}s: {job.state}")
        time.sleep(0.3)


def add(a, b):
    return a + b


def sleep_forever(started: str):
    Path(started).write_text("running")  # submitit installed its signal handlers before
    time.sleep(300)


def fail():
    raise ValueError("boom")


class ResumeAfterRequeue(submitit.helpers.Checkpointable):
    """Sleeps on the first run; after the scheduler's USR2, checkpoint + requeue, the second
    run finds its marker and returns."""

    def __call__(self, marker: str) -> str:
        path = Path(marker)
        if path.exists():
            return f"resumed after {path.read_text()}"
        path.write_text("requeue")
        time.sleep(300)
        return "not interrupted"


def test_the_plugin_is_discovered_by_submitit():
    assert plugins.get_executors()["lsf"] is LsfExecutor
    assert plugins.get_job_environments()["lsf"].__class__ is LsfJobEnvironment


def test_auto_executor_submits_and_gets_the_result(lsf):
    executor = submitit.AutoExecutor(folder=lsf / "log", cluster="lsf")
    executor.update_parameters(timeout_min=30, mem_gb=2, cpus_per_task=2, name="add",
                               lsf_queue="short", lsf_project="proj")
    job = executor.submit(add, 2, 3)
    assert job.job_id.isdigit()
    wait(job)
    assert job.result() == 5
    script = job.paths.submission_file.read_text()
    for line in ('#BSUB -J "add"', "#BSUB -W 0:30", "#BSUB -n 2", '#BSUB -R "rusage[mem=2048MB]"',
                 "#BSUB -q short", "#BSUB -P proj", "export SUBMITIT_EXECUTOR=lsf",
                 f"#BSUB -o {job.paths.folder}/%J_0_log.out"):
        assert line in script.splitlines(), line
    assert job.paths.stdout.exists()  # LSF wrote the log where submitit looks for it
    assert job.state == "COMPLETED"


def test_map_array_runs_every_element_with_the_parallelism_cap(lsf):
    executor = LsfExecutor(lsf / "log")
    executor.update_parameters(job_name="arr", array_parallelism=2, time=10)
    jobs = executor.map_array(add, [1, 2, 3, 4], [10, 20, 30, 40])
    array_id = jobs[0].job_id.split("_")[0]
    assert [j.job_id for j in jobs] == [f"{array_id}_{i}" for i in range(1, 5)]
    for j in jobs:
        wait(j)
    assert [j.result() for j in jobs] == [11, 22, 33, 44]
    script = jobs[0].paths.submission_file.read_text()
    assert '#BSUB -J "arr[1-4]%2"' in script
    assert f"#BSUB -o {jobs[0].paths.folder}/%J_%I_0_log.out" in script


def test_arrays_are_chunked(lsf, monkeypatch):
    monkeypatch.setattr(lsf_module, "MAX_ARRAY", 2)
    executor = LsfExecutor(lsf / "log")
    executor.update_parameters(time=10)
    jobs = executor.map_array(add, [1, 2, 3, 4, 5], [0] * 5)
    assert len({j.job_id.split("_")[0] for j in jobs}) == 3
    for j in jobs:
        wait(j)
    assert [j.result() for j in jobs] == [1, 2, 3, 4, 5]


def test_failure_and_states_after_jobs_age_out_of_bjobs(lsf, monkeypatch):
    monkeypatch.setenv("LSF_STANDIN_CLEAN_PERIOD", "0")  # bjobs forgets finished jobs at once
    executor = LsfExecutor(lsf / "log")
    executor.update_parameters(time=10)
    good, bad = executor.submit(add, 1, 1), executor.submit(fail)
    wait(good)
    wait(bad)
    with pytest.raises(submitit.core.utils.FailedJobError, match="boom"):
        bad.result()
    time.sleep(0.5)
    forgotten = subprocess.run(["bjobs", "-a", "-json", good.job_id, bad.job_id],
                               capture_output=True, text=True)
    assert forgotten.returncode == 255  # unknown ids, LSB_BJOBS_CONSISTENT_EXIT_CODE=Y
    assert all("ERROR" in r for r in json.loads(forgotten.stdout)["RECORDS"])
    LsfExecutor.job_class.watcher.clear()  # forget cached states: only files remain
    assert good.state == "COMPLETED" and good.exit_code_file.read_text().strip() == "0"
    assert bad.state == "FAILED" and bad.exit_code_file.read_text().strip() != "0"


def test_cancel_sends_sigint_first_and_the_job_records_it(lsf):
    executor = LsfExecutor(lsf / "log")
    executor.update_parameters(time=10)
    started = lsf / "started"
    job = executor.submit(sleep_forever, str(started))
    deadline = time.monotonic() + 120
    while not started.exists():  # the function runs: the handlers are in place
        if time.monotonic() > deadline:
            pytest.fail(f"the job never started: {job.state}")
        time.sleep(0.2)
    job.cancel()
    wait(job)
    assert job.state == "FAILED"
    assert job.exit_code_file.read_text().strip() == "130"  # died of SIGINT, recorded
    reason = job.paths.folder / f"{job.job_id}_stop_reason"
    assert reason.read_text().startswith("SIGINT")


def test_checkpoint_and_requeue_at_the_run_limit(lsf, monkeypatch):
    monkeypatch.setenv("LSF_STANDIN_MINUTE", "3")  # -W 1 = 3 s: USR2 then, kill 30 s later
    executor = LsfExecutor(lsf / "log")
    executor.update_parameters(time=1)
    job = executor.submit(ResumeAfterRequeue(), str(lsf / "marker"))
    wait(job, seconds=90)
    assert job.result() == "resumed after requeue"  # only the requeued second run says so
    assert "Caught signal SIGUSR2" in (job.stderr() or "")


def test_status_parsing():
    watcher = LsfInfoWatcher()
    out = json.dumps({"RECORDS": [
        {"JOBID": "7", "JOBINDEX": "1", "STAT": "USUSP", "EXIT_CODE": ""},
        {"JOBID": "7", "JOBINDEX": "2", "STAT": "EXIT", "EXIT_CODE": "130"},
        {"JOBID": "8", "JOBINDEX": "0", "STAT": "SSUSP", "EXIT_CODE": ""},
        {"JOBID": "9", "JOBINDEX": "0", "STAT": "PSUSP", "EXIT_CODE": ""},
        {"ERROR": "Job <10> is not found"}]})
    info = watcher.read_info(out)
    assert info["7_1"]["State"] == "RUNNING"  # suspended is not finished
    assert info["7_2"] == {"State": "FAILED", "LsfState": "EXIT", "ExitCode": "130"}
    assert info["8"]["State"] == "RUNNING" and info["9"]["State"] == "PENDING"
    assert "10" not in info
    assert watcher.read_info(b"not json") == {}


def test_ids_and_submission_parsing():
    assert lsf_target("123_4") == "123[4]" and lsf_target("123") == "123"
    parse = LsfExecutor._get_job_id_from_submission_command
    assert parse(b"Warning: x\nJob <4242> is submitted to queue <normal>.\n") == "4242"
    with pytest.raises(submitit.core.utils.FailedSubmissionError):
        parse("Request aborted by esub. Job not submitted.")


def test_missing_bsub_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match='"bsub"'):
        LsfExecutor(tmp_path)
