#!/usr/bin/env python3
"""An LSF 10.1 stand-in for tests: bsub, bjobs, bkill, brequeue and bresume on this machine.

Behaves as LSF documents where the backend depends on it:
- bsub reads the job script from stdin and its #BSUB lines (-J "name[1-N]%P", -o/-e/-oo/-eo with
  %J and %I, -W, -n, -R, -gpu, -q, -P, -wa/-wt, -M), refuses arrays over MAX_JOB_ARRAY_SIZE
  (1000), prints `Job <ID> is submitted to queue <QUEUE>.`, and runs the elements in the
  background (at most P at once) with LSB_JOBID, LSB_JOBINDEX (0 outside arrays), LSB_JOBNAME,
  LSB_QUEUE, LSB_HOSTS, LSB_MCPU_HOSTS, LSB_DJOB_NUMPROC and the submitter's environment. Output
  directories must exist when the element starts, else its output is lost.
- bjobs -a -o "jobid jobindex stat exit_code" -json IDS: one record per array element, ERROR
  records for unknown ids, exit status 255 for those when LSB_BJOBS_CONSISTENT_EXIT_CODE=Y;
  finished jobs are forgotten after the clean period.
- bsub -H: every element is held (PSUSP) until bresume makes it pending; bkill ends it (EXIT).
- bkill "ID[i]" / "ID": SIGINT, then SIGTERM, then SIGKILL, an interval apart; pending elements
  end at once (EXIT).
- brequeue "ID[i]" / "ID": a running element is killed (by the dispatcher, as LSF's daemon
  does it, so a job may requeue itself) and starts again under the same id; a finished one
  starts again.
- Run limit (-W): the warning signal (-wa) -wt minutes before it, USR2 at the limit, SIGKILL
  after the kill delay.
- Dependencies (-w "done(ID)" or "done(ID[i])", several joined by &&): the job stays pending
  until each named job or element is DONE; one that ended EXIT (or is unknown) can never be
  satisfied, and the job stays pending, as LSF leaves it, until bkill.

State lives under $LSF_STANDIN_DIR. Time scale and periods come from the environment:
LSF_STANDIN_MINUTE (seconds per minute, default 60), LSF_STANDIN_CLEAN_PERIOD (seconds,
default 3600), LSF_STANDIN_TERMINATE_INTERVAL (seconds between bkill's signals, default 10),
LSF_STANDIN_KILL_DELAY (minutes from USR2 at the run limit to SIGKILL, default 10).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

MAX_JOB_ARRAY_SIZE = 1000
PENDING, RUNNING, FINISHED = {"PEND"}, {"RUN"}, {"DONE", "EXIT"}
HELD = {"PSUSP"}  # bsub -H; bresume makes it PEND, bkill EXIT


def state_dir() -> Path:
    root = os.environ.get("LSF_STANDIN_DIR")
    if not root:
        sys.exit("lsf stand-in: set LSF_STANDIN_DIR")
    path = Path(root)
    (path / "jobs").mkdir(parents=True, exist_ok=True)
    return path


def _float_env(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@contextmanager
def locked():
    with open(state_dir() / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def job_path(jobid: str) -> Path:
    return state_dir() / "jobs" / f"{jobid}.json"


def load(jobid: str) -> dict | None:
    try:
        return json.loads(job_path(jobid).read_text())
    except (OSError, ValueError):
        return None


def save(job: dict) -> None:
    path = job_path(job["jobid"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(job))
    os.replace(tmp, path)


def parse_target(text: str) -> tuple[str, int | None]:
    m = re.fullmatch(r"(\d+)(?:\[(\d+)\])?", text.strip())
    if not m:
        raise ValueError(text)
    return m.group(1), int(m.group(2)) if m.group(2) else None


# -- bsub -----------------------------------------------------------------------------------
# options without a value. -H: "Holds the job in the PSUSP state when the job is submitted.
# The job is not scheduled until you tell the system to resume the job (see bresume)."
# (IBM Spectrum LSF 10.1 command reference, bsub -H:
# https://www.ibm.com/docs/en/SSWRJV_10.1.0/lsf_command_ref/bsub.__h.1.html; a pending job
# stopped or held is PSUSP: https://www.ibm.com/docs/en/SSWRJV_10.1.0/lsf_admin/job_suspend.html)
FLAG_OPTS = {"-H"}
VALUE_OPTS = {"-J", "-o", "-e", "-oo", "-eo", "-W", "-n", "-R", "-gpu", "-q", "-P", "-M",
              "-wa", "-wt", "-w", "-G", "-cwd"}


def parse_bsub_options(script: str) -> dict:
    opts: dict = {"-R": []}
    for line in script.splitlines():
        if not line.startswith("#BSUB"):
            continue
        words = shlex.split(line[len("#BSUB"):])
        i = 0
        while i < len(words):
            flag = words[i]
            if flag in FLAG_OPTS:
                opts[flag] = True
                i += 1
                continue
            if flag not in VALUE_OPTS or i + 1 >= len(words):
                raise SystemExit(f"{flag}: Illegal option or missing value. Job not submitted.")
            value = words[i + 1]
            if flag == "-R":
                opts["-R"].append(value)
            else:
                opts[flag] = value
            i += 2
    return opts


def bsub(argv: list[str]) -> int:
    if argv:
        print("lsf stand-in: bsub takes the job script on stdin only", file=sys.stderr)
        return 255
    script = sys.stdin.read()
    try:
        opts = parse_bsub_options(script)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 255
    spec = opts.get("-J", "NONAME")
    if len(spec) > 255:
        print("Job name too long (more than 255 characters). Job not submitted.", file=sys.stderr)
        return 255
    m = re.fullmatch(r"([A-Za-z0-9._-]+)(?:\[(\d+)-(\d+)\](?:%(\d+))?)?", spec)
    if not m:
        print(f"{spec}: Bad job name. Job not submitted.", file=sys.stderr)
        return 255
    name, first, last, limit = m.groups()
    indices = list(range(int(first), int(last) + 1)) if first else [0]
    if len(indices) > MAX_JOB_ARRAY_SIZE:
        print("The job array size exceeds MAX_JOB_ARRAY_SIZE. Job not submitted.", file=sys.stderr)
        return 255
    with locked():
        counter = state_dir() / "next_id"
        jobid = str(int(counter.read_text()) if counter.exists() else 1001)
        counter.write_text(str(int(jobid) + 1))
        script_path = state_dir() / "jobs" / f"{jobid}.sh"
        script_path.write_text(script)
        queue = opts.get("-q", "normal")
        job = {"jobid": jobid, "name": name, "array": bool(first), "queue": queue,
               "limit": int(limit) if limit else None, "opts": opts, "script": str(script_path),
               "cwd": os.getcwd(), "env": dict(os.environ), "dispatcher": None,
               "elements": {str(i): {"stat": "PSUSP" if opts.get("-H") else "PEND",
                                     "exit_code": None, "pid": None,
                                     "start": None, "end": None, "kill_at": None,
                                     "signals": []} for i in indices}}
        save(job)
    spawn_dispatcher(jobid)
    print(f"Job <{jobid}> is submitted to queue <{queue}>.")
    return 0


def spawn_dispatcher(jobid: str) -> None:
    proc = subprocess.Popen([sys.executable, __file__, "--dispatch", jobid],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    with locked():
        job = load(jobid)
        job["dispatcher"] = proc.pid
        save(job)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


# -- the dispatcher: runs a job's elements --------------------------------------------------
def _element_env(job: dict, index: int) -> dict:
    n = int(job["opts"].get("-n", "1"))
    env = dict(job["env"])
    env.update(LSB_JOBID=job["jobid"], LSB_JOBINDEX=str(index), LSB_QUEUE=job["queue"],
               LSB_JOBNAME=f"{job['name']}[{index}]" if job["array"] else job["name"],
               LSB_HOSTS=" ".join(["localhost"] * n), LSB_MCPU_HOSTS=f"localhost {n}",
               LSB_DJOB_NUMPROC=str(n))
    return env


def _open_output(job: dict, index: int, out_flag: str, err_flag: str):
    def resolve(flag_append: str, flag_over: str):
        for flag, mode in ((flag_over, "w"), (flag_append, "a")):
            if flag in job["opts"]:
                path = job["opts"][flag].replace("%J", job["jobid"]).replace("%I", str(index))
                path = Path(job["cwd"], path)
                if not path.parent.is_dir():  # LSF: the directory must exist; output is lost
                    return open(os.devnull, "w")
                return open(path, mode)
        return None

    out = resolve(out_flag, out_flag + "o") or open(os.devnull, "w")
    err = resolve(err_flag, err_flag + "o") or out
    return out, err


def _run_limit_seconds(job: dict) -> float | None:
    limit = job["opts"].get("-W")
    if not limit:
        return None
    hours, _, minutes = limit.rpartition(":")
    total = int(hours or 0) * 60 + int(minutes)
    return total * _float_env("LSF_STANDIN_MINUTE", 60)


DEPENDENCY = re.compile(r"done\(\s*(\d+)(?:\[(\d+)\])?\s*\)")


def dependency(job: dict) -> str:
    """'ok' when every done() condition of -w holds, 'wait' while one may still hold,
    'never' when one cannot (its job ended EXIT or is unknown)."""
    cond = job["opts"].get("-w")
    if not cond:
        return "ok"
    parts = [p.strip() for p in cond.split("&&")]
    verdict = "ok"
    for part in parts:
        m = DEPENDENCY.fullmatch(part)
        if not m:
            return "never"
        other = load(m.group(1))
        if other is None:
            return "never"
        elements = ([other["elements"].get(m.group(2))] if m.group(2)
                    else list(other["elements"].values()))
        if not elements or elements[0] is None:
            return "never"
        stats = {e["stat"] for e in elements}
        if "EXIT" in stats:
            return "never"
        if stats != {"DONE"}:
            verdict = "wait"
    return verdict


def dispatch(jobid: str) -> None:
    procs: dict[str, subprocess.Popen] = {}
    minute = _float_env("LSF_STANDIN_MINUTE", 60)
    interval = _float_env("LSF_STANDIN_TERMINATE_INTERVAL", 10)
    while True:
        with locked():
            job = load(jobid)
            elements = job["elements"]
            running = [i for i, e in elements.items() if e["stat"] in RUNNING]
            dep = dependency(job) if any(e["stat"] in PENDING for e in elements.values()) \
                else "ok"
            if dep == "never" and not procs:  # pending for good: LSF leaves it so
                job["dispatcher"] = None
                save(job)
                return
            # start pending elements, in order, up to the array's limit
            for i, e in elements.items():
                if e["stat"] not in PENDING or dep != "ok":
                    continue
                if job["limit"] and len(running) >= job["limit"]:
                    break
                out, err = _open_output(job, int(i), "-o", "-e")
                with open(job["script"]) as script:
                    proc = subprocess.Popen(["/bin/bash"], stdin=script, stdout=out, stderr=err,
                                            cwd=job["cwd"], env=_element_env(job, int(i)),
                                            start_new_session=True)
                procs[i] = proc
                e.update(stat="RUN", pid=proc.pid, start=time.time(), end=None,
                         exit_code=None, kill_at=None, signals=[])
                running.append(i)
            now = time.time()
            limit = _run_limit_seconds(job)
            for i, e in elements.items():
                proc = procs.get(i)
                if e["stat"] not in RUNNING or proc is None:
                    continue
                if e.get("requeue"):  # brequeue of a running element: kill, start again
                    if proc.poll() is None:
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    e.update(stat="PEND", exit_code=None, end=None, kill_at=None, pid=None,
                             requeue=False)
                    del procs[i]
                    continue
                if proc.poll() is not None:
                    rc = proc.returncode
                    rc = 128 - rc if rc < 0 else rc
                    e.update(stat="DONE" if rc == 0 else "EXIT", exit_code=rc, end=now, pid=None)
                    del procs[i]
                    continue
                if e["kill_at"]:  # bkill escalation: INT sent, then TERM, then KILL
                    waited = now - e["kill_at"]
                    if waited >= 2 * interval and "KILL" not in e["signals"]:
                        _signal(proc.pid, signal.SIGKILL, e, "KILL")
                    elif waited >= interval and "TERM" not in e["signals"]:
                        _signal(proc.pid, signal.SIGTERM, e, "TERM")
                if limit is not None:
                    ran = now - e["start"]
                    warn = job["opts"].get("-wa")
                    warn_at = limit - float(job["opts"].get("-wt", 0)) * minute
                    if warn and ran >= warn_at and "WARN" not in e["signals"]:
                        _signal(proc.pid, getattr(signal, "SIG" + warn.removeprefix("SIG")), e,
                                "WARN")
                    if ran >= limit and "USR2" not in e["signals"]:
                        _signal(proc.pid, signal.SIGUSR2, e, "USR2")
                    delay = _float_env("LSF_STANDIN_KILL_DELAY", 10) * minute
                    if ran >= limit + delay and "LIMITKILL" not in e["signals"]:
                        _signal(proc.pid, signal.SIGKILL, e, "LIMITKILL")
            save(job)
            if not procs and not any(e["stat"] in PENDING for e in elements.values()):
                job["dispatcher"] = None
                save(job)
                return
        time.sleep(0.1)


def _signal(pid: int, sig: int, element: dict, tag: str) -> None:
    element["signals"].append(tag)
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


# -- bjobs, bkill, brequeue -----------------------------------------------------------------
def _forgotten(element: dict) -> bool:
    clean = _float_env("LSF_STANDIN_CLEAN_PERIOD", 3600)
    return element["stat"] in FINISHED and time.time() - element["end"] > clean


def bjobs(argv: list[str]) -> int:
    fields, as_json, ids = ["jobid", "stat"], False, []
    i = 0
    while i < len(argv):
        if argv[i] == "-o":
            fields = argv[i + 1].split()
            i += 2
            continue
        if argv[i] == "-json":
            as_json = True
        elif argv[i] != "-a":
            ids.append(argv[i])
        i += 1
    records, unknown = [], False
    with locked():
        for target in ids:
            try:
                jobid, index = parse_target(target)
            except ValueError:
                records.append({"ERROR": f"{target}: Illegal job ID"})
                unknown = True
                continue
            job = load(jobid)
            found = False
            for i_str, e in (job or {}).get("elements", {}).items():
                if (index is not None and int(i_str) != index) or _forgotten(e):
                    continue
                found = True
                values = {"jobid": jobid, "jobindex": i_str, "stat": e["stat"],
                          "exit_code": "" if e["exit_code"] is None else str(e["exit_code"]),
                          "job_name": job["name"], "queue": job["queue"]}
                records.append({f.upper(): values.get(f, "") for f in fields})
            if not found:
                records.append({"ERROR": f"Job <{target}> is not found"})
                unknown = True
    if as_json:
        print(json.dumps({"COMMAND": "bjobs", "JOBS": len(records), "RECORDS": records},
                         indent=2))
    else:
        print(" ".join(f.upper() for f in fields))
        for r in records:
            print(r.get("ERROR") or " ".join(r.values()))
    consistent = os.environ.get("LSB_BJOBS_CONSISTENT_EXIT_CODE", "").upper() == "Y"
    return 255 if unknown and consistent else 0


def _targets(argv: list[str]):
    for target in argv:
        try:
            jobid, index = parse_target(target)
        except ValueError:
            print(f"{target}: Illegal job ID.", file=sys.stderr)
            continue
        job = load(jobid)
        if job is None:
            print(f"Job <{target}>: No matching job found", file=sys.stderr)
            continue
        picked = [i for i in job["elements"] if index is None or int(i) == index]
        if not picked:
            print(f"Job <{target}>: No matching job found", file=sys.stderr)
            continue
        yield job, picked, target


def bkill(argv: list[str]) -> int:
    rc = 0
    with locked():
        for job, picked, target in _targets(argv):
            for i in picked:
                e = job["elements"][i]
                if e["stat"] in PENDING | HELD:
                    e.update(stat="EXIT", exit_code=130, end=time.time())
                elif e["stat"] in RUNNING and not e["kill_at"]:
                    e["kill_at"] = time.time()
                    _signal(e["pid"], signal.SIGINT, e, "INT")
            save(job)
            print(f"Job <{target}> is being terminated")
    return rc


def brequeue(argv: list[str]) -> int:
    restart = []
    with locked():
        for job, picked, target in _targets(argv):
            for i in picked:
                e = job["elements"][i]
                if e["stat"] in RUNNING:  # the dispatcher kills it and starts it again
                    e["requeue"] = True
                else:
                    e.update(stat="PEND", exit_code=None, end=None, kill_at=None)
            save(job)
            restart.append(job["jobid"])
            print(f"Job <{target}> is being requeued")
    for jobid in restart:
        job = load(jobid)
        if not _alive(job["dispatcher"]):
            spawn_dispatcher(jobid)
    return 0


def bresume(argv: list[str]) -> int:
    """bresume: a job held at submission (PSUSP) becomes pending (PEND) and is scheduled
    ("Waiting for re-scheduling after being resumed by user": IBM Spectrum LSF 10.1, example
    messages, https://www.ibm.com/docs/en/spectrum-lsf/10.1.0?topic=messaging-example-messages;
    bresume: https://www.ibm.com/docs/en/SSWRJV_10.1.0/lsf_command_ref/bresume.1.html)."""
    restart = []
    with locked():
        for job, picked, target in _targets(argv):
            for i in picked:
                if job["elements"][i]["stat"] in HELD:
                    job["elements"][i]["stat"] = "PEND"
            save(job)
            restart.append(job["jobid"])
            print(f"Job <{target}> is being resumed")
    for jobid in restart:
        if not _alive(load(jobid)["dispatcher"]):
            spawn_dispatcher(jobid)
    return 0


def main() -> int:
    if len(sys.argv) >= 3 and sys.argv[1] == "--dispatch":
        dispatch(sys.argv[2])
        return 0
    command = os.path.basename(sys.argv[0])
    handlers = {"bsub": bsub, "bjobs": bjobs, "bkill": bkill, "brequeue": brequeue,
                "bresume": bresume}
    if command not in handlers:
        print(f"lsf stand-in: unknown command {command}", file=sys.stderr)
        return 2
    return handlers[command](sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
