"""ELF64 core files as kdump and fadump produce them (``/proc/vmcore`` and dump files).

Both byte orders: big-endian for POWER6-era kernels, little-endian for modern
ppc64le. A core holds one ``PT_NOTE`` (one ``NT_PRSTATUS`` note per CPU,
named ``CORE``, and the ``VMCOREINFO`` note) and ``PT_LOAD`` segments mapping
physical memory (``p_paddr``) at the kernel's linear map (``p_vaddr``).

Writing is split so dumps never sit in memory: :func:`build_core_header`
gives the header bytes and each segment's file offset, and the caller streams
segment data after them. :func:`write_core` does both for small cores.
:class:`ElfCore` reads a core and checks it before anything is used.

``e_machine`` is a parameter everywhere so cores of other machines can be
read; only ppc64's ``elf_prstatus`` is described here.
"""

from __future__ import annotations

import bisect
import io
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import BinaryIO

from drgn_hvdump.errors import FormatError
from drgn_hvdump.formats.layout import (
    U64,
    ByteOrder,
    Layout,
    array,
    check_byteorder,
    i16,
    i32,
    i64,
    nested,
    raw,
    u16,
    u32,
    u64,
)
from drgn_hvdump.formats.vmcoreinfo import (
    VMCOREINFO_NOTE_NAME,
    VMCOREINFO_NOTE_TYPE,
    parse_vmcoreinfo,
)

__all__ = [
    "ELF64_EHDR",
    "ELF64_NHDR",
    "ELF64_PHDR",
    "ELF64_SHDR",
    "ELFCLASS64",
    "ELFDATA2LSB",
    "ELFDATA2MSB",
    "ELFMAG",
    "ELF_PRSTATUS_PPC64",
    "EM_PPC64",
    "EM_X86_64",
    "ET_CORE",
    "EV_CURRENT",
    "NT_PRSTATUS",
    "PAGE_OFFSET_PPC64",
    "PF_R",
    "PF_W",
    "PF_X",
    "PN_XNUM",
    "PT_LOAD",
    "PT_NOTE",
    "PT_REGS_PPC64",
    "CoreLayout",
    "Elf64Ehdr",
    "Elf64Nhdr",
    "Elf64Phdr",
    "Elf64Shdr",
    "ElfCore",
    "ElfPrstatus",
    "ElfSiginfo",
    "LoadSegment",
    "Note",
    "PtRegs",
    "Timeval",
    "build_core_header",
    "build_notes",
    "build_prstatus",
    "file_offset",
    "numbered_by_cpu",
    "numbered_notes",
    "parse_notes",
    "parse_prstatus",
    "unnumbered",
    "write_core",
]

ELFMAG = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
ELFDATA2MSB = 2
EV_CURRENT = 1
ET_CORE = 4
EM_PPC64 = 21
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
PF_X = 1
PF_W = 2
PF_R = 4
PN_XNUM = 0xFFFF
NT_PRSTATUS = 1
PAGE_OFFSET_PPC64 = 0xC000000000000000
"""ppc64 ``PAGE_OFFSET``/``KERNELBASE``: the linear map's virtual base."""

_EI_CLASS = 4
_EI_DATA = 5
_EI_VERSION = 6
_DATA_BY_ORDER: dict[str, int] = {"big": ELFDATA2MSB, "little": ELFDATA2LSB}
_ORDER_BY_DATA: dict[int, ByteOrder] = {ELFDATA2MSB: "big", ELFDATA2LSB: "little"}
_MACHINE_NAMES = {EM_PPC64: "PowerPC64", EM_X86_64: "x86-64"}
_U64_LIMIT = 1 << 64


@dataclass(frozen=True)
class Elf64Ehdr:
    """``Elf64_Ehdr``."""

    e_ident: bytes = raw(16)
    e_type: int = u16()
    e_machine: int = u16()
    e_version: int = u32()
    e_entry: int = u64()
    e_phoff: int = u64()
    e_shoff: int = u64()
    e_flags: int = u32()
    e_ehsize: int = u16()
    e_phentsize: int = u16()
    e_phnum: int = u16()
    e_shentsize: int = u16()
    e_shnum: int = u16()
    e_shstrndx: int = u16()


@dataclass(frozen=True)
class Elf64Phdr:
    """``Elf64_Phdr``."""

    p_type: int = u32()
    p_flags: int = u32()
    p_offset: int = u64()
    p_vaddr: int = u64()
    p_paddr: int = u64()
    p_filesz: int = u64()
    p_memsz: int = u64()
    p_align: int = u64()


@dataclass(frozen=True)
class Elf64Shdr:
    """``Elf64_Shdr``; a core only has one, to hold a program header count past 0xfffe."""

    sh_name: int = u32()
    sh_type: int = u32()
    sh_flags: int = u64()
    sh_addr: int = u64()
    sh_offset: int = u64()
    sh_size: int = u64()
    sh_link: int = u32()
    sh_info: int = u32()
    sh_addralign: int = u64()
    sh_entsize: int = u64()


@dataclass(frozen=True)
class Elf64Nhdr:
    """``Elf64_Nhdr``: the three words before each note's name and descriptor."""

    n_namesz: int = u32()
    n_descsz: int = u32()
    n_type: int = u32()


ELF64_EHDR = Layout(Elf64Ehdr, size=64, name="Elf64_Ehdr")
ELF64_PHDR = Layout(Elf64Phdr, size=56, name="Elf64_Phdr")
ELF64_SHDR = Layout(Elf64Shdr, size=64, name="Elf64_Shdr")
ELF64_NHDR = Layout(Elf64Nhdr, size=12, name="Elf64_Nhdr")


@dataclass(frozen=True)
class PtRegs:
    """ppc64 ``struct pt_regs`` as userspace sees it (uapi, 44 words)."""

    gpr: tuple[int, ...] = array(U64, 32)
    nip: int = u64()
    msr: int = u64()
    orig_gpr3: int = u64()
    ctr: int = u64()
    link: int = u64()
    xer: int = u64()
    ccr: int = u64()
    softe: int = u64()
    trap: int = u64()
    dar: int = u64()
    dsisr: int = u64()
    result: int = u64()


PT_REGS_PPC64 = Layout(PtRegs, size=352, name="pt_regs")


@dataclass(frozen=True)
class ElfSiginfo:
    """``struct elf_siginfo``."""

    si_signo: int = i32()
    si_code: int = i32()
    si_errno: int = i32()


@dataclass(frozen=True)
class Timeval:
    """``struct timeval`` on a 64-bit kernel."""

    tv_sec: int = i64()
    tv_usec: int = i64()


_SIGINFO = Layout(ElfSiginfo, size=12, name="elf_siginfo")
_TIMEVAL = Layout(Timeval, size=16, name="timeval")


@dataclass(frozen=True)
class ElfPrstatus:
    """ppc64 ``struct elf_prstatus``: ``pr_reg`` is 48 words, pt_regs then 4 zero words."""

    pr_info: ElfSiginfo = nested(_SIGINFO)
    pr_cursig: int = i16()
    pr_sigpend: int = u64()
    pr_sighold: int = u64()
    pr_pid: int = i32()
    pr_ppid: int = i32()
    pr_pgrp: int = i32()
    pr_sid: int = i32()
    pr_utime: Timeval = nested(_TIMEVAL)
    pr_stime: Timeval = nested(_TIMEVAL)
    pr_cutime: Timeval = nested(_TIMEVAL)
    pr_cstime: Timeval = nested(_TIMEVAL)
    pr_reg: PtRegs = nested(PT_REGS_PPC64)
    pr_reg_tail: tuple[int, ...] = array(U64, 4)
    pr_fpvalid: int = i32()


ELF_PRSTATUS_PPC64 = Layout(ElfPrstatus, size=504, name="elf_prstatus")
assert ELF_PRSTATUS_PPC64.offset_of("pr_reg") == 112


def build_prstatus(regs: PtRegs, byteorder: ByteOrder, pid: int = 0, cursig: int = 0) -> bytes:
    """The 504-byte ``NT_PRSTATUS`` descriptor for one CPU; all but pid, signal and registers zero."""
    status = ElfPrstatus(pr_cursig=cursig, pr_pid=pid, pr_reg=regs)
    return ELF_PRSTATUS_PPC64.pack(status, check_byteorder(byteorder))


def numbered_by_cpu(prstatus: Iterable[ElfPrstatus]) -> bool:
    """Whether notes are numbered ``pr_pid`` = CPU + 1 in CPU order (or there are none).

    That is how QEMU's ``dump-guest-memory`` and a capture kernel building its
    notes from the hypervisor's save area number them; kdump gives each note
    the pid of the task on its CPU.
    """
    pids = [p.pr_pid for p in prstatus]
    return pids == list(range(1, len(pids) + 1))


def unnumbered(prstatus: Sequence[ElfPrstatus]) -> bool:
    """Whether the notes are fadump's: more than one, every ``pr_pid`` 0 (its capture
    kernel builds them from the firmware's CPU state data, in CPU order, and numbers
    none; kdump gives each the pid on its CPU, so only an all-idle machine looks so)."""
    return len(prstatus) > 1 and not any(p.pr_pid for p in prstatus)


def numbered_notes(prstatus: Sequence[ElfPrstatus], byteorder: ByteOrder) -> list[Note]:
    """The notes again, ``pr_pid`` = CPU + 1 in the order given (where drgn looks)."""
    order = check_byteorder(byteorder)
    return [
        Note("CORE", NT_PRSTATUS, ELF_PRSTATUS_PPC64.pack(replace(p, pr_pid=i + 1), order))
        for i, p in enumerate(prstatus)
    ]


def parse_prstatus(
    desc: bytes | bytearray | memoryview,
    byteorder: ByteOrder,
    path: str | None = None,
    offset: int = 0,
) -> ElfPrstatus:
    """Read a ppc64 ``NT_PRSTATUS`` descriptor (exactly 504 bytes)."""
    if len(desc) != ELF_PRSTATUS_PPC64.size:
        raise FormatError(
            f"NT_PRSTATUS descriptor is {len(desc)} bytes, expected "
            f"{ELF_PRSTATUS_PPC64.size} for ppc64",
            path=path,
            offset=offset,
        )
    return ELF_PRSTATUS_PPC64.unpack_from(desc, 0, byteorder)


@dataclass(frozen=True)
class Note:
    """An ELF note: owner name (without its NUL), type and descriptor bytes."""

    name: str
    type: int
    desc: bytes


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def build_notes(notes: Sequence[Note], byteorder: ByteOrder) -> bytes:
    """Notes back to back, names NUL-terminated, names and descriptors padded to 4 bytes."""
    order = check_byteorder(byteorder)
    out = bytearray()
    for note in notes:
        name = note.name.encode("ascii") + b"\0" if note.name else b""
        if b"\0" in name[:-1]:
            raise ValueError(f"note name {note.name!r} holds a NUL")
        out += ELF64_NHDR.pack(Elf64Nhdr(len(name), len(note.desc), note.type), order)
        out += name.ljust(_pad4(len(name)), b"\0")
        out += note.desc.ljust(_pad4(len(note.desc)), b"\0")
    return bytes(out)


def note_desc_offset(
    notes: Sequence[Note], name: str, byteorder: ByteOrder
) -> tuple[int, int] | None:
    """(offset, size) of the first ``name`` note's descriptor in :func:`build_notes`' bytes."""
    for i, note in enumerate(notes):
        if note.name == name:
            before = len(build_notes(notes[:i], byteorder))
            return before + 12 + _pad4(len(note.name) + 1), len(note.desc)
    return None


def parse_notes(
    data: bytes | bytearray | memoryview,
    byteorder: ByteOrder,
    path: str | None = None,
    offset: int = 0,
) -> list[Note]:
    """Read the notes filling ``data``; errors name ``offset`` + the note's position.

    Zero bytes after the last note are padding (fadump page-aligns its note
    buffer and ends it with an all-zero note header).
    """
    data = bytes(data)
    notes: list[Note] = []
    pos = 0
    # Where the zero padding after the last note starts: found once, so that
    # many small notes cost one pass, not one pass each.
    used = len(data.rstrip(b"\0"))
    while pos < used:
        hdr = ELF64_NHDR.unpack_from(data, pos, byteorder, path=path)
        name_at = pos + ELF64_NHDR.size
        desc_at = name_at + _pad4(hdr.n_namesz)
        end = desc_at + _pad4(hdr.n_descsz)
        if desc_at + hdr.n_descsz > len(data):
            raise FormatError(
                f"note of {hdr.n_namesz}+{hdr.n_descsz} bytes runs past the end of "
                f"the notes ({len(data) - pos} bytes left)",
                path=path,
                offset=offset + pos,
            )
        raw_name = data[name_at : name_at + hdr.n_namesz]
        if raw_name and raw_name[-1] != 0:
            raise FormatError("note name is not NUL-terminated", path=path, offset=offset + name_at)
        # Some producers count padding NULs in n_namesz; the name ends at the first.
        name_bytes = raw_name.rstrip(b"\0")
        if not (name_bytes.isascii() and name_bytes.decode("ascii").isprintable()):
            raise FormatError(
                "note name is not printable ASCII", path=path, offset=offset + name_at
            )
        notes.append(
            Note(name_bytes.decode("ascii"), hdr.n_type, data[desc_at : desc_at + hdr.n_descsz])
        )
        pos = end
    return notes


@dataclass(frozen=True)
class LoadSegment:
    """A ``PT_LOAD`` to write: physical range, bytes in the file, virtual address.

    ``filesz`` defaults to ``memsz`` (bytes past ``filesz`` read as zeros);
    ``vaddr`` defaults to the machine's linear map of ``paddr``.
    """

    paddr: int
    memsz: int
    filesz: int | None = None
    vaddr: int | None = None
    flags: int = PF_R | PF_W | PF_X

    @property
    def file_size(self) -> int:
        return self.memsz if self.filesz is None else self.filesz


def _default_vaddr(machine: int, paddr: int) -> int:
    if machine == EM_PPC64:
        return (PAGE_OFFSET_PPC64 + paddr) % _U64_LIMIT
    return 0


def _default_flags(machine: int, byteorder: ByteOrder) -> int:
    # EF_PPC64_ABI: fadump records _CALL_ELF, 1 (ELFv1) on BE and 2 (ELFv2) on LE.
    if machine == EM_PPC64:
        return 1 if byteorder == "big" else 2
    return 0


@dataclass(frozen=True)
class CoreLayout:
    """A core's header bytes and where each segment's data goes in the file.

    ``header`` covers ``[0, data_start)``: ELF header, program headers, the
    notes, and zero padding. Segment ``i``'s ``filesz`` bytes go at
    ``segments[i].p_offset``; segments follow each other from ``data_start``,
    so writing them in order after the header streams the file.
    """

    header: bytes
    segments: tuple[Elf64Phdr, ...]
    data_start: int
    file_size: int


def file_offset(segments: Iterable[Elf64Phdr], paddr: int, size: int) -> int | None:
    """Where a core file holds the physical range ``paddr``+``size`` (all of it inside
    one segment's file data), or None when no segment holds it whole."""
    for ph in segments:
        if ph.p_paddr <= paddr and paddr + size <= ph.p_paddr + ph.p_filesz:
            return int(ph.p_offset + paddr - ph.p_paddr)
    return None


def build_core_header(
    notes: Sequence[Note],
    segments: Sequence[LoadSegment],
    byteorder: ByteOrder,
    *,
    machine: int = EM_PPC64,
    flags: int | None = None,
    page_size: int = 4096,
) -> CoreLayout:
    """Lay out a core: one ``PT_NOTE`` holding ``notes``, then one ``PT_LOAD`` per segment.

    Segment data starts at a multiple of ``page_size``. ``flags`` is
    ``e_flags`` (default for ppc64: 1 big-endian ELFv1, 2 little-endian
    ELFv2). More than 65534 program headers use the ``PN_XNUM`` extension.
    """
    order = check_byteorder(byteorder)
    if page_size <= 0:
        raise ValueError("page_size must be positive")
    note_bytes = build_notes(notes, order)
    phnum = len(segments) + (1 if note_bytes else 0)
    xnum = phnum >= PN_XNUM
    phoff = ELF64_EHDR.size
    note_offset = phoff + phnum * ELF64_PHDR.size
    shoff = note_offset + len(note_bytes)
    header_end = shoff + (ELF64_SHDR.size if xnum else 0)
    data_start = -(-header_end // page_size) * page_size

    loads: list[Elf64Phdr] = []
    pos = data_start
    for seg in segments:
        filesz = seg.file_size
        if not (
            0 <= filesz <= seg.memsz and seg.paddr >= 0 and seg.paddr + seg.memsz <= _U64_LIMIT
        ):
            raise ValueError(f"bad load segment {seg}")
        vaddr = _default_vaddr(machine, seg.paddr) if seg.vaddr is None else seg.vaddr
        loads.append(Elf64Phdr(PT_LOAD, seg.flags, pos, vaddr, seg.paddr, filesz, seg.memsz, 0))
        pos += filesz
    _check_no_overlap(loads)

    ehdr = Elf64Ehdr(
        e_ident=_ident(order),
        e_type=ET_CORE,
        e_machine=machine,
        e_version=EV_CURRENT,
        e_phoff=phoff,
        e_shoff=shoff if xnum else 0,
        e_flags=_default_flags(machine, order) if flags is None else flags,
        e_ehsize=ELF64_EHDR.size,
        e_phentsize=ELF64_PHDR.size,
        e_phnum=PN_XNUM if xnum else phnum,
        e_shentsize=ELF64_SHDR.size if xnum else 0,
        e_shnum=1 if xnum else 0,
    )
    out = bytearray(ELF64_EHDR.pack(ehdr, order))
    if note_bytes:
        out += ELF64_PHDR.pack(
            Elf64Phdr(PT_NOTE, 0, note_offset, 0, 0, len(note_bytes), len(note_bytes), 0), order
        )
    pack = ELF64_PHDR.pack
    out += b"".join([pack(ph, order) for ph in loads])
    out += note_bytes
    if xnum:
        # As Linux's own core dumps do: section 0 carries the real count in sh_info.
        out += ELF64_SHDR.pack(Elf64Shdr(sh_size=1, sh_info=phnum), order)
    out += bytes(data_start - len(out))
    return CoreLayout(bytes(out), tuple(loads), data_start, pos)


def _ident(order: ByteOrder) -> bytes:
    return (ELFMAG + bytes([ELFCLASS64, _DATA_BY_ORDER[order], EV_CURRENT])).ljust(16, b"\0")


def _check_no_overlap(loads: Sequence[Elf64Phdr]) -> None:
    ordered = sorted((ph for ph in loads if ph.p_memsz), key=lambda ph: ph.p_paddr)
    for a, b in itertools.pairwise(ordered):
        if a.p_paddr + a.p_memsz > b.p_paddr:
            raise ValueError(
                f"load segments overlap: {a.p_paddr:#x}+{a.p_memsz:#x} and {b.p_paddr:#x}"
            )


def write_core(
    path: str | os.PathLike[str],
    notes: Sequence[Note],
    segments_with_data: Sequence[tuple[LoadSegment, bytes]],
    byteorder: ByteOrder,
    *,
    machine: int = EM_PPC64,
    flags: int | None = None,
    page_size: int = 4096,
) -> CoreLayout:
    """Write a whole core (mode 0600) from in-memory segment data; for tests and small cores."""
    for seg, data in segments_with_data:
        if len(data) != seg.file_size:
            raise ValueError(
                f"segment at {seg.paddr:#x}: {len(data)} bytes for filesz {seg.file_size}"
            )
    layout = build_core_header(
        notes,
        [seg for seg, _ in segments_with_data],
        byteorder,
        machine=machine,
        flags=flags,
        page_size=page_size,
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        # O_CREAT's mode does not apply to a file that already existed.
        os.fchmod(f.fileno(), 0o600)
        f.write(layout.header)
        for _, data in segments_with_data:
            f.write(data)
    return layout


class ElfCore:
    """A checked ELF64 core file: segments, notes, registers, VMCOREINFO, memory.

    Opening checks the identification, type, machine, program headers, that
    every segment's file bytes are inside the file, and every note;
    :class:`FormatError` names the file and offset of the first problem.
    """

    def __init__(
        self,
        f: BinaryIO,
        path: str | None = None,
        *,
        machine: int | None = EM_PPC64,
        owns_file: bool = False,
    ) -> None:
        self._f = f
        self.path = path
        self._owns = owns_file
        try:
            self._fd: int | None = f.fileno()
        except (OSError, io.UnsupportedOperation, AttributeError):
            self._fd = None
        self.file_size = self._size()
        self._load(machine)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, machine: int | None = EM_PPC64) -> ElfCore:
        """Open and check the core at ``path``; close it with :meth:`close` or ``with``."""
        f = open(path, "rb")  # noqa: SIM115 - owned by the ElfCore, closed by close()
        try:
            return cls(f, os.fspath(path), machine=machine, owns_file=True)
        except BaseException:
            f.close()
            raise

    @classmethod
    def from_bytes(
        cls, data: bytes, path: str | None = None, *, machine: int | None = EM_PPC64
    ) -> ElfCore:
        """Check a core held in memory."""
        return cls(io.BytesIO(data), path, machine=machine)

    def close(self) -> None:
        if self._owns:
            self._f.close()

    def __enter__(self) -> ElfCore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading the file -------------------------------------------------

    def _size(self) -> int:
        if self._fd is not None:
            return os.fstat(self._fd).st_size
        self._f.seek(0, os.SEEK_END)
        return self._f.tell()

    def _pread(self, offset: int, size: int) -> bytes:
        if size == 0:
            return b""
        if self._fd is not None:
            data = os.pread(self._fd, size, offset)
        else:
            self._f.seek(offset)
            data = self._f.read(size)
        if len(data) != size:
            raise FormatError(
                f"file ends {len(data)} bytes into a {size}-byte read",
                path=self.path,
                offset=offset + len(data),
            )
        return data

    def _need(self, offset: int, size: int, what: str) -> None:
        if offset + size > self.file_size:
            raise FormatError(
                f"{what} needs bytes up to {offset + size:#x} but the file ends at "
                f"{self.file_size:#x}",
                path=self.path,
                offset=offset,
                hint="the file is truncated",
            )

    def _load(self, machine: int | None) -> None:
        ehdr = self._load_header(machine)
        phnum = ehdr.e_phnum
        if phnum == PN_XNUM:
            phnum = self._extended_phnum(ehdr)
        if phnum and ehdr.e_phentsize != ELF64_PHDR.size:
            raise FormatError(
                f"program header size {ehdr.e_phentsize}, expected {ELF64_PHDR.size}",
                path=self.path,
                offset=ELF64_EHDR.offset_of("e_phentsize"),
            )
        self._need(ehdr.e_phoff, phnum * ELF64_PHDR.size, f"{phnum} program headers")
        table = self._pread(ehdr.e_phoff, phnum * ELF64_PHDR.size)
        self.program_headers: tuple[Elf64Phdr, ...] = tuple(
            ELF64_PHDR.iter_unpack(table, self.byteorder)
        )
        loads, notes = self._load_segments(ehdr)
        self.segments: tuple[Elf64Phdr, ...] = tuple(loads)
        self._sorted = sorted((ph for ph in loads if ph.p_memsz), key=lambda ph: ph.p_paddr)
        for a, b in itertools.pairwise(self._sorted):
            if a.p_paddr + a.p_memsz > b.p_paddr:
                raise FormatError(
                    f"load segments overlap at physical address {b.p_paddr:#x}",
                    path=self.path,
                    offset=ehdr.e_phoff,
                )
        self._starts = [ph.p_paddr for ph in self._sorted]
        self.notes: tuple[Note, ...] = tuple(notes)
        self.vmcoreinfo = self._find_vmcoreinfo()
        self.prstatus = self._find_prstatus()

    def _load_header(self, machine: int | None) -> Elf64Ehdr:
        """The ELF header, checked: 64-bit, a known byte order, a core of ``machine``."""
        # The magic first: a text file is "not an ELF file", not a truncated one.
        if self._pread(0, min(4, self.file_size)) != ELFMAG:
            raise FormatError("not an ELF file (bad magic)", path=self.path, offset=0)
        self._need(0, ELF64_EHDR.size, "the ELF header")
        head = self._pread(0, ELF64_EHDR.size)
        ident = head[:16]
        if ident[_EI_CLASS] != ELFCLASS64:
            raise FormatError(
                f"ELF class {ident[_EI_CLASS]}: only 64-bit (class 2) cores are supported",
                path=self.path,
                offset=_EI_CLASS,
            )
        order = _ORDER_BY_DATA.get(ident[_EI_DATA])
        if order is None:
            raise FormatError(
                f"unknown ELF data encoding {ident[_EI_DATA]}", path=self.path, offset=_EI_DATA
            )
        if ident[_EI_VERSION] != EV_CURRENT:
            raise FormatError(
                f"ELF version {ident[_EI_VERSION]}, expected 1", path=self.path, offset=_EI_VERSION
            )
        self.byteorder: ByteOrder = order
        ehdr = ELF64_EHDR.unpack_from(head, 0, order)
        self.header = ehdr
        where = ELF64_EHDR.offset_of
        if ehdr.e_type != ET_CORE:
            other: ByteOrder = "little" if order == "big" else "big"
            swapped = int.from_bytes(ehdr.e_type.to_bytes(2, order), other) == ET_CORE
            raise FormatError(
                f"ELF type {ehdr.e_type} is not a core file (ET_CORE)",
                path=self.path,
                offset=where("e_type"),
                hint=f"e_ident says {order}-endian but the header reads as {other}-endian"
                if swapped
                else None,
            )
        if machine is not None and ehdr.e_machine != machine:
            raise FormatError(
                f"ELF machine {ehdr.e_machine}, expected {_MACHINE_NAMES.get(machine, machine)} "
                f"({machine})",
                path=self.path,
                offset=where("e_machine"),
            )
        self.machine = ehdr.e_machine
        self.flags = ehdr.e_flags
        return ehdr

    def _load_segments(self, ehdr: Elf64Ehdr) -> tuple[list[Elf64Phdr], list[Note]]:
        """The load segments (checked) and the notes of every note segment."""
        order = self.byteorder
        loads: list[Elf64Phdr] = []
        notes: list[Note] = []
        note_bytes = 0
        for index, ph in enumerate(self.program_headers):
            ph_at = ehdr.e_phoff + index * ELF64_PHDR.size
            if ph.p_type not in (PT_LOAD, PT_NOTE):
                continue
            if ph.p_type == PT_LOAD and ph.p_filesz > ph.p_memsz:
                raise FormatError(
                    f"load segment {index} has filesz {ph.p_filesz:#x} > memsz {ph.p_memsz:#x}",
                    path=self.path,
                    offset=ph_at,
                )
            if ph.p_filesz:
                self._need(ph.p_offset, ph.p_filesz, f"program header {index}'s data")
            if ph.p_type == PT_NOTE:
                # Note segments that share file bytes would be read (and held) once
                # each: 65535 headers over one large note would cost 65535 times it.
                note_bytes += ph.p_filesz
                if note_bytes > self.file_size:
                    raise FormatError(
                        f"note segments hold {note_bytes:#x} bytes but the file has only "
                        f"{self.file_size:#x}: they share file bytes",
                        path=self.path,
                        offset=ph_at,
                    )
                notes += parse_notes(
                    self._pread(ph.p_offset, ph.p_filesz), order, self.path, ph.p_offset
                )
                continue
            if ph.p_paddr + ph.p_memsz > _U64_LIMIT:
                raise FormatError(
                    f"load segment {index} runs past the end of the physical address space",
                    path=self.path,
                    offset=ph_at,
                )
            loads.append(ph)
        return loads, notes

    def _extended_phnum(self, ehdr: Elf64Ehdr) -> int:
        self._need(ehdr.e_shoff, ELF64_SHDR.size, "section header 0 (holding the PN_XNUM count)")
        shdr = ELF64_SHDR.unpack_from(self._pread(ehdr.e_shoff, ELF64_SHDR.size), 0, self.byteorder)
        return shdr.sh_info

    def _find_vmcoreinfo(self) -> dict[str, str] | None:
        for note in self.notes:
            if note.name == VMCOREINFO_NOTE_NAME and note.type == VMCOREINFO_NOTE_TYPE:
                return parse_vmcoreinfo(note.desc, self.path)
        return None

    def _find_prstatus(self) -> tuple[ElfPrstatus, ...]:
        found = [n for n in self.notes if n.name == "CORE" and n.type == NT_PRSTATUS]
        if found and self.machine != EM_PPC64:
            return ()
        return tuple(parse_prstatus(n.desc, self.byteorder, self.path) for n in found)

    # -- memory ------------------------------------------------------------

    def read_phys(self, paddr: int, size: int) -> bytes:
        """``size`` bytes of physical memory at ``paddr``.

        Bytes past a segment's ``filesz`` (up to ``memsz``) read as zeros;
        an address no segment maps raises :class:`FormatError`.
        """
        if size < 0 or paddr < 0:
            raise ValueError("negative address or size")
        out = bytearray()
        addr = paddr
        end = paddr + size
        while addr < end:
            i = bisect.bisect_right(self._starts, addr) - 1
            seg = self._sorted[i] if i >= 0 else None
            if seg is None or addr >= seg.p_paddr + seg.p_memsz:
                raise FormatError(
                    f"physical address {addr:#x} is not in the dump",
                    path=self.path,
                    hint=f"reading {size:#x} bytes at {paddr:#x}",
                )
            seg_off = addr - seg.p_paddr
            n = min(end, seg.p_paddr + seg.p_memsz) - addr
            in_file = max(0, min(n, seg.p_filesz - seg_off))
            if in_file:
                out += self._pread(seg.p_offset + seg_off, in_file)
            out += bytes(n - in_file)
            addr += n
        return bytes(out)

    def iter_pages(
        self, page_size: int = 4096, chunk_pages: int = 256
    ) -> Iterator[tuple[int, bytes]]:
        """Every segment's memory as ``(paddr, bytes)`` cut at page boundaries, in address order.

        Pieces at the ends of a segment that does not start or end on a page
        boundary are shorter than a page.
        """
        for seg in self._sorted:
            addr = seg.p_paddr
            end = seg.p_paddr + seg.p_memsz
            while addr < end:
                chunk_end = min(end, (addr // page_size + chunk_pages) * page_size)
                data = self.read_phys(addr, chunk_end - addr)
                pos = 0
                while pos < len(data):
                    n = min(len(data) - pos, page_size - (addr + pos) % page_size)
                    yield addr + pos, data[pos : pos + n]
                    pos += n
                addr = chunk_end

    def segment_data(self, index: int) -> bytes:
        """The file bytes of load segment ``index`` (in file order)."""
        seg = self.segments[index]
        return self._pread(seg.p_offset, seg.p_filesz)
