"""Method registry, torch side: config type -> the recipe that trains and compresses a model.

A recipe takes the prepared JobContext and its method config, trains, and returns the trainer
it evaluates with. Register new methods with `@register(TheirConfig)`.
"""

from __future__ import annotations

from collections.abc import Callable

from quantlib.configs import FP32Config, INQConfig, MethodConfig
from quantlib.inq import INQController, Stage, select_weights
from quantlib.trainer import JobContext, StagedTrainer, train_stages

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
