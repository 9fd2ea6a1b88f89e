"""SLURM: `sweep launch` submits the very scripts `--dry-run` renders (one truth).

Each chunk of up to MAX_ARRAY jobs is one `#SBATCH --array` script (scripts/slurm_array_N.sh),
a later-stage job its own script (scripts/slurm_<id>.sh), submitted with `sbatch --parsable`
and, for the latter, `--dependency=afterok:<parent> --kill-on-invalid-dep=yes`. In the script
the job's Python replaces the shell: SLURM's warning (`--signal=B:USR2@N`) reaches it, it
checkpoints and requeues the job itself (`scontrol requeue`, quantlib.run). Logs: logs/%A_%a.out
(array element) or logs/%j.out.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from jobs.grid import Job
from jobs.scripts import render_arrays_with_jobs, render_single
from jobs.spec import Spec


@dataclass(frozen=True)
class Submitted:
    """A job the scheduler took: its id ("123_4" for an array element) and its log file."""

    job_id: str
    log: Path


class Refused(Exception):
    """sbatch refused a script; `submitted` maps positions of the items taken before it."""

    def __init__(self, message: str, submitted: dict[int, Submitted]):
        super().__init__(message)
        self.submitted = submitted


def sbatch(script: Path, dependency: str | None = None) -> str:
    """Submit one script; the job id sbatch gives (--parsable: "ID" or "ID;cluster")."""
    cmd = ["sbatch", "--parsable"]
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


def submit(spec: Spec, jobs: list[Job], deps: list[str | None], configs: dict[str, Path],
           sweep_dir: Path, tag: str = "") -> list[Submitted]:
    """Submit `jobs` (one stage): those without a dependency as arrays, each other one on its
    own after its dependency (a scheduler id). Returns them in order; raises Refused."""
    logs = sweep_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)  # SLURM does not create the log directory
    out: dict[int, Submitted] = {}
    position = {j.id: i for i, j in enumerate(jobs)}
    free = [j for j, d in zip(jobs, deps) if d is None]
    try:
        for script, chunk in render_arrays_with_jobs("slurm", spec, free, configs, sweep_dir,
                                                     tag):
            array = sbatch(script)
            for index, job in enumerate(chunk):
                out[position[job.id]] = Submitted(f"{array}_{index}",
                                                  logs / f"{array}_{index}.out")
        for job, dep in zip(jobs, deps):
            if dep is not None:
                job_id = sbatch(render_single("slurm", spec, job, configs[job.id], sweep_dir),
                                dep)
                out[position[job.id]] = Submitted(job_id, logs / f"{job_id}.out")
    except RuntimeError as exc:
        raise Refused(f"--backend slurm: `sbatch` refused the submission: {exc}", out) from None
    return [out[i] for i in range(len(jobs))]
