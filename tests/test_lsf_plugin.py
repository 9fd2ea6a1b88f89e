"""The LSF backend as a submitit plugin, through submitit's own API: against the test
volclava (a real LSF-family scheduler, tests/lsf/start.sh) for everything it has, and against
the LSF 10.1 stand-in (tests/lsf_standin) for what only LSF 10.1 has, each such test saying
which."""

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


def _common(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "should-be-unset-by-the-script")
    # jobs unpickle this module's functions; LSF hands them the submitter's environment
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    LsfExecutor.job_class.watcher.clear()
    return tmp_path


@pytest.fixture
def lsf(volclava, tmp_path, monkeypatch):
    """The real LSF-family scheduler (volclava)."""
    return _common(tmp_path, monkeypatch)


@pytest.fixture
def lsf10(lsf_standin, tmp_path, monkeypatch):
    """The LSF 10.1 stand-in, for what volclava does not have."""
    monkeypatch.setenv("LSF_STANDIN_TERMINATE_INTERVAL", "1")
    monkeypatch.setenv("LSB_BJOBS_CONSISTENT_EXIT_CODE", "Y")
    return _common(tmp_path, monkeypatch)


def wait(job, seconds=60):
    """Until the job is done, its script has recorded its exit code, and LSF has finished it
    (bjobs: DONE or EXIT; only then are its -o/-e files written, unless LSB_STDOUT_DIRECT)."""
    deadline = time.monotonic() + seconds
    while not (job.done(force_check=True) and job.exit_code_file.exists()
               and job.watcher.get_state(job.job_id, mode="force") not in ("RUNNING",
                                                                             "PENDING")):
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
    for line in ('#BSUB -J "add"', "#BSUB -W 0:30", "#BSUB -n 2",
                 '#BSUB -R "rusage[mem=2048] span[hosts=1]"', "#BSUB -M 2048",
                 "#BSUB -q short", "#BSUB -P proj", "export SUBMITIT_EXECUTOR=lsf",
                 f"#BSUB -o {job.paths.folder}/%J_0_log.out"):
        assert line in script.splitlines(), line
    assert job.paths.stdout.exists()  # LSF wrote the log where submitit looks for it
    assert job.state == "COMPLETED"


def test_map_array_runs_every_element_with_the_parallelism_cap(lsf):
    executor = LsfExecutor(lsf / "log")
    executor.update_parameters(jobname="arr", array_limit=2, run_limit_min=10)
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
    monkeypatch.setattr(lsf_module, "array_size", lambda: 2)  # as MAX_JOB_ARRAY_SIZE = 2
    executor = LsfExecutor(lsf / "log")
    executor.update_parameters(run_limit_min=10)
    jobs = executor.map_array(add, [1, 2, 3, 4, 5], [0] * 5)
    assert len({j.job_id.split("_")[0] for j in jobs}) == 3
    for j in jobs:
        wait(j)
    assert [j.result() for j in jobs] == [1, 2, 3, 4, 5]


def test_failure_and_states_after_jobs_age_out_of_bjobs(lsf):
    """volclava forgets finished jobs after CLEAN_PERIOD (tests/lsf/start.sh: 15 s)."""
    executor = LsfExecutor(lsf / "log")
    executor.update_parameters(run_limit_min=10)
    good, bad = executor.submit(add, 1, 1), executor.submit(fail)
    wait(good)
    wait(bad)
    with pytest.raises(submitit.core.utils.FailedJobError, match="boom"):
        bad.result()
    deadline = time.monotonic() + 90
    while True:
        forgotten = subprocess.run(["bjobs", "-a", "-o", "jobid stat", "-json", good.job_id,
                                    bad.job_id], capture_output=True, text=True)
        records = json.loads(forgotten.stdout)["RECORDS"]
        if all("ERROR" in r for r in records):
            break
        assert time.monotonic() < deadline, records
        time.sleep(2)
    LsfExecutor.job_class.watcher.clear()  # forget cached states: only files remain
    assert good.state == "COMPLETED" and good.exit_code_file.read_text().strip() == "0"
    assert bad.state == "FAILED" and bad.exit_code_file.read_text().strip() != "0"


@pytest.mark.parametrize("scheduler", ["volclava", "lsf10-interval-1"])
def test_cancel_sends_sigint_first_and_the_job_records_it(request, tmp_path, monkeypatch,
                                                          scheduler):
    """bkill: SIGINT, then SIGTERM and SIGKILL 10 s apart (volclava), or JOB_TERMINATE_INTERVAL
    apart (LSF 10.1's lsb.params; volclava's interval is fixed: the stand-in's 1 s): the job
    ends on the SIGINT, whatever the interval, and records why."""
    lsf = request.getfixturevalue("lsf" if scheduler == "volclava" else "lsf10")
    executor = LsfExecutor(lsf / "log")
    executor.update_parameters(run_limit_min=10)
    started = lsf / "started"
    job = executor.submit(sleep_forever, str(started))
    deadline = time.monotonic() + 120
    while not started.exists():  # the function runs: the handlers are in place
        if time.monotonic() > deadline:
            pytest.fail(f"the job never started: {job.state}")
        time.sleep(0.2)
    job.cancel()
    wait(job)
    assert job.state == "CANCELLED"  # as SLURM reports a cancelled job, not FAILED
    assert job.exit_code_file.read_text().strip() == "130"  # died of SIGINT, recorded
    reason = job.paths.folder / f"{job.job_id}_stop_reason"
    assert reason.read_text().startswith("SIGINT")


@pytest.mark.parametrize("scope,direct", [("group", ""), ("top", "Y")])
def test_checkpoint_and_requeue_at_the_run_limit(lsf10, monkeypatch, scope, direct):
    """Whether the site's LSF signals every process of the job or its top process only, and
    whether output is written directly or copied at the end: the warning reaches Python, the
    job shell survives it, the job requeues itself while running and resumes. The stand-in:
    signal scopes and LSB_STDOUT_DIRECT are LSF 10.1 site settings (and its scaled minute keeps
    this quick; the real run limit on volclava: tests/test_seed_study_volclava.py)."""
    lsf = lsf10
    # -W 1 = 6 s: USR2 then, kill 60 s later. By then the first run must have its handler in
    # place and the requeued run must have ended (each about 0.5 s here): room for a slow start
    monkeypatch.setenv("LSF_STANDIN_MINUTE", "6")
    monkeypatch.setenv("LSF_STANDIN_SIGNAL_SCOPE", scope)
    monkeypatch.setenv("LSB_STDOUT_DIRECT", direct)
    executor = LsfExecutor(lsf / "log")
    executor.update_parameters(run_limit_min=1)
    job = executor.submit(ResumeAfterRequeue(), str(lsf / "marker"))
    wait(job, seconds=90)
    assert job.result() == "resumed after requeue"  # only the requeued second run says so
    err = job.stderr() or ""
    assert "Caught signal SIGUSR2" in err and "USR2 passed on to the job" in err
    assert err.count("Caught signal SIGUSR2") == 1  # twice delivered (group), taken once
    out = job.stdout() or ""
    assert out.count("Sender: LSF System") == 2  # a job report per run: requeued, then done
    assert job.state == "COMPLETED"


def test_the_stand_in_refuses_what_lsf_refuses(lsf10):
    """The stand-in's strict rules, each from IBM's LSF 10.1 pages cited in it."""
    lsf = lsf10
    def run(*cmd, script=None):
        return subprocess.run(list(cmd), input=script, capture_output=True, text=True,
                              timeout=60)

    ok = run("bsub", script="#BSUB -J ok\n#BSUB -o " + str(lsf / "ok.out") + "\ntrue\n")
    assert ok.returncode == 0, ok.stderr
    jobid = ok.stdout.split("<")[1].split(">")[0]
    for bad in ("#BSUB -n 0", "#BSUB -n two", "#BSUB -M lots", '#BSUB -R "spam[x]"',
                '#BSUB -gpu "num=x"', "#BSUB -q nosuchqueue", '#BSUB -w "done(999999)"'):
        refused = run("bsub", script=f"{bad}\ntrue\n")
        assert refused.returncode != 0 and "Job not submitted" in refused.stderr, bad
    deadline = time.monotonic() + 30
    while "DONE" not in run("bjobs", "-a", jobid).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert "Successfully completed." in (lsf / "ok.out").read_text()  # the job report
    finished = run("brequeue", jobid)  # a finished job: only with -d / -e / -a
    assert finished.returncode != 0 and "finished" in finished.stderr
    assert run("bkill", jobid).returncode != 0  # nothing left to kill
    assert run("bkill", "999999").returncode != 0  # unknown
    assert run("brequeue", "-d", jobid).returncode == 0  # DONE, requeued on request


def test_the_job_shell_outlives_the_warning_and_passes_it_on(lsf10, monkeypatch):
    """LSF's warning action (-wa USR2 -wt) reaches the job's shell: the shell must not die of
    it (EXIT 140 with Python orphaned); the command gets it once. The stand-in: -wa/-wt are
    LSF 10.1's (OpenLava has neither)."""
    lsf = lsf10
    monkeypatch.setenv("LSF_STANDIN_MINUTE", "3")
    monkeypatch.setenv("LSF_STANDIN_SIGNAL_SCOPE", "top")  # the shell alone gets it
    executor = LsfExecutor(lsf / "log")
    # the warning at 6 s (the handler is in place 0.5 s in here: room for a slow start), the
    # limit's own USR2 at 30 s: far from the warning, and after count_usr2 gave up (20 s)
    executor.update_parameters(run_limit_min=10, warn_minutes=8)
    job = executor.submit(count_usr2, str(lsf / "usr2"), 20.0)
    wait(job, seconds=60)
    assert job.result() == 1
    assert job.state == "COMPLETED"


def count_usr2(path: str, seconds: float) -> int:
    """The USR2s received until 1 s after the first (0 if none came within `seconds`): counted
    from the warning, not for a fixed time from this function's start, which a slow start
    would shift onto the limit's USR2."""
    import signal as signals

    got = []
    signals.signal(signals.SIGUSR2, lambda *_: got.append(1))
    end = time.monotonic() + seconds
    while time.monotonic() < end and not got:
        time.sleep(0.1)
    settle = time.monotonic() + 1.0  # a second delivery (passed on twice) comes within it
    while got and time.monotonic() < settle:
        time.sleep(0.1)
    return len(got)


def test_status_parsing():
    """Both dialects' records: LSF 10.1 with JOBINDEX, OpenLava with the index in JOB_NAME."""
    watcher = LsfInfoWatcher()
    out = json.dumps({"RECORDS": [
        {"JOBID": "7", "JOBINDEX": "1", "STAT": "USUSP", "JOB_NAME": "a[1]"},
        {"JOBID": "7", "STAT": "EXIT", "JOB_NAME": "a[2]"},
        {"JOBID": "8", "JOBINDEX": "0", "STAT": "SSUSP", "JOB_NAME": "b"},
        {"JOBID": "9", "STAT": "PSUSP", "JOB_NAME": "c"},
        {"JOBID": "10", "ERROR": "Job <10> is not found"}]})
    info = watcher.read_info(out)
    assert info["7_1"]["State"] == "RUNNING"  # suspended is not finished
    assert info["7_2"] == {"State": "FAILED", "LsfState": "EXIT"}
    assert info["8"]["State"] == "RUNNING" and info["9"]["State"] == "PENDING"
    assert "10" not in info
    with pytest.raises(ValueError):
        watcher.read_info(b"LSF is processing your request. Please wait ...")


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


def where_am_i() -> dict:
    env = submitit.JobEnvironment()
    return {"job_id": env.job_id, "array_task_id": env.array_task_id}


def test_generic_parameters_as_hydra_sends_them(lsf):
    """submitit's generic parameters (hydra-submitit-launcher always sends nodes,
    tasks_per_node, stderr_to_stdout) are accepted; several nodes or tasks is a clear error."""
    executor = submitit.AutoExecutor(folder=lsf / "log", cluster="lsf")
    executor.update_parameters(nodes=1, tasks_per_node=1, stderr_to_stdout=True, timeout_min=5,
                               name="gen", mem_gb=1, cpus_per_task=1, gpus_per_node=0,
                               lsf_array_limit=2)
    job = executor.submit(add, 1, 2)
    wait(job)
    assert job.result() == 3
    script = job.paths.submission_file.read_text().splitlines()
    assert "#BSUB -W 0:05" in script and not any(x.startswith("#BSUB -e") for x in script)
    for bad in ({"nodes": 2}, {"tasks_per_node": 4}):
        with pytest.raises(ValueError, match="not supported"):
            executor.update_parameters(**bad)
    direct = LsfExecutor(lsf / "log")  # the generic names work without AutoExecutor too
    direct.update_parameters(timeout_min=7, name="direct", nodes=1)
    assert direct.parameters["run_limit_min"] == 7 and direct.parameters["jobname"] == "direct"


@pytest.mark.parametrize("scheduler", ["volclava", "lsf10"])
def test_job_id_in_the_folder(request, scheduler):
    """submitit's README idiom folder=".../%j": each job's logs, pickles and exit code in its
    own directory (LSF 10.1 makes it at the job's start: -outdir; OpenLava has no -outdir: the
    job script makes it and writes its output there)."""
    lsf = request.getfixturevalue("lsf" if scheduler == "volclava" else "lsf10")
    executor = LsfExecutor(lsf / "logs" / "%j")
    executor.update_parameters(run_limit_min=5)
    job = executor.submit(where_am_i)
    wait(job)
    assert job.result() == {"job_id": job.job_id, "array_task_id": None}  # not an array
    folder = lsf / "logs" / job.job_id
    assert job.paths.folder == folder and job.paths.stdout.exists()
    assert (folder / f"{job.job_id}_exit_code").read_text().strip() == "0"
    assert not (lsf / "logs" / "%j").exists()
    array = LsfExecutor(lsf / "arr" / "%j")
    array.update_parameters(run_limit_min=5)
    elements = array.map_array(add, [1, 2], [3, 4])
    for element in elements:
        wait(element)
    assert [e.result() for e in elements] == [4, 6]
    for element in elements:
        assert (lsf / "arr" / element.job_id / f"{element.job_id}_0_log.out").exists()


def test_array_elements_know_their_index(lsf):
    executor = LsfExecutor(lsf / "log")
    executor.update_parameters(run_limit_min=5)
    elements = executor.map_array(lambda_free_where, [0, 0])
    for element in elements:
        wait(element)
    assert [e.result()["array_task_id"] for e in elements] == ["1", "2"]


def lambda_free_where(_: int) -> dict:
    return where_am_i()


def test_a_forgotten_job_without_an_exit_code_fails_in_bounded_time(lsf, monkeypatch):
    """bjobs no longer knows the job and it left no exit-code file (killed with its node):
    result() does not wait forever."""
    monkeypatch.setattr(lsf_module.LsfJob, "lost_after_s", 1.0)
    monkeypatch.setattr(lsf_module.LsfInfoWatcher, "_delay_s", 0.1, raising=False)
    (lsf / "log").mkdir()
    job = lsf_module.LsfJob(folder=lsf / "log", job_id="987654")
    job.watcher.register_job(job.job_id)
    job.watcher.update()
    assert job.state == "UNKNOWN"  # not yet: LSF may simply not have answered
    deadline = time.monotonic() + 30
    while not job.done(force_check=True):
        assert time.monotonic() < deadline, "result() would wait forever"
        time.sleep(0.2)
    assert job.state == "FAILED"
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        job.result()


def test_installing_the_plugin_changes_nothing_for_slurm_users(tmp_path, monkeypatch):
    """AutoExecutor maps an unprefixed executor parameter to the last executor declaring it:
    the LSF plugin declares none of SLURM's (or local's) names, so SLURM users' parameters
    reach SLURM exactly as without quantsweep."""
    import warnings

    fake_bin = tmp_path / "bin"  # submitit's SlurmExecutor wants srun on PATH
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{STANDIN}:{os.environ['PATH']}")

    def slurm_parameters() -> tuple[dict, list[str]]:
        plugins._get_plugins.cache_clear()
        plugins.get_executors.cache_clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ex = submitit.AutoExecutor(folder=tmp_path / "s", cluster="slurm")
            ex.update_parameters(time=77, array_parallelism=3, job_name="mine", setup=["x"],
                                 timeout_min=5, slurm_partition="p")
        return dict(ex._executor.parameters), [str(w.message) for w in caught]

    with_plugin = slurm_parameters()
    assert "lsf" in plugins.get_executors()
    monkeypatch.setattr(plugins, "_iter_submitit_entrypoints", lambda: [])
    without_plugin = slurm_parameters()
    assert "lsf" not in plugins.get_executors()
    monkeypatch.undo()
    plugins._get_plugins.cache_clear()
    plugins.get_executors.cache_clear()
    assert with_plugin == without_plugin
    assert with_plugin[0]["time"] == 77 and with_plugin[0]["array_parallelism"] == 3


def test_a_suspended_job_is_running_not_finished(lsf):
    """bstop suspends a running job (USUSP); it is not finished, and bresume lets it end."""
    executor = LsfExecutor(lsf / "log")
    executor.update_parameters(run_limit_min=5)
    started, release = lsf / "started", lsf / "release"
    job = executor.submit(wait_then_add, str(started), str(release))
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline, job.state
        time.sleep(0.2)
    target = lsf_target(job.job_id)
    assert subprocess.run(["bstop", target], capture_output=True).returncode == 0
    deadline = time.monotonic() + 30  # mbatchd records the stop when sbatchd reports it
    while True:
        bjobs = subprocess.run(["bjobs", "-a", "-o", "jobid stat job_name", "-json", target],
                               capture_output=True, text=True)
        stat = json.loads(bjobs.stdout)["RECORDS"][0].get("STAT")
        if stat == "USUSP":
            break
        assert time.monotonic() < deadline, bjobs.stdout
        time.sleep(0.3)
    assert job.watcher.get_state(job.job_id, mode="force") == "RUNNING"
    assert not job.done(force_check=True)
    assert subprocess.run(["bresume", target], capture_output=True).returncode == 0
    release.write_text("go")  # only now may it end: it cannot have ended while stopped
    wait(job)
    assert job.result() == 3 and job.state == "COMPLETED"


def wait_then_add(started: str, release: str) -> int:
    """Runs until the test releases it (a file), not for a fixed time the test must beat."""
    Path(started).write_text("ok")
    deadline = time.monotonic() + 120
    while not Path(release).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} never came")
        time.sleep(0.2)
    return 3
