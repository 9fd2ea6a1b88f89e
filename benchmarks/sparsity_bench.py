"""Sparsity costs on a BERT-base-shaped model (random init, nothing downloaded).

    python benchmarks/sparsity_bench.py [--layers 12 --hidden 768 --batch 8 --seq 128]
                                        [--steps 5] [--device cuda]

- mask time: 2:4 masks (mask_24) and unstructured magnitude masks at 90% (per tensor and
  global) for all encoder Linear weights (72 for BERT-base), median of 3;
- training step with the pattern lock (gradient hooks + weights masked after AdamW) relative
  to the same step without it; one step = forward, backward and AdamW update on one fixed
  batch, median of --steps after a warm-up step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from qat_step_bench import ENCODER, build  # the same BERT-base-shaped model

from quantlib.sparsity import PatternLock, magnitude_masks, mask_24
from quantlib.stages import select_weights


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def step_time(args, lock: bool) -> float:
    model = build(args)
    model.train()
    weights = select_weights(model, ENCODER)
    if lock:
        pl = PatternLock(weights, lambda: {n: mask_24(w) for n, w in weights.items()})
        pl.lock()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 30000, (args.batch, args.seq), generator=g).to(args.device)
    labels = torch.randint(0, 2, (args.batch,), generator=g).to(args.device)

    def one() -> None:
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if lock:
            pl.apply()

    one()
    return timed(one, args.device, args.steps)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    weights = select_weights(build(args), ENCODER)
    n = sum(w.numel() for w in weights.values())
    print(f"{len(weights)} encoder weights, {n / 1e6:.1f}M parameters, device {args.device}, "
          f"{torch.get_num_threads()} threads")
    t24 = timed(lambda: [mask_24(w) for w in weights.values()], args.device, 3)
    tl = timed(lambda: magnitude_masks(weights, 0.9, "layer"), args.device, 3)
    tg = timed(lambda: magnitude_masks(weights, 0.9, "global"), args.device, 3)
    print(f"mask_24 all: {t24:.3f} s; magnitude 90% per tensor: {tl:.3f} s, global: {tg:.3f} s")
    plain, locked = step_time(args, False), step_time(args, True)
    print(f"training step: {plain:.3f} s plain, {locked:.3f} s with the pattern lock "
          f"({locked / plain:.3f}x)")


if __name__ == "__main__":
    main()
