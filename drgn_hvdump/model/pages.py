"""Page rounding: the one definition of rounding an address or a range to pages.

``page_size`` is any positive page size (a power of two on every real
kernel, but nothing here needs that).
"""

from __future__ import annotations

__all__ = ["page_down", "page_span", "page_up"]


def page_down(x: int, page_size: int) -> int:
    """``x`` rounded down to a multiple of ``page_size`` (toward minus infinity)."""
    return x // page_size * page_size


def page_up(x: int, page_size: int) -> int:
    """``x`` rounded up to a multiple of ``page_size``."""
    return -(-x // page_size) * page_size


def page_span(start: int, end: int, page_size: int) -> tuple[int, int]:
    """The whole pages ``[start, end)`` touches: ``start`` rounded down, ``end`` up."""
    return page_down(start, page_size), page_up(end, page_size)
