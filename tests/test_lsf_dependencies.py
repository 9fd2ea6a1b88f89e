"""A job that waits for another (`bsub -w "done(ID[i])"`) never starts before it, on both LSF
dialects.

volclava 2.2 / OpenLava mark every new job ready for dispatch whatever its dependency
(lsbatch/daemons/mbd.job.c, handleNewJob sets JFLAG_READY2); only checkJgrpDep (mbd.main.c, once
per MBD_SLEEP_TIME) evaluates `done(...)` and clears the mark. A dependent job submitted while
a slot is free can start in that window (CI saw a second-stage job run at once and fail on its
parent's missing model). On the OpenLava family a dependent job therefore gets a begin time
(`-b`) after two such passes; LSF 10.1 needs none.
"""

from __future__ import annotations

import subprocess
import time
from datetime import datetime

import pytest

from jobs.backends import lsf
from jobs.backends.base import NotAnswered
from jobs.backends.lsf import (
    UNKNOWN_SLEEP_S,
    LsfBackend,
    Site,
    begin_option,
    dependent_begin,
    read_bparams,
    read_sleep_time,
)

# the opening of volclava 2.2's `bparams -l` (the test cluster's lsb.params), as printed
BPARAMS = """
System default queues for automatic queue selection:
    DEFAULT_QUEUE = normal

The interval for dispatching jobs by master batch daemon:
    MBD_SLEEP_TIME = 2 (seconds)

The interval for checking jobs by slave batch daemon:
    SBD_SLEEP_TIME = 2 (seconds)

The interval for a host to accept two batch jobs:
    JOB_ACCEPT_INTERVAL = 0 (* MBD_SLEEP_TIME)

The maximum number of jobs in a job array.
    MAX_JOB_ARRAY_SIZE = 1000
"""

OPENLAVA = Site("openlava", "MB", "test")
LSF10 = Site("lsf10", "MB", "test")


def begin_epoch(value: str, now: float) -> float:
    """bsub -b's "month:day:hour:minute" as an epoch, the year the one that puts it after now
    (as lsbatch/lib/lsb.sub.c gettimefor reads it)."""
    at = datetime.strptime(f"{datetime.fromtimestamp(now).year}:{value}", "%Y:%m:%d:%H:%M")
    if at.timestamp() < now:
        at = at.replace(year=at.year + 1)
    return at.timestamp()


def test_bparams_gives_the_sleep_time_and_the_array_size():
    assert read_sleep_time(BPARAMS) == 2
    assert read_bparams(BPARAMS) == 1000
    assert read_sleep_time("DEFAULT_QUEUE = normal\n") is None


@pytest.mark.parametrize("sleep", [2, 10, 20, None])
@pytest.mark.parametrize("now", [datetime(2026, 12, 2, 5, 50, 0).timestamp(),
                                 datetime(2026, 12, 2, 5, 50, 51).timestamp(),
                                 datetime(2026, 12, 31, 23, 59, 30).timestamp()])
def test_the_begin_time_is_the_first_whole_minute_after_two_passes(now, sleep):
    value = dependent_begin(now, sleep)
    assert len(value.split(":")) == 4 and all(p.isdigit() for p in value.split(":"))
    at = begin_epoch(value, now)
    wait = 2 * (UNKNOWN_SLEEP_S if sleep is None else sleep) + 5
    assert at % 60 == 0
    assert now + wait <= at < now + wait + 60


def test_lsf10_jobs_get_no_begin_time():
    assert begin_option(LSF10) is None


def test_a_silent_bparams_takes_the_cautious_sleep_time(monkeypatch):
    def silent() -> str:
        raise NotAnswered("bparams: timed out")

    monkeypatch.setattr(lsf, "bparams_text", silent)
    option = begin_option(OPENLAVA)
    assert option is not None and option.startswith("-b ")
    assert begin_epoch(option.split()[1], time.time()) >= time.time() + 2 * UNKNOWN_SLEEP_S


def test_dependents_never_start_before_their_parent_on_volclava(volclava, tmp_path):
    """A held parent array (never dispatched) and eight dependent jobs submitted one by one
    through the backend while both slots are free: none starts. Without the begin time about
    a third of them ran at once here (bsub -w "done(ID[1])", volclava 2.2, 2 slots)."""
    out = subprocess.run(["bsub", "-H", "-J", "parent[1-2]", "-o", "/dev/null", "sleep 60"],
                         env=volclava, capture_output=True, text=True, timeout=60).stdout
    parent = out.split("<")[1].split(">")[0]
    script = tmp_path / "child.sh"
    script.write_text(f"#!/bin/sh\n#BSUB -o {tmp_path}/child_%J.out\ntouch {tmp_path}/ran\n")
    backend = LsfBackend()
    backend._site = OPENLAVA
    lsf._bparams_cache.clear()
    children = []
    for _ in range(8):
        children.append(backend.send(script, f"{parent}_1"))
        time.sleep(0.7)
    time.sleep(4)  # two of mbatchd's passes (MBD_SLEEP_TIME 2): a child that could start has
    listed = subprocess.run(["bjobs", "-a", "-o", "jobid stat", *children], env=volclava,
                            capture_output=True, text=True, timeout=60).stdout
    states = dict(line.split()[:2] for line in listed.splitlines()[1:] if line.strip())
    assert set(states) == set(children), listed
    assert set(states.values()) == {"PEND"}, listed
    assert not (tmp_path / "ran").exists()


def test_a_job_started_before_its_parent_completed_does_not_train(tmp_path, capsys):
    """The job's own check, for a scheduler that starts it anyway: it fails at once, saying
    why, and trains nothing from a missing or half-written model."""
    import json

    from jobs.runtime import _parent_not_done, main
    from quantlib.jobdir import EVAL_JSON, read_status, write_status

    parent, child = tmp_path / "parent", tmp_path / "child"
    write_status(parent, "running")
    config = tmp_path / "child.json"
    config.write_text(json.dumps({"output_dir": str(child), "upstream_dir": str(parent),
                                  "after": "c35a812f08", "job_id": "098f9f8c58"}))
    assert main([str(config)]) == 1
    status = read_status(child)
    assert status["state"] == "failed"
    assert "previous-stage job c35a812f08 has not completed (running)" in status["reason"]
    assert "c35a812f08" in capsys.readouterr().err
    assert not (child / "config.json").exists()  # it never started

    assert _parent_not_done({"upstream_dir": str(tmp_path / "gone"), "after": "x"}) \
        .startswith("its previous-stage job x has not completed (not started)")
    write_status(parent, "completed")
    (parent / EVAL_JSON).write_text("{}")
    assert _parent_not_done({"upstream_dir": str(parent), "after": "x"}) is None
    assert _parent_not_done({}) is None


def test_the_dry_run_says_so_on_openlava_only():
    from jobs.backends.lsf import notes
    from jobs.resources import Resources

    said = " ".join(notes(Resources(), OPENLAVA))
    assert "-b" in said and "MBD_SLEEP_TIME" in said
    assert "MBD_SLEEP_TIME" not in " ".join(notes(Resources(), LSF10))


@pytest.mark.parametrize("dialect", ["openlava", "lsf10"])
def test_the_submitit_plugin_gives_its_dependent_jobs_the_same_begin_time(tmp_path, dialect):
    from jobs.lsf.lsf import _DEFAULTS, make_bsub_script

    params = {**_DEFAULTS, "dialect": dialect, "wait_done": "123_4"}
    lines = make_bsub_script("python -c pass", tmp_path, params).splitlines()
    assert '#BSUB -w "done(123[4])"' in lines
    begins = [ln for ln in lines if ln.startswith("#BSUB -b ")]
    if dialect == "lsf10":
        assert begins == []
    else:
        (line,) = begins
        assert begin_epoch(line.split()[2], time.time()) >= time.time() + 9
