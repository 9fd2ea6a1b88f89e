"""`sweep plan-bits RESULTS --budget-mb X`: bits per module group under a size budget, from a
sensitivity study's measurements (analysis.sensitivity), written as the spec of the chosen
model.

Each group either stays FP32 (no change, nothing saved) or takes one of the bit widths it was
measured at (its measured change of the metric, the megabytes it saved). The model's size is
the FP32 size less what the chosen groups save; its predicted change is the sum of the groups'
changes (the additive model HAWQ-style allocators use). `allocate` finds the assignment with the
best predicted metric whose size is within the budget exactly: a dynamic programme over the
groups keeping every assignment not beaten in both saved size and predicted metric (a Pareto
front), so no rounding of sizes. `greedy` is the HAWQ-style heuristic (lower the step with the
least loss per megabyte saved until the budget is met), reported beside it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from analysis.safe_text import terminal
from analysis.sensitivity import Study, find_study
from quantlib.errors import UserError

Group = tuple[str, ...]
EPS = 1e-9
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,60}")
MAX_STATES = 200_000  # a front this large means the measurements are not what this expects


@dataclass(frozen=True)
class Option:
    bits: int | None  # None: FP32
    delta: float  # predicted change of the metric
    saved: float  # megabytes saved


@dataclass
class Plan:
    choice: dict[Group, int | None]
    delta: float
    saved: float


def options_of(study: Study) -> dict[Group, list[Option]]:
    out: dict[Group, list[Option]] = {}
    for g in study.groups:
        opts = [Option(None, 0.0, 0.0)]
        for b in study.bits:
            m = study.cells.get((g, b))
            if m is not None and m.saved_mb:
                opts.append(Option(b, m.delta, m.saved))
        out[g] = opts
    return out


def allocate(options: Mapping[Group, list[Option]], need: float) -> Plan | None:
    """The assignment saving at least `need` MB with the largest summed delta (None: none
    saves that much)."""
    front: list[tuple[float, float, tuple]] = [(0.0, 0.0, ())]  # (saved, delta, choices)
    groups = list(options)
    for g in groups:
        grown = [(s + o.saved, d + o.delta, c + (o.bits,)) for s, d, c in front
                 for o in options[g]]
        grown.sort(key=lambda t: (-t[0], -t[1]))
        front = []
        best = -math.inf
        for state in grown:  # by saved, descending: keep those better in delta than all above
            if state[1] > best + EPS:
                front.append(state)
                best = state[1]
        if len(front) > MAX_STATES:
            raise UserError(f"plan-bits: {len(front)} candidate plans after "
                            f"{groups.index(g) + 1} groups; too many to search exactly")
    feasible = [t for t in front if t[0] >= need - EPS]
    if not feasible:
        return None
    saved, delta, choices = max(feasible, key=lambda t: (t[1], t[0]))
    return Plan(dict(zip(groups, choices)), delta, saved)


def greedy(options: Mapping[Group, list[Option]], need: float) -> Plan | None:
    """HAWQ-style: from FP32, lower the group whose next measured step loses the least metric
    per megabyte saved, until `need` MB are saved."""
    at = {g: opts[0] for g, opts in options.items()}
    saved = 0.0
    while saved < need - EPS:
        best = None
        for g, opts in options.items():
            for o in opts:
                gain = o.saved - at[g].saved
                if gain <= EPS:
                    continue
                cost = (at[g].delta - o.delta) / gain  # metric lost per MB
                if best is None or cost < best[0]:
                    best = (cost, g, o)
        if best is None:
            return None
        _, g, o = best
        saved += o.saved - at[g].saved
        at[g] = o
    return Plan({g: o.bits for g, o in at.items()}, sum(o.delta for o in at.values()), saved)


# keys of a run's configuration that are the study's own, not the planned model's
STUDY_KEYS = {"quantize_modules", "nbits", "nbits_per_module", "seed", "task", "method"}


def _text(value: object) -> str:
    """A value on one line of plain ASCII (a comment, a name): JSON's escapes, no quotes."""
    return json.dumps(str(value), ensure_ascii=True)[1:-1]


@dataclass
class Settings:
    base: dict  # the planned spec's base, less what the plan sets
    resources: dict | None  # the study spec's resources, as written
    missing: list[str]  # path settings the results had but no spec copy gave


def settings_of(study: Study, spec_text: str | None) -> Settings:
    """The study's settings for the planned spec: from the study sweep's own spec (its copy in
    the ledger) where there is one, so no path read from a result file is written; values
    only the results hold (a single-valued grid axis) from the runs, except paths."""
    from jobs import safeyaml
    from jobs.scripts import MAYBE_PATH_KEYS, PATH_KEYS
    from jobs.spec import parse_spec
    from quantlib.configs import all_keys, defaults

    base: dict = {}
    resources = None
    axes: dict = {}
    if spec_text is not None:
        try:
            spec = parse_spec(safeyaml.load(spec_text.encode("utf-8")))
        except (UserError, ValueError):
            spec = None
        if spec is not None:
            base = {k: v for k, v in spec.base.items() if k not in STUDY_KEYS}
            raw = spec.raw.get("resources")
            resources = raw if isinstance(raw, dict) else None
            grid = spec.raw.get("grid")
            axes = grid if isinstance(grid, dict) else {}
    known = set(all_keys())
    default = defaults(study.method)
    missing = []
    for k, v in sorted(study.settings.items()):
        if k not in known or k in STUDY_KEYS or k in base or default.get(k, object()) == v:
            continue
        if k in PATH_KEYS + MAYBE_PATH_KEYS:
            axis = axes.get(k)
            if isinstance(axis, list) and len(axis) == 1 and isinstance(axis[0], str):
                base[k] = axis[0]  # the spec's own value (its grid had one)
            else:
                missing.append(k)
            continue
        base[k] = v
    return Settings(base, resources, missing)


def plan_spec(study: Study, plan: Plan, budget: float, name: str, seeds: list[int],
              source: str, settings: Settings) -> str:
    """The YAML text of the chosen model's sweep: values written as JSON (valid YAML), every
    comment on one ASCII line."""
    chosen = {g: b for g, b in plan.choice.items() if b is not None}
    counts: dict[int, int] = {}
    for b in chosen.values():
        counts[b] = counts.get(b, 0) + 1
    nbits = max(sorted(counts), key=lambda b: counts[b]) if counts else None
    patterns = [p for g in chosen for p in g]
    per_module = {p: b for g, b in chosen.items() for p in g if b != nbits}
    size = study.fp32_size_mb - plan.saved
    metric = _text(study.metric)
    lines = [
        f"# planned by `sweep plan-bits {_text(source)} --budget-mb {budget:g}` from the",
        f"# sensitivity study of {_text(study.method)} on {_text(study.task)} "
        f"({len(study.groups)} groups x bits {', '.join(map(str, study.bits))}, {metric}):",
        f"# predicted size {size:.4f} MB (budget {budget:g} MB, FP32 {study.fp32_size_mb:.4f}),",
        f"# predicted change of {metric} {plan.delta:+.4f} against FP32 (the sum of each "
        "group's measured change); groups and bits:",
    ]
    for g, b in plan.choice.items():
        lines.append(f"#   {_text(', '.join(g))}: {b if b is not None else 'FP32'}")
    for k in settings.missing:
        lines.append(f"# {k}: not written (only the results held it): give it in base")
    lines += [f"name: {json.dumps(name)}", "grid:", f"  task: [{json.dumps(study.task)}]",
              f"  method: [{json.dumps(study.method)}]", f"  seed: {json.dumps(seeds)}",
              "include:                          # the FP32 baseline, a job a seed"]
    lines += [f"  - {{task: {json.dumps(study.task)}, method: fp32, seed: {json.dumps(s)}}}"
              for s in seeds]
    lines.append("base:")
    base = dict(settings.base)
    base["quantize_modules"] = patterns
    if nbits is not None:
        base["nbits"] = nbits
    if per_module:
        base["nbits_per_module"] = per_module
    lines += [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in base.items()]
    if settings.resources:
        lines.append(f"resources: {json.dumps(settings.resources)}")
    return "\n".join(lines) + "\n"


def plan_bits(paths: list[str], budget: float, output: str | None, metric: str | None) -> int:
    from analysis.results import find_runs
    from quantlib.atomic import write_text

    if not math.isfinite(budget) or budget <= 0:
        raise UserError(f"--budget-mb {budget}: must be a positive number of megabytes")
    collection = find_runs(paths, None, None)
    study = find_study(collection.runs, metric)
    if study is None:
        raise UserError(f"{terminal(', '.join(paths))}: no sensitivity study found (completed "
                        "runs of one method that differ in quantize_modules, two groups or "
                        "more, with FP32 runs of the same task and data)")
    need = study.fp32_size_mb - budget
    options = options_of(study)
    if need <= 0:
        print(f"the FP32 model ({study.fp32_size_mb:.4f} MB) fits {budget:g} MB: nothing to "
              "quantize, no spec written")
        return 0
    plan = allocate(options, need)
    if plan is None:
        least = study.fp32_size_mb - sum(max(o.saved for o in opts) for opts in options.values())
        raise UserError(f"--budget-mb {budget:g}: the smallest model these measurements allow "
                        f"is {least:.4f} MB (every group at its fewest measured bits)")
    out = Path(output or "planned.yaml")
    if out.exists() or out.is_symlink():
        raise UserError(f"-o {terminal(out)}: exists; give a new file (nothing is overwritten)")
    from analysis.collect import refuse_own_input

    refuse_own_input(out, collection)
    members = {r.sweep for r in collection.runs if r.method == study.method}
    sweep = next((s for s in collection.sweeps if len(members) == 1 and s.name in members),
                 None)
    seeds = sorted({r.config["seed"] for r in collection.runs
                    if type(r.config.get("seed")) is int and 0 <= r.config["seed"] < 2 ** 31
                    and r.method == study.method and r.task == study.task}) or [42]
    name = f"{sweep.name if sweep else 'study'}-plan"
    if not NAME.fullmatch(name):
        name = "study-plan"
    settings = settings_of(study, sweep.spec_text if sweep else None)
    text = plan_spec(study, plan, budget, name, seeds, " ".join(paths), settings)
    _check_spec(text, out, study, plan)
    write_text(out, text)
    g = greedy(options, need)
    print(terminal(f"{len(study.groups)} groups, bits {', '.join(map(str, study.bits))}: "
                   f"size {study.fp32_size_mb - plan.saved:.4f} MB (budget {budget:g}), "
                   f"predicted {study.metric} {plan.delta:+.4f} against FP32"
                   + (f" (greedy: {g.delta:+.4f})" if g else "") + f" -> {out}"))
    for grp, b in plan.choice.items():
        print(terminal(f"  {', '.join(grp)}: {b if b is not None else 'FP32'}"))
    for k in settings.missing:
        print(terminal(f"  {k}: not written (only the study's results held it, no spec copy): "
                       f"give it in {out}'s base"))
    return 0


def _check_spec(text: str, out: Path, study: Study, plan: Plan) -> None:
    """The written spec must load and expand as any spec does (its values came from result
    files), hold only the keys written, and give every planned module its planned bits."""
    import tempfile

    from jobs.grid import expand
    from jobs.spec import load_spec

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / out.name
        path.write_text(text, encoding="utf-8")
        try:
            spec = load_spec(str(path))
            jobs = expand(spec)
        except UserError as e:
            raise UserError(f"plan-bits: the planned spec does not load ({e}); the results' "
                            "settings are not a spec's") from None
    if set(spec.raw) - {"name", "grid", "include", "base", "resources"}:
        raise UserError("plan-bits: the planned spec holds keys it should not")
    want = {p: b for g, b in plan.choice.items() if b is not None for p in g}
    for job in jobs:
        if job.config.get("method") != study.method:
            continue
        per_module = job.config.get("nbits_per_module") or {}
        got = {p: per_module.get(p, job.config.get("nbits")) for p in want}
        if got != want or sorted(job.config.get("quantize_modules", ())) != sorted(want):
            raise UserError("plan-bits: the planned spec does not give the planned bits")
