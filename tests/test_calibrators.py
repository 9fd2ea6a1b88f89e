"""Calibrators on synthetic distributions with known answers, and the vectorised histogram
methods against literal, loop-by-loop transcriptions of pytorch-quantization's algorithms."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from quantlib.calibrators import (
    HistogramCalibrator,
    MaxCalibrator,
    amax_entropy,
    amax_mse,
    amax_percentile,
)


def test_max_per_tensor_and_per_channel():
    c = MaxCalibrator()
    c.collect(torch.tensor([0.5, -2.0]))
    c.collect(torch.tensor([1.5, -0.1]))
    assert float(c.compute_amax()) == 2.0
    c = MaxCalibrator("channel")
    c.collect(torch.tensor([[1.0, -4.0], [0.5, 0.2]]))
    c.collect(torch.tensor([[2.0, 0.0], [-0.1, 0.3]]))
    assert torch.equal(c.compute_amax().squeeze(1), torch.tensor([4.0, 0.5]))


def test_histogram_grows_with_bins_of_the_same_width():
    c = HistogramCalibrator("percentile", num_bins=100)
    a = torch.linspace(0, 1, 1001)
    b = torch.linspace(-1.5, 1.5, 777)
    c.collect(a)
    c.collect(b)
    assert int(c.hist.sum()) == a.numel() + b.numel()
    width = float(c.edges[1] - c.edges[0])
    assert width == pytest.approx(0.01)
    assert c.edges.numel() - 1 == 150
    expected, _ = np.histogram(np.concatenate([a.numpy(), b.abs().numpy()]),
                               bins=c.edges.numpy())
    assert np.abs(c.hist.numpy() - expected).max() <= 2  # float edges may move a boundary value


@pytest.mark.parametrize("p", [99.0, 99.99, 99.999])
def test_percentile_of_a_known_sample(p):
    x = torch.arange(100_000, dtype=torch.float32) / 100_000  # uniform on [0, 1)
    c = HistogramCalibrator("percentile", percentile=p)
    c.collect(x)
    width = float(c.edges[1])
    assert float(c.compute_amax()) == pytest.approx(np.percentile(x.numpy(), p), abs=width)


def test_percentile_is_the_left_edge_of_the_bin_where_the_cdf_reaches_p():
    hist = np.array([50, 30, 15, 4, 1])
    edges = np.arange(6.0)
    assert amax_percentile(hist, edges, 80) == 1.0  # cdf 0.5, 0.8 -> bin 1
    assert amax_percentile(hist, edges, 99) == 3.0  # cdf 0.95, 0.99 -> bin 3
    assert amax_percentile(hist, edges, 100) == 4.0


# -- literal transcriptions of the reference loops ---------------------------------------
def reference_mse(hist, edges, nbits, start_bin):
    counts = torch.from_numpy(hist).float()
    e = torch.from_numpy(edges).float()
    centers = (e[1:] + e[:-1]) / 2
    mses, args = [], []
    for i in range(start_bin, len(centers)):
        amax = centers[i]
        scale = (2 ** (nbits - 1) - 1) / amax
        quant = torch.clamp(torch.round(centers * scale), -(2 ** (nbits - 1) - 1),
                            2 ** (nbits - 1) - 1) / scale
        mses.append(float(((quant - centers) ** 2 * counts).mean()))
        args.append(i)
    return float(centers[args[int(np.argmin(mses))]])


def reference_entropy(hist, edges, nbits, start_bin):
    bins = hist.copy()
    bins[0] = bins[1]
    total = np.sum(bins)
    nbins = 1 << (nbits - 1)
    div = []
    new_counts = np.zeros(nbins, dtype=np.float64)
    for i in range(start_bin, len(bins) + 1):
        new_counts.fill(0)
        space = np.linspace(0, i, num=nbins + 1)
        dig = np.digitize(range(i), space) - 1
        dig[bins[:i] == 0] = -1
        for idx, d in enumerate(dig):
            if d != -1:
                new_counts[d] += bins[idx]
        for key, val in Counter(dig).items():
            if key != -1:
                new_counts[key] = new_counts[key] / val
        new = np.zeros(i, dtype=np.float64)
        for idx, d in enumerate(dig):
            if d != -1:
                new[idx] = new_counts[d]
        ref = np.array(bins[:len(dig)], dtype=np.float64)
        ref[-1] += np.sum(bins[i:])
        assert round(np.sum(new) + np.sum(bins[i:])) == total
        p, q = ref / ref.sum(), new / new.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * np.log(p / q), 0.0)
        div.append(float(np.sum(terms)))
    d = np.array(div)
    return float(edges[len(d) - 1 - int(np.argmin(d[::-1])) + start_bin])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_histogram_methods_equal_the_reference_loops(seed):
    rng = np.random.default_rng(seed)
    x = np.abs(np.concatenate([rng.normal(0, 1, 20000), rng.normal(0, 6, 60)]))
    hist, edges = np.histogram(x, bins=400, range=(0, x.max()))
    assert amax_mse(hist, edges, 6, 64) == pytest.approx(reference_mse(hist, edges, 6, 64))
    assert amax_entropy(hist, edges, 5, 64) == reference_entropy(hist, edges, 5, 64)


@pytest.mark.parametrize("method", ["mse", "entropy"])
def test_no_clipping_without_outliers_and_clipping_with_them(method):
    g = torch.Generator().manual_seed(0)
    uniform = torch.rand(200_000, generator=g) * 2 - 1  # |x| uniform on [0, 1]
    c = HistogramCalibrator(method)
    c.collect(uniform)
    assert float(c.compute_amax()) > 0.9  # nothing to clip: about the max
    gauss = torch.randn(200_000, generator=g)
    gauss[:20] = 50.0  # a few far outliers
    c = HistogramCalibrator(method, nbits=4)  # coarse steps: clipping 20 values pays off
    c.collect(gauss)
    amax = float(c.compute_amax())
    assert 2.0 < amax < 10.0  # clips the outliers, keeps the bulk (|x| < 4.5 holds 99.999%)
