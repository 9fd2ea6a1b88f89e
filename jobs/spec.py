"""Sweep specs: load a YAML file safely and validate every key, naming file and key on error."""

from __future__ import annotations

import os
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jobs import safeyaml
from jobs.resources import Resources, parse_resources
from jobs.safeyaml import control_char
from quantlib.configs import all_keys, suggest
from quantlib.errors import SpecError, UserError, quote

TOP_KEYS = ("name", "description", "grid", "zip", "exclude", "include", "base", "stages",
            "output_dir", "sweep_dir", "resources", "max_jobs", "finetune_sharing")
STAGE_KEYS = ("name", "grid", "zip", "exclude", "include", "base", "from_previous")
STAGE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
FINETUNE_STAGE = "fp32-finetune"  # the implicit stage of shared fine-tuning jobs (jobs.sharing)
# arguments a stage may fill with the previous stage's saved model
INPUT_KEYS = ("model_name_or_path", "teacher_name_or_path")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
RANGE_RE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*$")
JOB_PLACEHOLDERS = ("job_id", "name", "stage")
MAX_JOBS = 100_000  # default of the spec's max_jobs: grids over it are refused unexpanded
MAX_INT = safeyaml.MAX_INT  # range ends, like every integer of a spec, fit in 64 bits
MAX_NAME_BYTES = 255  # one path component (NAME_MAX of Linux, macOS and their file systems)
MAX_PATH_BYTES = 4096  # a whole path (PATH_MAX)
SWEEP_DIR_ROOM = 512  # bytes the sweep directory leaves under it for its files and job dirs
OUTPUT_DIR_ROOM = 256  # bytes a job's output directory leaves for its checkpoints and results
# what the launcher writes in the sweep directory: no job's output_dir may be (under) one
SWEEP_FILES = ("scripts", "configs", "logs", "snapshots", "submitit", "ledger.json",
               ".launch.lock")
# the temp files of quantlib.atomic's writes there: .ledger.json.XXXX.tmp
SWEEP_FILE_PREFIXES = (".ledger.json.",)


@dataclass
class SweepStage:
    """One stage of a sweep. A spec without `stages` is one unnamed stage. The jobs of a later
    stage are each job of the previous stage times this stage's grid; each depends on its
    previous-stage job and starts from its saved model (the arguments named by `inputs`).

    An axis's values may hold `range` objects (a spec's `a..b`), kept unexpanded so that a
    range of 10**18 values costs nothing before the job limit refuses it: count them with
    `axis_size`, iterate them with `iter_values`."""

    name: str
    grid: dict[str, list[Any]]
    zips: list[dict[str, list[Any]]]
    exclude: list[dict[str, Any]]
    include: list[dict[str, Any]]
    base: dict[str, Any]
    inputs: tuple[str, ...]  # keys set to the previous stage's model (later stages)

    @property
    def axes(self) -> list[str]:
        """Axes in spec order: grid, then zipped groups, then keys only include points set."""
        out = list(self.grid)
        for group in self.zips:
            out += [k for k in group if k not in out]
        for point in self.include:
            out += [k for k in point if k not in out]
        return out


@dataclass
class Spec:
    path: str
    name: str
    stages: list[SweepStage]
    base: dict[str, Any]
    output_dir: str | None
    sweep_dir: str
    resources: Resources
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    max_jobs: int = 100_000  # a grid that would expand to more jobs is refused unexpanded
    offline: bool = False  # jobs read models and datasets from the cache (fetched at launch)
    finetune_sharing: bool = True  # jobs with the same FP32 fine-tuning share one (jobs.sharing)

    def __setattr__(self, name: str, value: Any) -> None:
        # the sweep directory reaches the schedulers' log options (#BSUB -o, #SBATCH --output)
        # and every file the launch writes: one set after loading (`--sweep-dir`) is checked
        # as the spec's own sweep_dir is, before anything is written
        if name == "sweep_dir":
            problem = sweep_dir_problem(str(value))
            if problem:
                raise UserError(f"sweep directory {quote(str(value))}: {problem}")
        super().__setattr__(name, value)

    @property
    def staged(self) -> bool:
        return len(self.stages) > 1 or bool(self.stages[0].name)

    @property
    def axes(self) -> list[str]:
        """Every stage's axes, in spec order, each once."""
        out: list[str] = []
        for st in self.stages:
            out += [a for a in st.axes if a not in out]
        return out


def load_spec(path: str | Path) -> Spec:
    path = str(path)
    bad = control_char(path)
    if bad:
        what = ("an undecodable byte (not UTF-8)" if "\ud800" <= bad <= "\udfff" else
                f"the control character {bad!r}")
        raise SpecError(quote(path), "", f"the spec's path holds {what}: job scripts cannot "
                                         "name it; rename the file")
    try:
        data = safeyaml.read_bounded(path, safeyaml.MAX_BYTES, "spec")
    except safeyaml.Unreadable as exc:
        raise SpecError(path, "", str(exc)) from None
    except OSError as exc:
        raise SpecError(path, "", f"cannot read the spec ({exc.strerror or exc})") from None
    try:
        raw = safeyaml.load(data)
    except safeyaml.YamlRefused as exc:
        raise SpecError(path, exc.where, exc.message) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "YAML"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(path, where, f"invalid YAML: {problem}") from None
    return parse_spec(raw, path)


def sweep_dir_problem(value: str) -> str | None:
    """Why `value` cannot be a sweep directory, or None. Its path reaches LSF's and SLURM's log
    options, where % starts a pattern (%J, %I, %j, %A, %a, %x ...: the logs would land
    elsewhere), and every file the launch writes: each component must fit a file name (255
    bytes) and the whole path leave room under it (at most 4096 - 512 bytes)."""
    bad = control_char(value)
    if bad:
        what = ("an undecodable byte (not UTF-8)" if "\ud800" <= bad <= "\udfff" else
                f"the control character {bad!r}")
        return f"holds {what}: job scripts cannot name it"
    if not value.strip():
        return "is empty"
    if "%" in value:
        return ("holds '%', which LSF and SLURM expand in log paths (%J, %j, %A ...): the "
                "logs would go elsewhere; choose a directory without '%'")
    try:
        full = os.path.abspath(value)
    except OSError:  # the working directory is gone: the launch says so when it writes
        return None
    bad = control_char(full)
    if bad:
        return (f"is {quote(full, 120)} from the working directory, which holds "
                f"{'an undecodable byte' if bad >= chr(0xd800) else repr(bad)}: give an "
                "absolute sweep directory without it, or launch from another directory")
    if "%" in full:
        return (f"is {quote(full, 120)} from the working directory, which holds '%' (LSF and "
                "SLURM expand it in log paths): give an absolute sweep directory without it, "
                "or launch from another directory")
    for component in full.split("/"):
        size = len(component.encode("utf-8"))
        if size > MAX_NAME_BYTES:
            return (f"has a component of {size} bytes ({quote(component, 60)}); a file name "
                    f"is at most {MAX_NAME_BYTES} bytes")
    size = len(full.encode("utf-8"))
    if size > MAX_PATH_BYTES - SWEEP_DIR_ROOM:
        return (f"is {size} bytes as an absolute path; at most "
                f"{MAX_PATH_BYTES - SWEEP_DIR_ROOM} (paths are at most {MAX_PATH_BYTES} bytes "
                "and the sweep's files and job directories go under it)")
    return None


def output_dir_problem(rel: Path, shown: str) -> str | None:
    """Why a job's output directory `rel` (relative to the sweep directory; `shown` is how the
    message names it) cannot be one, or None: it may not be the sweep directory itself nor
    hold (or sit under) the sweep's own files, and each component must fit a file name."""
    parts = rel.parts
    if not parts:
        return (f"{quote(shown)} is the sweep directory itself: give each job a directory of "
                "its own, e.g. '{task}_{method}{nbits}'")
    first = parts[0]
    if first in SWEEP_FILES or first.startswith(SWEEP_FILE_PREFIXES):
        return (f"{quote(shown)} is (under) {first!r}, one of the sweep's own files: a job's "
                f"directory may not be {', '.join(SWEEP_FILES)} nor under them")
    for component in parts:
        size = len(component.encode("utf-8", "surrogateescape"))
        if size > MAX_NAME_BYTES:
            return (f"{quote(shown)} has a component of {size} bytes ({quote(component, 60)}); "
                    f"a file name is at most {MAX_NAME_BYTES} bytes")
    return None


def parse_spec(raw: Any, path: str = "<spec>") -> Spec:
    if not isinstance(raw, dict):
        raise SpecError(path, "", "a spec is a mapping with keys " + ", ".join(TOP_KEYS))
    # the description may span lines (it reaches no script); every other value may not
    problem = safeyaml.check_values({k: v for k, v in raw.items() if k != "description"})
    if problem:
        raise SpecError(path, *problem)
    for key in raw:
        if key not in TOP_KEYS:
            raise SpecError(path, str(key), f"unknown key{suggest(key, TOP_KEYS)}; "
                                            f"allowed: {', '.join(TOP_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SpecError(path, "name", f"{quote(name)} must be 1-100 characters of A-Z a-z 0-9 "
                                      ". _ - (it names cluster jobs)")
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise SpecError(path, "base", "must map trainer arguments to values")
    for key in base:
        _check_arg(path, f"base.{key}", key)
    stages_raw = raw.get("stages")
    if stages_raw is not None:
        for key in ("grid", "zip", "exclude", "include"):
            if raw.get(key):
                raise SpecError(path, key, "a spec with stages gives its grid in each stage "
                                           "(stages[i].grid); top-level base applies to all")
        if not isinstance(stages_raw, list) or not stages_raw:
            raise SpecError(path, "stages", "must be a list of stages {name, grid, zip, "
                                            "exclude, include, base, from_previous}")
        stages: list[SweepStage] = []
        for i, st in enumerate(stages_raw):
            stages.append(_parse_stage(path, st, i, [s.name for s in stages]))
    else:
        grid, zips, exclude, include = _parse_points(path, raw, "")
        if not grid and not zips and not include:
            raise SpecError(path, "grid", "empty grid: give at least one axis (or include "
                                          "points)")
        stages = [SweepStage("", grid, zips, exclude, include, {}, ())]

    output_dir = raw.get("output_dir")
    axes = [a for st in stages for a in st.axes]
    if output_dir is not None:
        if not isinstance(output_dir, str) or not output_dir.strip():
            raise SpecError(path, "output_dir", "must be a path pattern such as "
                                                "'{task}_{method}quant{nbits}bit'")
        try:
            parts = list(string.Formatter().parse(output_dir))
        except ValueError as exc:
            raise SpecError(path, "output_dir", f"bad pattern: {exc}") from None
        if any(spec_ or conv for _, f, spec_, conv in parts if f is not None):
            raise SpecError(path, "output_dir", "placeholders take no format spec or "
                                                "conversion: write {task}, not {task:>9}")
        names = [f for _, f, _, _ in parts if f is not None]
        sample = "".join(text + ("x" if f is not None else "") for text, f, _, _ in parts)
        if sample.startswith(("/", "~")) or ".." in Path(sample.replace("\\", "/")).parts:
            raise SpecError(path, "output_dir", f"{quote(output_dir)} leaves the sweep "
                                                "directory: give a relative path without '..'")
        # placeholders stand for at least one character (grid._safe): the literal text of
        # the pattern alone can already name the sweep's own files or be too long
        problem = output_dir_problem(Path(sample), output_dir)
        if problem:
            raise SpecError(path, "output_dir", problem)
        for placeholder in names:
            if placeholder not in axes and placeholder not in JOB_PLACEHOLDERS:
                allowed = sorted(set(axes)) + list(JOB_PLACEHOLDERS)
                raise SpecError(path, "output_dir",
                                f"placeholder {{{placeholder}}} names no axis"
                                f"{suggest(placeholder, allowed)}; allowed: "
                                + ", ".join("{" + a + "}" for a in allowed))
    sweep_dir = raw.get("sweep_dir", "runs/{name}")
    if not isinstance(sweep_dir, str) or not sweep_dir.strip():
        raise SpecError(path, "sweep_dir", "must be a directory path (default runs/{name})")
    if "{" in sweep_dir.replace("{name}", "") or "}" in sweep_dir.replace("{name}", ""):
        raise SpecError(path, "sweep_dir", "may use only the placeholder {name}")
    sweep_dir = sweep_dir.replace("{name}", name)
    problem = sweep_dir_problem(sweep_dir)
    if problem:
        raise SpecError(path, "sweep_dir", f"{quote(sweep_dir)} {problem}")
    max_jobs = raw.get("max_jobs", MAX_JOBS)
    if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1:
        raise SpecError(path, "max_jobs", f"{quote(max_jobs)} is not a whole number >= 1")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise SpecError(path, "description", "must be a string")
    bad = control_char(description.replace("\n", "").replace("\t", ""))
    if bad:
        raise SpecError(path, "description", f"holds the control character {bad!r}")
    sharing = raw.get("finetune_sharing", True)
    if not isinstance(sharing, bool):
        raise SpecError(path, "finetune_sharing", f"{quote(sharing)} is not true or false (true: "
                        "jobs with the same FP32 fine-tuning take it from one shared job)")
    resources = parse_resources(raw.get("resources"), path)
    return Spec(path=path, name=name, stages=stages, base=dict(base), output_dir=output_dir,
                sweep_dir=sweep_dir, resources=resources, description=description, raw=raw,
                max_jobs=max_jobs, finetune_sharing=sharing)


def _check_arg(path: str, where: str, key: Any) -> None:
    known = all_keys()
    if key not in known:
        raise SpecError(path, where, f"unknown trainer argument {quote(key)}"
                                     f"{suggest(key, sorted(known))}")


def _parse_points(path: str, raw: dict[str, Any], prefix: str
                  ) -> tuple[dict[str, list[Any]], list[dict[str, list[Any]]],
                             list[dict[str, Any]], list[dict[str, Any]]]:
    """grid, zip, exclude and include of a spec (prefix "") or of one stage."""
    grid_raw = raw.get("grid") or {}
    if not isinstance(grid_raw, dict):
        raise SpecError(path, f"{prefix}grid", "must map axis names to lists of values or "
                                               "ranges (1..8)")
    grid = {}
    for axis, values in grid_raw.items():
        _check_arg(path, f"{prefix}grid.{axis}", axis)
        grid[axis] = _axis_values(path, f"{prefix}grid.{axis}", values)

    zip_raw = raw.get("zip") or []
    if isinstance(zip_raw, dict):
        zip_raw = [zip_raw]
    if not isinstance(zip_raw, list):
        raise SpecError(path, f"{prefix}zip", "must be a list of mappings {axis: [values...]} "
                                              "whose lists have equal length")
    zips: list[dict[str, list[Any]]] = []
    seen = set(grid)
    for i, group in enumerate(zip_raw):
        where = f"{prefix}zip[{i}]"
        if not isinstance(group, dict) or len(group) < 2:
            raise SpecError(path, where, "must map two or more axes to lists of equal length")
        parsed = {}
        for axis, values in group.items():
            _check_arg(path, f"{where}.{axis}", axis)
            if axis in seen:
                raise SpecError(path, f"{where}.{axis}", "axis already appears in grid or zip")
            seen.add(axis)
            parsed[axis] = _axis_values(path, f"{where}.{axis}", values)
        lengths = {k: axis_size(v) for k, v in parsed.items()}
        if len(set(lengths.values())) != 1:
            raise SpecError(path, where, "zipped lists differ in length: "
                            + ", ".join(f"{k}={n}" for k, n in lengths.items()))
        zips.append(parsed)

    def points(key: str) -> list[dict[str, Any]]:
        items = raw.get(key) or []
        if not isinstance(items, list) or not all(isinstance(p, dict) and p for p in items):
            raise SpecError(path, f"{prefix}{key}", "must be a list of non-empty mappings "
                                                    "{axis: value}")
        for i, point in enumerate(items):
            for axis in point:
                _check_arg(path, f"{prefix}{key}[{i}].{axis}", axis)
        return items

    return grid, zips, points("exclude"), points("include")


def _parse_stage(path: str, raw: Any, i: int, earlier: list[str]) -> SweepStage:
    where = f"stages[{i}]"
    if not isinstance(raw, dict):
        raise SpecError(path, where, "a stage is a mapping with keys " + ", ".join(STAGE_KEYS))
    for key in raw:
        if key not in STAGE_KEYS:
            raise SpecError(path, f"{where}.{key}", f"unknown key{suggest(key, STAGE_KEYS)}; "
                                                    f"allowed: {', '.join(STAGE_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not STAGE_NAME_RE.match(name):
        raise SpecError(path, f"{where}.name", f"{quote(name)} must be 1-40 characters of A-Z a-z "
                                               "0-9 _ - (it names the stage's directory)")
    if name in earlier:
        raise SpecError(path, f"{where}.name", f"stage {name!r} appears twice")
    if name == FINETUNE_STAGE:
        raise SpecError(path, f"{where}.name", f"{name!r} is the name of the shared FP32 "
                        "fine-tuning's stage: give this stage another name")
    grid, zips, exclude, include = _parse_points(path, raw, f"{where}.")
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise SpecError(path, f"{where}.base", "must map trainer arguments to values")
    for key in base:
        _check_arg(path, f"{where}.base.{key}", key)
    inputs: tuple[str, ...] = ()
    if i > 0:
        keys = raw.get("from_previous", ["model_name_or_path"])
        keys = [keys] if isinstance(keys, str) else keys
        if not isinstance(keys, list) or not keys or any(k not in INPUT_KEYS for k in keys):
            raise SpecError(path, f"{where}.from_previous",
                            f"{quote(keys)}: name the arguments that receive the previous stage's "
                            f"saved model, among {', '.join(INPUT_KEYS)}")
        inputs = tuple(keys)
    elif "from_previous" in raw:
        raise SpecError(path, f"{where}.from_previous", "the first stage has no previous stage")
    return SweepStage(name, grid, zips, exclude, include, dict(base), inputs)


def _axis_values(path: str, where: str, values: Any) -> list[Any]:
    """An axis's values; a range `a..b` stays a `range` (see SweepStage): never materialised here,
    never converted to float, so its size is exact however large."""
    if isinstance(values, str) and ".." in values:
        m = RANGE_RE.match(values)
        if not m or len(m.group(1)) > 25 or len(m.group(2)) > 25:
            raise SpecError(path, where, f"bad range {quote(values, 60)}: write integers as "
                                         "'a..b', e.g. 1..8")
        lo, hi = int(m.group(1)), int(m.group(2))
        if lo > hi:
            raise SpecError(path, where, f"bad range {quote(values)}: start is above end")
        for end in (lo, hi):
            if abs(end) > MAX_INT:
                raise SpecError(path, where, f"bad range {quote(values)}: {end} is out of "
                                             f"range (integers are at most {MAX_INT})")
        return [range(lo, hi + 1)]
    if not isinstance(values, list):
        values = [values]
    if not values:
        raise SpecError(path, where, "empty list: give at least one value")
    out: list[Any] = []
    for v in values:
        if isinstance(v, str) and ".." in v and RANGE_RE.match(v):
            out += _axis_values(path, where, v)
        else:
            out.append(v)
    return out


def axis_size(values: list[Any]) -> int:
    """How many values an axis has, its ranges counted without expanding them (an exact
    Python int: len() of a range over 2**63 values would raise OverflowError)."""
    return sum(v.stop - v.start if isinstance(v, range) else 1 for v in values)


def iter_values(values: list[Any]) -> Iterator[Any]:
    """An axis's values in order, its ranges expanded as they are reached."""
    for v in values:
        if isinstance(v, range):
            yield from v
        else:
            yield v
