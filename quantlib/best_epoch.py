"""Keep the best epoch: evaluate after every epoch, remember the best weights, restore them at
the end (Prune OFA keeps its best epoch's checkpoint). The best state and the history travel in
checkpoints (best.pt, best.json), so a resumed job still knows its best epoch."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from quantlib import preemption
from quantlib.stages import StageCallback

BEST_STATE = "best.pt"
BEST_RECORD = "best.json"


def main_metric(task: Any) -> str:
    """The metric an epoch is chosen by: F1 for SQuAD, else the task's first metric."""
    return "f1" if task.is_qa else task.metrics[0]


class BestEpoch(StageCallback):
    def __init__(self, ctx: Any, evaluate: Any):
        self.ctx = ctx
        self.evaluate = evaluate  # (trainer, ctx) -> metrics
        self.metric = main_metric(ctx.task)
        self.trainer: Any = None
        self.best: float | None = None
        self.best_epoch: float | None = None
        self.state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, float]] = []

    def bind(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_epoch_end(self, args, state, control, **kwargs):
        if preemption.REQUEST.requested:
            return
        score = float(self.evaluate(self.trainer, self.ctx)[self.metric])
        epoch = round(float(state.epoch or 0.0), 3)
        self.history.append({"epoch": epoch, self.metric: score})
        if not math.isnan(score) and (self.best is None or score > self.best):
            self.best, self.best_epoch = score, epoch
            model = self.trainer.model
            self.state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def restore(self) -> dict[str, Any]:
        """Load the best weights into the model; what to record with the results."""
        if self.state is not None:
            self.trainer.model.load_state_dict(self.state)
        return {"best_epoch": self.best_epoch, f"best_epoch_{self.metric}": self.best,
                "epoch_history": self.history}

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.state is not None:
            torch.save(self.state, folder / BEST_STATE)
        (folder / BEST_RECORD).write_text(json.dumps(
            {"best": self.best, "best_epoch": self.best_epoch, "history": self.history}))

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        folder = Path(checkpoint_dir)
        if (folder / BEST_RECORD).is_file():
            record = json.loads((folder / BEST_RECORD).read_text())
            self.best, self.best_epoch = record["best"], record["best_epoch"]
            self.history = record["history"]
        if (folder / BEST_STATE).is_file():
            self.state = torch.load(folder / BEST_STATE, map_location="cpu")
