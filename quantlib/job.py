"""What one job computes, given its config: build the method, train through its stages, evaluate,
export, measure size and sparsity, save the model (`run_job`). Everything around it (the job
directory's lock and status, signals, requeue, torchrun) is jobs.runtime's."""

from __future__ import annotations

from pathlib import Path


def run_job(config: dict, out_dir: Path) -> tuple[dict[str, float], dict]:
    """Train, evaluate and measure the job `config` describes, writing into `out_dir`: its
    metrics (HF names, no prefix) and facts about the run (quantlib.jobdir.write_results)."""
    from quantlib import model_size, quantize_model, tracking
    from quantlib.configs import PTQConfig, build
    from quantlib.recipes import recipe_for
    from quantlib.sparsity import sparsity_of
    from quantlib.stages import select_weights
    from quantlib.trainer import evaluate, prepare

    args, method = build(config)
    tracking.setup(args.report_to, out_dir, str(config.get("job_id") or out_dir.name),
                   str(config.get("sweep") or "quantsweep"))
    ctx = prepare(args, method, out_dir)
    ctx.run_name = config.get("job_id") or out_dir.name
    ctx.sweep_dir = config.get("sweep_dir")
    from quantlib.configs import finetune_shareable

    if config.get("finetune_from") and finetune_shareable(config):  # jobs.sharing
        ctx.finetune_from, ctx.finetune_job = config["finetune_from"], config.get("after")
    trainer = recipe_for(method)(ctx, method)
    results = evaluate(trainer, ctx)
    if args.export == "onnx":  # low-bit grids (INQ, GPTQ): packed + MatMulNBits; else INT8 QDQ
        from quantlib import export_nbits, export_onnx

        ctx.info.update((export_nbits if ctx.grids else export_onnx).run(ctx, results))
    weights = select_weights(ctx.model, args.quantize_modules)
    if weights:  # zeros among the selected weights, whatever the method
        ctx.info["sparsity"] = sparsity_of(weights)
    ctx.info.update(model_size.measure(ctx.model, ctx.codes, ctx.sparse))
    if "packed_size_mb" in ctx.info:  # the size is the packed file's, the formula's beside it
        ctx.info.update(model_size.from_file(ctx.info, ctx.info["packed_size_mb"]))
    if args.save_model:
        trainer.save_model(str(out_dir / "model"))
        ctx.tokenizer.save_pretrained(str(out_dir / "model"))
        if isinstance(method, PTQConfig) and quantize_model.quantizers(ctx.model):
            quantize_model.save_calibration(out_dir / "model", method)
    return results, ctx.info
