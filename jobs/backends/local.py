"""The local backend: jobs as subprocesses on this machine, one GPU set each, bounded parallelism.

Stages by ordering: a job whose previous-stage job is part of the same run starts once that one
completed; if it failed (or was skipped), the job is skipped and recorded so (rerun on the next
launch, after its parent).

Children run in their own sessions so that Ctrl-C reaches only this launcher, which forwards
SIGINT to every running job (each records `interrupted` in its status), waits, and marks them.

A launcher killed outright (SIGKILL, a closed terminal) cannot stop its jobs: they run on. The
ledger holds each job's pid with its start time (quantlib.procs), so `sweep status` shows them
running (orphaned), and the next launch adopts them: it never starts a job whose process is still
alive; it waits for it like one of its own (a slot, its GPUs), then reads how it ended from its
files.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from jobs.backends.base import Backend
from jobs.grid import Job
from jobs.ledger import Ledger
from jobs.runtime import LOG
from quantlib.errors import os_error
from quantlib.jobdir import is_complete, read_status
from quantlib.procs import alive, start_token

if TYPE_CHECKING:
    from jobs.spec import Spec
    from quantlib.jobdir import ConfigRef

GRACE_SECONDS = 60.0
POLL_SECONDS = 0.2


def visible_gpus() -> list[str]:
    """GPU ids jobs may use: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


class _Adopted:
    """A job process an earlier launcher started (not our child): polled by pid and start time.
    Its exit status is not ours to read (returncode None): its files say how it ended."""

    returncode = None

    def __init__(self, pid: int, token: str | None):
        self.pid, self.token = pid, token

    def poll(self) -> int | None:
        return None if alive(self.pid, self.token) else 0

    def wait(self) -> None:
        while self.poll() is None:
            time.sleep(POLL_SECONDS)


@dataclass
class _Running:
    job: Job
    proc: subprocess.Popen | _Adopted
    gpus: list[str]
    log: IO[bytes] | None
    start: float
    log_path: Path | None = None


@dataclass
class LocalRun:
    ledger: Ledger
    jobs: list[tuple[Job, tuple[Path, int], str]]  # (job, (its script, its index there), label)
    max_parallel: int
    gpus_per_job: int
    gpu_pool: list[str]
    log_dir: Path
    stream: IO[str] = sys.stderr
    adopted: list[tuple[Job, str]] = field(default_factory=list)  # (job, label): still running
    counts: dict[str, int] = field(default_factory=lambda: {
        "completed": 0, "failed": 0, "interrupted": 0, "skipped": 0})
    _interrupted: bool = False

    def run(self) -> int:
        """Run everything; return 0 when all completed, 1 if any failed, 130 if interrupted."""
        pending = list(self.jobs)
        running: dict[str, _Running] = {}
        free = list(self.gpu_pool)
        in_run = {j.id for j, _, _ in self.jobs} | {j.id for j, _ in self.adopted}
        self.labels = ({j.id: lbl for j, _, lbl in self.jobs}
                       | {j.id: lbl for j, lbl in self.adopted})
        self.finished: dict[str, str] = {}
        for job, label in self.adopted:
            running[job.id] = r = self._adopt(job)
            free = [g for g in free if g not in r.gpus]
            self._progress(len(running), len(pending), f"adopted {label} (pid {r.proc.pid})")

        def ready(job: Job) -> bool:
            return (job.after is None or job.after not in in_run
                    or self.finished.get(job.after) == "completed")

        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            while (pending and not self._interrupted) or running:
                self._skip_blocked(pending)
                while pending and not self._interrupted and len(running) < self.max_parallel:
                    if self.gpu_pool and len(free) < self.gpus_per_job:
                        break
                    i = next((i for i, item in enumerate(pending) if ready(item[0])), None)
                    if i is None:
                        break  # the rest wait for jobs that are running
                    job, script, label = pending.pop(i)
                    gpus = [free.pop(0) for _ in range(self.gpus_per_job)] if self.gpu_pool else []
                    try:
                        running[job.id] = self._start(job, script, gpus)
                    except OSError as exc:  # its log cannot be created (disk full): not run
                        free += gpus
                        self.finished[job.id] = "failed"
                        self.counts["failed"] += 1
                        self.ledger.update(job.id, state="failed", backend="local", pid=None,
                                           reason=f"not started: {os_error(exc)}")
                        self._progress(len(running), len(pending), f"failed {label}")
                        continue
                    self._progress(len(running), len(pending), f"started {label}")
                if self._interrupted:
                    self._stop(running)
                for jid, r in list(running.items()):
                    if r.proc.poll() is None:
                        continue
                    state = self._finish(r)
                    self.finished[jid] = state
                    free += r.gpus
                    del running[jid]
                    label = self.labels[jid]
                    self._progress(len(running), len(pending),
                                   f"{state} {label} ({time.monotonic() - r.start:.0f}s)")
                if pending and not running and not self._interrupted and not any(
                        ready(item[0]) for item in pending):
                    self._skip_blocked(pending)
                    if pending and not any(ready(item[0]) for item in pending):
                        raise RuntimeError("jobs wait for jobs that are not part of the run")
                    continue
                time.sleep(POLL_SECONDS)
        finally:
            signal.signal(signal.SIGINT, previous)
        if self._interrupted:
            return 130
        return 1 if self.counts["failed"] or self.counts["skipped"] else 0

    def _skip_blocked(self, pending: list[tuple[Job, tuple[Path, int], str]]) -> None:
        """Jobs whose previous-stage job ended without completing never start."""
        changed = True
        while changed:
            changed = False
            for item in list(pending):
                job, _, label = item
                parent_state = self.finished.get(job.after or "")
                if parent_state is None or parent_state == "completed":
                    continue
                pending.remove(item)
                self.finished[job.id] = "skipped"
                self.counts["skipped"] += 1
                self.ledger.update(job.id, state="skipped", backend="local", exit_status=None,
                                   reason=f"not started: its previous-stage job {job.after} "
                                          f"{parent_state}")
                self._progress(0, len(pending), f"skipped {label}")
                changed = True

    def _on_sigint(self, signum, frame) -> None:  # noqa: ARG002
        if self._interrupted:  # second Ctrl-C: stop waiting politely
            raise KeyboardInterrupt
        self._interrupted = True
        print("\nsweep: interrupted: stopping running jobs (Ctrl-C again to kill them)",
              file=self.stream, flush=True)

    def _start(self, job: Job, script: tuple[Path, int], gpus: list[str]) -> _Running:
        env = dict(os.environ)
        env[LocalBackend.index_var] = str(script[1])
        if self.gpu_pool or self.gpus_per_job == 0:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        if "OMP_NUM_THREADS" not in os.environ:  # share the cores instead of oversubscribing
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.max_parallel))
        log_path = self.log_dir / f"{job.id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")
        proc = subprocess.Popen(["bash", str(script[0])], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        entry = self.ledger.jobs[job.id]
        self.ledger.update(job.id, state="running", backend="local", pid=proc.pid,
                           pid_start=start_token(proc.pid), host=socket.gethostname(),
                           gpus=gpus, log=str(log_path), attempts=entry.get("attempts", 0) + 1,
                           exit_status=None, reason=None)
        return _Running(job, proc, gpus, log, time.monotonic(), log_path)

    def _adopt(self, job: Job) -> _Running:
        entry = self.ledger.jobs[job.id]
        pid = entry["pid"]
        self.ledger.update(job.id, state="running", reason=f"adopted: started by an earlier "
                           f"launch whose launcher stopped; still running (pid {pid})")
        gpus = [str(g) for g in entry.get("gpus") or []]
        log = entry.get("log")
        return _Running(job, _Adopted(pid, entry.get("pid_start")), gpus, None,
                        time.monotonic(), Path(log) if log else None)

    def _finish(self, r: _Running) -> str:
        if r.log is not None:
            r.log.close()
        rc = r.proc.returncode
        status = read_status(r.job.output_dir) or {}
        if rc in (0, None) and is_complete(r.job.output_dir):
            state, reason = "completed", None
        elif self._interrupted or status.get("state") == "interrupted":
            state, reason = "interrupted", status.get("reason") or "stopped by Ctrl-C"
        else:
            state = "failed"
            reason = status.get("reason") or _last_word(r.log_path) or (
                f"exit status {rc}" if rc else "exited 0 without results" if rc == 0
                else "ended without results (adopted: its exit status is unknown)")
        self.counts[state] += 1
        self.ledger.update(r.job.id, state=state, exit_status=rc, reason=reason, pid=None)
        return state

    @staticmethod
    def _signal(running: dict[str, _Running], sig: signal.Signals) -> None:
        for r in running.values():
            if r.proc.poll() is None:
                try:
                    os.killpg(r.proc.pid, sig)
                except ProcessLookupError:
                    pass

    def _stop(self, running: dict[str, _Running]) -> None:
        """SIGINT every running job, wait for them; SIGKILL after the grace period or on a
        second Ctrl-C."""
        self._signal(running, signal.SIGINT)
        deadline = time.monotonic() + GRACE_SECONDS
        try:
            while any(r.proc.poll() is None for r in running.values()):
                if time.monotonic() > deadline:
                    raise KeyboardInterrupt
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            self._signal(running, signal.SIGKILL)
            for r in running.values():
                r.proc.wait()

    def _progress(self, running: int, left: int, event: str) -> None:
        c = self.counts
        line = (f"[{self.ledger.data.get('sweep', '')}] done {c['completed']} | running "
                f"{running} | failed {c['failed']} | left {left}   ({event})")
        if self.stream.isatty():
            self.stream.write("\r\033[K" + line)
            if not running and not left:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _last_word(log_path: Path | None) -> str | None:
    """The job's own last word on why it stopped, when it could not write status.json (a full
    disk): the last line of its log that jobs.runtime wrote (LOG)."""
    if log_path is None:
        return None
    try:
        with open(log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            tail = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    said = [line.removeprefix(LOG).strip() for line in tail.splitlines()
            if line.startswith(f"{LOG} ")]
    return said[-1][:500] if said else None


class LocalBackend(Backend):
    """This machine: the launcher runs the jobs itself (LocalRun); no scheduler to ask."""

    name = "local"
    index_var = "QUANTSWEEP_TASK"  # set by the launcher (LocalRun._start): job N of a script
    first_index = 1
    scheduler = False

    def render(self, spec: Spec, jobs: list[Job], configs: dict[str, ConfigRef], sweep_dir: Path,
               tag: str = "") -> list[tuple[Path, list[Job]]]:
        """Scripts of up to 1,000 jobs each, as a cluster's arrays (every stage's jobs together:
        the launcher starts a later-stage job once its parent completed)."""
        from jobs.scripts import render_local

        return render_local(spec, jobs, configs, sweep_dir)

    def dependency_option(self, ref: str) -> str:
        return f"# after {ref} completes"

    def submit_line(self, script: Path, after: str | None = None,
                    elements: Any = None) -> str:
        return f"bash {shlex.quote(str(script))}" + (f"  # after {after} completes"
                                                      if after else "")

    def states(self, sweep_dir: Path, ids: list[str]) -> dict[str, str]:
        return {}  # the ledger and the recorded processes say it (quantlib.jobdir.job_state)

    def cancel_entry(self, entry: dict) -> None:
        """SIGINT to the job's process group, only when the recorded pid, start time and host
        prove that it is that very process (not another that got the pid since)."""
        from quantlib.procs import job_process_alive

        pid = entry.get("pid")
        if isinstance(pid, int) and not isinstance(pid, bool) and pid > 1 \
                and job_process_alive(entry):
            try:
                os.killpg(pid, signal.SIGINT)
            except (ProcessLookupError, PermissionError):
                pass

    def cancel(self, sweep_dir: Path, ids: list[str]) -> None:
        """SIGINT to the jobs `ids` (job ids) of the sweep in `sweep_dir`, each only when its
        recorded process is provably still that job (cancel_entry)."""
        ledger = Ledger(sweep_dir)
        for jid in ids:
            if jid in ledger.jobs:
                self.cancel_entry(ledger.jobs[jid])
