"""Render job scripts from the jinja2 templates; write per-job runtime configs."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.grid import MARKER, Job, describe
from jobs.resources import MAX_ARRAY
from jobs.snapshot import snapshot
from jobs.spec import Spec
from quantlib.atomic import write_text
from quantlib.configs import with_defaults
from quantlib.jobdir import FINETUNED, RUN_KEYS, STAGE_KEYS, ConfigRef, write_configs_file
from templates import environment

PATH_KEYS = ("data_dir",)
MAYBE_PATH_KEYS = ("model_name_or_path", "tokenizer_name", "teacher_name_or_path")

_env = environment()


@dataclass(frozen=True)
class ScriptJob:
    id: str
    label: str
    array_index: int
    config: ConfigRef


def runtime_config(spec: Spec, job: Job, local: dict[str, str | None] | None = None
                   ) -> dict[str, Any]:
    """The full configuration the job runs with: defaults filled in, local paths absolute.
    `local`: a cache of which values name local paths (write_configs: one stat per value, not
    per job)."""
    config = with_defaults(job.config)
    local = {} if local is None else local
    for key in PATH_KEYS + MAYBE_PATH_KEYS:
        value = config.get(key)
        if not value or not isinstance(value, str):
            continue
        if value not in local:
            path = Path(value)
            local[value] = str(path.absolute()) if path.exists() else None
            local["\0abs:" + value] = str(path.absolute())
        if local[value] is not None or key in PATH_KEYS:
            config[key] = local[value] or local["\0abs:" + value]
    for key, value in config.items():  # a later stage starts from its parent's saved model
        if isinstance(value, str) and value.startswith(MARKER):
            assert job.upstream_dir is not None and value == MARKER + str(job.after)
            config[key] = str(job.upstream_dir / "model")
    if "\0sweep_dir" not in local:  # the same for every job ("\0": never a config value)
        local["\0sweep_dir"] = str(Path(spec.sweep_dir).absolute())
    bookkeeping = dict(job_id=job.id, sweep=spec.name, sweep_dir=local["\0sweep_dir"],
                       output_dir=str(job.output_dir),
                       nproc_per_node=max(1, spec.resources.gpus),
                       max_requeues=spec.resources.max_requeues, stage=job.stage or None,
                       after=job.after,
                       upstream_dir=str(job.upstream_dir) if job.upstream_dir else None,
                       finetune_from=str(job.upstream_dir / FINETUNED)
                       if job.shared_finetune and job.upstream_dir else None)
    assert set(bookkeeping) == set(RUN_KEYS + STAGE_KEYS)  # one list: quantlib.jobdir
    config.update(bookkeeping)
    return config


def write_configs(spec: Spec, jobs: list[Job], sweep_dir: Path) -> dict[str, ConfigRef]:
    """The jobs' runtime configs in one file (quantlib.jobdir.write_configs_file): where each
    job's entry is, by job id."""
    local: dict[str, str | None] = {}
    refs = write_configs_file(sweep_dir, [runtime_config(spec, job, local) for job in jobs])
    return {job.id: ref for job, ref in zip(jobs, refs)}


def label(spec: Spec, job: Job) -> str:
    text = describe(spec, job.config)
    return f"{job.stage}: {text}" if job.stage else text


def env_lines(spec: Spec) -> list[str]:
    """Shell lines every job script runs first, on every backend: the spec's exports and setup
    lines, then (when the launch fetched models and datasets) offline hub access."""
    lines = spec.resources.shell_lines()
    if spec.offline:
        from jobs.prefetch import OFFLINE_ENV

        lines.append("export " + " ".join(f"{k}={v}" for k, v in OFFLINE_ENV.items())
                     + "  # fetched at launch: read from the cache")
    return lines


def _common(spec: Spec, sweep_dir: Path) -> dict[str, Any]:
    return {"sweep": spec.name, "spec_path": str(Path(spec.path).absolute()),
            "workdir": str(Path.cwd()), "python": spec.resources.python or sys.executable,
            "res": spec.resources, "env_lines": env_lines(spec),
            "log_dir": str(sweep_dir / "logs"), "code": str(snapshot(sweep_dir)), "lsf": False}




def render_local(spec: Spec, jobs: list[Job], configs: dict[str, ConfigRef], sweep_dir: Path
                 ) -> list[tuple[Path, list[Job]]]:
    """The local backend's scripts: one per chunk of at most MAX_ARRAY jobs, as a cluster
    array's (the launcher runs job N of a script as `QUANTSWEEP_TASK=N bash SCRIPT`)."""
    return _render_chunks("local", spec, jobs, configs, sweep_dir) if jobs else []


def _lsf_vars(spec: Spec, sweep_dir: Path, site: Any, name: str, count: int | None) -> dict:
    """What the LSF templates need beyond the common part: the #BSUB options of the dialect,
    the exit-code file and the requeue marker (shell words), the dialect's notes."""
    from jobs.backends.lsf import bsub_options, notes

    logs = str(sweep_dir / "logs")
    stem = "%J_%I" if count else "%J"
    ref = '"${LSB_JOBID:-}_${LSB_JOBINDEX:-0}' if count else '"${LSB_JOBID:-}'
    from jobs.backends.base import REQUEUE

    return {"lsf": True, "requeue_exit": REQUEUE,
            "bsub": bsub_options(spec.resources, site, name, count, f"{logs}/{stem}.out",
                                 f"{logs}/{stem}.err", spec.resources.array_parallelism),
            "exit_file": f'{shlex.quote(logs)}/{ref}.exit"',
            "requeued": f'{shlex.quote(logs)}/{ref}.requeued"',
            "lsf_notes": notes(spec.resources, site)}


def render_arrays_with_jobs(kind: str, spec: Spec, jobs: list[Job], configs: dict[str, ConfigRef],
                            sweep_dir: Path, tag: str = "", site: Any = None,
                            chunk: int = MAX_ARRAY) -> list[tuple[Path, list[Job]]]:
    """One array script per chunk of at most `chunk` jobs (`kind`: lsf, slurm, local; `site`: the
    LSF dialect, jobs.backends.lsf.Site), with the jobs of each script in array order."""
    return _render_chunks(kind, spec, jobs, configs, sweep_dir, tag, site, chunk) if jobs else []


def _render_chunks(kind: str, spec: Spec, jobs: list[Job], configs: dict[str, ConfigRef],
                   sweep_dir: Path, tag: str = "", site: Any = None, chunk: int = MAX_ARRAY
                   ) -> list[tuple[Path, list[Job]]]:
    template = _env.get_template("job.sh.j2" if kind == "local" else f"{kind}_array.sh.j2")
    from jobs import backends

    backend = backends.get(kind)
    chunks = [jobs[i:i + chunk] for i in range(0, len(jobs), chunk)]
    res = spec.resources
    paths = []
    for n, chunk in enumerate(chunks, 1):
        name = (f"{spec.name}.{tag}" if tag else spec.name) + (
            f".{n}" if len(chunks) > 1 else "")
        path = sweep_dir / "scripts" / f"{kind}_array{'_' + tag if tag else ''}_{n}.sh"
        extra = _lsf_vars(spec, sweep_dir, site, name, len(chunk)) if kind == "lsf" else {}
        text = template.render(
            **{**_common(spec, sweep_dir), **extra}, script_path=str(path), array_name=name,
            index_var=backend.index_var,
            parallelism=res.array_parallelism, first=chunk[0].index, last=chunk[-1].index,
            jobs=[ScriptJob(j.id, label(spec, j), backend.first_index + i, configs[j.id])
                  for i, j in enumerate(chunk)])
        write_text(path, text, mode=0o755, durable=False)
        paths.append((path, chunk))
    return paths


def render_single(kind: str, spec: Spec, job: Job, config: ConfigRef, sweep_dir: Path,
                  site: Any = None) -> Path:
    """A cluster script for one job (not an array): later-stage jobs, each with its own
    dependency given at submission."""
    path = sweep_dir / "scripts" / f"{kind}_{job.id}.sh"
    name = f"{spec.name}.{job.stage}" if job.stage else spec.name
    extra = _lsf_vars(spec, sweep_dir, site, name, None) if kind == "lsf" else {}
    text = _env.get_template(f"{kind}_array.sh.j2").render(
        **{**_common(spec, sweep_dir), **extra}, script_path=str(path), array_name=name,
        index_var=None,
        parallelism=None, first=job.index, last=job.index,
        jobs=[ScriptJob(job.id, label(spec, job), 1, config)])
    write_text(path, text, mode=0o755, durable=False)
    return path


def after_tag(tag: str) -> str:
    """The tag of the array scripts of one stage's jobs that wait for another job."""
    return f"{tag}_after" if tag else "after"


def dependent_runs(jobs: list[Job]) -> tuple[list[Job], list[Job]]:
    """One stage's jobs that wait for another job, as they are submitted: (a later stage's
    jobs, each on its own after its parent; the jobs after a shared fine-tuning, grouped by
    parent in first-seen order, for arrays submitted by element ranges, one per parent)."""
    groups: dict[str | None, list[Job]] = {}
    for job in jobs:
        if job.shared_finetune:
            groups.setdefault(job.after, []).append(job)
    single = [j for j in jobs if not j.shared_finetune]
    return single, [j for g in groups.values() for j in g]


def render_staged_submission(backend: Any, spec: Spec, jobs: list[Job],
                             configs: dict[str, ConfigRef], sweep_dir: Path
                             ) -> tuple[Path, list[str]]:
    """The submission of a sweep with dependencies as a shell script, stage after stage, as
    Backend.submit does it: a stage's jobs without a parent as arrays, a job alone after its
    parent on its own, the jobs after one same parent as element ranges of arrays (SLURM
    afterok, LSF done()). `backend`: a jobs.backends Backend. Returns the script and its
    command lines."""
    from jobs.backends.base import Elements, runs_of
    from jobs.sharing import by_stage

    kind = backend.name
    refs: dict[str, str] = {}  # job id -> shell expression of its scheduler id
    lines: list[str] = []
    n_arrays = 0

    def ref(var: str, index: int) -> str:
        return f"${{{var}}}[{index}]" if kind == "lsf" else f"${{{var}}}_{index}"

    for stage_jobs in by_stage(spec, jobs):
        tag = stage_jobs[0].stage
        free = [j for j in stage_jobs if j.after is None]
        single, grouped = dependent_runs([j for j in stage_jobs if j.after is not None])
        for path, chunk in backend.render(spec, free, configs, sweep_dir, tag) if free else []:
            n_arrays += 1
            var = f"A{n_arrays}"
            lines.append(f"{var}=$({_submit_cmd(backend, path)})  # {len(chunk)} job"
                         + ("s" if len(chunk) > 1 else ""))
            for i, job in enumerate(chunk, backend.first_index):
                refs[job.id] = ref(var, i)
        for job in single:
            path = backend.render_single(spec, job, configs[job.id], sweep_dir)
            var = f"J_{job.id}"
            lines.append(f"{var}=$({_submit_cmd(backend, path, refs[str(job.after)])})  "
                         f"# {label(spec, job)}, after {job.after}")
            refs[job.id] = f"${{{var}}}"
        for path, chunk in (backend.render(spec, grouped, configs, sweep_dir, after_tag(tag))
                            if grouped else []):
            for first, run in runs_of(chunk, backend.first_index):
                n_arrays += 1
                var = f"A{n_arrays}"
                elements = Elements(first, first + len(run) - 1,
                                    spec.resources.array_parallelism)
                cmd = _submit_cmd(backend, path, refs[str(run[0].after)], elements)
                lines.append(f"{var}=$({cmd})  # {len(run)} job" + ("s" if len(run) > 1 else "")
                             + f", after {run[0].after}")
                for i, job in enumerate(run, first):
                    refs[job.id] = ref(var, i)
    script = sweep_dir / "scripts" / f"submit_{kind}.sh"
    head = [
        "#!/usr/bin/env bash",
        f"# quantsweep: sweep {spec.name} to {kind.upper()}, stage after stage: a job that "
        "depends on another (a later stage's, or one after its shared fine-tuning) waits for "
        "it and never starts if that one fails.",
        f"# Rendered from {shlex.quote(str(Path(spec.path).absolute()))}; run with: bash "
        f"{shlex.quote(str(script))}",
        "set -euo pipefail",
    ]
    if kind == "lsf":
        head.append("jobid() { sed -n 's/.*Job <\\([0-9]*\\)>.*/\\1/p'; }")
    write_text(script, "\n".join(head + lines) + "\n", mode=0o755, durable=False)
    return script, lines


def _submit_cmd(backend: Any, path: Path, after: str | None = None,
                elements: Any = None) -> str:
    line = backend.submit_line(path, after, elements)
    return f"{line} | jobid" if backend.name == "lsf" else line
