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
from quantlib.tasks import TASKS, Task

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


def is_finetuned(config: Any, task: Task) -> bool:
    """Does this checkpoint already carry a head trained for the task?"""
    archs = getattr(config, "architectures", None) or []
    finetuning_task = (getattr(config, "finetuning_task", None) or "").lower().replace("-", "")
    if finetuning_task and finetuning_task.removesuffix("v1") != task.name:
        return False
    if task.is_qa:
        return any(a.endswith("ForQuestionAnswering") for a in archs)
    has_head = any(a.endswith("ForSequenceClassification") for a in archs)
    return has_head and config.num_labels == task.num_labels


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


def train_stages(ctx: JobContext, stage_epochs: list[float],
                 callbacks: list[StageCallback], distiller: Any = None) -> StagedTrainer:
    """Train through the stages (skipped when they add up to no epochs), resuming from the
    job's last checkpoint if a previous run of it was preempted."""
    trainer = make_trainer(ctx, stage_epochs, [*callbacks, SaveAndStopOnRequest()], distiller)
    for cb in callbacks:  # callbacks that evaluate need the trainer
        cb.bind(trainer)
    if sum(stage_epochs) <= 0:
        return trainer
    ckpt_dir = ctx.out_dir / "checkpoints"
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    if last:
        log.info("resuming from %s", last)
        ctx.info["resumed_from_step"] = int(last.rsplit("-", 1)[-1])
        for cb in callbacks:  # their own state, saved beside the Trainer's in on_save
            cb.load_checkpoint(last)
    result = trainer.train(resume_from_checkpoint=last)
    if preemption.REQUEST.requested:
        raise preemption.Preempted(trainer.state.global_step, preemption.REQUEST.signal_name)
    ctx.info["device"] = (torch.cuda.get_device_name(trainer.args.device)
                          if trainer.args.device.type == "cuda" else trainer.args.device.type)
    ctx.info["train_loss"] = float(result.training_loss)
    ctx.info["train_steps"] = int(result.global_step)
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: the checkpoints served their turn
    return trainer


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
