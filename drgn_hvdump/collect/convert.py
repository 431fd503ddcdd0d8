"""``hvdump convert``: the collector's page engine applied to any ELF vmcore.

Reads an ELF vmcore (ppc64 of either byte order, or x86-64) as written by
``/proc/vmcore``, QEMU, another dump tool or :mod:`hvsim`, and writes the same
kdump-compressed (or sparse ELF) file and manifest ``hvdump collect`` writes:
zero pages excluded, pages compressed in C batches by ``--threads`` workers,
an XXH64 per chunk so ``hvdump verify`` can check the result anywhere.

Nothing is released here, so the collector's per-chunk sync and read-back
are not needed: the file is synced once at the end, and ``--check``
decompresses every stored page and compares it with the page read, as the
collector always does. ``--no-sync`` leaves the flush to the kernel, as
makedumpfile and ``cp`` do (for comparisons, or when a ``sync`` follows
anyway). A run that is killed leaves a kdump file marked
incomplete; run the command again with ``--force``.

A vmcore whose memory map claims far more than the file holds (a segment at
2**48 with nothing in the file, 65535 segments sharing the same bytes) is
refused in one line before anything is written: see :func:`check_bounds`.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import mmap
import os
import time
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field, replace
from pathlib import Path

from drgn_hvdump.capture.plan import kept_pieces
from drgn_hvdump.codecs import Codec, get_codec
from drgn_hvdump.collect.engine import Job, PageEngine
from drgn_hvdump.collect.levels import decide_exclusions
from drgn_hvdump.collect.output import ElfOutput, KdumpOutput
from drgn_hvdump.collect.progress import Progress
from drgn_hvdump.dumpdir.filewrite import FlatFile
from drgn_hvdump.dumpdir.manifest import (
    MAX_CHUNK,
    VMCOREINFO_KEPT,
    ChunkRecord,
    ConvertedSource,
    DumpFileInfo,
    Manifest,
    Source,
    save_manifest,
)
from drgn_hvdump.dumpdir.names import DUMP_NAMES, HVDUMP_NOTE_NAME, MANIFEST, NOTE_FADUMP_MEM
from drgn_hvdump.dumpdir.remote import DumpDir, SshTarget, open_dump_dir
from drgn_hvdump.errors import FormatError, HvdumpError
from drgn_hvdump.formats.elfcore import (
    ELF64_PHDR,
    EM_PPC64,
    EM_X86_64,
    NT_PRSTATUS,
    PAGE_OFFSET_PPC64,
    PT_LOAD,
    ElfCore,
    LoadSegment,
    Note,
    build_core_header,
    build_notes,
    note_desc_offset,
    numbered_notes,
    unnumbered,
)
from drgn_hvdump.formats.guestcore import (
    note_registers,
    read_guest_core,
    registers_byteorder,
)
from drgn_hvdump.formats.kdump import plan_kdump
from drgn_hvdump.formats.layout import ByteOrder
from drgn_hvdump.formats.regsave import prstatus_notes
from drgn_hvdump.formats.utsname import read_utsname
from drgn_hvdump.formats.vmcoreinfo import VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE
from drgn_hvdump.fsutil import disk_error
from drgn_hvdump.intervals import IntervalSet
from drgn_hvdump.model.mem_sections import Exclusions
from drgn_hvdump.model.page_types import DL_ZERO
from drgn_hvdump.model.pages import kernel_page_size

__all__ = [
    "ConvertOptions",
    "ConvertResult",
    "SourceChunk",
    "check_bounds",
    "convert",
    "page_ranges",
    "plan_chunks",
]

# What a vmcore may claim beyond what it holds (see check_bounds).
HELD_FACTOR = 64
FREE_MEMORY = 1 << 30
FREE_SPAN = 64 << 30
_MACHINES = {EM_PPC64: "ppc64", EM_X86_64: "x86-64"}
_MADV_POPULATE_READ = 22  # not in Python 3.11's mmap module


@dataclass
class ConvertOptions:
    """Everything ``hvdump convert`` takes."""

    vmcore: Path
    # A directory here, or on an archive host (hvdump receive writes it there); None
    # with ``flattened``: makedumpfile's flattened stream on stdout, no manifest.
    output: Path | SshTarget | None
    format: str = "kdump"
    compress: str = "zstd"
    level: int | None = None
    threads: int = 1
    chunk_size: int = 16 << 20
    page_size: int | None = None
    check: bool = False
    sync: bool = True
    force: bool = False
    json: bool = False
    progress: bool | None = None
    vmcoreinfo_at: int | None = None
    find_vmcoreinfo: bool = False
    dump_level: int = 1
    flattened: bool = False


@dataclass
class ConvertResult:
    output: Path | str
    """The output directory (``ssh://host/path`` on an archive host)."""
    dump_file: Path
    manifest: Manifest


@dataclass(frozen=True)
class SourceChunk:
    """``size`` bytes of physical memory from ``paddr``, and where the vmcore holds them.

    ``pieces`` are (file offset, offset in the chunk, length); the rest of the
    chunk (a partial page at a segment's edge, or past its ``p_filesz``)
    reads as zeros.
    """

    index: int
    paddr: int
    size: int
    pieces: tuple[tuple[int, int, int], ...]

    @property
    def kind(self) -> str:
        return "mem"

    @property
    def dst(self) -> int:
        return self.paddr

    @property
    def whole(self) -> bool:
        return len(self.pieces) == 1 and self.pieces[0][1:] == (0, self.size)


def page_ranges(segments: list[tuple[int, int, int, int]], page_size: int) -> list[list[int]]:
    """``[start, end)`` of the segments widened to whole pages and merged where they touch."""
    ps = page_size
    ranges: list[list[int]] = []
    for paddr, memsz, _, _ in sorted(segments):
        if not memsz:
            continue
        a, b = paddr // ps * ps, -(-(paddr + memsz) // ps) * ps
        if ranges and a <= ranges[-1][1]:
            ranges[-1][1] = max(ranges[-1][1], b)
        else:
            ranges.append([a, b])
    return ranges


def check_bounds(
    core: ElfCore, segments: list[tuple[int, int, int, int]], page_size: int, fmt: str
) -> None:
    """Refuse a vmcore whose memory map claims far more than the file holds.

    Bytes past a segment's ``p_filesz`` read as zeros (the ELF rule, and what
    drgn shows), so they are written as zero pages; and a kdump file has a
    bitmap bit for every page frame up to the highest address. Both cost work
    and output for memory the input does not hold, so they are bounded by what
    it holds: the memory written may be at most :data:`HELD_FACTOR` times the
    bytes of memory in the file, or :data:`FREE_MEMORY`; the highest address
    of a kdump file at most as many times, or :data:`FREE_SPAN` (2 MiB of
    bitmaps with 64 KiB pages). A vmcore of a real machine holds its memory,
    so only a corrupt or crafted file is refused (makedumpfile would write its
    bitmaps for the whole address space, 256 GiB for a 2 MiB file at 2**48).
    """
    held = sum(filesz for _, _, _, filesz in segments)
    if held > core.file_size:
        raise FormatError(
            f"load segments hold {held:#x} bytes of memory but the file has only "
            f"{core.file_size:#x}: they share file bytes",
            path=core.path,
            offset=core.header.e_phoff,
            hint="a vmcore's segments never do; the file is corrupt",
        )
    ranges = page_ranges(segments, page_size)
    if not ranges:
        return
    memory = sum(b - a for a, b in ranges)
    span = ranges[-1][1]
    allowed = max(FREE_MEMORY, HELD_FACTOR * held)
    widest = max(segments, key=lambda seg: seg[1] - seg[3])
    if memory > allowed:
        raise FormatError(
            f"load segments claim {memory:#x} bytes of memory but the file holds only "
            f"{held:#x} of it (segment at {widest[0]:#x}: {widest[1]:#x} bytes, "
            f"{widest[3]:#x} in the file)",
            path=core.path,
            offset=_phdr_offset(core, widest[0]),
            hint=f"hvdump convert writes at most {HELD_FACTOR} times the memory a vmcore "
            "holds (or 1 GiB): this file is corrupt or not a vmcore",
        )
    if fmt == "kdump" and span > max(FREE_SPAN, HELD_FACTOR * held):
        top = max(segments, key=lambda seg: seg[0] + seg[1])
        bitmaps = 2 * -(-span // page_size // 8)
        raise FormatError(
            f"memory runs up to {span:#x} but the file holds only {held:#x} bytes of it: "
            f"a kdump file would need {bitmaps:#x} bytes of bitmaps",
            path=core.path,
            offset=_phdr_offset(core, top[0]),
            hint="the file is corrupt or not a vmcore; --format elf writes no bitmaps",
        )


def _phdr_offset(core: ElfCore, paddr: int) -> int | None:
    """File offset of the program header of the load segment at ``paddr``."""
    for index, ph in enumerate(core.program_headers):
        if ph.p_type == PT_LOAD and ph.p_paddr == paddr:
            return int(core.header.e_phoff + index * ELF64_PHDR.size)
    return None


def plan_chunks(
    segments: list[tuple[int, int, int, int]], page_size: int, chunk_size: int
) -> tuple[list[tuple[int, int]], list[SourceChunk]]:
    """Page ranges and chunks of a vmcore's ``(paddr, memsz, file offset, filesz)`` segments.

    Segments are widened to whole pages and merged where they touch; each
    merged range is cut into chunks of at most ``chunk_size`` (a multiple of
    the page size) on chunk-size boundaries.
    """
    ps = page_size
    ranges = page_ranges(segments, ps)
    step = max(ps, chunk_size // ps * ps)
    # The file parts of the segments in address order: each chunk looks only at
    # the parts that can reach it (segments do not overlap), not at all of them.
    parts = sorted((p, p + f, o) for p, _, o, f in segments if f)
    ends = list(itertools.accumulate((hi for _, hi, _ in parts), max))
    chunks: list[SourceChunk] = []
    for a, b in ranges:
        start = a
        while start < b:
            end = min(b, (start // step + 1) * step)
            pieces = []
            i = bisect.bisect_right(ends, start)
            while i < len(parts) and parts[i][0] < end:
                paddr, seg_end, offset = parts[i]
                lo, hi = max(start, paddr), min(end, seg_end)
                if lo < hi:
                    pieces.append((offset + lo - paddr, lo - start, hi - lo))
                i += 1
            chunks.append(SourceChunk(len(chunks), start, end - start, tuple(sorted(pieces))))
            start = end
    return [(a, b - a) for a, b in ranges], chunks


def without_excluded(chunks: list[SourceChunk], excluded: IntervalSet) -> list[SourceChunk]:
    """The chunks cut to the pages ``excluded`` (physical addresses) does not hold, renumbered."""
    out: list[SourceChunk] = []
    for ch in chunks:
        for x, y in kept_pieces(ch.paddr, ch.paddr + ch.size, excluded):
            pieces = []
            for offset, at, length in ch.pieces:
                lo, hi = max(x, ch.paddr + at), min(y, ch.paddr + at + length)
                if lo < hi:
                    pieces.append((offset + lo - ch.paddr - at, lo - x, hi - lo))
            out.append(SourceChunk(len(out), x, y - x, tuple(pieces)))
    return out


class _Source:
    """The vmcore file: chunk reads, zero-filling what no segment holds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.core = ElfCore.open(path, machine=None)
        except OSError as exc:
            raise HvdumpError(f"{path}: cannot open: {exc.strerror}") from None
        if self.core.machine not in _MACHINES:
            self.core.close()
            raise FormatError(
                f"ELF machine {self.core.machine} is not one hvdump convert handles "
                "(ppc64 or x86-64)",
                path=str(path),
                offset=18,
            )
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        # Chunks inside one segment are read through a mapping: scanned,
        # hashed and compressed where the page cache holds them, with no
        # copy (as makedumpfile maps its input); read() copied 4 GiB in 1.6 s.
        self.map: mmap.mmap | None = None
        with contextlib.suppress(OSError, ValueError):
            self.map = mmap.mmap(self.fd, 0, prot=mmap.PROT_READ)

    def view(self, ch: SourceChunk) -> memoryview | None:
        """The chunk's bytes in the mapping (pages faulted in at once), or None: read it."""
        if self.map is None or not ch.whole:
            return None
        offset = ch.pieces[0][0]
        start = offset // mmap.PAGESIZE * mmap.PAGESIZE
        # An older kernel refuses MADV_POPULATE_READ (5.14): pages then fault in one by one.
        with contextlib.suppress(OSError):
            self.map.madvise(_MADV_POPULATE_READ, start, offset + ch.size - start)
        return memoryview(self.map)[offset : offset + ch.size]

    def done_with(self, ch: SourceChunk) -> None:
        """Unmap a chunk's pages again (they stay in the page cache): RSS stays flat."""
        if self.map is not None and ch.whole:
            offset = ch.pieces[0][0]
            start = offset // mmap.PAGESIZE * mmap.PAGESIZE
            with contextlib.suppress(OSError):
                self.map.madvise(mmap.MADV_DONTNEED, start, offset + ch.size - start)

    def read_into(self, ch: SourceChunk, buf: bytearray | mmap.mmap) -> None:
        view = memoryview(buf)
        if not ch.whole:
            view[:] = bytes(len(buf))
        for offset, at, size in ch.pieces:
            done = 0
            while done < size:
                n = os.preadv(self.fd, [view[at + done : at + size]], offset + done)
                if n <= 0:
                    raise FormatError(
                        f"short read: {done} of {size} bytes",
                        path=str(self.path),
                        offset=offset + done,
                        hint="the file changed or is truncated",
                    )
                done += n

    def close(self) -> None:
        if self.map is not None:
            with contextlib.suppress(BufferError):  # a view still held by an error's traceback
                self.map.close()
        os.close(self.fd)
        self.core.close()


def _page_size(core: ElfCore, info: dict[str, str], given: int | None, path: Path) -> int:
    text = info.get("PAGESIZE")
    found = int(text) if text and text.isdigit() else None
    if given is not None and found is not None and given != found:
        raise HvdumpError(
            f"{path}: --page-size {given} but its VMCOREINFO says PAGESIZE={found}; "
            "leave --page-size out"
        )
    ps = given or found or (4096 if core.machine == EM_X86_64 else None)
    if ps is None:
        raise HvdumpError(
            f"{path}: no VMCOREINFO PAGESIZE to tell the page size: give --page-size "
            "(65536 for most ppc64 kernels, 4096 for the others)"
        )
    if kernel_page_size(ps) is None:
        raise HvdumpError(f"page size {ps} is not a power of two from 4096 to 1 MiB")
    return ps


def _machine_name(machine: int, byteorder: ByteOrder) -> str:
    if machine == EM_X86_64:
        return "x86_64"
    return "ppc64" if byteorder == "big" else "ppc64le"


@dataclass(frozen=True)
class _Kernel:
    """The crashed kernel as the dump is written for it: byte order, VMCOREINFO, notes, memory."""

    byteorder: ByteOrder
    info: dict[str, str]
    notes: list[Note]
    segments: list[tuple[int, int, int, int]]
    """(paddr, memsz, file offset, filesz) of each load segment."""
    vaddr: dict[int, int]
    """A segment's virtual address by its physical one."""
    guest: bool = False
    """Read as a whole guest's core (QEMU's): notes rebuilt in the kernel's order."""


def _segments(core: ElfCore) -> list[tuple[int, int, int, int]]:
    return [(ph.p_paddr, ph.p_memsz, ph.p_offset, ph.p_filesz) for ph in core.segments]


def _kernel(core: ElfCore, opts: ConvertOptions) -> _Kernel:
    """The vmcore as it says, or, for a ppc64 core of a whole guest, as its kernel wrote it.

    A core without VMCOREINFO whose CPUs run a kernel of the other byte order
    than the ELF header's is QEMU's (7.2 writes big-endian headers for
    little-endian guests): its VMCOREINFO is found in memory and the dump is
    written in the kernel's order with its notes re-encoded. ``--vmcoreinfo``
    and ``--find-vmcoreinfo`` ask for that on any ppc64 core.
    """
    notes = list(core.notes)
    if core.machine == EM_PPC64 and unnumbered(core.prstatus):
        # A fadump vmcore: its notes numbered by CPU, and marked as fadump's so that
        # the drgn plugin supplies the registers its kernel left out of crash_notes.
        others = [n for n in notes if not (n.name == "CORE" and n.type == NT_PRSTATUS)]
        notes = numbered_notes(core.prstatus, core.byteorder) + others
        notes.append(Note(HVDUMP_NOTE_NAME, NOTE_FADUMP_MEM, b""))
    plain = _Kernel(
        core.byteorder,
        dict(core.vmcoreinfo or {}),
        notes,
        _segments(core),
        {ph.p_paddr: ph.p_vaddr for ph in core.segments},
    )
    asked = opts.vmcoreinfo_at is not None or opts.find_vmcoreinfo
    if core.machine != EM_PPC64:
        if asked:
            raise HvdumpError(
                f"{opts.vmcore}: --vmcoreinfo and --find-vmcoreinfo are for ppc64 cores"
            )
        return plain
    if core.vmcoreinfo is not None and opts.vmcoreinfo_at is None:
        return plain
    if not asked:
        descs = [n.desc for n in core.notes if n.name == "CORE" and n.type == NT_PRSTATUS]
        order = registers_byteorder(note_registers(core, descs)) if descs else None
        if order is None or order == core.byteorder:
            return plain
    guest = read_guest_core(opts.vmcore, vmcoreinfo_at=opts.vmcoreinfo_at)
    bo = guest.byteorder
    notes = prstatus_notes(enumerate(guest.registers), bo)
    notes.append(Note(VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE, guest.vmcoreinfo))
    return _Kernel(
        bo,
        guest.info,
        notes,
        [(g.paddr, g.memsz, g.offset, g.filesz) for g in guest.segments],
        {g.paddr: PAGE_OFFSET_PPC64 + g.paddr for g in guest.segments},
        guest=True,
    )


def _utsname(
    src: _Source, ranges: list[tuple[int, int]], info: dict[str, str], byteorder: ByteOrder
) -> list[str]:
    """``init_uts_ns.name`` read from memory on ppc64 (linear map), else from VMCOREINFO."""
    core = src.core
    machine = _machine_name(core.machine, byteorder)
    uts = ["Linux", "unknown", info.get("OSRELEASE", ""), "unknown", machine, ""]
    if core.machine != EM_PPC64:
        return uts

    def read(paddr: int, size: int) -> bytes | None:
        try:
            return core.read_phys(paddr, size)
        except (FormatError, ValueError):
            return None

    got = read_utsname(info, read)
    if got is None:
        return uts
    got[4] = machine
    return got


def convert(opts: ConvertOptions) -> ConvertResult:
    """Convert ``opts.vmcore`` into ``opts.output`` (a directory: dump file and manifest)."""
    if opts.format not in DUMP_NAMES:
        raise HvdumpError(f"unknown format {opts.format!r}: choose kdump or elf")
    if opts.threads < 1:
        raise HvdumpError(f"--threads {opts.threads}: give 1 or more")
    if opts.chunk_size > MAX_CHUNK:
        raise HvdumpError(
            f"--chunk-size {opts.chunk_size >> 20} MiB: at most {MAX_CHUNK >> 20} MiB "
            "(hvdump verify reads a chunk at once)"
        )
    codec = get_codec(opts.compress, opts.level) if opts.format == "kdump" else None
    out = opts.output
    if (out is None) != opts.flattened:
        raise HvdumpError(
            "--flattened writes the dump to stdout: give - as DIR"
            if opts.flattened
            else "DIR - (stdout) takes --flattened (makedumpfile's -F format)"
        )
    if opts.flattened and (opts.json or os.isatty(1)):
        raise HvdumpError(
            "--flattened writes the dump to stdout: "
            + (
                "--json cannot share it"
                if opts.json
                else "pipe it (| ssh HOST hvdump receive --flattened FILE)"
            )
        )
    if isinstance(out, Path):
        _check_no_dump(out, opts, lambda name: (out / name).exists())
    src = _Source(opts.vmcore)
    progress = Progress(json_lines=opts.json, tty=opts.progress)
    try:
        return _convert(opts, codec, src, DUMP_NAMES[opts.format], progress)
    finally:
        src.close()
        progress.close()


def _check_no_dump(out: object, opts: ConvertOptions, exists: Callable[[str], bool]) -> None:
    if not opts.force and any(exists(n) for n in (*DUMP_NAMES.values(), MANIFEST)):
        raise HvdumpError(
            f"{out}: already holds a dump; give --force to replace it, or another directory"
        )


class _Stdout:
    """Where a flattened dump goes: stdout, one file, no manifest."""

    path = Path("-")
    location = "-"

    def open_file(self, name: str, *, create: bool) -> FlatFile:
        return FlatFile(1)

    def close(self) -> None:
        pass


def _open_output(opts: ConvertOptions) -> DumpDir | _Stdout:
    """The output directory, opened (created 0700); an earlier dump there removed (--force)."""
    if opts.output is None:
        return _Stdout()
    try:
        out = open_dump_dir(opts.output)
    except OSError as exc:
        raise disk_error(str(opts.output), exc, "cannot prepare the output directory") from None
    try:
        _check_no_dump(out.location, opts, out.exists)
        for name in (*DUMP_NAMES.values(), MANIFEST):
            out.unlink(name)
    except BaseException:
        out.close()
        raise
    return out


def _convert(
    opts: ConvertOptions, codec: Codec | None, src: _Source, dump_name: str, progress: Progress
) -> ConvertResult:
    t0 = time.monotonic()
    core = src.core
    # Before a guest's memory is searched for VMCOREINFO: once per segment.
    check_bounds(core, _segments(core), 4096, "elf")
    k = _kernel(core, opts)
    info = k.info
    ps = _page_size(core, info, opts.page_size, opts.vmcore)
    from drgn_hvdump.collect.analysable import analysable_format

    fmt, why = analysable_format(opts.format, core.machine == EM_PPC64, ps)
    if why:  # a kernel drgn cannot read in kdump files: ELF, and say so
        opts, codec = replace(opts, format=fmt), None
        dump_name = DUMP_NAMES[fmt]
        progress.message(why)
    check_bounds(core, k.segments, ps, opts.format)
    ranges, chunks = plan_chunks(k.segments, ps, opts.chunk_size)
    if not chunks:
        raise FormatError("no PT_LOAD segment holds memory", path=str(opts.vmcore))
    memory = max(a + s for a, s in ranges)
    excl = _exclusions(opts, src, k, ps, ranges, progress)
    kept = ranges
    if excl is not None:
        left_out = excl.byte_ranges(ps)
        chunks = without_excluded(chunks, left_out)
        kept = [(x, y - x) for a, n in ranges for x, y in kept_pieces(a, a + n, left_out)]
    # Opened only now: a vmcore refused above leaves no directory behind.
    with contextlib.closing(_open_output(opts)) as out:
        dump_file = out.path / dump_name
        notes = k.notes
        ncpus = sum(1 for n in notes if n.name == "CORE" and n.type == NT_PRSTATUS)
        output: ElfOutput | KdumpOutput
        try:
            if opts.format == "elf":
                layout = build_core_header(
                    notes,
                    [LoadSegment(a, s, vaddr=_range_vaddr(a, k.vaddr)) for a, s in kept],
                    k.byteorder,
                    machine=core.machine,
                    flags=None if k.guest else core.flags,
                    page_size=ps,
                )
                output = ElfOutput(out.open_file(dump_name, create=True), layout, ps, False)
            else:
                assert codec is not None
                vmci = note_desc_offset(notes, VMCOREINFO_NOTE_NAME, k.byteorder)
                klayout = plan_kdump(
                    byteorder=k.byteorder,
                    page_size=ps,
                    max_mapnr=memory // ps,
                    ranges=[(a // ps, (a + s) // ps) for a, s in ranges],
                    notes=build_notes(notes, k.byteorder),
                    vmcoreinfo=vmci,
                    nr_cpus=ncpus,
                    utsname=_utsname(src, ranges, info, k.byteorder),
                    timestamp=int(info.get("CRASHTIME", "0") or 0),
                    codec_flag=codec.flag,
                    kept=[(a // ps, (a + s) // ps) for a, s in kept],
                    dump_level=excl.level if excl is not None else opts.dump_level & DL_ZERO,
                )
                output = KdumpOutput(out.open_file(dump_name, create=True), klayout, codec, False)
        except OSError as exc:
            raise disk_error(str(dump_file), exc, "cannot create the dump file") from None

        run = _Run(opts, codec, src, output, ps, chunks, progress)
        run.exclusions = excl
        try:
            run.run()
            t = time.monotonic()
            output.finish(sync=opts.sync)
            run.timings["sync"] = time.monotonic() - t
            size, allocated = output.file.size(), output.file.allocated()
            if isinstance(output.file, FlatFile):
                output.file.end()
        except OSError as exc:
            raise disk_error(str(dump_file), exc, "write failed") from None
        finally:
            output.close()
        manifest = run.manifest(
            dump_name, size, allocated, k, kept, memory, ncpus, time.monotonic() - t0
        )
        if not isinstance(out, _Stdout):
            save_manifest(out, manifest)
        return ConvertResult(out.location, dump_file, manifest)


def _exclusions(
    opts: ConvertOptions,
    src: _Source,
    k: _Kernel,
    ps: int,
    ranges: list[tuple[int, int]],
    progress: Progress,
) -> Exclusions | None:
    """What ``--dump-level`` leaves out of the vmcore's pages (None: zero pages only)."""
    if opts.dump_level & ~DL_ZERO == 0:
        return None
    if src.core.machine != EM_PPC64:
        raise HvdumpError(
            f"{opts.vmcore}: --dump-level {opts.dump_level}: hvdump reads struct pages of "
            "ppc64 kernels only; use --dump-level 1"
        )
    warnings: list[str] = []
    return decide_exclusions(
        opts.dump_level,
        k.info,
        k.byteorder,
        ps,
        [(a // ps, (a + n) // ps) for a, n in ranges],
        lambda paddr, size: src.core.read_phys(paddr, size),
        progress,
        warnings,
    )


def _range_vaddr(paddr: int, vaddr: dict[int, int]) -> int | None:
    """The virtual address of a range that starts where a source segment starts."""
    return vaddr.get(paddr)


@dataclass(eq=False)
class _Run:
    """The page engine over a vmcore: nothing is released, so no per-chunk sync or
    read-back (the file is synced once at the end), and the page checks only
    with ``--check``, by the compressors themselves; writes in order on the
    I/O thread, while the next chunk is read and scanned."""

    opts: ConvertOptions
    codec: InitVar[Codec | None]
    src: _Source
    output: ElfOutput | KdumpOutput
    ps: int
    chunks: list[SourceChunk]
    progress: Progress
    records: list[ChunkRecord] = field(default_factory=list, init=False)
    total: int = field(init=False)
    done: int = field(default=0, init=False)
    zero_pages: int = field(default=0, init=False)
    timings: dict[str, float] = field(default_factory=dict, init=False)
    engine: PageEngine = field(init=False)
    exclusions: Exclusions | None = field(default=None, init=False)

    def __post_init__(self, codec: Codec | None) -> None:
        self.total = sum(ch.size for ch in self.chunks)
        self.engine = PageEngine(
            page_size=self.ps,
            codec=codec,
            threads=self.opts.threads,
            output=self.output,
            load=self._load,
            done=self._done,
            fail=self._fail,
            check=self.opts.check,
            separate_checks=False,
            write_on_io=True,
            durable_each=False,
            timings=self.timings,
        )

    def run(self) -> None:
        self.engine.run(self.chunks)

    def _load(self, ch: SourceChunk, engine: PageEngine) -> tuple[mmap.mmap | None, memoryview]:
        mapped = self.src.view(ch)
        if mapped is not None:
            return None, mapped
        buf = engine.buffer(ch.size)
        self.src.read_into(ch, buf)
        return buf, memoryview(buf)

    def _fail(self, job: Job, problem: str) -> Exception:
        ch = job.chunk
        return HvdumpError(
            f"{self.output.path}: chunk {ch.index} ({ch.paddr:#x}+{ch.size:#x}): {problem}"
        )

    def _done(self, job: Job) -> None:
        ch = job.chunk
        w = job.written
        assert w is not None
        nzero = job.zero.count(1)
        self.records.append(
            ChunkRecord(
                ch.index,
                "mem",
                ch.paddr,
                ch.size,
                f"{job.xxh64:016x}",
                src=ch.paddr,
                stored_offset=w.offset,
                stored_bytes=w.length,
                zero_pages=nzero,
            )
        )
        self.done += ch.size
        self.zero_pages += nzero
        self.src.done_with(ch)
        self.progress.update(self.done, self.total, None, None, self.engine.stored_bytes)

    def manifest(
        self,
        dump_name: str,
        size: int,
        allocated: int,
        kernel: _Kernel,
        ranges: list[tuple[int, int]],
        memory: int,
        ncpus: int,
        elapsed: float,
    ) -> Manifest:
        core = self.src.core
        codec = (
            get_codec(self.opts.compress, self.opts.level) if self.opts.format == "kdump" else None
        )
        return Manifest(
            tool="hvdump convert",
            source=Source(
                byteorder=kernel.byteorder,
                page_size=self.ps,
                vmcoreinfo={k: kernel.info[k] for k in VMCOREINFO_KEPT if k in kernel.info},
                cpus=ncpus,
                memory=memory,
                vmcore=str(self.src.path),
                converted=ConvertedSource(
                    _MACHINES[core.machine],
                    core.byteorder,
                    "whole guest (notes re-encoded)" if kernel.guest else "vmcore",
                ),
            ),
            dump=DumpFileInfo(
                file=dump_name,
                format=self.opts.format,
                size=size,
                segments=tuple(ranges),
                compression=codec.name if codec else None,
                level=self.opts.level,
                allocated=allocated,
                zero_pages=self.zero_pages,
                dump_level=self.exclusions.level if self.exclusions else None,
                excluded=dict(self.exclusions.counts) if self.exclusions else None,
            ),
            chunks=tuple(self.records),
            timings={
                "elapsed_s": round(elapsed, 4),
                "threads": self.opts.threads,
                "checked": self.opts.check,
                **{k: round(v, 4) for k, v in self.timings.items()},
            },
        )
