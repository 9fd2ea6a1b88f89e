"""INQ quantization time for every Linear weight of a BERT-base encoder (12 layers x 6 Linears,
85M weights): what one job spends fitting level sets and freezing its partitions.

    python benchmarks/quantize_bench.py [--device cuda]

For each mode and bit width: the time of the four partitions [0.5, 0.75, 0.875, 1.0] (level-set
fit at the first, top-k selection and projection at each), median of --repeat runs (default 3).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from quantlib.configs import LinearINQConfig, MultiBitINQConfig, Pow2INQConfig
from quantlib.inq import INQController
from quantlib.stages import TrainingStage

SHAPES = [(768, 768)] * 4 + [(3072, 768), (768, 3072)]  # Q, K, V, attn out, FFN in, FFN out
STEPS = (0.5, 0.75, 0.875, 1.0)


def bert_weights(device: str) -> dict[str, torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    return {f"layer{i}.{j}": torch.nn.Parameter((torch.randn(*s, generator=g) * 0.04).to(device))
            for i in range(12) for j, s in enumerate(SHAPES)}


def run(cfg, device: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        weights = bert_weights(device)
        c = INQController(weights, cfg, [TrainingStage(str(f), 1.0, f) for f in STEPS])
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for f in STEPS:
            c.freeze(f)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        c.remove_hooks()
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--bits", default="2,4,8")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    n = sum(a * b for a, b in SHAPES) * 12
    print(f"{n / 1e6:.1f}M weights on {args.device} ({torch.get_num_threads()} threads)")
    for name, cls in (("lin", LinearINQConfig), ("p2", Pow2INQConfig), ("mb", MultiBitINQConfig)):
        for b in (int(x) for x in args.bits.split(",")):
            print(f"| {name} | {b} | {run(cls(nbits=b), args.device, args.repeat):.2f} s |")


if __name__ == "__main__":
    main()
