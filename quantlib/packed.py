"""Low-bit weights as they are stored: integer codes packed `bits` a value, beside the scales
that turn them back into values, in one safetensors file with the rest of the model in FP32
(`model_packed.safetensors`, written by `export: onnx` for INQ and GPTQ at every bit width).

A weight's codes, row-major, form one little-endian bit stream: value i occupies bits
[i * bits, (i + 1) * bits) (at 2, 4 and 8 bits, the layout of onnxruntime's MatMulNBits within
a block). Encodings:
- affine: value = (code - zero) * scale, a float32 scale and a uint8 zero point per row and
  group of `group_size` columns (0: one per row; one per tensor broadcasts). INQ lin at
  b >= 2 (zero 2^(b-1), scale its step delta), GPTQ (its own grid; with act_order, `perm` is the
  order its columns were quantized in: column j is in group (position of j in perm) //
  group_size).
- p2: value = the code-th level (ascending) of INQ's power-of-two set with top exponent n1
  (int8, per row or tensor; quantlib.quantizers.p2_table).
- mb: value = sum_i alpha_i * (2 * bit_i(code) - 1), `bits` float32 alphas per row (or one
  set per tensor): multi-bit INQ, and INQ lin at 1 bit (alpha = mean|w|).

Tensors in the file: `NAME` (FP32 parameters), `NAME:codes` (uint8 stream), `NAME:scales`,
`NAME:zeros`, `NAME:perm`; its metadata `quantsweep_packed` says, per quantized weight, the
encoding, bits, shape and group size. `read` gives back every parameter as a float tensor, equal
to the job's model bit for bit (the export checks it before it records the file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from quantlib.quantizers import (
    LinearQuantizer,
    MultiBitQuantizer,
    Pow2Quantizer,
    Quantizer,
    mb_levels,
    nearest_index,
    p2_table,
)

FILE = "model_packed.safetensors"
FORMAT = 1
ENCODINGS = ("affine", "p2", "mb")


class PackedError(ValueError):
    """A packed file or weight that does not hold what its metadata says."""


@dataclass
class Packed:
    """One weight's integer codes and what turns them into values (see the module doc)."""

    encoding: str
    bits: int
    codes: torch.Tensor  # (rows, cols) uint8, 0 .. 2^bits - 1
    # affine: (rows|1, groups) float32; p2: (rows|1, 1) int8 n1; mb: (rows|1, bits) float32
    scales: torch.Tensor
    zeros: torch.Tensor | None = None  # affine: like scales, uint8
    group_size: int = 0  # affine: columns a scale covers; 0: the whole row
    perm: torch.Tensor | None = None  # affine (GPTQ act_order): the columns' quantization order

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)  # type: ignore[return-value]

    def column_groups(self) -> torch.Tensor:
        """Each column's group index (affine)."""
        cols = self.codes.shape[1]
        if not self.group_size or self.scales.shape[1] == 1:
            return torch.zeros(cols, dtype=torch.long)
        order = torch.arange(cols) if self.perm is None else torch.argsort(self.perm)
        return order // self.group_size

    def values(self) -> torch.Tensor:
        """The weight the codes stand for, float32 (rows, cols)."""
        c = self.codes.long()
        if self.encoding == "affine":
            assert self.zeros is not None
            g = self.column_groups()
            scale, zero = self.scales.float()[:, g], self.zeros.float()[:, g]
            return (c.float() - zero) * scale
        if self.encoding == "p2":
            table = p2_table(self.scales.float(), self.bits)
            return torch.gather(table.expand(c.shape[0], -1), 1, c)
        levels = mb_levels(self.scales.float())
        return torch.gather(levels.expand(c.shape[0], -1), 1, c)

    def stored_bytes(self) -> int:
        n = self.codes.numel()
        extra = sum(t.numel() * t.element_size() for t in (self.scales, self.zeros, self.perm)
                    if t is not None)
        return -(-n * self.bits // 8) + extra


def _rows(w: torch.Tensor) -> torch.Tensor:
    return w.detach().reshape(w.shape[0], -1).float()


def _on_cpu(grid: Packed) -> Packed:
    """The codes are for the file and the exporter: on the CPU whatever device trained."""
    for name in ("codes", "scales", "zeros", "perm"):
        value = getattr(grid, name)
        if value is not None:
            setattr(grid, name, value.detach().cpu())
    return grid


def from_inq(q: Quantizer, w: torch.Tensor) -> Packed:
    """The codes of a weight INQ has fully quantized with `q` (its values are q's levels)."""
    return _on_cpu(_from_inq(q, w))


def _from_inq(q: Quantizer, w: torch.Tensor) -> Packed:
    r = _rows(w)
    if isinstance(q, LinearQuantizer):
        assert q.scale is not None
        scale = q.scale.float()
        if q.nbits == 1:  # +-mean|w|: one binary plane
            return Packed("mb", 1, (r >= 0).to(torch.uint8), scale)
        k = torch.clamp(torch.round(r / scale), -q.qmax, q.qmax)
        mid = 2 ** (q.nbits - 1)
        return Packed("affine", q.nbits, (k + mid).to(torch.uint8), scale,
                      torch.full(scale.shape, mid, dtype=torch.uint8))
    if isinstance(q, Pow2Quantizer):
        assert q.table is not None
        n1 = torch.log2(q.table[:, -1:].float())
        return Packed("p2", q.nbits, nearest_index(r, q.table.float()).to(torch.uint8),
                      n1.to(torch.int8))
    if isinstance(q, MultiBitQuantizer):
        if q.alphas is None:
            raise PackedError("a multi-bit quantizer fitted without its alphas (an older "
                              "checkpoint) cannot be packed")
        alphas = q.alphas.float()
        ordered, order = mb_levels(alphas).sort(dim=1)
        code = torch.gather(order, 1, nearest_index(r, ordered))
        return Packed("mb", q.nbits, code.to(torch.uint8), alphas)
    raise TypeError(f"no packed form for {type(q).__name__}")


def from_gptq(result, bits: int, group_size: int, perm: torch.Tensor | None = None) -> Packed:
    """GPTQ's grid (quantlib.gptq.Result): its codes, a scale and zero point per row and group."""
    return _on_cpu(Packed("affine", bits, result.codes.to(torch.uint8), result.scales.float(),
                          result.zeros.round().to(torch.uint8),
                          group_size if result.groups > 1 else 0, perm))


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes (any shape, values < 2^bits) -> uint8 little-endian bit stream."""
    flat = codes.reshape(-1).to(torch.uint8)
    if bits == 8:
        return flat.clone()
    planes = (flat[:, None] >> torch.arange(bits, dtype=torch.uint8)) & 1
    stream = planes.reshape(-1)
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, torch.zeros(pad, dtype=torch.uint8)])
    weights = (1 << torch.arange(8, dtype=torch.int32)).to(torch.uint8)
    return (stream.reshape(-1, 8) * weights).sum(dim=1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(stream: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The first `count` codes of a stream pack_bits wrote."""
    if stream.numel() != -(-count * bits // 8):
        raise PackedError(f"{stream.numel()} bytes cannot hold {count} codes of {bits} bits "
                          "exactly")
    if bits == 8:
        return stream.reshape(-1).clone()
    planes = (stream.reshape(-1, 1) >> torch.arange(8, dtype=torch.uint8)) & 1
    planes = planes.reshape(-1)[:count * bits].reshape(count, bits)
    weights = (1 << torch.arange(bits, dtype=torch.int32))
    return (planes.to(torch.int32) * weights).sum(dim=1).to(torch.uint8)


def write(path: Path, params: dict[str, torch.Tensor], packed: dict[str, Packed]) -> int:
    """Write `params` (name -> tensor; those in `packed` as their codes) atomically; returns
    the file's size in bytes."""
    from safetensors.torch import save_file

    from quantlib.atomic import replace_with

    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, dict] = {}
    for name, p in params.items():
        if ":" in name:
            raise PackedError(f"parameter name {name!r} has a ':'")
        grid = packed.get(name)
        if grid is None:
            tensors[name] = p.detach().float().cpu().contiguous()
            continue
        if tuple(p.reshape(p.shape[0], -1).shape) != grid.shape:
            raise PackedError(f"{name}: codes {grid.shape} for a weight of shape "
                              f"{tuple(p.shape)}")
        tensors[f"{name}:codes"] = pack_bits(grid.codes, grid.bits)
        tensors[f"{name}:scales"] = grid.scales.contiguous()
        if grid.zeros is not None:
            tensors[f"{name}:zeros"] = grid.zeros.contiguous()
        if grid.perm is not None:
            tensors[f"{name}:perm"] = grid.perm.to(torch.int32).contiguous()
        meta[name] = {"encoding": grid.encoding, "bits": grid.bits, "shape": list(p.shape),
                      "group_size": grid.group_size}
    header = {"quantsweep_packed": json.dumps({"format": FORMAT, "weights": meta})}
    replace_with(path, lambda tmp: save_file(tensors, tmp, metadata=header))
    return path.stat().st_size


def read(path: Path) -> dict[str, torch.Tensor]:
    """Every parameter in the file, the packed ones decoded (float32, their own shape)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get("quantsweep_packed")
        try:
            meta = json.loads(raw) if raw else None
        except ValueError:
            meta = None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise PackedError(f"{path}: not a quantsweep packed file (format {FORMAT})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    out = {k: v for k, v in tensors.items() if ":" not in k}
    for name, m in meta.get("weights", {}).items():
        try:
            encoding, bits, shape = m["encoding"], int(m["bits"]), [int(s) for s in m["shape"]]
            group = int(m.get("group_size", 0))
        except (KeyError, TypeError, ValueError) as e:
            raise PackedError(f"{path}: {name}: bad metadata ({e})") from None
        if encoding not in ENCODINGS or not 1 <= bits <= 8 or f"{name}:codes" not in tensors:
            raise PackedError(f"{path}: {name}: encoding {encoding!r} at {bits} bits")
        rows = shape[0]
        cols = 1
        for s in shape[1:]:
            cols *= s
        try:
            codes = unpack_bits(tensors[f"{name}:codes"], bits, rows * cols).reshape(rows, cols)
            grid = Packed(encoding, bits, codes, tensors[f"{name}:scales"],
                          tensors.get(f"{name}:zeros"), group, tensors.get(f"{name}:perm"))
            out[name] = grid.values().reshape(shape)
        except (KeyError, RuntimeError, IndexError, AssertionError) as e:
            raise PackedError(f"{path}: {name}: its codes and scales do not fit ({e})") from None
    return out


def check_equal(path: Path, params: dict[str, torch.Tensor]) -> None:
    """Raise PackedError unless the file decodes to `params` exactly."""
    back = read(path)
    if set(back) != set(params):
        raise PackedError(f"{path}: holds {sorted(set(back) ^ set(params))[:3]} unlike the model")
    for name, p in params.items():
        if not torch.equal(back[name], p.detach().float().cpu()):
            worst = float((back[name] - p.detach().float().cpu()).abs().max())
            raise PackedError(f"{path}: {name} decodes {worst:g} away from the model's weight")
