"""The register save area: ids, layout, round trips, errors, pt_regs mapping."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drgn_hvdump.errors import FormatError
from drgn_hvdump.formats.elfcore import PtRegs
from drgn_hvdump.formats.regsave import (
    CPUEND,
    CPUSTRT,
    POWER6_REGISTERS,
    REGSAVE_ENTRY,
    REGSAVE_HEADER,
    REGSAVE_MAGIC,
    CpuState,
    RegEntry,
    RegsaveHeader,
    build_regsave,
    cpu_state_to_pt_regs,
    parse_regsave,
    reg_id,
    reg_name,
    regsave_size,
)
from tests.fuzz import FUZZ_EXAMPLES
from tests.test_formats_strategies import expect_format_error, fuzz_bytes

PATH = "/proc/vmcore-cpu-state"


def full_cpu(cpu: int) -> CpuState:
    return CpuState(cpu, {name: (cpu << 32) | i for i, name in enumerate(POWER6_REGISTERS)})


def test_ids() -> None:
    assert REGSAVE_MAGIC == 0x5245475341564500
    assert reg_id("GPR05") == 0x4750523035000000
    assert reg_id("GPR29") == 0x4750523239000000
    assert reg_id("CPUSTRT") == CPUSTRT == int.from_bytes(b"CPUSTRT\0", "big")
    assert reg_name(CPUEND) == "CPUEND"
    assert reg_name(reg_id("DSISR")) == "DSISR"
    assert reg_name(0) == "0x0000000000000000"
    assert reg_name(0x0041000000000000) == "0x0041000000000000"  # leading NUL
    assert reg_name(0x4100410000000000) == "0x4100410000000000"  # embedded NUL
    assert reg_id(reg_name(0xFFFFFFFFFFFFFFFF)) == 0xFFFFFFFFFFFFFFFF
    for bad in ("", "TOOLONGNAME", "A B", "\x01", "é"):
        with pytest.raises(ValueError):
            reg_id(bad)


def test_layout_and_unaligned_entries() -> None:
    data = build_regsave([CpuState(7, {"NIA": 0x1234})])
    assert len(data) == regsave_size(1, 1) == 16 + 4 + 3 * 16
    assert data[:16] == b"REGSAVE\0" + bytes.fromhex("00000001 00000010")
    assert data[16:20] == b"\0\0\0\1"
    # entries start at 20: not 8-byte aligned
    assert data[20:36] == b"CPUSTRT\0" + (7).to_bytes(8, "big")
    assert data[36:44] == b"NIA\0\0\0\0\0"
    assert data[52:60] == b"CPUEND\0\0"


def test_qemu_style_area_with_gap_and_tail() -> None:
    cpus = [full_cpu(0), CpuState(1, {}), full_cpu(2)]
    data = build_regsave(cpus, version=0, num_cpu_offset=0x1C) + bytes(12)
    assert data[16:0x1C] == bytes(12)
    assert parse_regsave(data) == cpus


def test_cpu_id_is_low_32_bits() -> None:
    header = REGSAVE_HEADER.pack(RegsaveHeader(REGSAVE_MAGIC, 1, 16)) + b"\0\0\0\1"
    entries = REGSAVE_ENTRY.pack(RegEntry(CPUSTRT, 0xDEAD00000005)) + REGSAVE_ENTRY.pack(
        RegEntry(CPUEND, 5)
    )
    assert parse_regsave(header + entries) == [CpuState(5, {})]


register_names = st.sampled_from(POWER6_REGISTERS) | st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=8
).filter(lambda n: n not in ("CPUSTRT", "CPUEND"))
cpu_states = st.builds(
    CpuState,
    st.integers(0, 2**32 - 1),
    st.dictionaries(register_names, st.integers(0, 2**64 - 1), max_size=12),
)


@given(st.lists(cpu_states, max_size=6), st.integers(16, 64), st.integers(0, 2**32 - 1))
def test_round_trip(cpus: list[CpuState], offset: int, version: int) -> None:
    data = build_regsave(cpus, version=version, num_cpu_offset=offset)
    assert len(data) == offset + 4 + sum(len(c.regs) + 2 for c in cpus) * 16
    parsed = parse_regsave(b"\xaa" * 3 + data + b"\xbb" * 5, offset=3)
    assert parsed == cpus
    assert [list(p.regs) for p in parsed] == [list(c.regs) for c in cpus]


@given(st.lists(cpu_states, min_size=1, max_size=3))
def test_little_endian_is_refused(cpus: list[CpuState]) -> None:
    data = build_regsave(cpus)
    swapped = REGSAVE_HEADER.pack(REGSAVE_HEADER.unpack_from(data), "little") + data[16:]
    with pytest.raises(FormatError) as e:
        parse_regsave(swapped, path=PATH)
    assert str(e.value) == (
        f"{PATH}: offset 0x0: little-endian register save area: hypervisor structures are big-endian"
    )


def _entries(*pairs: tuple[str, int]) -> bytes:
    return b"".join(REGSAVE_ENTRY.pack(RegEntry(reg_id(n), v)) for n, v in pairs)


def _area(count: int, body: bytes) -> bytes:
    return (
        REGSAVE_HEADER.pack(RegsaveHeader(REGSAVE_MAGIC, 1, 16)) + count.to_bytes(4, "big") + body
    )


@pytest.mark.parametrize(
    ("data", "offset", "message"),
    [
        (b"REGSAVE\0", 0, "truncated register save area"),
        (b"REGSAVX\0" + bytes(12), 0, "bad register save area magic 0x5245475341565800"),
        (
            REGSAVE_HEADER.pack(RegsaveHeader(REGSAVE_MAGIC, 1, 0x100)),
            0xC,
            "CPU count offset 0x100",
        ),
        (
            REGSAVE_HEADER.pack(RegsaveHeader(REGSAVE_MAGIC, 1, 8)) + bytes(8),
            0xC,
            "CPU count offset 0x8",
        ),
        (_area(3, _entries(("CPUSTRT", 0), ("CPUEND", 0))), 0x10, "3 CPUs cannot fit"),
        (
            _area(1, _entries(("NIA", 0), ("CPUEND", 0))),
            0x14,
            "expected CPUSTRT for CPU 0 of 1, found NIA",
        ),
        (
            _area(1, _entries(("CPUSTRT", 0), ("NIA", 1), ("CPUSTRT", 1), ("CPUEND", 1))),
            0x34,
            "CPU 0 has no CPUEND before the next CPUSTRT",
        ),
        (
            _area(1, _entries(("CPUSTRT", 4), ("NIA", 1)) + b"CPUEND"),
            0x34,
            "truncated register entry: 6 of 16 bytes (CPU 4 has no CPUEND)",
        ),
        (
            _area(2, _entries(("CPUSTRT", 0), ("CPUEND", 0), ("CPUSTRT", 1), ("NIA", 0))),
            0x54,
            "truncated register entry: 0 of 16 bytes (CPU 1 has no CPUEND)",
        ),
    ],
)
def test_errors_name_file_and_offset(data: bytes, offset: int, message: str) -> None:
    with pytest.raises(FormatError) as e:
        parse_regsave(data, path=PATH)
    assert str(e.value).startswith(f"{PATH}: offset {offset:#x}: {message}"), str(e.value)
    # the same area further inside a file: the offset moves with it
    with pytest.raises(FormatError) as e2:
        parse_regsave(bytes(0x40) + data, path=PATH, offset=0x40)
    assert e2.value.offset == offset + 0x40


def test_unknown_registers_kept_but_not_mapped() -> None:
    state = CpuState(
        3,
        {
            "GPR00": 1,
            "GPR31": 31,
            "NIA": 0xC000000000001234,
            "MSR": 0x8000000000001032,
            "CTR": 4,
            "LR": 5,
            "XER": 6,
            "CR": 7,
            "DAR": 8,
            "DSISR": 9,
            "SRR0": 10,
            "GPR32": 11,
            "0x0000000000000001": 12,
        },
    )
    parsed = parse_regsave(build_regsave([state]))
    assert parsed == [state]
    regs = cpu_state_to_pt_regs(parsed[0])
    gpr = [0] * 32
    gpr[0], gpr[31] = 1, 31
    assert regs == PtRegs(
        gpr=tuple(gpr),
        nip=0xC000000000001234,
        msr=0x8000000000001032,
        ctr=4,
        link=5,
        xer=6,
        ccr=7,
        dar=8,
        dsisr=9,
    )


def test_power6_list() -> None:
    assert POWER6_REGISTERS[:32] == tuple(f"GPR{n:02d}" for n in range(32))
    named = ("NIA", "MSR", "CTR", "LR", "XER", "CR", "DAR", "DSISR", "SRR0", "SRR1", "PVR")
    assert set(POWER6_REGISTERS).issuperset((*named, "PIR"))
    assert len(set(POWER6_REGISTERS)) == len(POWER6_REGISTERS)


def test_build_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        build_regsave([], num_cpu_offset=8)
    with pytest.raises(ValueError):
        build_regsave([CpuState(2**32, {})])


# Small on purpose: depth comes from the mutations, not from the number of registers.
_VALID = build_regsave(
    [CpuState(0, {"GPR01": 1, "NIA": 2, "MSR": 3}), CpuState(1, {"NIA": 1, "XYZ": 2})]
)


@settings(max_examples=FUZZ_EXAMPLES)
@given(fuzz_bytes(_VALID, max_size=256))
def test_fuzz(data: bytes) -> None:
    expect_format_error(parse_regsave, data)
