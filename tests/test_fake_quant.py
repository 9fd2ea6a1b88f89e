"""Fake quantization against torch's own kernels, STE variants, the EMA formula, amax
granularities and the Q8BERT integer inference path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantlib.fake_quant import TensorQuantizer, bounds, fake_quant, reduce_amax
from quantlib.qmodules import QuantLinear


def _close_up_to_one_step(ours: torch.Tensor, ref: torch.Tensor, step: torch.Tensor) -> None:
    """Equal, except at rounding ties where the two may pick neighbouring levels."""
    diff = (ours - ref).abs()
    assert torch.all(diff <= step * 1.0001 + 1e-7)
    assert (diff > 1e-6).float().mean() < 0.01  # ties are rare


@pytest.mark.parametrize("nbits", range(2, 9))
@pytest.mark.parametrize("narrow", [False, True])
def test_per_tensor_matches_torch(nbits, narrow):
    g = torch.Generator().manual_seed(nbits)
    x = torch.randn(64, 96, generator=g) * 0.7
    amax = torch.tensor(1.3)  # some values clip
    qmin, qmax = bounds(nbits, narrow)
    ours = fake_quant(x, amax, nbits, narrow=narrow)
    ref = torch.fake_quantize_per_tensor_affine(x, float(amax / qmax), 0, qmin, qmax)
    _close_up_to_one_step(ours, ref, amax / qmax)
    by_definition = torch.clamp(torch.round(x * (qmax / amax)), qmin, qmax) * (amax / qmax)
    _close_up_to_one_step(ours, by_definition, amax / qmax)
    assert ours.unique().numel() <= qmax - qmin + 1
    assert float(ours.max()) == pytest.approx(float(amax)) and (
        float(ours.min()) == pytest.approx(qmin * float(amax) / qmax))


@pytest.mark.parametrize("nbits", [2, 4, 8])
def test_per_channel_matches_torch(nbits):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 40, generator=g) * torch.linspace(0.01, 2, 16).unsqueeze(1)
    amax = reduce_amax(w, "channel")
    assert amax.shape == (16, 1)
    assert torch.equal(amax.squeeze(1), w.abs().amax(dim=1))
    qmin, qmax = bounds(nbits, narrow=False)
    ours = fake_quant(w, amax, nbits)
    scale = (amax.squeeze(1) / qmax).float()
    ref = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(16, dtype=torch.int32),
                                                 0, qmin, qmax)
    _close_up_to_one_step(ours, ref, (amax / qmax).expand_as(w))


def test_other_amax_shapes_follow_the_definition():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, generator=g)
    amax = torch.tensor([[0.5, 1.0, 1.5, 2.0, 0.0]])  # per column: no fused kernel for this
    ours = fake_quant(x, amax, 4, narrow=True)
    step = amax / 7
    expected = torch.where(amax > 0, torch.clamp(torch.round(x / step), -7, 7) * step,
                           torch.zeros_like(x))
    _close_up_to_one_step(ours, expected, step.expand_as(x))
    assert torch.equal(ours[:, 4], torch.zeros(6))


def test_values_by_hand_and_tiny_amax():
    x = torch.tensor([-1.0, -0.26, 0.0, 0.24, 0.51, 2.0])
    # 3 bits narrow: levels k/3 for k in -3..3 with amax 1
    assert torch.allclose(fake_quant(x, 1.0, 3, narrow=True),
                          torch.tensor([-1.0, -1 / 3, 0.0, 1 / 3, 2 / 3, 1.0]))
    # full range reaches -4/3 * amax / ... : min level -4 * (1/3)
    assert torch.allclose(fake_quant(torch.tensor([-2.0]), 1.0, 3), torch.tensor([-4 / 3]))
    assert torch.equal(fake_quant(x, 2.0 ** -25, 8), torch.zeros_like(x))


def test_ste_plain_and_clip():
    x = torch.tensor([-3.0, -0.5, 0.2, 0.9, 1.5], requires_grad=True)
    fake_quant(x, 1.0, 8).sum().backward()
    assert torch.equal(x.grad, torch.ones(5))
    x.grad = None
    fake_quant(x, 1.0, 8, clip=True).sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))


def test_ema_follows_the_formula_and_freezes_in_eval():
    q = TensorQuantizer(8, amax_mode="ema", narrow=True, decay=0.9)
    q.enabled = True
    q.train()
    maxima = [2.0, 5.0, 1.0, 3.0]
    expected = None
    for m in maxima:
        q(torch.tensor([m, -m / 2, 0.1]))
        expected = m if expected is None else expected - (1 - 0.9) * (expected - m)
        assert float(q.amax) == pytest.approx(expected, rel=1e-6)
    assert int(q.ema_steps) == 4
    q.eval()
    q(torch.tensor([100.0]))
    assert float(q.amax) == pytest.approx(expected, rel=1e-6)  # frozen at eval
    out = q(torch.tensor([100.0]))
    assert float(out) == pytest.approx(expected, rel=1e-6)  # saturates at the threshold


def test_group_and_token_amax():
    w = torch.arange(1.0, 13.0).reshape(6, 2)  # row maxima 2, 4, ..., 12
    groups = reduce_amax(w, "group", groups=3).squeeze(1)
    assert torch.equal(groups, torch.tensor([4.0, 4.0, 8.0, 8.0, 12.0, 12.0]))
    x = torch.tensor([[[1.0, -3.0], [0.5, 0.3]]])
    assert torch.equal(reduce_amax(x, "token"), torch.tensor([[[3.0], [0.5]]]))
    q = TensorQuantizer(2, amax_mode="dynamic", granularity="token", narrow=True)
    q.enabled = True
    # 2 bits narrow: levels {-1, 0, 1} * amax per token
    assert torch.equal(q(x), torch.tensor([[[0.0, -3.0], [0.5, 0.5]]]))


def test_integer_inference_is_the_integer_gemm():
    g = torch.Generator().manual_seed(3)
    lin = nn.Linear(24, 10)
    with torch.no_grad():
        lin.bias.copy_(torch.randn(10, generator=g) * 0.3)
    x = torch.randn(5, 24, generator=g)
    QuantLinear.convert(lin, input=TensorQuantizer(8, amax_mode="ema", narrow=True),
                        weight=TensorQuantizer(8, amax_mode="dynamic", narrow=True),
                        integer_inference=True)
    for q in (lin.input_quantizer, lin.weight_quantizer):
        q.enabled = True
    lin.train()
    lin(x)  # one training step sets the EMA threshold to max|x|
    lin.eval()
    out = lin(x)
    # by hand, in integers
    s_x = 127 / x.abs().max().double()
    s_w = 127 / lin.weight.abs().max().double()
    q_x = torch.round(x.double() * s_x).long()
    q_w = torch.round(lin.weight.double() * s_w).long()
    q_b = torch.round(lin.bias.double() * s_x * s_w).long()
    acc = q_x @ q_w.t() + q_b  # int64 GEMM
    assert q_x.abs().max() <= 127 and q_w.abs().max() <= 127
    assert torch.allclose(out.double(), acc.double() / (s_x * s_w), atol=1e-6)
    # and the fake-quant path differs only by the bias rounding
    lin.integer_inference = False
    fq = lin(x)
    assert torch.all((fq - out).abs() <= 0.5 / (s_x * s_w) + 1e-5)
