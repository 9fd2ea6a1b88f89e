"""`sweep status`, `sweep cancel` and `sweep logs`: a running sweep, from its ledger."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from analysis.safe_text import terminal
from jobs import backends
from jobs.backends.base import NotAnswered
from jobs.grid import matches
from jobs.ledger import Ledger
from quantlib.errors import UserError
from quantlib.jobdir import (
    CANCEL_REQUEST,
    LEDGER,
    UNSURE,
    elapsed,
    entry_path,
    job_state,
    valid_id,
)


def sweep_dirs(targets: list[str]) -> list[Path]:
    """Sweep directories from directories, spec files or sweep names (default: runs/*)."""
    if not targets:
        found = sorted(p.parent for p in Path("runs").glob(f"*/{LEDGER}"))
        if not found:
            raise UserError("runs: no sweep with a ledger here; give a sweep directory")
        return found
    out = []
    for t in targets:
        path = Path(t)
        if path.is_file() and path.suffix in (".yaml", ".yml"):
            from jobs.spec import load_spec

            path = Path(load_spec(path).sweep_dir)
        elif not path.exists() and (Path("runs") / t).is_dir():
            path = Path("runs") / t
        if not (path / LEDGER).is_file():
            raise UserError(f"{t}: no {LEDGER} there (launch the sweep first, or give its "
                            "directory)")
        out.append(path)
    return out


def scheduler_ids(ledger: Ledger) -> dict[str, list[str]]:
    """{backend: the scheduler ids its jobs were recorded with}, each checked against the
    schedulers' id syntax (quantlib.jobdir.valid_id) before any command sees it."""
    by_backend: dict[str, list[str]] = {}
    scheduled = set(backends.schedulers())
    for e in ledger.jobs.values():
        backend, sid = e.get("backend"), e.get("scheduler_id")
        if backend in scheduled and valid_id(sid):
            by_backend.setdefault(backend, []).append(sid)
    return {b: list(dict.fromkeys(ids)) for b, ids in by_backend.items()}  # a pack's once


def states(ledger: Ledger, launcher_active: bool | None = None
           ) -> dict[str, tuple[str, str | None]]:
    """Every job's (state, reason); one scheduler query per backend. A scheduler that does not
    answer leaves its jobs `unknown` (with why), never lost."""
    if launcher_active is None:
        launcher_active = ledger.launcher_active()
    sched: dict[str, str] = {}
    asked: set[str] = set()
    for backend, ids in scheduler_ids(ledger).items():
        asked.add(backend)
        try:
            found = backends.get(backend).states(ledger.sweep_dir, ids)
        except NotAnswered as exc:
            found = {i: f"{UNSURE}the scheduler did not answer: {exc}" for i in ids}
        sched.update({f"{backend}:{k}": v for k, v in found.items()})
    out = {}
    for jid, e in ledger.jobs.items():
        if not inside(ledger.sweep_dir, e.get("output_dir")):  # a ledger not written by us
            out[jid] = ("failed", "its output_dir is outside the sweep directory: not read")
            continue
        key = f"{e.get('backend')}:{e.get('scheduler_id')}"
        was_asked = e.get("backend") in asked and valid_id(e.get("scheduler_id"))
        out[jid] = job_state(e, sched.get(key, "UNKNOWN") if was_asked else None,
                             launcher_active)
    return out


def sweep_states(sweep_dir: Path, ask: Callable[[str, dict[str, Any]], bool]
                 ) -> dict[str, tuple[str, str | None]]:
    """The states `sweep status` gives the jobs of `sweep_dir` that `ask(job id, entry)`
    accepts, read through the ledger (never saved): collect's view of the scheduler
    (analysis.results.SweepStates)."""
    ledger = Ledger(sweep_dir)
    jobs = {jid: e for jid, e in ledger.jobs.items() if ask(jid, e)}
    ledger.data = {**ledger.data, "jobs": jobs}  # in memory only: never saved
    return states(ledger)


def inside(sweep_dir: Path, path: Any) -> bool:
    """Does `path` (as the ledger gives it) lie inside the sweep directory, links resolved?
    Nothing outside it is read: a ledger's `../../etc/shadow` stays unread."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        return False
    try:
        return entry_path(sweep_dir, path).resolve().is_relative_to(Path(sweep_dir).resolve())
    except (OSError, ValueError, RuntimeError):
        return False


LOG_TAIL = 8 << 20  # `sweep logs` shows at most the last 8 MiB of a log


def read_log(path: str) -> str:
    """The end of a log file: a regular file only (a FIFO would block, /dev/zero never end)."""
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return "(not shown: not a regular file)\n"
        skip = max(0, info.st_size - LOG_TAIL)
        os.lseek(fd, skip, os.SEEK_SET)
        data = os.read(fd, LOG_TAIL)
    finally:
        os.close(fd)
    head = f"(the last {LOG_TAIL >> 20} MiB of {info.st_size} bytes)\n" if skip else ""
    return head + data.decode("utf-8", errors="replace")


def log_path(ledger: Ledger, entry: dict[str, Any]) -> str:
    """The job's log, where its launch recorded it."""
    log = entry.get("log")
    return str(entry_path(ledger.sweep_dir, log)) if isinstance(log, str) and log else "-"


def rel_path(path: str | os.PathLike) -> str:
    """A path as the user can type it from here (relative where that is possible)."""
    text = os.fspath(path)
    here = os.path.join(os.getcwd(), "")
    if text.startswith(here) and os.path.normpath(text) == text:  # the common case, cheaply
        return text[len(here):]
    try:
        return os.path.relpath(text)
    except ValueError:
        return text


REASON_WIDTH = 60  # the table's reason column; --long and `sweep logs` show it whole


def status(targets: list[str], out: IO[str] | None = None, long: bool = False) -> int:
    out = out or sys.stdout
    for sweep_dir in sweep_dirs(targets):
        ledger = Ledger(sweep_dir)
        resolved = states(ledger)
        staged = any(e.get("stage") for e in ledger.jobs.values())
        head = ["job id", "task", "method", "nbits", "scheduler id", "state", "elapsed",
                "reason", "log"] + (["stage", "after"] if staged else [])
        rows = []
        for jid, e in sorted(ledger.jobs.items(), key=lambda kv: kv[1].get("index", 0)):
            state, reason = resolved[jid]
            c = e.get("config", {})
            row = ([jid, str(c.get("task", "")), str(c.get("method", "")),
                    str(c.get("nbits", "-")), str(e.get("scheduler_id") or "-"), state,
                    elapsed(e, state), _cut(reason or "-", REASON_WIDTH),
                    rel_path(log_path(ledger, e))]
                   + ([str(e.get("stage") or "-"), str(e.get("after") or "-")] if staged
                      else []))
            rows.append([terminal(v) for v in row])
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        print(terminal(f"sweep {ledger.data.get('sweep', sweep_dir.name)} "
                       f"({rel_path(str(sweep_dir))})"), file=out)
        for r in [head, *rows]:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip(), file=out)
        if long:
            for jid in sorted(ledger.jobs, key=lambda j: ledger.jobs[j].get("index", 0)):
                if resolved[jid][1]:
                    print(terminal(f"{jid} {resolved[jid][0]}: {resolved[jid][1]}"), file=out)
        totals: dict[str, int] = {}
        for state, _ in resolved.values():
            totals[state] = totals.get(state, 0) + 1
        print(f"{len(rows)} jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(totals.items())),
              file=out)
        for line in _curves(ledger):
            print(line, file=out)
    return 0


def _curves(ledger: Ledger) -> list[str]:
    """Where the training curves of jobs with `report_to` are, and how to look at them."""
    from quantlib.tracking import where

    by_tool: dict[str, list[str]] = {}
    for e in ledger.jobs.values():
        tool = e.get("config", {}).get("report_to")
        if isinstance(tool, str) and tool != "none" and e.get("output_dir"):
            by_tool.setdefault(tool, []).append(
                rel_path(entry_path(ledger.sweep_dir, e["output_dir"])))
    return [f"training curves ({tool}): {where(tool, dirs)}"
            for tool, dirs in sorted(by_tool.items()) if where(tool, dirs)]


def _cut(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + "…"


def parse_where(where: list[str], configs: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """--where KEY=VALUE conditions, each value read as YAML reads it (200 = 200.0, true);
    a key that no trainer argument and no job of the sweep has is a user error. A value YAML
    cannot read (`[x`, `*a`, `!!python/name:x`, a quote alone, a 5,000-digit number), or reads
    as a mapping, a list or null, is taken as the literal text: never a traceback."""
    import yaml

    from jobs.safeyaml import YamlRefused, load
    from quantlib.configs import all_keys, suggest

    known = set(all_keys()) | {k for c in configs if isinstance(c, dict) for k in c}
    out = []
    for cond in where:
        key, sep, text = cond.partition("=")
        if not sep or not key:
            raise UserError(f"--where {cond}: write KEY=VALUE, e.g. task=mrpc")
        if key not in known:
            raise UserError(f"--where {cond}: unknown key {key!r}{suggest(key, sorted(known))}"
                            "; give a trainer argument, e.g. task=mrpc")
        try:  # UnicodeEncodeError (an undecodable byte of argv) is a ValueError
            value = load(text.encode()) if text else ""
        except (YamlRefused, yaml.YAMLError, ValueError, RecursionError):
            value = text
        if isinstance(value, (dict, list)) or value is None:
            value = text
        elif isinstance(value, str):  # the loader's str subclasses (4:00, 010): as text
            value = str(value)
        out.append((key, value))
    return out


def cancel(targets: list[str], where: list[str], out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    for sweep_dir in sweep_dirs(targets):
        ledger = Ledger(sweep_dir)
        resolved = states(ledger)
        conditions = parse_where(where, [e.get("config", {}) for e in ledger.jobs.values()])
        picked = [jid for jid, e in ledger.jobs.items()
                  if resolved[jid][0] in ("pending", "running")
                  and matches(dict(conditions), e.get("config", {}))]
        by_backend: dict[str, list[str]] = {}
        scheduled = set(backends.schedulers())
        alone = _pack_members_alone(ledger, resolved, picked)
        for jid in picked:
            e = ledger.jobs[jid]
            if jid in alone:  # its pack runs on for the others: jobs.pack stops it alone
                _request_cancel(e)
            elif e.get("backend") in scheduled:
                if valid_id(e.get("scheduler_id")):  # never `bkill 0`, never an option
                    by_backend.setdefault(e["backend"], []).append(e["scheduler_id"])
            elif e.get("backend") == "local":  # that very process, not a reused pid
                backends.get("local").cancel_entry(e)
            ledger.update(jid, state="cancelled", reason="cancelled by sweep cancel")
        for backend, ids in by_backend.items():
            backends.get(backend).cancel(sweep_dir, list(dict.fromkeys(ids)))
        name = terminal(ledger.data.get("sweep", sweep_dir.name))
        if picked:
            print(f"sweep {name}: cancelled {len(picked)} jobs; relaunch to resubmit them",
                  file=out)
        else:
            print(f"sweep {name}: cancelled 0 jobs: none is pending or running"
                  + (" and matches " + " ".join(where) if where else ""), file=out)
    return 0


def _pack_members_alone(ledger: Ledger, resolved: dict[str, tuple[str, str | None]],
                        picked: list[str]) -> set[str]:
    """The picked jobs that share their scheduler id (a pack, resources.pack) with a job that
    is queued or running and not picked: cancelling the id would stop that one too."""
    sharing: dict[tuple[Any, Any], list[str]] = {}
    for jid, e in ledger.jobs.items():
        if resolved[jid][0] in ("pending", "running") and valid_id(e.get("scheduler_id")):
            sharing.setdefault((e.get("backend"), e["scheduler_id"]), []).append(jid)
    chosen = set(picked)
    return {jid for members in sharing.values() if not chosen.issuperset(members)
            for jid in members if jid in chosen}


def _request_cancel(entry: dict[str, Any]) -> None:
    """Ask the pack that runs (or will run) the job to stop it (jobs.pack: CANCEL_REQUEST in
    its directory, made if the job has not started: the pack then never starts it)."""
    out = Path(entry["output_dir"])
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / CANCEL_REQUEST).write_text("sweep cancel\n")
    except OSError as exc:
        raise UserError(f"cannot ask the pack of job {entry.get('job_id', '?')} to stop it: "
                        f"{out}: {exc.strerror or exc}") from None


def logs(job: str, targets: list[str], out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    for sweep_dir in sweep_dirs(targets):
        ledger = Ledger(sweep_dir)
        hits = [(jid, e) for jid, e in ledger.jobs.items()
                if jid.startswith(job) or str(e.get("scheduler_id")) == job]
        if len(hits) > 1:
            packed = all(str(e.get("scheduler_id")) == job for _, e in hits)
            raise UserError(f"{job}: matches {len(hits)} jobs"
                            + ("; it is a pack (resources.pack): give one of its job ids, "
                               + ", ".join(jid for jid, _ in hits[:8]) if packed
                               else "; give more of the id"))
        if not hits:
            continue
        jid, e = hits[0]
        state, reason = states(ledger)[jid]
        print(terminal(f"job {jid}: {state}" + (f": {reason}" if reason else "")), file=out)
        paths = [log_path(ledger, e)]
        sid = str(e.get("scheduler_id"))
        if Path(paths[0]).name == f"{sid}.{jid}.out":  # a packed job's own; then its pack's
            paths += [str(Path(paths[0]).with_name(f"{sid}{ext}")) for ext in (".out", ".err")]
        elif e.get("backend") in backends.schedulers() and paths[0].endswith(".out"):
            paths.append(paths[0].removesuffix(".out") + ".err")
        for path in paths:
            print(f"==> {terminal(rel_path(path))} <==", file=out)
            if not inside(sweep_dir, path):
                print("(not shown: outside the sweep directory)", file=out)
                continue
            try:
                print(read_log(path), file=out, end="")
            except OSError:
                print("(no log yet)", file=out)
        return 0
    raise UserError(f"{job}: no such job in {', '.join(map(str, sweep_dirs(targets)))}")
