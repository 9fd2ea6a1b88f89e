"""The job directory and the sweep directory as one contract (torch-free): what a job leaves in
its output directory, what a sweep directory holds beside its jobs, and the rule that turns
them (and, advisory, the scheduler's word) into a job's state. Launch, status, relaunch, the
job itself and collect read and write them through here.

A job's output directory:
- config.json        the full resolved configuration the job ran with
- status.json        state marker: running / completed / failed / interrupted, reason, times
- eval_results.json  HF Trainer style: eval_ prefixed metrics, indent 4, sorted keys
- eval_results.txt   the old run_glue format: one `key = value` line per metric, sorted

A sweep directory: ledger.json (jobs.ledger: every job launched; paths in it relative to the
sweep directory, `entry_path`), .launch.lock (held by a running launch: `launcher_active`),
configs/<digest>.jsonl (the runtime configs of the jobs a launch submitted: a header with
what the jobs of a method share, then one JSON line per job; a job reads its own entry by index,
`read_config`; one file per launch, not one per job).

Files are the truth: a job whose results exist is completed whatever the scheduler says; a job
the scheduler no longer knows and that left no results is failed, never "running" forever; a
scheduler that did not answer (UNSURE) never makes a job lost (`job_state`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import stat
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from quantlib.atomic import write_json, write_text
from quantlib.errors import UserError, os_error
from quantlib.procs import job_process_alive

CONFIG = "config.json"
STATUS = "status.json"
EVAL_JSON = "eval_results.json"
EVAL_TXT = "eval_results.txt"
MAX_READ_BYTES = 64 * 1024 * 1024  # a results or status file: kilobytes; a ledger: megabytes

# HF Trainer metric names -> the old run_glue names the seed spreadsheet uses
OLD_NAMES = {
    "accuracy": "acc",
    "accuracy_mm": "mnli-mm_acc",
    "f1": "f1",
    "combined_score": "acc_and_f1",  # STS-B: "corr", see old_name()
    "matthews_correlation": "mcc",
    "pearson": "pearson",
    "spearmanr": "spearmanr",
    "exact_match": "exact_match",  # SQuAD, 0-100 as evaluate-v1.1.py
}


def old_name(task: str, metric: str) -> str:
    if metric == "combined_score" and task == "stsb":
        return "corr"
    return OLD_NAMES.get(metric, metric)


# what the launcher adds to a job's config (jobs.scripts.runtime_config): bookkeeping, not the
# method's arguments; a run's configuration (collect, the spreadsheet's blocks) leaves them out
# (finetune_from: the checkpoint of the shared fine-tuning job the job resumes from, jobs.sharing)
RUN_KEYS = ("job_id", "sweep", "sweep_dir", "output_dir", "nproc_per_node", "max_requeues",
            "upstream_dir", "finetune_from")
STAGE_KEYS = ("stage", "after")  # bookkeeping of staged sweeps: a run keeps them where set
FINETUNED = "finetuned"  # in a shared fine-tuning job's directory: its last Trainer checkpoint
CANCEL_REQUEST = "cancel.request"  # in a packed job's directory: stop it alone (jobs.pack)

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"  # status.json and the ledger: local time with its offset

LEDGER = "ledger.json"  # a sweep directory's record of its jobs (jobs.ledger)
LAUNCH_LOCK = ".launch.lock"  # held by a running launch of the sweep (jobs.ledger.Ledger.locked)

# scheduler ids as SLURM and LSF write them: 123, 123_4 (an array element, SLURM's and our
# form), 123[4] (LSF's own). No 0 (`bkill 0` is every job of the user), no sign, no option,
# nothing after the digits (fullmatch: not even a newline)
SCHEDULER_ID = re.compile(r"[1-9][0-9]{0,17}(?:_[0-9]{1,9}|\[[0-9]{1,9}\])?")
# a scheduler's state that its answer leaves open (the reason follows): shown as `unknown`
UNSURE = "UNSURE:"


CONFIGS_DIR = "configs"  # in the sweep directory: the launches' config files (write_configs)
# a configs file's first line: {CONFIGS_HEADER: CONFIGS_FORMAT, "bases": [config, ...]}; then
# one line per job, {BASE_KEY: k, key: value, ...}: the job's config is bases[k] updated with
# the line (what every job of a method shares is written once per launch, not once per job)
CONFIGS_HEADER = "quantsweep_configs"
CONFIGS_FORMAT = 2
BASE_KEY = "_base"  # never a config key: those are trainer arguments and RUN_KEYS / STAGE_KEYS
_encode = json.JSONEncoder(sort_keys=True, ensure_ascii=True).encode


@dataclass(frozen=True)
class ConfigRef:
    """Where a job's runtime config is: entry `entry` (0-based, after the header) of `path`."""

    path: Path
    entry: int

    def argv(self) -> list[str]:
        """The arguments of `python -m jobs.runtime` that name it."""
        return [str(self.path), str(self.entry)]


def write_configs_file(sweep_dir: str | os.PathLike, bases: list[dict[str, Any]],
                       entries: list[tuple[int, dict[str, Any]]]) -> list[ConfigRef]:
    """Write a launch's configs as one JSON-lines file under configs/, named by its content (a
    file that jobs already queued may read is never rewritten; an unchanged relaunch rewrites
    nothing): the header with `bases`, then for each (k, update) of `entries` the line that
    makes its config bases[k] updated with `update` (CONFIGS_HEADER; read by `read_config`)."""
    import hashlib

    lines = [_encode({CONFIGS_HEADER: CONFIGS_FORMAT, "bases": bases})]
    for k, update in entries:
        if not 0 <= k < len(bases) or BASE_KEY in update:
            raise ValueError(f"entry {len(lines) - 1}: no base {k}, or {BASE_KEY} in it")
        lines.append(_encode({BASE_KEY: k, **update}))
    text = "\n".join(lines) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = Path(sweep_dir) / CONFIGS_DIR / f"{digest}.jsonl"
    if not (path.is_file() and path.stat().st_size == len(text)):
        write_text(path, text, durable=False)
    return [ConfigRef(path, i) for i in range(len(entries))]


def _config_of(bases: list[Any], line: str) -> dict[str, Any]:
    config = json.loads(line)
    if not isinstance(config, dict):
        raise ValueError("not a JSON object")
    k = config.pop(BASE_KEY, None)
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(bases) \
            or not isinstance(bases[k], dict):
        raise ValueError(f"its {BASE_KEY} {k!r} names none of its {len(bases)} bases")
    return dict(sorted({**bases[k], **config}.items()))


def _bases(first: str) -> list[Any]:
    """The bases of a configs file, from its first line."""
    head = json.loads(first) if first else None
    if not (isinstance(head, dict) and head.get(CONFIGS_HEADER) == CONFIGS_FORMAT
            and isinstance(head.get("bases"), list)):
        raise ValueError(f"its first line is not a header of configs format {CONFIGS_FORMAT}")
    return head["bases"]


def read_config(path: str | os.PathLike, entry: int | None = None) -> dict[str, Any]:
    """A job's runtime config: the JSON file `path`, or entry `entry` of the configs file
    `path` (write_configs_file). Raises OSError / ValueError when it cannot be read."""
    if entry is None:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
        return config
    if entry < 0:
        raise ValueError(f"entry {entry} is negative")
    with open(path, encoding="utf-8") as fh:
        bases = _bases(fh.readline())
        for i, line in enumerate(fh):
            if i == entry:
                return _config_of(bases, line)
    raise ValueError(f"it has no entry {entry}")


def read_configs(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every entry of a configs file, in order."""
    with open(path, encoding="utf-8") as fh:
        bases = _bases(fh.readline())
        return [_config_of(bases, line) for line in fh]


def now() -> str:
    return time.strftime(TIME_FORMAT)


def write_status(out_dir: str | os.PathLike, state: str, **extra: Any) -> None:
    path = Path(out_dir) / STATUS
    previous = read_json(path) or {}
    status = {**previous, "state": state, "updated": now(), "host": socket.gethostname(),
              **extra}
    write_json(path, status)


class RefusedFile(OSError):
    """A file not read: not a regular file (a FIFO, a device, a directory, a socket) or larger
    than a result file can be. `strerror` says which."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def check_regular(st: os.stat_result, path: str | os.PathLike, limit: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise RefusedFile(errno.EINVAL, f"not a regular file ({_kind(st.st_mode)})",
                          os.fspath(path))
    if st.st_size > limit:
        raise RefusedFile(errno.EFBIG, f"{st.st_size} bytes, more than the {limit} a result "
                          "file may hold", os.fspath(path))


def read_regular(path: str | os.PathLike, limit: int = MAX_READ_BYTES,
                 head: int | None = None, stat_first: bool = True) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (with `head`: its first `head`
    bytes, whatever its size). Anything else is refused (RefusedFile) before a byte is read: a
    FIFO would block the reader forever, /dev/zero or a huge file would exhaust its memory. The
    file is opened non-blocking and checked again once open, so a name swapped for a FIFO in
    between cannot block either. stat_first False: the caller has just checked the name (a
    device is not even opened), only the open file is checked again."""
    if head is not None:
        limit = 1 << 62  # only `head` bytes are read
    if stat_first:
        check_regular(os.stat(path), path, limit)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        check_regular(os.fstat(fd), path, limit)
        if head is not None:
            return os.read(fd, head)
        chunks, total = [], 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # grew since the check
                raise RefusedFile(errno.EFBIG, f"more than the {limit} bytes a result file may "
                                  "hold", os.fspath(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """A JSON object, or None: absent, not a regular file, too large, not UTF-8, not JSON,
    nested too deep for the parser (RecursionError), or not an object."""
    try:
        data = json.loads(read_regular(path).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def read_status(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    return read_json(Path(out_dir) / STATUS)


def completed(status: Any, results: Any) -> bool:
    """The completed rule, on what was read of a job directory: its marker says so and its
    results are a JSON object. A truncated or garbled eval_results.json is not a completed job,
    for `sweep status`, the relaunch and `collect` alike (collect reads through its own bounded
    reader and asks here)."""
    return (isinstance(status, dict) and status.get("state") == "completed"
            and isinstance(results, dict))


def is_complete(out_dir: str | os.PathLike) -> bool:
    """Is the job in `out_dir` done (`completed`, on its files)?"""
    status = read_status(out_dir)
    return completed(status, status and read_json(Path(out_dir) / EVAL_JSON))


def write_results(out_dir: str | os.PathLike, task: str, metrics: dict[str, float],
                  info: dict[str, Any] | None = None) -> None:
    """metrics: HF names without prefix (accuracy, f1, loss, pred_classes, ...) stored with the
    eval_ prefix; info: facts about the run (train_loss, quantized_fraction, ...) stored as is."""
    data = {**(info or {}), **{f"eval_{k}": v for k, v in metrics.items()}}
    write_json(Path(out_dir) / EVAL_JSON, data)
    lines = [f"{old_name(task, k)} = {v}" for k, v in metrics.items() if k in OLD_NAMES]
    write_text(Path(out_dir) / EVAL_TXT, "".join(f"{line}\n" for line in sorted(lines)))


def valid_id(text: Any) -> bool:
    """Is `text` a scheduler id? Checked on every id read back from a sweep directory before
    any command (sacct, bjobs, scancel, bkill) sees it."""
    return isinstance(text, str) and SCHEDULER_ID.fullmatch(text) is not None


def entry_path(sweep_dir: str | os.PathLike, value: Any) -> Path:
    """A path as the ledger stores it (relative to the sweep directory, or absolute), as a path
    usable from here."""
    path = Path(str(value or ""))
    return path if path.is_absolute() else Path(os.path.abspath(Path(sweep_dir) / path))


def open_lock(path: Path, create: bool):
    """The launch lock file, opened without blocking and without following a link: a FIFO put
    there would block `sweep status` forever. Anything but a regular file is refused."""
    import stat

    flags = os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create
                                                                        else 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise UserError(f"{path}: cannot open the launch lock: {os_error(exc)}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{path}: the launch lock is not a regular file; remove it")
    return os.fdopen(fd, "r+")


def launcher_active(sweep_dir: Path) -> bool:
    """Is a launch of the sweep in `sweep_dir` running now (holding its lock)? Never blocks:
    anything but a regular lock file (a FIFO planted there) is no launch."""
    try:
        fh = open_lock(Path(sweep_dir) / LAUNCH_LOCK, create=False)
    except (FileNotFoundError, UserError):
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


QUEUED = {"PENDING", "REQUEUED", "READY", "CONFIGURING", "RESV_DEL_HOLD", "REQUEUE_HOLD"}
ACTIVE = {"RUNNING", "COMPLETING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "RESIZING"}
LOST_AFTER_S = 120  # a submission the scheduler never heard of by then is lost


def _output_dir(entry: dict[str, Any]) -> Path | None:
    """The entry's output directory; None when it names none (a field the ledger dropped):
    never "" (the current directory, whose files are not this job's)."""
    value = entry.get("output_dir")
    return Path(value) if isinstance(value, str) and value else None


def _epoch(stamp: Any) -> float | None:
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return datetime.strptime(stamp, TIME_FORMAT).timestamp()
    except ValueError:
        return None


def _age_s(stamp: str | None) -> float | None:
    when = _epoch(stamp)
    return None if when is None else time.time() - when


def job_state(entry: dict[str, Any], sched: str | None,
              launcher_active: bool = False) -> tuple[str, str | None]:
    """(state, reason): completed, pending, running, failed, interrupted, cancelled or missing
    (never launched). sched: the scheduler's state for the job's id, None when not asked;
    launcher_active: a local launch of the sweep is running now."""
    out = _output_dir(entry)
    if out is not None and is_complete(out):
        return "completed", None
    status = (read_status(out) if out is not None else None) or {}
    file_state, file_reason = status.get("state"), status.get("reason")
    written, submitted = _epoch(status.get("updated")), _epoch(entry.get("submitted"))
    if written is not None and submitted is not None and written <= submitted:
        # the marker of an attempt before the latest submission: the rerun has not started yet
        # (and the scheduler may not list it yet), so the old failure says nothing about it.
        # Stamps are whole seconds, and the ledger's is taken after the submission returned:
        # a marker of the same second is the old attempt's (a job takes longer to start)
        file_state = None
    if sched is not None and sched.startswith(UNSURE):
        # the scheduler did not say: only what is final on disk counts (a job that wrote
        # `failed` has ended; `interrupted` may be requeued, `running` may run on)
        if file_state == "failed":
            return "failed", file_reason
        if entry.get("state") == "cancelled":
            return "cancelled", entry.get("reason") or "cancelled"
        last = entry.get("state") or "submitted"
        return "unknown", f"{sched[len(UNSURE):]} (last known: {last})"
    cancelled = entry.get("state") == "cancelled"
    if sched in QUEUED:  # (a job cancelled in a pack that waits: the pack never starts it)
        return ("cancelled", entry.get("reason") or "cancelled") if cancelled else (
            "pending", None)
    if sched in ACTIVE:
        if file_state == "failed":  # the job has said so and is ending (epilog, COMPLETING)
            return "failed", file_reason
        if cancelled and file_state != "running":  # stopped in a pack that runs on
            return "cancelled", entry.get("reason") or "cancelled"
        return "running", None
    if file_state == "completed":  # but is_complete says its results cannot be read
        return "failed", f"{EVAL_JSON} is missing or unreadable"
    if entry.get("state") == "cancelled":
        return "cancelled", file_reason or entry.get("reason") or "cancelled"
    if sched == "CANCELLED":
        return "cancelled", "cancelled on the scheduler"
    if file_state in ("failed", "interrupted"):
        return file_state, file_reason
    if sched == "COMPLETED":
        return "failed", "exited without results"
    if sched and sched != "UNKNOWN":
        return "failed", f"scheduler: {sched}"
    if entry.get("backend") is None:
        return "missing", None
    if entry.get("backend") == "local":
        state = entry.get("state", "missing")
        if state == "running" and not launcher_active and job_process_alive(entry):
            return "running", (f"orphaned: its launcher stopped, the job runs on (pid "
                               f"{entry.get('pid')}); a relaunch adopts it")
        if state in ("pending", "running") and not launcher_active:
            return ("interrupted", "the launcher stopped") if state == "running" else (
                "missing", None)
        return ("missing" if state == "completed" else state), entry.get("reason")
    # a cluster job the scheduler does not know (any more) and that left no results
    if sched is None and file_state == "running":
        return "running", None  # the scheduler was not asked: trust the job's marker
    age = _age_s(entry.get("submitted"))
    if age is not None and age < LOST_AFTER_S:
        return "pending", None
    return "failed", "lost: the scheduler no longer knows the job and it left no results"


def elapsed(entry: dict[str, Any], state: str | None = None) -> str:
    """How long the job ran (or runs: `state`, the resolved one, is running). A job killed
    without a word (its status.json still says running) has no end to count to: "-"."""
    out = _output_dir(entry)
    status = (read_status(out) if out is not None else None) or {}
    seconds = status.get("elapsed_s")
    if seconds is None and status.get("state") == "running" and state in (None, "running"):
        seconds = _age_s(status.get("started"))
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
