"""One-line errors for both command-line tools (drgn_hvdump.clitools.run_main)."""

from __future__ import annotations

import errno
from collections.abc import Sequence

import pytest

from drgn_hvdump.clitools import EXIT_ERROR, run_main
from drgn_hvdump.errors import FormatError


def _raising(exc: BaseException):  # type: ignore[no-untyped-def]
    def main(argv: Sequence[str] | None) -> int:
        raise exc

    return main


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (
            FormatError("bad magic", path="/d/x", offset=16),
            "tool: error: /d/x: offset 0x10: bad magic",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device", "/out/dump"),
            "tool: error: /out/dump: No space left on device",
        ),
        (PermissionError(errno.EACCES, "Permission denied"), "tool: error: Permission denied"),
    ],
)
def test_user_errors_are_one_line(
    exc: BaseException, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main("tool", _raising(exc), None) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.splitlines() == [line]


def test_a_command_adds_its_own_user_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main("tool", _raising(ValueError("a\nb")), None, user_errors=(ValueError,)) == 1
    assert capsys.readouterr().err == "tool: error: a b\n"
    with pytest.raises(ValueError):  # a bug elsewhere keeps its traceback
        run_main("tool", _raising(ValueError("bug")), None)


def test_interrupt(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main("tool", _raising(KeyboardInterrupt()), None) == 130
    assert capsys.readouterr().err == "tool: interrupted by SIGINT\n"
