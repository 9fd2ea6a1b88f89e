"""Errors a user can fix: printed as one line, exit status 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a refused operation. `str()` is the whole one-line message."""


class SpecError(UserError):
    """A problem in a sweep spec, located by file and key."""

    def __init__(self, path: str, key: str, message: str):
        self.path, self.key, self.message = path, key, message
        super().__init__(f"{path}: {key}: {message}" if key else f"{path}: {message}")
