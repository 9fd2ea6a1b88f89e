"""Errors a user can fix: printed as one line, exit status 2.

Every message is capped where it is made (MAX_MESSAGE characters, the middle elided): a
900,000-character value in a spec must not become a 900,000-character error line. Messages
quote values through `quote`, which caps one value at MAX_QUOTED characters."""

from __future__ import annotations

from typing import Any

MAX_QUOTED = 200  # characters of one quoted value
MAX_KEY = 200  # characters of the key path a SpecError names
MAX_MESSAGE = 1500  # characters of a whole message: the start and the end are kept


def shorten(text: str, limit: int = MAX_QUOTED) -> str:
    """`text`, cut to at most `limit` characters with '…' where it was cut."""
    return text if len(text) <= limit else text[:max(0, limit - 1)] + "…"


def quote(value: Any, limit: int = MAX_QUOTED) -> str:
    """repr(value) for an error message, at most `limit` characters."""
    if isinstance(value, str) and len(value) > limit:  # don't repr a megabyte only to cut it
        return repr(value[:limit])[:max(0, limit - 1)] + "…"
    return shorten(repr(value), limit)


def cap(message: str, limit: int = MAX_MESSAGE) -> str:
    """A message of at most `limit` characters: its start (file and key) and its end (what is
    allowed) are kept, the middle is elided."""
    if len(message) <= limit:
        return message
    tail = limit // 3
    head = limit - tail - 3
    return f"{message[:head]} … {message[-tail:]}"


class UserError(Exception):
    """Bad input or a refused operation. `str()` is the whole one-line message (capped)."""

    def __init__(self, message: str = ""):
        super().__init__(cap(str(message)))


class SpecError(UserError):
    """A problem in a sweep spec, located by file and key."""

    def __init__(self, path: str, key: str, message: str):
        key, message = shorten(str(key), MAX_KEY), cap(str(message))
        self.path, self.key, self.message = path, key, message
        super().__init__(f"{path}: {key}: {message}" if key else f"{path}: {message}")


def os_error(exc: OSError) -> str:
    """An OSError in one line that names the file; a full disk says so in words."""
    import errno

    where = f"{exc.filename}: " if exc.filename else ""
    why = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where}disk full ({why})"
    if exc.errno == errno.EROFS:
        return f"{where}read-only file system ({why})"
    return f"{where}{why}"
