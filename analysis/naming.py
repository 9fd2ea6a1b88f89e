"""Task / method / nbits of a run that left no config.json: from its directory name.

A pattern names fields in braces, e.g. `{task}_{method}quant{nbits}bit` (the seed study's own
naming: `mrpc_linquant4bit`); with `/` it spans the last directories of the path
(`{task}/{method}/seed{seed}`). `{nbits}` and `{seed}` match digits; other fields match any
text within one directory name. Task and method names are read loosely: `SST-2`, `sst-2` and
`sst2` are one task, `mbq` (the seed's display name) is the method `mb`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantlib.configs import METHODS
from quantlib.errors import UserError
from quantlib.tasks import TASKS

SEED_PATTERN = "{task}_{method}quant{nbits}bit"
INT_FIELDS = {"nbits", "seed"}
FIELD = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class Pattern:
    text: str
    regex: re.Pattern[str]
    depth: int  # directory names it spans

    def match(self, path: Path) -> dict[str, Any] | None:
        parts = path.parts[-self.depth:]
        if len(parts) < self.depth:
            return None
        found = self.regex.fullmatch("/".join(parts))
        if not found:
            return None
        fields: dict[str, Any] = {}
        for key, value in found.groupdict().items():
            if key in INT_FIELDS:
                fields[key] = int(value)
            elif key == "task":
                fields[key] = task_name(value)
            elif key == "method":
                fields[key] = method_name(value)
            else:
                fields[key] = value
        return fields


def compile_pattern(text: str) -> Pattern:
    """A directory-name pattern; a malformed one is a UserError naming what is allowed."""
    hint = "use fields in braces, e.g. --pattern '{task}_{method}quant{nbits}bit'"
    if not text or text.startswith("/") or text.endswith("/"):
        raise UserError(f"--pattern {text!r}: empty or starts/ends with '/'; {hint}")
    pieces: list[str] = []
    seen: set[str] = set()
    pos = 0
    for found in FIELD.finditer(text):
        literal = text[pos:found.start()]
        if "{" in literal or "}" in literal:
            raise UserError(f"--pattern {text!r}: unbalanced brace; {hint}")
        pieces.append(re.escape(literal))
        name = found.group(1)
        if not name.isidentifier():
            raise UserError(f"--pattern {text!r}: {{{name}}} is not a field name; {hint}")
        if name in seen:
            raise UserError(f"--pattern {text!r}: {{{name}}} appears twice; {hint}")
        seen.add(name)
        pieces.append(f"(?P<{name}>\\d+)" if name in INT_FIELDS else f"(?P<{name}>[^/]+?)")
        pos = found.end()
    tail = text[pos:]
    if "{" in tail or "}" in tail:
        raise UserError(f"--pattern {text!r}: unbalanced brace; {hint}")
    pieces.append(re.escape(tail))
    if not seen:
        raise UserError(f"--pattern {text!r}: names no field; {hint}")
    return Pattern(text, re.compile("".join(pieces)), text.count("/") + 1)


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_TASK_ALIASES = {_squash(t.name): t.name for t in TASKS.values()}
_TASK_ALIASES.update({_squash(t.display): t.name for t in TASKS.values()})
_TASK_ALIASES.update({"mnlimm": "mnli", "mnlim": "mnli", "squad11": "squad", "squadv11": "squad",
                      "squad1": "squad", "squadv1": "squad"})
_METHOD_ALIASES = {_squash(name): name for name in METHODS}
_METHOD_ALIASES.update({_squash(e.display): name for name, e in METHODS.items()})


def task_name(raw: str) -> str:
    """`SST-2` -> `sst2`, `MNLI-MM` -> `mnli`; an unknown name is kept, lower-cased."""
    return _TASK_ALIASES.get(_squash(raw), raw.lower())


def method_name(raw: str) -> str:
    """`mbq` -> `mb`, `Linear` -> `lin`; an unknown name is kept as written."""
    return _METHOD_ALIASES.get(_squash(raw), raw)
