#!/usr/bin/env python3
"""An LSF 10.1 stand-in for tests: bsub, bjobs, bhist, bkill, brequeue, bstop, bresume, lsid.

It stays for what only LSF 10.1 has and volclava (tests/lsf/start.sh, the real LSF-family
scheduler the other LSF tests run against) lacks: -wa/-wt, -gpu, -outdir, several -R, bjobs'
JOBINDEX and EXIT_CODE fields, LSB_BJOBS_CONSISTENT_EXIT_CODE, signal scopes.

Behaves as LSF documents where the backend depends on it:
- bsub reads the job script from stdin and its #BSUB lines (-J "name[1-N]%P", -o/-e/-oo/-eo with
  %J and %I, -W, -n, -R, -gpu, -q, -P, -wa/-wt, -M), refuses arrays over MAX_JOB_ARRAY_SIZE
  (1000), prints `Job <ID> is submitted to queue <QUEUE>.`, and runs the elements in the
  background (at most P at once) with LSB_JOBID, LSB_JOBINDEX (0 outside arrays), LSB_JOBNAME,
  LSB_QUEUE, LSB_HOSTS, LSB_MCPU_HOSTS, LSB_DJOB_NUMPROC and the submitter's environment. Output
  directories must exist when the element starts, else its output is lost.
- bsub options on the command line as well as #BSUB lines (the command line wins: "options
  specified on the command line override embedded options", IBM LSF 10.1, "Submitting a job
  with a job script": https://www.ibm.com/docs/en/SSWRJV_10.1.0/lsf_users_guide/job_scripts_writing.html)
- bjobs -a -o "jobid jobindex stat exit_code job_name" -json IDS: one record per array element
  (an element's JOB_NAME is "name[i]"), ERROR
  records for unknown ids, exit status 255 for those when LSB_BJOBS_CONSISTENT_EXIT_CODE=Y;
  finished jobs are forgotten after the clean period.
- bsub -H: every element is held (PSUSP) until bresume makes it pending; bkill ends it (EXIT).
- bkill "ID[i]" / "ID": SIGINT, then SIGTERM, then SIGKILL, an interval apart; pending elements
  end at once (EXIT).
- brequeue "ID[i]" / "ID": a running element is killed (by the dispatcher, as LSF's daemon
  does it, so a job may requeue itself) and starts again under the same id; a finished one is
  refused (non-zero exit) unless -d (DONE), -e (EXIT) or -a. bkill of a finished or unknown job
  fails too.
- Output (-o/-e, %J %I): spooled and copied to the files when the run ends, with LSF's job report
  appended to the output file, unless LSB_STDOUT_DIRECT=Y (then written as the job runs); -o
  without -e takes stderr too; -outdir is created at the job's start.
- Signals reach the job's process group, or its top process only with
  LSF_STANDIN_SIGNAL_SCOPE=top; when the top process ends, what it left running is killed.
- bsub refuses bad -n, -M, -R, -gpu values, unknown queues (LSF_STANDIN_QUEUES) and -w done()
  on jobs it does not know.
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
PENDING, RUNNING, FINISHED = {"PEND"}, {"RUN", "USUSP"}, {"DONE", "EXIT"}
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
              "-wa", "-wt", "-w", "-G", "-cwd", "-outdir"}
# values are checked as LSF checks them at submission, each refusal "... Job not submitted."
# -n min_tasks[,max_tasks]: https://www.ibm.com/docs/en/SSWRJV_10.1.0/lsf_command_ref/bsub.n.1.html
# -M mem_limit [unit]: https://www.ibm.com/docs/en/SSWRJV_10.1.0/lsf_command_ref/bsub.__m.1.html
# -q: the queue must exist (here: LSF_STANDIN_QUEUES, default "normal short long gpu")
#   https://www.ibm.com/docs/en/SSWRJV_10.1.0/lsf_command_ref/bsub.q.1.html
# -R sections select[] order[] rusage[] span[] same[] cu[] affinity[]:
#   https://www.ibm.com/docs/en/SSWRJV_10.1.0/lsf_admin/res_req_strings_about.html
# -gpu "num=N[:mode=shared|exclusive_process][:...]" or "-":
#   https://www.ibm.com/docs/en/SSWRJV_10.1.0/lsf_command_ref/bsub.gpu.1.html
CHECKS = {
    "-n": re.compile(r"[1-9]\d*(,[1-9]\d*)?"),
    "-M": re.compile(r"\d+(\.\d+)?\s*([KMGTPE]B?)?", re.IGNORECASE),
    "-R": re.compile(r"(\s*(select|order|rusage|span|same|cu|affinity)\[[^\[\]]*\]\s*)+"),
    "-gpu": re.compile(r"-|(num=\d+(/(task|host))?|mode=(shared|exclusive_process)|"
                       r"mps=(yes|no)|j_exclusive=(yes|no)|gmodel=[\w-]+|gmem=\d+\w*)"
                       r"(:(num=\d+(/(task|host))?|mode=(shared|exclusive_process)|mps=(yes|no)"
                       r"|j_exclusive=(yes|no)|gmodel=[\w-]+|gmem=\d+\w*))*"),
}


def parse_bsub_options(script: str, argv: list[str] | None = None) -> dict:
    opts: dict = {"-R": []}
    lines = [line[len("#BSUB"):] for line in script.splitlines() if line.startswith("#BSUB")]
    for words in [shlex.split(line) for line in lines] + [list(argv or [])]:
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
            check = CHECKS.get(flag)
            if check is not None and not check.fullmatch(value):
                raise SystemExit(f"{flag} {value}: Bad argument. Job not submitted.")
            if flag == "-R":
                opts["-R"].append(value)
            else:
                opts[flag] = value
            i += 2
    return opts


def bsub(argv: list[str]) -> int:
    script = sys.stdin.read()
    try:
        opts = parse_bsub_options(script, argv)
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
    queues = os.environ.get("LSF_STANDIN_QUEUES", "normal short long gpu").split()
    if opts.get("-q", "normal") not in queues:
        print(f"{opts['-q']}: No such queue. Job not submitted.", file=sys.stderr)
        return 255
    # a dependency on a job LSF does not know is refused at submission, not left pending
    # (bsub -w: https://www.ibm.com/docs/en/SSWRJV_10.1.0/lsf_command_ref/bsub.w.1.html)
    for m in DEPENDENCY.finditer(opts.get("-w", "")):
        known = load(m.group(1))
        if known is None or (m.group(2) and m.group(2) not in known["elements"]):
            print(f"done({m.group(1)}{'[' + m.group(2) + ']' if m.group(2) else ''}): No "
                  "matching job found. Job not submitted.", file=sys.stderr)
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


def _target(job: dict, index: int, flag: str) -> tuple[Path, str] | None:
    """Where -o/-oo (or -e/-eo) sends a stream, with %J and %I replaced, and the open mode."""
    for option, mode in ((flag + "o", "w"), (flag, "a")):
        if option in job["opts"]:
            path = job["opts"][option].replace("%J", job["jobid"]).replace("%I", str(index))
            return Path(job["cwd"], path), mode
    return None


def _direct() -> bool:
    """LSB_STDOUT_DIRECT=Y (lsf.conf): output written to the -o file as the job runs; unset:
    to a temporary file, copied to the -o file when the job finishes (bsub -o:
    https://www.ibm.com/docs/en/SSWRJV_10.1.0/lsf_command_ref/bsub.o.1.html)."""
    return os.environ.get("LSB_STDOUT_DIRECT", "").upper() == "Y"


def _open_output(job: dict, index: int):
    """The element's stdout and stderr. -o without -e: stderr goes to the output file too
    (bsub -o, same page). A path whose directory is not there when it is opened is not
    stored ("If the specified output_file path is not accessible, the output will not be
    stored"). Without LSB_STDOUT_DIRECT both go to spool files, copied at the end."""
    out_t, err_t = _target(job, index, "-o"), _target(job, index, "-e")
    if not _direct():
        spool = state_dir() / "spool"
        spool.mkdir(exist_ok=True)
        out = open(spool / f"{job['jobid']}.{index}.out", "w")
        err = open(spool / f"{job['jobid']}.{index}.err", "w") if err_t else out
        return out, err

    def direct(target):
        if target is None or not target[0].parent.is_dir():
            return None
        return open(target[0], target[1])

    out = direct(out_t) or open(os.devnull, "w")
    err = direct(err_t) if err_t else out
    return out, err or open(os.devnull, "w")


def _finish_output(job: dict, index: int, element: dict) -> None:
    """At the end of a run (also one killed by bkill or brequeue): the spooled output copied to
    the -o / -e files, and the job report appended to the output file, as LSF does unless
    bsub -N mails it (bsub -o: "If you use -o without -N, the job report is stored in the
    output file")."""
    out_t, err_t = _target(job, index, "-o"), _target(job, index, "-e")
    spool = state_dir() / "spool"
    for target, suffix in ((out_t, "out"), (err_t, "err")):
        src = spool / f"{job['jobid']}.{index}.{suffix}"
        text = src.read_text(errors="replace") if src.exists() and not _direct() else ""
        src.unlink(missing_ok=True)
        if target is None or not target[0].parent.is_dir():
            continue  # not accessible: not stored
        with open(target[0], "a" if _direct() or target[1] == "a" else "w") as fh:
            fh.write(text)
            if suffix == "out":
                rc = element.get("exit_code")
                fh.write("\n" + "-" * 60 + "\nSender: LSF System <lsfadmin@localhost>\n"
                         f"Subject: Job {job['jobid']}"
                         + (f"[{index}]" if job["array"] else "") + f": <{job['name']}> in "
                         f"cluster <standin> {'Done' if rc == 0 else 'Exited'}\n\n"
                         + ("Successfully completed.\n" if rc == 0 else
                            f"Exited with exit code {rc}.\n")
                         + "-" * 60 + "\n")


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
                outdir = job["opts"].get("-outdir")
                if outdir:  # bsub -outdir: LSF creates it (with %J, %I) as the job starts
                    # https://www.ibm.com/docs/SSWRJV_10.1.0/lsf_command_ref/bsub.outdir.1.html
                    Path(job["cwd"], outdir.replace("%J", job["jobid"]).replace("%I", i)
                         ).mkdir(parents=True, exist_ok=True)
                out, err = _open_output(job, int(i))
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
                    _kill_job_processes(proc.pid)
                    rc = proc.wait()
                    e.update(exit_code=128 - rc if rc < 0 else rc)
                    _finish_output(job, int(i), e)
                    e.update(stat="PEND", exit_code=None, end=None, kill_at=None, pid=None,
                             requeue=False)
                    del procs[i]
                    continue
                if proc.poll() is not None:
                    rc = proc.returncode
                    rc = 128 - rc if rc < 0 else rc
                    # the top process ended: LSF ends what the job left running
                    _kill_job_processes(proc.pid)
                    e.update(stat="DONE" if rc == 0 else "EXIT", exit_code=rc, end=now, pid=None)
                    _finish_output(job, int(i), e)
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
    """A signal to a running job: to every process of it (its process group, as LSF signals
    the processes it tracks for the job), or, where a site's LSF signals the job's top process
    only, to that one (LSF_STANDIN_SIGNAL_SCOPE=top): a job script must pass signals on."""
    element["signals"].append(tag)
    try:
        if os.environ.get("LSF_STANDIN_SIGNAL_SCOPE", "group") == "top" and sig != signal.SIGKILL:
            os.kill(pid, sig)
        else:
            os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _kill_job_processes(pid: int) -> None:
    """When a job's top process exits, or bkill's SIGKILL or brequeue ends it, LSF cleans up
    every process the job started, not only the top one ("Job cleanup refers to ... Clean up
    all left-over processes": https://www.ibm.com/support/knowledgecenter/SSWRJV_10.1.0/
    best_practices/Cleaning%20up%20parallel%20job%20execution%20problems.html): an orphan of
    the job does not outlive it."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
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
                          "job_name": job["name"] + (f"[{i_str}]" if job["array"] else ""),
                          "queue": job["queue"]}
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


def bhist(argv: list[str]) -> int:
    """bhist -l IDS: a block per job or element, "Job <ID[i]>, Job Name <...>" then its events
    ("Submitted", "Starting", "Done successfully" / "Exited with exit code N"), blocks apart by a
    line of dashes; "No matching job found" and exit 255 when none is known. bhist reads the
    event log, so finished jobs stay after bjobs' CLEAN_PERIOD
    (https://www.ibm.com/docs/en/SSWRJV_10.1.0/lsf_command_ref/bhist.1.html)."""
    blocks = []
    with locked():
        for target in [a for a in argv if not a.startswith("-")]:
            try:
                jobid, index = parse_target(target)
            except ValueError:
                continue
            job = load(jobid)
            for i_str, e in (job or {}).get("elements", {}).items():
                if index is not None and int(i_str) != index:
                    continue
                name = f"{jobid}[{i_str}]" if job["array"] else jobid
                events = [f"Submitted from host <standin>, to Queue <{job['queue']}>;"]
                if e["start"]:
                    events.append(f"Starting (Pid {e['pid'] or 0});")
                if e["stat"] == "DONE":
                    events.append("Done successfully.")
                elif e["stat"] == "EXIT":
                    events.append(f"Exited with exit code {e['exit_code']}.")
                blocks.append(f"Job <{name}>, Job Name <{job['name']}>, User <standin>\n"
                              + "\n".join(f"Mon Jan  1 00:00:00: {ev}" for ev in events))
    if not blocks:
        print("No matching job found")
        return 255
    print(("\n" + "-" * 78 + "\n").join(blocks))
    return 0


def lsid(argv: list[str]) -> int:  # noqa: ARG001
    """lsid: "IBM Spectrum LSF Standard 10.1.0.13, ..." then the cluster and master names
    (https://www.ibm.com/docs/en/SSWRJV_10.1.0/lsf_command_ref/lsid.1.html)."""
    print("IBM Spectrum LSF Standard 10.1.0.13, Nov 16 2022\nCopyright International Business "
          "Machines Corp. 1992, 2016.\n\nMy cluster name is standin\nMy master name is standin")
    return 0


def _targets(argv: list[str]):
    """The jobs named; an id LSF does not know is said on stderr and makes the command fail
    (_targets.ok False afterwards)."""
    _targets.ok = True
    for target in argv:
        try:
            jobid, index = parse_target(target)
        except ValueError:
            print(f"{target}: Illegal job ID.", file=sys.stderr)
            _targets.ok = False
            continue
        job = load(jobid)
        picked = [i for i in (job or {}).get("elements", {})
                  if (index is None or int(i) == index) and not _forgotten(job["elements"][i])]
        if not picked:
            print(f"Job <{target}>: No matching job found", file=sys.stderr)
            _targets.ok = False
            continue
        yield job, picked, target


def bkill(argv: list[str]) -> int:
    """bkill: SIGINT, SIGTERM, SIGKILL an interval apart; a pending job ends at once. A job
    that does not exist or has finished is an error: "Job has already finished", non-zero
    exit (https://www.ibm.com/docs/en/SSWRJV_10.1.0/lsf_command_ref/bkill.1.html)."""
    rc = 0
    with locked():
        for job, picked, target in _targets(argv):
            acted = False
            for i in picked:
                e = job["elements"][i]
                if e["stat"] in PENDING | HELD:
                    e.update(stat="EXIT", exit_code=130, end=time.time())
                    acted = True
                elif e["stat"] in RUNNING:
                    if not e["kill_at"]:
                        e["kill_at"] = time.time()
                        _signal(e["pid"], signal.SIGINT, e, "INT")
                    acted = True
            save(job)
            if acted:
                print(f"Job <{target}> is being terminated")
            else:
                print(f"Job <{target}>: Job has already finished", file=sys.stderr)
                rc = 255
    return rc if rc or _targets.ok else 255


def brequeue(argv: list[str]) -> int:
    """brequeue "kills a running (RUN), user-suspended (USUSP), or system-suspended (SSUSP)
    job and returns it to the queue" (PEND, same id); -d requeues DONE jobs, -e EXIT jobs, -a
    all of them; without those a finished job is refused, non-zero exit
    (https://www.ibm.com/docs/en/SSWRJV_10.1.0/lsf_command_ref/brequeue.1.html)."""
    flags = {a for a in argv if a in ("-a", "-d", "-e")}
    ids = [a for a in argv if not a.startswith("-")]
    ok_finished = ({"DONE"} if flags & {"-a", "-d"} else set()) | (
        {"EXIT"} if flags & {"-a", "-e"} else set())
    restart, rc = [], 0
    with locked():
        for job, picked, target in _targets(ids):
            acted = False
            for i in picked:
                e = job["elements"][i]
                if e["stat"] in RUNNING:  # the dispatcher kills it and starts it again
                    e["requeue"] = True
                    acted = True
                elif e["stat"] in ok_finished:
                    e.update(stat="PEND", exit_code=None, end=None, kill_at=None)
                    acted = True
            save(job)
            if acted:
                restart.append(job["jobid"])
                print(f"Job <{target}> is being requeued")
            else:
                print(f"Job <{target}>: Job has already finished (requeue it with -d or -e)",
                      file=sys.stderr)
                rc = 255
    for jobid in restart:
        job = load(jobid)
        if not _alive(job["dispatcher"]):
            spawn_dispatcher(jobid)
    return rc if rc or _targets.ok else 255


def bstop(argv: list[str]) -> int:
    """bstop: a running job is suspended by the user (USUSP; "sends the SIGSTOP signal to
    sequential jobs": https://www.ibm.com/docs/en/SSWRJV_10.1.0/lsf_command_ref/bstop.1.html);
    a pending one is held (PSUSP). The run limit does not count while suspended is not modelled."""
    rc = 0
    with locked():
        for job, picked, target in _targets(argv):
            for i in picked:
                e = job["elements"][i]
                if e["stat"] in RUNNING:
                    _signal(e["pid"], signal.SIGSTOP, e, "STOP")
                    e["stat"] = "USUSP"
                elif e["stat"] in PENDING:
                    e["stat"] = "PSUSP"
            save(job)
            print(f"Job <{target}> is being stopped")
    return rc if _targets.ok else 255


def bresume(argv: list[str]) -> int:
    """bresume: a job held at submission (PSUSP) becomes pending (PEND) and is scheduled
    ("Waiting for re-scheduling after being resumed by user": IBM Spectrum LSF 10.1, example
    messages, https://www.ibm.com/docs/en/spectrum-lsf/10.1.0?topic=messaging-example-messages;
    bresume: https://www.ibm.com/docs/en/SSWRJV_10.1.0/lsf_command_ref/bresume.1.html); a
    user-suspended one (USUSP) runs on (SIGCONT)."""
    restart = []
    with locked():
        for job, picked, target in _targets(argv):
            for i in picked:
                e = job["elements"][i]
                if e["stat"] in HELD:
                    e["stat"] = "PEND"
                elif e["stat"] == "USUSP":
                    _signal(e["pid"], signal.SIGCONT, e, "CONT")
                    e["stat"] = "RUN"
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
                "bresume": bresume, "bstop": bstop, "bhist": bhist, "lsid": lsid}
    if command not in handlers:
        print(f"lsf stand-in: unknown command {command}", file=sys.stderr)
        return 2
    return handlers[command](sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
