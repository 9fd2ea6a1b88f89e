"""A pack: several jobs of a sweep side by side in one scheduler allocation (resources.pack).

    python -m jobs.pack --gpus G --cpus C CONFIGS ENTRY [CONFIGS ENTRY ...]

What an array element of a packed sweep runs instead of `jobs.runtime` (templates/_run.sh.j2):
one `python -m jobs.runtime CONFIGS ENTRY` per member, all at once, each

- pinned as the local launcher pins a job: its own G of the allocation's GPUs
  (CUDA_VISIBLE_DEVICES) and its own C of the allocation's cores (CPU affinity, and
  OMP_NUM_THREADS where the environment does not set it), by its place in the pack;
- in its own directory, with its own status, results and log (`member_log`: the launch records
  that path for the member, so `sweep logs` shows the member's own);
- passed the scheduler's signals (the time-limit warning SIGUSR2, SIGINT, SIGTERM);
- stopped alone (SIGINT) when `sweep cancel` asks for it while its pack runs on
  (`CANCEL_REQUEST` in its directory).

A member that stops at a checkpoint (the warning) asks for a requeue (exit preemption.REQUEUE):
when every member has ended, the pack counts the requeue in each such member's status.json
(within resources.max_requeues, only when its checkpoint advanced: jobs.runtime._count_requeue)
and requeues the pack once (`scontrol requeue`, `brequeue`). The requeued pack runs only those
members again (`PLAN`, by scheduler id): a member that completed or failed is never rerun by a
requeue. A relaunch (a new submission, a new id) runs the members that did not complete.

The pack's exit status is its own: 0 when it ran its members (however each ended: their files
say it, quantlib.jobdir.job_state), REQUEUE when it requeued itself, 2 on a bad command line.
A job after a member (a later stage) waits for the whole pack (afterok / done()); if its parent
failed it does not train (jobs.runtime: its parent has not completed).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from jobs.runtime import LOG, _count_requeue, _max_requeues, requeue_now
from quantlib import preemption
from quantlib.atomic import write_json
from quantlib.jobdir import (
    CANCEL_REQUEST,
    is_complete,
    now,
    read_config,
    read_json,
    write_status,
)

MEMBER = ("-m", "jobs.runtime")  # what runs a member: python MEMBER CONFIGS ENTRY
POLL_S = 1.0
GRACE_S = 60.0  # after SIGINT or SIGTERM, members still running then are killed


def member_log(logs: Path, scheduler_id: str, job_id: str) -> Path:
    """A member's own log, in the sweep's logs/: the pack's scheduler id and the job's id."""
    return logs / f"{scheduler_id}.{job_id}.out"


def plan_file(logs: Path, scheduler_id: str) -> Path:
    """Which members a requeued pack runs again (written when it requeues itself)."""
    return logs / f"{scheduler_id}.pack.json"


@dataclass
class Member:
    slot: int  # its place in the pack: its GPUs and cores
    config_path: str
    entry: int
    config: dict
    proc: subprocess.Popen | None = None
    rc: int | None = None
    cancelled: bool = False

    @property
    def job_id(self) -> str:
        return str(self.config.get("job_id"))

    @property
    def out_dir(self) -> Path:
        return Path(self.config["output_dir"])


def slots(available: list, per: int, n: int) -> list[list]:
    """`n` members' shares of `available` (GPUs or cores), `per` each where there are enough;
    else an even split, at least one each (shared round-robin when fewer than n)."""
    if not available:
        return [[] for _ in range(n)]
    if len(available) >= per * n:
        return [available[i * per:(i + 1) * per] for i in range(n)]
    each = max(1, len(available) // n)
    return [[available[(i * each + k) % len(available)] for k in range(each)]
            for i in range(n)]


def _visible_gpus() -> list[str]:
    from jobs.backends.local import visible_gpus

    return visible_gpus()


def _parse(argv: list[str]) -> tuple[int, int, list[tuple[str, int]]]:
    ap = argparse.ArgumentParser(prog="python -m jobs.pack")
    ap.add_argument("--gpus", type=int, default=0)
    ap.add_argument("--cpus", type=int, default=1)
    ap.add_argument("members", nargs="+", metavar="CONFIGS ENTRY")
    args = ap.parse_args(argv)
    words = args.members
    if len(words) % 2 or not all(w.isdigit() for w in words[1::2]) or args.gpus < 0 \
            or args.cpus < 1:
        ap.error("give CONFIGS ENTRY pairs (ENTRY: a whole number), --gpus >= 0, --cpus >= 1")
    return args.gpus, args.cpus, [(words[i], int(words[i + 1])) for i in range(0, len(words), 2)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        gpus, cpus, pairs = _parse(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    members: list[Member] = []
    for slot, (path, entry) in enumerate(pairs):
        try:
            config = read_config(path, entry)
            Path(config["output_dir"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"{LOG} pack: {path} {entry}: cannot read the job config ({exc}): not run",
                  file=sys.stderr)
            continue
        members.append(Member(slot, path, entry, config))
    if not members:
        return 2
    kind = os.environ.get("QUANTSWEEP_REQUEUE")  # slurm | lsf: our cluster scripts
    backend = None
    if kind:
        from jobs import backends

        try:
            backend = backends.get(kind)
        except KeyError:
            backend = None
    scheduler_id = (backend.job_id_in_job() if backend else None) or f"pack-{os.getpid()}"
    logs = Path(members[0].config.get("sweep_dir") or members[0].out_dir.parent) / "logs"
    todo = _to_run(members, logs, scheduler_id)
    n = len(pairs)
    visible = _visible_gpus() if gpus else []
    gpu_slots = slots(visible, gpus, n) if gpus else [[] for _ in range(n)]
    core_slots = slots(sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                       else [], cpus, n)
    if gpus and any(len(g) < gpus for g in gpu_slots):
        shown = ",".join(visible) or "none"
        for m in todo:
            write_status(m.out_dir, "failed", ended=now(), reason=f"its pack of {n} jobs needs "
                         f"{n} x {gpus} GPUs; the allocation shows {shown}")
        print(f"{LOG} pack {scheduler_id}: needs {n} x {gpus} GPUs, sees {shown}: not run",
              file=sys.stderr)
        return 0
    stopping: list[float] = []

    def pass_on(signum, frame):  # noqa: ARG001
        if signum != signal.SIGUSR2 and not stopping:
            stopping.append(time.monotonic())
        for m in todo:
            _signal(m, signum)

    previous = {sig: signal.signal(sig, pass_on)
                for sig in (signal.SIGUSR2, signal.SIGINT, signal.SIGTERM)}
    try:
        for m in todo:
            if (m.out_dir / CANCEL_REQUEST).exists():
                m.cancelled, m.rc = True, 130
                print(f"{LOG} pack {scheduler_id}: {m.job_id} cancelled before it started",
                      file=sys.stderr)
                continue
            _start(m, gpu_slots[m.slot], core_slots[m.slot], member_log(logs, scheduler_id,
                                                                         m.job_id))
            print(f"{LOG} pack {scheduler_id}: started {m.job_id} (pid {m.proc.pid}; GPUs "
                  f"{','.join(gpu_slots[m.slot]) or 'none'}; cores "
                  f"{','.join(map(str, core_slots[m.slot])) or 'any'})", file=sys.stderr,
                  flush=True)
        _wait(todo, stopping, scheduler_id)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for m in todo:
        print(f"{LOG} pack {scheduler_id}: {m.job_id} ended (exit {m.rc})", file=sys.stderr)
    return _requeue(todo, kind, backend, scheduler_id, logs)


def _to_run(members: list[Member], logs: Path, scheduler_id: str) -> list[Member]:
    """The members this run of the pack runs: not those that completed, and after a requeue
    only those the requeue was for."""
    plan = read_json(plan_file(logs, scheduler_id)) or {}
    again = plan.get("requeued") if isinstance(plan, dict) else None
    todo = []
    for m in members:
        if is_complete(m.out_dir):
            print(f"{LOG} pack {scheduler_id}: {m.job_id} completed already: not run again",
                  file=sys.stderr)
        elif isinstance(again, list) and m.job_id not in again:
            print(f"{LOG} pack {scheduler_id}: {m.job_id} ended before the requeue: not run "
                  "again (a relaunch reruns it)", file=sys.stderr)
        else:
            todo.append(m)
    return todo


def _start(m: Member, gpus: list[str], cores: list[int], log_path: Path) -> None:
    env = dict(os.environ)
    for key in ("QUANTSWEEP_REQUEUE", "QUANTSWEEP_REQUEUE_MARKER"):  # the pack requeues
        env.pop(key, None)
    env["QUANTSWEEP_JOB_ID"] = m.job_id
    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    if cores and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(len(cores))

    def pin() -> None:
        if cores:
            os.sched_setaffinity(0, cores)

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        m.proc = subprocess.Popen([sys.executable, *MEMBER, m.config_path, str(m.entry)],
                                  stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                  preexec_fn=pin)


def _signal(m: Member, signum: int) -> None:
    if m.proc is not None and m.proc.poll() is None:
        try:
            os.killpg(m.proc.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _wait(todo: list[Member], stopping: list[float], scheduler_id: str) -> None:
    """Until every started member has ended: a cancel request stops its member (SIGINT);
    after SIGINT / SIGTERM to the pack, members still running after GRACE_S are killed."""
    while True:
        live = [m for m in todo if m.proc is not None and m.proc.poll() is None]
        for m in todo:
            if m.proc is not None and m.rc is None and m.proc.poll() is not None:
                m.rc = m.proc.returncode
        if not live:
            return
        for m in live:
            if not m.cancelled and (m.out_dir / CANCEL_REQUEST).exists():
                m.cancelled = True
                print(f"{LOG} pack {scheduler_id}: {m.job_id}: cancel requested: stopping it",
                      file=sys.stderr, flush=True)
                _signal(m, signal.SIGINT)
        if stopping and time.monotonic() - stopping[0] > GRACE_S:
            for m in live:
                _signal(m, signal.SIGKILL)
        time.sleep(POLL_S)


def _requeue(todo: list[Member], kind: str | None, backend, scheduler_id: str,
             logs: Path) -> int:
    """Requeue the pack once for the members that stopped at a checkpoint (each within its
    own limit); REQUEUE when it did, else 0."""
    asked = [m for m in todo if m.rc == preemption.REQUEUE]
    argv = backend.requeue_argv(scheduler_id) if (asked and backend) else None
    if not asked:
        return 0
    if argv is None:
        print(f"{LOG} pack {scheduler_id}: no scheduler job to requeue; relaunch to resume "
              f"{', '.join(m.job_id for m in asked)}", file=sys.stderr)
        return 0
    again, left = [], []
    for m in asked:
        try:
            left.append(_count_requeue(m.out_dir, _max_requeues(m.config), scheduler_id))
            again.append(m)
        except RuntimeError as exc:  # its limit, or no progress: it failed (status.json)
            print(f"{LOG} {m.job_id}: {exc}", file=sys.stderr)
    if not again:
        return 0
    try:
        write_json(plan_file(logs, scheduler_id), {"requeued": [m.job_id for m in again],
                                                   "written": now()})
    except OSError as exc:
        reason = f"the pack's requeue plan not written: {exc}"
    else:
        reason = requeue_now(str(kind), argv, scheduler_id, min(left))
    if reason:
        for m in again:
            write_status(m.out_dir, "failed", reason=reason, ended=now())
        return 0
    return preemption.REQUEUE


if __name__ == "__main__":
    sys.exit(main())
