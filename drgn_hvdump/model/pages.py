"""Page rounding: the one definition of rounding an address or a range to pages.

``page_size`` is any positive page size (a power of two on every real
kernel, but nothing here needs that). Which page sizes a kernel can have, and
reading one from VMCOREINFO's ``PAGESIZE``, is :func:`kernel_page_size`.
"""

from __future__ import annotations

__all__ = [
    "MAX_PAGE_SIZE",
    "MIN_PAGE_SIZE",
    "kernel_page_size",
    "page_down",
    "page_span",
    "page_up",
]

MIN_PAGE_SIZE = 4096
MAX_PAGE_SIZE = 1 << 20


def page_down(x: int, page_size: int) -> int:
    """``x`` rounded down to a multiple of ``page_size`` (toward minus infinity)."""
    return x // page_size * page_size


def page_up(x: int, page_size: int) -> int:
    """``x`` rounded up to a multiple of ``page_size``."""
    return -(-x // page_size) * page_size


def page_span(start: int, end: int, page_size: int) -> tuple[int, int]:
    """The whole pages ``[start, end)`` touches: ``start`` rounded down, ``end`` up."""
    return page_down(start, page_size), page_up(end, page_size)


def kernel_page_size(value: str | int | None) -> int | None:
    """A page size a kernel can have (a power of two from 4 KiB to 1 MiB), from an
    integer or VMCOREINFO's ``PAGESIZE`` text; None for anything else or nothing.
    Callers decide what a missing one means: nothing assumes 64 KiB."""
    if isinstance(value, str):
        if not value.isdigit() or len(value) > 8:
            return None
        value = int(value)
    if value is None or isinstance(value, bool):
        return None
    ok = MIN_PAGE_SIZE <= value <= MAX_PAGE_SIZE and value & (value - 1) == 0
    return value if ok else None
