"""SLURM: `sweep launch` submits the very scripts `--dry-run` renders (one truth).

Each chunk of up to MAX_ARRAY jobs is one `#SBATCH --array` script (scripts/slurm_array_N.sh),
a later-stage job its own script (scripts/slurm_<id>.sh), submitted with `sbatch --parsable`
and, for the latter, `--dependency=afterok:<parent> --kill-on-invalid-dep=yes`. In the script
the job's Python replaces the shell: SLURM's warning (`--signal=B:USR2@N`) reaches it, it
checkpoints and requeues the job itself (`scontrol requeue`, jobs.runtime). Logs: logs/%A_%a.out
(array element) or logs/%j.out. States: one `sacct` call per sweep; a failing or busy sacct
("Socket timed out", slurmdbd down) is no answer, never a lost job.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.backends.base import Elements, NotAnswered, SchedulerBackend, run_query
from quantlib.jobdir import valid_id

if TYPE_CHECKING:
    from jobs.grid import Job
    from jobs.spec import Spec
    from quantlib.jobdir import ConfigRef


def array_option(elements: Elements) -> str:
    """Some elements of an array script (the command line's --array wins over #SBATCH's)."""
    return f"--array={elements.first}-{elements.last}" + (
        f"%{elements.parallel}" if elements.parallel else "")


def sbatch(script: Path, dependency: str | None = None,
           elements: Elements | None = None) -> str:
    """Submit one script; the job id sbatch gives (--parsable: "ID" or "ID;cluster")."""
    cmd = ["sbatch", "--parsable"] + ([array_option(elements)] if elements else [])
    if dependency:
        cmd += [f"--dependency=afterok:{dependency}", "--kill-on-invalid-dep=yes"]
    try:
        proc = subprocess.run([*cmd, str(script)], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(str(exc)) from None
    job_id = proc.stdout.strip().split(";")[0]
    if proc.returncode != 0 or not job_id.isdigit():
        raise RuntimeError(" ".join((proc.stderr or proc.stdout).split())[:300]
                           or f"exit status {proc.returncode}")
    return job_id


def read_sacct(text: str) -> dict[str, str]:
    """`sacct -o JobID,State --parsable2` -> {id: STATE}, through submitit's reader (it expands
    array ranges such as `6_[4-5%6]`), except that an element's own record wins over its
    array's pending range: sacct lists `6_4 RUNNING` and, for a while after the element
    started, still `6_[4-5%6] PENDING`; submitit keeps whichever line came last."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    lines = text.splitlines()
    if not lines or not lines[0].startswith("JobID|"):
        raise ValueError("no JobID|State header")
    head = lines[0]
    ranges = [ln for ln in lines[1:] if "[" in ln.split("|", 1)[0]]
    singles = [ln for ln in lines[1:] if "[" not in ln.split("|", 1)[0]]
    watcher = SlurmInfoWatcher(delay_s=0)
    info = {**watcher.read_info("\n".join([head, *ranges])),
            **watcher.read_info("\n".join([head, *singles]))}
    return {k: str(v.get("State") or "UNKNOWN").split()[0].upper() for k, v in info.items()}


_limits_cache: dict[str, tuple[int | None, list[str]]] = {}


def read_config(text: str) -> dict[str, str]:
    """`scontrol show config` -> {name: value} ("MaxArraySize            = 1001")."""
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() and " " not in name.strip():
            out[name.strip()] = value.strip()
    if not out:
        raise ValueError("no NAME = VALUE lines")
    return out


class SlurmBackend(SchedulerBackend):
    name = "slurm"
    index_var = "SLURM_ARRAY_TASK_ID"
    command = "sbatch"

    def site_limits(self) -> tuple[int | None, list[str]]:
        """MaxArraySize (indices 0..MaxArraySize-1: that many elements) and MaxJobCount from
        `scontrol show config`, the association's MaxSubmitJobs from `sacctmgr show assoc`
        where accounting answers."""
        if "limits" in _limits_cache:
            return _limits_cache["limits"]
        said: list[str] = []
        size = None
        try:
            conf = run_query(["scontrol", "show", "config"], parse=read_config, delays=[1.0])
        except NotAnswered as exc:
            said.append(f"SLURM: MaxArraySize not read ({exc}): arrays of at most 1000 jobs")
        else:
            text = conf.get("MaxArraySize", "")
            size = int(text) if text.isdigit() and int(text) > 0 else None
            said.append(f"SLURM: MaxArraySize = {text or '?'} (scontrol show config): arrays "
                        f"of at most {size or 1000} jobs")
            if conf.get("MaxJobCount", "").isdigit():
                said.append(f"SLURM: MaxJobCount = {conf['MaxJobCount']}: the controller holds "
                            "at most that many jobs at once (every user's)")
        import getpass

        try:
            assoc = run_query(["sacctmgr", "-n", "-P", "show", "assoc",
                               f"user={getpass.getuser()}", "format=MaxSubmitJobs"],
                              delays=[])
            caps = sorted({int(x) for x in assoc.split() if x.strip().isdigit()})
            if caps:
                said.append(f"SLURM: MaxSubmitJobs = {caps[0]} for {getpass.getuser()} "
                            "(sacctmgr): a sweep of more jobs is refused partway; split it")
        except (NotAnswered, KeyError, OSError):
            pass
        _limits_cache["limits"] = (size, said)
        return size, said

    def describe(self, spec: Spec) -> list[str]:
        size, why = self.array_size(spec)
        return [*self.site_limits()[1], f"SLURM: {size} jobs per array ({why})"]

    def render(self, spec: Spec, jobs: list[Job], configs: dict[str, ConfigRef], sweep_dir: Path,
               tag: str = "") -> list[tuple[Path, list[Job]]]:
        from jobs.scripts import render_arrays_with_jobs

        return render_arrays_with_jobs("slurm", spec, jobs, configs, sweep_dir, tag,
                                       chunk=self.array_size(spec)[0])

    def render_single(self, spec: Spec, job: Job, config: ConfigRef, sweep_dir: Path) -> Path:
        from jobs.scripts import render_single

        return render_single("slurm", spec, job, config, sweep_dir)

    def dependency_option(self, ref: str) -> str:
        return f"--dependency=afterok:{ref} --kill-on-invalid-dep=yes"

    def submit_line(self, script: Path, after: str | None = None,
                    elements: Elements | None = None) -> str:
        dep = f"{self.dependency_option(after)} " if after else ""
        part = f"{array_option(elements)} " if elements else ""
        return f"sbatch --parsable {part}{dep}{shlex.quote(str(script))}"

    def send(self, script: Path, after: str | None = None,
             elements: Elements | None = None) -> str:
        return sbatch(script, after, elements)

    def states(self, sweep_dir: Path, ids: list[str]) -> dict[str, str]:
        ids = [i for i in ids if valid_id(i)]
        if not ids:
            return {}
        mains = sorted({i.split("_")[0] for i in ids}, key=int)
        known = run_query(["sacct", "-o", "JobID,State", "--parsable2", "-j", ",".join(mains)],
                          parse=read_sacct)
        # sacct answered: an id it does not list is one it does not know
        return {i: known.get(i, "UNKNOWN") for i in ids}

    def cancel(self, sweep_dir: Path, ids: list[str]) -> None:
        targets = [i for i in ids if valid_id(i)]
        if targets:
            subprocess.run(["scancel", *targets], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=120, check=False)

    def job_id_in_job(self) -> str | None:
        array = os.environ.get("SLURM_ARRAY_JOB_ID")
        if array:
            return f"{array}_{os.environ.get(self.index_var)}"
        return os.environ.get("SLURM_JOB_ID") or None

    def requeue_argv(self, job_id: str) -> list[str] | None:
        return ["scontrol", "requeue", job_id] if valid_id(job_id) else None
