"""The one error type for user mistakes: the CLI prints its message and exits 2."""

from __future__ import annotations


class EdgetuneError(Exception):
    """A mistake the user can fix (bad file, key, value). Never shown as a traceback."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
