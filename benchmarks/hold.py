"""Hold a sweep's one job past its time limit's warning, whatever the machine's speed: stop its
training process (SIGSTOP, as a node's overload or a swap storm would) once its USR2 handler is in
place, until the warning is pending on it (/proc/PID/status SigPnd/ShdPnd, proc(5)), the
scheduler continued it, or `max_s` has passed, then let it go on. The warning, held while it was
stopped, is handled the moment it continues. Used by the run-limit scenarios (SLURM's --signal,
volclava's -W)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path


def held(pid: int, signum: int) -> bool:
    """Whether process `pid` is still stopped with `signum` not pending on it (thread- or
    process-directed). A scheduler may continue it itself before it signals (slurmstepd sends
    SIGCONT with a job's --signal): then it is no longer held."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return False
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    pending = int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)
    return fields["State"].split()[0] == "T" and not pending & (1 << (signum - 1))


def stopped(pid: int) -> bool:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return True  # gone: nothing to wait for
    return any(line.startswith("State:") and line.split()[1] == "T" for line in lines)


def running_pid(sweep_dir: Path, deadline_s: float = 600) -> int:
    """The pid the sweep's job wrote into its status.json when it started running."""
    deadline = time.monotonic() + deadline_s
    status: dict = {}
    while time.monotonic() < deadline:
        for path in sweep_dir.glob("jobs/*/status.json"):
            try:
                status = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if status.get("state") == "running" and status.get("pid"):
                return int(status["pid"])
        time.sleep(0.2)
    raise AssertionError(f"the job in {sweep_dir} never ran: {status}")


def held_until_warned(sweep_dir: Path, max_s: float, signum: int = signal.SIGUSR2) -> float:
    """Stop the job 3 s after it wrote "running" (just before quantlib.preemption.install) until
    `signum` is pending on it, something else continued it, or `max_s` has passed; returns the
    seconds it was held."""
    pid = running_pid(sweep_dir)
    time.sleep(3)
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 5 and not stopped(pid):  # a busy process's threads take a
        time.sleep(0.02)  # moment to stop: SIGSTOP is pending on it until then
    try:
        while time.monotonic() - t0 < max_s and held(pid, signum):
            time.sleep(0.2)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:  # it handled the warning and ended (requeued) already
            pass
    return time.monotonic() - t0
