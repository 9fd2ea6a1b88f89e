"""Expand a spec into jobs: grid product x zipped axes, minus exclude, plus include.

Expansion is deterministic (spec order) and each job's id is a hash of its explicit, resolved
configuration, so relaunching the same spec finds the same jobs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.errors import SpecError
from jobs.spec import Spec
from quantlib.configs import ConfigError, ignored_keys, resolve

ID_LENGTH = 10


@dataclass(frozen=True)
class Job:
    id: str
    index: int  # 1-based position in the sweep
    config: dict[str, Any]  # explicit arguments the job's method uses, validated
    output_dir: Path  # absolute
    source: str  # "grid", "include[2]": where the job came from in the spec

    def get(self, key: str, default: Any = "") -> Any:
        return self.config.get(key, default)


def job_id(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:ID_LENGTH]


def _same(a: Any, b: Any) -> bool:
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def _matches(point: dict[str, Any], values: dict[str, Any]) -> bool:
    for key, want in point.items():
        options = want if isinstance(want, list) else [want]
        if key not in values or not any(_same(values[key], w) for w in options):
            return False
    return True


def _grid_points(spec: Spec) -> list[dict[str, Any]]:
    axes: list[list[dict[str, Any]]] = [[{k: v} for v in vals] for k, vals in spec.grid.items()]
    for group in spec.zips:
        keys = list(group)
        axes.append([dict(zip(keys, row)) for row in zip(*group.values())])
    points = []
    for combo in itertools.product(*axes):
        point: dict[str, Any] = {}
        for part in combo:
            point.update(part)
        points.append(point)
    return points


def _key_source(spec: Spec, key: str, source: str, point: dict[str, Any]) -> str:
    if key in point:
        if source.startswith("include"):
            return f"{source}.{key}"
        if key in spec.grid:
            return f"grid.{key}"
        for i, group in enumerate(spec.zips):
            if key in group:
                return f"zip[{i}].{key}"
    if key in spec.base:
        return f"base.{key}"
    return key


def _safe(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(value)).strip("-") or "x"


def expand(spec: Spec) -> list[Job]:
    """All jobs of a spec, in order; raises SpecError for invalid or duplicate jobs."""
    sweep_dir = Path(spec.sweep_dir).absolute()
    candidates: list[tuple[str, dict[str, Any]]] = []
    used_excludes: set[int] = set()
    for point in _grid_points(spec):
        values = {**spec.base, **point}
        hit = [i for i, ex in enumerate(spec.exclude) if _matches(ex, values)]
        used_excludes.update(hit)
        if not hit:
            candidates.append(("grid", point))
    for i, ex in enumerate(spec.exclude):
        if i not in used_excludes:
            raise SpecError(spec.path, f"exclude[{i}]", f"{ex} matches no job of the grid")
    candidates += [(f"include[{i}]", dict(p)) for i, p in enumerate(spec.include)]

    jobs: list[Job] = []
    seen: dict[str, str] = {}
    out_dirs: dict[Path, str] = {}
    for source, point in candidates:
        values = {**spec.base, **point}
        try:
            config = resolve(values)
        except ConfigError as exc:
            raise SpecError(spec.path, _key_source(spec, exc.key, source, point),
                            exc.message) from None
        jid = job_id(config)
        label = _describe(spec, config)
        if jid in seen:
            ignored = ignored_keys(values)
            hint = (f"; method {config['method']!r} ignores {', '.join(ignored)}: give such jobs "
                    "through include instead" if ignored else "")
            raise SpecError(spec.path, source, f"duplicate job {label} (same configuration "
                                               f"as {seen[jid]}){hint}")
        seen[jid] = source if source != "grid" else f"grid point {label}"
        out = _output_dir(spec, sweep_dir, config, jid)
        if out in out_dirs:
            raise SpecError(spec.path, "output_dir", f"jobs {out_dirs[out]} and {label} would "
                                                     f"share the directory {out}")
        out_dirs[out] = label
        jobs.append(Job(jid, len(jobs) + 1, config, out, source))
    return jobs


def _describe(spec: Spec, config: dict[str, Any]) -> str:
    return ",".join(f"{a}={config[a]}" for a in spec.axes if a in config) or "(base)"


def _output_dir(spec: Spec, sweep_dir: Path, config: dict[str, Any], jid: str) -> Path:
    if spec.output_dir:
        fields = {a: _safe(config.get(a, "NA")) for a in spec.axes}
        rel = Path(spec.output_dir.format(job_id=jid, name=spec.name, **fields))
    else:
        label = "_".join(_safe(config[a]) for a in spec.axes if a in config)
        rel = Path("jobs") / (f"{label}-{jid}" if label else jid)
    return rel if rel.is_absolute() else sweep_dir / rel
