"""ELF64 cores: prstatus, notes, the header writer and the checked reader, both byte orders."""

from __future__ import annotations

import contextlib
import itertools
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drgn_hvdump.errors import FormatError
from drgn_hvdump.formats.elfcore import (
    ELF64_EHDR,
    ELF64_NHDR,
    ELF64_PHDR,
    ELF_PRSTATUS_PPC64,
    EM_PPC64,
    EM_X86_64,
    NT_PRSTATUS,
    PAGE_OFFSET_PPC64,
    PN_XNUM,
    PT_LOAD,
    PT_NOTE,
    PT_REGS_PPC64,
    CoreLayout,
    Elf64Phdr,
    ElfCore,
    LoadSegment,
    Note,
    PtRegs,
    build_core_header,
    build_notes,
    build_prstatus,
    parse_notes,
    parse_prstatus,
    write_core,
)
from drgn_hvdump.formats.layout import ByteOrder
from drgn_hvdump.formats.vmcoreinfo import build_vmcoreinfo
from tests.fuzz import FUZZ_EXAMPLES
from tests.test_formats_strategies import BYTEORDERS, Fuzzed, expect_format_error, fuzz_cases

u64s = st.integers(0, 2**64 - 1)
pt_regs = st.builds(
    PtRegs,
    gpr=st.tuples(*[u64s] * 32),
    nip=u64s,
    msr=u64s,
    orig_gpr3=u64s,
    ctr=u64s,
    link=u64s,
    xer=u64s,
    ccr=u64s,
    softe=u64s,
    trap=u64s,
    dar=u64s,
    dsisr=u64s,
    result=u64s,
)
orders = st.sampled_from(BYTEORDERS)


def cpu_regs(cpu: int) -> PtRegs:
    return PtRegs(
        gpr=tuple((cpu << 56) | (n << 8) | 0xAB for n in range(32)),
        nip=0xC000000000012340 + cpu * 4,
        msr=0x8000000000009032,
        ctr=0x1000 + cpu,
        link=0xC000000000056780 + cpu * 8,
        xer=0x20000000 | cpu,
        ccr=0x24000080 | cpu,
        trap=0x300,
        dar=0xDEAD0000 + cpu,
        dsisr=0x40000000,
    )


VMCOREINFO = build_vmcoreinfo(
    {"OSRELEASE": "2.6.27-ppc64", "PAGESIZE": "4096", "SYMBOL(_stext)": "c000000000000000"}
)


def sample_notes(order: Any, ncpus: int = 3) -> list[Note]:
    notes = [
        Note("CORE", NT_PRSTATUS, build_prstatus(cpu_regs(c), order, pid=c + 1))
        for c in range(ncpus)
    ]
    return [*notes, Note("VMCOREINFO", 0, VMCOREINFO)]


def sample_segments() -> list[tuple[LoadSegment, bytes]]:
    return [
        (LoadSegment(0, 0x3000), bytes(range(256)) * 0x30),
        # a hole from 0x3000 to 0x10000
        (LoadSegment(0x10000, 0x2000, filesz=0x800), b"\x5a" * 0x800),
        (LoadSegment(0x12000, 0x1000), b"\xc3" * 0x1000),
    ]


# -- prstatus ----------------------------------------------------------------


def test_prstatus_layout() -> None:
    assert ELF_PRSTATUS_PPC64.size == 504 and PT_REGS_PPC64.size == 352
    offsets = {"pr_cursig": 12, "pr_sigpend": 16, "pr_pid": 32, "pr_utime": 48, "pr_reg": 112}
    for name, off in offsets.items():
        assert ELF_PRSTATUS_PPC64.offset_of(name) == off
    assert ELF_PRSTATUS_PPC64.offset_of("pr_reg.nip") == 112 + 256
    assert ELF_PRSTATUS_PPC64.offset_of("pr_reg.result") == 112 + 43 * 8
    assert ELF_PRSTATUS_PPC64.offset_of("pr_fpvalid") == 496


@pytest.mark.parametrize("order", BYTEORDERS)
def test_prstatus_bytes(order: Any) -> None:
    regs = cpu_regs(2)
    data = build_prstatus(regs, order, pid=77, cursig=11)
    assert len(data) == 504
    assert int.from_bytes(data[12:14], order) == 11
    assert int.from_bytes(data[32:36], order) == 77
    words = [int.from_bytes(data[112 + 8 * i : 120 + 8 * i], order) for i in range(48)]
    assert words[:32] == list(regs.gpr)
    assert words[32:44] == [
        regs.nip,
        regs.msr,
        regs.orig_gpr3,
        regs.ctr,
        regs.link,
        regs.xer,
        regs.ccr,
        regs.softe,
        regs.trap,
        regs.dar,
        regs.dsisr,
        regs.result,
    ]
    assert words[44:] == [0, 0, 0, 0]
    assert data[496:] == bytes(8)


@given(pt_regs, orders, st.integers(-(2**31), 2**31 - 1), st.integers(-(2**15), 2**15 - 1))
def test_prstatus_round_trip(regs: PtRegs, order: Any, pid: int, cursig: int) -> None:
    status = parse_prstatus(build_prstatus(regs, order, pid=pid, cursig=cursig), order)
    assert (status.pr_reg, status.pr_pid, status.pr_cursig) == (regs, pid, cursig)


def test_prstatus_wrong_size() -> None:
    with pytest.raises(FormatError, match="503 bytes, expected 504") as e:
        parse_prstatus(bytes(503), "big", path="core", offset=0x100)
    assert str(e.value).startswith("core: offset 0x100:")


# -- notes -------------------------------------------------------------------


@pytest.mark.parametrize("order", BYTEORDERS)
def test_note_encoding(order: Any) -> None:
    data = build_notes([Note("CORE", 1, b"abcde"), Note("VMCOREINFO", 0, b"A=1\n")], order)
    assert data[:12] == b"".join(n.to_bytes(4, order) for n in (5, 5, 1))
    assert data[12:20] == b"CORE\0\0\0\0"
    assert data[20:28] == b"abcde\0\0\0"
    assert data[28:40] == b"".join(n.to_bytes(4, order) for n in (11, 4, 0))
    assert data[40:52] == b"VMCOREINFO\0\0"
    assert data[52:] == b"A=1\n"


names = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
notes_st = st.lists(
    st.builds(Note, names, st.integers(0, 2**32 - 1), st.binary(max_size=40)), max_size=6
)


@given(notes_st, orders, st.integers(0, 3))
def test_notes_round_trip(notes: list[Note], order: Any, zero_tail: int) -> None:
    # an empty last note would be indistinguishable from padding
    while notes and notes[-1] == Note("", 0, b""):
        notes = notes[:-1]
    data = build_notes(notes, order)
    assert len(data) % 4 == 0
    assert parse_notes(data + bytes(4 * zero_tail), order) == notes


def test_fadump_padding_and_terminator() -> None:
    data = build_notes(sample_notes("big"), "big")
    assert len(parse_notes(data + bytes(12) + bytes(4096), "big")) == 4


@pytest.mark.parametrize("order", BYTEORDERS)
def test_note_errors(order: Any) -> None:
    good = build_notes([Note("CORE", 1, b"x" * 8)], order)
    hdr = ELF64_NHDR.size
    with pytest.raises(FormatError, match="runs past the end") as e:
        parse_notes(good + good[:-4], order, path="core", offset=0x200)
    assert str(e.value).startswith(f"core: offset {0x200 + len(good):#x}: ")
    bad_name = b"".join(n.to_bytes(4, order) for n in (4, 8, 1)) + b"CORE" + b"x" * 8
    with pytest.raises(FormatError, match="not NUL-terminated") as e:
        parse_notes(bad_name, order, path="core", offset=0x200)
    assert e.value.offset == 0x200 + hdr
    with pytest.raises(FormatError, match="printable"):
        parse_notes(good[:hdr] + b"C\x01RE" + good[hdr + 4 :], order)
    # extra NULs after the name (namesz 8 for "CORE") are tolerated
    padded = (8).to_bytes(4, order) + good[4:]
    assert parse_notes(padded, order) == [Note("CORE", 1, b"x" * 8)]
    with pytest.raises(FormatError, match="truncated Elf64_Nhdr"):
        parse_notes(b"\x01\0\0", order)
    with pytest.raises(ValueError):
        build_notes([Note("A\0B", 0, b"")], order)


# -- writing -----------------------------------------------------------------


@pytest.mark.parametrize("order", BYTEORDERS)
def test_header_layout(order: Any) -> None:
    notes = sample_notes(order)
    segs = [s for s, _ in sample_segments()]
    lay = build_core_header(notes, segs, order, page_size=0x1000)
    ehdr = ELF64_EHDR.unpack_from(lay.header, 0, order)
    assert ehdr.e_ident[:7] == b"\x7fELF\x02" + (b"\x02" if order == "big" else b"\x01") + b"\x01"
    assert (ehdr.e_type, ehdr.e_machine, ehdr.e_phoff, ehdr.e_phnum) == (4, EM_PPC64, 64, 4)
    assert ehdr.e_flags == (1 if order == "big" else 2)
    assert (ehdr.e_shoff, ehdr.e_shnum, ehdr.e_phentsize, ehdr.e_ehsize) == (0, 0, 56, 64)
    phdrs = list(ELF64_PHDR.iter_unpack(lay.header[64 : 64 + 4 * 56], order))
    note_ph = phdrs[0]
    assert note_ph.p_type == PT_NOTE and note_ph.p_offset == 64 + 4 * 56
    assert lay.header[note_ph.p_offset : note_ph.p_offset + note_ph.p_filesz] == build_notes(
        notes, order
    )
    assert tuple(phdrs[1:]) == lay.segments
    assert lay.data_start == len(lay.header) == 0x1000
    assert [p.p_offset for p in lay.segments] == [0x1000, 0x4000, 0x4800]
    assert [p.p_vaddr for p in lay.segments] == [
        PAGE_OFFSET_PPC64 + p.p_paddr for p in lay.segments
    ]
    assert lay.segments[1].p_filesz == 0x800 and lay.segments[1].p_memsz == 0x2000
    assert lay.file_size == 0x5800
    assert all(p.p_type == PT_LOAD and p.p_flags == 7 for p in lay.segments)
    custom = build_core_header([], [LoadSegment(0, 16, vaddr=5)], order, flags=0, page_size=64)
    assert custom.segments[0].p_vaddr == 5 and custom.data_start == 128
    assert ELF64_EHDR.unpack_from(custom.header, 0, order).e_flags == 0
    assert ELF64_EHDR.unpack_from(custom.header, 0, order).e_phnum == 1  # no PT_NOTE without notes


def test_writer_refuses_bad_segments() -> None:
    for segs in (
        [LoadSegment(0, 10, filesz=11)],
        [LoadSegment(2**64 - 8, 16)],
        [LoadSegment(0, 0x2000), LoadSegment(0x1000, 0x10)],
    ):
        with pytest.raises(ValueError):
            build_core_header([], segs, "big")
    with pytest.raises(ValueError):
        build_core_header([], [], "middle")  # type: ignore[arg-type]


def test_thousands_of_segments_over_4_tib(tmp_path: Path) -> None:
    """8192 segments spread over 4 TiB: header built fast, file read back sparse."""
    n = 8192
    stride = (4 << 40) // n
    segs = [LoadSegment(i * stride, stride - 4096) for i in range(n)]
    start = time.perf_counter()
    lay = build_core_header(sample_notes("big"), segs, "big", page_size=65536)
    assert time.perf_counter() - start < 2.0
    assert lay.segments[-1].p_paddr + lay.segments[-1].p_memsz == (4 << 40) - 4096
    assert lay.file_size > 4 << 40 - 1
    path = tmp_path / "sparse.core"
    with open(path, "wb") as f:
        f.write(lay.header)
        f.truncate(lay.file_size)
    with ElfCore.open(path) as core:
        assert len(core.segments) == n
        assert core.read_phys((4 << 40) - stride, 16) == bytes(16)
        with pytest.raises(FormatError, match="not in the dump"):
            core.read_phys(stride - 4096, 1)


@pytest.mark.parametrize("order", BYTEORDERS)
def test_pn_xnum(order: Any, tmp_path: Path) -> None:
    n = PN_XNUM + 10
    segs = [(LoadSegment(i * 4096, 4096, filesz=0), b"") for i in range(n)]
    lay = write_core(tmp_path / "x.core", [Note("CORE", 7, b"")], segs, order, page_size=8)
    ehdr = ELF64_EHDR.unpack_from(lay.header, 0, order)
    assert ehdr.e_phnum == PN_XNUM and ehdr.e_shnum == 1 and ehdr.e_shoff
    with ElfCore.open(tmp_path / "x.core") as core:
        assert len(core.segments) == n and len(core.program_headers) == n + 1
        assert core.read_phys(4096 * 7, 8) == bytes(8)


def test_write_core_mode(tmp_path: Path) -> None:
    path = tmp_path / "c"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_core(path, sample_notes("big"), sample_segments(), "big")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(ValueError):
        write_core(path, [], [(LoadSegment(0, 10), b"short")], "big")


# -- reading -----------------------------------------------------------------


@pytest.mark.parametrize("order", BYTEORDERS)
def test_read_back(order: Any, tmp_path: Path) -> None:
    path = tmp_path / f"core-{order}"
    write_core(path, sample_notes(order), sample_segments(), order)
    with ElfCore.open(path) as core:
        assert core.byteorder == order and core.machine == EM_PPC64 and core.path == str(path)
        assert core.flags == (1 if order == "big" else 2)
        assert core.vmcoreinfo == {
            "OSRELEASE": "2.6.27-ppc64",
            "PAGESIZE": "4096",
            "SYMBOL(_stext)": "c000000000000000",
        }
        assert [(p.pr_pid, p.pr_reg) for p in core.prstatus] == [
            (c + 1, cpu_regs(c)) for c in range(3)
        ]
        assert [n.name for n in core.notes] == ["CORE"] * 3 + ["VMCOREINFO"]
        assert [s.p_paddr for s in core.segments] == [0, 0x10000, 0x12000]
        data0 = sample_segments()[0][1]
        assert core.read_phys(0, 0x3000) == data0
        assert core.read_phys(0x123, 5) == data0[0x123:0x128]
        assert core.read_phys(0x10000, 0x800) == b"\x5a" * 0x800
        # bytes past filesz read as zeros, and reads run on into the next segment
        assert core.read_phys(0x107F0, 0x20) == b"\x5a" * 0x10 + bytes(0x10)
        assert core.read_phys(0x11FF8, 0x10) == bytes(8) + b"\xc3" * 8
        assert core.read_phys(0x5000, 0) == b""
        assert core.segment_data(1) == b"\x5a" * 0x800
        for addr, size in ((0x3000, 1), (0x2FFF, 2), (0x13000, 1), (2**63, 8)):
            with pytest.raises(FormatError, match="not in the dump") as e:
                core.read_phys(addr, size)
            assert str(path) in str(e.value)
        with pytest.raises(ValueError):
            core.read_phys(-1, 1)
        pages = list(core.iter_pages(4096, chunk_pages=2))
        assert [a for a, _ in pages] == [0, 0x1000, 0x2000, 0x10000, 0x11000, 0x12000]
        assert b"".join(d for _, d in pages[:3]) == data0
        assert pages[4][1] == bytes(4096)


def test_iter_pages_unaligned() -> None:
    lay = build_core_header([], [LoadSegment(0x10, 0x20F0)], "little", page_size=16)
    core = ElfCore.from_bytes(lay.header + bytes(range(256)) * 0x21)
    pieces = list(core.iter_pages(0x1000))
    assert [(a, len(d)) for a, d in pieces] == [(0x10, 0xFF0), (0x1000, 0x1000), (0x2000, 0x100)]


def test_other_machine() -> None:
    lay = build_core_header(
        sample_notes("little"), [LoadSegment(0, 16)], "little", machine=EM_X86_64
    )
    data = lay.header + bytes(16)
    with pytest.raises(FormatError, match="machine 62, expected PowerPC64"):
        ElfCore.from_bytes(data, "x")
    core = ElfCore.from_bytes(data, machine=EM_X86_64)
    assert core.machine == EM_X86_64 and core.flags == 0 and core.prstatus == ()
    assert core.segments[0].p_vaddr == 0
    assert ElfCore.from_bytes(data, machine=None).vmcoreinfo is not None


def _core_bytes(order: Any, page_size: int = 4096) -> tuple[CoreLayout, bytes]:
    segs = sample_segments()
    lay = build_core_header(sample_notes(order), [s for s, _ in segs], order, page_size=page_size)
    return lay, lay.header + b"".join(d for _, d in segs)


def _with_phdr(data: bytes, order: Any, index: int, **changes: int) -> bytes:
    at = 64 + index * 56
    ph = ELF64_PHDR.unpack_from(data, at, order)
    new = ELF64_PHDR.pack(Elf64Phdr(**{**ph.__dict__, **changes}), order)
    return data[:at] + new + data[at + 56 :]


@pytest.mark.parametrize("order", BYTEORDERS)
def test_reader_errors_name_file_and_offset(order: Any) -> None:
    lay, good = _core_bytes(order)
    e_type_at = ELF64_EHDR.offset_of("e_type")
    swap = {"big": "little", "little": "big"}[order]
    cases: list[tuple[bytes, int, str]] = [
        (good[:40], 0, "the ELF header needs bytes up to 0x40 but the file ends at 0x28"),
        (b"\x7fELG" + good[4:], 0, "not an ELF file"),
        (good[:4] + b"\x01" + good[5:], 4, "ELF class 1: only 64-bit"),
        (good[:5] + b"\x03" + good[6:], 5, "unknown ELF data encoding 3"),
        (good[:6] + b"\x02" + good[7:], 6, "ELF version 2"),
        (
            good[:e_type_at] + (2).to_bytes(2, order) + good[e_type_at + 2 :],
            e_type_at,
            "ELF type 2 is not a core",
        ),
        (
            good[:0x38] + (0x7FFF).to_bytes(2, order) + good[0x3A:],
            0x40,
            "32767 program headers needs bytes up to",
        ),
        (good[:0x36] + (40).to_bytes(2, order) + good[0x38:], 0x36, "program header size 40"),
        (
            good[: lay.file_size - 1],
            0x4800,
            "program header 3's data needs bytes up to 0x5800 but the file ends at 0x57ff",
        ),
        (
            _with_phdr(good, order, 2, p_filesz=0x2001),
            64 + 2 * 56,
            "load segment 2 has filesz 0x2001 > memsz 0x2000",
        ),
        (
            _with_phdr(good, order, 3, p_paddr=0x11000),
            64,
            "load segments overlap at physical address 0x11000",
        ),
        (
            _with_phdr(good, order, 3, p_paddr=2**64 - 8),
            64 + 3 * 56,
            "load segment 3 runs past the end of the physical",
        ),
        (_with_phdr(good, order, 0, p_filesz=0x10), 64 + 4 * 56, "note of 5+504 bytes runs past"),
    ]
    # the other byte order's machine number is nonsense
    swapped = good[:5] + bytes([1 if order == "big" else 2]) + good[6:]
    cases.append(
        (
            swapped,
            0x10,
            f"ELF type 1024 is not a core file (ET_CORE); e_ident says {swap}-endian "
            f"but the header reads as {order}-endian",
        )
    )
    for data, offset, message in cases:
        with pytest.raises(FormatError) as e:
            ElfCore.from_bytes(data, "dump.core")
        assert str(e.value).startswith(f"dump.core: offset {offset:#x}: {message}"), str(e.value)


def test_bad_vmcoreinfo_and_prstatus_in_notes() -> None:
    notes = [Note("VMCOREINFO", 0, b"A=1\nbad\n")]
    lay = build_core_header(notes, [], "big", page_size=8)
    with pytest.raises(FormatError, match="VMCOREINFO: expected KEY=value") as e:
        ElfCore.from_bytes(lay.header, "c")
    assert e.value.path == "c"
    lay = build_core_header([Note("CORE", 1, bytes(500))], [], "big", page_size=8)
    with pytest.raises(FormatError, match="500 bytes, expected 504"):
        ElfCore.from_bytes(lay.header, "c")


def test_open_closes_on_error(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"junk" * 20)
    with pytest.raises(FormatError, match="not an ELF file") as e:
        ElfCore.open(path)
    assert str(e.value).startswith(f"{path}: offset 0x0:")


@given(notes_st, st.lists(st.integers(0, 3000), min_size=0, max_size=4), orders)
def test_round_trip(notes: list[Note], sizes: list[int], order: ByteOrder) -> None:
    notes = [n for n in notes if not (n.name == "CORE" and n.type == NT_PRSTATUS)]
    notes = [n for n in notes if not (n.name == "VMCOREINFO" and n.type == 0)]
    while notes and notes[-1] == Note("", 0, b""):
        notes = notes[:-1]
    segs = []
    addr = 0
    for i, size in enumerate(sizes):
        filesz = size // (i + 1)
        segs.append((LoadSegment(addr, size, filesz=filesz), bytes([i + 1]) * filesz))
        addr += size + 4096
    lay = build_core_header(notes, [s for s, _ in segs], order, page_size=64)
    core = ElfCore.from_bytes(lay.header + b"".join(d for _, d in segs))
    assert list(core.notes) == notes
    assert core.segments == lay.segments
    for (seg, data), ph in zip(segs, core.segments, strict=True):
        assert core.read_phys(ph.p_paddr, seg.memsz) == data + bytes(seg.memsz - len(data))


# Small cores keep each fuzz example fast: two tiny segments, two CPUs.
_SMALL = [
    build_core_header(
        sample_notes(order, ncpus=2),
        [LoadSegment(0, 64), LoadSegment(0x100, 64, filesz=16)],
        order,
        page_size=8,
    ).header
    + bytes(range(80))
    for order in BYTEORDERS
]
_WINDOWS = ((0, 0x40), (0x3C, 8), (0x100, 0x40), (0x130, 0x20), (0x1000, 1))


_NOTES = [build_notes(sample_notes(o, 1), o) for o in BYTEORDERS]


def _read_core(buf: bytes) -> None:
    core = ElfCore.from_bytes(buf, "fuzz")
    for addr, size in _WINDOWS:
        with contextlib.suppress(FormatError):
            core.read_phys(addr, size)
    # a segment may claim up to 2**64 bytes of zeros: look at the first pieces only
    for _ in itertools.islice(core.iter_pages(64), 8):
        pass


def _read_notes(buf: bytes, order: ByteOrder) -> None:
    for note in parse_notes(buf, order):
        if note.type == NT_PRSTATUS:
            parse_prstatus(note.desc, order)


@settings(max_examples=FUZZ_EXAMPLES)
@given(fuzz_cases([*_SMALL, *_NOTES], max_size=256))
def test_fuzz(case: Fuzzed) -> None:
    """Mutated cores and mutated notes, each also junk to the other parser."""
    order = BYTEORDERS[case.variant % 2]
    expect_format_error(_read_core, case.data)
    expect_format_error(lambda buf: _read_notes(buf, order), case.data)
