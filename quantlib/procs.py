"""Is a job's process, recorded by an earlier launcher, still the one running?

A pid alone is not an identity: after the process ended the kernel may give the number to
another. The ledger records the pid with the process's start time (field 22 of /proc/PID/stat,
in clock ticks since boot); the two together name one process for as long as the machine runs.
"""

from __future__ import annotations

import os
import socket


def stat_fields(pid: int | str) -> list[str] | None:
    """/proc/PID/stat from field 3 on (state, ppid, ...: fields[0] is field 3), None when the
    process does not exist or the system has no /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: count after the last ')'
    return stat[stat.rfind(")") + 2:].split()


def start_token(pid: int) -> str | None:
    """The start time of process `pid` ("ticks"), None when it does not exist (or the system
    has no /proc: then only the pid can be checked)."""
    fields = stat_fields(pid)
    if fields is None or len(fields) < 20 or fields[0] == "Z":  # a zombie has ended
        return None
    return fields[19]


def alive(pid: object, token: object) -> bool:
    """Is process `pid`, started at `token` (start_token's value when it was recorded), still
    running here?"""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
        return False
    if os.path.isdir("/proc/self"):  # an unrecorded start time proves nothing: not ours
        return token is not None and str(token) == start_token(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def job_process_alive(entry: dict) -> bool:
    """Does the process a local launcher recorded for a ledger entry (pid, pid_start, host) still
    run? Only this machine's processes can be checked."""
    return entry.get("host") == socket.gethostname() and alive(entry.get("pid"),
                                                              entry.get("pid_start"))
