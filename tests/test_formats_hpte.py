"""HPTEs: bit decoding, hpte_encode_v/r, tables, hashing and hpte_decode."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from drgn_hvdump.errors import FormatError
from drgn_hvdump.formats.hpte import (
    HPTE_GROUP_SIZE,
    HPTE_LAYOUT,
    HPTE_SIZE,
    KERNEL_BASE,
    SSIZE_1T,
    SSIZE_256M,
    Hpte,
    build_hpte_table,
    decode_ea,
    decode_va,
    encode_hpte,
    hpte_group,
    hpte_hash,
    hpte_slot,
    htab_hash_mask,
    kernel_ea_of_va,
    kernel_vsid,
    linear_map_hptes,
    parse_hpte_table,
    va_of,
    vsid_scramble_256m,
    vsid_unscramble_256m,
)
from tests.fuzz import FUZZ_EXAMPLES
from tests.test_formats_strategies import expect_format_error, fuzz_bytes

PATH = "/proc/vmcore-hpte"


def test_bits_of_a_linear_map_entry() -> None:
    # 16 MiB bolted page, M only, R/C set, PP 0, in the secondary group.
    e = Hpte(0x408F92C9441 << 4 | 0x10 | 0x4 | 0x2 | 0x1, 0x5000000 | 0x100 | 0x80 | 0x10)
    assert e.valid and e.secondary and e.large and e.bolted and not e.locked
    assert e.ssize == 0
    assert e.rpn(24) == 5 and e.real_address(24) == 0x5000000 and e.rpn(12) == 0x5000
    assert e.wimg == 0b0010 and e.referenced and e.changed
    assert e.pp == 0 and not e.pp0 and not e.n and e.key == 0 and e.lp == 0


def test_every_r_field() -> None:
    e = encode_hpte(
        0,
        0x123456789000,
        pp=3,
        pp0=True,
        wimg=0xF,
        n=True,
        referenced=True,
        changed=True,
        key=0b11010,
    )
    assert (e.pp, e.pp0, e.wimg, e.n, e.referenced, e.changed, e.key) == (
        3,
        True,
        15,
        True,
        True,
        True,
        26,
    )
    assert e.rpn() == 0x123456789
    assert e.r == 0x8000000000000000 | 0x3 << 60 | 0x123456789000 | 0b010 << 9 | 0x1FF
    assert not e.large and e.valid


def test_encode_v_like_hpte_encode_v() -> None:
    va = 0x408F92C94_5ABC000
    assert encode_hpte(va, 0).v == ((va >> 23) << 7) | 1
    assert encode_hpte(va, 0, 16).v == ((va >> 23) << 7) | 0x4 | 1
    # 16 MiB pages: avpnm = 1 clears VA bit 23
    assert encode_hpte(va | 1 << 23, 0, 24).v == ((va >> 23) & ~1) << 7 | 0x4 | 1
    assert encode_hpte(va, 0, ssize=SSIZE_1T).v >> 62 == 1
    assert encode_hpte(va, 0, valid=False, bolted=True, secondary=True).v & 0x7F == 0x12
    with pytest.raises(ValueError):
        encode_hpte(0, 0, pp=4)
    with pytest.raises(ValueError):
        encode_hpte(0, 0, ssize=2)


def test_encode_r_large_page_encoding() -> None:
    # 64 KiB page: penc 1 in the LP field, low RPN bits of the page cleared.
    e = encode_hpte(0, 0x12345FFFF, 16, penc=1)
    assert e.r & 0x0FFFFFFFFFFFF000 == 0x123450000 | 1 << 12
    # LP overlays the RPN: only the bits below the page shift are the encoding
    assert e.lp & 0xF == 1 and e.real_address(16) == 0x123450000


def test_vsid_and_va() -> None:
    ea = 0xC000000001234567
    assert kernel_vsid(ea) == (0xC00000000 * 200730139) % (2**36 - 1)
    assert vsid_scramble_256m(0xC00000000) == kernel_vsid(ea)
    assert va_of(ea) == kernel_vsid(ea) << 28 | 0x1234567
    assert kernel_ea_of_va(va_of(ea)) == ea


@given(st.integers(0, 2**36 - 2))
def test_unscramble_inverts_scramble(proto: int) -> None:
    assert vsid_unscramble_256m(vsid_scramble_256m(proto)) == proto


def test_groups_and_slots() -> None:
    mask = htab_hash_mask(1 << 18)
    assert mask == 2047
    assert hpte_group(0x12345, mask) == 0x345
    assert hpte_group(0x12345, mask, secondary=True) == (~0x12345) & 2047 == 0x4BA
    assert hpte_slot(0x12345, mask, True, 7) == 0x4BA * 8 + 7
    with pytest.raises(ValueError):
        hpte_slot(0, mask, index=8)
    for bad in (0, 100, 128 * 3):
        with pytest.raises(ValueError):
            htab_hash_mask(bad)


@given(
    st.integers(0, 2**64 - 1),
    st.sampled_from((12, 16, 24)),
    st.sampled_from((SSIZE_256M, SSIZE_1T)),
    st.integers(11, 24),
    st.booleans(),
    st.integers(0, 7),
)
def test_hpte_decode_inverts_hash_placement(
    va: int, shift: int, ssize: int, mask_bits: int, secondary: bool, index: int
) -> None:
    """An entry placed where the hash says decodes back to its page's VA."""
    va &= ~((1 << shift) - 1)
    mask = (1 << mask_bits) - 1
    vsid = va >> (28 if ssize == SSIZE_256M else 40)
    # Only 1 TiB segments need vsid << 25 to stay in 64 bits for the hash twin.
    h = hpte_hash(vsid, va, shift, ssize)
    slot = hpte_slot(h, mask, secondary, index)
    e = encode_hpte(va, 0x1000 << shift, shift, ssize=ssize, secondary=secondary)
    assert decode_va(e, slot, mask, shift) == va


@given(st.integers(0, 2**36 - 2).map(lambda p: p << 28), st.integers(0, 2**28 - 1))
def test_decode_ea_kernel_addresses(segment: int, offset: int) -> None:
    ea = (KERNEL_BASE | segment | offset) & ~0xFFF & (2**64 - 1)
    assume(ea >> 28 < 2**36 - 1)
    mask = 2**16 - 1
    h = hpte_hash(kernel_vsid(ea), ea, 12, SSIZE_256M)
    slot = hpte_slot(h, mask)
    assert decode_ea(encode_hpte(va_of(ea), 0), slot, mask, 12) == ea


def test_decode_ea_refuses_1t() -> None:
    with pytest.raises(ValueError):
        decode_ea(encode_hpte(0, 0, ssize=SSIZE_1T), 0, 2047, 12)


@pytest.mark.parametrize(
    ("mem", "table", "shift"),
    [(256 << 20, 1 << 18, 24), (8 << 20, 1 << 18, 12), (1 << 30, 1 << 18, 16)],
)
def test_linear_map(mem: int, table: int, shift: int) -> None:
    entries = linear_map_hptes(mem, table, shift, penc=1 if shift == 16 else 0)
    assert len(entries) == mem >> shift
    mask = htab_hash_mask(table)
    seen = set()
    for slot, e in entries.items():
        assert e.valid and e.bolted and e.referenced and e.changed and e.wimg == 0b0010
        assert e.large == (shift != 12)
        pa = e.real_address(shift)
        assert decode_ea(e, slot, mask, shift) == KERNEL_BASE + pa
        seen.add(pa)
    assert seen == set(range(0, mem, 1 << shift))
    data = build_hpte_table(entries, table)
    parsed = parse_hpte_table(data, path=PATH)
    assert {i: e for i, e in enumerate(parsed) if e.valid} == entries


def test_linear_map_full_table() -> None:
    with pytest.raises(ValueError, match="full"):
        linear_map_hptes(64 << 20, HPTE_GROUP_SIZE, 12)


hptes = st.builds(Hpte, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))


@given(st.lists(hptes, max_size=40), st.integers(0, 17))
def test_table_round_trip(entries: list[Hpte], prefix: int) -> None:
    size = len(entries) * HPTE_SIZE
    data = build_hpte_table(entries, size)
    assert data == b"".join(HPTE_LAYOUT.pack(e, "big") for e in entries)
    assert parse_hpte_table(bytes(prefix) + data, offset=prefix) == entries


def test_table_layout_is_big_endian() -> None:
    data = build_hpte_table({1: Hpte(0x0102030405060708, 0x1112131415161718)}, 128)
    assert data[16:32] == bytes.fromhex("0102030405060708 1112131415161718")
    assert data[:16] == bytes(16) and data[32:] == bytes(96)
    with pytest.raises(ValueError):
        build_hpte_table({8: Hpte()}, 128)
    with pytest.raises(ValueError):
        build_hpte_table([], 100)


def test_partial_entry_error() -> None:
    with pytest.raises(FormatError) as e:
        parse_hpte_table(bytes(8 + 128 + 5), path=PATH, offset=8)
    assert str(e.value).startswith(
        f"{PATH}: offset 0x88: HPTE table of 133 bytes ends with a partial 5-byte entry"
    )


@settings(max_examples=FUZZ_EXAMPLES)
@given(fuzz_bytes(build_hpte_table(linear_map_hptes(32 << 20, 256, 24), 256), max_size=300))
def test_fuzz(data: bytes) -> None:
    expect_format_error(parse_hpte_table, data)
