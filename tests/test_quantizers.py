"""Quantizers at every bit width: level sets, saturation, AMQ error bounds, fake-quant agreement."""

from __future__ import annotations

import pytest
import torch

from quantlib.quantizers import (
    LinearQuantizer,
    MultiBitQuantizer,
    Pow2Quantizer,
    amq_fit,
    make_quantizer,
    max_levels,
    project_sorted,
)

BITS = range(1, 9)


def bert_like(rows=96, cols=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * 0.04


@pytest.mark.parametrize("b", BITS)
def test_linear_levels(b):
    w = bert_like()
    q = LinearQuantizer(b).fit(w).project(w)
    values = q.unique()
    s = w.abs().max()
    if b == 1:
        m = w.abs().mean()
        assert torch.allclose(values, torch.stack([-m, m]))
        assert torch.equal(q, torch.where(w >= 0, m, -m))
        return
    qmax = 2 ** (b - 1) - 1
    delta = s / qmax
    k = torch.round(values / delta)
    assert torch.allclose(values, k * delta, atol=1e-7)
    assert k.abs().max() <= qmax and len(values) <= max_levels("lin", b)
    assert q.abs().max() == pytest.approx(float(s), rel=1e-6)  # the top level is s itself
    assert (w - q).abs().max() <= delta / 2 + 1e-7  # round to nearest, nothing saturates


@pytest.mark.parametrize("b", [2, 3, 4, 5, 6, 7, 8])
def test_linear_agrees_with_torch_fake_quantize(b):
    w = bert_like(seed=b)
    quant = LinearQuantizer(b).fit(w)
    qmax = 2 ** (b - 1) - 1
    ref = torch.fake_quantize_per_tensor_affine(w, float(quant.scale), 0, -qmax, qmax)
    assert torch.allclose(quant.project(w), ref, atol=1e-7)
    wide = w * 3  # beyond the fitted range: saturates like the reference clamp
    assert torch.allclose(quant.project(wide),
                          torch.fake_quantize_per_tensor_affine(wide, float(quant.scale), 0,
                                                                -qmax, qmax), atol=1e-7)


def test_linear_per_row_scale_agrees_with_per_channel_fake_quantize():
    w = bert_like() * torch.linspace(0.5, 2, 96)[:, None]
    quant = LinearQuantizer(4, per_row=True).fit(w)
    ref = torch.fake_quantize_per_channel_affine(w, quant.scale.flatten(),
                                                 torch.zeros(96, dtype=torch.int32), 0, -7, 7)
    assert torch.allclose(quant.project(w), ref, atol=1e-7)


@pytest.mark.parametrize("b", BITS)
def test_pow2_levels(b):
    w = bert_like(seed=10 + b)
    quant = Pow2Quantizer(b).fit(w)
    q = quant.project(w)
    s = float(w.abs().max())
    if b == 1:
        top = 2.0 ** round(torch.log2(w.abs().mean()).item())
        assert set(q.unique().tolist()) == {-top, top}
        return
    n1 = int(torch.floor(torch.log2(torch.tensor(4 * s / 3))))
    n2 = n1 + 1 - 2 ** (b - 1) // 2
    allowed = {0.0} | {sgn * 2.0 ** e for e in range(n2, n1 + 1) for sgn in (1, -1)}
    assert len(allowed) == max_levels("p2", b) == 2 ** (b - 1) + 1
    assert set(q.unique().tolist()) <= allowed
    # saturation: far above the top level maps to +-2**n1, never to 0
    big = torch.tensor([[10 * s, -10 * s, 1.49 * 2.0 ** n1, 1.51 * 2.0 ** n1]])
    assert quant.project(big).tolist() == [[2.0 ** n1, -(2.0 ** n1), 2.0 ** n1, 2.0 ** n1]]
    if b >= 4:  # not the seed's 99.8% zeros: the grid follows the weights' scale
        assert (q == 0).float().mean() < 0.35


def test_pow2_nearest_level_and_ties():
    quant = Pow2Quantizer(4)
    quant.table = torch.tensor([[-1.0, -0.5, -0.25, -0.125, 0.0, 0.125, 0.25, 0.5, 1.0]])
    w = torch.tensor([[0.06, 0.0625, 0.07, 0.3, 0.375, -0.375, 0.74, 0.76, 5.0]])
    assert quant.project(w).tolist() == [[0.0, 0.125, 0.125, 0.25, 0.5, -0.5, 0.5, 1.0, 1.0]]


def test_pow2_b5_has_eight_magnitudes_and_zero():
    quant = Pow2Quantizer(5).fit(bert_like())
    levels = quant.levels()[0]
    assert len(levels) == 17 and (levels > 0).sum() == 8 and (levels == 0).sum() == 1


@pytest.mark.parametrize("k, bound", [(1, 0.61), (2, 0.36), (3, 0.22), (4, 0.15)])
def test_amq_error_bounds(k, bound):
    w = torch.randn(64, 1024, generator=torch.Generator().manual_seed(k)) * 0.04
    alphas, q = amq_fit(w, k, cycles=2)
    err = float((w - q).norm() / w.norm())
    assert err <= bound
    assert alphas.shape == (64, k)
    # every coordinate takes one of the 2**k values of its row
    for r in range(0, 64, 16):
        assert q[r].unique().numel() <= 2 ** k


def test_amq_alternation_improves_on_greedy():
    w = bert_like(64, 512, seed=3)
    _, greedy = amq_fit(w, 3, cycles=0)
    _, refined = amq_fit(w, 3, cycles=2)
    assert (w - refined).norm() < (w - greedy).norm()


def test_amq_assignment_is_exact_for_any_alpha_order():
    # alphas where a greedy binary-tree walk would be wrong: alpha_1 < alpha_2
    table = torch.tensor([[0.1, 1.0]]) @ torch.tensor([[-1.0, -1, 1, 1], [-1.0, 1, -1, 1]])
    levels = table.sort(dim=1).values  # [-1.1, -0.9, 0.9, 1.1]
    w = torch.tensor([[0.95, -0.05, 1.2, -1.0]])
    got = project_sorted(w, levels)
    brute = levels[0][(w[0, :, None] - levels[0][None]).abs().argmin(dim=1)]
    assert torch.equal(got[0], brute)


@pytest.mark.parametrize("b", BITS)
def test_multibit_projection_stays_on_row_levels(b):
    w = bert_like(32, 128, seed=b)
    quant = MultiBitQuantizer(b).fit(w)
    q = quant.project(w + 0.001)
    for r in range(32):
        assert set(q[r].tolist()) <= set(quant.table[r].tolist())


@pytest.mark.parametrize("mode", ["lin", "p2", "mb"])
@pytest.mark.parametrize("b", BITS)
def test_every_mode_and_width_is_finite_and_idempotent(mode, b):
    w = bert_like(16, 64, seed=b)
    quant = make_quantizer(mode, b).fit(w)
    q = quant.project(w)
    assert torch.isfinite(q).all()
    assert torch.equal(quant.project(q), q)  # projecting a level returns that level
    assert not torch.all(q == 0)


def test_rejects_bits_outside_range():
    with pytest.raises(ValueError, match="outside 1..8"):
        make_quantizer("lin", 9)


# -- inq_scale: mse -----------------------------------------------------------------------
def with_outliers(rows=24, cols=96, seed=0):
    """Weights of std 0.04 with a few outliers 12x larger, as BERT-base's encoder Linears."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.04
    idx = torch.randint(0, w.numel(), (6,), generator=g)
    w.view(-1)[idx] *= 12
    return w


def sq_err(w, q):
    return float((w.double() - q.double()).square().sum())


@pytest.mark.parametrize("b", [2, 3, 4, 8])
def test_linear_mse_scale_is_the_least_squares_step(b):
    """Brute force over 20,000 steps (the uniform symmetric grid k*delta, |k| <= 2**(b-1)-1,
    round to nearest, saturating): the chosen step is within 0.1 % of the best error, and
    never worse than the max rule."""
    w = with_outliers()
    qmax = 2 ** (b - 1) - 1
    deltas = torch.linspace(1e-4, 1.2, 20000, dtype=torch.float64) * float(w.abs().max()) / qmax
    wd = w.double().flatten()
    errs = [float((wd - torch.clamp(torch.round(wd / d), -qmax, qmax) * d).square().sum())
            for d in deltas]
    brute = min(errs)
    mse = make_quantizer("lin", b, scale_rule="mse").fit(w)
    paper = make_quantizer("lin", b).fit(w)
    assert sq_err(w, mse.project(w)) <= brute * (1 + 1e-3)
    assert sq_err(w, mse.project(w)) <= sq_err(w, paper.project(w))


def test_linear_mse_per_row_fits_each_row():
    w = with_outliers(rows=6)
    per_row = make_quantizer("lin", 3, per_row=True, scale_rule="mse").fit(w)
    for i in range(6):
        alone = make_quantizer("lin", 3, scale_rule="mse").fit(w[i:i + 1])
        assert torch.allclose(per_row.scale[i], alone.scale[0], rtol=1e-5)


def pow2_levels(n1, b):
    """The INQ paper's power-of-two set with top exponent n1, written out: {0, +-2^n2..2^n1},
    n2 = n1 + 1 - 2**(b-2); b = 1: {+-2^n1}."""
    if b == 1:
        return [-(2.0 ** n1), 2.0 ** n1]
    mags = [2.0 ** e for e in range(n1 + 1 - 2 ** (b - 2), n1 + 1)]
    return sorted([-m for m in mags] + [0.0] + mags)


@pytest.mark.parametrize("b", [1, 2, 3, 4, 6])
def test_pow2_mse_exponent_is_the_best_of_all(b):
    """Every top exponent from -30 to 5 tried by brute force (nearest level): the mse rule's
    level set has the least squared error of all."""
    w = with_outliers(seed=b)
    wd = w.double().flatten()

    def err(levels):
        lv = torch.tensor(levels, dtype=torch.float64)
        return float((wd - lv[(wd[:, None] - lv[None, :]).abs().argmin(dim=1)]).square().sum())

    brute = min(err(pow2_levels(n1, b)) for n1 in range(-30, 6))
    mse = make_quantizer("p2", b, scale_rule="mse").fit(w)
    assert sq_err(w, mse.project(w)) == pytest.approx(brute, rel=1e-9)
    assert mse.levels().flatten().tolist() in [pow2_levels(n1, b) for n1 in range(-30, 6)]


@pytest.mark.parametrize("mode", ["lin", "p2"])
def test_mse_scale_keeps_low_bit_bert_weights_off_zero(mode):
    """The issue's case: max-rule scales put (almost) every BERT-like weight on 0 at 2 and 3
    bits; the mse rule keeps most of them off it."""
    w = with_outliers(rows=64, cols=256)
    for b in (2, 3):
        paper = make_quantizer(mode, b).fit(w).project(w)
        mse = make_quantizer(mode, b, scale_rule="mse").fit(w).project(w)
        assert float((paper == 0).float().mean()) > 0.9
        assert float((mse == 0).float().mean()) < 0.6


def test_unknown_scale_rule_is_refused():
    with pytest.raises(ValueError, match="scale rule 'percentile'"):
        make_quantizer("lin", 4, scale_rule="percentile")
