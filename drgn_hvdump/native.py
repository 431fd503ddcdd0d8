"""hvdump's hot loops in C: zero/duplicate page scans, hashes, page codecs, writes.

The same API as :mod:`drgn_hvdump.native_ref`, which defines every result and
owns the shared pieces (page sizes, batches, codec numbers); this module
re-exports those and runs the loops in ``drgn_hvdump._native``, the cffi build
of ``native/hvnative.c`` and ``native/hvcodec.c``. Arguments are checked here, in Python,
by the same checks as the twins; the C trusts them. The C calls release the
GIL, so threads can scan or compress different buffers in parallel.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from drgn_hvdump.formats.hpte import check_hpte_args
from drgn_hvdump.formats.layout import check_u64
from drgn_hvdump.model.page_types import EXCLUDED_TYPES, StructPage
from drgn_hvdump.native_ref import (
    CODEC_LZO,
    CODEC_NONE,
    CODEC_SNAPPY,
    CODEC_ZLIB,
    CODEC_ZSTD,
    MAX_PAGE_SIZE,
    MIN_PAGE_SIZE,
    PageBatch,
    buffer_address,
    byte_view,
    check_batch,
    check_codec,
    check_decide_args,
    check_page_size,
    check_pages,
    check_zero_flags,
    hash_list,
)

if TYPE_CHECKING:
    from typing_extensions import Buffer

try:
    from drgn_hvdump._native import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "drgn_hvdump._native (hvdump's C extension) is not built: reinstall with "
        "`pip install -e .` or build it in place with `python native/build_native.py`"
    ) from exc

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
    "borrowed",
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


@contextmanager
def borrowed(ffi_: Any, view: Any, *, writable: bool = False) -> Iterator[Any]:
    """``view``'s bytes as a cffi ``uint8_t[]`` of ``ffi_`` for a C call, let go after
    (so an mmap behind it can be closed); shared with :mod:`hvsim.pages`."""
    c_buf = ffi_.from_buffer("uint8_t[]", view, require_writable=writable)
    try:
        yield c_buf
    finally:
        ffi_.release(c_buf)


def write_pages(fd: int, buf: Buffer, zero: bytes, page_size: int, offset: int) -> int:
    """Write the non-zero pages of ``buf`` to ``fd`` one after another from ``offset``;
    return the bytes written.

    Runs of pages go out in one ``pwritev`` of up to 1024 runs, the GIL
    released: no Python object per run. A failed write raises
    :class:`OSError` with its errno; what was written before it stays written.
    """
    with byte_view(buf) as view:
        npages = check_pages(view.nbytes, page_size)
        check_zero_flags(zero, npages)
        check_u64("offset", offset)
        with borrowed(ffi, view) as c_buf:
            got = int(lib.hv_write_pages(fd, c_buf, npages, page_size, zero, offset))
    if got < 0:
        raise OSError(-got, os.strerror(-got))
    return got


def zero_pages(buf: Buffer, page_size: int) -> bytes:
    """One byte per page of ``buf``: 1 if the page is all zero bytes, else 0."""
    with byte_view(buf) as view:
        npages = check_pages(view.nbytes, page_size)
        if npages == 0:
            return b""
        out = ffi.new("uint8_t[]", npages)
        with borrowed(ffi, view) as c_buf:
            lib.hv_zero_pages(c_buf, npages, page_size, out)
        return bytes(ffi.buffer(out))


def hash64(buf: Buffer, seed: int = 0) -> int:
    """XXH64 of ``buf`` (any length) with ``seed``; see :mod:`drgn_hvdump.native_ref`."""
    check_u64("seed", seed)
    with byte_view(buf) as view, borrowed(ffi, view) as c_buf:
        return int(lib.hv_hash64(c_buf, view.nbytes, seed))


def page_hashes(buf: Buffer, page_size: int) -> list[int]:
    """``hash64(page, 0)`` of each page of ``buf``."""
    with byte_view(buf) as view:
        npages = check_pages(view.nbytes, page_size)
        if npages == 0:
            return []
        out = ffi.new("uint64_t[]", npages)
        with borrowed(ffi, view) as c_buf:
            lib.hv_page_hashes(c_buf, npages, page_size, out)
        return list(ffi.unpack(out, npages))


def _u64_array(name: str, values: Sequence[int]) -> array[int]:
    """values as a machine array of uint64 (array() converts twice as fast as ffi.new)."""
    try:
        return array("Q", values)
    except (OverflowError, TypeError):
        hash_list(name, values)  # raises the twin's TypeError or ValueError
        raise


def dup_pages(hashes: Sequence[int]) -> list[int]:
    """For each hash, the index of its first occurrence if that is earlier, else -1."""
    table = _u64_array("hash", hashes)
    n = len(table)
    if n == 0:
        return []
    out = array("q", bytes(8 * n))
    c_in = ffi.from_buffer("uint64_t[]", table)
    c_out = ffi.from_buffer("int64_t[]", out, require_writable=True)
    try:
        if lib.hv_dup_pages(c_in, n, c_out) != 0:
            raise MemoryError(f"dup_pages: no memory for a hash table of {n} pages")
    finally:
        ffi.release(c_in)
        ffi.release(c_out)
    return out.tolist()


def vsid_scramble_256m(proto_vsid: int) -> int:
    """``proto_vsid * 200730139 mod (2**36 - 1)``: the kernel's VSID for 256 MiB segments."""
    check_u64("proto_vsid", proto_vsid)
    return int(lib.hv_vsid_scramble_256m(proto_vsid))


def hpte_hash(vsid: int, ea: int, page_shift: int, ssize: int) -> int:
    """Primary hash-table hash (39 bits) of ``ea`` in segment ``vsid``; see the twin."""
    check_u64("vsid", vsid)
    check_u64("ea", ea)
    check_hpte_args(page_shift, ssize)
    return int(lib.hv_hpte_hash(vsid, ea, page_shift, ssize))


def hpte_hashes(vsids: Sequence[int], eas: Sequence[int], page_shift: int, ssize: int) -> list[int]:
    """``hpte_hash`` of each pair ``(vsids[i], eas[i])``."""
    check_hpte_args(page_shift, ssize)
    c_vsids = _u64_array("vsid", vsids)
    c_eas = _u64_array("ea", eas)
    n = len(c_vsids)
    if n != len(c_eas):
        raise ValueError(f"vsids and eas must have the same length, got {n} and {len(c_eas)}")
    if n == 0:
        return []
    out = array("Q", bytes(8 * n))
    c_v = ffi.from_buffer("uint64_t[]", c_vsids)
    c_e = ffi.from_buffer("uint64_t[]", c_eas)
    c_out = ffi.from_buffer("uint64_t[]", out, require_writable=True)
    try:
        lib.hv_hpte_hashes(c_v, c_e, n, page_shift, ssize, c_out)
    finally:
        for c in (c_v, c_e, c_out):
            ffi.release(c)
    return out.tolist()


_uncleared = ffi.new_allocator(should_clear_after_alloc=False)


class PageCodec:
    """Compress and check batches of pages with one kdump codec, in C (one per thread).

    One call covers a whole batch with the GIL released, so compressor
    threads run in parallel and per-page Python work disappears (it cost
    about a second per 4 GiB of 4 KiB pages).
    """

    def __init__(self, codec: int, level: int | None, page_size: int) -> None:
        self.level = check_codec(codec, level, page_size)
        self.codec = codec
        self.page_size = page_size
        handle = lib.hv_codec_new(codec, self.level, page_size)
        if handle == ffi.NULL:
            raise MemoryError(f"cannot set up codec {codec} for {page_size}-byte pages")
        self._c = ffi.gc(handle, lib.hv_codec_free)
        self._slack = int(lib.hv_codec_slack(handle))

    def compress(self, buf: Buffer, zero: bytes) -> PageBatch:
        """Store the pages of ``buf`` (``zero[i]`` set for an all-zero page)."""
        ps = self.page_size
        with byte_view(buf) as view:
            npages = check_batch(view.nbytes, zero, ps)
            nonzero = npages - sum(zero)
            # Not zeroed, and from the heap: a fresh zeroed 4 MiB per batch
            # cost a memset and 1024 page faults on the compressor's thread.
            out = ffi.buffer(_uncleared("uint8_t[]", nonzero * ps + self._slack))
            sizes = array("I", bytes(4 * npages))
            flags = array("I", bytes(4 * npages))
            c_in = ffi.from_buffer("uint8_t[]", view)
            c_out = ffi.from_buffer("uint8_t[]", out, require_writable=True)
            c_sizes = ffi.from_buffer("uint32_t[]", sizes, require_writable=True)
            c_flags = ffi.from_buffer("uint32_t[]", flags, require_writable=True)
            try:
                n = lib.hv_compress_pages(self._c, c_in, npages, zero, c_out, c_sizes, c_flags)
            finally:
                for c in (c_in, c_out, c_sizes, c_flags):
                    ffi.release(c)
            if n < 0:
                raise RuntimeError(f"codec {self.codec}: the compression library failed")
            return PageBatch(memoryview(out)[:n], sizes, flags)

    def decode(self, data: Buffer, flag: int) -> bytes:
        """One stored page (compressed with codec ``flag``, this codec), decoded; ValueError
        if it does not decode to exactly one page."""
        out = bytearray(self.page_size)
        with byte_view(data) as view:
            c_in = ffi.from_buffer("uint8_t[]", view)
            c_out = ffi.from_buffer("uint8_t[]", out, require_writable=True)
            try:
                rc = lib.hv_decode_page(self._c, c_in, view.nbytes, flag, c_out)
            finally:
                ffi.release(c_in)
                ffi.release(c_out)
        if rc:
            raise ValueError(
                f"a page stored with codec {flag:#x} does not decode (codec {self.codec})"
            )
        return bytes(out)

    def check(self, buf: Buffer, zero: bytes, batch: PageBatch) -> int:
        """-1 if ``batch`` decodes to the pages of ``buf``, else the first page that does not."""
        ps = self.page_size
        with byte_view(buf) as view, byte_view(batch.data) as stored:
            npages = check_batch(view.nbytes, zero, ps, batch)
            if sum(batch.sizes) > stored.nbytes:
                return _first_short(batch, stored.nbytes)
            c_in = ffi.from_buffer("uint8_t[]", view)
            c_st = ffi.from_buffer("uint8_t[]", stored)
            c_sizes = ffi.from_buffer("uint32_t[]", batch.sizes)
            c_flags = ffi.from_buffer("uint32_t[]", batch.flags)
            try:
                return int(lib.hv_check_pages(self._c, c_in, npages, zero, c_st, c_sizes, c_flags))
            finally:
                for c in (c_in, c_st, c_sizes, c_flags):
                    ffi.release(c)


def _first_short(batch: PageBatch, have: int) -> int:
    """The first page whose stored bytes run past the ``have`` bytes there are."""
    pos = 0
    for i, size in enumerate(batch.sizes):
        pos += size
        if pos > have:
            return i
    return -1


def kdump_descs(
    batch: PageBatch, data_offset: int, zero_offset: int, page_size: int, big_endian: bool
) -> bytes:
    """The kdump page descriptors of ``batch`` when its data is stored at ``data_offset``."""
    check_u64("data_offset", data_offset)
    check_u64("zero_offset", zero_offset)
    check_page_size(page_size)
    n = len(batch.sizes)
    if len(batch.flags) != n:
        raise ValueError("batch sizes and flags differ in length")
    out = bytearray(24 * n)
    c_sizes = ffi.from_buffer("uint32_t[]", batch.sizes)
    c_flags = ffi.from_buffer("uint32_t[]", batch.flags)
    c_out = ffi.from_buffer("uint8_t[]", out, require_writable=True)
    try:
        lib.hv_kdump_descs(
            n, c_sizes, c_flags, data_offset, zero_offset, page_size, int(bool(big_endian)), c_out
        )
    finally:
        for c in (c_sizes, c_flags, c_out):
            ffi.release(c)
    return bytes(out)


def _opt(value: int | None) -> int:
    return -1 if value is None else value


def _page_layout(sp: StructPage) -> Any:
    """The C description of ``sp`` (``hv_page_layout``), built once per layout."""
    cached = _LAYOUTS.get(sp)
    if cached is not None:
        return cached
    L = ffi.new("hv_page_layout *")
    L.size = sp.size
    L.big_endian = int(sp.byteorder == "big")
    for name in ("flags", "refcount", "mapping", "mapcount", "compound_head"):
        setattr(L, name, _opt(getattr(sp, name)))
    L.private_ = _opt(sp.private)
    for name in ("pg_lru", "pg_private", "pg_swapcache", "pg_swapbacked", "pg_slab"):
        setattr(L, name, _opt(getattr(sp, name)))
    L.pg_hwpoison, L.pg_hugetlb, L.pg_buddy = (
        _opt(sp.pg_hwpoison), _opt(sp.pg_hugetlb), _opt(sp.pg_buddy)
    )  # fmt: skip
    L.pg_head_mask = sp.pg_head_mask
    for short, value in (
        ("buddy", sp.buddy_mapcount),
        ("slab", sp.slab_mapcount),
        ("offline", sp.offline_mapcount),
        ("hugetlb", sp.hugetlb_mapcount),
        ("unaccepted", sp.unaccepted_mapcount),
    ):
        setattr(L, f"has_{short}_mc", int(value is not None))
        # page_type values are compared as the kernel's 32-bit int.
        setattr(
            L, f"{short}_mc", 0 if value is None else (value + (1 << 31)) % (1 << 32) - (1 << 31)
        )
    L.free_area_length = _opt(sp.free_area_length)
    L.knows_buddies = int(sp.knows_buddies)
    L.order_off, L.order_size = sp.compound_order or (-1, 0)
    L.dtor_off, L.dtor_size = sp.compound_dtor or (-1, 0)
    dtors = sp.hugetlb_dtors[:2]
    L.ndtors = len(dtors)
    for i, d in enumerate(dtors):
        L.dtors[i] = d
    _LAYOUTS[sp] = L
    return L


_LAYOUTS: dict[StructPage, Any] = {}


def decide_pages(
    sp: StructPage, raw: Buffer, first_pfn: int, count: int, level: int
) -> list[tuple[int, int, str]]:
    """:func:`drgn_hvdump.model.page_types.decide_pages` in C (the same results, as a list)."""
    with byte_view(raw) as view:
        check_decide_args(sp, view.nbytes, first_pfn, count, level)
        if count == 0:
            return []
        starts = ffi.new("uint64_t[]", count)
        ends = ffi.new("uint64_t[]", count)
        types = ffi.new("uint8_t[]", count)
        with borrowed(ffi, view) as c_raw:
            n = lib.hv_decide_pages(
                c_raw, count, first_pfn, _page_layout(sp), level, starts, ends, types
            )
    return [(starts[i], ends[i], EXCLUDED_TYPES[types[i] - 1]) for i in range(n)]
