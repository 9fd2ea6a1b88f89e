"""Expand a spec into jobs: grid product x zipped axes, minus exclude, plus include.

Expansion is deterministic (spec order) and each job's id is a hash of its explicit, resolved
configuration, so relaunching the same spec finds the same jobs. In a staged spec each job of a
later stage is one job of the previous stage (its parent: its explicit arguments carry over)
times one point of the stage's grid; the arguments that receive the parent's saved model hold
the marker `@job:<parent id>` in the config (and so in the id), replaced by the parent's model
directory in the runtime config.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.sharing import share_finetune
from jobs.spec import (
    FINETUNE_STAGE,
    MAX_PATH_BYTES,
    OUTPUT_DIR_ROOM,
    Spec,
    SweepStage,
    axis_size,
    iter_values,
    output_dir_problem,
)
from quantlib.configs import ConfigError, identity_key, ignored_keys, resolve
from quantlib.errors import SpecError, quote, shorten

ID_LENGTH = 10
MARKER = "@job:"  # a value standing for the saved model of the job whose id follows


@dataclass(frozen=True)
class Job:
    id: str
    index: int  # 1-based position in the sweep
    config: dict[str, Any]  # explicit arguments the job's method uses, validated
    output_dir: Path  # absolute
    source: str  # "grid", "include[2]": where the job came from in the spec
    stage: str = ""  # "" in a spec without stages
    after: str | None = None  # the previous-stage job this one depends on and starts from
    upstream_dir: Path | None = None  # that job's output directory
    shared_finetune: bool = False  # `after` is the shared FP32 fine-tuning job (jobs.sharing)

    def get(self, key: str, default: Any = "") -> Any:
        return self.config.get(key, default)


def job_id(config: dict[str, Any]) -> str:
    """A hash of the job's identity (its resolved arguments less those equal to their
    defaults): independent of the other jobs of the spec and of how a value was written."""
    return hashlib.sha256(identity_key(config).encode()).hexdigest()[:ID_LENGTH]


COUNT_CAP = 10 ** 30  # count_bound saturates here: refused whatever the limit, and cheap to print


def count_bound(spec: Spec) -> int:
    """The most jobs the spec can expand to (excludes not subtracted), without expanding it:
    integer arithmetic on the axes' sizes (ranges are never materialised), exact up to
    COUNT_CAP and COUNT_CAP beyond (1 MiB of ranges must not become a 40,000-digit number)."""
    total, parents = 0, 1
    for stage in spec.stages:
        points = 1
        for values in stage.grid.values():
            points = min(points * axis_size(values), COUNT_CAP)
        for group in stage.zips:
            points = min(points * axis_size(next(iter(group.values()))), COUNT_CAP)
        if not stage.grid and not stage.zips and stage.include:
            points = 0
        parents = min(parents * (points + len(stage.include)), COUNT_CAP)
        total = min(total + parents, COUNT_CAP)
    return total


def _count_text(n: int) -> str:
    """A job count for a message: exact, or its order of magnitude when it is huge."""
    if n >= COUNT_CAP:
        return f"10^{len(str(COUNT_CAP)) - 1} or more"
    return f"{n:,}" if n < 10 ** 24 else f"more than 10^{len(str(n)) - 1}"


def _same(a: Any, b: Any) -> bool:
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def matches(point: dict[str, Any], values: dict[str, Any]) -> bool:
    """Every key of `point` is in `values` with an equal value (200 = 200.0; a list in the
    point matches any of its items): exclude points, and `sweep cancel --where`."""
    for key, want in point.items():
        options = want if isinstance(want, list) else [want]
        if key not in values or not any(_same(values[key], w) for w in options):
            return False
    return True


def _grid_points(spec: SweepStage) -> list[dict[str, Any]]:
    axes: list[list[dict[str, Any]]] = [[{k: v} for v in iter_values(vals)]
                                        for k, vals in spec.grid.items()]
    for group in spec.zips:
        keys = list(group)
        axes.append([dict(zip(keys, row))
                     for row in zip(*(iter_values(v) for v in group.values()))])
    points = []
    for combo in itertools.product(*axes):
        point: dict[str, Any] = {}
        for part in combo:
            point.update(part)
        points.append(point)
    return points


def _key_source(spec: Spec, stage: SweepStage, prefix: str, key: str, source: str,
                point: dict[str, Any]) -> str:
    if key in point:
        if source.startswith(prefix + "include"):
            return f"{source}.{key}"
        if key in stage.grid:
            return f"{prefix}grid.{key}"
        for i, group in enumerate(stage.zips):
            if key in group:
                return f"{prefix}zip[{i}].{key}"
    if key in stage.base:
        return f"{prefix}base.{key}"
    if key in spec.base:
        return f"base.{key}"
    return prefix + key if prefix else key


def where_from(spec: Spec, job: Job, key: str) -> str:
    """The spec key a job's argument came from: `grid.model_name_or_path`, `include[2].x`,
    `stages[1].base.x`, `base.x`, or the bare key for a default."""
    k = next((i for i, st in enumerate(spec.stages) if st.name == job.stage), 0)
    stage = spec.stages[k]
    prefix = f"stages[{k}]." if spec.staged else ""
    m = re.search(r"include\[(\d+)\]$", job.source)
    if m and int(m.group(1)) < len(stage.include):
        point = dict(stage.include[int(m.group(1))])
    else:
        point = {a: None for a in stage.grid}
        for group in stage.zips:
            point.update({a: None for a in group})
    return _key_source(spec, stage, prefix, key, job.source, point)


@functools.lru_cache(maxsize=4096, typed=True)  # a grid's jobs repeat their tasks and methods
def _safe(value: Any) -> str:
    """A value as one path component: no separator, never '.' or '..'."""
    text = re.sub(r"[^A-Za-z0-9.+-]+", "-", str(value)).strip("-")[:80]
    return text if text.strip(".") else "x"


def expand(spec: Spec) -> list[Job]:
    """All jobs of a spec, stage after stage, in order; raises SpecError for invalid or
    duplicate jobs."""
    bound = count_bound(spec)
    if bound > spec.max_jobs:
        raise SpecError(spec.path, "grid", f"expands to up to {_count_text(bound)} jobs, over "
                        f"the limit of {_count_text(spec.max_jobs)} (raise it with max_jobs: N "
                        "in the spec, or --max-jobs N)")
    sweep_dir = Path(spec.sweep_dir).absolute()
    axes = spec.axes
    jobs: list[Job] = []
    seen: dict[str, str] = {}
    out_dirs: dict[str, str] = {}
    parents: list[Job | None] = [None]
    for k, stage in enumerate(spec.stages):
        prefix = f"stages[{k}]." if spec.staged else ""
        last = k == len(spec.stages) - 1
        made: list[tuple[Job | None, str, dict[str, Any], Path, str]] = []
        for parent, source, values, point in _candidates(spec, stage, prefix, parents):
            if not last:
                values["save_model"] = True  # the next stage starts from it
            try:
                config = resolve(values)
            except ConfigError as exc:
                raise SpecError(spec.path, _key_source(spec, stage, prefix, exc.key, source,
                                                       point), exc.message) from None
            jid = job_id(config)
            label = describe_axes(axes, config)
            if jid in seen:
                ignored = ignored_keys(values)
                hint = (f"; method {config['method']!r} ignores {', '.join(ignored)}: give "
                        "such jobs through include instead" if ignored else "")
                raise SpecError(spec.path, source, f"duplicate job {label} (same "
                                f"configuration as {seen[jid]}){hint}")
            seen[jid] = source if not source.endswith("grid") else f"grid point {label}"
            out = _output_dir(spec, stage, sweep_dir, config, jid, label)
            if str(out) in out_dirs:
                raise SpecError(spec.path, "output_dir", f"jobs {out_dirs[str(out)]} and "
                                f"{label} would share the directory {out}")
            out_dirs[str(out)] = label
            made.append((parent, jid, config, out, source))
        shared: list[Job | None] = [p for p, *_ in made]  # what each job waits for
        if k == 0:  # the implicit first stage: shared fine-tuning jobs (jobs.sharing)
            configs, members = share_finetune(spec, [c for _, _, c, _, _ in made], set(seen))
            for config, group in zip(configs, members):
                job = _shared_job(spec, sweep_dir, config, len(jobs) + 1)
                jobs.append(job)
                for i in group:
                    shared[i] = job
        stage_jobs: list[Job] = []
        for (parent, jid, config, out, source), after in zip(made, shared):
            job = Job(jid, len(jobs) + 1, config, out, source, stage.name,
                      after.id if after else None, after.output_dir if after else None,
                      shared_finetune=after is not None and parent is None)
            jobs.append(job)
            stage_jobs.append(job)
        parents = list(stage_jobs)
    return jobs


def _shared_job(spec: Spec, sweep_dir: Path, config: dict[str, Any], index: int) -> Job:
    """A shared fine-tuning job (jobs.sharing): in jobs/<its stage>/, whatever output_dir
    says."""
    jid = job_id(config)
    out = sweep_dir / "jobs" / FINETUNE_STAGE / default_dir_name(config, jid)
    size = len(str(out).encode("utf-8", "surrogateescape"))
    if size > MAX_PATH_BYTES - OUTPUT_DIR_ROOM:
        raise SpecError(spec.path, "sweep_dir", f"the shared fine-tuning job's directory is "
                        f"{size} bytes as an absolute path; at most "
                        f"{MAX_PATH_BYTES - OUTPUT_DIR_ROOM} (or finetune_sharing: false)")
    return Job(jid, index, config, out, "finetune_sharing", FINETUNE_STAGE)


def _candidates(spec: Spec, stage: SweepStage, prefix: str, parents: list[Job | None]
                ) -> list[tuple[Job | None, str, dict[str, Any], dict[str, Any]]]:
    """(parent, source, values, point) of one stage: its grid and include points for each
    job of the previous stage (or once, for the first stage), less the excluded ones.

    Every exclude must match some job of the stage (over all parents: in a later stage one may
    match the jobs of some parents only), and the excludes may not remove every job: both are
    mistakes in the spec that would otherwise launch silently less (or nothing)."""
    out = []
    used: set[int] = set()
    grid = _grid_points(stage)
    for parent in parents:
        inherited: dict[str, Any] = {}
        if parent is not None:
            inherited = {key: v for key, v in parent.config.items() if key != "save_model"}
            inherited.update({key: MARKER + parent.id for key in stage.inputs})
        for point in grid:
            values = {**spec.base, **inherited, **stage.base, **point}
            hit = [i for i, ex in enumerate(stage.exclude) if matches(ex, values)]
            used.update(hit)
            if not hit:
                out.append((parent, f"{prefix}grid", values, point))
        for i, p in enumerate(stage.include):
            out.append((parent, f"{prefix}include[{i}]",
                        {**spec.base, **inherited, **stage.base, **p}, dict(p)))
    for i, ex in enumerate(stage.exclude):
        if i not in used:
            what = "grid" if parents == [None] else "grid for any job of the previous stage"
            raise SpecError(spec.path, f"{prefix}exclude[{i}]",
                            f"{quote(ex)} matches no job of the {what}")
    if not out and stage.exclude:
        removed = len(grid) * len(parents)
        raise SpecError(spec.path, f"{prefix}exclude",
                        f"removes every job of the {'stage' if prefix else 'grid'} (all "
                        f"{removed:,}): nothing would run; drop an exclude, or add include "
                        "points")
    return out


def describe(spec: Spec, config: dict[str, Any]) -> str:
    """A job's label: its axis values (not the markers of a previous stage's model)."""
    return describe_axes(spec.axes, config)


def describe_axes(axes: list[str], config: dict[str, Any]) -> str:
    return ",".join(f"{a}={config[a]}" for a in axes
                    if a in config and not str(config[a]).startswith(MARKER)) or "(base)"


def _output_dir(spec: Spec, stage: SweepStage, sweep_dir: Path, config: dict[str, Any],
                jid: str, label: str = "") -> Path:
    if not spec.output_dir:  # jobs/[<stage>/]<name>: _safe components, under 255 bytes each
        out = _jobs_root(sweep_dir, stage.name) / default_dir_name(config, jid)
        _check_size(spec, out, label or jid)
        return out
    fields = {a: _safe(config.get(a, "NA")) for a in spec.axes}
    rel = Path(spec.output_dir.format(job_id=jid, name=spec.name, stage=stage.name or "NA",
                                      **fields))
    out = sweep_dir / rel
    if ".." in rel.parts or rel.is_absolute():  # spec.py checks the pattern; values are _safe
        raise SpecError(spec.path, "output_dir", f"{rel} leaves the sweep directory")
    # the pattern passed spec.py's checks with one character per placeholder; with the job's
    # values it may still be the sweep's own files ({task} = logs) or too long
    problem = output_dir_problem(rel, str(rel))
    if problem:
        raise SpecError(spec.path, "output_dir", f"job {shorten(label or jid, 120)}: {problem}")
    _check_size(spec, out, label or jid)
    return out


@functools.lru_cache(maxsize=64)
def _jobs_root(sweep_dir: Path, stage: str) -> Path:
    """Where the default job directories of a stage go: jobs/[<stage>/]."""
    return sweep_dir / "jobs" / stage if stage else sweep_dir / "jobs"


def _check_size(spec: Spec, out: Path, label: str) -> None:
    size = len(str(out).encode("utf-8", "surrogateescape"))
    if size > MAX_PATH_BYTES - OUTPUT_DIR_ROOM:
        raise SpecError(spec.path, "output_dir", f"job {shorten(label, 120)}: its "
                        f"directory is {size} bytes as an absolute path; at most "
                        f"{MAX_PATH_BYTES - OUTPUT_DIR_ROOM} (its checkpoints and results go "
                        "under it)")


def default_dir_name(config: dict[str, Any], jid: str) -> str:
    """`<task>_<method>[_<nbits>]-<id>`: from the job's own configuration alone, so that
    editing the spec (another axis, other jobs) never moves a job's directory."""
    parts = [_safe(config["task"]), _safe(config["method"])]
    if isinstance(config.get("nbits"), int):
        parts.append(str(config["nbits"]))
    return "_".join(parts) + f"-{jid}"
