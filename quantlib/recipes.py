"""Method registry, torch side: config type -> the recipe that trains and compresses a model.

A recipe takes the prepared JobContext and its method config, trains, and returns the trainer
it evaluates with. Register new methods with `@register(TheirConfig)`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from quantlib import qplans
from quantlib.configs import (
    DistillQuantConfig,
    FP32Config,
    INQConfig,
    MethodConfig,
    PTQConfig,
    Q8BertConfig,
    QATConfig,
    QATKDConfig,
)
from quantlib.distill import Distiller, frozen_copy
from quantlib.inq import INQController, Stage, select_weights
from quantlib.qat import QuantStart, calibration_batches
from quantlib.trainer import JobContext, StagedTrainer, load_teacher, train_stages

Recipe = Callable[[JobContext, MethodConfig], StagedTrainer]
RECIPES: dict[type[MethodConfig], Recipe] = {}


def register(config_type: type[MethodConfig]) -> Callable[[Recipe], Recipe]:
    def wrap(fn: Recipe) -> Recipe:
        RECIPES[config_type] = fn
        return fn

    return wrap


def recipe_for(config: MethodConfig) -> Recipe:
    for cls in type(config).__mro__:
        if cls in RECIPES:
            return RECIPES[cls]
    raise KeyError(f"no recipe registered for {type(config).__name__}")


def finetune_stage(ctx: JobContext) -> list[Stage]:
    return [Stage("finetune", ctx.args.finetune_epochs, None)] if ctx.needs_finetune else []


@register(FP32Config)
def fp32(ctx: JobContext, cfg: FP32Config) -> StagedTrainer:
    return train_stages(ctx, [s.epochs for s in finetune_stage(ctx)], [])


@register(INQConfig)
def inq(ctx: JobContext, cfg: INQConfig) -> StagedTrainer:
    stages = finetune_stage(ctx) + [
        Stage(f"inq{f:g}", cfg.epochs_per_stage if f < 1.0 else 0.0, f) for f in cfg.inq_steps]
    weights = select_weights(ctx.model, ctx.args.quantize_modules)
    controller = INQController(weights, cfg, stages, seed=ctx.args.seed)
    trainer = train_stages(ctx, [s.epochs for s in stages], [controller])
    controller.apply_due(None)  # the final partition (1.0) needs no training after it
    controller.remove_hooks()
    summary = controller.summary()
    if summary["quantized_fraction"] != 1.0 or (
            summary["max_distinct_values"] > summary["level_limit"]):
        raise RuntimeError(f"INQ left the model not fully quantized: {summary}")
    ctx.info.update(summary)
    return trainer


def _qat_stages(ctx: JobContext, epochs: float) -> list[float]:
    return [s.epochs for s in finetune_stage(ctx)] + [epochs]


@register(Q8BertConfig)
def q8bert(ctx: JobContext, cfg: Q8BertConfig) -> StagedTrainer:
    now, head = qplans.install_q8bert(ctx.model, cfg, ctx.args.quantize_modules)
    epochs = _qat_stages(ctx, cfg.qat_epochs)
    switch = QuantStart(ctx.model, epochs, len(epochs) - 1, now,
                        delayed=(cfg.head_start_step, head), observe_delayed=True)
    trainer = train_stages(ctx, epochs, [switch])
    ctx.info.update(qplans.summary(ctx.model), ste=cfg.ste,
                    integer_inference=cfg.integer_inference)
    return trainer


def _calibrator(ctx: JobContext, cfg: PTQConfig):
    def run() -> dict:
        seen = qplans.calibrate(ctx.model, calibration_batches(ctx, cfg.num_calib_batch))
        fused = qplans.fuse_qkv(ctx.model) if cfg.quant_mode in ("ft2", "ft3") else 0
        return {"calib_batches": seen, "qkv_fused": fused}

    return run


def _ft_info(ctx: JobContext, cfg: PTQConfig) -> None:
    ctx.info.update(qplans.summary(ctx.model), calibrator=cfg.calibrator,
                    quant_mode=cfg.quant_mode,
                    weight_granularity=qplans.weight_granularity(cfg))


@register(PTQConfig)
def ptq(ctx: JobContext, cfg: PTQConfig) -> StagedTrainer:
    trainer = train_stages(ctx, [s.epochs for s in finetune_stage(ctx)], [])
    qplans.install_ft(ctx.model, cfg, ctx.args.quantize_modules)
    before = {k: v.detach().clone() for k, v in ctx.model.named_parameters()}
    ctx.info.update(_calibrator(ctx, cfg)())
    qs = list(qplans.quantizers(ctx.model).values())
    qplans.check_calibrated(qs)
    qplans.enable(qs)
    if any(not torch.equal(before[k], p) for k, p in ctx.model.named_parameters()):
        raise RuntimeError("calibration changed a weight")
    _ft_info(ctx, cfg)
    return trainer


@register(QATConfig)
def qat(ctx: JobContext, cfg: QATConfig) -> StagedTrainer:
    """QAT from the calibrated model (qat-kd: with the FP model as teacher)."""
    qplans.install_ft(ctx.model, cfg, ctx.args.quantize_modules)
    qs = list(qplans.quantizers(ctx.model).values())
    epochs = _qat_stages(ctx, cfg.qat_epochs)
    distiller = factory = None
    if isinstance(cfg, QATKDConfig):
        distiller = Distiller(cfg, ctx.task.is_regression)
        if cfg.teacher_name_or_path:
            factory = lambda: frozen_copy(load_teacher(cfg.teacher_name_or_path, ctx))  # noqa: E731
        ctx.info["kd_loss"] = distiller.name
    switch = QuantStart(ctx.model, epochs, len(epochs) - 1, qs, calibrate=_calibrator(ctx, cfg),
                        distiller=distiller, teacher_factory=factory)
    trainer = train_stages(ctx, epochs, [switch], distiller)
    _ft_info(ctx, cfg)
    ctx.info.update(switch.record, ste=cfg.ste)
    return trainer


@register(DistillQuantConfig)
def distill_quant(ctx: JobContext, cfg: DistillQuantConfig) -> StagedTrainer:
    ctx.model.set_attn_implementation("eager")  # attention probabilities for the loss
    qs = qplans.install_distill_quant(ctx.model, cfg, ctx.args.quantize_modules)
    epochs = _qat_stages(ctx, cfg.qat_epochs)
    distiller = Distiller(cfg, ctx.task.is_regression)
    switch = QuantStart(ctx.model, epochs, len(epochs) - 1, qs, distiller=distiller)
    trainer = train_stages(ctx, epochs, [switch], distiller)
    ctx.info.update(qplans.summary(ctx.model), kd_loss=distiller.name)
    return trainer
