"""Find every job under the given directories and read what it left: config, state, metrics.

Our own jobs leave config.json, status.json and eval_results.json (and sit in a sweep's
ledger); directories other tools wrote are read through analysis.formats, their task / method /
nbits taken from the directory name (analysis.naming). Unreadable or partial files are reported
(file and reason) and skipped; nothing stops the collection.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.formats import MM_SUFFIX, BadFile, read_foreign, result_files, split_eval
from analysis.naming import SEED_PATTERN, Pattern, compile_pattern, task_name
from analysis.safe_text import text
from jobs.errors import UserError
from jobs.ledger import entry_path
from quantlib.outputs import CONFIG, EVAL_JSON, STATUS

LEDGER = "ledger.json"
SKIP_DIRS = {"checkpoints", "model", "logs", "scripts", "configs", "snapshots", "submitit",
             "__pycache__"}
# bookkeeping, not config
RUN_KEYS = ("job_id", "sweep", "output_dir", "nproc_per_node", "max_requeues")
STAGE_KEYS = ("stage", "after")  # bookkeeping of staged sweeps: kept only where set
OURS = "quantsweep"


@dataclass
class Run:
    output_dir: Path
    config: dict[str, Any]
    state: str  # completed / failed / interrupted / running / pending / skipped / missing
    metrics: dict[str, float] = field(default_factory=dict)  # HF names, no eval_ prefix
    info: dict[str, Any] = field(default_factory=dict)  # train_loss, quantized_fraction, ...
    reason: str | None = None
    sweep: str = ""
    job_id: str = ""
    source: str = OURS  # the formats its results were read from

    @property
    def task(self) -> str:
        return str(self.config.get("task", ""))

    @property
    def method(self) -> str:
        return str(self.config.get("method", ""))

    @property
    def nbits(self) -> int | None:
        value = self.config.get("nbits")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass
class Sweep:
    name: str
    spec_path: str
    spec_text: str | None


@dataclass
class Collection:
    runs: list[Run]
    sweeps: list[Sweep]
    problems: list[tuple[str, str]]  # (file, why it was skipped)


class _Reader:
    def __init__(self, patterns: list[Pattern]) -> None:
        self.patterns = patterns
        self.problems: list[tuple[str, str]] = []

    def warn(self, path: Path, reason: str) -> None:
        self.problems.append((str(path), reason))
        print(f"sweep collect: skipped {path}: {reason}", file=sys.stderr)

    def read(self, path: Path) -> dict[str, Any] | None:
        """A JSON object, or None if absent; unreadable files are reported and skipped."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self.warn(path, getattr(exc, "strerror", None) or str(exc))
            return None
        try:
            data = json.loads(text)
        except ValueError as exc:
            self.warn(path, f"not valid JSON ({exc})")
            return None
        if not isinstance(data, dict):
            self.warn(path, "not a JSON object")
            return None
        return data

    def ours(self, out_dir: Path, ledger_entry: dict[str, Any] | None = None,
             resolved: tuple[str, str | None] | None = None) -> Run:
        """One of our jobs. resolved: its (state, reason) as `sweep status` resolves it (files,
        ledger and scheduler): collect states what status states."""
        ledger_entry = ledger_entry or {}
        config = self.read(out_dir / CONFIG) or dict(ledger_entry.get("config") or {})
        status = self.read(out_dir / STATUS) or {}
        results = self.read(out_dir / EVAL_JSON)
        # files are the truth (jobs.state's rule): the ledger's "completed" without the job's
        # own marker is a job whose files are gone, not a result
        recorded = ledger_entry.get("state")
        state = status.get("state") or (recorded if recorded != "completed" else None) \
            or "missing"
        if state == "completed" and results is None:
            state, reason = "failed", f"{EVAL_JSON} is missing or unreadable"
        else:
            reason = status.get("reason") or ledger_entry.get("reason")
        if resolved is not None and not (state == "completed" and results is not None):
            state, reason = resolved
        metrics, info = split_eval(results or {})
        config = {k: v for k, v in config.items() if k not in RUN_KEYS
                  and not (k in STAGE_KEYS and v is None)}  # no stage: no bookkeeping
        return Run(out_dir, config, state,
                   metrics, info, reason, sweep=str(config.get("sweep", "")),
                   job_id=str(config.get("job_id") or ""))

    def foreign(self, here: Path, names: list[str]) -> Run | None:
        """A directory another tool wrote results into, or None when it holds none."""
        files = result_files(here, names)
        if not files:
            return None
        metrics: dict[str, float] = {}
        info: dict[str, Any] = {}
        sources: list[str] = []
        bad: list[str] = []
        for fmt, path in files:
            try:
                found, extra = read_foreign(fmt, path)
            except BadFile as exc:
                self.warn(path, str(exc))
                bad.append(f"{path.name}: {exc}")
                continue
            metrics.update(found)
            info.update(extra)
            sources.append(fmt)
        config = self._config_from_name(here, info, metrics, names)
        state, reason = ("completed", None) if metrics else (
            "failed", "; ".join(bad) or "no readable results")
        return Run(here, config, state, metrics, info, reason, source=", ".join(sources)
                   or "unreadable")

    def _config_from_name(self, here: Path, info: dict[str, Any], metrics: dict[str, float],
                          names: list[str]) -> dict[str, Any]:
        named = here.with_name(here.name[:-len(MM_SUFFIX)]) if here.name.endswith(
            MM_SUFFIX) else here
        config: dict[str, Any] = {}
        for pattern in self.patterns:
            fields = pattern.match(named)
            if fields is not None:
                config.update(fields)
                break
        if "task" not in config:
            hinted = info.pop("task_name", None)
            model_config = self.read(here / CONFIG) if CONFIG in names else None
            if isinstance(hinted, str):
                config["task"] = task_name(hinted)
            elif model_config and isinstance(model_config.get("finetuning_task"), str):
                config["task"] = task_name(model_config["finetuning_task"])
            elif set(metrics) >= {"exact_match", "f1"}:
                config["task"] = "squad"
            else:
                tried = ", ".join(p.text for p in self.patterns)
                self.warn(here, f"task unknown: no config.json, and the directory name matches "
                                f"no --pattern (tried {tried})")
        info.pop("task_name", None)
        return config


def _is_ours(here: Path, names: set[str]) -> bool:
    """A quantsweep job wrote its status here, or its results beside its own config (a bare
    config.json may be a model's; an HF Trainer output also holds eval_results.json)."""
    if STATUS in names:
        return True
    if EVAL_JSON not in names or CONFIG not in names:
        return False
    try:
        config = json.loads((here / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and "method" in config and "task" in config


def _merge_mm(runs: dict[str, Run]) -> None:
    """Old run_glue scripts write MNLI-mm to `<output_dir>-MM/`: its metrics join the
    sibling's as `<metric>_mm`; an `-MM` directory without a sibling stays a run of its own."""
    for key in [k for k, r in runs.items() if r.source != OURS
                and r.output_dir.name.endswith(MM_SUFFIX)]:
        mm = runs[key]
        renamed = {(k if k.endswith("_mm") else f"{k}_mm"): v for k, v in mm.metrics.items()}
        sibling = runs.get(key[:-len(MM_SUFFIX)])
        if sibling is None or sibling.source == OURS:
            mm.metrics = renamed
            continue
        sibling.metrics.update(renamed)
        sibling.source += f", {MM_SUFFIX} sibling"
        if sibling.state != "completed" and sibling.metrics:
            sibling.state, sibling.reason = "completed", None
        del runs[key]


def find_runs(paths: list[str], patterns: list[str] | None = None) -> Collection:
    """Runs under the given sweep or job directories, each once, in a stable order."""
    compiled = [compile_pattern(p) for p in (patterns or [])] or [compile_pattern(SEED_PATTERN)]
    reader = _Reader(compiled)
    runs: dict[str, Run] = {}
    sweeps: dict[str, Sweep] = {}
    read_dirs: set[str] = set()  # job directories already read through a ledger
    for raw in paths:
        root = Path(raw)
        if not root.is_dir():
            raise UserError(f"{raw}: no such directory (give sweep directories such as runs/NAME)")
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            names = set(filenames)
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS
                                 and not d.startswith((".", "checkpoint-"))
                                 and os.path.join(dirpath, d) not in read_dirs)
            ledger = reader.read(here / LEDGER) if LEDGER in names else None
            if ledger and isinstance(ledger.get("jobs"), dict):
                name = str(ledger.get("sweep", "")) or here.name
                spec_text = ledger.get("spec_text")
                if not isinstance(spec_text, str):
                    try:
                        spec_text = Path(str(ledger.get("spec", ""))).read_text(encoding="utf-8")
                    except (OSError, UnicodeDecodeError):
                        spec_text = None
                sweeps.setdefault(name, Sweep(name, str(ledger.get("spec", "")), spec_text))
                resolved = _sweep_states(here)
                for jid, entry in ledger["jobs"].items():
                    out = entry_path(here, entry.get("output_dir", ""))
                    read_dirs.add(os.path.abspath(out))
                    key = os.path.realpath(out)
                    if key not in runs:
                        run = reader.ours(out, entry, resolved.get(jid))
                        run.job_id = run.job_id or jid
                        run.sweep = run.sweep or name
                        runs[key] = run
            key = os.path.realpath(here)
            if _is_ours(here, names):
                if key not in runs:
                    runs[key] = reader.ours(here)
                dirnames[:] = []  # a job directory holds no further jobs
            elif key not in runs:
                run = reader.foreign(here, sorted(names))
                if run is not None:
                    runs[key] = run
    _merge_mm(runs)
    ordered = sorted(runs.values(), key=lambda r: (r.sweep, str(r.output_dir)))
    runs_once = [_clean(r) for r in _once(ordered, reader)]
    problems = [(text(p), text(why)) for p, why in reader.problems]
    clean_sweeps = [Sweep(text(s.name), text(s.spec_path),
                          None if s.spec_text is None else text(s.spec_text))
                    for s in sweeps.values()]
    return Collection(runs_once, clean_sweeps, problems)


def _sweep_states(sweep_dir: Path) -> dict[str, tuple[str, str | None]]:
    """Every job's (state, reason) as `sweep status` gives them (one scheduler call per
    backend); {} for a ledger that is not one of ours in good order (its runs are then read
    from their own files)."""
    from jobs.errors import UserError
    from jobs.ledger import Ledger
    from jobs.manage import states

    try:
        ledger = Ledger(sweep_dir)
        if not all(isinstance(e, dict) for e in ledger.jobs.values()):
            return {}
        return states(ledger)
    except UserError:
        return {}
    except Exception:  # noqa: BLE001 - a hostile ledger's values: its files still speak
        return {}


def _clean_value(value: Any) -> Any:
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return {text(str(k)): _clean_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_value(v) for v in value]
    return value


def _clean(run: Run) -> Run:
    """A run whose every string can go into any output: names that are not UTF-8 and control
    characters escaped (analysis.safe_text). Files are not read again after this."""
    run.output_dir = Path(text(str(run.output_dir)))
    run.config = _clean_value(run.config)
    run.info = _clean_value(run.info)
    run.metrics = {text(k): v for k, v in run.metrics.items()}
    run.reason = None if run.reason is None else text(str(run.reason))
    run.sweep, run.job_id, run.source = text(run.sweep), text(run.job_id), text(run.source)
    return run


def _identities(run: Run) -> list[str]:
    """What makes two of our runs the same job: the same job id, or the same whole
    configuration (less bookkeeping). Other tools' runs carry no configuration to compare."""
    if run.source != OURS:
        return []
    keys = ["id:" + run.job_id] if run.job_id else []
    if run.config:
        keys.append("config:" + json.dumps(run.config, sort_keys=True, default=str))
    return keys


def _rank(run: Run) -> tuple:
    """Which copy of a job counts: a completed one with results, then the newest."""
    try:
        mtime = (run.output_dir / STATUS).stat().st_mtime
    except OSError:
        mtime = 0.0
    return (run.state == "completed" and bool(run.metrics), mtime)


def _once(runs: list[Run], reader: _Reader) -> list[Run]:
    """Every job counted once: the same job (same id, or the same full configuration) found in
    two directories (a sweep copied, a directory renamed by a spec edit) is one run; the copies
    not counted are reported."""
    parent = list(range(len(runs)))  # union-find over shared ids and configurations

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, run in enumerate(runs):
        for key in _identities(run):
            j = first.setdefault(key, i)
            parent[root(i)] = root(j)
    by_identity: dict[int, list[Run]] = {}
    for i, run in enumerate(runs):
        by_identity.setdefault(root(i), []).append(run)
    dropped: set[int] = set()
    for copies in by_identity.values():
        if len(copies) < 2:
            continue
        keep = max(copies, key=_rank)
        for run in copies:
            if run is not keep:
                dropped.add(id(run))
                reader.warn(run.output_dir, f"the same job as {keep.output_dir} (job "
                                            f"{keep.job_id or 'with the same configuration'}): "
                                            "counted once, there")
    return [r for r in runs if id(r) not in dropped]
