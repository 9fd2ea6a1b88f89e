"""Weight quantizers, vectorised over whole tensors (methods.md: INQ lin / p2, AMQ).

Each quantizer is fitted once to a weight tensor (`fit`: scale or level set, per tensor or per
output row) and then projects any tensor of that shape onto its levels (`project`). INQ fits at
the first partition and keeps the level set for every later stage.

Level sets, b = nbits, s = max|W| (per tensor or per row):
- lin:  k * delta, k in [-(2**(b-1)-1), 2**(b-1)-1], delta = s / (2**(b-1)-1), round to nearest,
        saturating. b = 1: sign(w) * mean|w| (binary, BinaryConnect/XNOR scaling).
- p2:   {0, +-2**n2, ..., +-2**n1}, n1 = floor(log2(4s/3)), n2 = n1 + 1 - 2**(b-2):
        2**(b-2) magnitudes plus zero; nearest level in linear distance, ties away from zero,
        saturating at +-2**n1. b = 1 (undefined in the paper): sign(w) * 2**round(log2(mean|w|)),
        the power of two nearest (in log scale) to the L2-optimal binary scale.
- mb:   per row w ~ sum_i alpha_i * b_i, b_i in {-1, +1}^n, k = b terms (Xu et al. 2018):
        greedy init, then `cycles` alternations of least-squares alpha refit and exact nearest
        assignment among all 2**k level values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EPS = 1e-12


def _rows(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1) if w.dim() > 1 else w.reshape(1, -1)


def _abs_max(w: torch.Tensor, per_row: bool) -> torch.Tensor:
    """s, shaped (rows, 1) per row or (1, 1) per tensor."""
    r = _rows(w).abs()
    return r.amax(dim=1, keepdim=True) if per_row else r.max().reshape(1, 1)


def _abs_mean(w: torch.Tensor, per_row: bool) -> torch.Tensor:
    r = _rows(w).abs()
    return r.mean(dim=1, keepdim=True) if per_row else r.mean().reshape(1, 1)


def nearest_index(r: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest value of `levels` (rows x L ascending; 1 row broadcasts) for each
    element of r (rows x n). Ties between two levels go to the larger magnitude."""
    mids = (levels[:, 1:] + levels[:, :-1]) / 2
    x = r.contiguous()
    if mids.shape[0] == 1:
        m = mids[0].contiguous()
        idx = torch.bucketize(x, m, right=True)  # x == mid goes up
        below = m[(idx - 1).clamp_min(0)]
    else:
        m = mids.expand(x.shape[0], -1).contiguous()
        idx = torch.searchsorted(m, x, right=True)
        below = torch.gather(m, 1, (idx - 1).clamp_min(0))
    # a negative x exactly on a midpoint belongs to the level below (larger magnitude)
    return idx - ((x < 0) & (idx > 0) & (x == below)).long()


def project_sorted(w: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Nearest value of `levels` (rows x L ascending, or 1 x L) for each element of w."""
    r = _rows(w)
    levels = levels.to(r.dtype)
    idx = nearest_index(r, levels)
    if levels.shape[0] == 1 and r.shape[0] != 1:
        levels = levels.expand(r.shape[0], -1)
    return torch.gather(levels, 1, idx).reshape(w.shape)


@dataclass
class LinearQuantizer:
    nbits: int
    per_row: bool = False
    scale: torch.Tensor | None = None  # delta (b >= 2) or mean|w| (b = 1), (rows|1, 1)

    @property
    def qmax(self) -> int:
        return 2 ** (self.nbits - 1) - 1

    def fit(self, w: torch.Tensor) -> LinearQuantizer:
        if self.nbits == 1:
            self.scale = _abs_mean(w, self.per_row)
        else:
            self.scale = _abs_max(w, self.per_row) / self.qmax
        self.scale = self.scale.clamp_min(EPS)
        return self

    def project(self, w: torch.Tensor) -> torch.Tensor:
        assert self.scale is not None, "fit() first"
        r = _rows(w)
        scale = self.scale.to(r.dtype)
        if self.nbits == 1:
            q = torch.where(r >= 0, scale, -scale)
        else:
            q = torch.clamp(torch.round(r / scale), -self.qmax, self.qmax) * scale
        return q.reshape(w.shape)

    def levels(self) -> torch.Tensor:
        assert self.scale is not None
        if self.nbits == 1:
            return torch.cat([-self.scale, self.scale], dim=1)
        k = torch.arange(-self.qmax, self.qmax + 1, dtype=self.scale.dtype)
        return self.scale * k


class TableQuantizer:
    """A quantizer whose fitted state is a table of levels, ascending, per row or per tensor."""

    table: torch.Tensor | None

    def project(self, w: torch.Tensor) -> torch.Tensor:
        assert self.table is not None, "fit() first"
        return project_sorted(w, self.table)

    def levels(self) -> torch.Tensor:
        assert self.table is not None
        return self.table


@dataclass
class Pow2Quantizer(TableQuantizer):
    nbits: int
    per_row: bool = False
    table: torch.Tensor | None = None  # ascending levels, (rows|1, L)

    def fit(self, w: torch.Tensor) -> Pow2Quantizer:
        if self.nbits == 1:
            e = torch.round(torch.log2(_abs_mean(w, self.per_row).clamp_min(EPS)))
            top = torch.exp2(e)
            self.table = torch.cat([-top, top], dim=1)
            return self
        s = _abs_max(w, self.per_row).clamp_min(EPS)
        n1 = torch.floor(torch.log2(4 * s / 3))
        count = 2 ** (self.nbits - 2)  # magnitudes; n2 = n1 + 1 - count
        exps = n1 - torch.arange(count - 1, -1, -1, dtype=s.dtype)  # n2 .. n1
        mags = torch.exp2(exps)  # (rows|1, count), ascending
        zero = torch.zeros_like(s)
        self.table = torch.cat([-mags.flip(1), zero, mags], dim=1)
        return self



def _sign_patterns(k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """All 2**k vectors of +-1, shape (2**k, k)."""
    codes = torch.arange(2 ** k, device=device)
    bits = (codes[:, None] >> torch.arange(k, device=device)) & 1
    return (bits * 2 - 1).to(dtype)


def amq_fit(w: torch.Tensor, k: int, cycles: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Alternating multi-bit quantization of each row of w (rows x n).

    Returns (alphas (rows x k), quantized rows (rows x n)). Vectorised over rows; the level
    assignment is exact (nearest of all 2**k sums), whatever the order of the alphas."""
    r = _rows(w).to(torch.float32)
    rows, n = r.shape
    # greedy init
    resid = r.clone()
    alphas = torch.empty(rows, k, dtype=r.dtype, device=r.device)
    signs = torch.empty(rows, n, k, dtype=r.dtype, device=r.device)
    for i in range(k):
        a = resid.abs().mean(dim=1)
        b = torch.where(resid >= 0, 1.0, -1.0).to(r.dtype)
        alphas[:, i], signs[:, :, i] = a, b
        resid = resid - a[:, None] * b
    patterns = _sign_patterns(k, r.dtype, r.device)
    eye = torch.eye(k, dtype=r.dtype, device=r.device)
    for _ in range(cycles):
        # fix B, least-squares refit of alpha: (B^T B) alpha = B^T w, per row
        btb = torch.einsum("rnk,rnj->rkj", signs, signs)
        btw = torch.einsum("rnk,rn->rk", signs, r)
        alphas = torch.linalg.solve(btb + 1e-6 * n * eye, btw.unsqueeze(-1)).squeeze(-1)
        # fix alpha, nearest of the 2**k values for every coordinate
        values = alphas @ patterns.T  # rows x 2**k
        sorted_vals, order = values.sort(dim=1)
        code = torch.gather(order, 1, nearest_index(r, sorted_vals))
        signs = patterns[code]  # rows x n x k
    q = torch.einsum("rnk,rk->rn", signs, alphas)
    return alphas, q.reshape(w.shape).to(w.dtype)


@dataclass
class MultiBitQuantizer(TableQuantizer):
    """AMQ level set per output row, fitted once; projection = nearest of the row's 2**k sums."""

    nbits: int
    cycles: int = 2
    table: torch.Tensor | None = None  # (rows, 2**k) ascending

    def fit(self, w: torch.Tensor) -> MultiBitQuantizer:
        alphas, _ = amq_fit(w, self.nbits, self.cycles)
        patterns = _sign_patterns(self.nbits, alphas.dtype, alphas.device)
        self.table = (alphas @ patterns.T).sort(dim=1).values
        return self


Quantizer = LinearQuantizer | Pow2Quantizer | MultiBitQuantizer


def make_quantizer(mode: str, nbits: int, *, per_row: bool = False,
                   cycles: int = 2) -> Quantizer:
    if not 1 <= nbits <= 8:
        raise ValueError(f"nbits {nbits} is outside 1..8")
    if mode == "lin":
        return LinearQuantizer(nbits, per_row)
    if mode == "p2":
        return Pow2Quantizer(nbits, per_row)
    if mode == "mb":
        return MultiBitQuantizer(nbits, cycles)
    raise ValueError(f"unknown quantizer mode {mode!r}")


def max_levels(mode: str, nbits: int) -> int:
    """How many distinct values a fitted tensor (or row, for mb) can hold."""
    if mode == "lin":
        return 2 if nbits == 1 else 2 * (2 ** (nbits - 1) - 1) + 1
    if mode == "p2":
        return 2 if nbits == 1 else 2 * 2 ** (nbits - 2) + 1
    return 2 ** nbits

