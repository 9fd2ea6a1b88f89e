"""LSF states as jobs.backends.lsf reads them: bjobs' JSON of both dialects (records copied
from volclava 2.2's output), bhist's long format, and the rule for a job bjobs no longer lists:
its exit-code file, else its history; lost (UNKNOWN) only when neither knows it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs.backends.lsf import LsfBackend, read_bhist, read_bjobs
from quantlib.jobdir import UNSURE

# volclava 2.2: bjobs -a -o "jobid stat job_name" -json 2 999 (as printed, tabs and all)
VOLCLAVA_BJOBS = """{
\t"COMMAND":\t"bjobs",
\t"JOBS":\t4,
\t"RECORDS":\t[{
\t\t\t"JOBID":\t"2",
\t\t\t"STAT":\t"PEND",
\t\t\t"JOB_NAME":\t"arr[1]"
\t\t}, {
\t\t\t"JOBID":\t"2",
\t\t\t"STAT":\t"RUN",
\t\t\t"JOB_NAME":\t"arr[2]"
\t\t}, {
\t\t\t"JOBID":\t"3",
\t\t\t"STAT":\t"DONE",
\t\t\t"JOB_NAME":\t"single"
\t\t}, {
\t\t\t"JOBID":\t"999",
\t\t\t"ERROR":\t"Job <999> is not found"
\t\t}]
}"""
# volclava 2.2: bhist -l 2 (two elements, abridged to their events)
VOLCLAVA_BHIST = """
Job <2[1]>, Job Name <arr[1]>, User <root>, Project <default>, Command <sleep 3; exit 3>
Tue Dec  1 23:21:55: Submitted from host <vm>, to Queue <normal>, CWD </tmp>;
Tue Dec  1 23:21:57: Dispatched to <vm>;
Tue Dec  1 23:21:57: Starting (Pid 9875);
Tue Dec  1 23:22:03: Exited with exit code 3. The CPU time used is 0.0 seconds;

Summary of time in seconds spent in various states by  Tue Dec  1 23:22:03
  PEND     PSUSP    RUN      USUSP    SSUSP    UNKWN    TOTAL
  2        0        6        0        0        0        8
------------------------------------------------------------------------------

Job <2[2]>, Job Name <arr[2]>, User <root>, Project <default>, Command <sleep 3; exit 3>
Tue Dec  1 23:21:55: Submitted from host <vm>, to Queue <normal>, CWD </tmp>;
Tue Dec  1 23:22:03: Dispatched to <vm>;
Tue Dec  1 23:22:03: Starting (Pid 9940);
"""


def test_bjobs_records_of_both_dialects():
    got = read_bjobs(VOLCLAVA_BJOBS)
    assert got == {"2_1": "PEND", "2_2": "RUN", "3": "DONE", "999": None}
    ten = '{"RECORDS": [{"JOBID": "7", "JOBINDEX": "4", "STAT": "RUN", "EXIT_CODE": ""}]}'
    assert read_bjobs(ten) == {"7_4": "RUN"}
    for bad in ("", "LSF is processing your request", '{"RECORDS": [{"STAT": "RUN"}]}', "[]"):
        with pytest.raises(ValueError):
            read_bjobs(bad)


def test_bhist_says_whether_a_run_may_still_be_alive():
    assert read_bhist(VOLCLAVA_BHIST) == {"2_1": "ended EXIT", "2_2": "open"}
    done = "Job <5>, Job Name <x>\nMon: Starting (Pid 1);\nMon: Done successfully. The CPU"
    assert read_bhist(done) == {"5": "ended DONE"}
    requeued = done + "\nMon: Job has been requeued;\nMon: Starting (Pid 2);"
    assert read_bhist(requeued) == {"5": "open"}  # its second run has not ended


def fake_lsf(tmp_path: Path, bjobs: str, bhist: str, bhist_rc: int = 0) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, out, rc in (("bjobs", bjobs, 255), ("bhist", bhist, bhist_rc)):
        (tmp_path / f"{name}.out").write_text(out)
        (bin_dir / name).write_text(f"#!/bin/bash\ncat {tmp_path}/{name}.out\nexit {rc}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def test_a_job_bjobs_forgot(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTSWEEP_QUERY_RETRIES", "")
    forgotten = '{"RECORDS": [' + ", ".join(
        f'{{"JOBID": "8", "ERROR": "Job <8[{i}]> is not found"}}' for i in (1, 2, 3, 4)) + "]}"
    history = VOLCLAVA_BHIST.replace("<2[", "<8[") + (
        "\n" + "-" * 70 + "\nJob <8[4]>, Job Name <arr[4]>\nMon: Starting (Pid 3);\n"
        "Mon: Done successfully.\n")
    monkeypatch.setenv("PATH", f"{fake_lsf(tmp_path, forgotten, history)}{os.pathsep}"
                               f"{os.environ['PATH']}")
    sweep = tmp_path / "sweep"
    (sweep / "logs").mkdir(parents=True)
    (sweep / "logs" / "8_3.exit").write_text("0\n")  # the job script's own record
    states = LsfBackend().states(sweep, ["8_1", "8_2", "8_3", "8_4", "8_5"])
    assert states["8_1"] == "FAILED"  # the history says it exited
    assert states["8_2"].startswith(UNSURE)  # started, never ended: may still be alive
    assert states["8_3"] == "COMPLETED" and states["8_4"] == "COMPLETED"
    assert states["8_5"] == "UNKNOWN"  # nobody knows it: the only way to lost


def test_a_failing_bhist_is_no_answer(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTSWEEP_QUERY_RETRIES", "")
    forgotten = '{"RECORDS": [{"JOBID": "9", "ERROR": "Job <9> is not found"}]}'
    monkeypatch.setenv("PATH", f"{fake_lsf(tmp_path, forgotten, 'mbatchd down', 1)}"
                               f"{os.pathsep}{os.environ['PATH']}")
    states = LsfBackend().states(tmp_path, ["9", "0", "-u"])
    assert list(states) == ["9"]  # ids that are no ids are never asked about
    assert states["9"].startswith(UNSURE) and "bhist did not answer" in states["9"]
