"""Pure-Python definition of hvdump's native hot loops.

:mod:`drgn_hvdump.native` has the same API backed by C (``native/hvnative.c``);
this module is the specification it is tested against, and it owns the
shared pieces: page sizes, buffer views and argument checks (the simulator's
page generator, :mod:`hvsim.pages_ref`, uses them too). It is 30 to 900 times
slower than the C: read it, test against it, do not run on it.

Definitions (all arithmetic on unsigned 64-bit integers, wrapping):

Hash
    :func:`hash64` is XXH64 (xxHash's 64-bit hash, as ``xxhsum -H1`` prints it;
    P1..P5 are its primes, ``_P1``.. ``_P5`` below):
    four lanes ``acc = rotl(acc + word * P2, 31) * P1`` over little-endian
    64-bit words of each 32-byte stripe, started at ``seed + P1 + P2``,
    ``seed + P2``, ``seed``, ``seed - P1``; merged as ``rotl(v1,1) + rotl(v2,7) +
    rotl(v3,12) + rotl(v4,18)`` then ``h = (h ^ round(0, v)) * P1 + P4`` for each
    lane (inputs under 32 bytes start from ``seed + P5`` instead); plus the
    length; the tail folded in 8-byte words ``h = rotl(h ^ round(0, w), 27) * P1 +
    P4``, one 4-byte word ``h = rotl(h ^ w * P1, 23) * P2 + P3`` and single bytes
    ``h = rotl(h ^ b * P5, 11) * P1``; finally ``h ^= h>>33; h *= P2; h ^= h>>29;
    h *= P3; h ^= h>>32``. :func:`page_hashes` is ``hash64(page, 0)`` per page.

Page codecs
    :class:`PageCodec` stores a batch of pages as a kdump-compressed file
    does: nothing for a zero page, the codec's form (a zlib stream, a raw
    LZO1X or snappy block, one zstd frame) when it is smaller than the page,
    else the page raw with flag 0. The C and this twin may choose different
    (equally valid) compressed bytes; what both must give is a batch that
    decodes to the pages, raw exactly when the compressed form is not
    smaller, and the same :func:`kdump_descs` for the same sizes and flags.
"""

from __future__ import annotations

import os
import struct
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drgn_hvdump.formats.hpte import (
    check_hpte_args,
    hpte_hash,
    hpte_hash_raw,
    vsid_scramble_256m,
)
from drgn_hvdump.formats.kdump import PAGE_DESC, PageDesc
from drgn_hvdump.formats.layout import ByteOrder, check_u64
from drgn_hvdump.model import page_types
from drgn_hvdump.model.page_types import StructPage

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "CODEC_LZO",
    "CODEC_NONE",
    "CODEC_SNAPPY",
    "CODEC_ZLIB",
    "CODEC_ZSTD",
    "MAX_PAGE_SIZE",
    "MIN_PAGE_SIZE",
    "PageBatch",
    "PageCodec",
    "buffer_address",
    "decide_pages",
    "dup_pages",
    "hash64",
    "hpte_hash",
    "hpte_hashes",
    "kdump_descs",
    "page_hashes",
    "vsid_scramble_256m",
    "write_pages",
    "zero_pages",
]

#: Page sizes accepted: powers of two in [MIN_PAGE_SIZE, MAX_PAGE_SIZE].
MIN_PAGE_SIZE = 512
MAX_PAGE_SIZE = 1 << 20

_MASK64 = (1 << 64) - 1


# ------------------------------------------------------------------ checks
# Used by drgn_hvdump.native and hvsim.pages too, so they refuse the same arguments.


def check_page_size(page_size: int) -> None:
    """Refuse page sizes that are not a power of two in [512, 1 MiB]."""
    if isinstance(page_size, bool) or not isinstance(page_size, int):
        raise TypeError(f"page_size must be an int, got {type(page_size).__name__}")
    if not (MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE and page_size & (page_size - 1) == 0):
        raise ValueError(
            f"page_size must be a power of two from {MIN_PAGE_SIZE} to {MAX_PAGE_SIZE} "
            f"(4096 or 65536 on POWER), got {page_size}"
        )


def check_pages(nbytes: int, page_size: int) -> int:
    """Check page_size and that nbytes is whole pages; return the page count."""
    check_page_size(page_size)
    if nbytes % page_size:
        raise ValueError(
            f"buffer length {nbytes} is not a multiple of page_size {page_size}; "
            f"pass whole pages (trim or pad to {nbytes // page_size * page_size} "
            f"or {(nbytes // page_size + 1) * page_size} bytes)"
        )
    return nbytes // page_size


@contextmanager
def byte_view(buf: Buffer, *, writable: bool = False) -> Iterator[memoryview]:
    """A flat, released-on-exit byte view of ``buf`` (so an mmap can be closed after)."""
    try:
        view = memoryview(buf)
    except TypeError:
        raise TypeError(
            f"expected a bytes-like object (bytes, bytearray, mmap, memoryview), "
            f"got {type(buf).__name__}"
        ) from None
    with view:
        if writable and view.readonly:
            raise TypeError(
                "buffer is read-only: pass a bytearray, a writable mmap or a memoryview of one"
            )
        if not view.c_contiguous:
            raise ValueError("buffer is not contiguous: pass bytes(buf) or a contiguous slice")
        with view.cast("B") as flat:
            yield flat


def hash_list(name: str, values: Sequence[int]) -> list[int]:
    """Check that values are u64 ints and return them as a list."""
    out = list(values)
    for value in out:
        check_u64(name, value)
    return out


# --------------------------------------------------------------- page kinds


def zero_pages(buf: Buffer, page_size: int) -> bytes:
    """One byte per page of ``buf``: 1 if the page is all zero bytes, else 0."""
    with byte_view(buf) as view:
        npages = check_pages(view.nbytes, page_size)
        zero = bytes(page_size)
        return bytes(int(view[i * page_size : (i + 1) * page_size] == zero) for i in range(npages))


def buffer_address(buf: Buffer) -> int:
    """Where the bytes of ``buf`` start in memory (O_DIRECT needs aligned buffers).

    Pure Python has no way to the address of a read-only buffer (a mapped
    file); cffi's ABI mode needs no compiled code, so both modules use this.
    """
    global _ffi
    if _ffi is None:
        import cffi  # type: ignore[import-untyped]

        _ffi = cffi.FFI()
    with byte_view(buf) as view:
        c_buf = _ffi.from_buffer("uint8_t[]", view)
        try:
            return int(_ffi.cast("uintptr_t", c_buf))
        finally:
            _ffi.release(c_buf)


_ffi: Any = None


def check_zero_flags(zero: bytes, npages: int) -> None:
    if len(zero) != npages:
        raise ValueError(f"{len(zero)} zero flags for {npages} pages")


def write_pages(fd: int, buf: Buffer, zero: bytes, page_size: int, offset: int) -> int:
    """Write the non-zero pages of ``buf`` to ``fd`` one after another from ``offset``;
    return the bytes written."""
    with byte_view(buf) as view:
        npages = check_pages(view.nbytes, page_size)
        check_zero_flags(zero, npages)
        check_u64("offset", offset)
        total = 0
        for i in range(npages):
            if zero[i]:
                continue
            page = view[i * page_size : (i + 1) * page_size]
            while page.nbytes:
                n = os.pwritev(fd, [page], offset + total)
                if n <= 0:
                    raise OSError(5, "write wrote nothing")
                page, total = page[n:], total + n
        return total


_P1 = 0x9E3779B185EBCA87
_P2 = 0xC2B2AE3D27D4EB4F
_P3 = 0x165667B19E3779F9
_P4 = 0x85EBCA77C2B2AE63
_P5 = 0x27D4EB2F165667C5


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _MASK64


def _round(acc: int, word: int) -> int:
    return (_rotl((acc + word * _P2) & _MASK64, 31) * _P1) & _MASK64


def _xxh64(data: bytes, seed: int) -> int:
    n = len(data)
    p = 0
    if n >= 32:
        v1 = (seed + _P1 + _P2) & _MASK64
        v2 = (seed + _P2) & _MASK64
        v3 = seed
        v4 = (seed - _P1) & _MASK64
        stripes = n // 32
        words = struct.unpack_from(f"<{4 * stripes}Q", data)
        for s in range(0, 4 * stripes, 4):
            v1 = _round(v1, words[s])
            v2 = _round(v2, words[s + 1])
            v3 = _round(v3, words[s + 2])
            v4 = _round(v4, words[s + 3])
        p = 32 * stripes
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _MASK64
        for v in (v1, v2, v3, v4):
            h = ((h ^ _round(0, v)) * _P1 + _P4) & _MASK64
    else:
        h = (seed + _P5) & _MASK64
    h = (h + n) & _MASK64
    while n - p >= 8:
        (word,) = struct.unpack_from("<Q", data, p)
        h = (_rotl(h ^ _round(0, word), 27) * _P1 + _P4) & _MASK64
        p += 8
    if n - p >= 4:
        (half,) = struct.unpack_from("<I", data, p)
        h = (_rotl(h ^ ((half * _P1) & _MASK64), 23) * _P2 + _P3) & _MASK64
        p += 4
    while p < n:
        h = (_rotl(h ^ ((data[p] * _P5) & _MASK64), 11) * _P1) & _MASK64
        p += 1
    h ^= h >> 33
    h = (h * _P2) & _MASK64
    h ^= h >> 29
    h = (h * _P3) & _MASK64
    return h ^ (h >> 32)


def hash64(buf: Buffer, seed: int = 0) -> int:
    """XXH64 of ``buf`` (any length) with ``seed``; see the module docstring."""
    check_u64("seed", seed)
    with byte_view(buf) as view:
        return _xxh64(view.tobytes(), seed)


def page_hashes(buf: Buffer, page_size: int) -> list[int]:
    """``hash64(page, 0)`` of each page of ``buf``."""
    with byte_view(buf) as view:
        npages = check_pages(view.nbytes, page_size)
        return [
            _xxh64(view[i * page_size : (i + 1) * page_size].tobytes(), 0) for i in range(npages)
        ]


def dup_pages(hashes: Sequence[int]) -> list[int]:
    """For each hash, the index of its first occurrence if that is earlier, else -1."""
    first: dict[int, int] = {}
    out: list[int] = []
    for i, h in enumerate(hash_list("hash", hashes)):
        j = first.setdefault(h, i)
        out.append(j if j != i else -1)
    return out


# -------------------------------------------------------- hash-MMU hashing


def hpte_hashes(vsids: Sequence[int], eas: Sequence[int], page_shift: int, ssize: int) -> list[int]:
    """``hpte_hash`` of each pair ``(vsids[i], eas[i])``."""
    check_hpte_args(page_shift, ssize)
    vs = hash_list("vsid", vsids)
    es = hash_list("ea", eas)
    if len(vs) != len(es):
        raise ValueError(f"vsids and eas must have the same length, got {len(vs)} and {len(es)}")
    return [hpte_hash_raw(v, e, page_shift, ssize) for v, e in zip(vs, es, strict=True)]


# ------------------------------------------------------------- page codecs

#: kdump page flags (``diskdump_mod.h``); NONE stores every page raw.
CODEC_NONE = 0
CODEC_ZLIB = 1
CODEC_LZO = 2
CODEC_SNAPPY = 4
CODEC_ZSTD = 32
_CODECS = (CODEC_NONE, CODEC_ZLIB, CODEC_LZO, CODEC_SNAPPY, CODEC_ZSTD)
_DEFAULT_LEVEL = {CODEC_ZLIB: 1, CODEC_ZSTD: 1}


@dataclass(frozen=True)
class PageBatch:
    """A batch of pages as a kdump file stores them.

    ``data`` holds the stored bytes of the non-zero pages one after another;
    ``sizes[i]`` is page i's stored length (0 for a zero page) and
    ``flags[i]`` its codec flag (0 when stored raw or zero).
    """

    data: bytes | memoryview
    sizes: array[int]
    flags: array[int]

    @property
    def stored(self) -> int:
        return len(self.data)


def check_codec(codec: int, level: int | None, page_size: int) -> int:
    """Refuse an unknown codec or page size; the level the codec will use."""
    if codec not in _CODECS:
        raise ValueError(f"unknown codec flag {codec!r}: one of {', '.join(map(str, _CODECS))}")
    check_page_size(page_size)
    if level is None:
        return _DEFAULT_LEVEL.get(codec, 0)
    if not isinstance(level, int) or isinstance(level, bool):
        raise ValueError(f"compression level must be an int, got {level!r}")
    if codec == CODEC_ZLIB and not 0 <= level <= 12:
        raise ValueError(f"zlib level {level} is outside 0..12")
    if codec == CODEC_ZSTD and not -7 <= level <= 22:
        raise ValueError(f"zstd level {level} is outside -7..22")
    return level


def check_batch(nbytes: int, zero: bytes, page_size: int, batch: PageBatch | None = None) -> int:
    """Check a batch buffer of ``nbytes`` against its zero flags (and the stored
    ``batch`` that claims to hold it); the page count."""
    npages = check_pages(nbytes, page_size)
    if len(zero) != npages:
        raise ValueError(f"{len(zero)} zero flags for a batch of {npages} pages")
    if batch is not None and not len(batch.sizes) == len(batch.flags) == npages:
        raise ValueError(f"the batch describes {len(batch.sizes)} pages, not {npages}")
    return npages


class PageCodec:
    """Compress and check batches of pages with one kdump codec (one per thread)."""

    def __init__(self, codec: int, level: int | None, page_size: int) -> None:
        self.level = check_codec(codec, level, page_size)
        self.codec = codec
        self.page_size = page_size
        self._compress, self._decode = _python_codec(codec, self.level, page_size)

    def compress(self, buf: Buffer, zero: bytes) -> PageBatch:
        """Store the pages of ``buf`` (``zero[i]`` set for an all-zero page)."""
        ps = self.page_size
        with byte_view(buf) as view:
            npages = check_batch(view.nbytes, zero, ps)
            sizes = array("I", bytes(4 * npages))
            flags = array("I", bytes(4 * npages))
            parts: list[bytes] = []
            for i in range(npages):
                if zero[i]:
                    continue
                page = bytes(view[i * ps : (i + 1) * ps])
                data = self._compress(page) if self.codec != CODEC_NONE else page
                if len(data) < ps:
                    parts.append(data)
                    sizes[i], flags[i] = len(data), self.codec
                else:
                    parts.append(page)
                    sizes[i] = ps
            return PageBatch(b"".join(parts), sizes, flags)

    def decode(self, data: Buffer, flag: int) -> bytes:
        """One stored page (compressed with codec ``flag``, this codec), decoded; ValueError
        if it does not decode to exactly one page."""
        with byte_view(data) as view:
            raw = bytes(view)
        page = None
        if flag == self.codec and flag != CODEC_NONE and len(raw) < self.page_size:
            try:
                page = self._decode(raw)
            except Exception:  # the library's own error: a corrupt block
                page = None
        if page is None or len(page) != self.page_size:
            raise ValueError(
                f"a page stored with codec {flag:#x} does not decode (codec {self.codec})"
            )
        return bytes(page)

    def check(self, buf: Buffer, zero: bytes, batch: PageBatch) -> int:
        """-1 if ``batch`` decodes to the pages of ``buf``, else the first page that does not."""
        ps = self.page_size
        with byte_view(buf) as view, byte_view(batch.data) as stored:
            npages = check_batch(view.nbytes, zero, ps, batch)
            pos = 0
            for i in range(npages):
                size, flag = batch.sizes[i], batch.flags[i]
                page = view[i * ps : (i + 1) * ps]
                if zero[i]:
                    if size or flag:
                        return i
                    continue
                data = bytes(stored[pos : pos + size])
                pos += size
                if flag == 0:
                    if size != ps or data != page:
                        return i
                    continue
                try:
                    if flag != self.codec or size >= ps or self._decode(data) != page:
                        return i
                except Exception:  # the library's own error: a corrupt block
                    return i
            return -1


def _python_codec(
    codec: int, level: int, page_size: int
) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    import zlib

    if codec == CODEC_NONE:
        return (lambda page: page), (lambda data: data)
    if codec == CODEC_ZLIB:
        return (lambda page: zlib.compress(page, min(level, 9))), (
            lambda data: zlib.decompress(data, bufsize=page_size)
        )
    if codec == CODEC_LZO:
        import lzallright

        lzo = lzallright.LZOCompressor()
        return lzo.compress, lambda data: lzo.decompress(data, output_size_hint=page_size)
    if codec == CODEC_SNAPPY:
        import cramjam

        return (lambda page: bytes(cramjam.snappy.compress_raw(page))), (
            lambda data: bytes(cramjam.snappy.decompress_raw(data))
        )
    import zstandard

    zc = zstandard.ZstdCompressor(level=level)
    zd = zstandard.ZstdDecompressor()
    return zc.compress, lambda data: zd.decompress(data, max_output_size=page_size)


def kdump_descs(
    batch: PageBatch, data_offset: int, zero_offset: int, page_size: int, big_endian: bool
) -> bytes:
    """The kdump page descriptors of ``batch`` when its data is stored at ``data_offset``.

    24 bytes per page, in the dump's byte order: (offset u64, size u32,
    flags u32, page_flags u64 = 0). A zero page points at the shared zero
    page at ``zero_offset`` (size ``page_size``, flags 0).
    """
    check_u64("data_offset", data_offset)
    check_u64("zero_offset", zero_offset)
    check_page_size(page_size)
    if len(batch.sizes) != len(batch.flags):
        raise ValueError("batch sizes and flags differ in length")
    order: ByteOrder = "big" if big_endian else "little"
    out = bytearray()
    pos = data_offset
    for size, flag in zip(batch.sizes, batch.flags, strict=True):
        if size == 0:
            desc = PageDesc(_signed64(zero_offset), page_size, 0, 0)
        else:
            desc = PageDesc(_signed64(pos & _MASK64), size, flag, 0)
            pos += size
        out += PAGE_DESC.pack(desc, order)
    return bytes(out)


def _signed64(value: int) -> int:
    # page_desc.offset is an off_t (signed); the C twin stores the same 64 bits.
    return value - (1 << 64) if value >= 1 << 63 else value


def decide_pages(
    sp: StructPage, raw: bytes | bytearray | memoryview, first_pfn: int, count: int, level: int
) -> list[tuple[int, int, str]]:
    """``(first pfn, end pfn, type)`` of the pages ``level`` leaves out among ``count``
    struct pages from ``first_pfn``: the rule itself is
    :func:`drgn_hvdump.model.page_types.decide_pages`, with the C twin's checks."""
    check_decide_args(sp, len(raw), first_pfn, count, level)
    return list(page_types.decide_pages(sp, memoryview(raw), first_pfn, count, level))


def check_decide_args(sp: StructPage, nbytes: int, first_pfn: int, count: int, level: int) -> None:
    """What both twins of :func:`decide_pages` refuse."""
    check_u64("first_pfn", first_pfn)
    if not 0 <= level <= 31:
        raise ValueError(f"dump level {level} is not 0 to 31")
    if count < 0 or nbytes < count * sp.size:
        raise ValueError(f"{count} struct pages need {count * sp.size} bytes, got {nbytes}")
