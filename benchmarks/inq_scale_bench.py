"""INQ level sets under the two scale rules (`inq_scale: max | mse`) on BERT-like weights: the
share of weights that land on 0, the relative error ||W - Q(W)|| / ||W||, and the fit time.

    python benchmarks/inq_scale_bench.py [--bits 1,2,3,4,8] [--granularity tensor]

Weights: one BERT-base encoder layer's six Linear shapes, N(0, 0.04^2) with 0.01 % of the
entries 12x larger (BERT's few large outliers, which set max|W|).
"""

from __future__ import annotations

import argparse
import time

import torch

from quantlib.quantizers import make_quantizer

SHAPES = [(768, 768)] * 4 + [(3072, 768), (768, 3072)]


def bert_like_layer(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for shape in SHAPES:
        w = torch.randn(*shape, generator=g) * 0.04
        idx = torch.randint(0, w.numel(), (max(1, w.numel() // 10000),), generator=g)
        w.view(-1)[idx] *= 12
        out.append(w)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bits", default="1,2,3,4,5,8")
    p.add_argument("--granularity", default="tensor", choices=("tensor", "row"))
    args = p.parse_args()
    weights = bert_like_layer()
    total = sum(w.numel() for w in weights)
    print(f"{total / 1e6:.1f}M weights, {torch.get_num_threads()} threads, "
          f"per {args.granularity}")
    print("| mode | bits | rule | zeros | relative error | fit, one layer (s) |")
    print("|---|---:|---|---:|---:|---:|")
    for mode in ("lin", "p2"):
        for b in (int(x) for x in args.bits.split(",")):
            for rule in ("max", "mse"):
                zeros, err, norm, spent = 0, 0.0, 0.0, 0.0
                for w in weights:
                    start = time.perf_counter()
                    q = make_quantizer(mode, b, per_row=args.granularity == "row",
                                       scale_rule=rule).fit(w)
                    spent += time.perf_counter() - start
                    proj = q.project(w)
                    zeros += int((proj == 0).sum())
                    err += float((proj - w).double().square().sum())
                    norm += float(w.double().square().sum())
                print(f"| {mode} | {b} | {rule} | {zeros / total:.3f} | {(err / norm) ** 0.5:.3f} "
                      f"| {spent:.2f} |")


if __name__ == "__main__":
    main()
