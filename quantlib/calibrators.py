"""Calibrators for PTQ, computing what NVIDIA pytorch-quantization computes.

- MaxCalibrator: running max|x|, per tensor or per channel of dim 0.
- HistogramCalibrator: a 2048-bin histogram of |x| over [0, max]; when a later batch exceeds the
  range, bins of the same width are appended (torch.histc, on the tensor's device). amax from it:
  - percentile: the left edge of the bin where the CDF reaches p/100;
  - mse: the bin centre (from bin 128) minimising the count-weighted MSE of the fake-quantized
    bin centres (narrow range);
  - entropy: TensorRT's KL-divergence search: for every candidate i >= 128, the first i bins are
    merged into 2^(b-1) bins, expanded back over their non-empty bins, and compared with the
    reference (outliers folded into bin i-1); amax = edge i of the last minimum.
"""

from __future__ import annotations

import numpy as np
import torch

from quantlib.fake_quant import bounds, reduce_amax

CALIBRATORS = ("max", "percentile", "mse", "entropy")


class MaxCalibrator:
    def __init__(self, granularity: str = "tensor"):
        self.granularity = granularity
        self.amax: torch.Tensor | None = None

    def collect(self, x: torch.Tensor) -> None:
        current = reduce_amax(x.float(), self.granularity)
        self.amax = current if self.amax is None else torch.maximum(self.amax, current)

    def compute_amax(self) -> torch.Tensor:
        if self.amax is None:
            raise RuntimeError("the calibrator saw no data")
        return self.amax


class HistogramCalibrator:
    def __init__(self, method: str, nbits: int = 8, *, percentile: float = 99.99,
                 num_bins: int = 2048, start_bin: int = 128):
        if method not in ("percentile", "mse", "entropy"):
            raise ValueError(f"unknown histogram method {method!r}")
        if not 0 <= percentile <= 100:
            raise ValueError("percentile must be within 0..100")
        self.method, self.nbits, self.percentile = method, nbits, percentile
        self.num_bins, self.start_bin = num_bins, start_bin
        self.hist: torch.Tensor | None = None
        self.edges: torch.Tensor | None = None

    @torch.no_grad()
    def collect(self, x: torch.Tensor) -> None:
        x = x.detach().abs().float()
        x_max = x.max()
        if self.hist is None:
            self.hist = torch.histc(x, bins=self.num_bins, min=0, max=float(x_max))
            self.edges = torch.linspace(0, float(x_max), self.num_bins + 1, device=x.device)
            return
        width = self.edges[1] - self.edges[0]
        if x_max > self.edges[-1]:  # grow: append bins of the same width
            n = int(torch.ceil(x_max / width).item())
            self.edges = torch.arange(n + 1, device=x.device, dtype=torch.float32) * width
        n = self.edges.numel() - 1
        hist = torch.histc(x, bins=n, min=0, max=float(self.edges[-1]))
        hist[: self.hist.numel()] += self.hist
        self.hist = hist

    def compute_amax(self) -> torch.Tensor:
        if self.hist is None:
            raise RuntimeError("the calibrator saw no data")
        hist = self.hist.int().cpu().numpy().astype(np.int64)
        edges = self.edges.cpu().double().numpy()
        if self.method == "percentile":
            value = amax_percentile(hist, edges, self.percentile)
        elif self.method == "mse":
            value = amax_mse(hist, edges, self.nbits, self.start_bin)
        else:
            value = amax_entropy(hist, edges, self.nbits, self.start_bin)
        return torch.tensor(float(value))


def amax_percentile(hist: np.ndarray, edges: np.ndarray, percentile: float) -> float:
    cdf = np.cumsum(hist / hist.sum())
    return float(edges[np.searchsorted(cdf, percentile / 100)])


def amax_mse(hist: np.ndarray, edges: np.ndarray, nbits: int, start_bin: int = 128) -> float:
    counts = torch.from_numpy(hist).float()
    e = torch.from_numpy(edges).float()
    centers = (e[1:] + e[:-1]) / 2
    _, qmax = bounds(nbits, narrow=True)
    best, best_mse = None, None
    for chunk in torch.arange(start_bin, len(centers)).split(256):  # candidates, vectorised
        amax = centers[chunk].unsqueeze(1)
        scale = qmax / amax
        quant = torch.clamp(torch.round(centers * scale), -qmax, qmax) / scale
        mse = ((quant - centers) ** 2 * counts).mean(dim=1)
        i = int(torch.argmin(mse))
        if best_mse is None or mse[i] < best_mse:
            best, best_mse = int(chunk[i]), mse[i]
    if best is None:
        return float(edges[-1])
    return float(centers[best])


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """scipy.stats.entropy(p, q): both normalised, sum p*log(p/q); inf where q = 0 < p."""
    p = p / p.sum()
    qs = q.sum()
    if qs == 0:
        return float("inf")
    q = q / qs
    pos = p > 0
    if np.any(q[pos] == 0):
        return float("inf")
    return float(np.sum(p[pos] * np.log(p[pos] / q[pos])))


def amax_entropy(hist: np.ndarray, edges: np.ndarray, nbits: int, start_bin: int = 128) -> float:
    bins = hist.astype(np.float64).copy()
    bins[0] = bins[1]
    nbins = 1 << (nbits - 1)
    tail = np.concatenate([np.cumsum(bins[::-1])[::-1], [0.0]])  # tail[i] = sum(bins[i:])
    divergences = []
    candidates = range(start_bin, len(bins) + 1)
    for i in candidates:
        space = np.linspace(0, i, num=nbins + 1)
        group = np.digitize(np.arange(i), space) - 1
        ref = bins[:i].copy()
        nonzero = ref != 0
        sums = np.bincount(group[nonzero], weights=ref[nonzero],
                           minlength=nbins + 1).astype(np.float64)
        counts = np.bincount(group[nonzero], minlength=nbins + 1)
        mean = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        expanded = np.where(nonzero, mean[group], 0.0)
        ref[-1] += tail[i]
        divergences.append(_kl(ref, expanded))
    if not divergences:
        return float(edges[-1])
    d = np.array(divergences)
    last_argmin = len(d) - 1 - int(np.argmin(d[::-1]))
    return float(edges[last_argmin + start_bin])


def make_calibrator(method: str, nbits: int, granularity: str = "tensor",
                    percentile: float = 99.99):
    if method == "max":
        return MaxCalibrator(granularity)
    if granularity != "tensor":
        raise ValueError(f"the {method} calibrator works per tensor only")
    return HistogramCalibrator(method, nbits, percentile=percentile)
