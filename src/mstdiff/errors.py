"""User-facing errors.

Every problem caused by the user's input (a file, a column, a config value) raises
:class:`InputError` with a message that says *where* (file, line or column), *what* was wrong and
*how to fix it*. The CLI prints the message without a traceback and exits with status 2.
"""

from __future__ import annotations


class MstdiffError(Exception):
    """Base class of the package's own errors."""


class InputError(MstdiffError, ValueError):
    """Bad input from the user: the message names the place, the problem and the fix."""

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        parts = []
        if where:
            parts.append(f"{where}: ")
        parts.append(what)
        if fix:
            parts.append(f"\n  how to fix: {fix}")
        super().__init__("".join(parts))
