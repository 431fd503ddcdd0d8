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


def test_sigterm_after_the_work_is_over() -> None:
    """In-process callers get their SIGTERM handler back; a whole process ignores a
    SIGTERM that would only cut its exit short."""
    import signal

    def mine(signum: int, frame: object) -> None:
        pass

    old = signal.signal(signal.SIGTERM, mine)
    try:
        assert run_main("tool", lambda _: 0, None) == 0
        assert signal.getsignal(signal.SIGTERM) is mine
        assert run_main("tool", _raising(KeyboardInterrupt()), None) == 130
        assert signal.getsignal(signal.SIGTERM) is mine
        assert run_main("tool", lambda _: 3, None, process=True) == 3
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, old)
