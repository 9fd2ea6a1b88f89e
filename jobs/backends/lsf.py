"""IBM Spectrum LSF 10.1 and the OpenLava family (OpenLava, volclava): one backend, two dialects.

`sweep launch --backend lsf` submits the very scripts `--dry-run` renders (`bsub < script`);
the submitit plugin (jobs.lsf) renders its scripts through the same option and wrapper code.

Dialects (IBM LSF 10.1 reference, "bsub" options; volclava's bsub template in
lsbatch/lib/lsb.sub.c: `E:T:w:f:k:R:m:J:L:u:i:o:e:n:q:b:t:sp:s:c:W:F:D:S:C:M:P:p:v:Ip|Is|I|r|H|x|
N|B|h|V|G:X:`). The common form is used wherever there is one: one `-R "rusage[mem=N]
span[hosts=1]"` (10.1 accepts it; OpenLava refuses a second -R), plain numbers in the site's unit
(OpenLava refuses `mem=1024MB`), bjobs fields `jobid stat job_name` (OpenLava has no JOBINDEX or
EXIT_CODE field; an element's index is in its name, `name[N]`, on both). Where there is none:
- the warning: 10.1 `-wa USR2 -wt N`; OpenLava has no -wa/-wt (it reads `-wa USR2` as `-w a`!):
  the run limit's own USR2 (sent at the -W limit, the kill 10 minutes later) is the warning;
- GPUs: 10.1 `-gpu "num=N:mode=exclusive_process"`; OpenLava only a site resource in rusage;
- `-outdir`: 10.1 only (OpenLava reads it as `-o utdir`);
- memory: rusage mem and -M in LSF_UNIT_FOR_LIMITS (lsf.conf under LSF_ENVDIR), else MB.
The dialect comes from the spec (resources.lsf.dialect) or, once per launch, `lsid`'s first line
("IBM Spectrum LSF Standard 10.1.0.13, ..." / "volclava project 2.2, ..." / "openlava project").

Job script: the job's command runs as the shell's child; the shell passes USR2 / INT / TERM on
(LSF signals the whole process group: the warning, bkill's INT-TERM-KILL) and writes the
command's exit status to an exit-code file that outlives bjobs' memory (CLEAN_PERIOD), except
when the job requeued itself (exit 75, or its requeue marker).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.backends.base import Elements, NotAnswered, SchedulerBackend, Submitted, run_query
from jobs.resources import Resources
from quantlib.errors import UserError
from quantlib.jobdir import UNSURE, valid_id

if TYPE_CHECKING:
    from jobs.grid import Job
    from jobs.spec import Spec
    from quantlib.jobdir import ConfigRef

# bjobs STAT -> submitit's state names; a suspended job is running, not finished
STATES = {"PEND": "PENDING", "PROV": "PENDING", "WAIT": "PENDING", "PSUSP": "PENDING",
          "RUN": "RUNNING", "USUSP": "RUNNING", "SSUSP": "RUNNING",
          "DONE": "COMPLETED", "EXIT": "FAILED", "ZOMBI": "FAILED"}
FIELDS = "jobid stat job_name"  # bjobs -o fields both dialects have
OPENLAVA_OPTIONS = set("ETwfkRmJLuioenqbtscWFDSCMPpvIrHxNBhVGX") | {"sp", "Ip", "Is"}
UNITS = {"KB": 1 / 1024, "MB": 1, "GB": 1024, "TB": 1024 * 1024}


@dataclass(frozen=True)
class Site:
    """What the scheduler at hand understands, and how that was established."""

    dialect: str  # "lsf10" | "openlava"
    mem_unit: str  # the unit of rusage mem and -M
    source: str  # for the dry run: where the dialect and unit came from

    @property
    def openlava(self) -> bool:
        return self.dialect == "openlava"


_lsid_cache: dict[str, str | None] = {}


def lsid_line() -> str | None:
    """`lsid`'s first line, once per process (None when there is no lsid or it fails)."""
    if "line" not in _lsid_cache:
        try:
            out = run_query(["lsid"])
            _lsid_cache["line"] = next((ln.strip() for ln in out.splitlines() if ln.strip()),
                                       None)
        except NotAnswered:
            _lsid_cache["line"] = None
    return _lsid_cache["line"]


def dialect_of(line: str | None) -> str | None:
    if not line:
        return None
    low = line.lower()
    if "openlava" in low or "volclava" in low:
        return "openlava"
    if "lsf" in low:
        return "lsf10"
    return None


def conf_unit() -> str | None:
    """LSF_UNIT_FOR_LIMITS from the lsf.conf under LSF_ENVDIR (default /etc), if set."""
    path = Path(os.environ.get("LSF_ENVDIR") or "/etc") / "lsf.conf"
    try:
        if not path.is_file() or path.stat().st_size > 1 << 20:
            return None
        text = path.read_text(errors="replace")
    except OSError:
        return None
    found = None
    for line in text.splitlines():
        m = re.match(r"^\s*LSF_UNIT_FOR_LIMITS\s*=\s*\"?([A-Za-z]+)\"?\s*(#.*)?$", line)
        if m:
            found = m.group(1).upper()
    return found if found in UNITS else None


def site(res: Resources) -> Site:
    opts = res.lsf
    how = []
    if opts.dialect != "auto":
        dialect = opts.dialect
        how.append(f"dialect {dialect} (resources.lsf.dialect)")
    else:
        line = lsid_line()
        dialect = dialect_of(line) or "lsf10"
        how.append(f"dialect {dialect} (lsid: {line!r})" if dialect_of(line) else
                   "dialect lsf10 (no answer from lsid: LSF 10.1 assumed; set "
                   "resources.lsf.dialect: openlava for OpenLava / volclava)")
    if opts.mem_unit:
        unit = opts.mem_unit
        how.append(f"memory in {unit} (resources.lsf.mem_unit)")
    else:
        unit = conf_unit() or "MB"
        how.append(f"memory in {unit} (" + ("LSF_UNIT_FOR_LIMITS in lsf.conf" if conf_unit()
                                             else "no LSF_UNIT_FOR_LIMITS in lsf.conf: MB") + ")")
    return Site(dialect, unit, "; ".join(how))


def mem_amount(mb: int, unit: str) -> int:
    """`mb` megabytes in `unit`, rounded up (never less than asked)."""
    return max(1, math.ceil(mb / UNITS[unit] - 1e-9))


def option_name(line: str) -> str:
    word = line.strip().split()[0] if line.strip() else ""
    return word[1:] if word.startswith("-") else word


def bsub_options(res: Resources, st: Site, name: str, count: int | None, out_path: str,
                 err_path: str | None, parallelism: int | None = None,
                 outdir: str | None = None) -> list[str]:
    """The bsub options of a job (count None) or an array of `count` elements, one per #BSUB
    line, for the dialect of `st`. Raises UserError where the spec asks for what the dialect
    lacks (rather than emit an option it would misparse)."""
    lsf = res.lsf
    q = shlex.quote
    array = f"[1-{count}]" + (f"%{parallelism}" if parallelism else "") if count else ""
    per_core = lsf.mem_per == "core"
    mem = mem_amount(-(-res.mem_mb // res.cpus) if per_core else res.mem_mb, st.mem_unit)
    rusage = f"mem={mem}"
    if res.gpus and lsf.gpu_syntax == "rusage":
        rusage += f",{lsf.gpu_resource}={res.gpus}"
    lines = [f'-J "{name}{array}"', f"-o {q(out_path)}"]
    if err_path:
        lines.append(f"-e {q(err_path)}")
    lines += [f"-W {res.time_hhmm}", f"-n {res.cpus}",
              f'-R "rusage[{rusage}] span[hosts=1]"',
              f"-M {mem_amount(res.mem_mb, st.mem_unit)}"]
    if res.gpus and lsf.gpu_syntax == "gpu":
        if st.openlava:
            raise UserError("resources.lsf.gpu_syntax: gpu: OpenLava / volclava has no -gpu "
                            "option; use gpu_syntax: rusage with the site's GPU resource "
                            "(resources.lsf.gpu_resource)")
        lines.append(f'-gpu "num={res.gpus}:mode=exclusive_process"')
    if res.queue:
        lines.append(f"-q {q(res.queue)}")
    if res.project:
        lines.append(f"-P {q(res.project)}")
    if lsf.warn_minutes and not st.openlava:
        lines += ["-wa USR2", f"-wt {lsf.warn_minutes}"]
    if outdir and not st.openlava:
        lines.append(f"-outdir {q(outdir)}")
    for line in lsf.extra:
        if st.openlava and option_name(line) not in OPENLAVA_OPTIONS:
            raise UserError(f"resources.lsf.extra: {line!r}: OpenLava / volclava has no "
                            f"-{option_name(line)} option (it would misread it silently); "
                            f"its options: {' '.join(sorted('-' + o for o in OPENLAVA_OPTIONS))}")
        lines.append(line)
    return lines


def notes(res: Resources, st: Site) -> list[str]:
    """What the dry run says about the dialect's choices."""
    out = [f"LSF: {st.source}"]
    mem = mem_amount(res.mem_mb, st.mem_unit)
    out.append(f"LSF: rusage[mem] and -M in {st.mem_unit}: {mem} {st.mem_unit} per job"
               + (" (rusage per core)" if res.lsf.mem_per == "core" else ""))
    if res.lsf.warn_minutes and st.openlava:
        out.append("LSF: OpenLava has no -wa/-wt: the warning is the run limit's own USR2 (at "
                   "-W, the kill follows 10 minutes later); warn_minutes is not used")
    if st.openlava:
        out.append("LSF: OpenLava: a job that waits for another is also given -b, a begin "
                   "time at least 2 x MBD_SLEEP_TIME away in whole minutes (OpenLava may start "
                   "a new job before it has evaluated its dependency)")
    return out


def lsf_target(job_id: str) -> str:
    """Our "123_4" -> LSF's "123[4]"; "123" stays."""
    main, _, index = job_id.partition("_")
    return f"{main}[{index}]" if index else main


def read_bjobs(text: str) -> dict[str, str | None]:
    """bjobs -o "jobid stat job_name" -json -> {"123" or "123_4": STAT}; ids bjobs says it does
    not know map to None. Raises ValueError when the output is not bjobs' JSON."""
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("RECORDS"), list):
        raise ValueError("no RECORDS")
    out: dict[str, str | None] = {}
    for r in data["RECORDS"]:
        if not isinstance(r, dict):
            raise ValueError("a record is not an object")
        jobid = str(r.get("JOBID", ""))
        if "ERROR" in r:
            m = re.search(r"Job <(\d+)(?:\[(\d+)\])?> is not found", str(r["ERROR"]))
            if m:
                out[m.group(1) + (f"_{m.group(2)}" if m.group(2) else "")] = None
            continue
        if not jobid.isdigit() or "STAT" not in r:
            raise ValueError(f"a record without JOBID / STAT: {r!r:.80}")
        index = r.get("JOBINDEX")
        if index in (None, ""):
            m = re.search(r"\[(\d+)\]$", str(r.get("JOB_NAME", "")))
            index = m.group(1) if m else "0"
        key = jobid if str(index) == "0" else f"{jobid}_{index}"
        out[key] = str(r["STAT"])
    return out


def read_bhist(text: str) -> dict[str, str]:
    """bhist -l -> {"123" / "123_4": "ended DONE" | "ended EXIT" | "open"}: whether the job's
    last run ended (and how), or could still be alive (submitted, dispatched or running without
    an end). LSF's and OpenLava's long format: a block per job, `Job <2[1]>, Job Name ...`, its
    events `Done successfully.` / `Exited with exit code N` / `Exited by signal` / `Starting`."""
    out: dict[str, str] = {}
    for block in re.split(r"\n-{20,}\n", text):
        m = re.search(r"Job <(\d+)(?:\[(\d+)\])?>", block)
        if not m:
            continue
        key = m.group(1) + (f"_{m.group(2)}" if m.group(2) else "")
        flat = " ".join(block.split())
        ends = [(e.start(), "DONE" if e.group(0).startswith("Done") else "EXIT")
                for e in re.finditer(r"Done successfully|Exited", flat)]
        starts = [s.start() for s in re.finditer(r"Starting|Dispatched|[Rr]equeue|Submitted",
                                                 flat)]
        if ends and (not starts or ends[-1][0] > max(starts)):
            out[key] = f"ended {ends[-1][1]}"
        else:
            out[key] = "open"
    return out


def exit_code_file(sweep_dir: Path, job_id: str) -> Path:
    return sweep_dir / "logs" / f"{job_id}.exit"


def _exit_code(path: Path) -> int | None:
    try:
        if not path.is_file() or path.stat().st_size > 64:
            return None
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


_names: dict[tuple[str, int, int], str] = {}  # (script, mtime, size) -> its array's name


def array_name(script: Path, elements: Elements) -> str:
    """`-J "name[first-last]%N"` for some elements of an array script we rendered (its own
    #BSUB -J names the array; bsub's command line wins over the script's #BSUB lines). The
    name is read once per script: a sweep's hundreds of ranges share a few scripts."""
    st = script.stat()
    key = (str(script), st.st_mtime_ns, st.st_size)
    if key not in _names:
        with open(script, encoding="utf-8") as fh:
            head = fh.read(8192)  # the #BSUB lines come first
        m = re.search(r'^#BSUB -J "([^"\[]+)\[', head, re.MULTILINE)
        if m is None:
            raise RuntimeError(f"{script}: no array name (#BSUB -J) in it")
        _names[key] = m.group(1)
    return f"{_names[key]}[{elements.first}-{elements.last}]" + (
        f"%{elements.parallel}" if elements.parallel else "")


def bsub(script: Path, dependency: str | None = None, extra: list[str] | None = None) -> str:
    """Submit one script on stdin (bsub reads #BSUB lines only there); the job id it gives."""
    cmd = (["bsub"] + (["-w", f"done({lsf_target(dependency)})"] if dependency else [])
           + list(extra or []))
    try:
        with open(script, "rb") as fh:
            proc = subprocess.run(cmd, stdin=fh, capture_output=True, text=True,
                                  errors="replace", timeout=300, cwd=script.parent)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(str(exc)) from None
    m = re.search(r"Job <(\d+)>", proc.stdout)
    if m is None:  # bsub may print other lines first; no id is a refusal
        raise RuntimeError(" ".join((proc.stderr or proc.stdout).split())[:300]
                           or f"exit status {proc.returncode}")
    return m.group(1)


_bparams_cache: dict[str, str | NotAnswered] = {}


def bparams_text() -> str:
    """`bparams -l`, once per process; raises NotAnswered (and remembers it) when it fails."""
    if "text" not in _bparams_cache:
        try:
            _bparams_cache["text"] = run_query(["bparams", "-l"], delays=[1.0])
        except NotAnswered as exc:
            _bparams_cache["text"] = exc
    got = _bparams_cache["text"]
    if isinstance(got, NotAnswered):
        raise got
    return got


def read_bparams(text: str) -> int | None:
    """MAX_JOB_ARRAY_SIZE from `bparams -l` ("    MAX_JOB_ARRAY_SIZE = 1000")."""
    m = re.search(r"MAX_JOB_ARRAY_SIZE\s*=\s*(\d+)", text)
    return int(m.group(1)) if m else None


def read_sleep_time(text: str) -> int | None:
    """MBD_SLEEP_TIME from `bparams -l` ("    MBD_SLEEP_TIME = 2 (seconds)")."""
    m = re.search(r"MBD_SLEEP_TIME\s*=\s*(\d+)", text)
    return int(m.group(1)) if m else None


UNKNOWN_SLEEP_S = 60  # MBD_SLEEP_TIME when bparams does not say (10.1's default is 10)


def dependent_begin(now: float, sleep_s: int | None) -> str:
    """The `bsub -b` time ("month:day:hour:minute", the submitting host's local time) that
    keeps an OpenLava-family job with a `-w` dependency from starting before mbatchd has
    evaluated the dependency once.

    volclava 2.2 / OpenLava (lsbatch/daemons/mbd.job.c, handleNewJob) mark every new job ready
    for dispatch (JFLAG_READY2) whatever its dependency; only checkJgrpDep (mbd.main.c, once
    per MBD_SLEEP_TIME) clears the mark and evaluates `done(...)`. A job submitted while a slot
    is free can therefore start in that window with its parent still pending (seen here: the
    second stage ran at once and failed on its parent's missing model). A begin time after two
    of those passes closes the window; bsub's -b counts whole minutes (gettimefor in
    lsbatch/lib/lsb.sub.c; 10.1: "[[[year:]month:]day:]hour:minute"), so it is the first whole
    minute at least 2 x MBD_SLEEP_TIME + 5 s away. A dependent job waits for its parent
    anyway; the cost is at most that minute."""
    sleep = UNKNOWN_SLEEP_S if sleep_s is None else sleep_s
    at = math.ceil((now + 2 * sleep + 5) / 60) * 60
    return time.strftime("%m:%d:%H:%M", time.localtime(at))


def begin_option(st: Site) -> str | None:
    """The option line a job with a dependency needs on `st`: `-b` on the OpenLava family (see
    dependent_begin), none on LSF 10.1."""
    if not st.openlava:
        return None
    try:
        sleep = read_sleep_time(bparams_text())
    except NotAnswered:
        sleep = None
    return f"-b {dependent_begin(time.time(), sleep)}"


class LsfBackend(SchedulerBackend):
    name = "lsf"
    index_var = "LSB_JOBINDEX"
    command = "bsub"

    def site_limits(self) -> tuple[int | None, list[str]]:
        try:
            size = read_bparams(bparams_text())
        except NotAnswered as exc:
            return None, [f"LSF: MAX_JOB_ARRAY_SIZE not read ({exc}): arrays of at most 1000 "
                          "jobs (LSF's default)"]
        return size, ([f"LSF: MAX_JOB_ARRAY_SIZE = {size} (bparams -l): arrays of at most "
                       f"{size} jobs"] if size else
                      ["LSF: bparams -l names no MAX_JOB_ARRAY_SIZE: arrays of at most 1000 "
                       "jobs (LSF's default)"])

    def render(self, spec: Spec, jobs: list[Job], configs: dict[str, ConfigRef], sweep_dir: Path,
               tag: str = "") -> list[tuple[Path, list[Job]]]:
        from jobs.scripts import render_arrays_with_jobs

        return render_arrays_with_jobs("lsf", spec, jobs, configs, sweep_dir, tag,
                                       site=site(spec.resources),
                                       chunk=self.array_size(spec)[0])

    def render_single(self, spec: Spec, job: Job, config: ConfigRef, sweep_dir: Path) -> Path:
        from jobs.scripts import render_single

        return render_single("lsf", spec, job, config, sweep_dir,
                             site=site(spec.resources))

    def describe(self, spec: Spec) -> list[str]:
        size, why = self.array_size(spec)
        return [*notes(spec.resources, site(spec.resources)), *self.site_limits()[1],
                f"LSF: {size} jobs per array ({why})"]

    def dependency_option(self, ref: str) -> str:
        return f'-w "done({ref})"'

    def submit_line(self, script: Path, after: str | None = None,
                    elements: Elements | None = None) -> str:
        dep = f"{self.dependency_option(after)} " if after else ""
        part = f"-J {shlex.quote(array_name(script, elements))} " if elements else ""
        return f"bsub {part}{dep}< {shlex.quote(str(script))}"

    first_index = 1  # LSF numbers array elements from 1

    def submit(self, spec: Spec, jobs: list[Job], deps: list[str | None],
               configs: dict[str, ConfigRef], sweep_dir: Path, tag: str = "") -> list[Submitted]:
        self._site = site(spec.resources)
        return super().submit(spec, jobs, deps, configs, sweep_dir, tag)

    _site: Site | None = None

    def send(self, script: Path, after: str | None = None,
             elements: Elements | None = None) -> str:
        begin = begin_option(self._site or site(Resources())) if after else None
        extra = (begin.split() if begin else []) + (
            ["-J", array_name(script, elements)] if elements else [])
        return bsub(script, after, extra)

    def states(self, sweep_dir: Path, ids: list[str]) -> dict[str, str]:
        ids = [i for i in ids if valid_id(i)]
        if not ids:
            return {}
        mains = sorted({i.split("_")[0] for i in ids}, key=int)
        known = run_query(["bjobs", "-a", "-o", FIELDS, "-json", *mains], accept_rc=(0, 255),
                          parse=read_bjobs)
        out: dict[str, str] = {}
        forgotten = []
        for i in ids:
            stat = known.get(i)
            if stat is not None:
                out[i] = STATES.get(stat) or (
                    f"{UNSURE}LSF lost contact with the job's host ({stat})")
                continue
            code = _exit_code(exit_code_file(sweep_dir, i))
            if code is not None:
                out[i] = "COMPLETED" if code == 0 else "FAILED"
            else:
                forgotten.append(i)
        if forgotten:  # bjobs does not list them: does the history show a run still open?
            try:
                history = run_query(["bhist", "-l", *[lsf_target(i) for i in forgotten]],
                                    accept_rc=(0, 255), parse=_bhist_answer)
            except NotAnswered as exc:
                history = {i: f"{UNSURE}bjobs does not list it and bhist did not answer: "
                              f"{exc}" for i in forgotten}
            for i in forgotten:
                seen = history.get(i)
                if seen is None:
                    out[i] = "UNKNOWN"  # neither bjobs nor bhist knows it, no exit code
                elif seen.startswith(UNSURE):
                    out[i] = seen
                elif seen == "open":
                    out[i] = f"{UNSURE}bjobs does not list it but bhist shows a run that may " \
                             "still be alive"
                else:
                    out[i] = "FAILED" if seen.endswith("EXIT") else "COMPLETED"
        return out

    def cancel(self, sweep_dir: Path, ids: list[str]) -> None:
        targets = [lsf_target(i) for i in ids if valid_id(i)]
        if targets:
            subprocess.run(["bkill", *targets], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=120, check=False)

    def job_id_in_job(self) -> str | None:
        job, index = os.environ.get("LSB_JOBID"), os.environ.get(self.index_var, "0")
        if not job:
            return None
        return job if index in ("", "0") else f"{job}_{index}"

    def requeue_argv(self, job_id: str) -> list[str] | None:
        return ["brequeue", lsf_target(job_id)] if valid_id(job_id) else None


def _bhist_answer(text: str) -> dict[str, str]:
    """bhist's output, or "No matching job found" (exit 255): nothing of those ids."""
    if "No matching job" in text and "Job <" not in text:
        return {}
    if text.strip() and "Job <" not in text:
        raise ValueError("no job block")
    return read_bhist(text)
