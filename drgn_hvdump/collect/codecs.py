"""Per-page codecs of the kdump-compressed format, and the batch work done in threads.

The format has flags for zlib, LZO, snappy and zstd only (no LZ4). Each page is
compressed on its own and kept compressed only if that is smaller than the
page, as makedumpfile does. The libraries release the GIL while they work, so
batches run in parallel in a thread pool.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.formats.kdump import (
    DUMP_DH_COMPRESSED_LZO,
    DUMP_DH_COMPRESSED_SNAPPY,
    DUMP_DH_COMPRESSED_ZLIB,
    DUMP_DH_COMPRESSED_ZSTD,
)

__all__ = [
    "CODECS",
    "Codec",
    "batch_compressor",
    "decompress_page",
    "get_codec",
    "page_checker",
    "page_compressor",
]

Compress = Callable[[memoryview], bytes]


@dataclass(frozen=True)
class Codec:
    """A kdump page codec: its flag, and a factory of per-thread compress functions."""

    name: str
    flag: int
    level: int | None

    def compressor(self) -> Compress:
        """A compress function for the calling thread (zstd contexts are not shared)."""
        if self.name == "zlib":
            level = 1 if self.level is None else self.level
            return lambda page: zlib.compress(page, level)
        if self.name == "zstd":
            import zstandard

            ctx = zstandard.ZstdCompressor(level=1 if self.level is None else self.level)
            return ctx.compress
        if self.name == "lzo":
            import lzallright

            lzo = lzallright.LZOCompressor()
            return lambda page: lzo.compress(bytes(page))
        if self.name == "snappy":
            import cramjam

            return lambda page: bytes(cramjam.snappy.compress_raw(page))
        raise AssertionError(self.name)


Prepared = list[tuple[int, bytes] | None]


def page_compressor(codec: Codec, page_size: int) -> Callable[[memoryview, bytes], Prepared]:
    """A function for the calling thread that turns pages into what a kdump file stores.

    Given ``len(zero)`` pages and their zero flags: ``None`` for a zero page,
    else ``(codec flag, compressed bytes)``, or ``(0, raw page)`` when
    compressing does not make it smaller. The libraries release the GIL
    (zstandard's ``multi_compress_to_buffer`` was measured: no faster than
    one call per 64 KiB page). What it returns is checked with
    :func:`page_checker` before it may count as saved.
    """
    ps = page_size
    flag = codec.flag
    one = codec.compressor()
    many = _multi_compressor(codec)

    def run(view: memoryview, zero: bytes) -> Prepared:
        out: Prepared = [None] * len(zero)
        idx = [i for i, z in enumerate(zero) if not z]
        pages = [view[i * ps : (i + 1) * ps] for i in idx]
        for i, page, data in zip(idx, pages, many(pages) if many else map(one, pages), strict=True):
            out[i] = (flag, data) if len(data) < ps else (0, bytes(page))
        return out

    return run


def _multi_compressor(codec: Codec) -> Callable[[list[memoryview]], list[bytes]] | None:
    """zstd: a whole batch of pages in one call, one frame each, for the calling thread.

    zstandard's ``multi_compress_to_buffer`` makes the same frames as one
    ``compress`` per page, for about the same CPU time, but releases the GIL
    once per batch instead of once per page: with two workers a batch took
    0.45-0.48 s of wall time against 0.51-0.52 s page by page (256 MiB).
    """
    if codec.name != "zstd":
        return None
    import zstandard

    ctx = zstandard.ZstdCompressor(level=1 if codec.level is None else codec.level)

    def many(pages: list[memoryview]) -> list[bytes]:
        if not pages:
            return []
        frames = ctx.multi_compress_to_buffer(list[bytes | bytearray | memoryview](pages))
        return [frames[k].tobytes() for k in range(len(frames))]

    return many


def page_checker(codec: Codec, page_size: int) -> Callable[[memoryview, bytes, Prepared], str]:
    """A function for the calling thread that checks :func:`page_compressor`'s work.

    Every compressed page is decompressed again and compared byte for byte with
    the page it came from, every raw one compared as it is, every zero page
    checked to be a zero flag (the chain of checks from the checksum taken at
    read time to the bytes on the disk). Returns "" or what is wrong.
    """
    ps = page_size
    flag = codec.flag
    decode = _decoders()[flag]

    def check(view: memoryview, zero: bytes, pages: Prepared) -> str:
        if len(pages) != len(zero):
            return f"{codec.name}: {len(pages)} pages prepared for a batch of {len(zero)}"
        for i, item in enumerate(pages):
            if item is None:
                if not zero[i]:
                    return f"{codec.name}: page {i} of a batch is stored as zero but is not"
                continue
            page = bytes(view[i * ps : (i + 1) * ps])
            f, data = item
            if f == flag:
                try:
                    same = decode(data, ps) == page
                except Exception as exc:  # the library's own error: corrupt frame
                    return f"{codec.name}: page {i} of a batch does not decompress: {exc}"
                if not same:
                    return f"{codec.name}: page {i} of a batch does not decompress to itself"
            elif f != 0 or data != page:
                return f"{codec.name}: page {i} of a batch is stored raw but differs"
        return ""

    return check


def batch_compressor(codec: Codec, page_size: int) -> Callable[[memoryview, bytes], Prepared]:
    """:func:`page_compressor` and :func:`page_checker` in one call (raises if the check fails)."""
    compress = page_compressor(codec, page_size)
    check = page_checker(codec, page_size)

    def run(view: memoryview, zero: bytes) -> Prepared:
        pages = compress(view, zero)
        problem = check(view, zero, pages)
        if problem:
            raise HvdumpError(problem)
        return pages

    return run


CODECS = {
    "zstd": DUMP_DH_COMPRESSED_ZSTD,
    "zlib": DUMP_DH_COMPRESSED_ZLIB,
    "lzo": DUMP_DH_COMPRESSED_LZO,
    "snappy": DUMP_DH_COMPRESSED_SNAPPY,
}


def get_codec(name: str, level: int | None = None) -> Codec:
    """The codec called ``name`` (``zstd``, ``zlib``, ``lzo``, ``snappy``); checks its library."""
    if name not in CODECS:
        extra = (
            "; the kdump format has no LZ4 flag, no reader could open it (use snappy or lzo)"
            if name == "lz4"
            else ""
        )
        raise HvdumpError(f"unknown compression {name!r}: choose {', '.join(CODECS)}{extra}")
    codec = Codec(name, CODECS[name], level)
    try:
        codec.compressor()
    except ImportError as exc:
        raise HvdumpError(f"compression {name}: its Python library is missing ({exc})") from None
    return codec


_local = threading.local()


def _decoders() -> dict[int, Callable[[bytes, int], bytes]]:
    decoders: dict[int, Callable[[bytes, int], bytes]] | None = getattr(_local, "decoders", None)
    if decoders is None:
        import cramjam
        import lzallright
        import zstandard

        zd = zstandard.ZstdDecompressor()
        lzo = lzallright.LZOCompressor()
        decoders = {
            DUMP_DH_COMPRESSED_ZLIB: lambda data, ps: zlib.decompress(data, bufsize=ps),
            DUMP_DH_COMPRESSED_ZSTD: lambda data, ps: zd.decompress(data, max_output_size=ps),
            DUMP_DH_COMPRESSED_LZO: lambda data, ps: lzo.decompress(data, output_size_hint=ps),
            DUMP_DH_COMPRESSED_SNAPPY: lambda data, ps: bytes(cramjam.snappy.decompress_raw(data)),
        }
        _local.decoders = decoders
    return decoders


def decompress_page(data: bytes, flag: int, page_size: int) -> bytes:
    """Decode one stored page with the codec ``flag`` names."""
    decoder = _decoders().get(flag)
    if decoder is None:
        raise ValueError(f"unknown codec flag {flag:#x}")
    return decoder(data, page_size)
