"""Hypothesis strategies shared by the format tests: fuzz inputs and mutations.

``fuzz_bytes(valid)`` draws either arbitrary bytes or a valid input with a
few mutations (bytes set, interesting integers written in either byte
order, truncation, insertion, deletion), which reaches much deeper into a
parser than random bytes alone. ``expect_format_error`` runs a parser and
lets only :class:`FormatError` through.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from drgn_hvdump.errors import FormatError
from drgn_hvdump.formats.layout import ByteOrder
from tests.fuzz import FUZZ_EXAMPLES

__all__ = ["BYTEORDERS", "expect_format_error", "fuzz_bytes", "mutated"]

BYTEORDERS: tuple[ByteOrder, ByteOrder] = ("big", "little")

_INTERESTING = (0, 1, 2, 3, 4, 0x10, 0x28, 0x7F, 0x80, 0xFF, 0xFFFF, 0xFFFFFFFF, 2**63, 2**64 - 1)


@st.composite
def mutated(draw: st.DrawFn, valid: bytes | st.SearchStrategy[bytes], max_ops: int = 3) -> bytes:
    """``valid`` (or a draw from it) with 1..max_ops random edits."""
    base = draw(valid) if isinstance(valid, st.SearchStrategy) else valid
    data = bytearray(base)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.integers(0, 5))
        pos = draw(st.integers(0, len(data))) if data else 0
        if op == 0 and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == 1:
            width = draw(st.sampled_from((1, 2, 4, 8)))
            value = draw(st.sampled_from(_INTERESTING) | st.integers(0, 2**64 - 1))
            order = draw(st.sampled_from(BYTEORDERS))
            chunk = (value % (1 << (8 * width))).to_bytes(width, order)
            data[pos : pos + width] = chunk
        elif op == 2:
            del data[pos:]
        elif op == 3:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == 4:
            del data[pos : pos + draw(st.integers(1, 32))]
        else:
            # Bit flips keep lengths and most structure intact.
            if pos < len(data):
                data[pos] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


def fuzz_bytes(
    valid: bytes | st.SearchStrategy[bytes], max_size: int = 512
) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, or ``valid`` mutated."""
    return st.binary(max_size=max_size) | mutated(valid)


def expect_format_error(parse: Callable[[bytes], Any], data: bytes) -> None:
    """Run ``parse``; a FormatError is fine, any other exception fails the test."""
    with contextlib.suppress(FormatError):
        parse(data)


@settings(max_examples=min(FUZZ_EXAMPLES, 200))
@given(st.binary(min_size=1, max_size=64), st.data())
def test_mutated_differs_or_is_valid(valid: bytes, data: st.DataObject) -> None:
    """The mutation strategy produces bytes (sanity check of the helper itself)."""
    out = data.draw(mutated(valid))
    assert isinstance(out, bytes)
