"""The switch into quantization-aware training, as a stage callback (quantlib.stages).

A QAT job is one HF Trainer run: an optional FP32 fine-tuning stage, then the quantized stage.
At the first step of the quantized stage the callback (1) snapshots the FP model as the teacher
when the method distills, (2) calibrates (PTQ-family methods) and (3) turns the quantizers on;
`delayed` quantizers (the Q8BERT head) come on a given number of steps later and, as
nlp-architect's QuantizedLayer (`_update_ema` fills the threshold at `_step == start_step`),
start their EMA only then. A job resumed
from a checkpoint past that point gets its amax back from the checkpoint (they are buffers),
its teacher from the checkpoint's teacher file, and its quantizers turned on at once.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from quantlib.distill import Distiller, frozen_copy
from quantlib.fake_quant import TensorQuantizer
from quantlib.quantize_model import check_calibrated, enable
from quantlib.stages import StageCallback, stage_starts

TEACHER_FILE = "teacher.pt"
RECORD_FILE = "quant_start.json"


def calibration_batches(ctx, n: int) -> Iterable[dict]:
    """The first n batches of a seeded shuffle of the training set."""
    loader = DataLoader(ctx.train, batch_size=ctx.args.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(ctx.args.seed),
                        collate_fn=DataCollatorWithPadding(ctx.tokenizer))
    return itertools.islice(loader, n)


class QuantStart(StageCallback):
    def __init__(self, model: nn.Module, stage_epochs: list[float], stage_index: int,
                 quantizers: list[TensorQuantizer], *,
                 calibrate: Callable[[], dict] | None = None,
                 delayed: tuple[int, list[TensorQuantizer]] | None = None,
                 distiller: Distiller | None = None,
                 teacher_factory: Callable[[], nn.Module] | None = None):
        self.model = model
        self.stage_epochs = stage_epochs
        self.stage_index = stage_index
        self.quantizers = quantizers
        self.calibrate = calibrate
        self.delay, self.delayed = delayed if delayed else (0, [])
        self.distiller = distiller
        self.teacher_factory = teacher_factory  # None: the teacher is the FP model at the start
        self.start: int | None = None
        self.started = False
        self.delayed_on = False
        self.resume_dir: str | None = None
        self.record: dict = {}  # what calibration reported; kept in checkpoints

    def _teacher(self, resume_dir: str | None) -> None:
        if self.distiller is None:
            return
        if self.teacher_factory is not None:
            teacher = self.teacher_factory()
        else:
            teacher = frozen_copy(self.model)
            if resume_dir is not None:
                state = torch.load(Path(resume_dir) / TEACHER_FILE, map_location="cpu")
                teacher.load_state_dict(state)
        device = next(self.model.parameters()).device
        self.distiller.teacher = teacher.to(device)

    def switch_on(self, resume_dir: str | None = None) -> None:
        self._teacher(resume_dir)
        if resume_dir is not None:
            path = Path(resume_dir) / RECORD_FILE
            self.record = json.loads(path.read_text()) if path.is_file() else {}
        elif self.calibrate is not None:
            self.record = self.calibrate()
        check_calibrated(self.quantizers)
        enable(self.quantizers)
        self.started = True

    @property
    def head_quantized(self) -> bool:
        return self.delayed_on or not self.delayed

    def switch_delayed(self) -> None:
        enable(self.delayed)
        self.delayed_on = True

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        self.resume_dir = checkpoint_dir

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = stage_starts(state.max_steps, self.stage_epochs)[self.stage_index]
        if self.resume_dir is not None and state.global_step > self.start:
            self.switch_on(self.resume_dir)
        self._due(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self._due(state.global_step)

    def _due(self, step: int) -> None:
        if not self.started and step >= self.start:
            self.switch_on()
        if self.started and not self.delayed_on and step >= self.start + self.delay:
            self.switch_delayed()

    def on_train_end(self, args, state, control, **kwargs):
        if not self.started:
            self.switch_on()
        if not self.delayed_on and self.delayed:
            # the QAT stage ended before the head's start step: its EMA thresholds never
            # started (nlp-architect would scale by a zero threshold); the head stays FP
            print(f"quantlib.qat: QAT ended at step {state.global_step}, before the head's "
                  f"start step {self.start + self.delay}: the head stays in FP32", flush=True)

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        (folder / RECORD_FILE).write_text(json.dumps(self.record))
        d = self.distiller
        if d is not None and d.teacher is not None and self.teacher_factory is None:
            torch.save(d.teacher.state_dict(), folder / TEACHER_FILE)
