"""The files a collection writes: the dump (ELF or kdump-compressed) and metadata files.

Each writer puts one chunk at a place fixed by the plan (so a rerun after a
crash rewrites the same bytes in the same place), syncs it, and reads it back
from the disk (page cache dropped first) to rebuild the chunk's raw bytes for
the checksum comparison.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drgn_hvdump import native
from drgn_hvdump.codecs import Codec, decompress_page
from drgn_hvdump.dumpdir.filewrite import DataWriter, DumpFile, LocalFile, page_runs
from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.formats.elfcore import CoreLayout, file_offset
from drgn_hvdump.formats.kdump import (
    DUMP_DH_COMPRESSED_INCOMPLETE,
    PAGE_DESC,
    KdumpLayout,
)
from drgn_hvdump.native import PageBatch

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["ChunkWrite", "ElfOutput", "KdumpOutput", "SidecarOutput", "create_file"]


def create_file(path: str) -> LocalFile:
    """Open (creating 0600, never through a link) ``path`` for reading and writing;
    never truncates."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    return LocalFile(fd, path)


def _at_least(file: DumpFile, size: int | None) -> DumpFile:
    """``file``, extended to ``size`` (sparse) if shorter."""
    if size is not None and file.size() < size:
        file.truncate(size)
    return file


@dataclass(frozen=True)
class _RawPages:
    """The non-zero pages of a chunk stored raw, run by run (built only when compared)."""

    view: memoryview
    zero: bytes
    page_size: int

    def __iter__(self) -> Iterator[memoryview]:
        for _, run in page_runs(self.view, self.zero, self.page_size):
            yield run


@dataclass
class ChunkWrite:
    """Where a chunk's bytes went: file offset and length of its stored bytes."""

    offset: int
    length: int
    # kdump: the stored (compressed) bytes and the descriptors written, compared
    # byte for byte with what reads back from the disk (no decompression again).
    stored: Iterable[Buffer] = ()
    descs: bytes = b""


class SidecarOutput:
    """A metadata file (the HPTE section, the register save area) stored as read, sparse."""

    def __init__(self, file: DumpFile, size: int, page_size: int) -> None:
        self.path = file.path
        self.size = size
        self.page_size = page_size
        self.file = _at_least(file, size)

    def write(self, offset: int, buf: memoryview, zero: bytes) -> ChunkWrite:
        ps = self.page_size
        whole = len(zero) * ps
        self.file.write_runs(buf[:whole], zero, ps, offset)
        if whole < buf.nbytes:
            self.file.pwrite(buf[whole:], offset + whole)
        return ChunkWrite(offset, buf.nbytes)

    def sync(self) -> None:
        self.file.sync()

    def read_back(self, offset: int, size: int) -> bytes:
        return self.file.read(size, offset)

    def hash_back(self, offset: int, size: int) -> int:
        """The XXH64 of ``[offset, offset + size)`` as the disk holds it."""
        return self.file.hash(offset, size)

    def close(self) -> None:
        self.file.close()


class ElfOutput:
    """A sparse ELF core: headers first, each segment at its final offset, zero pages as holes."""

    def __init__(self, file: DumpFile, layout: CoreLayout, page_size: int, resume: bool) -> None:
        self.path = file.path
        self.layout = layout
        self.page_size = page_size
        self.file = _at_least(file, layout.file_size)
        if not resume or not self.file.same(0, [layout.header]):
            self.file.pwrite(layout.header, 0)
            self.file.sync()

    def file_offset(self, paddr: int, size: int) -> int:
        offset = file_offset(self.layout.segments, paddr, size)
        if offset is None:
            raise ValueError(f"{paddr:#x}+{size:#x} is in no segment of {self.path}")
        return offset

    def write(self, paddr: int, buf: memoryview, zero: bytes) -> ChunkWrite:
        offset = self.file_offset(paddr, buf.nbytes)
        stored = self.file.write_runs(buf, zero, self.page_size, offset)
        return ChunkWrite(offset, stored)

    def sync(self) -> None:
        self.file.sync()

    def read_back(self, paddr: int, size: int) -> bytes:
        return self.file.read(size, self.file_offset(paddr, size))

    def hash_back(self, paddr: int, size: int) -> int:
        """The XXH64 of the memory ``[paddr, paddr + size)`` as the disk holds it."""
        return self.file.hash(self.file_offset(paddr, size), size)

    def finish(self, *, sync: bool = True) -> None:
        if sync:
            self.file.sync(metadata=True)

    def close(self) -> None:
        self.file.close()


class KdumpOutput:
    """A kdump-compressed file: fixed header, bitmaps and descriptor table; data appended.

    ``data_end`` is where the next chunk's stored pages go; a resumed
    collection sets it from the journal, so a chunk cut short by a crash is
    simply written again after the last journaled one.
    """

    def __init__(self, file: DumpFile, layout: KdumpLayout, codec: Codec, resume: bool) -> None:
        self.path = file.path
        self.layout = layout
        self.codec = codec
        self.page_size = layout.page_size
        self.file = file
        self.data = DataWriter(file)
        self.data.seek(layout.data_start)
        first = layout.first_blocks(layout.header.status | DUMP_DH_COMPRESSED_INCOMPLETE)
        if resume and file.size() >= layout.data_start:
            have = file.read(len(first), 0)
            if have in (first, layout.first_blocks()):
                return
        # Header blocks last: a file whose header is there has its bitmaps and table.
        for offset, data in layout.bitmap_pieces():
            file.pwrite(data, offset)
        file.write_zeros(layout.desc_offset, PAGE_DESC.size * layout.npages)
        file.pwrite(bytes(self.page_size), layout.zero_page_offset)
        file.sync()
        file.pwrite(first, 0)
        file.sync()

    @property
    def data_end(self) -> int:
        """Where the next chunk's stored pages go."""
        return self.data.end

    def set_data_end(self, end: int) -> None:
        end = max(end, self.layout.data_start)
        self.file.truncate(end)
        self.data.seek(end)

    def write(self, paddr: int, batches: Sequence[PageBatch]) -> ChunkWrite:
        """Append a chunk's stored pages (batches in page order) and write their descriptors."""
        lay = self.layout
        big = lay.byteorder == "big"
        start = pos = self.data_end
        descs: list[bytes] = []
        for b in batches:
            descs.append(native.kdump_descs(b, pos, lay.zero_page_offset, self.page_size, big))
            pos += b.stored
        parts = [b.data for b in batches]
        self.data.append(parts)
        return self._descs(paddr, parts, b"".join(descs), start)

    def write_raw(self, paddr: int, view: memoryview, zero: bytes) -> ChunkWrite:
        """Append a chunk's non-zero pages as they are (codec ``none``): no copy is made."""
        ps = self.page_size
        sizes = array("I", [0 if z else ps for z in zero])
        batch = PageBatch(b"", sizes, array("I", bytes(4 * len(zero))))
        lay = self.layout
        start = self.data_end
        descs = native.kdump_descs(batch, start, lay.zero_page_offset, ps, lay.byteorder == "big")
        self.data.append_pages(view, zero, ps)
        return self._descs(paddr, _RawPages(view, zero, ps), descs, start)

    def _descs(self, paddr: int, parts: Iterable[Buffer], descs: bytes, start: int) -> ChunkWrite:
        """Write the descriptors of a chunk whose stored bytes were appended from ``start``."""
        self.file.pwrite(descs, self.layout.desc_file_offset(paddr // self.page_size))
        return ChunkWrite(start, self.data.end - start, parts, descs)

    def check_back(self, paddr: int, w: ChunkWrite) -> str:
        """Read a written chunk back from the disk (page cache dropped first) and compare
        its stored bytes and its descriptors byte for byte with what was written; "" if equal."""
        doff = self.layout.desc_file_offset(paddr // self.page_size)
        if not self.file.same(doff, [w.descs]):
            return f"page descriptors at offset {doff:#x} read back differently"
        stored = list(w.stored)
        if sum(memoryview(p).nbytes for p in stored) != w.length or not self.file.same(
            w.offset, stored
        ):
            return (
                f"stored bytes at offset {w.offset:#x}+{w.length:#x} read back differently "
                "from what was written"
            )
        return ""

    def sync(self) -> None:
        self.file.sync()

    def read_back(self, paddr: int, size: int) -> bytes:
        """The raw bytes of ``[paddr, paddr + size)`` (page aligned) rebuilt from the disk."""
        ps = self.page_size
        lay = self.layout
        n = size // ps
        doff = lay.desc_file_offset(paddr // ps)
        descs = list(PAGE_DESC.iter_unpack(self.file.read(n * PAGE_DESC.size, doff), lay.byteorder))
        stored = [d for d in descs if d.offset != lay.zero_page_offset]
        lo = min((d.offset for d in stored), default=0)
        hi = max((d.offset + d.size for d in stored), default=0)
        blob = b""
        if stored:
            blob = self.file.read(hi - lo, lo)
        out = bytearray(size)
        zero_page = bytes(ps)
        for i, d in enumerate(descs):
            if d.offset == lay.zero_page_offset and d.size == ps and not d.flags:
                continue
            if d.offset < lay.data_start:
                raise HvdumpError(
                    f"{self.path}: page {paddr // ps + i:#x} has no data (descriptor offset {d.offset:#x})"
                )
            data = blob[d.offset - lo : d.offset - lo + d.size]
            page = data if not d.flags else decompress_page(data, d.flags, ps)
            if len(page) != ps:
                raise HvdumpError(
                    f"{self.path}: page {paddr // ps + i:#x} decodes to {len(page)} bytes"
                )
            if page != zero_page:
                out[i * ps : (i + 1) * ps] = page
        return bytes(out)

    def finish(self, eraseinfo: bytes = b"", *, sync: bool = True) -> None:
        """Mark the file complete (clear INCOMPLETE) and sync it (unless ``sync`` is false)."""
        lay = self.layout
        if eraseinfo:
            self.file.pwrite(eraseinfo, lay.sub_header.offset_eraseinfo)
        self.data.truncate()
        self.file.pwrite(lay.first_blocks()[: self.page_size], 0)
        if sync:
            self.file.sync(metadata=True)

    def close(self) -> None:
        self.data.close()
        self.file.close()
