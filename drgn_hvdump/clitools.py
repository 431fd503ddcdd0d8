"""What every hvdump and hvsim command shares: one-line errors and exit codes."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from drgn_hvdump import units
from drgn_hvdump.errors import HvdumpError

__all__ = [
    "EXIT_ERROR",
    "EXIT_USAGE",
    "ArgumentParser",
    "existing_root",
    "fix_mmap_threshold",
    "parse_size",
    "print_json",
    "run_main",
]

EXIT_ERROR = 1
EXIT_USAGE = 2


_M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number (malloc.h)."""


def fix_mmap_threshold(size: int = 1 << 20) -> bool:
    """Serve allocations of ``size`` bytes and more with their own mappings, for good.

    glibc raises its mmap threshold each time a mapped block is freed (up to
    32 MiB), after which the collector's 4 MiB batch buffers and 16 MiB
    chunks come from the thread arenas and fragment them: peak RSS then grew
    with the dump's length (106 MiB for 1 GiB, 127 MiB for 16 GiB; 105 and
    112 MiB with the threshold fixed). Setting it turns the adjustment off.
    For commands that stream large buffers; False where there is no glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(size)))
    except (OSError, AttributeError):
        return False


class ArgumentParser(argparse.ArgumentParser):
    """argparse that takes ``-4G`` as an option's value (argparse alone reads it as an
    unknown option and says "expected one argument"), so the value's own check can
    say what is wrong with it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\d")


def existing_root(root: Path) -> Path:
    """``--root`` checked: a typo must not read as a machine without dump support."""
    if not root.is_dir():
        raise HvdumpError(
            f"{root}: no such directory: --root is the capture kernel's root (/ on the "
            "LPAR itself, or where its root is mounted)"
        )
    return root


def parse_size(text: str) -> int:
    """argparse type for sizes: ``4G``, ``512M``, ``64K``, ``0x10000`` or plain bytes."""
    try:
        return units.parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def run_main(
    prog: str,
    func: Callable[[Sequence[str] | None], int],
    argv: Sequence[str] | None,
    *,
    user_errors: tuple[type[Exception], ...] = (),
    interrupted: str = "",
    process: bool = False,
) -> int:
    """Run a command's main: user errors become one line on stderr and a non-zero exit.

    User errors are :class:`HvdumpError`, the ``user_errors`` a command adds,
    and any ``OSError`` (a file that is missing, unreadable or full is the
    user's to fix: named, with the system's reason).

    SIGTERM ends the command as Ctrl-C does while it works. Once its work is
    over, a SIGTERM could only cut the exit short (a silent death, or an
    interpreter killing itself with SIGINT for an uncaught interrupt): when
    ``process`` says this call is the whole process (a command line, not a
    caller in the same interpreter), it is ignored from then on; otherwise the
    caller's handler comes back.
    """
    errors: tuple[type[Exception], ...] = (HvdumpError, *user_errors)
    stopped_by = [signal.SIGINT]

    def on_term(signum: int, _frame: object) -> None:
        # SIGTERM (systemd, kill, Ansible's timeout) ends a command as Ctrl-C does:
        # one line, and a collection resumable from its journal.
        stopped_by[0] = signal.Signals(signum)
        raise KeyboardInterrupt

    previous = None
    with contextlib.suppress(ValueError):  # not the main thread: keep the default
        previous = signal.signal(signal.SIGTERM, on_term)

    def finished() -> None:
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGTERM, signal.SIG_IGN if process else previous)

    try:
        return _run(prog, func, argv, errors, interrupted, stopped_by, finished, exit_now=process)
    finally:
        finished()


def _run(
    prog: str,
    func: Callable[[Sequence[str] | None], int],
    argv: Sequence[str] | None,
    errors: tuple[type[Exception], ...],
    interrupted: str,
    stopped_by: list[signal.Signals],
    finished: Callable[[], None],
    *,
    exit_now: bool = False,
) -> int:
    try:
        code = func(argv)
        finished()
        return code
    except errors as error:
        message = str(error).replace("\n", " ")
        print(f"{prog}: error: {message}", file=sys.stderr)
        return int(getattr(error, "exit_code", EXIT_ERROR))
    except KeyboardInterrupt:
        finished()
        hint = f"; {interrupted}" if interrupted else ""
        print(f"{prog}: interrupted by {stopped_by[0].name}{hint}", file=sys.stderr)
        code = 128 + int(stopped_by[0])
        if exit_now:
            # The whole process, its work stopped and its files closed: exit with the
            # status just said. Finishing the interpreter (joining worker threads an
            # interrupt left behind, with SIGINT back at its default) once ended a
            # SIGTERMed collector with SIGINT's status instead (1 run in 3 of a CI).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    except BrokenPipeError:
        # Output piped into `head` or similar: not an error of ours. Point stdout at
        # /dev/null so the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"{prog}: error: {where}{error.strerror or error}", file=sys.stderr)
        return EXIT_ERROR
