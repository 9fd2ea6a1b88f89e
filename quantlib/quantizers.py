"""Weight quantizers, vectorised over whole tensors: INQ's linear and power-of-two levels (Zhou
et al. 2017, "Incremental Network Quantization", arXiv:1702.03044) and alternating
multi-bit quantization (Xu et al. 2018, "Alternating Multi-bit Quantization for Recurrent
Neural Networks", arXiv:1802.00150).

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
- scale rule (lin, p2; `inq_scale`): "max" takes the scale from s as above (the papers' rule);
        "mse" chooses it, per tensor or row, to minimise sum (w - Q(w))^2: for lin, delta from a
        grid of 64 clipping fractions of s (f * s / (2**(b-1)-1), f = 1/64 .. 1) refined by
        alternating rounding and the least-squares delta = sum(w k) / sum(k^2) while the error
        falls; for p2, the top exponent n1 among every integer from the max rule's n1 + 1 down
        16 steps (b = 1: its exponent +-3), the levels below it as above. mean|w| (lin, 1 bit)
        is already the least-squares binary scale. BERT's weights (std about 0.04, a few large
        outliers) put almost every weight on 0 at 2-3 bits under the max rule; mse does not.
- mb:   per row w ~ sum_i alpha_i * b_i, b_i in {-1, +1}^n, k = b terms (Xu et al. 2018):
        greedy init, then `cycles` alternations of least-squares alpha refit and exact nearest
        assignment among all 2**k level values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EPS = 1e-12
SCALE_RULES = ("max", "mse")
LIN_GRID = 64  # clipping fractions of s tried by the lin mse rule
LLOYD_STEPS = 20
P2_BELOW = 16  # exponents below the max rule's n1 tried by the p2 mse rule


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


def _sq_error(r: torch.Tensor, q: torch.Tensor, per_row: bool) -> torch.Tensor:
    """sum (r - q)^2 per row (rows, 1) or over the tensor (1, 1), in float64."""
    e = (r.double() - q.double()).square()
    return e.sum(dim=1, keepdim=True) if per_row else e.sum().reshape(1, 1)


def _lin_round(r: torch.Tensor, delta: torch.Tensor, qmax: int) -> torch.Tensor:
    return torch.clamp(torch.round(r / delta), -qmax, qmax)


def lin_mse_delta(w: torch.Tensor, nbits: int, per_row: bool) -> torch.Tensor:
    """The step delta (rows|1, 1) minimising sum (w - delta*k)^2, k = clamp(round(w/delta))."""
    r = _rows(w).float()
    qmax = 2 ** (nbits - 1) - 1
    s = _abs_max(w, per_row).float().clamp_min(EPS)
    best = s / qmax
    best_err = _sq_error(r, _lin_round(r, best, qmax) * best, per_row)
    for f in torch.arange(1, LIN_GRID, dtype=torch.float32) / LIN_GRID:
        delta = s * f / qmax
        err = _sq_error(r, _lin_round(r, delta, qmax) * delta, per_row)
        better = err < best_err
        best, best_err = torch.where(better, delta, best), torch.where(better, err, best_err)
    for _ in range(LLOYD_STEPS):  # least-squares delta for the current integers, while it helps
        k = _lin_round(r, best, qmax).double()
        num = (r.double() * k).sum(dim=1, keepdim=True) if per_row else (r.double() * k).sum()
        den = k.square().sum(dim=1, keepdim=True) if per_row else k.square().sum()
        delta = torch.where(den > 0, num / den.clamp_min(1), best.double()).float()
        delta = delta.reshape(best.shape).clamp_min(EPS)
        err = _sq_error(r, _lin_round(r, delta, qmax) * delta, per_row)
        better = err < best_err
        if not bool(better.any()):
            break
        best, best_err = torch.where(better, delta, best), torch.where(better, err, best_err)
    return best


@dataclass
class LinearQuantizer:
    nbits: int
    per_row: bool = False
    scale_rule: str = "max"
    scale: torch.Tensor | None = None  # delta (b >= 2) or mean|w| (b = 1), (rows|1, 1)

    @property
    def qmax(self) -> int:
        return 2 ** (self.nbits - 1) - 1

    def fit(self, w: torch.Tensor) -> LinearQuantizer:
        if self.nbits == 1:  # mean|w| is also the least-squares binary scale
            self.scale = _abs_mean(w, self.per_row)
        elif self.scale_rule == "mse":
            self.scale = lin_mse_delta(w, self.nbits, self.per_row)
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

    def scale_bytes(self) -> int:
        """Stored beside the codes: a float32 step (or mean|w|) per tensor or row."""
        assert self.scale is not None
        return 4 * self.scale.numel()

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


def p2_table(n1: torch.Tensor, nbits: int) -> torch.Tensor:
    """The ascending power-of-two level set with top exponent n1 (rows|1, 1)."""
    top = torch.exp2(n1)
    if nbits == 1:
        return torch.cat([-top, top], dim=1)
    count = 2 ** (nbits - 2)  # magnitudes; n2 = n1 + 1 - count
    exps = n1 - torch.arange(count - 1, -1, -1, dtype=n1.dtype)  # n2 .. n1
    mags = torch.exp2(exps)  # (rows|1, count), ascending
    return torch.cat([-mags.flip(1), torch.zeros_like(n1), mags], dim=1)


@dataclass
class Pow2Quantizer(TableQuantizer):
    nbits: int
    per_row: bool = False
    scale_rule: str = "max"
    table: torch.Tensor | None = None  # ascending levels, (rows|1, L)

    def fit(self, w: torch.Tensor) -> Pow2Quantizer:
        if self.nbits == 1:
            n1 = torch.round(torch.log2(_abs_mean(w, self.per_row).clamp_min(EPS)))
            tries = range(3, -4, -1)
        else:
            n1 = torch.floor(torch.log2(4 * _abs_max(w, self.per_row).clamp_min(EPS) / 3))
            tries = range(1, -P2_BELOW - 1, -1)
        if self.scale_rule == "mse":
            n1 = self._mse_exponent(w, n1, tries)
        self.table = p2_table(n1, self.nbits)
        return self

    def scale_bytes(self) -> int:
        """Stored beside the codes: the top exponent n1, an int8, per tensor or row."""
        assert self.table is not None
        return self.table.shape[0]

    def _mse_exponent(self, w: torch.Tensor, n1: torch.Tensor, tries: range) -> torch.Tensor:
        r = _rows(w).float()
        best, best_err = n1, None
        for j in tries:
            cand = n1 + j
            err = _sq_error(r, project_sorted(r, p2_table(cand, self.nbits)), self.per_row)
            if best_err is None:
                best, best_err = cand, err
                continue
            better = err < best_err  # ties keep the larger exponent (tried first)
            best, best_err = torch.where(better, cand, best), torch.where(better, err, best_err)
        return best



def sign_patterns(k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """All 2**k vectors of +-1, shape (2**k, k)."""
    codes = torch.arange(2 ** k, device=device)
    bits = (codes[:, None] >> torch.arange(k, device=device)) & 1
    return (bits * 2 - 1).to(dtype)


def mb_levels(alphas: torch.Tensor) -> torch.Tensor:
    """The 2**k values sum_i +-alpha_i of each row (rows x k -> rows x 2**k, pattern order:
    bit i of the column index is the sign of alpha_i), summed in float64 and rounded once, so
    the fit, the packed file's decoder and any device give the same float32 values."""
    k = alphas.shape[1]
    patterns = sign_patterns(k, torch.float64, alphas.device)
    return (alphas.double() @ patterns.T).to(alphas.dtype)


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
    patterns = sign_patterns(k, r.dtype, r.device)
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
    alphas: torch.Tensor | None = None  # (rows, k): table = sorted(mb_levels(alphas))

    def fit(self, w: torch.Tensor) -> MultiBitQuantizer:
        self.alphas, _ = amq_fit(w, self.nbits, self.cycles)
        self.table = mb_levels(self.alphas).sort(dim=1).values
        return self

    def scale_bytes(self) -> int:
        """Stored beside the b binary planes: b float32 alphas per row."""
        assert self.table is not None
        return 4 * self.table.shape[0] * self.nbits


Quantizer = LinearQuantizer | Pow2Quantizer | MultiBitQuantizer


def make_quantizer(mode: str, nbits: int, *, per_row: bool = False, scale_rule: str = "max",
                   cycles: int = 2) -> Quantizer:
    if not 1 <= nbits <= 8:
        raise ValueError(f"nbits {nbits} is outside 1..8")
    if scale_rule not in SCALE_RULES:
        raise ValueError(f"scale rule {scale_rule!r}: allowed {', '.join(SCALE_RULES)}")
    if mode == "lin":
        return LinearQuantizer(nbits, per_row, scale_rule)
    if mode == "p2":
        return Pow2Quantizer(nbits, per_row, scale_rule)
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

