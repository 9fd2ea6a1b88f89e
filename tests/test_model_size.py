"""Model sizes counted by hand on small models: packed codes, scales, activation amax, 2:4 and
unstructured sparse layouts, and what stays FP32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantlib.fake_quant import TensorQuantizer
from quantlib.model_size import Code, measure, unstructured_bytes
from quantlib.qmodules import QuantLinear
from quantlib.quantizers import make_quantizer

FP32 = (16 * 8 + 8 + 8 + 8) * 4  # Linear(16 -> 8) weight + bias, LayerNorm(8) weight + bias


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.dense = nn.Linear(16, 8)
        self.norm = nn.LayerNorm(8)


REST = (8 + 8 + 8) * 4  # bias + LayerNorm: FP32 in every case below


def mb(n_bytes):
    return pytest.approx(n_bytes / 1e6)


def test_fp32_model_is_its_own_reference():
    sizes = measure(Tiny())
    assert sizes["fp32_size_mb"] == mb(FP32) and sizes["model_size_mb"] == mb(FP32)
    assert sizes["compression_ratio"] == 1.0


@pytest.mark.parametrize("mode,bits,per_row,expected", [
    ("lin", 4, False, 128 * 4 // 8 + 4),      # 64 bytes of codes + one float32 step
    ("lin", 1, True, 128 // 8 + 8 * 4),       # 16 + a mean|w| per row
    ("p2", 3, True, 128 * 3 // 8 + 8),        # 48 + an int8 exponent per row
    ("mb", 2, False, 128 * 2 // 8 + 8 * 2 * 4),  # 32 + 2 alphas per row
])
def test_inq_codes(mode, bits, per_row, expected):
    model = Tiny()
    q = make_quantizer(mode, bits, per_row=per_row).fit(model.dense.weight.detach())
    sizes = measure(model, {"dense.weight": Code(bits, q.scale_bytes())})
    assert sizes["model_size_mb"] == mb(expected + REST)
    assert sizes["compression_ratio"] == pytest.approx(FP32 / (expected + REST))


def test_packing_rounds_up_to_whole_bytes():
    model = nn.Linear(5, 1, bias=False)  # 5 values x 3 bits = 15 bits: 2 bytes
    assert measure(model, {"weight": Code(3, 0)})["model_size_mb"] == mb(2)


def test_fake_quantized_linear_with_activation_amax():
    model = Tiny()
    w = TensorQuantizer(8, granularity="channel", amax_shape=(8, 1))
    x = TensorQuantizer(8, amax_mode="ema")
    QuantLinear.convert(model.dense, input=x, weight=w)
    assert measure(model)["model_size_mb"] == mb(FP32)  # quantizers off: nothing changes
    w.enabled = x.enabled = True
    # 128 int8 codes + 8 per-channel float32 amax + the input's amax
    assert measure(model)["model_size_mb"] == mb(128 + 8 * 4 + 4 + REST)
    x.amax_mode = "dynamic"  # computed at run time: nothing stored
    assert measure(model)["model_size_mb"] == mb(128 + 8 * 4 + REST)


def test_sparse_24_keeps_half_the_values_and_2_bit_indices():
    model = Tiny()
    assert measure(model, sparse={"dense.weight": "2:4"})["model_size_mb"] == mb(
        64 * 4 + 64 * 2 // 8 + REST)
    assert measure(model, {"dense.weight": Code(8, 4)}, {"dense.weight": "2:4"})[
        "model_size_mb"] == mb(64 + 16 + 4 + REST)


def test_unstructured_takes_the_smallest_layout():
    w = torch.zeros(8, 16)
    w.view(-1)[torch.arange(0, 128, 10)] = 1.0  # 13 non-zeros
    # FP32 values: dense 512, bitmap 16 + 52 = 68, CSR 52 + 13*2 + 9*4 = 114
    assert unstructured_bytes(w, 32) == 68
    # 8-bit values: bitmap 16 + 13 = 29, CSR 13 + 26 + 36 = 75
    assert unstructured_bytes(w, 8) == 29
    one_row = torch.zeros(1, 4096)
    one_row[0, :3] = 1.0  # 3 non-zeros of 4096: CSR 12 + 6 + 8 = 26 beats bitmap 512 + 12
    assert unstructured_bytes(one_row, 32) == 26
    dense = torch.ones(8, 16)  # no zeros: dense 512 is the smallest
    assert unstructured_bytes(dense, 32) == 512
