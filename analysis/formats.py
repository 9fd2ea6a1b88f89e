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
collection.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

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

# old and foreign metric names -> HF Trainer names
NAMES = {
    "acc": "accuracy", "accuracy": "accuracy", "mcc": "matthews_correlation",
    "matthews_correlation": "matthews_correlation", "f1": "f1", "acc_and_f1": "combined_score",
    "corr": "combined_score", "combined_score": "combined_score", "pearson": "pearson",
    "spearmanr": "spearmanr", "exact_match": "exact_match", "em": "exact_match",
    "mnli-mm_acc": "accuracy_mm",  # quantsweep's own eval_results.txt
}
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
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "nan":
            return math.nan
        try:
            return float(text)
        except ValueError:
            return None
    return None


def _text(path: Path, limit: int) -> str:
    try:
        size = path.stat().st_size
        if size > limit:
            raise BadFile(f"{size} bytes, more than a results file holds")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BadFile(f"not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise BadFile(exc.strerror or str(exc)) from None


def read_key_value_txt(path: Path) -> tuple[dict[str, float], dict[str, Any]]:
    """`key = value` lines (old run_glue, nlp-architect, the INQ seed script). A file the
    writer has not finished (empty, or a last line without its newline) is partial."""
    text = _text(path, SNIFF_LIMIT)
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


def read_hf_json(path: Path) -> tuple[dict[str, float], dict[str, Any]]:
    """HF Trainer's eval_results.json / all_results.json (our own eval_results.json too)."""
    text = _text(path, SNIFF_LIMIT)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BadFile(f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadFile("not a JSON object")
    return split_eval(data)


def split_eval(data: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """HF Trainer results: numeric `eval_` keys are metrics (named as metric_name says), the
    rest (train_*, epoch, facts such as quantized_fraction) info. A bare evaluate-v1.1 object
    ({"exact_match", "f1"} saved as .json) is all metrics."""
    metrics: dict[str, float] = {}
    info: dict[str, Any] = {}
    bare = bool(data) and set(data) <= {"exact_match", "f1"}
    for key, value in data.items():
        if key.startswith("eval_") or bare:
            num = number(value)
            if num is not None:
                metrics[metric_name(key)] = num
        else:
            info[key] = value
    return metrics, info


def squad_line(path: Path) -> dict[str, float] | None:
    """EM and F1 from the last line of a file holding evaluate-v1.1.py's output, else None."""
    try:
        if path.stat().st_size > SNIFF_LIMIT:
            return None
        raw = path.read_bytes()
    except OSError:
        return None
    if b"exact_match" not in raw:
        return None
    lines = [ln for ln in raw.decode("utf-8", "replace").splitlines() if ln.strip()]
    try:
        data = json.loads(lines[-1])
    except (ValueError, IndexError):
        return None
    if not isinstance(data, dict) or set(data) != {"exact_match", "f1"}:
        return None
    values = {k: number(v) for k, v in data.items()}
    if any(v is None for v in values.values()):
        return None
    return {k: float(v) for k, v in values.items() if v is not None}


def is_dllogger(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(5) == b"DLLL "
    except OSError:
        return False


def read_dllogger(path: Path) -> tuple[dict[str, float], dict[str, Any]]:
    """The summary records (step []) of a dllogger JSON stream: final metrics (exact_match, F1,
    accuracy, ...) and figures such as e2e_inference_time. Records logged during the run (a
    step list or number) are progress, and a run that ended before its summary is partial."""
    text = _text(path, DLLL_LIMIT)
    summary: dict[str, Any] = {}
    params: dict[str, Any] = {}
    lines = text.splitlines()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not line.startswith("DLLL "):
            raise BadFile(f"line {n}: not a DLLL record")
        try:
            record = json.loads(line[5:])
        except ValueError:
            if n == len(lines):
                raise BadFile(f"partial: line {n} is cut short (the run was writing it)") from None
            raise BadFile(f"line {n}: not valid JSON") from None
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
        else:
            info[key] = value
    if not metrics:
        raise BadFile("partial: no summary record (step []) with a metric; the run did not "
                      "finish, or the file was overwritten by a run that is still going")
    for key in ("task_name", "task"):
        if isinstance(params.get(key), str):
            info["task_name"] = params[key]
    return metrics, info


OLD_TXT_TASK = re.compile(r"^eval_results_(?P<task>[A-Za-z0-9.\-]+)\.txt$")


def result_files(directory: Path, names: list[str]) -> list[tuple[str, Path]]:
    """(format, path) of every foreign results file among a directory's file names, in the
    order they are merged (later ones win): old text, HF JSON, evaluate-v1.1, dllogger."""
    found: list[tuple[str, Path]] = []
    if OLD_TXT in names:
        found.append(("eval_results.txt", directory / OLD_TXT))
    for name in sorted(names):
        if OLD_TXT_TASK.match(name):
            found.append(("transformers 3 eval_results_<task>.txt", directory / name))
    for name in HF_JSON:
        if name in names:
            found.append(("HF Trainer " + name, directory / name))
    for name in sorted(names):
        if (name in NOT_RESULTS or name in HF_JSON or name == OLD_TXT
                or OLD_TXT_TASK.match(name) or not name.endswith(SNIFF_SUFFIXES)):
            continue
        path = directory / name
        if is_dllogger(path):
            found.append(("dllogger", path))
        elif squad_line(path) is not None:
            found.append(("SQuAD evaluate-v1.1", path))
    return found


def read_foreign(fmt: str, path: Path) -> tuple[dict[str, float], dict[str, Any]]:
    if fmt == "dllogger":
        return read_dllogger(path)
    if fmt == "SQuAD evaluate-v1.1":
        line = squad_line(path)
        if line is None:
            raise BadFile("no evaluate-v1.1 line")
        return line, {}
    if fmt.startswith("HF Trainer"):
        return read_hf_json(path)
    metrics, info = read_key_value_txt(path)
    match = OLD_TXT_TASK.match(path.name)
    if match:
        info["task_name"] = match.group("task")
        if match.group("task").lower().endswith("-mm"):  # MNLI mismatched: its loss too
            metrics = {(k if k.endswith("_mm") else f"{k}_mm"): v for k, v in metrics.items()}
    return metrics, info
