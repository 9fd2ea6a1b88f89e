"""The job entry point: `python -m jobs.runtime CONFIG.json`, identical under every backend:
what every job does around its training (quantlib.job.run_job trains, evaluates and measures).

- the job directory held for this run (a lock: never two runs of one job at once), its
  config.json and status.json (running, then completed / failed / interrupted with a reason),
  eval_results.json and eval_results.txt (quantlib.jobdir);
- signals: SIGUSR2 (the schedulers' time-limit warning) checkpoints at the end of the current
  step and exits with preemption.REQUEUE, the next run of the same config resumes from the
  checkpoint; SIGTERM and SIGINT end it as interrupted;
- requeue: in a cluster script (QUANTSWEEP_REQUEUE) the backend's own command requeues the
  job (jobs.backends: `scontrol requeue`, `brequeue`), within resources.max_requeues;
- several GPUs (nproc_per_node): the ranks under torchrun, the warning passed to each.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from quantlib import preemption
from quantlib.atomic import write_json
from quantlib.jobdir import (
    CONFIG,
    is_complete,
    now,
    read_config,
    read_json,
    read_status,
    write_results,
    write_status,
)

LOG = "jobs.runtime:"  # the job's own lines in its log start so (the local launcher reads them)


class Terminated(BaseException):
    """SIGTERM (scheduler kill, time limit). A BaseException, like KeyboardInterrupt, so that no
    `except Exception` in library code swallows it."""


def _on_term(signum, frame):  # noqa: ARG001
    raise Terminated(f"signal {signal.Signals(signum).name}")


def _leave_process_group() -> None:
    """Under torchrun: every rank waits for the others, then leaves the process group, before
    the interpreter exits. Left to the exit, a rank's gloo threads could find the peer's sockets
    closed and abort the rank (SIGABRT), failing a job whose work was done."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str] | None = None, reraise: bool = False) -> int:
    """Run one job; the exit status says how it ended. reraise: a failure's exception goes to
    the caller (submitit, which logs its traceback) instead of being printed here: once."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2) or (len(argv) == 2 and not argv[1].isdigit()):
        print("usage: python -m jobs.runtime CONFIG.json | CONFIGS.jsonl ENTRY", file=sys.stderr)
        return 2
    try:
        config = read_config(argv[0], int(argv[1]) if len(argv) == 2 else None)
        out_dir = Path(config["output_dir"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"{LOG} {' '.join(argv)}: cannot read the job config ({exc})", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    nproc = int(config.get("nproc_per_node", 1) or 1)
    if nproc > 1 and "RANK" not in os.environ:  # the job itself: its ranks under torchrun
        return _requeue_if_asked(run_ddp(argv, nproc, out_dir), config, out_dir)
    if "RANK" not in os.environ:
        return _requeue_if_asked(_main_rank(config, out_dir, reraise), config, out_dir)
    return _main_rank(config, out_dir, reraise)


def _max_requeues(config: dict) -> int:
    return int(config.get("max_requeues", preemption.MAX_REQUEUES))


def _requeue_if_asked(rc: int, config: dict, out_dir: Path) -> int:
    """A job script that asks for it (QUANTSWEEP_REQUEUE=slurm|lsf: our cluster scripts) gets
    the job requeued here when it stopped at a checkpoint: the backend's requeue command
    (`scontrol requeue`, `brequeue`) while it still runs, within resources.max_requeues and
    only when the checkpoint advanced (see _count_requeue). LSF's script is told by the marker
    QUANTSWEEP_REQUEUE_MARKER not to record an exit code for this run."""
    kind = os.environ.get("QUANTSWEEP_REQUEUE")
    if rc != preemption.REQUEUE or not kind:
        return rc
    from jobs import backends

    try:
        backend = backends.get(kind)
    except KeyError:
        return rc
    job_id = backend.job_id_in_job() or ""
    argv = backend.requeue_argv(job_id)
    if argv is None:
        print(f"{LOG} no scheduler job to requeue ({kind} id {job_id!r}); rerun the "
              "job to resume", file=sys.stderr)
        return rc
    try:
        left = _count_requeue(out_dir, _max_requeues(config), job_id)
    except RuntimeError as exc:
        print(f"{LOG} {exc}", file=sys.stderr)
        return 1
    reason = requeue_now(kind, argv, job_id, left)
    if reason:
        write_status(out_dir, "failed", reason=reason, ended=now())
        return 1
    return rc


def requeue_now(kind: str, argv: list[str], job_id: str, left: int) -> str | None:
    """Run the backend's requeue command `argv` for the scheduler job `job_id` (`left`
    requeues left after it), leaving LSF's script the marker QUANTSWEEP_REQUEUE_MARKER (no exit
    code recorded for this run); the reason when it failed (then no marker), else None."""
    import subprocess

    marker = os.environ.get("QUANTSWEEP_REQUEUE_MARKER")
    if marker:
        try:
            Path(marker).write_text(f"{left}\n")
        except OSError:
            pass
    print(f"{LOG} requeueing {kind.upper()} job {job_id} ({left} requeues left)",
          file=sys.stderr, flush=True)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        failed = done.returncode != 0
        said = (done.stderr or done.stdout).strip()[:300]
    except (OSError, subprocess.SubprocessError) as exc:
        failed, said = True, str(exc)[:300]
    if not failed:
        return None
    if marker:
        Path(marker).unlink(missing_ok=True)
    reason = f"{' '.join(argv)} failed: {said}"
    print(f"{LOG} {reason}", file=sys.stderr)
    return reason


def _main_rank(config: dict, out_dir: Path, reraise: bool) -> int:
    if os.environ.get("RANK", "0") != "0":  # a torchrun worker: rank 0 keeps the records
        from quantlib.job import run_job

        preemption.install()  # every rank stops at the same step (the trainer agrees on it)
        try:
            run_job(config, out_dir)
        except preemption.Preempted as exc:
            print(f"{LOG} rank {os.environ['RANK']}: {exc}", file=sys.stderr)
            _leave_process_group()
            return preemption.REQUEUE
        _leave_process_group()
        return 0
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = _job_lock(out_dir)
    except OSError as exc:
        print(f"{LOG} cannot start: {_os_reason(exc)}", file=sys.stderr)
        return 1
    if lock is None:
        return DUPLICATE
    with lock:
        return _run_locked(config, out_dir, reraise)


DUPLICATE = 3  # the exit status of a run refused because the job already runs elsewhere
LOCK = ".run.lock"


def _job_lock(out_dir: Path):
    """Hold the job directory for this run: a second run of the same job (a duplicate launch, an
    orphan's relaunch) would write the same files. None, said on stderr, when another process
    holds it; the lock ends with the process, however it ends."""
    import fcntl

    fh = open(out_dir / LOCK, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        print(f"{LOG} {out_dir}: this job is already running there (pid {holder}); "
              "not started twice", file=sys.stderr)
        return None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def _os_reason(exc: OSError) -> str:
    """An OSError as a status reason; a full disk (or a read-only one) says so in words."""
    import errno

    from quantlib.errors import os_error

    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return os_error(exc)
    return f"{type(exc).__name__}: {exc}"


def _parent_not_done(config: dict) -> str | None:
    """Why a later-stage job must not start yet: its previous-stage job has not completed.
    The scheduler holds it (afterok / done()); this is the check for a scheduler that started
    it anyway (volclava's dispatch window: jobs.backends.lsf.dependent_begin) or a hand-run
    config: it would train from a missing or half-written model."""
    upstream = config.get("upstream_dir")
    if not upstream or is_complete(upstream):
        return None
    state = (read_status(upstream) or {}).get("state") or "not started"
    return (f"its previous-stage job {config.get('after')} has not completed ({state}): "
            "started before its dependency was met; it runs once that job completed (relaunch)")


def _run_locked(config: dict, out_dir: Path, reraise: bool) -> int:
    start = time.monotonic()
    early = _parent_not_done(config)
    if early:
        try:
            write_status(out_dir, "failed", reason=early, ended=now(), job_id=config.get("job_id"))
        except OSError:
            pass
        print(f"{LOG} {early}", file=sys.stderr)
        return 1
    try:
        write_json(out_dir / CONFIG, config)
        write_status(out_dir, "running", started=now(), pid=os.getpid(), reason=None,
                     ended=None, job_id=config.get("job_id"),
                     code=str(Path(__file__).resolve().parents[1]))
    except OSError as exc:
        print(f"{LOG} cannot start: {_os_reason(exc)}", file=sys.stderr)
        return 1
    preemption.install()  # SIGUSR2: checkpoint at the end of the step, then stop
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:  # started with `&` by a batch shell
        signal.signal(signal.SIGINT, signal.default_int_handler)  # (LSF's): bkill starts so
    if not os.environ.get("SUBMITIT_EXECUTOR"):  # under submitit, SIGTERM is its business
        signal.signal(signal.SIGTERM, _on_term)
    from quantlib.job import run_job

    try:
        results, info = run_job(config, out_dir)
        _leave_process_group()
    except preemption.Preempted as exc:
        _leave_process_group()
        write_status(out_dir, "interrupted", reason=str(exc), ended=now(),
                     elapsed_s=round(time.monotonic() - start, 1), checkpoint_step=exc.step)
        print(f"{LOG} {exc}; run it again to resume", file=sys.stderr)
        return preemption.REQUEUE
    except KeyboardInterrupt:
        write_status(out_dir, "interrupted", reason="SIGINT", ended=now(),
                     elapsed_s=round(time.monotonic() - start, 1))
        print(f"{LOG} interrupted (SIGINT)", file=sys.stderr)
        return 130
    except Terminated as exc:
        write_status(out_dir, "interrupted", reason=str(exc), ended=now(),
                     elapsed_s=round(time.monotonic() - start, 1))
        return 143
    except Exception as exc:  # the job fails; the reason goes to status.json, the trace to the log
        reason = (_os_reason(exc) if isinstance(exc, OSError)
                  else f"{type(exc).__name__}: {exc}").splitlines()[0][:500]
        try:
            write_status(out_dir, "failed", reason=reason, ended=now(),
                         elapsed_s=round(time.monotonic() - start, 1))
        except OSError as again:  # a full disk may refuse the marker too: the log says it
            print(f"{LOG} failed: {reason}; status.json not written: "
                  f"{_os_reason(again)}", file=sys.stderr)
        if reraise:
            raise
        traceback.print_exc()
        return 1
    try:
        write_results(out_dir, config["task"], results, info)
        write_status(out_dir, "completed", reason=None, ended=now(),
                     elapsed_s=round(time.monotonic() - start, 1))
    except OSError as exc:  # trained, but its results could not be kept
        reason = f"results not written: {_os_reason(exc)}"
        print(f"{LOG} failed: {reason}", file=sys.stderr)
        try:
            write_status(out_dir, "failed", reason=reason, ended=now())
        except OSError:
            pass
        return 1
    print(f"{LOG} completed: {json.dumps(results, sort_keys=True)}")
    return 0


def _count_requeue(out_dir: Path, limit: int, job_id: str) -> int:
    """Count a requeue of the scheduler job `job_id` in status.json and return how many are
    left after it; raise (the job fails, with the reason in status.json) when the limit is
    reached, or when the checkpoint did not advance since the previous requeue: a time limit
    too short for a single step would otherwise requeue the job forever."""
    status = read_status(out_dir) or {}
    same_job = status.get("requeued_job") == job_id  # a new submission starts counting anew
    done = int(status.get("requeues") or 0) if same_job else 0
    previous = status.get("requeued_at_step") if same_job else None
    step = status.get("checkpoint_step")
    why = None
    if done >= limit:
        why = (f"requeued {done} times already, the most resources.max_requeues allows "
               f"({limit}): not requeued again")
    elif previous is not None and step is not None and step <= previous:
        why = (f"time limit too short: no progress between requeues (checkpoint at step {step}"
               f", the previous one at step {previous})")
    if why:
        write_status(out_dir, "failed", reason=why, ended=now())
        raise RuntimeError(f"job failed: {why}")
    write_status(out_dir, "interrupted", requeues=done + 1, requeued_at_step=step,
                 requeued_job=job_id)
    return limit - done - 1


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc): torchrun starts its workers in sessions of their
    own, so a signal to its process group does not reach them."""
    children: dict[int, list[int]] = {}
    from quantlib.procs import stat_fields

    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        fields = stat_fields(entry) if entry.isdigit() else None
        if fields is None or len(fields) < 2:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def run_ddp(config_argv: list[str], nproc: int, out_dir: Path) -> int:
    """The job on `nproc` ranks under torchrun; its exit status (REQUEUE when the scheduler's
    warning stopped it at a checkpoint). The warning reaches this process (and, where the
    scheduler signals the job's processes, maybe the ranks too): it is passed to every rank,
    each of which records the request (a repeat changes nothing); the ranks agree at the end
    of the step to stop together and rank 0 checkpoints. torchrun's own agent ignores it."""
    import subprocess

    def agent_ignores_warning() -> None:
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)

    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc_per_node={nproc}", "-m", "jobs.runtime", *config_argv],
                            preexec_fn=agent_ignores_warning)
    warned: list[int] = []

    def pass_on(signum, frame):  # noqa: ARG001
        warned.append(signum)
        for pid in _descendants(proc.pid):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    previous = signal.signal(signal.SIGUSR2, pass_on)
    try:
        rc = proc.wait()
    except KeyboardInterrupt:  # Ctrl-C (the local launcher) or bkill: torchrun stops its ranks
        proc.send_signal(signal.SIGINT)
        rc = proc.wait()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    status = read_status(out_dir) or {}
    if rc != 0 and warned and status.get("state") == "interrupted" \
            and status.get("checkpoint_step") is not None:
        return preemption.REQUEUE  # every rank stopped at the checkpoint (torchrun says 1)
    return rc


def run_config(config_path: str, entry: int | None = None) -> dict:
    """What cluster jobs run (pickled by reference by submitit): the entry point, in process.
    Returns the results; raises when the job did not complete, so the scheduler's record and
    submitit's agree with status.json."""
    config = read_config(config_path, entry)
    argv = [str(config_path)] + ([] if entry is None else [str(entry)])
    out_dir = Path(config["output_dir"])
    nproc = int(config.get("nproc_per_node", 1))
    if nproc > 1:  # several GPUs: DDP under torchrun, inside this job
        rc = run_ddp(argv, nproc, out_dir)
    else:  # a failure raises its own exception: submitit logs its traceback, once
        rc = main(argv, reraise=True)
    if rc == preemption.REQUEUE:
        import submitit

        env = submitit.JobEnvironment()
        left = _count_requeue(out_dir, _max_requeues(config), env.job_id)
        env._requeue(left)  # scontrol requeue / brequeue: the same job again, still running
        raise SystemExit(rc)  # no result: the requeued run resumes from the checkpoint
    if rc != 0:
        status = read_status(out_dir) or {}
        raise RuntimeError(f"job failed (exit status {rc}): {status.get('reason')}")
    return read_json(out_dir / "eval_results.json") or {}


if __name__ == "__main__":
    sys.exit(main())
