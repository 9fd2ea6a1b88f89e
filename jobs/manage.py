"""`sweep status`, `sweep cancel` and `sweep logs`: a running sweep, from its ledger."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import IO, Any

from jobs import cluster
from jobs.errors import UserError
from jobs.grid import matches
from jobs.ledger import LEDGER, Ledger, entry_path
from jobs.procs import job_process_alive
from jobs.state import elapsed, job_state

CLUSTER = ("slurm", "lsf")


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


def states(ledger: Ledger, launcher_active: bool | None = None
           ) -> dict[str, tuple[str, str | None]]:
    """Every job's (state, reason); one scheduler call per backend."""
    if launcher_active is None:
        launcher_active = ledger.launcher_active()
    folder = ledger.sweep_dir / cluster.SUBMITIT_DIR
    sched: dict[str, str] = {}
    for backend in CLUSTER:
        ids = [e["scheduler_id"] for e in ledger.jobs.values()
               if e.get("backend") == backend and e.get("scheduler_id")]
        sched.update({f"{backend}:{k}": v
                      for k, v in cluster.scheduler_states(backend, folder, ids).items()})
    out = {}
    for jid, e in ledger.jobs.items():
        key = f"{e.get('backend')}:{e.get('scheduler_id')}"
        asked = e.get("backend") in CLUSTER and e.get("scheduler_id")
        out[jid] = job_state(e, sched.get(key, "UNKNOWN") if asked and sched else None,
                             launcher_active)
    return out


def log_path(ledger: Ledger, entry: dict[str, Any]) -> str:
    """The job's log: where its launch recorded it (local, SLURM), or where our LSF plugin
    (submitit's layout) puts it."""
    if entry.get("backend") == "lsf" and entry.get("scheduler_id"):
        handle = cluster.job_handle(entry["backend"], ledger.sweep_dir / cluster.SUBMITIT_DIR,
                                    entry["scheduler_id"])
        return str(handle.paths.stdout)
    return entry.get("log") or "-"


def rel_path(path: str | os.PathLike) -> str:
    """A path as the user can type it from here (relative where that is possible)."""
    try:
        return os.path.relpath(path)
    except ValueError:
        return path


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
            rows.append([jid, str(c.get("task", "")), str(c.get("method", "")),
                         str(c.get("nbits", "-")), str(e.get("scheduler_id") or "-"), state,
                         elapsed(e, state), _cut(reason or "-", REASON_WIDTH),
                         rel_path(log_path(ledger, e))]
                        + ([e.get("stage") or "-", e.get("after") or "-"] if staged else []))
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        print(f"sweep {ledger.data.get('sweep', sweep_dir.name)} ({rel_path(str(sweep_dir))})",
              file=out)
        for r in [head, *rows]:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip(), file=out)
        if long:
            for jid in sorted(ledger.jobs, key=lambda j: ledger.jobs[j].get("index", 0)):
                if resolved[jid][1]:
                    print(f"{jid} {resolved[jid][0]}: {resolved[jid][1]}", file=out)
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
    a key that no trainer argument and no job of the sweep has is a user error."""
    from jobs.safeyaml import YamlRefused, load
    from quantlib.configs import all_keys, suggest

    known = set(all_keys()) | {k for c in configs for k in c}
    out = []
    for cond in where:
        key, sep, text = cond.partition("=")
        if not sep or not key:
            raise UserError(f"--where {cond}: write KEY=VALUE, e.g. task=mrpc")
        if key not in known:
            raise UserError(f"--where {cond}: unknown key {key!r}{suggest(key, sorted(known))}"
                            "; give a trainer argument, e.g. task=mrpc")
        try:
            value = load(text.encode()) if text else ""
        except (YamlRefused, ValueError):
            value = text
        out.append((key, text if isinstance(value, (dict, list)) or value is None else value))
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
        for jid in picked:
            e = ledger.jobs[jid]
            if e.get("backend") in CLUSTER:
                by_backend.setdefault(e["backend"], []).append(e["scheduler_id"])
            elif e.get("pid") and job_process_alive(e):  # that very process, not a reused pid
                try:  # the local launcher's child: its whole process group
                    os.killpg(e["pid"], signal.SIGINT)
                except ProcessLookupError:
                    pass
            ledger.update(jid, state="cancelled", reason="cancelled by sweep cancel")
        for backend, ids in by_backend.items():
            cluster.cancel(backend, sweep_dir / cluster.SUBMITIT_DIR, ids)
        name = ledger.data.get("sweep", sweep_dir.name)
        if picked:
            print(f"sweep {name}: cancelled {len(picked)} jobs; relaunch to resubmit them",
                  file=out)
        else:
            print(f"sweep {name}: cancelled 0 jobs: none is pending or running"
                  + (" and matches " + " ".join(where) if where else ""), file=out)
    return 0


def logs(job: str, targets: list[str], out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    for sweep_dir in sweep_dirs(targets):
        ledger = Ledger(sweep_dir)
        hits = [(jid, e) for jid, e in ledger.jobs.items()
                if jid.startswith(job) or str(e.get("scheduler_id")) == job]
        if len(hits) > 1:
            raise UserError(f"{job}: matches {len(hits)} jobs; give more of the id")
        if not hits:
            continue
        jid, e = hits[0]
        state, reason = states(ledger)[jid]
        print(f"job {jid}: {state}" + (f": {reason}" if reason else ""), file=out)
        paths = [log_path(ledger, e)]
        if e.get("backend") in CLUSTER and paths[0].endswith(".out"):  # and its stderr
            paths.append(paths[0].removesuffix(".out") + ".err")
        for path in paths:
            print(f"==> {rel_path(path)} <==", file=out)
            try:
                print(Path(path).read_text(errors="replace"), file=out, end="")
            except OSError:
                print("(no log yet)", file=out)
        return 0
    raise UserError(f"{job}: no such job in {', '.join(map(str, sweep_dirs(targets)))}")
