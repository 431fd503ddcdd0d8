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

__all__ = ["CODECS", "Codec", "batch_compressor", "decompress_page", "get_codec"]

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


def batch_compressor(codec: Codec, page_size: int) -> Callable[[memoryview, bytes], Prepared]:
    """A function for the calling thread that turns pages into what a kdump file stores.

    Given ``len(zero)`` pages and their zero flags: ``None`` for a zero page,
    else ``(codec flag, compressed bytes)``, or ``(0, raw page)`` when
    compressing does not make it smaller. Every compressed page is decompressed
    again and compared with the page it came from (the chain of checks from
    the checksum taken at read time to the bytes on the disk). The libraries release the GIL
    (zstandard's ``multi_compress_to_buffer`` was measured: no faster than
    one call per 64 KiB page).
    """
    ps = page_size
    flag = codec.flag
    decode = _decoders()[flag]
    one = codec.compressor()

    def compress_all(view: memoryview, idx: list[int]) -> list[bytes]:
        return [one(view[i * ps : (i + 1) * ps]) for i in idx]

    def run(view: memoryview, zero: bytes) -> Prepared:
        idx = [i for i, z in enumerate(zero) if not z]
        out: Prepared = [None] * len(zero)
        if not idx:
            return out
        for i, data in zip(idx, compress_all(view, idx), strict=True):
            page = bytes(view[i * ps : (i + 1) * ps])
            if len(data) < ps:
                if decode(data, ps) != page:
                    raise HvdumpError(
                        f"{codec.name}: page {i} of a batch does not decompress to itself"
                    )
                out[i] = (flag, data)
            else:
                out[i] = (0, page)
        return out

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
