"""`sweep launch`: expand a spec, render its scripts, and run or show what would be submitted."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import IO

from jobs import slurm
from jobs.errors import UserError, os_error
from jobs.grid import Job, expand
from jobs.ledger import Ledger
from jobs.local import LocalRun, visible_gpus
from jobs.manage import rel_path, states
from jobs.safeyaml import control_char
from jobs.scripts import (
    dependency_option,
    env_lines,
    label,
    render_arrays,
    render_local,
    render_staged_submission,
    write_configs,
)
from jobs.snapshot import snapshot
from jobs.spec import Spec, load_spec
from quantlib.outputs import now


def job_table(jobs: list[Job], states: dict[str, str] | None = None) -> str:
    staged = any(j.stage for j in jobs)
    head = (["stage"] if staged else []) + ["job id", "task", "method", "nbits"] + (
        ["after"] if staged else []) + ["output dir"] + (["state"] if states else [])
    rows = [([j.stage] if staged else []) + [j.id, str(j.get("task")), str(j.get("method")),
                                             str(j.get("nbits", "-"))]
            + ([j.after or "-"] if staged else []) + [rel_path(j.output_dir)]
            + ([states[j.id]] if states else []) for j in jobs]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r).rstrip() for r in [head, *rows])


def dry_run(spec: Spec, jobs: list[Job], backend: str, out: IO[str]) -> int:
    sweep_dir = Path(spec.sweep_dir).absolute()
    configs = write_configs(spec, jobs, sweep_dir)
    print(f"sweep {spec.name}: {len(jobs)} jobs (dry run, backend {backend}; nothing submitted)",
          file=out)
    print(job_table(jobs), file=out)
    print(f"\nscripts in {rel_path(sweep_dir / 'scripts')}; would run:", file=out)
    if backend == "local":
        for job in jobs:
            script = render_local(spec, job, configs[job.id], sweep_dir)
            after = f"  # after {job.after} completes" if job.after else ""
            print(f"  bash {shlex.quote(rel_path(script))}{after}", file=out)
    elif spec.staged:
        script, lines = render_staged_submission(backend, spec, jobs, configs, sweep_dir)
        print(f"  (all of it: bash {shlex.quote(rel_path(script))})", file=out)
        for line in lines:
            print(f"  {line}", file=out)
    else:
        for script in render_arrays(backend, spec, jobs, configs, sweep_dir):
            cmd = "bsub <" if backend == "lsf" else "sbatch"
            print(f"  {cmd} {shlex.quote(rel_path(script))}", file=out)
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
    jobs = expand(spec)
    if dry:
        return dry_run(spec, jobs, backend, out)
    if backend != "local":
        return submit_cluster(spec, jobs, backend, force=force, out=out)
    return run_local(spec, jobs, force=force, max_parallel=max_parallel, out=out)


def submit_cluster(spec: Spec, jobs: list[Job], backend: str, *, force: bool,
                   out: IO[str]) -> int:
    """Submit what is not completed (all with --force) and not already queued or running;
    return as soon as the scheduler has it."""
    from jobs import cluster

    cluster.require(backend)
    sweep_dir = Path(spec.sweep_dir).absolute()
    ledger = Ledger(sweep_dir)
    with ledger.locked():  # no local launch runs meanwhile: we hold its lock
        jobs = ledger.register(spec.name, spec.path, jobs, force)
        resolved = states(ledger, launcher_active=False)
        queued = [j for j in jobs if resolved[j.id][0] in ("pending", "running")]
        todo = [j for j in jobs if j not in queued
                and (force or resolved[j.id][0] != "completed")]
        done = len(jobs) - len(todo) - len(queued)
        if not todo:
            print(f"sweep {spec.name}: nothing to submit ({done} completed, {len(queued)} "
                  f"queued or running)", file=out)
            return 0
        _prefetch(spec, todo)
        configs = write_configs(spec, todo, sweep_dir)
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
            cluster.cancel(entry.get("backend", backend), sweep_dir / cluster.SUBMITIT_DIR,
                           [entry["scheduler_id"]])
        if stale:
            configs.update(write_configs(spec, stale, sweep_dir))
            todo = [j for j in jobs if j.id in todo_ids or j in stale]
            queued = [j for j in queued if j not in stale]
        new_ids: dict[str, str] = {}
        submitted: list[tuple[Job, object, str | None]] = []
        try:
            for stage_jobs in _by_stage(spec, todo):
                deps = [_dependency(j, by_id, new_ids, resolved, ledger) for j in stage_jobs]
                try:
                    handles = _submit(backend, spec, stage_jobs, deps, configs, sweep_dir)
                except (cluster.PartialSubmission, slurm.Refused) as exc:  # what was taken
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
          + (f"; {waiting} wait for their previous-stage job ({dependency_option(backend, 'ID')})"
             if waiting else "")
          + (f"; {len(stale)} queued behind a failed job were resubmitted" if stale else ""),
          file=out)
    print(f"follow with: sweep status {shlex.quote(rel_path(sweep_dir))}; a job's log: sweep logs "
          f"JOB_ID {shlex.quote(rel_path(sweep_dir))}; results: sweep collect "
          f"{shlex.quote(rel_path(sweep_dir))}", file=out)
    return 0


def _submit(backend: str, spec: Spec, jobs: list[Job], deps: list[str | None],
            configs: dict[str, Path], sweep_dir: Path) -> list[slurm.Submitted]:
    """One stage's jobs to the scheduler: SLURM gets the scripts the dry run shows (jobs.slurm),
    LSF goes through our submitit plugin (jobs.cluster)."""
    from jobs import cluster

    if backend == "slurm":
        return slurm.submit(spec, jobs, deps, configs, sweep_dir,
                            jobs[0].stage or "" if spec.staged else "")
    items = [(str(configs[j.id]), d) for j, d in zip(jobs, deps)]
    try:
        handles = cluster.submit(backend, sweep_dir / cluster.SUBMITIT_DIR, spec.name,
                                 spec.resources, items, snapshot(sweep_dir), env_lines(spec))
    except cluster.PartialSubmission as exc:
        exc.submitted = {i: slurm.Submitted(h.job_id, h.paths.stdout)
                         for i, h in exc.submitted.items()}
        raise
    return [slurm.Submitted(h.job_id, h.paths.stdout) for h in handles]


def _dependency(job: Job, by_id: dict[str, Job], new_ids: dict[str, str],
                resolved: dict[str, tuple[str, str | None]], ledger: Ledger) -> str | None:
    """The scheduler id a job must wait for: its parent's, when the parent is submitted now or
    still queued / running; None when the parent completed (or there is none)."""
    if job.after is None or job.after not in by_id:
        return None
    if job.after in new_ids:
        return new_ids[job.after]
    if resolved[job.after][0] in ("pending", "running"):
        return ledger.jobs[job.after].get("scheduler_id")
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


def _by_stage(spec: Spec, jobs: list[Job]) -> list[list[Job]]:
    """Jobs grouped by stage, in stage order (empty stages left out)."""
    groups = [[j for j in jobs if j.stage == st.name] for st in spec.stages]
    return [g for g in groups if g]


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
        todo = [j for j in jobs if j not in adopted
                and (force or resolved[j.id][0] != "completed")]
        done = len(jobs) - len(todo) - len(adopted)
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
        for job in todo:  # queued here; `sweep status` shows them pending while we run
            ledger.jobs[job.id].update(state="pending", backend="local")
        ledger.save()
        _writable(sweep_dir / "logs", "job logs")
        configs = write_configs(spec, todo, sweep_dir)
        work = [(j, render_local(spec, j, configs[j.id], sweep_dir), label(spec, j))
                for j in todo]
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
            print(f"  {entry['state']}: {j.id} {label(spec, j)}: {entry.get('reason')} "
                  f"(log: {rel_path(Path(entry.get('log', '')))})", file=out)
        return rc
