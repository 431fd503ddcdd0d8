"""What every hvdump and hvsim command shares: one-line errors and exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from drgn_hvdump import units
from drgn_hvdump.errors import HvdumpError

__all__ = ["EXIT_ERROR", "EXIT_USAGE", "parse_size", "print_json", "run_main"]

EXIT_ERROR = 1
EXIT_USAGE = 2


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
    prog: str, func: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None
) -> int:
    """Run a command's main: user errors become one line on stderr and a non-zero exit."""
    try:
        return func(argv)
    except HvdumpError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` or similar: not an error of ours.
        sys.stderr.close()
        return 0
