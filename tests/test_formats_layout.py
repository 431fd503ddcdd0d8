"""Layouts: C natural alignment (checked against ctypes), round trips, errors."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drgn_hvdump.errors import FormatError
from drgn_hvdump.formats.layout import (
    I16,
    U32,
    U64,
    Layout,
    array,
    i8,
    i16,
    i32,
    i64,
    nested,
    raw,
    u8,
    u16,
    u32,
    u64,
)
from tests.test_formats_strategies import BYTEORDERS


@dataclass(frozen=True)
class Inner:
    a: int = u8()
    b: int = u32()


INNER = Layout(Inner)


@dataclass(frozen=True)
class Mixed:
    c: int = u8()
    s: int = i16()
    q: int = u64()
    tag: bytes = raw(3)
    inner: Inner = nested(INNER)
    words: tuple[int, ...] = array(U32, 3)
    signed: tuple[int, ...] = array(I16, 2)
    last: int = i8()
    big: int = i64()
    mid: int = i32()
    tail: int = u16()


MIXED = Layout(Mixed)


def _ctypes_mixed(base: type) -> Any:
    inner = type("CInner", (base,), {"_fields_": [("a", ctypes.c_uint8), ("b", ctypes.c_uint32)]})
    return type(
        "CMixed",
        (base,),
        {
            "_fields_": [
                ("c", ctypes.c_uint8),
                ("s", ctypes.c_int16),
                ("q", ctypes.c_uint64),
                ("tag", ctypes.c_char * 3),
                ("inner", inner),
                ("words", ctypes.c_uint32 * 3),
                ("signed", ctypes.c_int16 * 2),
                ("last", ctypes.c_int8),
                ("big", ctypes.c_int64),
                ("mid", ctypes.c_int32),
                ("tail", ctypes.c_uint16),
            ]
        },
    )


_CTYPES = {"big": ctypes.BigEndianStructure, "little": ctypes.LittleEndianStructure}


def test_offsets_and_size_match_c() -> None:
    cmixed = _ctypes_mixed(ctypes.Structure)
    assert MIXED.size == ctypes.sizeof(cmixed)
    for info in MIXED.fields:
        assert info.offset == getattr(cmixed, info.name).offset, info.name
    assert MIXED.offset_of("inner.b") == cmixed.inner.offset + 4


mixed_records = st.builds(
    Mixed,
    c=st.integers(0, 2**8 - 1),
    s=st.integers(-(2**15), 2**15 - 1),
    q=st.integers(0, 2**64 - 1),
    tag=st.binary(min_size=3, max_size=3),
    inner=st.builds(Inner, st.integers(0, 255), st.integers(0, 2**32 - 1)),
    words=st.tuples(*[st.integers(0, 2**32 - 1)] * 3),
    signed=st.tuples(*[st.integers(-(2**15), 2**15 - 1)] * 2),
    last=st.integers(-128, 127),
    big=st.integers(-(2**63), 2**63 - 1),
    mid=st.integers(-(2**31), 2**31 - 1),
    tail=st.integers(0, 2**16 - 1),
)


@given(mixed_records, st.sampled_from(BYTEORDERS))
def test_round_trip_and_bytes_match_ctypes(rec: Mixed, order: Any) -> None:
    data = MIXED.pack(rec, order)
    assert len(data) == MIXED.size
    assert MIXED.unpack_from(data, 0, order) == rec
    c = _ctypes_mixed(_CTYPES[order]).from_buffer_copy(data)
    assert (c.c, c.s, c.q, c.inner.a, c.inner.b, c.last, c.big, c.mid, c.tail) == (
        rec.c,
        rec.s,
        rec.q,
        rec.inner.a,
        rec.inner.b,
        rec.last,
        rec.big,
        rec.mid,
        rec.tail,
    )
    assert tuple(c.words) == rec.words
    assert tuple(c.signed) == rec.signed


@given(st.lists(mixed_records, max_size=4), st.sampled_from(BYTEORDERS))
def test_iter_unpack(recs: list[Mixed], order: Any) -> None:
    data = b"".join(MIXED.pack(r, order) for r in recs)
    assert list(MIXED.iter_unpack(data, order)) == recs


def test_unpack_at_offset_and_truncated() -> None:
    data = b"\xff" * 5 + INNER.pack(Inner(1, 2), "big")
    assert INNER.unpack_from(data, 5, "big") == Inner(1, 2)
    with pytest.raises(FormatError) as e:
        INNER.unpack_from(data, 6, "big", path="/x")
    assert "/x" in str(e.value) and "offset 0x6" in str(e.value)
    assert "needs 8 bytes, 7 left" in str(e.value)


def test_pack_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="Inner"):
        INNER.pack(Inner(256, 0))
    with pytest.raises(ValueError, match="tag"):
        MIXED.pack(Mixed(tag=b"ab"))
    with pytest.raises(ValueError, match="words"):
        MIXED.pack(Mixed(words=(1, 2)))
    with pytest.raises(TypeError):
        MIXED.pack(Inner())  # type: ignore[arg-type]


def test_declaration_errors() -> None:
    @dataclass
    class NotFrozen:
        a: int = u32()

    with pytest.raises(TypeError, match="frozen"):
        Layout(NotFrozen)

    @dataclass(frozen=True)
    class Plain:
        a: int = 0

    with pytest.raises(TypeError, match="layout field"):
        Layout(Plain)
    with pytest.raises(TypeError, match="expected 4"):
        Layout(Inner, size=4)


def test_defaults_and_repr() -> None:
    assert MIXED.default() == Mixed()
    assert MIXED.pack(Mixed()) == bytes(MIXED.size)
    assert "Mixed" in repr(MIXED)
    assert U64.size == 8
