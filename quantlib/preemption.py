"""Checkpoint-and-requeue on the scheduler's warning signal.

SLURM (`--signal=USR2@N`) and LSF (`-wa USR2 -wt N`) warn a job with SIGUSR2 before its time
limit. The handler only records the request; at the end of the current optimizer step the
trainer saves a checkpoint and stops (saving inside the signal handler could catch an optimizer
step half done), the entry point records `interrupted` and exits with REQUEUE, and the cluster
wrapper requeues the job, which resumes from that checkpoint.
"""

from __future__ import annotations

import signal

REQUEUE = 75  # a job's exit status: stopped at a checkpoint, run me again (EX_TEMPFAIL)
MAX_REQUEUES = 3  # a job's requeues unless resources.max_requeues says (submitit's max_num_timeout)


class Preempted(Exception):
    def __init__(self, step: int, signal_name: str):
        super().__init__(f"preempted ({signal_name}): checkpoint at step {step}")
        self.step = step


class _Request:
    signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


REQUEST = _Request()


def install(signals: tuple[signal.Signals, ...] = (signal.SIGUSR2,)) -> None:
    def handler(signum, frame):  # noqa: ARG001
        REQUEST.signal_name = signal.Signals(signum).name

    for sig in signals:
        signal.signal(sig, handler)
