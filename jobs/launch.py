"""`sweep launch`: expand a spec, render its scripts, and run or show what would be submitted."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import IO

from analysis.safe_text import terminal
from jobs import backends
from jobs.backends.base import Refused
from jobs.backends.local import LocalRun, visible_gpus
from jobs.grid import Job, expand
from jobs.ledger import Ledger
from jobs.running import rel_path, states
from jobs.safeyaml import control_char
from jobs.scripts import label, pack_note, render_staged_submission, write_configs
from jobs.sharing import by_stage, sharing_note, unshare_known
from jobs.spec import FINETUNE_STAGE, SWEEP_FILE_PREFIXES, SWEEP_FILES, Spec, load_spec
from quantlib.errors import UserError, os_error
from quantlib.jobdir import CANCEL_REQUEST, LEDGER, now, valid_id


def job_table(jobs: list[Job], states: dict[str, str] | None = None) -> str:
    staged = any(j.stage for j in jobs)
    head = (["stage"] if staged else []) + ["job id", "task", "method", "nbits"] + (
        ["after"] if staged else []) + ["output dir"] + (["state"] if states else [])
    rows = [([j.stage or "-"] if staged else [])
            + [j.id, str(j.get("task")), str(j.get("method")), str(j.get("nbits", "-"))]
            + ([j.after or "-"] if staged else []) + [rel_path(j.output_dir)]
            + ([states[j.id]] if states else []) for j in jobs]
    rows = [[terminal(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r).rstrip() for r in [head, *rows])


def dry_run(spec: Spec, jobs: list[Job], backend: str, out: IO[str]) -> int:
    sweep_dir = Path(spec.sweep_dir).absolute()
    be = backends.get(backend)
    configs = write_configs(spec, jobs, sweep_dir)
    print(f"sweep {spec.name}: {len(jobs)} jobs (dry run, backend {backend}; nothing submitted)",
          file=out)
    print(job_table(jobs), file=out)
    notes = be.describe(spec) + sharing_note(jobs) + pack_note(spec, backend)
    if notes:
        print("", *notes, sep="\n", file=out)
    print(f"\nscripts in {rel_path(sweep_dir / 'scripts')}; would run:", file=out)
    if not be.scheduler:
        for script, chunk in be.render(spec, jobs, configs, sweep_dir):
            first, last = be.first_index, be.first_index + len(chunk) - 1
            print(f"  {be.index_var}=N {be.submit_line(Path(rel_path(script)))}  # N = "
                  + (f"{first}..{last}: {len(chunk)} jobs" if last > first else f"{first}: 1 job")
                  + (" (a later-stage job once its parent completed)"
                     if any(j.after for j in chunk) else ""), file=out)
    elif any(j.after for j in jobs):
        script, lines = render_staged_submission(be, spec, jobs, configs, sweep_dir)
        print(f"  (all of it: bash {shlex.quote(rel_path(script))})", file=out)
        for line in lines:
            print(f"  {line}", file=out)
    else:
        for script, _ in be.render(spec, jobs, configs, sweep_dir):
            print(f"  {be.submit_line(Path(rel_path(script)))}", file=out)
    return 0


def launch(spec_path: str, backend: str, *, dry: bool = False, force: bool = False,
           max_parallel: int | None = None, sweep_dir: str | None = None,
           max_jobs: int | None = None, prefetch: bool = True,
           out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    spec = load_spec(spec_path)
    if sweep_dir:
        spec.sweep_dir = sweep_dir
    if max_jobs is not None:
        spec.max_jobs = max_jobs
    for what, value in (("--sweep-dir", spec.sweep_dir), ("the working directory", os.getcwd()),
                        ("the Python interpreter", spec.resources.python or sys.executable)):
        bad = control_char(value)
        if bad:
            raise UserError(f"{what} {value!r} holds the control character {bad!r}: job "
                            "scripts cannot name it safely")
    spec.offline = prefetch
    jobs = expand(spec)  # writes nothing
    _check_sweep_dir(spec, jobs)
    if dry:
        return dry_run(spec, jobs, backend, out)
    if backends.get(backend).scheduler:
        return submit_cluster(spec, jobs, backend, force=force, out=out)
    return run_local(spec, jobs, force=force, max_parallel=max_parallel, out=out)


def _check_sweep_dir(spec: Spec, jobs: list[Job]) -> None:
    """A sweep directory is new, empty, or this sweep's: its ledger names it, or it holds only
    what a launch of a sweep writes (scripts, configs, logs, ...) and this sweep's job
    directories. Never a directory of the user's files or another sweep's, whose scripts and
    configs a launch would overwrite."""
    where = Path(spec.sweep_dir)
    own = set(SWEEP_FILES)
    base = os.path.join(os.path.abspath(where), "")
    for job in jobs:  # the first component of each job's output directory in the sweep's
        out = os.path.abspath(job.output_dir)
        if out.startswith(base) and len(out) > len(base):
            own.add(out[len(base):].split(os.sep, 1)[0])
    try:
        if not where.exists():
            return
        if not where.is_dir():
            raise UserError(f"{where}: the sweep directory (sweep_dir / --sweep-dir) is not a "
                            "directory; nothing was written")
        ledger = where / LEDGER
        if ledger.is_file():
            try:
                if ledger.stat().st_size > 256 << 20:
                    raise ValueError("too large")
                data = json.loads(ledger.read_text(encoding="utf-8"))
                owner = data.get("sweep") if isinstance(data, dict) else None
            except (OSError, ValueError, RecursionError):
                owner = None
            if owner != spec.name:
                raise UserError(f"{where}: holds the ledger of "
                                + (f"sweep {owner!r}" if isinstance(owner, str) else
                                   "something else") + f", not of sweep {spec.name!r}: give "
                                "this sweep a directory of its own (sweep_dir / --sweep-dir); "
                                "nothing was written")
            return
        foreign = sorted(p.name for p in where.iterdir() if p.name not in own
                         and not p.name.startswith(SWEEP_FILE_PREFIXES))
    except OSError as exc:
        raise UserError(f"{where}: cannot read the sweep directory: {os_error(exc)}") from None
    if foreign:
        shown = ", ".join(repr(n) for n in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UserError(f"{where}: the sweep directory is not empty and is no sweep's (it holds "
                        f"{shown}): give a new or empty directory (sweep_dir / --sweep-dir); "
                        "nothing was written")


def submit_cluster(spec: Spec, jobs: list[Job], backend: str, *, force: bool,
                   out: IO[str]) -> int:
    """Submit what is not completed (all with --force) and not already queued or running;
    return as soon as the scheduler has it."""
    be = backends.get(backend)
    be.require()
    sweep_dir = Path(spec.sweep_dir).absolute()
    ledger = Ledger(sweep_dir)
    with ledger.locked():  # no local launch runs meanwhile: we hold its lock
        jobs = ledger.register(spec.name, spec.path, jobs, force)
        resolved = states(ledger, launcher_active=False)
        unsure = [j for j in jobs if resolved[j.id][0] == "unknown"]
        if unsure and not force:  # it may still be queued or running: never submit it twice
            raise UserError(
                f"sweep {spec.name}: the state of {len(unsure)} job(s) cannot be established "
                f"({resolved[unsure[0].id][1]}): "
                + ", ".join(j.id for j in unsure[:5]) + (", ..." if len(unsure) > 5 else "")
                + "; nothing was submitted: launch again once the scheduler answers (sweep "
                "status shows it), or with --force to submit them anyway")
        queued = [j for j in jobs if resolved[j.id][0] in ("pending", "running")
                  or (j in unsure and not force)]
        todo, done = _todo(jobs, queued, force, resolved)
        if not todo:
            print(f"sweep {spec.name}: nothing to submit ({done} completed, {len(queued)} "
                  f"queued or running)", file=out)
            return 0
        _prefetch(spec, todo)
        jobs, todo = _unshare_known(ledger, jobs, todo)
        configs = write_configs(spec, todo, sweep_dir)
        for j in todo:  # an earlier `sweep cancel` of it in a pack: this submission runs it
            try:
                (j.output_dir / CANCEL_REQUEST).unlink(missing_ok=True)
            except OSError as exc:
                raise UserError(f"{j.output_dir}: cannot clear its cancel request: "
                                f"{os_error(exc)}; nothing was submitted") from None
        # a later-stage job waits for its parent when the parent is submitted now or still
        # queued / running; a queued job whose parent is resubmitted waits for a failed id:
        # cancelled and resubmitted with it
        by_id = {j.id: j for j in jobs}
        todo_ids = {j.id for j in todo}
        stale: list[Job] = []
        for j in queued:  # jobs in stage order: a parent is decided before its children
            if j.after in todo_ids or any(j.after == p.id for p in stale):
                stale.append(j)
        for j in stale:
            entry = ledger.jobs[j.id]
            if valid_id(entry.get("scheduler_id")):
                backends.get(entry.get("backend") or backend).cancel(
                    sweep_dir, [entry["scheduler_id"]])
        if stale:
            configs.update(write_configs(spec, stale, sweep_dir))
            todo = [j for j in jobs if j.id in todo_ids or j in stale]
            queued = [j for j in queued if j not in stale]
        new_ids: dict[str, str] = {}
        submitted: list[tuple[Job, object, str | None]] = []
        try:
            for stage_jobs in by_stage(spec, todo):
                deps = [_dependency(j, by_id, new_ids, resolved, ledger) for j in stage_jobs]
                try:
                    handles = be.submit(spec, stage_jobs, deps, configs, sweep_dir,
                                        stage_jobs[0].stage)
                except Refused as exc:  # what was taken
                    submitted += [(stage_jobs[i], h, deps[i])
                                  for i, h in sorted(exc.submitted.items())]
                    raise UserError(f"{exc}" + (f" ({len(submitted)} jobs submitted before "
                                                "that are recorded; relaunch to submit the "
                                                "rest)" if submitted else "")) from None
                for j, h, d in zip(stage_jobs, handles, deps):
                    new_ids[j.id] = h.job_id
                    submitted.append((j, h, d))
        finally:  # recorded even when a later submission was refused: never submitted twice
            for job, handle, dep in submitted:
                entry = ledger.jobs[job.id]
                entry.update(state="submitted", backend=backend, scheduler_id=handle.job_id,
                             submitted=now(), attempts=entry.get("attempts", 0) + 1,
                             exit_status=None, reason=None, log=str(handle.log),
                             after=job.after, waits_for=dep)
            ledger.save()
    arrays = sorted({h.job_id.split("_")[0] for _, h, _ in submitted})
    waiting = sum(1 for _, _, d in submitted if d)
    print(f"sweep {spec.name}: submitted {len(todo)} jobs to {backend.upper()} "
          f"(job{'s' if len(arrays) > 1 else ''} {', '.join(arrays)}); {done} already "
          f"completed, {len(queued)} queued or running"
          + (f"; {waiting} wait for their previous-stage job ({be.dependency_option('ID')})"
             if waiting else "")
          + (f"; {len(stale)} queued behind a failed job were resubmitted" if stale else ""),
          file=out)
    print(f"follow with: sweep status {shlex.quote(rel_path(sweep_dir))}; a job's log: sweep logs "
          f"JOB_ID {shlex.quote(rel_path(sweep_dir))}; results: sweep collect "
          f"{shlex.quote(rel_path(sweep_dir))}", file=out)
    return 0


def _dependency(job: Job, by_id: dict[str, Job], new_ids: dict[str, str],
                resolved: dict[str, tuple[str, str | None]], ledger: Ledger) -> str | None:
    """The scheduler id a job must wait for: its parent's, when the parent is submitted now or
    still queued / running; None when the parent completed (or there is none)."""
    if job.after is None or job.after not in by_id:
        return None
    if job.after in new_ids:
        return new_ids[job.after]
    if resolved[job.after][0] in ("pending", "running"):
        parent = ledger.jobs[job.after].get("scheduler_id")
        if not valid_id(parent):  # queued, but under no id we can name: never start early
            raise UserError(f"job {job.id} waits for {job.after}, which is queued or running "
                            "without a scheduler id in the ledger: cancel it on the scheduler "
                            "and launch again with --force; nothing was submitted")
        return parent
    return None


def _writable(folder: Path, what: str) -> None:
    """Fail before any job starts when `folder` cannot take files (read-only, full)."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UserError(f"{folder}: cannot write {what} there: {os_error(exc)}; nothing "
                        "was started") from None


def _prefetch(spec: Spec, todo: list[Job]) -> None:
    """Models and datasets into the Hugging Face cache before any job runs (not with
    --no-prefetch: then each job resolves its own, online)."""
    if spec.offline:
        from jobs.prefetch import prefetch

        prefetch(spec, todo)


def _unshare_known(ledger: Ledger, jobs: list[Job], todo: list[Job]
                   ) -> tuple[list[Job], list[Job]]:
    """After the prefetch: the shared fine-tunings of checkpoints that need none are dropped
    (jobs.sharing.unshare_known), from the ledger too where they never ran."""
    jobs, dropped = unshare_known(jobs)
    if not dropped:
        return jobs, todo
    for jid in dropped:
        if not ledger.jobs.get(jid, {}).get("attempts"):
            ledger.jobs.pop(jid, None)
    by_id = {j.id: j for j in jobs}
    for j in jobs:
        if j.id in ledger.jobs and ledger.jobs[j.id].get("after") in dropped:
            ledger.jobs[j.id]["after"] = None
    ledger.save()
    return jobs, [by_id[j.id] for j in todo if j.id in by_id]


def _todo(jobs: list[Job], busy: list[Job], force: bool,
          resolved: dict[str, tuple[str, str | None]]) -> tuple[list[Job], int]:
    """(the jobs to run: not `busy` (queued, running, adopted), not completed unless --force,
    less the shared fine-tuning jobs whose children all completed: a relaunch never
    fine-tunes for nothing; how many jobs are completed and not run again)."""
    skip = {j.id for j in busy}
    todo = [j for j in jobs if j.id not in skip
            and (force or resolved[j.id][0] != "completed")]
    if not force:  # a shared job with a child to run, or still queued behind it, stays
        waiting = {j.after for j in jobs
                   if j.shared_finetune and resolved[j.id][0] != "completed"}
        todo = [j for j in todo if j.stage != FINETUNE_STAGE or j.id in waiting]
    skip.update(j.id for j in todo)
    done = sum(1 for j in jobs if j.id not in skip and resolved[j.id][0] == "completed")
    return todo, done


def run_local(spec: Spec, jobs: list[Job], *, force: bool, max_parallel: int | None,
              out: IO[str]) -> int:
    sweep_dir = Path(spec.sweep_dir).absolute()
    ledger = Ledger(sweep_dir)
    res = spec.resources
    gpus = visible_gpus()
    if res.gpus > 0 and gpus and res.gpus > len(gpus):
        raise UserError(f"{spec.path}: resources.gpus: each job asks for {res.gpus} GPUs but "
                        f"this machine shows {len(gpus)}")
    pool = gpus if (gpus and res.gpus > 0) else []
    if max_parallel is None:
        max_parallel = max(1, len(pool) // res.gpus) if pool else 1
    with ledger.locked():
        jobs = ledger.register(spec.name, spec.path, jobs, force)
        resolved = states(ledger, launcher_active=False)  # we hold the launch lock
        # a job whose process an earlier (killed) launcher left running is never started
        # again: this launch adopts it (waits for it), even with --force
        adopted = [j for j in jobs if resolved[j.id][0] == "running"]
        todo, done = _todo(jobs, adopted, force, resolved)
        print(f"sweep {spec.name}: {len(jobs)} jobs, {done} already completed"
              f"{' (rerun: --force)' if done and not force else ''}, {len(todo)} to run "
              f"locally, at most {max_parallel} at once"
              + (f" on GPUs {','.join(pool)}" if pool else " on CPU")
              + (f"; {len(adopted)} still running from a launcher that stopped: adopted, "
                 "not started again" if adopted else ""), file=out)
        if res.gpus > 0 and not gpus:
            print(f"sweep: note: the spec asks for {res.gpus} GPU(s) per job and none is "
                  "visible: running on CPU", file=out)
        print(f"logs in {rel_path(sweep_dir / 'logs')}, ledger {rel_path(ledger.path)}", file=out,
              flush=True)
        if not todo and not adopted:
            return 0
        _prefetch(spec, todo)
        jobs, todo = _unshare_known(ledger, jobs, todo)
        for job in todo:  # queued here; `sweep status` shows them pending while we run
            ledger.jobs[job.id].update(state="pending", backend="local")
        ledger.save()
        _writable(sweep_dir / "logs", "job logs")
        configs = write_configs(spec, todo, sweep_dir)
        be = backends.get("local")
        work = [(j, (script, i), label(spec, j))
                for script, chunk in be.render(spec, todo, configs, sweep_dir)
                for i, j in enumerate(chunk, be.first_index)]
        runner = LocalRun(ledger, work, max_parallel, res.gpus if pool else 0, pool,
                          sweep_dir / "logs", adopted=[(j, label(spec, j)) for j in adopted])
        rc = runner.run()
        if ledger.unsaved:  # the disk refused it while jobs ran: the launch's error if still
            ledger.save()
        c = runner.counts
        print(f"sweep {spec.name}: {c['completed']} completed, {c['failed']} failed, "
              f"{c['interrupted']} interrupted"
              + (f", {c['skipped']} skipped (previous stage failed)" if c["skipped"] else "")
              + "; collect with: sweep collect "
              f"{shlex.quote(rel_path(sweep_dir))} --to xlsx", file=out)
        failed = [j for j in todo + adopted if ledger.jobs[j.id]["state"] != "completed"]
        for j in failed[:10]:
            entry = ledger.jobs[j.id]
            print(f"  {entry['state']}: {j.id} {terminal(label(spec, j))}: "
                  f"{terminal(entry.get('reason'))} "
                  f"(log: {rel_path(Path(entry.get('log', '')))})", file=out)
        return rc
