"""Training-step time of each QAT method relative to FP32, on the same model and batch.

    python benchmarks/qat_step_bench.py [--layers 12 --hidden 768 --batch 8 --seq 128]
                                        [--steps 5] [--device cuda]

A BERT-base-shaped sequence classifier (random init, nothing downloaded); one step = forward,
backward and AdamW update on one fixed batch, timed after --warmup steps; median of --steps.
Variants: fp32 (the model as HF builds it, sdpa attention), q8bert (8-bit, embeddings + encoder
+ head, EMA activations, integer path off in training), qat-ft1 / qat-ft2 / qat-ft3 (calibrated
static amax, clipping STE; ft2/ft3 also quantize the attention matmuls and residuals, through
eager attention), distill-quant (student step only, without the teacher's forward).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import BertConfig, BertForSequenceClassification

from quantlib.configs import DistillQuantConfig, Q8BertConfig, QATConfig
from quantlib.qmodules import quantizers
from quantlib.quantize_model import (
    calibrate,
    enable,
    fuse_qkv,
    install_distill_quant,
    install_ft,
    install_q8bert,
)

ENCODER = ("*encoder.layer.*",)


def build(args) -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=args.hidden, num_hidden_layers=args.layers,
                     num_attention_heads=max(1, args.hidden // 64),
                     intermediate_size=4 * args.hidden, num_labels=2)
    return BertForSequenceClassification(cfg).to(args.device)


def batch(args) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 30000, (args.batch, args.seq), generator=g)
    return {"input_ids": ids.to(args.device),
            "attention_mask": torch.ones_like(ids).to(args.device),
            "labels": torch.randint(0, 2, (args.batch,), generator=g).to(args.device)}


def prepare(variant: str, model, inputs) -> None:
    if variant == "q8bert":
        now, later = install_q8bert(model, Q8BertConfig(nbits=8, integer_inference=False),
                                    ENCODER)
        enable(now + later)
    elif variant.startswith("qat-"):
        install_ft(model, QATConfig(quant_mode=variant[4:]), ENCODER)
        calibrate(model, [inputs])
        fuse_qkv(model)
        enable(quantizers(model).values())
    elif variant == "distill-quant":
        enable(install_distill_quant(model, DistillQuantConfig(), ENCODER))


def step_times(variant: str, args) -> list[float]:
    model = build(args)
    inputs = batch(args)
    prepare(variant, model, inputs)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    times = []
    for i in range(args.warmup + args.steps):
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = model(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--variants", default="fp32,q8bert,qat-ft1,qat-ft2,qat-ft3,distill-quant")
    args = ap.parse_args()
    print(f"device {args.device}, threads {torch.get_num_threads()}, {args.layers} layers x "
          f"{args.hidden}, batch {args.batch} x {args.seq} tokens, median of {args.steps}")
    base = None
    print("| variant | step (s) | ÷ FP32 |\n|---|---|---|")
    for variant in args.variants.split(","):
        t = statistics.median(step_times(variant, args))
        base = base if base is not None else t
        print(f"| {variant} | {t:.3f} | {t / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
