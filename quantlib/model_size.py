"""What the compressed model needs, in bytes, and its ratio to the same architecture in FP32.

Per parameter (`model.named_parameters()`, a shared one counted once):
- FP32: 4 bytes per value.
- quantized weights: `bits` per value, packed (ceil(n * bits / 8) bytes), plus their scales:
  INQ lin a float32 step per tensor or row (1 bit: mean|w|), p2 an int8 exponent n1 per tensor
  or row (the level set follows from it), mb `b` float32 alphas per row; fake-quantized weights
  (Q8BERT, PTQ/QAT, distill-quant, sparse + QAT) a float32 amax per tensor, channel or group.
- sparse weights (the methods that lock a pattern: sparse24, magnitude, pruneofa): 2:4 keeps
  half the values plus a 2-bit index per kept value (the compressed layout of NVIDIA's sparse
  tensor cores); unstructured: the smallest of dense, a bitmap (1 bit per value + the non-zero
  values) and CSR (non-zero values + a column index per non-zero, 16-bit for at most 65,536
  columns, else 32-bit, + an int32 row pointer per row + 1).
- every activation quantizer that is on: a float32 amax per scale it keeps (none for one that
  is dynamic: its scale is computed at run time).
Buffers (position ids, EMA step counts) are in neither size. MB = 10^6 bytes. Each weight's own
bits count (mixed precision); `weight_bits_mean` is their mean over the quantized weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from quantlib.fake_quant import TensorQuantizer

MB = 1e6
FP32_BYTES = 4


@dataclass(frozen=True)
class Code:
    """How a quantized weight is stored: `bits` per value and `scale_bytes` beside them."""

    bits: int
    scale_bytes: int


def _weight_quantizer_scales(q: TensorQuantizer, w: torch.Tensor) -> int:
    if q.granularity == "channel":
        return w.shape[0]
    if q.granularity == "group":
        return q.groups
    return 1


def fake_quant_codes(model: nn.Module) -> dict[str, Code]:
    """The weights whose (enabled) weight quantizer sits on their module: QuantLinear,
    QuantEmbedding."""
    codes = {}
    for name, module in model.named_modules():
        q = getattr(module, "weight_quantizer", None)
        if isinstance(q, TensorQuantizer) and q.enabled:
            w = module.weight
            codes[f"{name}.weight" if name else "weight"] = Code(
                q.nbits, FP32_BYTES * _weight_quantizer_scales(q, w))
    return codes


def activation_scale_bytes(model: nn.Module) -> int:
    total = 0
    for name, q in model.named_modules():
        if (isinstance(q, TensorQuantizer) and q.enabled
                and not name.endswith("weight_quantizer") and q.amax_mode != "dynamic"):
            total += FP32_BYTES * q.amax.numel()
    return total


def _packed(n: int, bits: int) -> int:
    return math.ceil(n * bits / 8)


def dense_bytes(n: int, bits: int) -> int:
    return _packed(n, bits)


def sparse_24_bytes(n: int, bits: int) -> int:
    kept = n // 2
    return _packed(kept, bits) + _packed(kept, 2)


def unstructured_bytes(w: torch.Tensor, bits: int) -> int:
    """The smallest of dense, bitmap and CSR for this tensor's zeros."""
    n = w.numel()
    nnz = int(torch.count_nonzero(w.detach()))
    rows = w.shape[0] if w.dim() > 1 else 1
    cols = n // max(rows, 1)
    index_bytes = 2 if cols <= 65536 else 4
    csr = _packed(nnz, bits) + nnz * index_bytes + (rows + 1) * 4
    bitmap = _packed(n, 1) + _packed(nnz, bits)
    return min(dense_bytes(n, bits), bitmap, csr)


def param_bytes(w: torch.Tensor, code: Code | None, sparse: str | None) -> int:
    bits = code.bits if code else 32
    scales = code.scale_bytes if code else 0
    if sparse == "2:4":
        return sparse_24_bytes(w.numel(), bits) + scales
    if sparse == "unstructured":
        return unstructured_bytes(w, bits) + scales
    return dense_bytes(w.numel(), bits) + scales


def measure(model: nn.Module, codes: dict[str, Code] | None = None,
            sparse: dict[str, str] | None = None) -> dict[str, float]:
    """model_size_mb, fp32_size_mb and compression_ratio of the model as it is now. `codes`:
    weights quantized outside their module (INQ); `sparse`: weights stored sparse, with their
    pattern ("2:4" or "unstructured")."""
    codes = {**fake_quant_codes(model), **(codes or {})}
    sparse = sparse or {}
    size = fp32 = 0
    bits = values = 0
    for name, p in model.named_parameters():
        fp32 += FP32_BYTES * p.numel()
        code = codes.get(name)
        size += param_bytes(p, code, sparse.get(name))
        if code is not None:
            bits, values = bits + code.bits * p.numel(), values + p.numel()
    size += activation_scale_bytes(model)
    out = {"model_size_mb": size / MB, "fp32_size_mb": fp32 / MB,
           "compression_ratio": fp32 / size if size else 0.0}
    if values:  # bits per quantized weight (mixed precision: quantlib.bitwidths)
        out["weight_bits_mean"] = bits / values
    return out


def from_file(measured: dict[str, float], file_mb: float) -> dict[str, float]:
    """The size of a model written out (quantlib.packed): model_size_mb is the file's, the
    computed figure kept as model_size_computed_mb."""
    return {"model_size_mb": file_mb, "model_size_computed_mb": measured["model_size_mb"],
            "compression_ratio": measured["fp32_size_mb"] / file_mb if file_mb else 0.0}
