"""Mixed precision: a bit width per module pattern (`nbits_per_module`), the rest at `nbits`.

`nbits_per_module: {"*layer.11.*": 2, "*attention*": 4}` gives each quantized module (an
nn.Linear that `quantize_modules` selects, by its qualified name) the bits of the most specific
pattern that matches it: the pattern that matches the fewest of the model's quantized modules
(layer 11's six Linears before the 48 attention Linears of all layers), then the one with more
literal characters, then the fewer bits. A module no pattern matches keeps `nbits`. The order
patterns are written in never matters (a job's id does not depend on it either).

Every method with a bit width takes it: INQ (lin, p2, mb: each weight's level set), GPTQ (each
layer's grid), the QAT family (q8bert, ptq, qat, qat-kd, distill-quant, sparse + QAT,
prune-once-for-all: each Linear's weight quantizer; activations keep `nbits` / `act_nbits`).
The size accounting (quantlib.model_size) follows each weight's own bits.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping

PATTERN = re.compile(r"[A-Za-z0-9_.*?\[\]!-]{1,200}")
MAX_PATTERNS = 256
WILDCARDS = set("*?[]!")


def check(value: object, lo: int, hi: int) -> dict[str, int]:
    """Validate a spec's nbits_per_module; returns it with its patterns sorted (ValueError
    names what is wrong)."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{value!r} is not a mapping of module patterns to bit widths")
    if len(value) > MAX_PATTERNS:
        raise ValueError(f"{len(value)} patterns; at most {MAX_PATTERNS}")
    out: dict[str, int] = {}
    for pattern, bits in value.items():
        if not isinstance(pattern, str) or not PATTERN.fullmatch(pattern):
            raise ValueError(f"pattern {pattern!r}: allowed are fnmatch patterns of module "
                             "names (letters, digits, _ . - * ? [ ] !), 1-200 characters")
        if isinstance(bits, bool) or not isinstance(bits, int) or not lo <= bits <= hi:
            raise ValueError(f"{pattern!r}: {bits!r} is not a bit width in {lo}..{hi}")
        out[pattern] = bits
    return dict(sorted(out.items()))


def literal(pattern: str) -> int:
    return sum(1 for c in pattern if c not in WILDCARDS)


def assign(names: Iterable[str], nbits: int, per_module: Mapping[str, int] | None
           ) -> dict[str, int]:
    """Each module name's bit width (see the module doc)."""
    names = list(names)
    if not per_module:
        return dict.fromkeys(names, nbits)
    reach = {p: sum(1 for n in names if fnmatch.fnmatchcase(n, p)) for p in per_module}
    out = {}
    for name in names:
        hits = [p for p in per_module if fnmatch.fnmatchcase(name, p)]
        if not hits:
            out[name] = nbits
            continue
        best = min(hits, key=lambda p: (reach[p], -literal(p), per_module[p], p))
        out[name] = per_module[best]
    return out


def unmatched(names: Iterable[str], per_module: Mapping[str, int] | None) -> list[str]:
    """Patterns that match none of the quantized modules (a typo, most likely)."""
    names = list(names)
    return [p for p in (per_module or {})
            if not any(fnmatch.fnmatchcase(n, p) for n in names)]


def require_matched(names: Iterable[str], per_module: Mapping[str, int] | None) -> None:
    """ValueError naming the patterns that match none of the quantized modules."""
    names = list(names)
    missing = unmatched(names, per_module)
    if missing:
        raise ValueError(f"nbits_per_module: {', '.join(missing)} matches none of the "
                         f"{len(names)} quantized modules (e.g. "
                         f"{names[0] if names else 'none'})")


def module_of(weight_name: str) -> str:
    """`bert.encoder.layer.0.output.dense.weight` -> its module's name."""
    return weight_name[:-len(".weight")] if weight_name.endswith(".weight") else weight_name

