"""Result files other tools leave behind, read into HF Trainer metric names (no eval_ prefix).

- old run_glue.py (transformers <= 2.x), the INQ seed script, nlp-architect: `eval_results.txt`,
  one `key = value` line per metric, sorted (`acc = 0.68`, `mnli/acc`, `mnli-mm/acc`); MNLI-mm
  in a sibling directory `<output_dir>-MM/`. nlp-architect rewrites it at every evaluation.
- transformers 3.x run_glue.py: `eval_results_<task>.txt`, the same lines with `eval_` keys.
- HF Trainer: `eval_results.json` / `all_results.json`, indent 4, `eval_` prefixed keys,
  MNLI mismatched keys ending in `_mm`.
- SQuAD evaluate-v1.1.py: one line of JSON `{"exact_match": .., "f1": ..}` (0-100), printed to
  stdout and so found in whatever file it was sent to (the last line of that file).
- NVIDIA dllogger: `DLLL {json}` lines; the summary records (`"step": []`) carry the final
  metrics (`exact_match`, capital `F1`).

Every reader returns (metrics, info) or raises BadFile with the reason; nothing here stops a
collection. Files are read through an analysis.safe_read.Tree: regular files of bounded size
inside the collected directories only; a value that cannot be a metric (an integer of 401
digits) is left out with a note.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.safe_read import MAX_DEPTH, BigInt, Refused, Tree, loads
from quantlib.jobdir import OLD_NAMES

OLD_TXT = "eval_results.txt"
HF_JSON = ("eval_results.json", "all_results.json")
MM_SUFFIX = "-MM"
SNIFF_LIMIT = 256 * 1024  # files read whole to look for an evaluate-v1.1 line
DLLL_LIMIT = 64 * 1024 * 1024
SNIFF_SUFFIXES = (".json", ".txt", ".log", ".out", ".err")
# files a model, tokenizer or trainer writes: never results
NOT_RESULTS = {"config.json", "status.json", "vocab.txt", "merges.txt", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
               "trainer_state.json", "predictions.json", "nbest_predictions.json",
               "null_odds.json", "calibration.json", "generation_config.json", "ledger.json",
               "vocab.json", "dataset_info.json", "state.json", "job.json"}

# old and foreign metric names -> HF Trainer names: HF's own, the inverse of the old names we
# write (quantlib.jobdir.OLD_NAMES; STS-B's "corr": outputs.old_name), and SQuAD's short "em"
NAMES = {**{new: new for new in OLD_NAMES}, **{old: new for new, old in OLD_NAMES.items()},
         "corr": "combined_score", "em": "exact_match"}
PREFIXES = ("eval_", "eval:", "eval/", "eval.", "val.", "val_", "dev_")


class BadFile(Exception):
    """A results file that cannot be used: the message says why."""


def metric_name(key: str) -> str:
    """`eval_acc`, `mnli-mm/acc`, `F1`, `eval_accuracy_mm` -> `accuracy`, `accuracy_mm`, `f1`."""
    name = key
    for prefix in PREFIXES:
        if name.lower().startswith(prefix):
            name = name[len(prefix):]
            break
    mm = False
    if "/" in name:  # transformers 2.x: "<task>/<metric>"
        task, name = name.rsplit("/", 1)
        mm = task.lower().endswith("-mm")
    if name.endswith("_mm"):
        name, mm = name[:-3], True
    base = NAMES.get(name.lower(), name)
    return base + "_mm" if mm else base


def number(value: Any) -> float | None:
    """A metric's value as a float, or None: not a number, or one no float holds (an integer
    of hundreds of digits would raise OverflowError, its digits as text would read as inf)."""
    if isinstance(value, (bool, BigInt)):
        return None
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:
            return None
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "nan":
            return math.nan
        try:
            num = float(text)
        except ValueError:
            return None
        spelled = "inf" in text.lower()
        return num if math.isfinite(num) or spelled else None
    return None


def not_a_metric(key: str, value: Any) -> str | None:
    """Why a numeric-looking value is left out of the metrics (a note for the report), or None
    when it is simply not a number (a string, a list: info, as before)."""
    if isinstance(value, BigInt) or (isinstance(value, int) and not isinstance(value, bool)
                                     and number(value) is None):
        return f"{key}: an integer of {len(str(value).lstrip('-'))} digits is no metric: left out"
    return None


def _text(path: Path, limit: int, tree: Tree | None) -> str:
    try:
        return (tree or Tree(None)).read_text(path, limit)
    except Refused as exc:
        raise BadFile(str(exc)) from None
    except OSError as exc:
        raise BadFile(exc.strerror or str(exc)) from None


def _json(text: str, notes: list[str] | None) -> Any:
    try:
        data, cut = loads(text)
    except Refused as exc:
        raise BadFile(str(exc)) from None
    if cut and notes is not None:
        notes.append(f"values nested more than {MAX_DEPTH} deep: left out")
    return data


def read_key_value_txt(path: Path, tree: Tree | None = None
                       ) -> tuple[dict[str, float], dict[str, Any]]:
    """`key = value` lines (old run_glue, nlp-architect, the INQ seed script). A file the
    writer has not finished (empty, or a last line without its newline) is partial."""
    text = _text(path, SNIFF_LIMIT, tree)
    if not text.strip():
        raise BadFile("empty (being rewritten? nlp-architect rewrites it at every evaluation)")
    if not text.endswith("\n"):
        raise BadFile("partial: the last line has no newline (the writer was interrupted)")
    metrics: dict[str, float] = {}
    info: dict[str, Any] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, raw = line.partition(" = ")
        if not sep or not key.strip():
            raise BadFile(f"line {n}: not `key = value`: {line[:60]!r}")
        value = number(raw)
        if value is None:
            raise BadFile(f"line {n}: {key.strip()} is not a number: {raw.strip()[:40]!r}")
        name = metric_name(key.strip())
        if key.strip() in ("epoch", "global_step", "step"):
            info[key.strip()] = value
        else:
            metrics[name] = value
    return metrics, info


def read_hf_json(path: Path, tree: Tree | None = None, notes: list[str] | None = None
                 ) -> tuple[dict[str, float], dict[str, Any]]:
    """HF Trainer's eval_results.json / all_results.json (our own eval_results.json too)."""
    data = _json(_text(path, SNIFF_LIMIT, tree), notes)
    if not isinstance(data, dict):
        raise BadFile("not a JSON object")
    return split_eval(data, notes)


def split_eval(data: dict[str, Any], notes: list[str] | None = None
               ) -> tuple[dict[str, float], dict[str, Any]]:
    """HF Trainer results: numeric `eval_` keys are metrics (named as metric_name says), the
    rest (train_*, epoch, facts such as quantized_fraction) info. A bare evaluate-v1.1 object
    ({"exact_match", "f1"} saved as .json) is all metrics. A value no float holds is left out,
    with a note in `notes`."""
    metrics: dict[str, float] = {}
    info: dict[str, Any] = {}
    bare = bool(data) and set(data) <= {"exact_match", "f1"}
    for key, value in data.items():
        key = str(key)
        if key.startswith("eval_") or bare:
            num = number(value)
            if num is not None:
                metrics[metric_name(key)] = num
            elif (why := not_a_metric(key, value)) and notes is not None:
                notes.append(why)
        else:
            info[key] = value
    return metrics, info


def squad_line(path: Path, tree: Tree | None = None) -> dict[str, float] | None:
    """EM and F1 from the last line of a file holding evaluate-v1.1.py's output, else None."""
    try:
        raw = (tree or Tree(None)).read_bytes(path, SNIFF_LIMIT)
    except (Refused, OSError):
        return None
    if b"exact_match" not in raw:
        return None
    lines = [ln for ln in raw.decode("utf-8", "replace").splitlines() if ln.strip()]
    try:
        data, _ = loads(lines[-1])
    except (Refused, IndexError):
        return None
    if not isinstance(data, dict) or set(data) != {"exact_match", "f1"}:
        return None
    values = {k: number(v) for k, v in data.items()}
    if any(v is None for v in values.values()):
        return None
    return {k: float(v) for k, v in values.items() if v is not None}


def is_dllogger(path: Path, tree: Tree | None = None) -> bool:
    try:
        return (tree or Tree(None)).read_bytes(path, head=5) == b"DLLL "
    except (Refused, OSError):
        return False


def read_dllogger(path: Path, tree: Tree | None = None, notes: list[str] | None = None
                  ) -> tuple[dict[str, float], dict[str, Any]]:
    """The summary records (step []) of a dllogger JSON stream: final metrics (exact_match, F1,
    accuracy, ...) and figures such as e2e_inference_time. Records logged during the run (a
    step list or number) are progress, and a run that ended before its summary is partial."""
    text = _text(path, DLLL_LIMIT, tree)
    cut = False
    summary: dict[str, Any] = {}
    params: dict[str, Any] = {}
    lines = text.splitlines()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not line.startswith("DLLL "):
            raise BadFile(f"line {n}: not a DLLL record")
        try:
            record, deep = loads(line[5:])
        except Refused as exc:
            if n == len(lines) and str(exc).startswith("not valid JSON"):
                raise BadFile(f"partial: line {n} is cut short (the run was writing it)") from None
            raise BadFile(f"line {n}: {exc}") from None
        cut |= deep
        if not isinstance(record, dict) or record.get("type") not in ("LOG", "METADATA"):
            raise BadFile(f"line {n}: not a dllogger record (type LOG or METADATA)")
        if record["type"] != "LOG" or not isinstance(record.get("data"), dict):
            continue
        if record.get("step") == "PARAMETER":
            params.update(record["data"])
        elif record.get("step") == []:
            summary.update(record["data"])
    metrics: dict[str, float] = {}
    info: dict[str, Any] = {}
    for key, value in summary.items():
        name = metric_name(key)
        num = number(value)
        if num is not None and (name in NAMES.values() or name.removesuffix("_mm")
                                in NAMES.values() or key.lower().startswith(PREFIXES)):
            metrics[name] = num
        elif (why := not_a_metric(key, value)) and notes is not None:
            notes.append(why)
        else:
            info[key] = value
    if cut and notes is not None:
        notes.append(f"values nested more than {MAX_DEPTH} deep: left out")
    if not metrics:
        raise BadFile("partial: no summary record (step []) with a metric; the run did not "
                      "finish, or the file was overwritten by a run that is still going")
    for key in ("task_name", "task"):
        if isinstance(params.get(key), str):
            info["task_name"] = params[key]
    return metrics, info


OLD_TXT_TASK = re.compile(r"^eval_results_(?P<task>[A-Za-z0-9.\-]+)\.txt$")


def _read_old_txt(path: Path, tree: Tree | None, notes: list[str] | None
                  ) -> tuple[dict[str, float], dict[str, Any]]:
    metrics, info = read_key_value_txt(path, tree)
    match = OLD_TXT_TASK.match(path.name)
    if match:
        info["task_name"] = match.group("task")
        if match.group("task").lower().endswith("-mm"):  # MNLI mismatched: its loss too
            metrics = {(k if k.endswith("_mm") else f"{k}_mm"): v for k, v in metrics.items()}
    return metrics, info


def _read_squad_line(path: Path, tree: Tree | None, notes: list[str] | None
                     ) -> tuple[dict[str, float], dict[str, Any]]:
    line = squad_line(path, tree)
    if line is None:
        raise BadFile("no evaluate-v1.1 line")
    return line, {}


Read = Callable[[Path, "Tree | None", "list[str] | None"], tuple[dict[str, float], dict[str, Any]]]


@dataclass(frozen=True)
class ResultFormat:
    """A result format collect reads: found by file name (`named`) or, for files of no known
    name, by its content (`sniff`: read only the head of a log), and read by `read` (notes:
    what was left out of a file still read: a value no float holds, values nested too deep)."""

    label: str  # a run's `source`, as collect reports it
    read: Read
    named: Callable[[str], bool] | None = None
    sniff: Callable[[Path, Tree | None], bool] | None = None


# The registry, in the order a directory's files are merged (later ones win): old text, HF
# JSON, then the sniffed ones (a file is the first sniffed format it holds). A new format is one
# reader plus one entry here.
FORMATS: list[ResultFormat] = [
    ResultFormat("eval_results.txt", _read_old_txt, named=lambda name: name == OLD_TXT),
    ResultFormat("transformers 3 eval_results_<task>.txt", _read_old_txt,
                 named=lambda name: bool(OLD_TXT_TASK.match(name))),
    *(ResultFormat("HF Trainer " + json_name, read_hf_json,
                   named=lambda name, json_name=json_name: name == json_name)
      for json_name in HF_JSON),
    ResultFormat("dllogger", read_dllogger, sniff=is_dllogger),
    ResultFormat("SQuAD evaluate-v1.1", _read_squad_line,
                 sniff=lambda path, tree: squad_line(path, tree) is not None),
]


def named_result(name: str) -> bool:
    """Is a file of this name read as results whatever it holds?"""
    return any(f.named is not None and f.named(name) for f in FORMATS)


def candidate(name: str) -> bool:
    """Might a file of this name be read as results (so be checked before it is)? Besides the
    named ones, what result_files sniffs (a log may hold an evaluate-v1.1 line)."""
    return named_result(name) or (name not in NOT_RESULTS and name.endswith(SNIFF_SUFFIXES))


def result_files(directory: Path, names: list[str], tree: Tree | None = None
                 ) -> list[tuple[ResultFormat, Path]]:
    """(format, path) of every foreign results file among a directory's file names, in the
    registry's order (FORMATS)."""
    ordered = sorted(names)
    found = [(f, directory / name) for f in FORMATS if f.named is not None
             for name in ordered if f.named(name)]
    sniffers = [f for f in FORMATS if f.sniff is not None]
    for name in ordered:
        if name in NOT_RESULTS or named_result(name) or not name.endswith(SNIFF_SUFFIXES):
            continue
        path = directory / name
        fmt = next((f for f in sniffers if f.sniff(path, tree)), None)
        if fmt is not None:
            found.append((fmt, path))
    return found
