"""Load a sweep spec's YAML safely: bounded in time and memory, strict where YAML 1.1 is lax.

- Text: UTF-8 only (a UTF-8 BOM is accepted); UTF-16/32 or undecodable bytes are refused with the
  byte offset; at most MAX_BYTES.
- Aliases: the document's size as it would be expanded (every alias counted as a copy of its
  anchor) is computed on the composed node graph, where each anchor exists once, and refused
  over MAX_NODES before anything is constructed ("billion laughs" costs microseconds, not
  gigabytes); a recursive alias is refused.
- Duplicate mapping keys are refused (YAML keeps the last one silently).
- Plain scalars that YAML 1.1 reads as base-60 numbers (`4:00:00` -> 14400) are refused: a
  spec must quote them.
- Afterwards `check_values` walks the result: mapping keys are strings; no string carries a
  control or line-separator character (they would break out of a job script's line); no float
  is NaN or infinite; integers fit in 64 bits.
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml

MAX_BYTES = 1 << 20  # 1 MiB of spec text
MAX_NODES = 100_000  # scalars, sequences and mappings after alias expansion
MAX_INT = 2**63 - 1

# YAML 1.1's int and float resolvers without their base-60 alternatives (PyYAML's own
# expressions, resolver.py, minus the `(?::[0-5]?[0-9])+` branches)
_INT = re.compile(r"""^(?:[-+]?0b[0-1_]+
                    |[-+]?0[0-7_]+
                    |[-+]?(?:0|[1-9][0-9_]*)
                    |[-+]?0x[0-9a-fA-F_]+)$""", re.X)
_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
                    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X)
_SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")
SEXAGESIMAL_TAG = "tag:quantsweep,2026:sexagesimal"
# C0, DEL, C1 (NEL among them) and the Unicode line/paragraph separators
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class YamlRefused(ValueError):
    """The text is not a spec this loader accepts; `where` locates it (a line, or '')."""

    def __init__(self, where: str, message: str):
        super().__init__(message)
        self.where, self.message = where, message


class Sexagesimal(str):
    """A plain scalar such as 4:00:00 that YAML 1.1 would have read as a base-60 number."""


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
                              f"duplicate key {key!r} (first on line {first}); YAML would "
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
                    return path or "(top)", f"key {key!r} is not a string"
                if _CONTROL.search(key):
                    return path or "(top)", f"key {key!r} holds a control character"
                items.append((f"{path}.{key}" if path else key, child))
            stack.extend(reversed(items))
        elif isinstance(value, list):
            stack.extend(reversed([(f"{path}[{i}]", v) for i, v in enumerate(value)]))
        elif isinstance(value, Sexagesimal):
            return path, (f"unquoted {value} is a base-60 number in YAML 1.1 "
                          f"({_base60(value)}); quote it: \"{value}\"")
        elif isinstance(value, str):
            m = _CONTROL.search(value)
            if m:
                return path, (f"{value[:40]!r}: control character {m.group()!r} at position "
                              f"{m.start()}; values must be one line of printable text")
        elif isinstance(value, float) and not math.isfinite(value):
            return path, f"{value} is not a finite number"
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            return path, f"{str(value)[:20]}... ({len(str(value))} digits) is out of range"
    return None


def _base60(text: str) -> str:
    total = 0.0
    sign = -1 if text.startswith("-") else 1
    for part in text.lstrip("+-").replace("_", "").split(":"):
        total = total * 60 + float(part or 0)
    value = sign * total
    return f"{int(value)}" if value == int(value) else f"{value}"


def control_char(text: str) -> str | None:
    """The first control or line-separator character in `text`, or None."""
    m = _CONTROL.search(text)
    return m.group() if m else None
