"""Single-class baselines: a run whose metrics equal one of these learned nothing.

Dev-set values of an all-positive / all-negative predictor (reference/results.md). A run is also
flagged when the trainer recorded that its predictions took a single class (pred_classes 1).
"""

from __future__ import annotations

import math
from typing import Any

TOLERANCE = 5e-5  # the published baselines have four decimals

BASELINES: dict[str, list[tuple[str, dict[str, float]]]] = {
    "mrpc": [("all-positive", {"accuracy": 0.6838, "f1": 0.8122}),
             ("all-negative", {"accuracy": 0.3162, "f1": 0.0})],
    "qqp": [("all-negative", {"accuracy": 0.6318, "f1": 0.0}),
            ("all-positive", {"accuracy": 0.3682, "f1": 0.5381})],
    "rte": [("majority", {"accuracy": 0.5271}), ("minority", {"accuracy": 0.4729})],
    "sst2": [("majority", {"accuracy": 0.5092}), ("minority", {"accuracy": 0.4908})],
    "wnli": [("majority", {"accuracy": 0.5634}), ("minority", {"accuracy": 0.4366})],
    "qnli": [("single-class", {"accuracy": 0.5})],
    "cola": [("single-class (MCC 0)", {"matthews_correlation": 0.0})],
}


def collapse_reason(task: str, metrics: dict[str, Any]) -> str | None:
    """Why a run looks like a single-class predictor, or None."""
    if task == "squad" and metrics.get("distinct_answers") == 1:
        return "gives the same answer to every question"
    if metrics.get("pred_classes") == 1:
        return "constant output" if task == "stsb" else "predicts a single class"
    if task == "stsb" and isinstance(metrics.get("pearson"), float) and math.isnan(
            metrics["pearson"]):
        return "constant output (pearson is NaN)"
    for name, values in BASELINES.get(task, []):
        if all(isinstance(metrics.get(k), float) and abs(metrics[k] - v) <= TOLERANCE
               for k, v in values.items()):
            shown = ", ".join(f"{k} {v:g}" for k, v in values.items())
            return f"equals the {name} baseline ({shown})"
    return None
