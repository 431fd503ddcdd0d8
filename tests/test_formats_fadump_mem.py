"""fadump's memory structure: registration, round trip, validation, validity."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings

from drgn_hvdump.errors import FormatError
from drgn_hvdump.formats.dump_header import (
    DUMP_ERROR_FLAG,
    DUMP_HEADER,
    DUMP_PERFORMED,
    DUMP_REQUEST_FLAG,
    DUMP_TRIGGERED,
    SECTION_DEST_TOO_SMALL,
    SOURCE_CPU,
    SOURCE_HPTE,
    build_dump_header,
    parse_dump_header,
    registration_header,
)
from drgn_hvdump.formats.fadump_mem import (
    MAX_BOOT_MEM_REGIONS,
    SOURCE_BOOT_MEMORY,
    SOURCE_PARAM_AREA,
    FadumpMem,
    build_fadump_mem,
    describe_fadump_mem,
    fadump_registration,
    fadump_validity,
    parse_fadump_mem,
    section_name,
)
from tests.fuzz import FUZZ_EXAMPLES
from tests.test_formats_strategies import expect_format_error, fuzz_bytes

PATH = "/proc/device-tree/rtas/ibm,kernel-dump"
MiB = 1 << 20


def _registered(regions: int = 2, param: bool = True) -> FadumpMem:
    size = 512 * MiB // regions
    return fadump_registration(
        cpu_size=0xA00,
        hpte_size=0,
        boot_regions=[(i * size, size) for i in range(regions)],
        dest_base=512 * MiB,
        param_area=(0x3000000, 2048) if param else None,
    )


def _performed(mem: FadumpMem) -> FadumpMem:
    """As the firmware fills it: every requested section copied whole."""
    sections = []
    for s in mem.sections:
        copied = 0 if s.source_type == SOURCE_PARAM_AREA else s.source_length
        s = dataclasses.replace(s, length_copied=copied, dump_flags=s.dump_flags | DUMP_PERFORMED)
        sections.append(s)
    header = dataclasses.replace(mem.header, status=DUMP_TRIGGERED | DUMP_PERFORMED)
    return FadumpMem(header, tuple(sections))


def test_registration_lays_copies_out_consecutively() -> None:
    mem = _registered(regions=2)
    assert [s.source_type for s in mem.sections] == [
        SOURCE_CPU,
        SOURCE_HPTE,
        SOURCE_BOOT_MEMORY,
        SOURCE_BOOT_MEMORY,
        SOURCE_PARAM_AREA,
    ]
    assert all(s.dump_flags == DUMP_REQUEST_FLAG for s in mem.sections)
    cpu, hpte, b0, b1, param = mem.sections
    assert cpu.destination_address == 512 * MiB
    assert hpte.destination_address == 512 * MiB + 0xA00
    assert b0.destination_address == hpte.destination_address  # radix: no HPTE bytes
    assert b1.destination_address == b0.destination_address + b0.source_length
    assert param.destination_address == param.source_address  # left in place
    assert mem.boot_memory_size == 512 * MiB
    assert [section_name(s, i) for i, s in enumerate(mem.boot_regions)] == ["boot0", "boot1"]


def test_round_trip_and_wire_size() -> None:
    mem = _registered(regions=3)
    raw = build_fadump_mem(mem)
    assert len(raw) == 0x28 + 6 * 40
    assert raw[:4] == b"\0\0\0\1"  # big-endian whatever the kernel's byte order
    assert parse_fadump_mem(raw, PATH) == dataclasses.replace(
        mem, header=dataclasses.replace(mem.header, num_of_sections=6)
    )


def test_a_phyp_header_reads_as_a_three_section_fadump_structure() -> None:
    """The wire format is shared: a phyp header is an old kernel's fadump registration."""
    header = registration_header(0x10000, 0x40000, 256 * MiB, 0x40000000)
    mem = parse_fadump_mem(build_dump_header(header), PATH)
    assert mem.sections == header.sections()
    assert build_fadump_mem(mem) == build_dump_header(header)
    assert parse_dump_header(build_fadump_mem(mem)) == header
    assert DUMP_HEADER.size == len(build_fadump_mem(mem))


@pytest.mark.parametrize(
    ("mutate", "message", "offset"),
    [
        (lambda b: b[:20], "truncated fadump memory structure", 0),
        (lambda b: b[: 0x28 + 40], "5 sections need", 0x28 + 40),
        (lambda b: b"\1\0\0\0" + b[4:], "little-endian structure", 0),
        (lambda b: b"\0\0\0\2" + b[4:], "version 0x2", 0),
        (lambda b: b[:4] + b"\0\x0b" + b[6:], "11 sections", 4),
        (lambda b: b[:4] + b"\0\0" + b[6:], "0 sections", 4),
        (lambda b: b[:8] + b"\0\0\0\x30" + b[12:], "first section at 0x30", 8),
        (lambda b: b[: 0x28 + 4] + b"\0\x07" + b[0x28 + 6 :], "unknown source type 0x0007", 0x2C),
        (lambda b: b[: 0x50 + 4] + b"\0\x01" + b[0x50 + 6 :], "more than 1 cpu", 0x54),
    ],
)
def test_bad_structures_are_one_clear_error(mutate, message, offset) -> None:  # type: ignore[no-untyped-def]
    raw = build_fadump_mem(_registered(regions=2))
    with pytest.raises(FormatError) as info:
        parse_fadump_mem(mutate(raw), PATH)
    assert message in str(info.value)
    assert info.value.offset == offset
    assert PATH in str(info.value)


def test_boot_memory_is_required_and_bounded() -> None:
    mem = _registered(regions=1, param=False)
    no_boot = FadumpMem(mem.header, mem.sections[:2])
    with pytest.raises(FormatError, match="no boot-memory section"):
        parse_fadump_mem(build_fadump_mem(no_boot), PATH)
    boot = mem.boot_regions[0]
    too_many = FadumpMem(mem.header, (*mem.sections[:2], *[boot] * (MAX_BOOT_MEM_REGIONS + 1)))
    with pytest.raises(FormatError, match="more than 7 boot"):
        parse_fadump_mem(build_fadump_mem(too_many), PATH)
    with pytest.raises(ValueError, match="1 to 7 boot-memory regions"):
        fadump_registration(cpu_size=1, hpte_size=0, boot_regions=[], dest_base=0)


def test_validity_follows_the_capture_kernel() -> None:
    mem = _performed(_registered(regions=2))
    assert fadump_validity(mem) == (True, "dump is valid")
    assert fadump_validity(_registered()) == (
        False,
        "dump taken by platform is incomplete: boot memory region 0 copied 0x0 of 0x10000000 bytes",
    )

    def with_section(i: int, **changes: int) -> FadumpMem:
        sections = list(mem.sections)
        sections[i] = dataclasses.replace(sections[i], **changes)
        return FadumpMem(mem.header, tuple(sections))

    errored = FadumpMem(dataclasses.replace(mem.header, status=DUMP_ERROR_FLAG), mem.sections)
    assert "status has the error flag" in fadump_validity(errored)[1]
    assert (
        "boot memory region 1 errors DEST_TOO_SMALL"
        in fadump_validity(with_section(3, error_flags=SECTION_DEST_TOO_SMALL))[1]
    )
    assert "CPU state errors" in fadump_validity(with_section(0, error_flags=0x8000))[1]
    assert fadump_validity(with_section(1, error_flags=0x8000))[0]  # HPTE errors are ignored
    assert fadump_validity(with_section(4, error_flags=0x8000))[0]  # so are the parameter area's
    assert "region 1 copied 0x1000" in fadump_validity(with_section(3, length_copied=0x1000))[1]
    assert "no CPU state copied" in fadump_validity(with_section(0, length_copied=0))[1]


def test_description_names_every_section() -> None:
    lines = describe_fadump_mem(_performed(_registered(regions=2)))
    assert lines[0] == "status 0xc000 (PERFORMED, TRIGGERED), 5 sections"
    assert [line.split(":")[0] for line in lines[1:]] == ["cpu", "hpte", "boot0", "boot1", "param"]


@settings(max_examples=FUZZ_EXAMPLES)
@given(fuzz_bytes(build_fadump_mem(_registered(regions=3)), max_size=0x28 + 11 * 40))
def test_fuzzed_structures_give_format_errors_only(data: bytes) -> None:
    expect_format_error(lambda d: parse_fadump_mem(d, PATH), data)
