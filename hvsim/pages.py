"""The simulator's page generator in C: what each page of a simulated LPAR's memory holds.

The same API as :mod:`hvsim.pages_ref`, which defines every result and owns
the shared pieces (page kinds, :class:`PageMix`, :data:`BUSY_MIX`, the
argument checks); this module re-exports those and generates pages in
``hvsim._gen``, the cffi build of ``native/hvgen.c``. Arguments are checked
here, in Python, by the same checks as the twin; the C trusts them and
releases the GIL, so threads can generate different buffers in parallel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from drgn_hvdump.formats.layout import check_u64
from drgn_hvdump.native import borrowed
from drgn_hvdump.native_ref import byte_view, check_page_size
from hvsim.pages_ref import (
    BUSY_MIX,
    PAGE_KIND_NAMES,
    PAGE_POINTER,
    PAGE_RANDOM,
    PAGE_TEXT,
    PAGE_ZERO,
    PageMix,
    PageMixError,
    check_gen_args,
    check_kind,
    check_mix,
)

if TYPE_CHECKING:
    from typing_extensions import Buffer

try:
    from hvsim._gen import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "hvsim._gen (the simulator's C page generator) is not built: reinstall with "
        "`pip install -e .` or build it in place with `python native/build_native.py`"
    ) from exc

__all__ = [
    "BUSY_MIX",
    "PAGE_KIND_NAMES",
    "PAGE_POINTER",
    "PAGE_RANDOM",
    "PAGE_TEXT",
    "PAGE_ZERO",
    "PageMix",
    "PageMixError",
    "gen_page",
    "gen_pages_into",
    "page_kind",
]


def page_kind(seed: int, pfn: int, mix: PageMix) -> int:
    """The kind of page ``pfn`` in memory generated from ``seed`` with ``mix``."""
    check_u64("seed", seed)
    check_u64("pfn", pfn)
    check_mix(mix)
    return int(lib.hv_page_kind(seed, pfn, *mix.thresholds()))


def gen_page(seed: int, pfn: int, kind: int, page_size: int, big_endian: bool) -> bytes:
    """The content of page ``pfn`` as a page of ``kind`` (whatever the mix says)."""
    check_u64("seed", seed)
    check_u64("pfn", pfn)
    check_kind(kind)
    check_page_size(page_size)
    out = ffi.new("uint8_t[]", page_size)
    lib.hv_gen_page(out, seed, pfn, kind, page_size, int(bool(big_endian)))
    return bytes(ffi.buffer(out))


def gen_pages_into(
    buf: Buffer,
    seed: int,
    pfn: int,
    npages: int,
    page_size: int,
    mix: PageMix,
    big_endian: bool,
) -> None:
    """Fill ``buf`` (exactly ``npages * page_size`` writable bytes) with pages pfn, pfn+1, ..."""
    with byte_view(buf, writable=True) as view:
        check_gen_args(view.nbytes, seed, pfn, npages, page_size, mix)
        if npages == 0:
            return
        with borrowed(ffi, view, writable=True) as c_buf:
            lib.hv_gen_pages(
                c_buf, seed, pfn, npages, page_size, *mix.thresholds(), int(bool(big_endian))
            )
