"""GPTQ: weight-only post-training quantization by approximate second-order error correction.

Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers", ICLR 2023 (arXiv:2210.17323), of the Optimal Brain Quantization
family; the reference is the authors' code (github.com/IST-DASLab/gptq, gptq.py `GPTQ.add_batch`
and `GPTQ.fasterquant`, quant.py `Quantizer.find_params` and `quantize`), reproduced here step
by step:

- the layer's Hessian of the squared output error, H = 2/N sum_x x x^T over the N inputs it
  sees (here: every real token; padded positions carry no input and are left out);
- dead inputs (H_jj = 0): H_jj = 1 and the column's weights 0; dampening: damp * mean(diag H)
  added to the diagonal; the upper Cholesky factor of H^-1;
- the columns in order (act_order: by decreasing H_jj), in blocks of block_size: each column
  rounded to its grid, its error (w - q) / [H^-1]_jj spread over the columns not yet quantized
  of the block at once, the block's errors over the rest after the block ("lazy batch");
- the grid: asymmetric min-max per output channel (quant.py's default; sym: symmetric), over
  the whole row, or with group_size over each group of group_size columns as the group's first
  column is reached (from the weights as updated up to the last block boundary, as the
  reference does).

`quantize_layers` runs it layer by layer on a BERT: each encoder layer's Linears get their
Hessians from the inputs they see with the layers before them already quantized, then the head.
Weights are stored back dequantized (fake-quantized, FP32 on disk; model_size counts them at
`nbits` with their scales and zero points).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from quantlib import bitwidths
from quantlib.model_size import Code
from quantlib.packed import Packed, from_gptq
from quantlib.stages import select_linears


def find_params(w: torch.Tensor, maxq: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of `w`: the grid's scale and zero point (each (rows, 1)), as quant.py's
    Quantizer.find_params(w, weight=True) with perchannel=True and mse=False."""
    zeros = torch.zeros(w.shape[0], device=w.device)
    xmin = torch.minimum(w.min(1)[0], zeros)
    xmax = torch.maximum(w.max(1)[0], zeros)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        negative = xmin < 0
        xmin[negative] = -xmax[negative]
    flat = (xmin == 0) & (xmax == 0)
    xmin[flat], xmax[flat] = -1.0, 1.0
    scale = (xmax - xmin) / maxq
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
    return scale.unsqueeze(1), zero.unsqueeze(1)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int
             ) -> torch.Tensor:
    """x rounded to the grid and dequantized: scale * (clamp(round(x / scale) + zero) - zero)."""
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


@dataclass
class Result:
    """One layer's quantization: the dequantized weights, the number of scale / zero-point
    groups per row, the proxy loss sum((w - q)^2 / [H^-1]_jj^2) / 2 of fasterquant, and the
    grid itself: each weight's integer code (0..2^b-1, in the weight's own column order) and
    each group's scale and zero point per row ((rows, groups), the groups in the order the
    columns were quantized: with act_order, of the permuted columns, `perm` that order)."""

    weight: torch.Tensor
    loss: float
    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    perm: torch.Tensor | None = None

    @property
    def groups(self) -> int:
        return self.scales.shape[1]


def hessian_damped_inverse_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """The upper Cholesky factor of (H + damp * mean(diag H) I)^-1 (H already has its dead
    inputs' diagonal set to 1)."""
    h = h.clone()
    idx = torch.arange(h.shape[0], device=h.device)
    h[idx, idx] += damp * torch.mean(torch.diag(h))
    h = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(h, upper=True)


def gptq_weight(weight: torch.Tensor, hessian: torch.Tensor, nbits: int, *, group_size: int = 0,
                act_order: bool = False, damp: float = 0.01, block_size: int = 128,
                sym: bool = False) -> Result:
    """GPTQ of one weight matrix (out x in) given the Hessian (in x in) of its layer's inputs:
    fasterquant's steps with groupsize = group_size or -1, static_groups=False."""
    maxq = 2 ** nbits - 1
    w = weight.detach().clone().float()
    h = hessian.detach().clone().float()
    columns = w.shape[1]
    scale, zero = find_params(w, maxq, sym)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(h), descending=True)
        w, h = w[:, perm], h[perm][:, perm]
    hinv = hessian_damped_inverse_factor(h, damp)
    q_all = torch.zeros_like(w)
    ints = torch.zeros_like(w)
    losses = torch.zeros_like(w)
    grids: list[tuple[torch.Tensor, torch.Tensor]] = [] if group_size else [(scale, zero)]
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col, d = w1[:, i], hinv1[i, i]
            if group_size and (i1 + i) % group_size == 0:
                scale, zero = find_params(w[:, i1 + i:i1 + i + group_size], maxq, sym)
                grids.append((scale, zero))
            q = quantize(col.unsqueeze(1), scale, zero, maxq).flatten()
            ints[:, i1 + i] = torch.clamp(torch.round(col.unsqueeze(1) / scale) + zero, 0,
                                          maxq).flatten()
            q1[:, i] = q
            losses[:, i1 + i] = (col - q) ** 2 / d ** 2 / 2
            err = (col - q) / d
            w1[:, i:] -= err.unsqueeze(1).matmul(hinv1[i, i:].unsqueeze(0))
            err1[:, i] = err
        q_all[:, i1:i2] = q1
        w[:, i2:] -= err1.matmul(hinv[i1:i2, i2:])
    if perm is not None:
        inverse = torch.argsort(perm)
        q_all, ints = q_all[:, inverse], ints[:, inverse]
    return Result(q_all.to(weight.dtype), float(losses.sum()),
                  ints.to(torch.uint8), torch.cat([s for s, _ in grids], 1),
                  torch.cat([z for _, z in grids], 1), perm)


def output_error(weight: torch.Tensor, quantized: torch.Tensor, hessian: torch.Tensor) -> float:
    """The layer's squared output error over its calibration inputs, tr((W-Q) H (W-Q)^T) with
    H = 2/N sum x x^T: what GPTQ minimises, to compare with round-to-nearest."""
    delta = (weight - quantized).float()
    return float(torch.einsum("ij,jk,ik->", delta, hessian.float(), delta))


def rtn_weight(weight: torch.Tensor, nbits: int, group_size: int = 0, sym: bool = False
               ) -> torch.Tensor:
    """Round-to-nearest on the same grid (per row or per group of columns): the baseline."""
    maxq = 2 ** nbits - 1
    w = weight.detach().float()
    out = torch.empty_like(w)
    step = group_size or w.shape[1]
    for c in range(0, w.shape[1], step):
        scale, zero = find_params(w[:, c:c + step], maxq, sym)
        out[:, c:c + step] = quantize(w[:, c:c + step], scale, zero, maxq)
    return out.to(weight.dtype)


class Hessian:
    """H = 2/N sum x x^T over the inputs seen so far, accumulated as add_batch does (the running
    mean rescaled as samples arrive), in float32 on the layer's device."""

    def __init__(self, columns: int, device: torch.device):
        self.h = torch.zeros(columns, columns, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        """x: (tokens, in_features)."""
        if x.shape[0] == 0:
            return
        self.h *= self.n / (self.n + x.shape[0])
        self.n += x.shape[0]
        x = math.sqrt(2 / self.n) * x.float()
        self.h += x.t().matmul(x)


class _Reached(Exception):
    """Raised by a hook to end a forward pass once the layers being calibrated have run."""


_LAYER = re.compile(r"\.layer\.(\d+)\.")


def layer_groups(names: Iterable[str]) -> list[list[str]]:
    """The selected Linears in the order GPTQ quantizes them: by encoder layer (the index in
    `...layer.N.`), then every Linear outside the encoder layers (pooler, head) together."""
    by_layer: dict[int, list[str]] = {}
    rest: list[str] = []
    for name in names:
        m = _LAYER.search(name)
        (by_layer.setdefault(int(m.group(1)), []) if m else rest).append(name)
    groups = [by_layer[i] for i in sorted(by_layer)]
    return groups + ([rest] if rest else [])


def _encoder_layer(model: nn.Module, linear_name: str) -> nn.Module | None:
    m = _LAYER.search(linear_name)
    return model.get_submodule(linear_name[:m.end() - 1]) if m else None


def _hessians(model: nn.Module, group: dict[str, nn.Linear], inputs: list[dict],
              device: torch.device) -> dict[str, torch.Tensor]:
    """The Hessians of one layer's Linears from the inputs they see: the model run on every
    batch as it is now (the layers before already quantized), up to the end of their layer."""
    hessians = {n: Hessian(m.in_features, device) for n, m in group.items()}
    mask: list[torch.Tensor | None] = [None]

    def collect(name: str):
        def hook(module, args, output):  # noqa: ARG001
            x = args[0]
            if x.dim() == 3 and mask[0] is not None:  # (batch, seq, in): the real tokens only
                x = x[mask[0].bool()]
            hessians[name].add(x.reshape(-1, x.shape[-1]))
        return hook

    def stop(module, args, output):  # noqa: ARG001
        raise _Reached

    handles = [m.register_forward_hook(collect(n)) for n, m in group.items()]
    layer = _encoder_layer(model, next(iter(group)))
    if layer is not None:  # nothing after this layer is needed for its Hessians
        handles.append(layer.register_forward_hook(stop))
    try:
        for batch in inputs:
            mask[0] = batch.get("attention_mask")
            try:
                model(**batch)
            except _Reached:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return {n: h.h for n, h in hessians.items()}


@torch.no_grad()
def quantize_layers(model: nn.Module, batches: list[dict], patterns: Iterable[str], nbits: int,
                    *, group_size: int = 0, act_order: bool = False, damp: float = 0.01,
                    block_size: int = 128, sym: bool = False,
                    nbits_per_module: dict[str, int] | None = None
                    ) -> tuple[dict[str, Code], dict[str, float], dict[str, Packed]]:
    """GPTQ of every nn.Linear `patterns` select, layer after layer, from the calibration
    `batches` (model inputs; labels are ignored). Returns the weights' storage (for
    model_size), what to record (layers, the summed output errors of GPTQ and of
    round-to-nearest on the same grids and their ratio) and each weight's grid (its codes,
    scales and zero points: quantlib.packed, for the export)."""
    linears = select_linears(model, patterns, required=True)
    bitwidths.require_matched(linears, nbits_per_module)
    bits = bitwidths.assign(linears, nbits, nbits_per_module)  # each layer's (mixed precision)
    device = next(model.parameters()).device
    inputs = [{k: v.to(device) for k, v in b.items()
               if k not in ("labels", "start_positions", "end_positions")} for b in batches]
    if not inputs:
        raise RuntimeError("GPTQ got no calibration batches")
    was_training = model.training
    model.eval()
    codes: dict[str, Code] = {}
    grids: dict[str, Packed] = {}
    gptq_err = rtn_err = 0.0
    try:
        for group in layer_groups(linears):
            hessians = _hessians(model, {n: linears[n] for n in group}, inputs, device)
            for name in group:
                layer, h = linears[name], hessians[name]
                b = bits[name]
                done = gptq_weight(layer.weight, h, b, group_size=group_size,
                                   act_order=act_order, damp=damp, block_size=block_size,
                                   sym=sym)
                gptq_err += output_error(layer.weight, done.weight, h)
                rtn_err += output_error(layer.weight, rtn_weight(layer.weight, b, group_size,
                                                                 sym), h)
                layer.weight.copy_(done.weight)
                grids[f"{name}.weight"] = from_gptq(done, b, group_size, done.perm)
                # a scale (FP32) per group and row; an asymmetric grid adds its zero point
                per_group = 4 + (0 if sym else math.ceil(b / 8))
                codes[f"{name}.weight"] = Code(b, done.groups * layer.out_features * per_group)
    finally:
        model.train(was_training)
    return codes, {"gptq_layers": float(len(linears)), "gptq_output_error": gptq_err,
                   "rtn_output_error": rtn_err,
                   "gptq_error_vs_rtn": gptq_err / rtn_err if rtn_err else 0.0}, grids
