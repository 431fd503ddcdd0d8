"""Sizes as people write them (``4G``, ``512M``, ``0x10000``) and as we print them."""

from __future__ import annotations

import re

__all__ = ["format_size", "parse_size"]

_SIZE_RE = re.compile(r"\s*(0[xX][0-9a-fA-F]+|[0-9]+)\s*([kKmMgGtTpP]?)(?:i?[bB])?\s*")
_SHIFTS = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50}


def parse_size(text: str | int) -> int:
    """Read a size like the kernel's ``memparse``: ``4G``, ``512M``, ``64K``, ``1T``, ``0x1000``.

    Suffixes are binary (K = 1024); ``KiB``/``GB`` spellings are accepted too.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"size must not be negative, got {text}")
        return text
    if not isinstance(text, str):
        raise ValueError(f"size must be a number like 4G or 512M, got {text!r}")
    if text.strip().startswith("-"):
        raise ValueError(f"size must not be negative, got {text}")
    m = _SIZE_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"size {text!r} is not a number with an optional K/M/G/T suffix (e.g. 4G)")
    number, suffix = m.groups()
    value = int(number, 16) if number[:2] in ("0x", "0X") else int(number)
    return value << _SHIFTS[suffix.lower()]


def format_size(n: int) -> str:
    """``n`` bytes in the largest binary unit that divides it exactly (``4G``, ``64K``, ``4100``)."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)
