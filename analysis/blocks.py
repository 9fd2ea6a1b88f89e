"""The seed study's sheet: one block per method, a column per bit width, a row per Task(metric).

Layout (reference/measurements.xlsx): row 1 empty; each block starts with a header row
`<method display name>, 8, 7, ..., 1, Bits`, then one row per Task(metric) that has a result in
the block, in the seed's order; an empty cell where no run gave a result, the string `nan` where
the metric is NaN; two empty rows between blocks. Runs that share a cell (seeds) are averaged.
Methods without a bit width (fp32) get one column, 32.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from analysis.baselines import collapse_reason
from analysis.results import Run
from quantlib.configs import METHODS

BITS = [8, 7, 6, 5, 4, 3, 2, 1]
FP_BITS = [32]
# (task, metric, row label), in the seed spreadsheet's order
ROWS: list[tuple[str, str, str]] = [
    ("cola", "matthews_correlation", "CoLA(mcc)"),
    ("mnli", "accuracy", "MNLI(acc)"),
    ("mnli", "accuracy_mm", "MNLI-mm(acc)"),
    ("qnli", "accuracy", "QNLI(acc)"),
    ("qqp", "accuracy", "QQP(acc)"),
    ("qqp", "combined_score", "QQP(acc_f1)"),
    ("qqp", "f1", "QQP(f1)"),
    ("rte", "accuracy", "RTE(acc)"),
    ("sst2", "accuracy", "SST-2(acc)"),
    ("stsb", "combined_score", "STS-B(corr)"),
    ("stsb", "pearson", "STS-B(pearson)"),
    ("stsb", "spearmanr", "STS-B(spearmanr)"),
    ("wnli", "accuracy", "WNLI"),
    ("mrpc", "accuracy", "MRPC(acc)"),
    ("mrpc", "combined_score", "MRPC(acc_f1)"),
    ("mrpc", "f1", "MRPC(f1)"),
    ("squad", "exact_match", "SQuAD(EM)"),  # 0-100, as evaluate-v1.1.py
    ("squad", "f1", "SQuAD(F1)"),
]
# configuration that never splits a block: the sheet's own axes, seeds (averaged), bookkeeping
NOT_BLOCK_KEYS = {"task", "nbits", "seed", "method", "max_train_samples", "max_eval_samples",
                  "logging_steps", "save_model", "stage", "after", "report_to", "export"}
# the data a run is measured on: a block of one data set compares with the FP32 block of the
# same (a data directory per task does not split blocks: it is part of the row)
DATA_KEYS = ("data_dir", "dataset_name")
STAGE_INPUTS = ("model_name_or_path", "teacher_name_or_path")  # filled by a previous stage
# what a job records of its compressed model (quantlib.model_size, quantlib.export_onnx), with
# the column titles the tables give them
EXTRAS = {"model_size_mb": "size (MB)", "compression_ratio": "× smaller",
          "onnx_latency_ms": "ONNX INT8 (ms)", "onnx_speedup": "ONNX speedup"}


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    collapsed: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation over the runs (seeds); None for a single run."""
        if len(self.values) < 2:
            return None
        mean = self.mean
        # d * d, not d ** 2: float ** raises OverflowError past 1e308, * gives inf
        return math.sqrt(sum((v - mean) * (v - mean) for v in self.values)
                         / (len(self.values) - 1))

    @property
    def value(self) -> float | str:
        mean = self.mean
        return str(mean) if not math.isfinite(mean) else mean  # nan, inf: as text


@dataclass
class Block:
    title: str
    bits: list[int]
    method: str = ""
    # per task, the data its runs were measured on (data_of): compared with FP32 on the same
    data: dict[str, set] = field(default_factory=dict)
    cells: dict[tuple[str, int], Cell] = field(default_factory=dict)  # (row label, bits)
    # per EXTRAS key, task and bit width: what the runs recorded of their compressed model
    extras: dict[str, dict[tuple[str, int], list[float]]] = field(default_factory=dict)


def lineage_configs(runs: list[Run]) -> dict[int, dict[str, Any]]:
    """Each run's configuration with the arguments a previous stage filled (its saved model)
    replaced by that job's own value, back to the first stage: runs of a later stage then
    differ where their ancestors differ (the 85% or the 90% sparse start), not by path."""
    by_model = {str(r.output_dir / "model"): r for r in runs}

    def origin(run: Run, key: str, depth: int = 0) -> Any:
        value = run.config.get(key)
        parent = by_model.get(str(value)) if run.config.get("after") else None
        if parent is None or depth > 50:
            return value
        return origin(parent, key, depth + 1)

    return {id(r): {**r.config, **{k: origin(r, k) for k in STAGE_INPUTS if k in r.config}}
            for r in runs}


def _block_keys(runs: list[Run], configs: dict[int, dict[str, Any]]) -> dict[str, list[str]]:
    """Per method, the configuration keys that vary between its runs of one task and stage
    (they split its blocks), and "stage" when the method runs in several stages. A key that
    changes only with the task (a fine-tuned checkpoint per task, the task's data directory)
    is part of the row, not a new block."""
    by_cell: dict[tuple[str, str, str], dict[str, set[str]]] = {}
    stages: dict[str, set[str]] = {}
    for run in runs:
        stage = str(run.config.get("stage") or "")
        stages.setdefault(run.method, set()).add(stage)
        seen = by_cell.setdefault((run.method, run.task, stage), {})
        for key, value in configs[id(run)].items():
            seen.setdefault(key, set()).add(repr(value))
    keys: dict[str, set[str]] = {}
    for (method, _, _), seen in by_cell.items():
        keys.setdefault(method, set()).update(
            k for k, vals in seen.items() if len(vals) > 1 and k not in NOT_BLOCK_KEYS)
    return {method: (["stage"] if len(stages[method]) > 1 else []) + sorted(ks)
            for method, ks in keys.items()}


def _method_order(method: str) -> tuple[int, str]:
    names = list(METHODS)
    return (names.index(method), "") if method in names else (len(names), method)


def _hashable(value: Any) -> Any:
    """A config value as part of a block's key: a list or object (a value a file gave) by its
    JSON text, as it cannot be hashed."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def data_of(run: Run) -> tuple:
    """What a run was measured on: its DATA_KEYS' values (hashable)."""
    return tuple(_hashable(run.config.get(k)) for k in DATA_KEYS)


def build_blocks(runs: list[Run]) -> list[Block]:
    done = [r for r in runs if r.state == "completed" and r.metrics]
    configs = lineage_configs(done)
    split = _block_keys(done, configs)
    blocks: dict[tuple, Block] = {}
    for run in sorted(done, key=lambda r: _method_order(r.method)):
        extra = tuple((k, configs[id(run)].get(k)) for k in split[run.method])
        key = (_method_order(run.method), tuple((k, _hashable(v)) for k, v in extra))
        if key not in blocks:
            entry = METHODS.get(run.method)
            title = entry.display if entry else run.method
            if extra:
                title += " (" + ", ".join(f"{k}={v}" for k, v in extra) + ")"
            blocks[key] = Block(title, BITS if run.nbits is not None else FP_BITS,
                                run.method)
        block = blocks[key]
        block.data.setdefault(run.task, set()).add(data_of(run))
        bits = run.nbits if run.nbits is not None else 32
        reason = collapse_reason(run.task, run.metrics)
        for key in EXTRAS:
            value = run.info.get(key)
            if (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value) and value > 0):
                block.extras.setdefault(key, {}).setdefault((run.task, bits), []).append(
                    float(value))
        for task, metric, label in ROWS:
            if task == run.task and metric in run.metrics and bits in block.bits:
                cell = block.cells.setdefault((label, bits), Cell())
                cell.values.append(run.metrics[metric])
                if reason:
                    cell.collapsed.append(f"{run.output_dir.name}: {reason}")
    return [blocks[k] for k in sorted(blocks, key=lambda k: (k[0], repr(k[1])))]


def sheet_rows(blocks: list[Block]) -> list[tuple[list[Any], dict[int, Cell]]]:
    """Rows of the sheet (row 1 first): cell values, plus the Cells behind row columns
    (0-based column -> Cell) so the writer can mark collapsed runs."""
    rows: list[tuple[list[Any], dict[int, Cell]]] = [([], {})]
    for i, block in enumerate(blocks):
        if i:
            rows += [([], {}), ([], {})]
        rows.append(([block.title, *block.bits, "Bits"], {}))
        labels = {label for label, _ in block.cells}
        for _, _, label in ROWS:
            if label not in labels:
                continue
            values: list[Any] = [label]
            cells: dict[int, Cell] = {}
            for col, bits in enumerate(block.bits, start=1):
                cell = block.cells.get((label, bits))
                values.append(cell.value if cell else None)
                if cell:
                    cells[col] = cell
            while values and values[-1] is None:
                values.pop()
            rows.append((values, cells))
    return rows
