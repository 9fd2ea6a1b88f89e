"""Symmetric fake quantization (quantize, then dequantize, in floating point) and the
TensorQuantizer module that QAT and PTQ insert into a model.

    scale = max_bound / amax,  q = clamp(round(x * scale), min_bound, max_bound),  x_hat = q / scale
    max_bound = 2^(b-1) - 1;  min_bound = -max_bound (narrow range, Q8BERT) or -max_bound - 1
    (full range, FasterTransformer's default); amax <= 2^-24 gives 0.

Where amax comes from (`amax_mode`):
- "static":  a buffer set by calibration (PTQ/QAT); frozen.
- "dynamic": recomputed from the tensor at every forward (Q8BERT weights: max|W|), per tensor, per
             output channel (axis 0), per group of output rows, or per token (last dim reduced).
- "ema":     Q8BERT activations: first step amax = max|x|, then amax -= (1-decay)(amax - max|x|)
             in training; frozen in eval.
Gradients: straight-through, unchanged ("plain", Q8BERT) or zeroed where |x| > amax ("clip",
pytorch-quantization).
"""

from __future__ import annotations

import torch
from torch import nn

TINY_AMAX = 2.0 ** -24
AMAX_MODES = ("static", "dynamic", "ema")
GRANULARITIES = ("tensor", "channel", "group", "token")


def bounds(nbits: int, narrow: bool) -> tuple[int, int]:
    if not 2 <= nbits <= 16:
        raise ValueError(f"symmetric fake quantization needs 2..16 bits, got {nbits}")
    top = 2 ** (nbits - 1) - 1
    return (-top if narrow else -top - 1), top


class _FakeQuant(torch.autograd.Function):
    """clamp(round(x / step), qmin, qmax) * step, in place on one temporary (torch's fused
    fake_quantize kernels are about 10x slower on CPU: benchmarks/RESULTS.md)."""

    @staticmethod
    def forward(ctx, x, step, amax, qmin: int, qmax: int, clip: bool):
        y = x / step
        y.round_().clamp_(qmin, qmax).mul_(step)
        ctx.clip = clip
        if clip:
            ctx.save_for_backward(x.abs() <= amax)
        return y

    @staticmethod
    def backward(ctx, grad):
        if ctx.clip:
            (inside,) = ctx.saved_tensors
            grad = grad * inside
        return grad, None, None, None, None, None


def fake_quant(x: torch.Tensor, amax: torch.Tensor | float, nbits: int, *, narrow: bool = False,
               clip: bool = False) -> torch.Tensor:
    """Fake-quantize x with amax broadcast against it: a scalar, per channel of dim 0
    ((C, 1, ...)) or per token ((..., 1)). clip: the gradient is zero where |x| > amax; else
    it passes unchanged."""
    qmin, qmax = bounds(nbits, narrow)
    if x.dtype in (torch.float16, torch.bfloat16):  # mixed precision: round in float32
        return fake_quant(x.float(), amax, nbits, narrow=narrow, clip=clip).to(x.dtype)
    if not isinstance(amax, torch.Tensor):
        amax = torch.tensor(float(amax), device=x.device)
    amax = amax.detach().to(device=x.device, dtype=x.dtype)
    live = amax > TINY_AMAX
    step = torch.where(live, amax / qmax, torch.ones_like(amax))
    out = _FakeQuant.apply(x, step, amax, qmin, qmax, clip)
    if x.is_cuda or not bool(live.all()):  # amax ~ 0 gives 0 (no host sync on the GPU)
        out = out * live
    return out


def quantize_int(x: torch.Tensor, scale: torch.Tensor, nbits: int, narrow: bool) -> torch.Tensor:
    """The integers behind fake_quant (as floats): clamp(round(x * scale))."""
    qmin, qmax = bounds(nbits, narrow)
    return torch.clamp(torch.round(x * scale), qmin, qmax)


def _absmax(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """max|x| in one pass (no |x| temporary)."""
    lo, hi = torch.aminmax(x, dim=dim, keepdim=keepdim)
    return torch.maximum(hi, -lo)


def reduce_amax(x: torch.Tensor, granularity: str, groups: int = 1) -> torch.Tensor:
    """max|x| per tensor (scalar), per channel of dim 0 ((C, 1, ...)), per group of dim-0 rows
    (rows are split into `groups` contiguous groups; (C, 1, ...)) or per token (last dim)."""
    x = x.detach()
    if granularity == "tensor":
        return _absmax(x)
    if granularity == "token":
        return _absmax(x, dim=-1, keepdim=True)
    rows = _absmax(x.reshape(x.shape[0], -1), dim=1)
    if granularity == "group":
        n = rows.numel()
        g = max(1, min(groups, n))
        index = torch.arange(n, device=rows.device) * g // n
        per_group = torch.zeros(g, dtype=rows.dtype, device=rows.device).scatter_reduce(
            0, index, rows, reduce="amax", include_self=False)
        rows = per_group[index]
    elif granularity != "channel":
        raise ValueError(f"unknown granularity {granularity!r}")
    return rows.view(-1, *([1] * (x.dim() - 1)))


class TensorQuantizer(nn.Module):
    """Fake-quantizes what passes through it; collects statistics while calibrating.

    `enabled` (quantize) and `calibrating` are plain attributes set by the recipe,
    not state: a recipe re-derives them when a job resumes. `amax` and the EMA step count are
    buffers, so they travel in checkpoints.
    """

    def __init__(self, nbits: int = 8, *, amax_mode: str = "static", granularity: str = "tensor",
                 groups: int = 1, narrow: bool = False, ste: str = "plain",
                 decay: float = 0.9999, amax_shape: tuple[int, ...] = ()):
        super().__init__()
        if amax_mode not in AMAX_MODES:
            raise ValueError(f"amax_mode must be one of {AMAX_MODES}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}")
        if ste not in ("plain", "clip"):
            raise ValueError("ste must be 'plain' or 'clip'")
        bounds(nbits, narrow)
        self.nbits, self.amax_mode, self.granularity = nbits, amax_mode, granularity
        self.groups, self.narrow, self.ste, self.decay = groups, narrow, ste, decay
        self.register_buffer("amax", torch.zeros(amax_shape))
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))
        self.enabled = False
        self.calibrating = False
        self.calibrator = None  # set by quantlib.calibrators.attach
        # ONNX export (quantlib.export_onnx): the int8 scale, per tensor (a float) or per
        # channel (a tensor), fixed before tracing; the forward then emits torch's fake-quantize
        # ops, which the exporter writes as QuantizeLinear / DequantizeLinear
        self.export_scale: float | torch.Tensor | None = None

    def extra_repr(self) -> str:
        return (f"nbits={self.nbits}, amax={self.amax_mode}/{self.granularity}, "
                f"narrow={self.narrow}, ste={self.ste}, enabled={self.enabled}")

    @torch.no_grad()
    def _update_ema(self, x: torch.Tensor) -> None:
        current = _absmax(x.detach()).to(self.amax.dtype)
        moved = self.amax - (1.0 - self.decay) * (self.amax - current)
        self.amax.copy_(torch.where(self.ema_steps == 0, current, moved))  # no host sync
        self.ema_steps += 1

    def current_amax(self, x: torch.Tensor) -> torch.Tensor:
        if self.amax_mode == "dynamic":
            return reduce_amax(x, self.granularity, self.groups)
        return self.amax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating and self.calibrator is not None:
            self.calibrator.collect(x.detach())
        # EMA (nlp-architect): the first value seen while on, in training, then the moving
        # average; a quantizer switched on later (the Q8BERT head) starts it then
        if self.amax_mode == "ema" and self.training and self.enabled:
            self._update_ema(x)
        if not self.enabled:
            return x
        if self.export_scale is not None:
            if isinstance(self.export_scale, torch.Tensor):
                zero = torch.zeros(self.export_scale.numel(), dtype=torch.int32)
                return torch.fake_quantize_per_channel_affine(x, self.export_scale, zero, 0,
                                                              -128, 127)
            return torch.fake_quantize_per_tensor_affine(x, self.export_scale, 0, -128, 127)
        return fake_quant(x, self.current_amax(x), self.nbits, narrow=self.narrow,
                          clip=self.ste == "clip")

    def scale(self, x: torch.Tensor | None = None) -> torch.Tensor:
        """max_bound / amax (0 where amax is ~0), for the integer inference path."""
        amax = self.current_amax(x) if x is not None else self.amax
        top = 2 ** (self.nbits - 1) - 1
        return torch.where(amax > TINY_AMAX, top / amax.clamp_min(TINY_AMAX),
                           torch.zeros_like(amax))
