"""Reading a result tree that someone else wrote, without trusting it.

- Only what lies inside the collected directories is read, after resolving links: a result file
  that is a link to /etc/shadow, a ledger's `output_dir: ../../home/x`, are refused (`Tree`).
- Only regular files, of bounded size (quantlib.jobdir.read_regular): a FIFO would block
  collect forever, /dev/zero or a huge file exhaust its memory.
- JSON (`loads`): nesting too deep for the parser (RecursionError) is a bad file; values nested
  deeper than MAX_DEPTH are cut (every later step may recurse over what is left), integers
  outside 64 bits become text (`BigInt`: no float holds a 401-digit number).

Every refusal is a `Refused` with the reason, for the caller to report as a file skipped.
"""

from __future__ import annotations

import json
import os
import re
import stat
from typing import Any

from quantlib.jobdir import MAX_READ_BYTES, check_regular, read_regular

MAX_DEPTH = 32  # our results and configs are 1-3 levels deep
MAX_INT = 2**63 - 1
CUT = "(nested too deep: left out)"


class Refused(Exception):
    """A file not read; str() is the reason."""


class BigInt(str):
    """An integer outside 64 bits, kept as its digits: a text, never a metric."""


_LONG_DIGITS = re.compile(r"\d{19}")  # an integer past 64 bits has at least 19 digits


def _parse_int(digits: str) -> int | BigInt:
    value = int(digits)
    return BigInt(digits) if abs(value) > MAX_INT else value


def loads(data: bytes | str) -> tuple[Any, bool]:
    """(value, cut): the JSON document with values deeper than MAX_DEPTH replaced by CUT (cut is
    True then) and big integers as BigInt. Refused: not UTF-8, not JSON, nested too deep."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise Refused(f"not UTF-8 text ({exc.reason})") from None
    try:
        # the hook only where a big integer may be: a collection reads thousands of files
        value = json.loads(text, parse_int=_parse_int if _LONG_DIGITS.search(text) else None)
    except RecursionError:
        raise Refused("JSON nested too deep to read") from None
    except ValueError as exc:
        raise Refused(f"not valid JSON ({exc})") from None
    if text.count("{") + text.count("[") <= MAX_DEPTH or not _too_deep(value, MAX_DEPTH):
        return value, False  # the common case: nothing to cut, no copy (big ints: parse_int)
    return bounded(value)


def _too_deep(value: Any, max_depth: int) -> bool:
    """Are containers nested more than `max_depth` deep in a parsed JSON value? Iterative,
    and a container of scalars only (most of them) costs one C-level pass over its types."""
    stack = [(value, 1)]
    nested = {dict, list}
    while stack:
        item, depth = stack.pop()
        children = item.values() if type(item) is dict else item
        if nested.isdisjoint(map(type, children)):
            continue
        if depth >= max_depth:
            return True
        stack.extend((c, depth + 1) for c in children if type(c) in nested)
    return False


def _leaf(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        return BigInt(value)
    return value


def bounded(value: Any, max_depth: int = MAX_DEPTH) -> tuple[Any, bool]:
    """A copy of a JSON value at most `max_depth` containers deep (deeper ones replaced by
    CUT), big integers as BigInt; and whether anything was cut. Iterative: a value as deep as
    the parser allows is walked without recursion."""
    if not isinstance(value, (dict, list)):
        return _leaf(value), False
    cut = False
    top: Any = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, Any, int]] = [(value, top, 1)]  # (source, copy being filled, depth)
    while stack:
        source, target, depth = stack.pop()
        items = source.items() if isinstance(source, dict) else enumerate(source)
        for key, item in items:
            if isinstance(item, (dict, list)):
                if depth >= max_depth:
                    copy: Any = CUT
                    cut = True
                else:
                    copy = {} if isinstance(item, dict) else []
                    stack.append((item, copy, depth + 1))
            else:
                copy = _leaf(item)
            if isinstance(target, dict):
                target[key] = copy
            else:
                target.append(copy)
    return top, cut


def _under(real: str, top: str) -> bool:
    return real == top or real.startswith(top if top.endswith(os.sep) else top + os.sep)


class Tree:
    """The collected directories: what may be read, and a record of every file collect read or
    tried to read (`-o` may name none of them). roots None: any path may be read (a caller
    reading one file it was given), still only regular files of bounded size."""

    def __init__(self, roots: list[str | os.PathLike] | None) -> None:
        self.roots = None if roots is None else [os.path.realpath(r) for r in roots]
        self.touched: set[str] = set()  # real paths
        self._dirs: dict[str, str] = {}  # directory -> its real path (a collection asks often)

    def inside(self, path: str | os.PathLike, base: str | os.PathLike,
               strictly: bool = False) -> bool:
        """Does `path`, links resolved, lie in `base` (links resolved; strictly: not base
        itself)? A path that is none (a NUL byte, a name too long) lies nowhere."""
        try:
            real = self.real(path)[0]
            top = self.real(base)[0]
        except (ValueError, OSError):
            return False
        return _under(real, top) and not (strictly and real == top)

    def real(self, path: str | os.PathLike) -> tuple[str, os.stat_result | None]:
        """The path with every link resolved, and what it names (None: nothing)."""
        path = os.fspath(path)
        parent, name = os.path.split(path)
        try:
            st: os.stat_result | None = os.lstat(path)
        except OSError:
            st = None
        if (st is not None and stat.S_ISLNK(st.st_mode)) or name in ("", ".", ".."):
            real = os.path.realpath(path)
            try:
                return real, os.stat(real)
            except OSError:
                return real, None
        base = self._dirs.get(parent)
        if base is None:
            base = self._dirs[parent] = os.path.realpath(parent or ".")
        return os.path.join(base, name), st

    def refusal(self, path: str | os.PathLike, limit: int = MAX_READ_BYTES) -> str | None:
        """Why `path` is not read (outside the tree, not a regular file, too large), or None.
        Absent files are no refusal: the caller's read finds them missing."""
        return self._check(path, limit)[0]

    def _check(self, path: str | os.PathLike, limit: int) -> tuple[str | None, str]:
        try:
            real, st = self.real(path)
        except ValueError:  # a NUL byte in a name a file gave
            return "not a path (it holds a NUL byte)", ""
        self.touched.add(real)
        if self.roots is not None and not any(_under(real, r) for r in self.roots):
            return f"resolves to {real}, outside the collected directories: not read", real
        if st is not None:
            try:
                check_regular(st, real, limit)
            except OSError as exc:
                return exc.strerror or str(exc), real
        return None, real

    def read_bytes(self, path: str | os.PathLike, limit: int = MAX_READ_BYTES,
                   head: int | None = None) -> bytes:
        """The file's bytes (its first `head` bytes); Refused with the reason;
        FileNotFoundError when absent."""
        why, real = self._check(path, limit if head is None else 1 << 62)
        if why:
            raise Refused(why)
        try:
            # the path checked, not the name given; checked: only the open file again
            return read_regular(real, limit, head, stat_first=False)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise Refused(exc.strerror or str(exc)) from None

    def read_text(self, path: str | os.PathLike, limit: int = MAX_READ_BYTES) -> str:
        try:
            return self.read_bytes(path, limit).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Refused(f"not UTF-8 text ({exc.reason})") from None
