"""Find every job under the given directories and read what it left: config, state, metrics.

Our own jobs leave config.json, status.json and eval_results.json (and sit in a sweep's
ledger); directories other tools wrote are read through analysis.formats, their task / method /
nbits taken from the directory name (analysis.naming). Unreadable or partial files are reported
(file and reason) and skipped; nothing stops the collection.

A tree is read as someone else wrote it (analysis.safe_read): only regular files of bounded size
that lie inside the collected directories once links are resolved; a ledger's paths (a job's
output_dir and log, the spec) only inside its sweep directory; ledger entries and file values of
shapes that are not ours are reported, never trusted.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.formats import (
    MM_SUFFIX,
    BadFile,
    candidate,
    named_result,
    result_files,
    split_eval,
)
from analysis.naming import SEED_PATTERN, Pattern, compile_pattern, task_name
from analysis.safe_read import CUT, MAX_DEPTH, Refused, Tree, loads
from analysis.safe_text import terminal, text
from quantlib.configs import identity_key
from quantlib.errors import UserError
from quantlib.jobdir import (
    CONFIG,
    EVAL_JSON,
    LEDGER,
    MAX_READ_BYTES,
    RUN_KEYS,
    STAGE_KEYS,
    STATUS,
    completed,
    entry_path,
    valid_id,
)

SKIP_DIRS = {"checkpoints", "model", "logs", "scripts", "configs", "snapshots", "submitit",
             "__pycache__"}
OURS = "quantsweep"
OUR_FILES = {LEDGER, CONFIG, STATUS, EVAL_JSON}
UNSIZED = 1 << 62  # no size limit: the type and the place are checked

State = tuple[str, "str | None"]  # (state, reason), as `sweep status` shows a job
# The scheduler's view, handed in by the caller (the CLI: jobs.running.sweep_states): a sweep
# directory and which of its ledger's entries may be asked about -> their resolved states.
# Without it collect reads states from the job directories alone.
SweepStates = Callable[[Path, Callable[[str, dict[str, Any]], bool]], dict[str, State]]


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
    # real paths of every file collect read or tried to, and of every job directory it found:
    # `-o` may name none of them (analysis.collect)
    inputs: set[str] = field(default_factory=set)
    job_dirs: set[str] = field(default_factory=set)


def _word(value: Any) -> str | None:
    """A state as a file or ledger records it: a non-empty string, else nothing."""
    return value if isinstance(value, str) and value else None


def _why(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _short(value: Any, limit: int = 120) -> str:
    """A value from a ledger for a one-line report: a path of a megabyte is cut."""
    text = str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


class _Reader:
    def __init__(self, patterns: list[Pattern], tree: Tree,
                 sweep_states: SweepStates | None = None) -> None:
        self.patterns = patterns
        self.tree = tree
        self.sweep_states = sweep_states
        self.problems: list[tuple[str, str]] = []
        self._reported: set[tuple[str, str]] = set()

    def warn(self, path: Path | str, reason: str) -> None:
        """A file skipped (or a part of it left out), once, on the console escaped: names and
        reasons come from the tree and may hold terminal escapes."""
        key = (str(path), str(reason))
        if key in self._reported:
            return
        self._reported.add(key)
        self.problems.append(key)
        print(f"sweep collect: skipped {terminal(key[0])}: {terminal(key[1])}", file=sys.stderr)

    def usable(self, here: Path, names: list[str]) -> set[str]:
        """The directory's file names less those that may be results but are refused (a link
        out of the tree, a FIFO, a device, a huge file): reported, never opened."""
        out = set(names)
        wanted = [n for n in names if n in OUR_FILES or candidate(n)]
        if wanted == [CONFIG]:
            return out  # a model's config.json alone is never read (often a link to a cache)
        for name in wanted:
            # a sniffed file (a log) may be large: result_files reads only its head then
            sized = name in OUR_FILES or named_result(name)
            why = self.tree.refusal(here / name, MAX_READ_BYTES if sized else UNSIZED)
            if why:
                self.warn(here / name, why)
                out.discard(name)
        return out

    def read(self, path: Path) -> dict[str, Any] | None:
        """A JSON object, or None if absent; unreadable files are reported and skipped."""
        try:
            data, cut = loads(self.tree.read_bytes(path))
        except FileNotFoundError:
            return None
        except Refused as exc:
            self.warn(path, str(exc))
            return None
        except OSError as exc:
            self.warn(path, exc.strerror or str(exc))
            return None
        if not isinstance(data, dict):
            self.warn(path, "not a JSON object")
            return None
        if cut:
            self.warn(path, f"values nested more than {MAX_DEPTH} deep: left out (the rest read)")
        return data

    def is_ours(self, here: Path, names: set[str]) -> bool:
        """A quantsweep job wrote its status here, or its results beside its own config (a bare
        config.json may be a model's; an HF Trainer output also holds eval_results.json)."""
        if STATUS in names:
            return True
        if EVAL_JSON not in names or CONFIG not in names:
            return False
        try:
            config, _ = loads(self.tree.read_bytes(here / CONFIG))
        except (Refused, OSError):
            return False
        return isinstance(config, dict) and "method" in config and "task" in config

    def ours(self, out_dir: Path, ledger_entry: dict[str, Any] | None = None,
             resolved: tuple[str, str | None] | None = None) -> Run:
        """One of our jobs. resolved: its (state, reason) as `sweep status` resolves it (files,
        ledger and scheduler): collect states what status states."""
        ledger_entry = ledger_entry or {}
        recorded_config = ledger_entry.get("config")
        config = self.read(out_dir / CONFIG) or (
            dict(recorded_config) if isinstance(recorded_config, dict) else {})
        status = self.read(out_dir / STATUS) or {}
        results = self.read(out_dir / EVAL_JSON)
        # files are the truth (quantlib.jobdir.completed): the ledger's "completed" without the
        # job's own marker is a job whose files are gone, not a result
        done = completed(status, results)
        recorded = _word(ledger_entry.get("state"))
        state = _word(status.get("state")) or (recorded if recorded != "completed" else None) \
            or "missing"
        if state == "completed" and not done:
            state, reason = "failed", f"{EVAL_JSON} is missing or unreadable"
        else:
            reason = _why(status.get("reason")) or _why(ledger_entry.get("reason"))
        if resolved is not None and not done:
            state, reason = _word(resolved[0]) or "missing", _why(resolved[1])
        notes: list[str] = []
        metrics, info = split_eval(results or {}, notes)
        for note in notes:
            self.warn(out_dir / EVAL_JSON, note)
        own = config
        config = {k: v for k, v in config.items() if k not in RUN_KEYS
                  and not (k in STAGE_KEYS and (v is None or not config.get("stage")))}
        # no stage: no bookkeeping (a job after a shared fine-tuning has `after`, no stage)
        return Run(out_dir, config, state,
                   metrics, info, reason, sweep=str(own.get("sweep") or ""),
                   job_id=str(config.get("job_id") or ""))

    def foreign(self, here: Path, names: list[str]) -> Run | None:
        """A directory another tool wrote results into, or None when it holds none."""
        files = result_files(here, names, self.tree)
        if not files:
            return None
        metrics: dict[str, float] = {}
        info: dict[str, Any] = {}
        sources: list[str] = []
        bad: list[str] = []
        for fmt, path in files:
            notes: list[str] = []
            try:
                found, extra = fmt.read(path, self.tree, notes)
            except BadFile as exc:
                self.warn(path, str(exc))
                bad.append(f"{path.name}: {exc}")
                continue
            for note in notes:
                self.warn(path, note)
            metrics.update(found)
            info.update(extra)
            sources.append(fmt.label)
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

    def sweep(self, here: Path, runs: dict[str, Run], sweeps: dict[str, Sweep],
              read_dirs: set[str]) -> None:
        """The jobs a sweep's ledger lists, read from their directories (inside the sweep
        directory only; entries of other shapes reported and left out)."""
        ledger = self.read(here / LEDGER)
        if not ledger or not isinstance(ledger.get("jobs"), dict):
            return  # another tool's ledger.json: not ours to judge
        name = _word(ledger.get("sweep")) or here.name
        sweeps.setdefault(name, Sweep(name, _why(ledger.get("spec")) or "",
                                      self._spec_text(here, ledger)))
        entries: dict[str, tuple[dict[str, Any], Path]] = {}
        for jid, entry in ledger["jobs"].items():
            out = self._entry_dir(here, str(jid), entry)
            if out is not None:
                entries[str(jid)] = (entry, out)
        resolved = self._sweep_states(here, set(entries))
        for jid, (entry, out) in entries.items():
            read_dirs.add(os.path.abspath(out))
            key = self.tree.real(out)[0]  # os.path.realpath, its parent's resolution cached
            if key not in runs:
                run = self.ours(out, entry, resolved.get(jid))
                run.job_id = run.job_id or jid
                run.sweep = run.sweep or name
                runs[key] = run

    def _sweep_states(self, sweep_dir: Path, accepted: set[str]) -> dict[str, State]:
        """Every accepted job's (state, reason) from the caller's `sweep_states` (one scheduler
        call per backend); {} without one, or for a ledger that is not one of ours in good
        order (its runs are then read from their own files). Only entries collect accepted, in
        plain shape, are asked about: the state rule reads the files an entry names."""
        if self.sweep_states is None:
            return {}

        def plain(jid: str, entry: dict[str, Any]) -> bool:
            return jid in accepted and _plain_entry(entry, sweep_dir, self.tree)

        try:
            with contextlib.redirect_stderr(io.StringIO()):  # collect reports the entries itself
                return self.sweep_states(sweep_dir, plain)
        except Exception:  # noqa: BLE001 - a hostile ledger's values: its files still speak
            return {}

    def _entry_dir(self, here: Path, jid: str, entry: Any) -> Path | None:
        """A ledger entry's output directory, or None (reported) when the entry is not ours in
        shape or its paths leave the sweep directory (`..`, an absolute path, a link)."""
        where = here / LEDGER
        if not isinstance(entry, dict):
            self.warn(where, f"jobs.{_short(jid)}: not an object (a {type(entry).__name__}): "
                             "not read")
            return None
        value = entry.get("output_dir")
        if not isinstance(value, str) or not value or "\0" in value:
            self.warn(where, f"jobs.{_short(jid)}: output_dir is not a path: not read")
            return None
        out = entry_path(here, value)
        if not self.tree.inside(out, here, strictly=True):
            self.warn(where, f"jobs.{_short(jid)}: output_dir {_short(value)} is not inside the "
                             "sweep directory: not read")
            return None
        log = entry.get("log")
        if log not in (None, "") and not (isinstance(log, str) and "\0" not in log and
                                          self.tree.inside(entry_path(here, log), here, True)):
            self.warn(where, f"jobs.{_short(jid)}: log {_short(log)} is not inside the sweep "
                             "directory: ignored")
        return out

    def _spec_text(self, here: Path, ledger: dict[str, Any]) -> str | None:
        """The spec as launched: the ledger's copy; else the spec file, only where it lies in
        the sweep directory (a ledger may name any file, /etc/shadow included)."""
        copy = ledger.get("spec_text")
        if isinstance(copy, str):
            return copy
        spec = ledger.get("spec")
        if not isinstance(spec, str) or not spec or "\0" in spec:
            return None
        path = entry_path(here, spec)
        if not self.tree.inside(path, here, strictly=True):
            self.warn(here / LEDGER, f"spec: {_short(spec)} is not inside the sweep directory "
                                     "and the ledger keeps no copy of it: not read")
            return None
        try:
            return self.tree.read_text(path)
        except FileNotFoundError:
            return None
        except (Refused, OSError) as exc:
            self.warn(path, str(exc))
            return None


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


def _walk(root: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk(root) top-down, without following links to directories, and without recursion:
    os.walk recurses on Python 3.11, and a tree some thousand directories deep would raise
    RecursionError. The caller prunes dirnames in place, as with os.walk."""
    stack = [root]
    while stack:
        top = stack.pop()
        dirs: list[str] = []
        files: list[str] = []
        try:
            with os.scandir(top) as entries:
                for entry in entries:
                    try:
                        is_dir = entry.is_dir()
                    except OSError:
                        is_dir = False
                    (dirs if is_dir else files).append(entry.name)
        except OSError:
            continue  # unreadable or gone: as os.walk without onerror
        yield top, dirs, files
        for name in reversed(dirs):  # popped in the order the caller left them
            path = os.path.join(top, name)
            if not os.path.islink(path):
                stack.append(path)


def find_runs(paths: list[str], patterns: list[str] | None = None,
              sweep_states: SweepStates | None = None) -> Collection:
    """Runs under the given sweep or job directories, each once, in a stable order; with
    `sweep_states`, our jobs' states as `sweep status` resolves them (files, ledger and
    scheduler), else from their files."""
    compiled = [compile_pattern(p) for p in (patterns or [])] or [compile_pattern(SEED_PATTERN)]
    for raw in paths:
        if not Path(raw).is_dir():
            raise UserError(f"{terminal(raw)}: no such directory (give sweep directories such "
                            "as runs/NAME)")
    reader = _Reader(compiled, Tree(paths), sweep_states)
    runs: dict[str, Run] = {}  # real path of the job directory -> its run
    sweeps: dict[str, Sweep] = {}
    read_dirs: set[str] = set()  # job directories already read through a ledger
    for raw in paths:
        for dirpath, dirnames, filenames in _walk(raw):
            here = Path(dirpath)
            names = reader.usable(here, filenames)
            if LEDGER in names:
                reader.sweep(here, runs, sweeps, read_dirs)
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS
                                 and not d.startswith((".", "checkpoint-"))
                                 and os.path.abspath(os.path.join(dirpath, d)) not in read_dirs)
            key = os.path.realpath(here)
            if reader.is_ours(here, names):
                if key not in runs:
                    runs[key] = reader.ours(here)
                dirnames[:] = []  # a job directory holds no further jobs
            elif key not in runs:
                run = reader.foreign(here, sorted(names))
                if run is not None:
                    runs[key] = run
    _merge_mm(runs)
    job_dirs = set(runs)
    ordered = sorted(runs.values(), key=lambda r: (r.sweep, str(r.output_dir)))
    runs_once = [_clean(r) for r in _shared_baselines(_once(ordered, reader))]
    problems = [(text(p), text(why)) for p, why in reader.problems]
    clean_sweeps = [Sweep(text(s.name), text(s.spec_path),
                          None if s.spec_text is None else text(s.spec_text))
                    for s in sweeps.values()]
    return Collection(runs_once, clean_sweeps, problems, reader.tree.touched, job_dirs)


def _plain_entry(entry: Any, sweep_dir: Path, tree: Tree) -> bool:
    """A ledger entry the scheduler's view (sweep_states) may see: ours in shape, its output
    directory inside the sweep directory, its scheduler id an id (it names files in the
    submitit folder)."""
    if not isinstance(entry, dict):
        return False
    out, sid = entry.get("output_dir"), entry.get("scheduler_id")
    if not isinstance(out, str) or not out or "\0" in out or not tree.inside(out, sweep_dir,
                                                                              strictly=True):
        return False
    if sid is not None and not valid_id(sid):
        return False
    return entry.get("backend") is None or isinstance(entry.get("backend"), str)


def _clean_value(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return text(value if type(value) is str else str(value))  # a BigInt: plain text
    if depth >= MAX_DEPTH and isinstance(value, (dict, list)):
        return CUT  # values are bounded when read; this bounds the recursion whatever came in
    if isinstance(value, dict):
        return {text(str(k)): _clean_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_value(v, depth + 1) for v in value]
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
        try:  # quantlib.configs.identity_key: the one test of "the same job"
            keys.append("config:" + identity_key(run.config))
        except (KeyError, TypeError, ValueError):  # no known method: its whole configuration
            keys.append("config:" + json.dumps(run.config, sort_keys=True, default=str))
    return keys


def _rank(run: Run) -> tuple:
    """Which copy of a job counts: a completed one with results, then the newest."""
    try:
        mtime = (run.output_dir / STATUS).stat().st_mtime
    except OSError:
        mtime = 0.0
    return (run.state == "completed" and bool(run.metrics), mtime)


def _shared_baselines(runs: list[Run]) -> list[Run]:
    """A sweep's shared FP32 fine-tuning jobs (jobs.sharing) as FP32 runs: each is the FP32
    baseline of its children, shown as an fp32 run of the sweep (its stage bookkeeping left
    out), unless an fp32 job with the same fine-tuning is there: that one resumed from it and
    holds the same model, counted once."""
    from jobs.spec import FINETUNE_STAGE
    from quantlib.configs import FINETUNE_KEYS

    def fine_tuning(run: Run) -> str:
        return json.dumps({k: run.config.get(k) for k in FINETUNE_KEYS}, sort_keys=True,
                          default=str)

    shared = [r for r in runs if r.source == OURS and r.config.get("stage") == FINETUNE_STAGE]
    if not shared:
        return runs
    plain = {fine_tuning(r) for r in runs if r.method == "fp32" and r not in shared}
    out = []
    for run in runs:
        if run in shared:
            if fine_tuning(run) in plain:
                continue
            run.config = {k: v for k, v in run.config.items()
                          if k not in ("stage", "after", "finetune_checkpoint")}
        out.append(run)
    return out


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
