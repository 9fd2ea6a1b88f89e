"""The trainer: model and data loading (GLUE, SQuAD), a staged HF Trainer, evaluation."""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from quantlib import metrics, preemption, squad, squad_metrics
from quantlib.configs import MethodConfig, TrainArgs
from quantlib.data import load_glue
from quantlib.stages import StageCallback, stage_starts, staged_lr_lambda
from quantlib.tasks import TASKS, Task, finetuned_for

log = logging.getLogger("quantlib")


@dataclass
class JobContext:
    args: TrainArgs
    method: MethodConfig
    task: Task
    out_dir: Path
    model: PreTrainedModel
    tokenizer: Any
    train: Any  # tokenized datasets.Dataset
    evals: dict[str, Any]  # split -> tokenized Dataset
    needs_finetune: bool
    info: dict[str, Any] = field(default_factory=dict)  # recorded in the results
    eval_examples: dict[str, Any] = field(default_factory=dict)  # SQuAD: split -> questions
    # how weights are stored, for the model's size (quantlib.model_size): weights quantized
    # outside their module (INQ: name -> Code) and weights kept sparse (name -> "2:4" or
    # "unstructured")
    codes: dict[str, Any] = field(default_factory=dict)
    run_name: str | None = None  # the job id: the training curves' run name (report_to)
    sparse: dict[str, str] = field(default_factory=dict)
    # weights quantized on a grid a packed export can store as is (GPTQ: name ->
    # quantlib.gptq.Result, its integer codes, scales and zero points)
    grids: dict[str, Any] = field(default_factory=dict)
    # the shared fine-tuning's checkpoint this job's first stage comes from (jobs.sharing), and
    # that job's id; None: the job fine-tunes by itself
    finetune_from: str | None = None
    finetune_job: str | None = None
    sweep_dir: str | None = None  # the sweep's directory: what its jobs share (teacher rows)


def is_finetuned(config: Any, task: Task) -> bool:
    """Does this checkpoint already carry a head trained for the task?"""
    return finetuned_for({"architectures": getattr(config, "architectures", None),
                          "finetuning_task": getattr(config, "finetuning_task", None),
                          "num_labels": config.num_labels}, task)


def load_model(path: str, task: Task, config: Any = None, **kw: Any) -> PreTrainedModel:
    auto = AutoModelForQuestionAnswering if task.is_qa else AutoModelForSequenceClassification
    return auto.from_pretrained(path, config=config, **kw)


def prepare(args: TrainArgs, method: MethodConfig, out_dir: Path) -> JobContext:
    set_seed(args.seed)
    task = TASKS[args.task]
    if task.is_qa:
        return _prepare_qa(args, method, out_dir, task)
    config = AutoConfig.from_pretrained(args.model_name_or_path)
    finetuned = is_finetuned(config, task)
    needs_finetune = {"auto": not finetuned, "always": True, "never": False}[args.finetune]
    if config.num_labels != task.num_labels:
        config.num_labels = task.num_labels  # resets id2label / label2id
    config.finetuning_task = task.name
    if task.is_regression:
        config.problem_type = "regression"
    # a head trained for another task (other label count) is replaced by a fresh one
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model_name_or_path, config=config, ignore_mismatched_sizes=not finetuned)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name or args.model_name_or_path)
    data = load_glue(task, args.dataset_name or task.hub_dataset, args.data_dir)
    max_len = args.max_seq_length or task.max_seq_length

    def tokenize(batch):
        texts = [batch["text_a"]] + ([batch["text_b"]] if "text_b" in batch else [])
        return tokenizer(*texts, truncation=True, max_length=max_len)

    def prep(ds, limit):
        if limit is not None and len(ds) > limit:
            ds = ds.select(range(limit))
        cols = [c for c in ds.column_names if c != "label"]
        ds = ds.map(tokenize, batched=True, remove_columns=cols, desc=None)
        return ds.rename_column("label", "labels")

    train = prep(data["train"], args.max_train_samples)
    evals = {split: prep(data[split], args.max_eval_samples) for split in data if split != "train"}
    info = {"finetuned_checkpoint": finetuned, "finetune_ran": needs_finetune,
            "train_examples": len(train)}
    return JobContext(args, method, task, out_dir, model, tokenizer, train, evals,
                      needs_finetune, info)


def _prepare_qa(args: TrainArgs, method: MethodConfig, out_dir: Path, task: Task) -> JobContext:
    config = AutoConfig.from_pretrained(args.model_name_or_path)
    finetuned = is_finetuned(config, task)
    needs_finetune = {"auto": not finetuned, "always": True, "never": False}[args.finetune]
    config.finetuning_task = task.name
    model = load_model(args.model_name_or_path, task, config)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name or args.model_name_or_path)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{args.tokenizer_name or args.model_name_or_path}: SQuAD needs a fast "
                         "tokenizer (offsets of tokens in the context)")
    data = squad.load_squad(args.dataset_name or task.hub_dataset, args.data_dir)
    sizes = (args.max_seq_length or task.max_seq_length, args.doc_stride, args.max_query_length)

    def limit(ds, n):
        return ds.select(range(n)) if n is not None and len(ds) > n else ds

    train_ex = limit(data["train"], args.max_train_samples)
    dev_ex = limit(data["validation"], args.max_eval_samples)
    train = train_ex.map(squad.train_features, batched=True, fn_kwargs={
        "tokenizer": tokenizer, "max_seq_length": sizes[0], "doc_stride": sizes[1],
        "max_query_length": sizes[2]}, remove_columns=train_ex.column_names)
    dev = dev_ex.map(squad.eval_features, batched=True, fn_kwargs={
        "tokenizer": tokenizer, "max_seq_length": sizes[0], "doc_stride": sizes[1],
        "max_query_length": sizes[2]}, remove_columns=dev_ex.column_names)
    info = {"finetuned_checkpoint": finetuned, "finetune_ran": needs_finetune,
            "train_examples": len(train_ex), "train_features": len(train),
            "eval_features": len(dev)}
    return JobContext(args, method, task, out_dir, model, tokenizer, train,
                      {"validation": dev}, needs_finetune, info, {"validation": dev_ex})


def load_teacher(path: str, ctx: JobContext) -> PreTrainedModel:
    """A teacher checkpoint for the job's task (it must carry a head for the task)."""
    config = AutoConfig.from_pretrained(path)
    if not is_finetuned(config, ctx.task):
        what = "SQuAD" if ctx.task.is_qa else f"{ctx.task.name} ({ctx.task.num_labels} labels)"
        raise ValueError(f"teacher {path} is not fine-tuned for {what}")
    return load_model(path, ctx.task, config)


class StagedTrainer(Trainer):
    """HF Trainer whose LR schedule restarts (warmup + linear decay) at every stage."""

    def __init__(self, *a, stage_epochs: list[float], warmup_ratio: float,
                 distiller: Any = None, **kw):
        self.stage_epochs = stage_epochs
        self.warmup_ratio = warmup_ratio
        self.distiller = distiller  # quantlib.distill.Distiller: its loss once it has a teacher
        super().__init__(*a, **kw)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        d = self.distiller
        if d is not None and d.teacher is not None and model.training:
            return d.compute_loss(model, inputs, return_outputs)
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            starts = stage_starts(num_training_steps, self.stage_epochs)
            self.lr_scheduler = LambdaLR(
                optimizer or self.optimizer,
                staged_lr_lambda(starts, num_training_steps, self.warmup_ratio))
            self._created_lr_scheduler = True
        return self.lr_scheduler


def make_trainer(ctx: JobContext, stage_epochs: list[float],
                 callbacks: list[TrainerCallback], distiller: Any = None) -> StagedTrainer:
    a = ctx.args
    use_cuda = torch.cuda.is_available()
    targs = TrainingArguments(
        output_dir=str(ctx.out_dir / "checkpoints"),
        num_train_epochs=max(sum(stage_epochs), 0.0),
        per_device_train_batch_size=a.batch_size,
        per_device_eval_batch_size=a.eval_batch_size,
        learning_rate=a.learning_rate,
        weight_decay=a.weight_decay,
        max_grad_norm=a.max_grad_norm,
        seed=a.seed,
        fp16=a.fp16 and use_cuda,
        bf16=a.bf16,
        use_cpu=not use_cuda,
        logging_steps=a.logging_steps,
        save_strategy="no",
        eval_strategy="no",
        report_to=a.report_to,
        run_name=ctx.run_name,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return StagedTrainer(
        model=ctx.model, args=targs, train_dataset=ctx.train,
        data_collator=DataCollatorWithPadding(ctx.tokenizer), callbacks=callbacks,
        stage_epochs=stage_epochs, warmup_ratio=a.warmup_ratio, distiller=distiller)


class SaveAndStopOnRequest(TrainerCallback):
    """At the end of the step during which the warning signal came: checkpoint, then stop."""

    def on_step_end(self, args, state, control, **kwargs):
        if _any_rank_requested(args.device):
            control.should_save = True
            control.should_training_stop = True


def _any_rank_requested(device: Any) -> bool:
    """Did the warning reach this rank or any other (DDP)? The ranks agree every step, so
    that all stop at the same step: one rank stopping alone would leave the others waiting
    in their next all-reduce."""
    import torch.distributed as dist

    requested = preemption.REQUEST.requested
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flag = torch.tensor([1 if requested else 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and not requested:
            preemption.REQUEST.signal_name = "SIGUSR2 (on another rank)"
            requested = True
    return requested


class KeepFinetuned(TrainerCallback):
    """The shared fine-tuning job's (TrainArgs.finetune_checkpoint): a checkpoint at the last
    step, and how many batches an epoch has, for the jobs that resume from it."""

    batches: int | None = None

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.batches = len(train_dataloader) if train_dataloader is not None else None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = True


class FromFinetuned(TrainerCallback):
    """A job resumed from a shared fine-tuning checkpoint: the checkpoint's step must be the
    end of this job's own fine-tuning stage, or the job would not compute what it computes
    alone (shared_start checks it first; this is the check once the Trainer counted)."""

    def __init__(self, stage_epochs: list[float], step: int):
        self.stage_epochs, self.step = stage_epochs, step

    def on_train_begin(self, args, state, control, **kwargs):
        end = finetune_end(state.max_steps, self.stage_epochs)
        if state.global_step != self.step or end != self.step:
            raise RuntimeError(f"the shared fine-tuning's checkpoint is at step {self.step}, "
                               f"this job's fine-tuning ends at step {end}: run the sweep with "
                               "finetune_sharing: false")


def finetune_end(max_steps: int, stage_epochs: list[float]) -> int:
    """The step at which the first stage (the fine-tuning) ends: the second's start, or the
    end of training for a job that only fine-tunes (fp32; ptq and gptq, which quantize after)."""
    return [*stage_starts(max_steps, stage_epochs), max_steps][1]


SHARED_RECORD = "finetune.json"  # in a shared fine-tuning checkpoint: its step and batches


def shared_start(ctx: JobContext, stage_epochs: list[float]) -> tuple[str, int] | None:
    """(the shared fine-tuning checkpoint, its step) when this job can resume from it: the
    checkpoint is there, ends where this job's fine-tuning stage ends, and holds this model's
    parameters; None (and the reason in the results) when the job must fine-tune by itself."""
    import json

    def alone(reason: str) -> None:
        log.warning("fine-tuning by itself: %s", reason)
        ctx.info.update(finetune_shared=False, finetune_shared_reason=reason)

    src = Path(str(ctx.finetune_from))
    try:
        record = json.loads((src / SHARED_RECORD).read_text())
        step, batches = int(record["global_step"]), int(record["batches"])
        accum = int(record.get("gradient_accumulation_steps", 1))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        alone(f"no shared fine-tuning checkpoint in {src} ({type(exc).__name__})")
        return None
    per_epoch = max(batches // accum + int(batches % accum > 0), 1)  # as HF's Trainer counts
    end = finetune_end(math.ceil(sum(stage_epochs) * per_epoch), stage_epochs)
    if end != step:
        alone(f"the shared fine-tuning ends at step {step}, this job's at step {end}")
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(src / "model.safetensors"), "pt") as fh:
            saved = set(fh.keys())
    except OSError as exc:
        alone(f"{src}: {exc}")
        return None
    own = dict(ctx.model.named_parameters())
    state = set(ctx.model.state_dict())
    if saved - state or set(own) - saved:
        alone("the checkpoint's parameters are not this model's")
        return None
    ctx.info.update(finetune_shared=True, finetune_shared_step=step,
                    finetune_job=ctx.finetune_job)
    return str(src), step


def train_stages(ctx: JobContext, stage_epochs: list[float],
                 callbacks: list[StageCallback], distiller: Any = None) -> StagedTrainer:
    """Train through the stages (skipped when they add up to no epochs), resuming from the
    job's last checkpoint if a previous run of it was preempted, else from the shared
    fine-tuning's checkpoint when the job has one (jobs.sharing)."""
    extra: list[TrainerCallback] = [SaveAndStopOnRequest()]
    keep = KeepFinetuned() if ctx.args.finetune_checkpoint and ctx.needs_finetune else None
    ckpt_dir = ctx.out_dir / "checkpoints"
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    shared = None
    if not last and ctx.finetune_from and ctx.needs_finetune and sum(stage_epochs) > 0:
        shared = shared_start(ctx, stage_epochs)
    if keep is not None:
        extra.append(keep)
    if shared is not None:
        extra.append(FromFinetuned(stage_epochs, shared[1]))
    trainer = make_trainer(ctx, stage_epochs, [*callbacks, *extra], distiller)
    for cb in callbacks:  # callbacks that evaluate need the trainer
        cb.bind(trainer)
    if sum(stage_epochs) <= 0:
        return trainer
    if last:
        log.info("resuming from %s", last)
        ctx.info["resumed_from_step"] = int(last.rsplit("-", 1)[-1])
        for cb in callbacks:  # their own state, saved beside the Trainer's in on_save
            cb.load_checkpoint(last)
    elif shared is not None:  # the callbacks start fresh: nothing of theirs ran before
        log.info("resuming from the shared fine-tuning %s", shared[0])
    result = trainer.train(resume_from_checkpoint=last or (shared[0] if shared else None))
    if preemption.REQUEST.requested:
        raise preemption.Preempted(trainer.state.global_step, preemption.REQUEST.signal_name)
    ctx.info["device"] = (torch.cuda.get_device_name(trainer.args.device)
                          if trainer.args.device.type == "cuda" else trainer.args.device.type)
    ctx.info["train_loss"] = float(result.training_loss)
    ctx.info["train_steps"] = int(result.global_step)
    if keep is not None:
        trainer.accelerator.wait_for_everyone()  # every rank's RNG state is in the checkpoint
        if not trainer.is_world_process_zero():
            return trainer  # rank 0 moves the checkpoint and cleans up
        _keep_finetuned(ctx, trainer, keep, ckpt_dir)
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: the checkpoints served their turn
    return trainer


def _keep_finetuned(ctx: JobContext, trainer: Trainer, keep: KeepFinetuned,
                    ckpt_dir: Path) -> None:
    """The last checkpoint becomes <output_dir>/finetuned/, with its step and batches per
    epoch (SHARED_RECORD), for the jobs that resume from it."""
    import os

    from quantlib.atomic import write_json
    from quantlib.jobdir import FINETUNED

    step = trainer.state.global_step
    src = ckpt_dir / f"checkpoint-{step}"
    if not src.is_dir() or keep.batches is None:
        raise RuntimeError(f"the fine-tuning's last checkpoint {src} was not written")
    write_json(src / SHARED_RECORD, {"global_step": step, "batches": keep.batches,
                                     "gradient_accumulation_steps":
                                         trainer.args.gradient_accumulation_steps,
                                     "epochs": trainer.args.num_train_epochs})
    final = ctx.out_dir / FINETUNED
    if final.exists():  # a rerun (--force): the new fine-tuning replaces the old
        shutil.rmtree(final)
    os.replace(src, final)
    ctx.info["finetune_checkpoint_dir"] = str(final)


def evaluate_qa(trainer: Trainer, ctx: JobContext) -> dict[str, float]:
    """EM and F1 as evaluate-v1.1.py (0-100); the answers go to predictions.json."""
    from quantlib.atomic import write_json

    features = ctx.evals["validation"]
    examples = ctx.eval_examples["validation"]
    inputs = features.remove_columns(["example_id", "offset_mapping"])
    pred = trainer.predict(inputs, metric_key_prefix="eval")
    start, end = pred.predictions[:2]
    a = ctx.args
    answers = squad.decode(examples, features, start, end, a.n_best_size, a.max_answer_length)
    write_json(ctx.out_dir / "predictions.json", answers)
    out = squad_metrics.evaluate(squad.references(examples), answers)
    out["empty_answers"] = float(sum(1 for v in answers.values() if not v.strip()))
    out["distinct_answers"] = float(len(set(answers.values())))
    return out


def evaluate(trainer: Trainer, ctx: JobContext) -> dict[str, float]:
    """Every eval split's metrics; the second MNLI set gets the _mm suffix."""
    if ctx.task.is_qa:
        return evaluate_qa(trainer, ctx)
    out: dict[str, float] = {}
    for split, ds in ctx.evals.items():
        pred = trainer.predict(ds, metric_key_prefix="eval")
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        labels = pred.label_ids
        if ctx.task.is_regression:
            preds = np.squeeze(logits, axis=-1)
            distinct = int(np.unique(np.round(preds, 6)).size)
        else:
            preds = np.argmax(logits, axis=-1)
            distinct = int(np.unique(preds).size)
        values = metrics.compute(ctx.task, preds, labels)
        values["loss"] = float(pred.metrics.get("eval_loss", math.nan))
        values["pred_classes"] = float(distinct)  # 1 = a single-class (collapsed) predictor
        suffix = "" if split == "validation" else "_" + split.removeprefix("validation_")
        if suffix:
            values = {k: v for k, v in values.items() if k in ("accuracy", "loss")}
        out.update({f"{k}{suffix}": v for k, v in values.items()})
    return out
