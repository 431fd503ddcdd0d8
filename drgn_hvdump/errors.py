"""Errors that reach users as one line: what went wrong, where, and what to do."""

from __future__ import annotations

__all__ = ["FormatError", "HvdumpError"]


class HvdumpError(Exception):
    """Base class for errors caused by input or environment, not by a bug.

    Command-line tools print ``str(error)`` as a single line and exit with
    :attr:`exit_code`, without a traceback.
    """

    exit_code = 1


class FormatError(HvdumpError):
    """Malformed or unexpected bytes in a file or buffer.

    ``str()`` gives ``PATH: offset 0xOFF: WHAT; HINT`` with the parts that are known.
    """

    def __init__(
        self,
        what: str,
        *,
        path: str | None = None,
        offset: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.what = what
        self.path = path
        self.offset = offset
        self.hint = hint
        super().__init__(self._line())

    def _line(self) -> str:
        parts = []
        if self.path is not None:
            parts.append(str(self.path))
        if self.offset is not None:
            parts.append(f"offset {self.offset:#x}")
        parts.append(self.what)
        line = ": ".join(parts)
        if self.hint:
            line += f"; {self.hint}"
        return line.replace("\n", " ")

    def at(self, *, path: str | None = None, base: int = 0) -> FormatError:
        """Return a copy located in a file: ``path`` set and ``base`` added to the offset."""
        return FormatError(
            self.what,
            path=path if path is not None else self.path,
            offset=None if self.offset is None else self.offset + base,
            hint=self.hint,
        )
