"""What every backend is: one small interface, as submitit's Executor / Job / JobEnvironment.

A backend renders the job scripts of a sweep (what `--dry-run` shows and `launch` submits),
submits them, reads the states of the jobs it submitted, cancels them, says where a job's log
is, how a job waits for another, and how a job requeues itself from inside. `local`, `slurm` and
`lsf` each implement it in one module; jobs.backends registers them (the CLI's `--backend`
choices come from there).

A scheduler's silence is not evidence: a status query that fails, times out, prints one of the
"busy" answers or output that does not parse raises NotAnswered after a bounded number of
retries, and the caller keeps every job in its last known state (quantlib.jobdir.job_state:
`unknown`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from quantlib.errors import UserError
from quantlib.preemption import REQUEUE  # noqa: F401 (the exit status every backend reads)

if TYPE_CHECKING:
    from jobs.grid import Job
    from jobs.spec import Spec
    from quantlib.jobdir import ConfigRef

# answers of a scheduler that is there but did not answer this query (LSF's mbatchd when busy,
# SLURM's slurmctld / slurmdbd under load): never read as "the job is unknown"
BUSY = re.compile(r"LSF is processing your request|Please wait|concurrent query limit|"
                  r"Socket timed out|Unable to contact slurm controller|Connection refused|"
                  r"batch system daemon not responding|LSF daemon \(LIM\) not responding|"
                  r"Cannot connect|slurm_load_jobs error|Failed to contact|temporarily "
                  r"unavailable|Timed out|not responding", re.IGNORECASE)
@dataclass(frozen=True)
class Elements:
    """Some elements of an array script, submitted on their own (those that wait for one same
    job): indices first..last as the script numbers them, at most `parallel` running at once."""

    first: int
    last: int
    parallel: int | None = None


@dataclass(frozen=True)
class Submitted:
    """A job the scheduler took: its id ("123_4" for an array element) and its log file."""

    job_id: str
    log: Path


class Refused(UserError):
    """The scheduler refused a submission; `submitted` maps the positions of the jobs it had
    already taken to their Submitted (they are queued: the caller records them)."""

    def __init__(self, message: str, submitted: dict[int, Submitted]):
        super().__init__(message)
        self.submitted = submitted


class NotAnswered(Exception):
    """A scheduler query got no usable answer (after its retries): nothing is learnt from it."""


def query_timeout_s() -> float:
    """Seconds one scheduler query may take (QUANTSWEEP_QUERY_TIMEOUT_S; tests shorten it)."""
    try:
        return max(0.1, float(os.environ.get("QUANTSWEEP_QUERY_TIMEOUT_S", "30")))
    except ValueError:
        return 30.0


def query_delays() -> list[float]:
    """The waits between retries of a failed query (QUANTSWEEP_QUERY_RETRIES: seconds, comma
    separated; default 1, 2, 4: seven seconds and four attempts at most per query)."""
    text = os.environ.get("QUANTSWEEP_QUERY_RETRIES", "1,2,4")
    try:
        return [max(0.0, float(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        return [1.0, 2.0, 4.0]


def run_query(argv: list[str], accept_rc: tuple[int, ...] = (0,),
              parse: Any = None, delays: list[float] | None = None) -> Any:
    """Run a read-only scheduler command with a timeout, retrying with backoff while it fails,
    hangs, answers "busy" or prints what `parse` cannot read (parse raises ValueError). Returns
    parse(stdout) (or stdout); raises NotAnswered with the last reason. A non-zero exit status
    in `accept_rc` is an answer (bjobs exits 255 when an id is unknown), unless it says busy.
    `delays`: the waits between attempts (default query_delays())."""
    delays = query_delays() if delays is None else delays
    reason = "no attempt"
    for attempt in range(len(delays) + 1):
        if attempt:
            time.sleep(delays[attempt - 1])
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                                  timeout=query_timeout_s(), stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            reason = f"`{argv[0]}` did not answer within {query_timeout_s():g} s"
            continue
        except FileNotFoundError:
            raise NotAnswered(f"`{argv[0]}` is not on PATH") from None
        except OSError as exc:
            reason = f"`{argv[0]}`: {exc.strerror or exc}"
            continue
        said = " ".join(f"{proc.stderr} {proc.stdout}".split())
        if BUSY.search(proc.stderr or "") or (proc.returncode != 0 and BUSY.search(said)):
            reason = f"`{argv[0]}`: {said[:200]}"
            continue
        if proc.returncode not in accept_rc:
            reason = f"`{argv[0]}` exited {proc.returncode}: {said[:200] or 'no output'}"
            continue
        try:
            return parse(proc.stdout) if parse else proc.stdout
        except (ValueError, KeyError, TypeError) as exc:
            reason = f"`{argv[0]}` printed what does not parse ({exc}): {said[:120]}"
            continue
    raise NotAnswered(reason)


class Backend(ABC):
    """One backend. Class attributes say what it is; methods are called per sweep. A backend
    that submits to a scheduler is a SchedulerBackend (below); `local` runs the jobs itself."""

    name: ClassVar[str]
    command: ClassVar[str | None] = None  # the submission command that must be on PATH
    scheduler: ClassVar[bool] = False  # True: a SchedulerBackend
    index_var: ClassVar[str]  # the variable that tells a job of an array script which it is
    first_index: ClassVar[int] = 0  # an array's first element (LSF numbers them from 1)

    # --- rendering (torch-free; the dry run and launch call the same code) ---------------
    @abstractmethod
    def render(self, spec: Spec, jobs: list[Job], configs: dict[str, ConfigRef], sweep_dir: Path,
               tag: str = "") -> list[tuple[Path, list[Job]]]:
        """The array scripts of `jobs` (one stage), with their jobs in array order."""

    @abstractmethod
    def submit_line(self, script: Path, after: str | None = None,
                    elements: Elements | None = None) -> str:
        """The shell command that submits `script` (after the job `after`, a scheduler id or a
        shell expression of one; only the array elements `elements`), as the dry run prints
        it."""

    def describe(self, spec: Spec) -> list[str]:
        """Lines the dry run prints about this backend's choices (dialect, units, limits)."""
        return []

    def site_limits(self) -> tuple[int | None, list[str]]:
        """(the most elements an array may have here, or None when the scheduler does not say;
        what was read, as lines for the dry run). Asked once per process."""
        return None, []

    def array_size(self, spec: Spec) -> tuple[int, str]:
        """How many jobs go in one array, and why: the spec's resources.max_array_size, else the
        scheduler's limit, else MAX_ARRAY (1000)."""
        from jobs.resources import MAX_ARRAY

        if spec.resources.max_array_size:
            return spec.resources.max_array_size, "resources.max_array_size"
        limit, _ = self.site_limits()
        if limit:
            return limit, f"the {self.name.upper()} site's limit"
        return MAX_ARRAY, "the scheduler did not say: the common default"

    @abstractmethod
    def dependency_option(self, ref: str) -> str:
        """The option that holds a job until `ref` completed successfully."""

    @abstractmethod
    def states(self, sweep_dir: Path, ids: list[str]) -> dict[str, str]:
        """{id: state} in submitit's words (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ...)
        for every id the scheduler answered about; "UNKNOWN" where it answered that it does not
        know the id and nothing shows a run of it that could still be alive. Raises
        NotAnswered when the scheduler did not answer."""

    @abstractmethod
    def cancel(self, sweep_dir: Path, ids: list[str]) -> None:
        """Stop the jobs `ids` (scheduler ids; local: job ids) if they are queued or running."""

    def log_path(self, sweep_dir: Path, entry: dict[str, Any]) -> str:
        return entry.get("log") or "-"

    # --- inside a running job --------------------------------------------------------------
    def job_id_in_job(self) -> str | None:
        """The scheduler id of the job this process runs in ("123_4" for an element)."""
        return None

    def requeue_argv(self, job_id: str) -> list[str] | None:
        """The command that requeues the running job `job_id` (it stops at its checkpoint and
        the scheduler runs it again under the same id); None: this backend cannot."""
        return None


class SchedulerBackend(Backend):
    """A backend that submits the rendered scripts to a scheduler (`command` on PATH) and asks
    it for states; its jobs requeue themselves from inside (requeue_argv)."""

    scheduler: ClassVar[bool] = True

    # --- the scheduler -------------------------------------------------------------------
    def require(self) -> None:
        if self.command and shutil.which(self.command) is None:
            raise UserError(f"--backend {self.name}: `{self.command}` is not on PATH: run on a "
                            f"{self.name.upper()} login node, or use --dry-run to render the "
                            "scripts")


    @abstractmethod
    def render_single(self, spec: Spec, job: Job, config: ConfigRef, sweep_dir: Path) -> Path:
        """The script of one later-stage job (its dependency is given at submission)."""

    @abstractmethod
    def send(self, script: Path, after: str | None = None,
             elements: Elements | None = None) -> str:
        """Submit one script (held until the job `after` completed; of an array script, only
        `elements`); the id the scheduler gives. Raises RuntimeError with the scheduler's words
        when it refuses."""

    def submit(self, spec: Spec, jobs: list[Job], deps: list[str | None],
               configs: dict[str, ConfigRef], sweep_dir: Path, tag: str = "") -> list[Submitted]:
        """Submit one stage's jobs: the scripts render() writes, those without a dependency as
        arrays, a later-stage job on its own after its dependency (a scheduler id), and the
        jobs after a shared fine-tuning as arrays rendered together and submitted by element
        ranges, one per parent (jobs.scripts.dependent_runs). Returns them in
        order; raises Refused with what was taken before a refusal (logs: logs/<id>.out)."""
        from jobs.pack import member_log
        from jobs.scripts import after_tag, dependent_runs, pack_size, packs_of

        logs = sweep_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)  # neither scheduler creates the log directory
        out: dict[int, Submitted] = {}
        position = {j.id: i for i, j in enumerate(jobs)}
        dep_of = {j.id: d for j, d in zip(jobs, deps)}
        free = [j for j in jobs if dep_of[j.id] is None]
        dependent = [j for j in jobs if dep_of[j.id] is not None]
        single, grouped = dependent_runs(dependent)
        n = pack_size(self.name, spec)

        def record(array: str, index: int, pack: list[Job]) -> None:
            sid = f"{array}_{index}"
            for job in pack:  # a pack's members: one scheduler id, each its own log
                out[position[job.id]] = Submitted(
                    sid, member_log(logs, sid, job.id) if n > 1 else logs / f"{sid}.out")

        try:
            for script, chunk in (self.render(spec, free, configs, sweep_dir, tag)
                                  if free else []):
                array = self.send(script)
                for index, pack in enumerate(packs_of(chunk, n), self.first_index):
                    record(array, index, pack)
            for job in single:
                job_id = self.send(self.render_single(spec, job, configs[job.id], sweep_dir),
                                   dep_of[job.id])
                out[position[job.id]] = Submitted(job_id, logs / f"{job_id}.out")
            for script, chunk in (self.render(spec, grouped, configs, sweep_dir,
                                              after_tag(tag)) if grouped else []):
                for first, run in runs_of(packs_of(chunk, n), self.first_index):
                    elements = Elements(first, first + len(run) - 1,
                                        spec.resources.array_parallelism)
                    array = self.send(script, dep_of[run[0][0].id], elements)
                    for index, pack in enumerate(run, first):
                        record(array, index, pack)
        except RuntimeError as exc:
            raise Refused(f"--backend {self.name}: `{self.command}` refused the submission: "
                          f"{exc}", out) from None
        return [out[i] for i in range(len(jobs))]


def runs_of(packs: list[list[Job]], first_index: int) -> list[tuple[int, list[list[Job]]]]:
    """An array script's elements (jobs.scripts.packs_of) cut into runs of consecutive
    elements after the same job: (the run's first element index, its elements)."""
    runs: list[tuple[int, list[list[Job]]]] = []
    for i, pack in enumerate(packs, first_index):
        if runs and runs[-1][1][-1][0].after == pack[0].after:
            runs[-1][1].append(pack)
        else:
            runs.append((i, [pack]))
    return runs
