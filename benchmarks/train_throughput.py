"""Training throughput of a BERT-base-shaped classifier in fp32, fp16 and bf16 (autocast).

    python benchmarks/train_throughput.py [--device cuda] [--batch 32 --seq 128 --steps 20]

One step = forward, backward and AdamW update on one fixed batch (random init, nothing
downloaded); fp16 with a GradScaler, bf16 without; samples per second over --steps steps after
--warmup steps, and the peak memory on a GPU. Precisions the device cannot run are reported so.
"""

from __future__ import annotations

import argparse
import time

import torch
from qat_step_bench import batch, build  # the same BERT-base-shaped model and batch


def run(args, precision: str) -> tuple[float, float | None]:
    model = build(args)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    inputs = batch(args)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler(args.device, enabled=precision == "fp16")
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        with torch.autocast(args.device.split(":")[0], dtype=dtype or torch.float32,
                            enabled=dtype is not None):
            loss = model(**inputs).loss
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return args.batch * args.steps / seconds, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precisions", default="fp32,fp16,bf16")
    args = ap.parse_args()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"{name}: {args.layers} layers x {args.hidden}, batch {args.batch} x {args.seq} "
          f"tokens, {args.steps} steps after {args.warmup}")
    print("\n| precision | samples/s | peak memory (GiB) |\n|---|---:|---:|")
    for precision in args.precisions.split(","):
        try:
            rate, peak = run(args, precision)
        except (RuntimeError, TypeError) as exc:  # e.g. fp16 autocast on a CPU build
            print(f"| {precision} | not run: {str(exc).splitlines()[0][:80]} | |")
            continue
        print(f"| {precision} | {rate:.1f} | {'' if peak is None else f'{peak:.2f}'} |")


if __name__ == "__main__":
    main()
