"""Training stages: one HF Trainer run split into stages, and what every method shares about them.

A job trains once, through a list of stages (e.g. an optional FP32 fine-tune, then INQ's
partitions, a QAT stage, or a sparse stage) given in epochs. Here:

- `TrainingStage` and `stage_starts`: a stage's first optimizer step, proportional to epochs;
- `staged_lr_lambda`: the LR schedule that restarts (warmup + linear decay) at every stage, each
  stage being a re-training of its own, like INQ's re-training after each weight partition
  (Zhou et al., "Incremental Network Quantization", ICLR 2017, arXiv:1702.03044);
- `matches`, `select_linears`, `select_weights`: the nn.Linear modules (and their weights) that
  a job's `quantize_modules` fnmatch patterns select, for quantization or pruning;
- `StageCallback`: the TrainerCallback that switches something on at a stage's start and keeps
  its state in checkpoints (quantlib.qat.QuantStart, quantlib.sparsity.PatternLock,
  quantlib.inq.INQController, quantlib.best_epoch.BestEpoch); quantlib.trainer.train_stages
  drives its two extra hooks.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn
from transformers import TrainerCallback

NO_LINEAR = "quantize_modules matches no nn.Linear module of the model"


@dataclass(frozen=True)
class TrainingStage:
    """One stage of a training run (not a sweep stage: that is jobs.spec.SweepStage)."""

    name: str
    epochs: float
    fraction: float | None  # INQ: None: plain FP32 training, nothing frozen at its start


def stage_starts(max_steps: int, epochs: list[float]) -> list[int]:
    """First optimizer step of every stage, proportional to the stages' epochs."""
    total = sum(epochs)
    if total <= 0:
        return [0] * len(epochs)
    starts, acc = [], 0.0
    for e in epochs:
        starts.append(round(max_steps * acc / total))
        acc += e
    return starts


def staged_lr_lambda(starts: list[int], max_steps: int,
                     warmup_ratio: float) -> Callable[[int], float]:
    """LR factor per step: linear warmup then linear decay to 0, restarted at each stage."""
    bounds = [*starts, max_steps]

    def factor(step: int) -> float:
        k = max(i for i in range(len(starts)) if starts[i] <= step or i == 0)
        begin, end = bounds[k], bounds[k + 1]
        while end <= begin and k + 1 < len(starts):  # skip empty stages
            k += 1
            begin, end = bounds[k], bounds[k + 1]
        length = max(1, end - begin)
        local = step - begin
        warm = int(math.ceil(warmup_ratio * length))
        if local < warm:
            return local / max(1, warm)
        return max(0.0, (length - local) / max(1, length - warm))

    return factor


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Does a module's qualified name match one of the fnmatch patterns (case-sensitive)?"""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select_linears(model: nn.Module, patterns: Iterable[str], *,
                   required: bool = False) -> dict[str, nn.Linear]:
    """The nn.Linear modules whose qualified name matches a pattern, by name; `required`:
    raise ValueError when there is none (a method that cannot do without them)."""
    patterns = tuple(patterns)  # an iterator would be used up by the first module
    found = {n: m for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and matches(n, patterns)}
    if required and not found:
        raise ValueError(NO_LINEAR)
    return found


def select_weights(model: nn.Module, patterns: Iterable[str]) -> dict[str, nn.Parameter]:
    """The weights of the nn.Linear modules whose qualified name matches a pattern, by
    parameter name ("<module>.weight"); empty when none matches."""
    return {f"{n}.weight": m.weight for n, m in select_linears(model, patterns).items()}


class StageCallback(TrainerCallback):
    """A TrainerCallback with the two hooks train_stages calls besides the Trainer's events.

    As HF's TrainerCallback declares every event on the base class as a no-op
    (transformers/trainer_callback.py), these are declared here with no-op defaults: a
    subclass overrides only the ones it needs.
    """

    def bind(self, trainer: Any) -> None:
        """Called once the Trainer exists, before training: for callbacks that need it (e.g.
        to evaluate at epoch ends). Default: nothing."""

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        """Called before training resumes from `checkpoint_dir` (a preempted job's last
        checkpoint), so the callback gets back the state it saved there in `on_save`.
        Default: nothing."""
