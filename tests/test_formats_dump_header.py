"""The 160-byte phyp_dump header: layout, validation, registration, validity."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drgn_hvdump.errors import FormatError
from drgn_hvdump.formats.dump_header import (
    DUMP_ERROR_FLAG,
    DUMP_HEADER,
    DUMP_PERFORMED,
    DUMP_REQUEST_FLAG,
    DUMP_SECTION,
    DUMP_TRIGGERED,
    HEADER_SIZE,
    RMO_SIZE,
    SECTION_DEST_TOO_SMALL,
    SECTION_INVALID_DEST_ADDR,
    SOURCE_CPU,
    SOURCE_HPTE,
    SOURCE_RMO,
    DumpHeader,
    DumpSection,
    build_dump_header,
    describe_dump_header,
    is_dump_valid,
    parse_dump_header,
    registration_header,
    section_error_names,
    source_type_name,
    status_names,
)
from tests.fuzz import FUZZ_EXAMPLES
from tests.test_formats_strategies import expect_format_error, fuzz_bytes

PATH = "/proc/device-tree/rtas/ibm,kernel-dump"
CPU_SIZE = 0x10000
HPTE_SIZE = 0x1000
BASE = 0x177FEE000


def performed(h: DumpHeader) -> DumpHeader:
    """``h`` as the hypervisor leaves it after a successful dump."""
    return dataclasses.replace(
        h,
        status=DUMP_PERFORMED | DUMP_TRIGGERED,
        cpu=dataclasses.replace(h.cpu, length_copied=h.cpu.source_length),
        hpte=dataclasses.replace(h.hpte, length_copied=h.hpte.source_length),
        rmo=dataclasses.replace(h.rmo, length_copied=h.rmo.source_length),
    )


REGISTERED = registration_header(CPU_SIZE, HPTE_SIZE, RMO_SIZE, BASE)


def test_layout_matches_kernel_offsets() -> None:
    assert HEADER_SIZE == 160 and DUMP_SECTION.size == 40
    offsets = {
        "version": 0,
        "num_of_sections": 4,
        "status": 6,
        "first_offset_section": 8,
        "dump_disk_section": 12,
        "block_num_dd": 16,
        "num_of_blocks_dd": 24,
        "offset_dd": 32,
        "maxtime_to_auto": 36,
        "cpu": 40,
        "hpte": 80,
        "rmo": 120,
        "rmo.source_type": 124,
        "rmo.destination_address": 152,
    }
    for name, off in offsets.items():
        assert DUMP_HEADER.offset_of(name) == off, name


def test_registration_header_bytes() -> None:
    data = build_dump_header(REGISTERED)
    assert len(data) == 160
    assert data[:12] == bytes.fromhex("00000001 0003 0000 00000028")
    cpu = data[40:80]
    assert cpu[:8] == bytes.fromhex("00000001 0001 0000")
    assert int.from_bytes(cpu[16:24], "big") == CPU_SIZE
    assert int.from_bytes(cpu[32:40], "big") == BASE
    assert REGISTERED.hpte.destination_address == BASE + CPU_SIZE
    assert REGISTERED.rmo.destination_address == BASE + CPU_SIZE + HPTE_SIZE
    assert REGISTERED.rmo.source_length == 256 << 20
    assert all(s.dump_flags == DUMP_REQUEST_FLAG for s in REGISTERED.sections())
    assert [s.source_type for s in REGISTERED.sections()] == [SOURCE_CPU, SOURCE_HPTE, SOURCE_RMO]
    assert parse_dump_header(data) == REGISTERED


def test_parse_at_offset() -> None:
    data = b"\xee" * 7 + build_dump_header(REGISTERED) + b"tail"
    assert parse_dump_header(data, offset=7) == REGISTERED


u16s = st.integers(0, 2**16 - 1)
u32s = st.integers(0, 2**32 - 1)
u64s = st.integers(0, 2**64 - 1)


def sections(source_type: int) -> st.SearchStrategy[DumpSection]:
    return st.builds(DumpSection, u32s, st.just(source_type), u16s, u64s, u64s, u64s, u64s)


headers = st.builds(
    DumpHeader,
    status=u16s,
    dump_disk_section=u32s,
    block_num_dd=u64s,
    num_of_blocks_dd=u64s,
    offset_dd=u32s,
    maxtime_to_auto=u32s,
    cpu=sections(SOURCE_CPU),
    hpte=sections(SOURCE_HPTE),
    rmo=sections(SOURCE_RMO),
)


@given(headers)
def test_round_trip(h: DumpHeader) -> None:
    assert parse_dump_header(build_dump_header(h)) == h


@given(headers)
def test_little_endian_is_refused_with_byte_order_message(h: DumpHeader) -> None:
    swapped = DUMP_HEADER.pack(h, "little")
    with pytest.raises(FormatError) as e:
        parse_dump_header(swapped, path=PATH)
    assert str(e.value) == (
        f"{PATH}: offset 0x0: little-endian header: hypervisor structures are big-endian"
    )


def test_truncated() -> None:
    data = build_dump_header(REGISTERED)
    with pytest.raises(FormatError) as e:
        parse_dump_header(b"\0" * 10 + data[:150], path=PATH, offset=10)
    assert str(e.value).startswith(f"{PATH}: offset 0xa: truncated dump header: needs 160 bytes")


@pytest.mark.parametrize(
    ("field", "value", "offset", "message"),
    [
        ("version", 2, 0, "dump header version 0x2, expected 1"),
        ("num_of_sections", 10, 4, "dump header has 10 sections, expected 3"),
        ("first_offset_section", 0x30, 8, "first section at 0x30, expected 0x28"),
    ],
)
def test_header_field_errors(field: str, value: int, offset: int, message: str) -> None:
    bad = dataclasses.replace(REGISTERED, **{field: value})  # type: ignore[arg-type]
    with pytest.raises(FormatError) as e:
        parse_dump_header(build_dump_header(bad), path=PATH)
    assert str(e.value) == f"{PATH}: offset {offset:#x}: {message}"


@pytest.mark.parametrize(("name", "offset"), [("cpu", 44), ("hpte", 84), ("rmo", 124)])
def test_source_type_order(name: str, offset: int) -> None:
    section = dataclasses.replace(getattr(REGISTERED, name), source_type=0x0100)
    bad = dataclasses.replace(REGISTERED, **{name: section})
    with pytest.raises(FormatError, match=f"{name} section has source type 0x0100") as e:
        parse_dump_header(build_dump_header(bad), path=PATH)
    assert e.value.offset == offset and e.value.path == PATH


def test_swapped_sections_are_refused() -> None:
    bad = dataclasses.replace(REGISTERED, cpu=REGISTERED.hpte, hpte=REGISTERED.cpu)
    with pytest.raises(FormatError, match="expected 0x0001 \\(CPU\\)"):
        parse_dump_header(build_dump_header(bad))


def test_flag_names() -> None:
    assert status_names(0) == []
    assert status_names(DUMP_PERFORMED | DUMP_TRIGGERED) == ["PERFORMED", "TRIGGERED"]
    assert status_names(DUMP_ERROR_FLAG | 0x1) == ["ERROR", "0x0001"]
    assert section_error_names(SECTION_INVALID_DEST_ADDR | SECTION_DEST_TOO_SMALL) == [
        "INVALID_DEST_ADDR",
        "DEST_TOO_SMALL",
    ]
    assert section_error_names(0xFFFF)[:5] == [
        "INVALID_DATA_TYPE",
        "INVALID_SOURCE_ADDR",
        "LENGTH_EXCEEDS_SOURCE",
        "INVALID_DEST_ADDR",
        "DEST_TOO_SMALL",
    ]
    assert source_type_name(SOURCE_RMO) == "RMO" and source_type_name(7) == "0x0007"
    lines = describe_dump_header(performed(REGISTERED))
    assert lines[0] == "status 0xc000 (PERFORMED, TRIGGERED)"
    assert lines[3] == (
        "RMO: source 0x0+0x10000000 -> 0x177fff000, copied 0x10000000, flags 0x1, errors none"
    )


def test_validity_like_fadump() -> None:
    good = performed(REGISTERED)
    assert is_dump_valid(good) == (True, "dump is valid")
    cases = [
        (dataclasses.replace(good, status=good.status | DUMP_ERROR_FLAG), "not valid: status"),
        (
            dataclasses.replace(good, cpu=dataclasses.replace(good.cpu, error_flags=0x1000)),
            "CPU section errors INVALID_DEST_ADDR",
        ),
        (
            dataclasses.replace(good, rmo=dataclasses.replace(good.rmo, error_flags=0x8000)),
            "RMO section errors INVALID_DATA_TYPE",
        ),
        (
            dataclasses.replace(good, rmo=dataclasses.replace(good.rmo, length_copied=4096)),
            "incomplete: RMO copied 0x1000 of 0x10000000",
        ),
        (
            dataclasses.replace(good, cpu=dataclasses.replace(good.cpu, length_copied=0)),
            "incomplete: no CPU state",
        ),
        (REGISTERED, "incomplete"),
    ]
    for h, reason in cases:
        ok, why = is_dump_valid(h)
        assert not ok and reason in why, (h, why)
    # fadump ignores HPTE errors
    hpte_bad = dataclasses.replace(good, hpte=dataclasses.replace(good.hpte, error_flags=0x4000))
    assert is_dump_valid(hpte_bad)[0]


@settings(max_examples=FUZZ_EXAMPLES)
@given(fuzz_bytes(build_dump_header(performed(REGISTERED)), max_size=200))
def test_fuzz(data: bytes) -> None:
    expect_format_error(parse_dump_header, data)
