"""GLUE data from the hub (nyu-mll/glue) or a local download_glue_data.py directory.

Either way every split comes out with the columns text_a, text_b (pair tasks) and label, with
the hub's label ids (MNLI: entailment 0, neutral 1, contradiction 2; QNLI/RTE: entailment 0).
"""

from __future__ import annotations

import sys
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset

from quantlib.tasks import Task

NO_LABEL = "-"  # MNLI/SNLI's gold_label where the annotators did not agree: no example


def _label(task: Task, raw: str, path: Path, line: int) -> float | int:
    raw = raw.strip()
    try:
        if task.is_regression:
            return float(raw)
        if task.label_names:
            if raw not in task.label_names:
                raise ValueError
            return task.label_names.index(raw)
        return int(raw)
    except ValueError:
        allowed = ", ".join(task.label_names) if task.label_names else (
            "a number" if task.is_regression else "an integer class id")
        raise ValueError(f"{path}:{line}: label {raw!r} is not one of {allowed}") from None


def _lines(path: Path):
    """(line number, fields) of a GLUE TSV file, read as download_glue_data.py and the GLUE
    zips leave them: UTF-8 with or without a BOM (MRPC's header starts with one), LF or CRLF,
    fields split at tabs only (no quoting: STS-B and MNLI hold stray double quotes)."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        for number, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if line or number == 1:
                yield number, line.split("\t")


def read_tsv(task: Task, path: Path) -> Dataset:
    layout = task.tsv
    columns: dict[str, list] = {"text_a": [], "label": []}
    if len(layout.text_columns) > 1:
        columns["text_b"] = []
    rows = _lines(path)
    try:
        header: list[str] | None = next(rows)[1] if layout.header else None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (OSError, StopIteration) as exc:
        raise ValueError(f"{path}: cannot read ({exc or 'empty file'})") from None

    def col(name: str | int) -> int:
        if isinstance(name, int):
            return name
        assert header is not None
        if name not in header:
            raise ValueError(f"{path}: no column {name!r} in the header {header}")
        return header.index(name)

    text_idx = [col(c) for c in layout.text_columns]
    label_idx = col(layout.label_column)
    # the row width the file promises: its header's, or CoLA's four columns
    width = len(header) if header else max([*text_idx, label_idx]) + 1
    label_last = header is not None and label_idx == len(header) - 1
    skipped: list[int] = []
    pending: tuple[int, list[str]] | None = None
    try:
        for number, row in rows:
            if pending is not None:  # QQP: a question broken by a newline continues here
                first, head = pending
                joined = head[:-1] + [head[-1] + "\n" + row[0]] + row[1:]
                if len(joined) < width:
                    pending = (first, joined)
                    continue
                pending = None
                if len(joined) == width:
                    number, row = first, joined
                else:  # no continuation: the fragment is lost, this line stands alone
                    skipped.append(first)
            if len(row) < width:
                pending = (number, row)
                continue
            label_raw = row[-1] if label_last and len(row) > width else row[label_idx]
            if task.label_names and label_raw.strip() == NO_LABEL:
                skipped.append(number)
                continue
            columns["text_a"].append(row[text_idx[0]])
            if "text_b" in columns:
                columns["text_b"].append(row[text_idx[1]])
            columns["label"].append(_label(task, label_raw, path, number))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
                         ) from None
    if pending is not None:
        skipped.append(pending[0])
    if skipped:
        print(f"quantlib.data: {path}: {len(skipped)} line(s) without a complete example "
              f"skipped (first: line {skipped[0]})", file=sys.stderr)
    if not columns["label"]:
        raise ValueError(f"{path}: no examples")
    return Dataset.from_dict(columns)


def load_glue(task: Task, dataset_name: str, data_dir: str | None) -> DatasetDict:
    """Splits 'train', 'validation' and for MNLI 'validation_mm'."""
    if data_dir:
        root = Path(data_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"data_dir {root} is not a directory")
        files = {"train": task.tsv.train_file, **task.tsv.eval_files}
        return DatasetDict({split: read_tsv(task, root / name) for split, name in files.items()})
    raw = load_dataset(dataset_name, task.name)
    splits = {"train": "train", **task.hub_eval_splits}
    out = {}
    for split, hub_split in splits.items():
        ds = raw[hub_split]
        rename = {task.hub_columns[0]: "text_a"}
        if len(task.hub_columns) > 1:
            rename[task.hub_columns[1]] = "text_b"
        keep = [*rename, "label"]
        ds = ds.remove_columns([c for c in ds.column_names if c not in keep])
        out[split] = ds.rename_columns(rename)
    return DatasetDict(out)
