"""Errors a user can fix: printed as one line, exit status 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a refused operation. `str()` is the whole one-line message."""


class SpecError(UserError):
    """A problem in a sweep spec, located by file and key."""

    def __init__(self, path: str, key: str, message: str):
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
