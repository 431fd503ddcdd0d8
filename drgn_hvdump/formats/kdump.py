"""makedumpfile's kdump-compressed format ("KDUMP   "): layouts, a streaming writer plan, a reader.

File map (B = block size = page size)::

    0                      disk_dump_header (464 bytes, LP64), rest of block 0 zero
    B                      kdump_sub_header (104 bytes), the ELF notes right after it
    (1 + sub_hdr_size) B   1st bitmap (RAM pages), then the 2nd bitmap (pages with a descriptor)
    (1 + sub + bitmap) B   page descriptors, 24 bytes each, one per set bit of the 2nd bitmap
                           in PFN order; then the page data, in any order
    offset_eraseinfo       optional erase-info text (what a filter zeroed)

Every integer is in the dump's byte order. Each page is stored on its own, raw
(exactly one page) or compressed with one codec (flag in the descriptor).
Zero pages point at one shared raw zero page stored first in the data area,
as makedumpfile writes them. See ``shared/reference/kdump-format-and-speeds.md``.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from drgn_hvdump.errors import FormatError
from drgn_hvdump.formats.layout import ByteOrder, Layout, i32, i64, raw, u32, u64

__all__ = [
    "DISK_DUMP_HEADER",
    "DUMP_DH_COMPRESSED_INCOMPLETE",
    "DUMP_DH_COMPRESSED_LZO",
    "DUMP_DH_COMPRESSED_SNAPPY",
    "DUMP_DH_COMPRESSED_ZLIB",
    "DUMP_DH_COMPRESSED_ZSTD",
    "KDUMP_SIGNATURE",
    "KDUMP_SUB_HEADER",
    "PAGE_DESC",
    "DiskDumpHeader",
    "KdumpFile",
    "KdumpLayout",
    "KdumpSubHeader",
    "PageDesc",
    "plan_kdump",
]

KDUMP_SIGNATURE = b"KDUMP   "
HEADER_VERSION = 6
DUMP_DH_COMPRESSED_ZLIB = 0x1
DUMP_DH_COMPRESSED_LZO = 0x2
DUMP_DH_COMPRESSED_SNAPPY = 0x4
DUMP_DH_COMPRESSED_INCOMPLETE = 0x8
DUMP_DH_EXCLUDED_VMEMMAP = 0x10
DUMP_DH_COMPRESSED_ZSTD = 0x20
_CODEC_FLAGS = (
    DUMP_DH_COMPRESSED_ZLIB
    | DUMP_DH_COMPRESSED_LZO
    | DUMP_DH_COMPRESSED_SNAPPY
    | DUMP_DH_COMPRESSED_ZSTD
)
_UTS_LEN = 65
DUMP_LEVEL_ZERO = 1


@dataclass(frozen=True)
class DiskDumpHeader:
    """``struct disk_dump_header`` (64-bit layout)."""

    signature: bytes = raw(8)
    header_version: int = i32()
    utsname: bytes = raw(6 * _UTS_LEN)
    timestamp_sec: int = i64()
    timestamp_usec: int = i64()
    status: int = u32()
    block_size: int = i32()
    sub_hdr_size: int = i32()
    bitmap_blocks: int = u32()
    max_mapnr: int = u32()
    total_ram_blocks: int = u32()
    device_blocks: int = u32()
    written_blocks: int = u32()
    current_cpu: int = u32()
    nr_cpus: int = i32()


@dataclass(frozen=True)
class KdumpSubHeader:
    """``struct kdump_sub_header`` (64-bit layout, version 6)."""

    phys_base: int = u64()
    dump_level: int = i32()
    split: int = i32()
    start_pfn: int = u64()
    end_pfn: int = u64()
    offset_vmcoreinfo: int = u64()
    size_vmcoreinfo: int = u64()
    offset_note: int = u64()
    size_note: int = u64()
    offset_eraseinfo: int = u64()
    size_eraseinfo: int = u64()
    start_pfn_64: int = u64()
    end_pfn_64: int = u64()
    max_mapnr_64: int = u64()


@dataclass(frozen=True)
class PageDesc:
    """``struct page_desc``: where one page's stored bytes are and how they are coded."""

    offset: int = i64()
    size: int = u32()
    flags: int = u32()
    page_flags: int = u64()


DISK_DUMP_HEADER = Layout(DiskDumpHeader, size=464, name="disk_dump_header")
KDUMP_SUB_HEADER = Layout(KdumpSubHeader, size=104, name="kdump_sub_header")
PAGE_DESC = Layout(PageDesc, size=24, name="page_desc")
assert DISK_DUMP_HEADER.offset_of("timestamp_sec") == 408
assert DISK_DUMP_HEADER.offset_of("status") == 424


def _utsname(fields: Sequence[str]) -> bytes:
    out = b""
    for value in list(fields)[:6] + [""] * (6 - len(fields)):
        data = value.encode("ascii", "replace")[: _UTS_LEN - 1]
        out += data.ljust(_UTS_LEN, b"\0")
    return out


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class KdumpLayout:
    """Where everything of a kdump-compressed file goes, known before any page is written.

    ``ranges`` are the PFN ranges ``[start, end)`` of RAM the file covers (the
    1st bitmap); ``kept`` those it holds (the 2nd bitmap: ``ranges`` without
    what the dump level left out). Every kept page gets a descriptor (zero
    pages share one stored zero page), so the descriptor table's size is
    fixed up front.
    """

    byteorder: ByteOrder
    page_size: int
    max_mapnr: int
    ranges: tuple[tuple[int, int], ...]
    kept: tuple[tuple[int, int], ...]
    header: DiskDumpHeader
    sub_header: KdumpSubHeader
    notes: bytes
    bitmap_offset: int
    bitmap_size: int
    desc_offset: int
    npages: int
    zero_page_offset: int
    data_start: int

    def first_blocks(self, status: int | None = None) -> bytes:
        """Header block, sub-header and notes (everything before the bitmaps)."""
        header = self.header
        if status is not None:
            header = DiskDumpHeader(**{**header.__dict__, "status": status})
        out = bytearray(self.bitmap_offset)
        out[: DISK_DUMP_HEADER.size] = DISK_DUMP_HEADER.pack(header, self.byteorder)
        sub = KDUMP_SUB_HEADER.pack(self.sub_header, self.byteorder)
        ps = self.page_size
        out[ps : ps + len(sub)] = sub
        out[self.sub_header.offset_note : self.sub_header.offset_note + len(self.notes)] = (
            self.notes
        )
        return bytes(out)

    def bitmap_pieces(self, piece: int = 1 << 20) -> Iterator[tuple[int, bytes]]:
        """``(file offset, bytes)`` of both bitmaps, in pieces."""
        half = self.bitmap_size // 2
        for base, ranges in (
            (self.bitmap_offset, self.ranges),
            (self.bitmap_offset + half, self.kept),
        ):
            for off in range(0, half, piece):
                n = min(piece, half - off)
                yield base + off, _bitmap_bytes(ranges, off * 8, n)

    def desc_index(self, pfn: int) -> int:
        """The descriptor slot of ``pfn`` (which must be a kept page)."""
        rank = 0
        for start, end in self.kept:
            if start <= pfn < end:
                return rank + pfn - start
            rank += end - start
        raise ValueError(f"PFN {pfn:#x} is not in the dump")

    def desc_file_offset(self, pfn: int) -> int:
        return self.desc_offset + PAGE_DESC.size * self.desc_index(pfn)


def _bitmap_bytes(ranges: Sequence[tuple[int, int]], first_bit: int, nbytes: int) -> bytes:
    out = bytearray(nbytes)
    last_bit = first_bit + nbytes * 8
    for start, end in ranges:
        a, b = max(start, first_bit), min(end, last_bit)
        if a >= b:
            continue
        a -= first_bit
        b -= first_bit
        while a < b and a % 8:
            out[a // 8] |= 1 << (a % 8)
            a += 1
        full = (b - a) // 8
        if full:
            out[a // 8 : a // 8 + full] = b"\xff" * full
            a += full * 8
        while a < b:
            out[a // 8] |= 1 << (a % 8)
            a += 1
    return bytes(out)


def plan_kdump(
    *,
    byteorder: ByteOrder,
    page_size: int,
    max_mapnr: int,
    ranges: Sequence[tuple[int, int]],
    notes: bytes,
    vmcoreinfo: tuple[int, int] | None,
    nr_cpus: int,
    utsname: Sequence[str],
    timestamp: int,
    codec_flag: int,
    eraseinfo_size: int = 0,
    kept: Sequence[tuple[int, int]] | None = None,
    dump_level: int = DUMP_LEVEL_ZERO,
) -> KdumpLayout:
    """Lay out a kdump-compressed file.

    ``vmcoreinfo`` is the (offset, size) of the VMCOREINFO text inside
    ``notes``; ``utsname`` is (sysname, nodename, release, version, machine,
    domainname): ``machine`` must be ``ppc64`` or ``ppc64le`` for readers to
    know the architecture. ``eraseinfo_size`` reserves room for the erase
    info right after the notes. ``kept`` (default: all of ``ranges``) are the
    pages the file holds, ``dump_level`` the ``-d`` bits that left the rest out.
    """
    ps = page_size
    if ps <= 0 or ps & (ps - 1):
        raise ValueError(f"page size {ps} is not a power of two")
    rs = tuple((int(a), int(b)) for a, b in ranges if b > a)
    for (_, b), (c, _) in itertools.pairwise(rs):
        if c < b:
            raise ValueError("PFN ranges must be ascending and disjoint")
    if rs and rs[-1][1] > max_mapnr:
        raise ValueError("PFN range past max_mapnr")
    ks = rs if kept is None else tuple((int(a), int(b)) for a, b in kept if b > a)
    for (_, b), (c, _) in itertools.pairwise(ks):
        if c < b:
            raise ValueError("kept PFN ranges must be ascending and disjoint")
    offset_note = ps + KDUMP_SUB_HEADER.size
    offset_erase = offset_note + len(notes)
    sub_hdr_size = _ceil(KDUMP_SUB_HEADER.size + len(notes) + eraseinfo_size, ps)
    bitmap_blocks = 2 * _ceil(_ceil(max_mapnr, 8), ps)
    bitmap_offset = (1 + sub_hdr_size) * ps
    desc_offset = bitmap_offset + bitmap_blocks * ps
    npages = sum(b - a for a, b in ks)
    # Page data starts on a page boundary, so that whole pages can be written
    # with O_DIRECT (dumpdir/filewrite.py); readers follow the descriptors.
    zero_page_offset = _ceil(desc_offset + PAGE_DESC.size * npages, ps) * ps
    vm_off, vm_size = (offset_note + vmcoreinfo[0], vmcoreinfo[1]) if vmcoreinfo else (0, 0)
    header = DiskDumpHeader(
        signature=KDUMP_SIGNATURE,
        header_version=HEADER_VERSION,
        utsname=_utsname(utsname),
        timestamp_sec=timestamp,
        status=codec_flag,
        block_size=ps,
        sub_hdr_size=sub_hdr_size,
        bitmap_blocks=bitmap_blocks,
        max_mapnr=min(max_mapnr, (1 << 32) - 1),
        nr_cpus=max(1, nr_cpus),
    )
    sub = KdumpSubHeader(
        dump_level=dump_level,
        offset_vmcoreinfo=vm_off,
        size_vmcoreinfo=vm_size,
        offset_note=offset_note,
        size_note=len(notes),
        offset_eraseinfo=offset_erase if eraseinfo_size else 0,
        size_eraseinfo=eraseinfo_size,
        max_mapnr_64=max_mapnr,
    )
    return KdumpLayout(
        byteorder=byteorder,
        page_size=ps,
        max_mapnr=max_mapnr,
        ranges=rs,
        kept=ks,
        header=header,
        sub_header=sub,
        notes=notes,
        bitmap_offset=bitmap_offset,
        bitmap_size=bitmap_blocks * ps,
        desc_offset=desc_offset,
        npages=npages,
        zero_page_offset=zero_page_offset,
        data_start=zero_page_offset + ps,
    )


def _snappy_length(size: int, data: bytes) -> int:
    """The uncompressed length a raw snappy block starts with (a varint), or -1."""
    value = 0
    for i, byte in enumerate(data[: min(size, 5)]):
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value
    return -1


Decompressor = Callable[[bytes, int, int], bytes]
"""(stored bytes, codec flag, page size) -> the page."""


_BITMAP_RUNS = re.compile(rb"\xff+|[^\x00\xff]")


class KdumpFile:
    """A checked kdump-compressed file: header, sub-header, notes, bitmaps, pages.

    Errors name the file and offset. ``read_page(pfn)`` decodes one page with
    ``decompress`` (see :mod:`drgn_hvdump.codecs`).
    """

    def __init__(self, f: BinaryIO, path: str, decompress: Decompressor) -> None:
        self._f = f
        self.path = path
        self._decompress = decompress
        self.file_size = os.fstat(f.fileno()).st_size
        head = self._pread(0, DISK_DUMP_HEADER.size, "disk_dump_header")
        if head[:8] != KDUMP_SIGNATURE:
            raise FormatError(
                "not a kdump-compressed file (no 'KDUMP   ' signature)", path=path, offset=0
            )
        order: ByteOrder | None = None
        for candidate in ("big", "little"):
            h = DISK_DUMP_HEADER.unpack_from(head, 0, candidate, path=path)
            sane_size = 0 < h.block_size <= (1 << 20) and h.block_size & (h.block_size - 1) == 0
            if sane_size and 0 < h.header_version < 64:
                order = candidate
                break
        if order is None:
            raise FormatError(
                "no sane header version and block size in either byte order",
                path=path,
                offset=DISK_DUMP_HEADER.offset_of("block_size"),
            )
        self.byteorder: ByteOrder = order
        self.header: DiskDumpHeader = DISK_DUMP_HEADER.unpack_from(head, 0, order, path=path)
        ps = self.page_size = self.header.block_size
        sub_raw = self._pread(ps, KDUMP_SUB_HEADER.size, "kdump_sub_header")
        self.sub_header: KdumpSubHeader = KDUMP_SUB_HEADER.unpack_from(sub_raw, 0, order, path=path)
        self.max_mapnr = self.sub_header.max_mapnr_64 or self.header.max_mapnr
        self.notes = self._pread(self.sub_header.offset_note, self.sub_header.size_note, "notes")
        need = 2 * _ceil(_ceil(self.max_mapnr, 8), ps)
        if self.header.bitmap_blocks < need:
            raise FormatError(
                f"bitmap_blocks {self.header.bitmap_blocks} is less than the {need} blocks "
                f"two bitmaps of {self.max_mapnr} PFNs need",
                path=path,
                offset=DISK_DUMP_HEADER.offset_of("bitmap_blocks"),
            )
        if self.header.sub_hdr_size < 0:
            raise FormatError(
                f"negative sub_hdr_size {self.header.sub_hdr_size}",
                path=path,
                offset=DISK_DUMP_HEADER.offset_of("sub_hdr_size"),
            )
        self.bitmap_offset = (1 + self.header.sub_hdr_size) * ps
        # Everything that walks the bitmaps is then bounded by the file's size.
        bitmaps_end = self.bitmap_offset + self.header.bitmap_blocks * ps
        if bitmaps_end > self.file_size:
            raise FormatError(
                f"the bitmaps ({self.header.bitmap_blocks} blocks for {self.max_mapnr} PFNs) "
                f"run to {bitmaps_end:#x}, past the end of the file ({self.file_size:#x})",
                path=path,
                offset=DISK_DUMP_HEADER.offset_of("bitmap_blocks"),
                hint="the file is truncated or its header is corrupt",
            )
        half = self.header.bitmap_blocks * ps // 2
        self._bitmap2_offset = self.bitmap_offset + half
        self.desc_offset = self.bitmap_offset + self.header.bitmap_blocks * ps
        self._rank_block = 4096
        self._ranks: dict[int, int] = {}

    @classmethod
    def open(cls, path: str | os.PathLike[str], decompress: Decompressor) -> KdumpFile:
        f = open(path, "rb")  # noqa: SIM115 - closed by close()
        try:
            return cls(f, os.fspath(path), decompress)
        except BaseException:
            f.close()
            raise

    def close(self) -> None:
        self._f.close()

    def fileno(self) -> int:
        return self._f.fileno()

    def __enter__(self) -> KdumpFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pread(self, offset: int, size: int, what: str) -> bytes:
        if offset < 0 or offset + size > self.file_size:
            raise FormatError(
                f"{what} ({size} bytes) runs past the end of the file ({self.file_size} bytes)",
                path=self.path,
                offset=offset,
            )
        data = os.pread(self._f.fileno(), size, offset)
        if len(data) != size:
            raise FormatError(f"short read of {what}", path=self.path, offset=offset)
        return data

    def vmcoreinfo_raw(self) -> bytes | None:
        """The VMCOREINFO text the sub-header points at (header version 3 and later), as
        libkdumpfile reads it; None when it points at none."""
        sub = self.sub_header
        if self.header.header_version < 3 or not sub.size_vmcoreinfo:
            return None
        return self._pread(sub.offset_vmcoreinfo, sub.size_vmcoreinfo, "VMCOREINFO")

    def _bit(self, base: int, pfn: int) -> bool:
        byte = self._pread(base + pfn // 8, 1, "bitmap")[0]
        return bool(byte >> (pfn % 8) & 1)

    def _rank(self, pfn: int) -> int:
        """Set bits of the 2nd bitmap before ``pfn``."""
        bits_per = self._rank_block * 8
        block = pfn // bits_per
        rank = 0
        start = 0
        for b in range(block, -1, -1):
            if b in self._ranks:
                rank, start = self._ranks[b], b
                break
        for b in range(start, block):
            data = self._pread(
                self._bitmap2_offset + b * self._rank_block, self._rank_block, "bitmap"
            )
            rank += int.from_bytes(data, "little").bit_count()
            self._ranks[b + 1] = rank
        self._ranks.setdefault(block, rank)
        tail_bits = pfn - block * bits_per
        if tail_bits:
            data = self._pread(
                self._bitmap2_offset + block * self._rank_block, _ceil(tail_bits, 8), "bitmap"
            )
            value = int.from_bytes(data, "little") & ((1 << tail_bits) - 1)
            rank += value.bit_count()
        return rank

    def present_runs(self, piece: int = 1 << 20, *, ram: bool = False) -> Iterator[tuple[int, int]]:
        """``(first, end)`` PFN runs the second bitmap marks present (with ``ram``: the
        first bitmap, RAM with or without a page in the file), in order.

        Reads the bitmap a piece at a time; whole 0x00 and 0xff bytes are
        skipped or taken by the regular expression engine, so a dump of
        millions of pages is not walked bit by bit in Python.
        """
        nbytes = _ceil(self.max_mapnr, 8)
        base = self.bitmap_offset if ram else self._bitmap2_offset
        run = -1
        for at in range(0, nbytes, piece):
            data = self._pread(base + at, min(piece, nbytes - at), "bitmap")
            pos = 0
            for m in _BITMAP_RUNS.finditer(data):
                if m.start() > pos and run >= 0:  # zero bytes in between end the run
                    yield run, (at + pos) * 8
                    run = -1
                if m.group()[0] == 0xFF:
                    if run < 0:
                        run = (at + m.start()) * 8
                else:
                    byte = m.group()[0]
                    for bit in range(8):
                        pfn = (at + m.start()) * 8 + bit
                        if byte >> bit & 1:
                            if run < 0:
                                run = pfn
                        elif run >= 0:
                            yield run, pfn
                            run = -1
                pos = m.end()
            if pos < len(data) and run >= 0:
                yield run, (at + pos) * 8
                run = -1
        if run >= 0:
            yield run, nbytes * 8

    def descriptor_table(self, count: int, piece: int = 1 << 14) -> Iterator[tuple[int, PageDesc]]:
        """The first ``count`` page descriptors (one per present page, in PFN order) as
        ``(file offset, descriptor)``, read ``piece`` at a time; the table must fit the file."""
        for first in range(0, count, piece):
            n = min(piece, count - first)
            at = self.desc_offset + PAGE_DESC.size * first
            data = self._pread(at, PAGE_DESC.size * n, "page descriptors")
            for i, desc in enumerate(PAGE_DESC.iter_unpack(data, self.byteorder)):
                yield at + i * PAGE_DESC.size, desc

    def has_page(self, pfn: int) -> bool:
        return 0 <= pfn < self.max_mapnr and self._bit(self._bitmap2_offset, pfn)

    def descriptor(self, pfn: int) -> PageDesc:
        if not self.has_page(pfn):
            raise FormatError(f"PFN {pfn:#x} is not in the dump", path=self.path)
        at = self.desc_offset + PAGE_DESC.size * self._rank(pfn)
        return PAGE_DESC.unpack_from(
            self._pread(at, PAGE_DESC.size, "page descriptor"), 0, self.byteorder
        )

    def decode(self, desc: PageDesc, pfn: int) -> bytes:
        """The page a descriptor points at, checked as readers check it."""
        ps = self.page_size
        codec = desc.flags & _CODEC_FLAGS
        if desc.size > ps:
            # Writers store a page compressed only when that is smaller: a larger size
            # is corrupt, and would be read (and decoded) whole before it is refused.
            raise FormatError(
                f"page {pfn:#x} is stored in {desc.size:#x} bytes, more than a page ({ps:#x})",
                path=self.path,
                offset=desc.offset,
            )
        data = self._pread(desc.offset, desc.size, f"page {pfn:#x}")
        if codec == DUMP_DH_COMPRESSED_SNAPPY and _snappy_length(desc.size, data) != ps:
            # Snappy allocates the length its header claims (up to 4 GiB) before decoding.
            raise FormatError(
                f"snappy page {pfn:#x} claims {_snappy_length(desc.size, data)} bytes, not {ps}",
                path=self.path,
                offset=desc.offset,
            )
        if not codec:
            if desc.size != ps:
                raise FormatError(
                    f"raw page {pfn:#x} is {desc.size} bytes, not {ps}",
                    path=self.path,
                    offset=desc.offset,
                )
            return data
        try:
            page = self._decompress(data, codec, ps)
        except Exception as exc:
            raise FormatError(
                f"page {pfn:#x} does not decompress ({exc})", path=self.path, offset=desc.offset
            ) from None
        if len(page) != ps:
            raise FormatError(
                f"page {pfn:#x} decompresses to {len(page)} bytes, not {ps}",
                path=self.path,
                offset=desc.offset,
            )
        return page

    def read_page(self, pfn: int) -> bytes:
        return self.decode(self.descriptor(pfn), pfn)

    def descriptors(self, pfn: int, count: int) -> list[PageDesc]:
        """Descriptors of ``count`` consecutive PFNs, all of which must be in the dump."""
        for p in (pfn, pfn + count - 1):
            if not self.has_page(p):
                raise FormatError(f"PFN {p:#x} is not in the dump", path=self.path)
        at = self.desc_offset + PAGE_DESC.size * self._rank(pfn)
        data = self._pread(at, PAGE_DESC.size * count, "page descriptors")
        return list(PAGE_DESC.iter_unpack(data, self.byteorder))
