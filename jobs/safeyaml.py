"""Load a sweep spec's YAML safely: bounded in time and memory, strict where YAML 1.1 is lax.

- Text: UTF-8 only (a UTF-8 BOM is accepted); UTF-16/32 or undecodable bytes are refused with the
  byte offset; at most MAX_BYTES.
- Aliases: the document's size as it would be expanded (every alias counted as a copy of its
  anchor) is computed on the composed node graph, where each anchor exists once, and refused
  over MAX_NODES before anything is constructed ("billion laughs" costs microseconds, not
  gigabytes); a recursive alias is refused.
- Duplicate mapping keys are refused (YAML keeps the last one silently).
- Plain scalars that YAML 1.1 reads as base-60 numbers (`4:00:00` -> 14400) are refused: a
  spec must quote them. So are the integers YAML 1.1 reads in another base: octal `010` (8;
  any leading zero before more digits, `08` included), hexadecimal `0x10`, binary `0b10`:
  YAML 1.2 and most readers disagree on them, so a spec writes 10 (or quotes the text).
- Afterwards `check_values` walks the result: mapping keys are strings; no string carries a
  control or line-separator character (they would break out of a job script's line) nor a
  lone surrogate (no UTF-8 form: a script cannot be written with it); no float is NaN or
  infinite; integers fit in 64 bits.
- `read_bounded` reads a file only if it is a regular file, and at most a given size: a FIFO
  or /dev/zero given as a spec (or a ledger) is refused, never read.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import yaml

from quantlib.errors import quote, shorten

MAX_BYTES = 1 << 20  # 1 MiB of spec text
MAX_NODES = 100_000  # scalars, sequences and mappings after alias expansion
MAX_INT = 2**63 - 1

# YAML 1.1's int and float resolvers without their base-60 alternatives (PyYAML's own
# expressions, resolver.py, minus the `(?::[0-5]?[0-9])+` branches)
_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$")
# YAML 1.1's octal, hexadecimal and binary forms, and any leading zero before more digits (`08`,
# which YAML 1.1 reads as a string and a reader of 1.2 as 8): tagged, then refused
_RADIX = re.compile(r"""^(?:[-+]?0[0-9_]+
                    |[-+]?0x[0-9a-fA-F_]+
                    |[-+]?0b[0-1_]+)$""", re.X)
RADIX_TAG = "tag:quantsweep,2026:radix"
_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
                    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X)
_SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")
SEXAGESIMAL_TAG = "tag:quantsweep,2026:sexagesimal"
# C0, DEL, C1 (NEL among them) and the Unicode line/paragraph separators
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# a lone surrogate: a YAML escape ("\udcff"), or an undecodable byte of a file name
# (surrogateescape); it has no UTF-8 form, so no script or ledger could hold it
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class YamlRefused(ValueError):
    """The text is not a spec this loader accepts; `where` locates it (a line, or '')."""

    def __init__(self, where: str, message: str):
        super().__init__(message)
        self.where, self.message = where, message


class Sexagesimal(str):
    """A plain scalar such as 4:00:00 that YAML 1.1 would have read as a base-60 number."""


class Radix(str):
    """A plain scalar such as 010 or 0x10 that YAML 1.1 would have read in base 8, 16 or 2."""


class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
_Loader.add_implicit_resolver(SEXAGESIMAL_TAG, _SEXAGESIMAL, list("-+0123456789"))
_Loader.add_constructor(SEXAGESIMAL_TAG,
                        lambda loader, node: Sexagesimal(loader.construct_scalar(node)))
_Loader.add_implicit_resolver(RADIX_TAG, _RADIX, list("-+0"))
_Loader.add_constructor(RADIX_TAG, lambda loader, node: Radix(loader.construct_scalar(node)))


def _no_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: the constructor says so below
            continue
        seen[key] = key_node.start_mark.line + 1
        if first is not None:
            raise YamlRefused(f"line {key_node.start_mark.line + 1}",
                              f"duplicate key {quote(key)} (first on line {first}); YAML would "
                              "keep only the last one")
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor("tag:yaml.org,2002:map", _no_duplicates)


def decode(data: bytes) -> str:
    if len(data) > MAX_BYTES:
        raise YamlRefused("", f"{len(data)} bytes: a spec is at most {MAX_BYTES} bytes")
    if data[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff") or data[:2] in (b"\xff\xfe",
                                                                               b"\xfe\xff"):
        raise YamlRefused("", "the spec is UTF-16 or UTF-32 text: save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise YamlRefused(f"line {line}", f"not UTF-8 text (byte {data[exc.start]:#04x} at "
                                          f"offset {exc.start}): save the spec as UTF-8"
                          ) from None


def _expanded_size(root: yaml.Node) -> int:
    """Nodes of the document with every alias expanded, computed once per distinct node."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise YamlRefused(f"line {node.start_mark.line + 1}", "a recursive alias (an "
                              "anchor used inside itself)")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        sizes[key] = min(total, MAX_NODES + 1)  # saturate: the answer is "too many" anyway
        return sizes[key]

    return size(root)


def load(data: bytes) -> Any:
    """The spec's data; raises YamlRefused (or yaml.YAMLError for syntax errors)."""
    text = decode(data)
    loader = _Loader(text)
    try:
        if not loader.check_node():
            return None
        node = loader.get_node()
        if loader.check_node():
            raise YamlRefused("", "the file holds several YAML documents; a spec is one")
        if node is None:
            return None
        n = _expanded_size(node)
        if n > MAX_NODES:
            raise YamlRefused("", f"more than {MAX_NODES} values once its aliases are "
                                  "expanded (an alias bomb?)")
        return loader.construct_document(node)
    except YamlRefused:
        raise
    except RecursionError:
        raise YamlRefused("", "nested too deeply") from None
    except (ValueError, OverflowError) as exc:  # e.g. int() of a 5,000-digit number
        raise YamlRefused("", f"a value YAML cannot convert: {str(exc)[:80]}") from None
    finally:
        loader.dispose()


def check_values(data: Any, where: str = "") -> tuple[str, str] | None:
    """The first (key path, problem) of a loaded spec that may not reach a job, or None."""
    stack: list[tuple[str, Any]] = [(where, data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            items = []
            for key, child in value.items():
                if not isinstance(key, str):
                    return path or "(top)", f"key {quote(key)} is not a string"
                if _CONTROL.search(key):
                    return path or "(top)", f"key {quote(key)} holds a control character"
                if _SURROGATE.search(key):
                    return path or "(top)", f"key {quote(key)} {_NOT_UTF8}"
                if isinstance(key, (Sexagesimal, Radix)):
                    return path or "(top)", f"key {shorten(key, 40)}: {_number_problem(key)}"
                items.append((f"{path}.{key}" if path else key, child))
            stack.extend(reversed(items))
        elif isinstance(value, list):
            stack.extend(reversed([(f"{path}[{i}]", v) for i, v in enumerate(value)]))
        elif isinstance(value, (Sexagesimal, Radix)):
            return path, _number_problem(value)
        elif isinstance(value, str):
            m = _CONTROL.search(value)
            if m:
                return path, (f"{value[:40]!r}: control character {m.group()!r} at position "
                              f"{m.start()}; values must be one line of printable text")
            m = _SURROGATE.search(value)
            if m:
                return path, f"{value[:40]!r}: {_NOT_UTF8} (at position {m.start()})"
        elif isinstance(value, float) and not math.isfinite(value):
            return path, f"{value} is not a finite number"
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            return path, f"{str(value)[:20]}... ({len(str(value))} digits) is out of range"
    return None


_NOT_UTF8 = "holds a lone surrogate, which has no UTF-8 form; write the character itself"


def _number_problem(value: str) -> str:
    """Why an unquoted base-60 or other-base integer is refused, and what to write."""
    shown = shorten(value, 40)
    if isinstance(value, Sexagesimal):
        return (f"unquoted {shown} is a base-60 number in YAML 1.1 ({_base60(value)}); quote "
                f"it: \"{shown}\"")
    digits = value.lstrip("+-").replace("_", "").lower()
    sign = "-" if value.startswith("-") else ""
    try:
        if len(digits) > 40:
            raise ValueError  # too long to be meant as a number: say so without computing it
        if digits.startswith(("0x", "0b")):
            name, base = {"x": ("hexadecimal", 16), "b": ("binary", 2)}[digits[1]]
            number = int(sign + digits[2:], base)
            return (f"unquoted {shown} is a {name} number in YAML 1.1 ({number}); write "
                    f"{number}, or quote it: \"{shown}\"")
        decimal = int(sign + digits)
        read = (f"an octal number in YAML 1.1 ({int(sign + digits, 8)}) and {decimal} in "
                "YAML 1.2" if set(digits) <= set("01234567") else
                f"a string in YAML 1.1 and {decimal} in YAML 1.2")
        return (f"unquoted {shown} is {read}; write it without the leading zero ({decimal}), "
                f"or quote it: \"{shown}\"")
    except ValueError:
        return (f"unquoted {shown} is a number in another base (octal, hexadecimal or binary) "
                f"in YAML 1.1; write it in decimal, or quote it: \"{shown}\"")


def _base60(text: str) -> str:
    total = 0.0
    sign = -1 if text.startswith("-") else 1
    for part in text.lstrip("+-").replace("_", "").split(":"):
        total = total * 60 + float(part or 0)
    value = sign * total
    return f"{int(value)}" if value == int(value) else f"{value}"


def control_char(text: str) -> str | None:
    """The first control or line-separator character in `text`, or a lone surrogate (an
    undecodable byte of a file name, which no script can be written with), or None."""
    m = _CONTROL.search(text) or _SURROGATE.search(text)
    return m.group() if m else None


class Unreadable(ValueError):
    """A file that `read_bounded` does not read: not a regular file, or too large."""


def read_bounded(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `limit` bytes (quantlib.jobdir.read_regular: a
    FIFO would block the reader forever, /dev/zero fill its memory). Raises Unreadable, or
    OSError when it cannot be opened or read."""
    from quantlib.jobdir import RefusedFile, read_regular

    try:
        return read_regular(path, limit, stat_first=False)
    except RefusedFile as exc:
        why = str(exc.strerror)
        if why.startswith("not a regular file ("):  # "not a regular file (a FIFO)"
            why = f"{why[len('not a regular file ('):-1]}, not a regular file"
        raise Unreadable(f"{why}: a {what} is read from a regular file of at most {limit} "
                         "bytes") from None
