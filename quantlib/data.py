"""GLUE data from the hub (nyu-mll/glue) or a local download_glue_data.py directory.

Either way every split comes out with the columns text_a, text_b (pair tasks) and label, with
the hub's label ids (MNLI: entailment 0, neutral 1, contradiction 2; QNLI/RTE: entailment 0).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset

from quantlib.tasks import Task

csv.field_size_limit(sys.maxsize)


def _label(task: Task, raw: str, path: Path, line: int) -> float | int:
    raw = raw.strip()
    if task.is_regression:
        return float(raw)
    if task.label_names:
        if raw not in task.label_names:
            raise ValueError(f"{path}:{line}: label {raw!r} is not one of {task.label_names}")
        return task.label_names.index(raw)
    return int(raw)


def read_tsv(task: Task, path: Path) -> Dataset:
    layout = task.tsv
    columns: dict[str, list] = {"text_a": [], "label": []}
    if len(layout.text_columns) > 1:
        columns["text_b"] = []
    with open(path, encoding="utf-8", newline="") as fh:
        rows = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header: list[str] | None = next(rows) if layout.header else None

        def col(name: str | int) -> int:
            if isinstance(name, int):
                return name
            assert header is not None
            if name not in header:
                raise ValueError(f"{path}: no column {name!r} in the header {header}")
            return header.index(name)

        text_idx = [col(c) for c in layout.text_columns]
        label_idx = col(layout.label_column)
        width = max([*text_idx, label_idx]) + 1
        for line, row in enumerate(rows, start=2 if header else 1):
            if len(row) < width:  # the QQP/MNLI dumps hold a few broken lines; skip them
                continue
            columns["text_a"].append(row[text_idx[0]])
            if "text_b" in columns:
                columns["text_b"].append(row[text_idx[1]])
            columns["label"].append(_label(task, row[label_idx], path, line))
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
