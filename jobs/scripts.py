"""Render job scripts from the jinja2 templates; write per-job runtime configs."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.grid import MARKER, Job, describe_axes
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
    config: ConfigRef


@dataclass(frozen=True)
class ScriptElement:
    """One element of an array script: one job, or a pack of them (resources.pack)."""

    index: int
    members: list[ScriptJob]


def pack_size(kind: str, spec: Spec) -> int:
    """Jobs per element of `kind`'s arrays: resources.pack on a scheduler, 1 locally (the
    local launcher runs each job on its own, up to --max-parallel at once)."""
    return spec.resources.pack if kind != "local" else 1


def pack_note(spec: Spec, kind: str) -> list[str]:
    """What the dry run says about resources.pack."""
    n, res = spec.resources.pack, spec.resources
    if n == 1:
        return []
    if kind == "local":
        return [f"resources.pack: {n}: not used locally (the launcher runs each job on its own, "
                "at most --max-parallel at once)"]
    alloc = res.packed()
    gpus = f"{alloc.gpus} GPUs, " if alloc.gpus else ""
    return [f"resources.pack: {n}: up to {n} jobs (waiting for the same job) share one "
            f"allocation of {gpus}{alloc.cpus} cores and {alloc.mem_mb} MB for "
            f"{res.time_minutes} minutes; each job runs on its own "
            + (f"{res.gpus} GPU(s) and " if res.gpus else "") + f"{res.cpus} core(s), with its "
            "own directory, status and log (logs/<pack id>.<job id>.out); a requeued pack runs "
            "again only the jobs that stopped at a checkpoint"]


def packs_of(jobs: list[Job], n: int) -> list[list[Job]]:
    """Jobs as array elements of up to `n` jobs: consecutive jobs that wait for the same job
    (or for none) share one; the order is kept. n = 1: one job per element."""
    packs: list[list[Job]] = []
    for job in jobs:
        if packs and len(packs[-1]) < n and packs[-1][-1].after == job.after:
            packs[-1].append(job)
        else:
            packs.append([job])
    return packs


class RuntimeConfigs:
    """The configurations a launch's jobs run with (defaults filled in, local paths absolute),
    as the configs file holds them (quantlib.jobdir.write_configs_file): one base per method
    (its defaults and the sweep's bookkeeping) and, per job, what it has beyond its base."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.bases: list[dict[str, Any]] = []
        self._base_of: dict[str, int] = {}
        self._local: dict[str, str | None] = {}  # value -> its absolute path if it exists
        self._sweep_dir = str(Path(spec.sweep_dir).absolute())

    def _paths(self, config: dict[str, Any]) -> dict[str, Any]:
        """Local paths absolute (one stat per value, not per job); tuples as JSON lists."""
        for key, value in config.items():
            if isinstance(value, tuple):
                config[key] = list(value)
        for key in PATH_KEYS + MAYBE_PATH_KEYS:
            value = config.get(key)
            if not value or not isinstance(value, str) or value.startswith(MARKER):
                continue
            if value not in self._local:
                path = Path(value)
                self._local[value] = str(path.absolute()) if path.exists() else None
            if self._local[value] is not None:
                config[key] = self._local[value]
            elif key in PATH_KEYS:
                config[key] = str(Path(value).absolute())
        return config

    def base(self, method: str) -> int:
        """The index of the base of a method's jobs."""
        k = self._base_of.get(method)
        if k is None:
            spec = self.spec
            sweep = dict(sweep=spec.name, sweep_dir=self._sweep_dir,
                         nproc_per_node=max(1, spec.resources.gpus),
                         max_requeues=spec.resources.max_requeues)
            assert set(sweep) | set(JOB_KEYS) == set(RUN_KEYS + STAGE_KEYS)  # quantlib.jobdir
            config = self._paths(with_defaults({"method": method}))
            config.update(sweep, **dict.fromkeys(JOB_KEYS[2:]))
            k = self._base_of[method] = len(self.bases)
            self.bases.append(config)
        return k

    def entry(self, job: Job) -> tuple[int, dict[str, Any]]:
        """(its base, what the job's config has beyond it): its own arguments, ids, paths."""
        config = self._paths(dict(job.config))
        for key, value in config.items():  # a later stage starts from its parent's saved model
            if isinstance(value, str) and value.startswith(MARKER):
                assert job.upstream_dir is not None and value == MARKER + str(job.after)
                config[key] = str(job.upstream_dir / "model")
        config["job_id"] = job.id
        config["output_dir"] = str(job.output_dir)
        for key, value in (("stage", job.stage or None), ("after", job.after),
                           ("upstream_dir", job.upstream_dir),
                           ("finetune_from", job.upstream_dir / FINETUNED
                            if job.shared_finetune and job.upstream_dir else None)):
            if value is not None:
                config[key] = str(value)
        return self.base(job.config["method"]), config


# the bookkeeping of RUN_KEYS + STAGE_KEYS that differs from job to job (the rest is the
# sweep's: in the bases); the first two every job has, the others only some (None in the base)
JOB_KEYS = ("job_id", "output_dir", "stage", "after", "upstream_dir", "finetune_from")


def runtime_config(spec: Spec, job: Job) -> dict[str, Any]:
    """The full configuration the job runs with (one job: RuntimeConfigs for a launch's)."""
    configs = RuntimeConfigs(spec)
    k, update = configs.entry(job)
    return {**configs.bases[k], **update}


def write_configs(spec: Spec, jobs: list[Job], sweep_dir: Path) -> dict[str, ConfigRef]:
    """The jobs' runtime configs in one file (quantlib.jobdir.write_configs_file): where each
    job's entry is, by job id."""
    configs = RuntimeConfigs(spec)
    entries = [configs.entry(job) for job in jobs]
    refs = write_configs_file(sweep_dir, configs.bases, entries)
    return {job.id: ref for job, ref in zip(jobs, refs)}


def label(spec: Spec, job: Job) -> str:
    return _label(spec.axes, job)


def _label(axes: list[str], job: Job) -> str:
    text = describe_axes(axes, job.config)
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

    res = spec.resources.packed() if count else spec.resources  # a single job: never packed
    return {"lsf": True, "requeue_exit": REQUEUE,
            "bsub": bsub_options(res, site, name, count, f"{logs}/{stem}.out",
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
    """Array scripts of at most `chunk` elements each (an element: a job, or a pack of
    resources.pack jobs, packs_of); each with its jobs in array order."""
    template = _env.get_template("job.sh.j2" if kind == "local" else f"{kind}_array.sh.j2")
    from jobs import backends

    backend = backends.get(kind)
    n = pack_size(kind, spec)
    packs = packs_of(jobs, n)
    chunks = [packs[i:i + chunk] for i in range(0, len(packs), chunk)]
    res = spec.resources
    axes = spec.axes
    paths = []
    for k, elements in enumerate(chunks, 1):
        name = (f"{spec.name}.{tag}" if tag else spec.name) + (
            f".{k}" if len(chunks) > 1 else "")
        path = sweep_dir / "scripts" / f"{kind}_array{'_' + tag if tag else ''}_{k}.sh"
        extra = _lsf_vars(spec, sweep_dir, site, name, len(elements)) if kind == "lsf" else {}
        rendered = [ScriptElement(i, [ScriptJob(j.id, _label(axes, j), configs[j.id])
                                      for j in pack])
                    for i, pack in enumerate(elements, backend.first_index)]
        members = [m for e in rendered for m in e.members]
        text = template.render(
            **{**_common(spec, sweep_dir), **extra}, script_path=str(path), array_name=name,
            index_var=backend.index_var, parallelism=res.array_parallelism,
            first=elements[0][0].index, last=elements[-1][-1].index, jobs=members,
            elements=rendered, pack=n if n > 1 else 0,
            alloc=res.packed() if n > 1 else res)
        write_text(path, text, mode=0o755, durable=False)
        paths.append((path, [j for pack in elements for j in pack]))
    return paths


def render_single(kind: str, spec: Spec, job: Job, config: ConfigRef, sweep_dir: Path,
                  site: Any = None) -> Path:
    """A cluster script for one job (not an array): later-stage jobs, each with its own
    dependency given at submission."""
    path = sweep_dir / "scripts" / f"{kind}_{job.id}.sh"
    name = f"{spec.name}.{job.stage}" if job.stage else spec.name
    extra = _lsf_vars(spec, sweep_dir, site, name, None) if kind == "lsf" else {}
    one = ScriptJob(job.id, label(spec, job), config)
    text = _env.get_template(f"{kind}_array.sh.j2").render(
        **{**_common(spec, sweep_dir), **extra}, script_path=str(path), array_name=name,
        index_var=None,
        parallelism=None, first=job.index, last=job.index,
        jobs=[one], elements=[ScriptElement(1, [one])], pack=0, alloc=spec.resources)
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

    n = pack_size(kind, spec)
    for stage_jobs in by_stage(spec, jobs):
        tag = stage_jobs[0].stage
        free = [j for j in stage_jobs if j.after is None]
        single, grouped = dependent_runs([j for j in stage_jobs if j.after is not None])
        for path, chunk in backend.render(spec, free, configs, sweep_dir, tag) if free else []:
            n_arrays += 1
            var = f"A{n_arrays}"
            packs = packs_of(chunk, n)
            lines.append(f"{var}=$({_submit_cmd(backend, path)})  # {_count(chunk, packs)}")
            for i, pack in enumerate(packs, backend.first_index):
                for job in pack:
                    refs[job.id] = ref(var, i)
        for job in single:
            path = backend.render_single(spec, job, configs[job.id], sweep_dir)
            var = f"J_{job.id}"
            lines.append(f"{var}=$({_submit_cmd(backend, path, refs[str(job.after)])})  "
                         f"# {label(spec, job)}, after {job.after}")
            refs[job.id] = f"${{{var}}}"
        for path, chunk in (backend.render(spec, grouped, configs, sweep_dir, after_tag(tag))
                            if grouped else []):
            for first, run in runs_of(packs_of(chunk, n), backend.first_index):
                n_arrays += 1
                var = f"A{n_arrays}"
                elements = Elements(first, first + len(run) - 1,
                                    spec.resources.array_parallelism)
                after = run[0][0].after
                cmd = _submit_cmd(backend, path, refs[str(after)], elements)
                lines.append(f"{var}=$({cmd})  # {_count([j for p in run for j in p], run)}"
                             f", after {after}")
                for i, pack in enumerate(run, first):
                    for job in pack:
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


def _count(jobs: list[Job], packs: list[list[Job]]) -> str:
    """"3 jobs", or with packing "10 jobs in 3 packs"."""
    text = f"{len(jobs)} job" + ("s" if len(jobs) > 1 else "")
    if len(packs) < len(jobs):
        text += f" in {len(packs)} pack" + ("s" if len(packs) > 1 else "")
    return text


def _submit_cmd(backend: Any, path: Path, after: str | None = None,
                elements: Any = None) -> str:
    line = backend.submit_line(path, after, elements)
    return f"{line} | jobid" if backend.name == "lsf" else line
