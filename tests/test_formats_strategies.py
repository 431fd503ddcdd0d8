"""Hypothesis strategies shared by the format tests: fuzz inputs and mutations.

A fuzz example is one drawn byte string, which keeps hypothesis's cost per
example low (each extra draw costs about as much as running a parser many
times). Its first byte picks the mode and the variant: arbitrary bytes, or
one of the valid inputs edited by a small program read from the remaining
bytes (bytes set, interesting integers written in either byte order,
truncation, insertion, deletion, bit flips). Mutating valid input reaches
much deeper into a parser than random bytes alone, and hypothesis still
shrinks a failure to a short program.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from drgn_hvdump.errors import FormatError
from drgn_hvdump.formats.layout import ByteOrder
from tests.fuzz import FUZZ_EXAMPLES

__all__ = ["BYTEORDERS", "Fuzzed", "expect_format_error", "fuzz_bytes", "mutate"]

BYTEORDERS: tuple[ByteOrder, ByteOrder] = ("big", "little")

_INTERESTING = (0, 1, 2, 3, 4, 8, 0x10, 0x28, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)
_WIDTHS = (1, 2, 4, 8)


def mutate(valid: bytes, program: bytes) -> bytes:
    """``valid`` edited by ``program``: 4-byte instructions (op, position hi, lo, argument)."""
    data = bytearray(valid)
    for i in range(0, len(program) - 3, 4):
        op, hi, lo, arg = program[i : i + 4]
        pos = ((hi << 8) | lo) % (len(data) + 1)
        kind = op % 6
        if kind == 0:
            if pos < len(data):
                data[pos] = arg
        elif kind == 1:
            width = _WIDTHS[(op >> 3) & 3]
            value = _INTERESTING[arg % len(_INTERESTING)]
            if arg >= 0xF0:
                value = -1 - (arg & 0xF)  # all ones, or nearly
            order: ByteOrder = "big" if op & 0x20 else "little"
            data[pos : pos + width] = (value % (1 << (8 * width))).to_bytes(width, order)
        elif kind == 2:
            del data[pos:]
        elif kind == 3:
            data[pos:pos] = bytes([arg]) * (op // 6 % 16 + 1)
        elif kind == 4:
            del data[pos : pos + arg % 32 + 1]
        elif pos < len(data):
            data[pos] ^= 1 << (arg % 8)
    return bytes(data)


@dataclass(frozen=True)
class Fuzzed:
    """A fuzz input and the variant it was derived from (index into the valid inputs)."""

    data: bytes
    variant: int


def _decode(valids: Sequence[bytes], raw: bytes) -> Fuzzed:
    if not raw:
        return Fuzzed(b"", 0)
    head, rest = raw[0], raw[1:]
    variant = (head >> 1) % len(valids)
    if head & 1:
        return Fuzzed(mutate(valids[variant], rest[:32]), variant)
    return Fuzzed(rest, variant)


def fuzz_cases(valids: Sequence[bytes], max_size: int = 512) -> st.SearchStrategy[Fuzzed]:
    """Arbitrary bytes or a mutated valid input, with the variant chosen."""
    return st.binary(max_size=max_size + 1).map(lambda raw: _decode(valids, raw))


def fuzz_bytes(valid: bytes, max_size: int = 512) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, or ``valid`` mutated."""
    return fuzz_cases([valid], max_size).map(lambda f: f.data)


def expect_format_error(parse: Callable[[bytes], Any], data: bytes) -> None:
    """Run ``parse``; a FormatError is fine, any other exception fails the test."""
    with contextlib.suppress(FormatError):
        parse(data)


def test_mutate_programs() -> None:
    valid = bytes(range(16))
    assert mutate(valid, b"") == valid
    assert mutate(valid, bytes([0, 0, 3, 0xAA])) == valid[:3] + b"\xaa" + valid[4:]
    assert mutate(valid, bytes([2, 0, 5, 0])) == valid[:5]
    assert mutate(valid, bytes([4, 0, 0, 1])) == valid[2:]
    assert mutate(valid, bytes([5, 0, 0, 0])) == b"\x01" + valid[1:]
    assert mutate(valid, bytes([3, 0, 16, 7])) == valid + b"\x07"
    # width 4, big-endian, 0xffffffff at offset 2
    assert (
        mutate(valid, bytes([1 | 2 << 3 | 0x20, 0, 2, 13])) == valid[:2] + b"\xff" * 4 + valid[6:]
    )


@settings(max_examples=min(FUZZ_EXAMPLES, 300))
@given(fuzz_cases([b"abc", b"defgh"], max_size=40))
def test_fuzz_cases_are_bytes(case: Fuzzed) -> None:
    assert isinstance(case.data, bytes) and case.variant in (0, 1)
