"""Sparsity masks and the pattern lock, checked number by number."""

from __future__ import annotations

import itertools

import pytest
import torch

from quantlib.sparsity import (
    PatternLock,
    can_24,
    is_24,
    magnitude_masks,
    mask_24,
    nonzero_masks,
    sparsity_of,
)


def _brute_24(w: torch.Tensor) -> torch.Tensor:
    """The reference rule: per group of 4, the pattern of 2 kept with the largest sum |w|."""
    out = torch.zeros_like(w, dtype=torch.bool)
    for r in range(w.shape[0]):
        for c in range(0, w.shape[1], 4):
            group = w[r, c:c + 4].abs()
            best = max(itertools.combinations(range(4), 2),
                       key=lambda keep: float(group[list(keep)].sum()))
            for k in best:
                out[r, c + k] = True
    return out


def test_mask_24_keeps_the_two_largest_of_every_four():
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    m = mask_24(w)
    assert torch.equal(m, _brute_24(w))
    assert (m.reshape(-1, 4).sum(dim=1) == 2).all()
    assert sparsity_of({"w": w * m}) == 0.5 and is_24(w * m) and not is_24(w)
    by_hand = torch.tensor([[0.1, -3.0, 2.0, 0.5, 4.0, 0.0, 0.0, -4.5]])
    assert mask_24(by_hand).tolist() == [[False, True, True, False, True, False, False, True]]


def test_mask_24_dtype_and_shape_rules():
    w = torch.randn(8, 16).half()
    assert torch.equal(mask_24(w), _brute_24(w.float()))
    assert can_24(torch.zeros(8, 16)) and not can_24(torch.zeros(12, 16))
    assert not can_24(torch.zeros(8, 20)) and not can_24(torch.zeros(16))
    with pytest.raises(ValueError, match="divisible by 4"):
        mask_24(torch.zeros(8, 6))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_mask_24_on_gpu_equals_cpu():
    w = torch.randn(64, 128)
    assert torch.equal(mask_24(w.cuda()).cpu(), mask_24(w))


def test_magnitude_masks_layer_and_global():
    a = torch.tensor([[0.1, -0.5], [0.3, 2.0]])
    b = torch.tensor([[1.0, -0.2, 0.05, 0.4]])
    layer = magnitude_masks({"a": a, "b": b}, 0.5, "layer")
    assert layer["a"].tolist() == [[False, True], [False, True]]
    assert layer["b"].tolist() == [[True, False, False, True]]
    glob = magnitude_masks({"a": a, "b": b}, 0.5, "global")  # 4 smallest of 8: .05 .1 .2 .3
    assert glob["a"].tolist() == [[False, True], [False, True]]
    assert glob["b"].tolist() == [[True, False, False, True]]
    glob75 = magnitude_masks({"a": a, "b": b}, 0.75, "global")  # 6 of 8 go: keep 2.0, 1.0
    assert glob75["a"].tolist() == [[False, False], [False, True]]
    assert glob75["b"].tolist() == [[True, False, False, False]]
    torch.manual_seed(1)
    w = torch.randn(50, 40)
    m = magnitude_masks({"w": w}, 0.9)["w"]
    assert int((~m).sum()) == 1800  # exactly round(0.9 * 2000)
    assert w[m].abs().min() >= w[~m].abs().max()
    # ties at the threshold: the first in memory order go, the count stays exact
    tied = torch.tensor([0.5, 0.1, 0.5, 0.5, 0.9, 0.5])
    assert magnitude_masks({"t": tied}, 0.5)["t"].tolist() == [
        False, False, False, True, True, True]


def test_pattern_lock_keeps_zeros_through_adamw_with_weight_decay():
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8)
    with torch.no_grad():
        lin.weight.mul_(magnitude_masks({"w": lin.weight}, 0.6)["w"])  # a pre-sparsified weight
    before = lin.weight.detach() != 0
    lock = PatternLock({"weight": lin.weight}, lambda: nonzero_masks({"weight": lin.weight}))
    lock.lock()
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(5):
        loss = lin(torch.randn(4, 16)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        lock.on_pre_optimizer_step(None, None, None)
        assert (lin.weight.grad[~before] == 0).all()  # masked before the step
        assert (lin.weight.grad[before] != 0).all()
        opt.step()
        lock.on_optimizer_step(None, None, None)
    assert torch.equal(lin.weight.detach() != 0, before)
    assert sparsity_of({"w": lin.weight}) == pytest.approx(0.6, abs=1 / 128)
