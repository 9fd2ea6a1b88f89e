"""Method registry, torch side: config type -> the recipe that trains and compresses a model.

A recipe takes the prepared JobContext and its method config, trains, and returns the trainer
it evaluates with. Register new methods with `@register(TheirConfig)`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from quantlib import quantize_model
from quantlib.best_epoch import BestEpoch
from quantlib.configs import (
    DistillQuantConfig,
    DistilSquadConfig,
    FP32Config,
    GPTQConfig,
    INQConfig,
    MethodConfig,
    PruneOFAConfig,
    PTQConfig,
    Q8BertConfig,
    QATConfig,
    QATKDConfig,
    Sparse24Config,
    SparseConfig,
)
from quantlib.distill import Distiller, frozen_copy
from quantlib.inq import INQController
from quantlib.qat import QuantStart, calibration_batches
from quantlib.sparsity import (
    PatternLock,
    can_24,
    is_24,
    magnitude_masks,
    mask_24,
    nonzero_masks,
    sparsity_of,
)
from quantlib.stages import StageCallback, TrainingStage, select_weights
from quantlib.trainer import JobContext, StagedTrainer, evaluate, load_teacher, train_stages

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


def finetune_stage(ctx: JobContext) -> list[TrainingStage]:
    if not ctx.needs_finetune:
        return []
    return [TrainingStage("finetune", ctx.args.finetune_epochs, None)]


@register(FP32Config)
def fp32(ctx: JobContext, cfg: FP32Config) -> StagedTrainer:
    return train_stages(ctx, [s.epochs for s in finetune_stage(ctx)], [])


@register(INQConfig)
def inq(ctx: JobContext, cfg: INQConfig) -> StagedTrainer:
    stages = finetune_stage(ctx) + [
        TrainingStage(f"inq{f:g}", cfg.epochs_per_stage if f < 1.0 else 0.0, f)
        for f in cfg.inq_steps]
    weights = select_weights(ctx.model, ctx.args.quantize_modules)
    controller = INQController(weights, cfg, stages, seed=ctx.args.seed)
    trainer = train_stages(ctx, [s.epochs for s in stages], [controller])
    controller.apply_due(None)  # the final partition (1.0) needs no training after it
    controller.remove_hooks()
    summary = controller.summary()
    if summary["quantized_fraction"] != 1.0 or summary["weights_over_level_limit"]:
        raise RuntimeError(f"INQ left the model not fully quantized: {summary}")
    ctx.info.update(summary)
    ctx.codes.update(controller.codes())
    if ctx.args.export == "onnx":  # the codes for the packed file (quantlib.export_nbits)
        ctx.grids.update(controller.packed())
    if "scale_rule" in controller.qkw:  # lin, p2: the level sets' scale rule
        ctx.info["inq_scale"] = controller.qkw["scale_rule"]
    return trainer


def _qat_stages(ctx: JobContext, epochs: float) -> list[float]:
    return [s.epochs for s in finetune_stage(ctx)] + [epochs]


@register(Q8BertConfig)
def q8bert(ctx: JobContext, cfg: Q8BertConfig) -> StagedTrainer:
    now, head = quantize_model.install_q8bert(ctx.model, cfg, ctx.args.quantize_modules)
    epochs = _qat_stages(ctx, cfg.qat_epochs)
    switch = QuantStart(ctx.model, epochs, len(epochs) - 1, now,
                        delayed=(cfg.head_start_step, head))
    trainer = train_stages(ctx, epochs, [switch])
    ctx.info.update(quantize_model.summary(ctx.model), ste=cfg.ste,
                    integer_inference=cfg.integer_inference,
                    head_quantized=switch.head_quantized)
    return trainer


def _calibrator(ctx: JobContext, cfg: PTQConfig):
    def run() -> dict:
        seen = quantize_model.calibrate(ctx.model, calibration_batches(ctx, cfg.num_calib_batch))
        fused = quantize_model.fuse_qkv(ctx.model) if cfg.quant_mode in ("ft2", "ft3") else 0
        return {"calib_batches": seen, "qkv_fused": fused}

    return run


def _ft_info(ctx: JobContext, cfg: PTQConfig) -> None:
    ctx.info.update(quantize_model.summary(ctx.model), calibrator=cfg.calibrator,
                    quant_mode=cfg.quant_mode,
                    weight_granularity=quantize_model.weight_granularity(cfg))


@register(PTQConfig)
def ptq(ctx: JobContext, cfg: PTQConfig) -> StagedTrainer:
    trainer = train_stages(ctx, [s.epochs for s in finetune_stage(ctx)], [])
    quantize_model.install_ft(ctx.model, cfg, ctx.args.quantize_modules)
    before = {k: v.detach().clone() for k, v in ctx.model.named_parameters()}
    ctx.info.update(_calibrator(ctx, cfg)())
    qs = list(quantize_model.quantizers(ctx.model).values())
    quantize_model.check_calibrated(qs)
    quantize_model.enable(qs)
    if any(not torch.equal(before[k], p) for k, p in ctx.model.named_parameters()):
        raise RuntimeError("calibration changed a weight")
    _ft_info(ctx, cfg)
    return trainer


@register(GPTQConfig)
def gptq(ctx: JobContext, cfg: GPTQConfig) -> StagedTrainer:
    """Fine-tune (when the checkpoint is not fine-tuned yet), then GPTQ from the first
    num_calib_batch batches of a seeded shuffle of the training set."""
    from quantlib.gptq import quantize_layers

    trainer = train_stages(ctx, [s.epochs for s in finetune_stage(ctx)], [])
    batches = list(calibration_batches(ctx, cfg.num_calib_batch))
    codes, info, ctx.grids = quantize_layers(
        ctx.model, batches, ctx.args.quantize_modules, cfg.nbits, group_size=cfg.group_size,
        act_order=cfg.act_order, damp=cfg.damp, block_size=cfg.block_size, sym=cfg.sym,
        nbits_per_module=cfg.nbits_per_module)
    ctx.codes.update(codes)
    ctx.info.update(info, calib_batches=len(batches), gptq_group_size=cfg.group_size,
                    gptq_act_order=cfg.act_order, gptq_damp=cfg.damp,
                    gptq_block_size=cfg.block_size, gptq_sym=cfg.sym)
    return trainer


@register(QATConfig)
def qat(ctx: JobContext, cfg: QATConfig) -> StagedTrainer:
    """QAT from the calibrated model (qat-kd: with the FP model as teacher). A checkpoint saved
    by a PTQ job with the same plan (a previous stage) gives its calibration instead."""
    quantize_model.install_ft(ctx.model, cfg, ctx.args.quantize_modules)
    qs = list(quantize_model.quantizers(ctx.model).values())
    calibration = quantize_model.load_calibration(ctx.model, ctx.args.model_name_or_path, cfg)
    ctx.info["calibration"] = calibration
    calibrate = None if calibration.startswith("loaded") else _calibrator(ctx, cfg)
    epochs = _qat_stages(ctx, cfg.qat_epochs)
    distiller = factory = None
    if isinstance(cfg, QATKDConfig):
        distiller = Distiller(cfg, ctx.task.is_regression)
        if cfg.teacher_name_or_path:
            factory = lambda: frozen_copy(load_teacher(cfg.teacher_name_or_path, ctx))  # noqa: E731
            _share_rows(ctx, distiller, cfg.teacher_name_or_path)
        ctx.info["kd_loss"] = distiller.name
    switch = QuantStart(ctx.model, epochs, len(epochs) - 1, qs, calibrate=calibrate,
                        distiller=distiller, teacher_factory=factory)
    trainer = train_stages(ctx, epochs, [switch], distiller)
    if distiller is not None and distiller.shared is not None:
        ctx.info.update(distiller.save_shared())
    _ft_info(ctx, cfg)
    ctx.info.update(switch.record, ste=cfg.ste)
    return trainer


@register(DistillQuantConfig)
def distill_quant(ctx: JobContext, cfg: DistillQuantConfig) -> StagedTrainer:
    ctx.model.set_attn_implementation("eager")  # attention probabilities for the loss
    qs = quantize_model.install_distill_quant(ctx.model, cfg, ctx.args.quantize_modules)
    epochs = _qat_stages(ctx, cfg.qat_epochs)
    distiller = Distiller(cfg, ctx.task.is_regression)
    switch = QuantStart(ctx.model, epochs, len(epochs) - 1, qs, distiller=distiller)
    trainer = train_stages(ctx, epochs, [switch], distiller)
    ctx.info.update(quantize_model.summary(ctx.model), kd_loss=distiller.name)
    return trainer


# -- pruning ---------------------------------------------------------------------------------
def _prunable(ctx: JobContext) -> dict:
    weights = select_weights(ctx.model, ctx.args.quantize_modules)
    if not weights:
        raise ValueError(f"quantize_modules {list(ctx.args.quantize_modules)} selects no "
                         "nn.Linear of the model: nothing to prune")
    return weights


@register(SparseConfig)
def sparse(ctx: JobContext, cfg: SparseConfig) -> StagedTrainer:
    """Prune (2:4 or magnitude) at the start of the sparse stage, fine-tune with the pattern
    locked; with `qat`, a QAT stage after it, pattern still locked."""
    weights = _prunable(ctx)
    if isinstance(cfg, Sparse24Config):
        locked = {n: w for n, w in weights.items() if can_24(w)}
        if not locked:
            raise ValueError("no selected weight fits 2:4 (rows % 8 == 0, columns % 16 == 0)")
        ctx.info.update(sparsity_pattern="2:4", dense_weights_kept=len(weights) - len(locked))

        def make() -> dict:
            return {n: mask_24(w) for n, w in locked.items()}
    else:
        locked = weights
        ctx.info.update(sparsity_pattern=f"unstructured ({cfg.prune_scope})",
                        target_sparsity=cfg.target_sparsity)

        def make() -> dict:
            return magnitude_masks(locked, cfg.target_sparsity, cfg.prune_scope)
    ft = [s.epochs for s in finetune_stage(ctx)]
    epochs = ft + [cfg.sparse_epochs] + ([cfg.qat_epochs] if cfg.qat else [])
    lock = PatternLock(locked, make, epochs, len(ft))
    callbacks: list[StageCallback] = [lock]
    if cfg.qat:
        quantize_model.install_ft(ctx.model, cfg, ctx.args.quantize_modules)
        qs = list(quantize_model.quantizers(ctx.model).values())
        switch = QuantStart(ctx.model, epochs, len(epochs) - 1, qs,
                            calibrate=_calibrator(ctx, cfg))
        callbacks.append(switch)
    trainer = train_stages(ctx, epochs, callbacks)
    if not lock.active:  # no training at all: prune once
        lock.lock()
    if isinstance(cfg, Sparse24Config) and not all(is_24(w) for w in locked.values()):
        raise RuntimeError("a 2:4 weight lost its pattern during training")
    ctx.info["pruned_sparsity"] = sparsity_of(locked)
    pattern = "2:4" if isinstance(cfg, Sparse24Config) else "unstructured"
    ctx.sparse.update({n: pattern for n in locked})
    if cfg.qat:
        _ft_info(ctx, cfg)
        ctx.info.update(switch.record, ste=cfg.ste)
    return trainer


@register(PruneOFAConfig)
def pruneofa(ctx: JobContext, cfg: PruneOFAConfig) -> StagedTrainer:
    """Pattern lock (the checkpoint's zeros stay zero) + distillation; stage 2 adds QAT. The
    best epoch's weights are kept."""
    weights = _prunable(ctx)
    ctx.info["finetune_ran"] = False  # distillation is the fine-tuning
    lock = PatternLock(weights, lambda: nonzero_masks(weights), [cfg.epochs], 0)
    distiller = Distiller(cfg, ctx.task.is_regression, ctx.tokenizer.sep_token_id)
    teacher = frozen_copy(load_teacher(cfg.teacher_name_or_path, ctx))
    _share_rows(ctx, distiller, cfg.teacher_name_or_path)
    distiller.teacher = teacher.to(next(ctx.model.parameters()).device)
    callbacks: list[StageCallback] = [lock]
    switch = None
    if cfg.qat:
        now, head = quantize_model.install_q8bert(ctx.model, cfg, ctx.args.quantize_modules)
        switch = QuantStart(ctx.model, [cfg.epochs], 0, now, delayed=(cfg.head_start_step, head))
        callbacks.append(switch)
    best = BestEpoch(ctx, evaluate) if cfg.keep_best else None
    if best is not None:
        callbacks.append(best)
    ctx.info["checkpoint_sparsity"] = sparsity_of(weights)
    trainer = train_stages(ctx, [cfg.epochs], callbacks, distiller)
    ctx.info.update(distiller.save_shared())
    if best is not None:
        ctx.info.update(best.restore())
    if any(not bool((w[~lock.masks[n]] == 0).all()) for n, w in weights.items()):
        raise RuntimeError("a pruned weight became non-zero: the pattern lock failed")
    ctx.sparse.update({n: "unstructured" for n in weights})
    ctx.info.update(kd_loss=distiller.name, pruned_sparsity=sparsity_of(weights),
                    sparsity_pattern="locked (checkpoint)")
    if switch is not None:
        ctx.info.update(quantize_model.summary(ctx.model), ste=cfg.ste,
                        integer_inference=cfg.integer_inference,
                        head_quantized=switch.head_quantized)
    return trainer


# -- distillation into a smaller model -------------------------------------------------------
@register(DistilSquadConfig)
def distil_squad(ctx: JobContext, cfg: DistilSquadConfig) -> StagedTrainer:
    """DistilBERT (the job's model) learns SQuAD from a fine-tuned BERT teacher."""
    teacher = frozen_copy(load_teacher(cfg.teacher_name_or_path, ctx))
    if teacher.config.vocab_size != ctx.model.config.vocab_size:
        raise ValueError(f"teacher {cfg.teacher_name_or_path} has a vocabulary of "
                         f"{teacher.config.vocab_size}, the student "
                         f"{ctx.model.config.vocab_size}: they must share the tokenizer")
    distiller = Distiller(cfg, False, ctx.tokenizer.sep_token_id)
    _share_rows(ctx, distiller, cfg.teacher_name_or_path)
    distiller.teacher = teacher.to(next(ctx.model.parameters()).device)
    ctx.info.update(kd_loss=distiller.name, finetune_ran=False,
                    student_parameters=sum(p.numel() for p in ctx.model.parameters()),
                    teacher_parameters=sum(p.numel() for p in teacher.parameters()))
    trainer = train_stages(ctx, [cfg.distil_epochs], [], distiller)
    ctx.info.update(distiller.save_shared())
    return trainer


def _share_rows(ctx: JobContext, distiller: Distiller, teacher: str) -> None:
    """The teacher checkpoint's logit rows are shared by the sweep's jobs that name it
    (quantlib.teacher_cache.shared_file); not distill-quant's layer terms (never cached)."""
    from quantlib.teacher_cache import shared_file

    if not distiller.layers:
        distiller.shared = shared_file(ctx.sweep_dir, teacher, ctx.task.is_qa)
