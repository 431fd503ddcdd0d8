"""Per-page codecs of the kdump-compressed format, and the batch work done in threads.

The format has flags for zlib, LZO, snappy and zstd only (no LZ4); ``none``
stores pages raw, as makedumpfile does without ``-c``/``-l``/``-p``/``-z``.
Each page is compressed on its own and kept compressed only if that is
smaller than the page. Batches are compressed and checked in C
(:class:`drgn_hvdump.native.PageCodec`: one call per batch with the GIL
released, so threads run in parallel); single pages are decoded for readers
in C too.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from drgn_hvdump import native
from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.formats.kdump import (
    DUMP_DH_COMPRESSED_LZO,
    DUMP_DH_COMPRESSED_SNAPPY,
    DUMP_DH_COMPRESSED_ZLIB,
    DUMP_DH_COMPRESSED_ZSTD,
)
from drgn_hvdump.native import PageBatch
from drgn_hvdump.native_ref import MIN_PAGE_SIZE, check_codec

__all__ = [
    "CODECS",
    "Codec",
    "PageBatch",
    "check_batch",
    "compress_batch",
    "decompress_page",
    "get_codec",
]

_local = threading.local()


@dataclass(frozen=True)
class Codec:
    """A kdump page codec: its name, its page flag (0 for ``none``: pages stored raw), its level."""

    name: str
    flag: int
    level: int | None

    def page_codec(self, page_size: int) -> native.PageCodec:
        """The calling thread's batch compressor and checker (library contexts are not shared)."""
        codecs: dict[tuple[int, int | None, int], native.PageCodec] | None = getattr(
            _local, "codecs", None
        )
        if codecs is None:
            codecs = _local.codecs = {}
        key = (self.flag, self.level, page_size)
        pc = codecs.get(key)
        if pc is None:
            pc = codecs[key] = native.PageCodec(self.flag, self.level, page_size)
        return pc


def compress_batch(codec: Codec, view: memoryview, zero: bytes, page_size: int) -> PageBatch:
    """Store a batch of pages (``zero[i]`` set for a zero page) in the calling thread."""
    return codec.page_codec(page_size).compress(view, zero)


def check_batch(
    codec: Codec, view: memoryview, zero: bytes, batch: PageBatch, page_size: int
) -> str:
    """Decode every stored page of ``batch`` and compare it with ``view``; "" or what is wrong.

    The link from the checksum taken at read time to the bytes on the disk:
    compressed pages decompress to the page read, raw ones equal it, zero
    pages are zero.
    """
    bad = codec.page_codec(page_size).check(view, zero, batch)
    if bad < 0:
        return ""
    if batch.sizes[bad] == 0:
        what = "is stored as zero but is not"
    elif batch.flags[bad] == 0:
        what = "is stored raw but differs"
    else:
        what = "does not decompress to itself"
    return f"{codec.name}: page {bad} of a batch {what}"


CODECS = {
    "zstd": DUMP_DH_COMPRESSED_ZSTD,
    "zlib": DUMP_DH_COMPRESSED_ZLIB,
    "lzo": DUMP_DH_COMPRESSED_LZO,
    "snappy": DUMP_DH_COMPRESSED_SNAPPY,
    "none": 0,
}


def get_codec(name: str, level: int | None = None) -> Codec:
    """The codec called ``name`` (``zstd``, ``zlib``, ``lzo``, ``snappy``, ``none``)."""
    if name not in CODECS:
        extra = (
            "; the kdump format has no LZ4 flag, no reader could open it (use snappy or lzo)"
            if name == "lz4"
            else ""
        )
        raise HvdumpError(f"unknown compression {name!r}: choose {', '.join(CODECS)}{extra}")
    try:
        check_codec(CODECS[name], level, MIN_PAGE_SIZE)
    except ValueError as exc:
        raise HvdumpError(f"compression {name}: {exc}") from None
    return Codec(name, CODECS[name], level)


_FLAGS = frozenset(
    (
        DUMP_DH_COMPRESSED_ZLIB,
        DUMP_DH_COMPRESSED_LZO,
        DUMP_DH_COMPRESSED_SNAPPY,
        DUMP_DH_COMPRESSED_ZSTD,
    )
)


def decompress_page(data: bytes, flag: int, page_size: int) -> bytes:
    """Decode one stored page with the codec ``flag`` names (in C: no Python codec package
    is needed to read a dump); ValueError if it does not decode to exactly one page."""
    if flag not in _FLAGS:
        raise ValueError(f"unknown codec flag {flag:#x}")
    return Codec("", flag, None).page_codec(page_size).decode(data, flag)
