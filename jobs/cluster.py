"""Cluster backends: LSF through our submitit plugin (jobs.lsf); SLURM jobs are our own
scripts, submitted by jobs.slurm. Both are watched, cancelled and read here.

An LSF sweep goes out as job arrays (`map_array`, chunks of MAX_ARRAY); each element runs
`quantlib.run.run_config(CONFIG)`, the same entry point as the local backend. The scheduler is
asked for states in one call for all ids; it is advisory: files in each job's output directory
are the truth (see jobs.state).
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

from jobs.errors import UserError
from jobs.resources import MAX_ARRAY, Resources

SUBMITIT_DIR = "submitit"  # under the sweep directory: pickles, submission scripts, logs

COMMANDS = {"slurm": "sbatch", "lsf": "bsub"}


def executor_parameters(backend: str, name: str, res: Resources,
                        setup: list[str] | None = None) -> dict[str, Any]:
    """The LSF plugin's parameters for a sweep's jobs (backend: "lsf")."""
    assert backend == "lsf", backend
    return {"shell_setup": list(setup or []), "jobname": name, "run_limit_min": res.time_minutes,
            "cpus": res.cpus, "mem_mb": res.mem_mb, "gpus": res.gpus, "queue": res.queue,
            "project": res.project, "array_limit": res.array_parallelism,
            "gpu_syntax": res.lsf.gpu_syntax,
            "gpu_resource": res.lsf.gpu_resource, "mem_per": res.lsf.mem_per,
            "warn_minutes": res.lsf.warn_minutes, "extra": list(res.lsf.extra)}


def require(backend: str) -> None:
    command = COMMANDS[backend]
    if shutil.which(command) is None:
        raise UserError(f"--backend {backend}: `{command}` is not on PATH: run on a "
                        f"{backend.upper()} login node, or use --dry-run to render the scripts")


class PartialSubmission(UserError):
    """The scheduler refused a submission; `submitted` maps the positions of the items it
    had already taken to their jobs (they are queued: the caller must record them)."""

    def __init__(self, message: str, submitted: dict[int, Any]):
        super().__init__(message)
        self.submitted = submitted


def _python(res: Resources) -> str | None:
    """The interpreter the job runs (resources.python, quoted), or None for submitit's default:
    the one that launches."""
    return shlex.quote(res.python) if res.python else None


def make_executor(backend: str, folder: Path, name: str, res: Resources,
                  setup: list[str] | None = None):
    require(backend)
    from jobs.lsf import LsfExecutor

    executor = LsfExecutor(folder=folder, python=_python(res), max_num_timeout=res.max_requeues)
    params = {k: v for k, v in executor_parameters(backend, name, res, setup).items()
              if v is not None}
    executor.update_parameters(**params)
    return executor


def dependency_parameters(backend: str, res: Resources, after: str) -> dict[str, Any]:
    """Executor parameters that hold an LSF job until the job `after` (a submitit id, "123_4"
    for an array element) completed successfully; a failed one keeps it pending (until the
    sweep is relaunched, which resubmits both)."""
    return {"wait_done": after}


def submit(backend: str, folder: Path, name: str, res: Resources,
           items: list[tuple[str, str | None]], code: Path,
           env: list[str] | None = None) -> list[Any]:
    """Submit one job per (config, dependency), running the code snapshot `code`: those without
    a dependency as one array, each other one on its own, waiting for its dependency (a
    scheduler id). `env`: the shell lines to run first (default: the spec's exports and setup).
    Returns submitit jobs in the same order."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    from jobs.snapshot import pythonpath_line
    from quantlib.run import run_config

    setup = [*(res.shell_lines() if env is None else env), pythonpath_line(code)]
    free = [i for i, (_, dep) in enumerate(items) if dep is None]
    out: dict[int, Any] = {}
    try:
        if free:
            executor = make_executor(backend, folder, name, res, setup)
            # one array per MAX_ARRAY jobs (SLURM's MaxArraySize defaults to 1001, LSF's
            # MAX_JOB_ARRAY_SIZE to 1000), each recorded as soon as the scheduler has it
            for start in range(0, len(free), MAX_ARRAY):
                chunk = free[start:start + MAX_ARRAY]
                configs = [items[i][0] for i in chunk]
                handles = ([executor.submit(run_config, configs[0])] if len(chunk) == 1
                           else executor.map_array(run_config, configs))
                out.update(zip(chunk, handles))
        for i, (config, dep) in enumerate(items):
            if dep is not None:
                executor = make_executor(backend, folder, name, res, setup)
                executor.update_parameters(**dependency_parameters(backend, res, dep))
                out[i] = executor.submit(run_config, config)
        return [out[i] for i in range(len(items))]
    except (FailedSubmissionError, FailedJobError, OSError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise PartialSubmission(f"--backend {backend}: `{COMMANDS[backend]}` refused the "
                                f"submission: {detail}", out) from None


def job_handle(backend: str, folder: Path, scheduler_id: str):
    """A submitit job object for a recorded id (paths to its logs, cancel)."""
    if backend == "slurm":
        from submitit.slurm.slurm import SlurmJob

        return SlurmJob(folder=folder, job_id=scheduler_id)
    from jobs.lsf import LsfJob

    return LsfJob(folder=folder, job_id=scheduler_id)


def _slurm_watcher():
    """submitit's sacct reader, except that an array element's own record wins over the
    array's pending range: sacct lists `6_4 RUNNING` and, for a while after the element
    started, still `6_[4-5%6] PENDING`; submitit keeps whichever line came last."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    class ElementFirst(SlurmInfoWatcher):
        def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
            if isinstance(string, bytes):
                string = string.decode(errors="replace")
            lines = string.splitlines()
            if len(lines) < 2:
                return {}
            head = lines[0]
            ranges = [line for line in lines[1:] if "[" in line.split("|", 1)[0]]
            singles = [line for line in lines[1:] if "[" not in line.split("|", 1)[0]]
            return {**super().read_info("\n".join([head, *ranges])),
                    **super().read_info("\n".join([head, *singles]))}

    return ElementFirst(delay_s=0)


def scheduler_states(backend: str, folder: Path, ids: list[str]) -> dict[str, str]:
    """One sacct / bjobs call for every id; {id: submitit-style state}. UNKNOWN where the
    scheduler does not know the id (any more)."""
    if not ids or shutil.which("sacct" if backend == "slurm" else "bjobs") is None:
        return {}
    handles = {i: job_handle(backend, folder, i) for i in ids}
    watcher = next(iter(handles.values())).watcher if backend == "lsf" else _slurm_watcher()
    for i in ids:
        watcher.register_job(i)
    watcher.update()
    out = {}
    for i, handle in handles.items():
        state = handle.state if backend == "lsf" else watcher.get_state(i, mode="cache")
        out[i] = state.split()[0].upper() if state else "UNKNOWN"  # "CANCELLED by 0"
    return out


def cancel(backend: str, folder: Path, ids: list[str]) -> None:
    for i in ids:
        job_handle(backend, folder, i).cancel(check=False)
