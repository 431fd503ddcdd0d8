"""Scrubbing: zero the pages' bytes that hold named kernel data before they are stored.

A filter file names symbols and sizes, as makedumpfile's erase filter does::

    # comment
    erase SYMBOL size SIZE      (SIZE in bytes; K or M suffix)
    SYMBOL SIZE                 (the short form)

Symbols are looked up in the dump's VMCOREINFO (``SYMBOL(name)=address``);
the kernel's linear map gives the physical address. Every scrubbed range is
recorded in the manifest and in the kdump file's erase info.
"""

from __future__ import annotations

import mmap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drgn_hvdump.errors import FormatError, HvdumpError
from drgn_hvdump.formats.elfcore import PAGE_OFFSET_PPC64

__all__ = ["ScrubRange", "apply_scrub", "load_filter"]


@dataclass(frozen=True)
class ScrubRange:
    symbol: str
    vaddr: int
    paddr: int
    size: int

    def eraseinfo_line(self) -> str:
        return f"erase {self.symbol} size {self.size}\n"

    def to_json(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "vaddr": self.vaddr, "paddr": self.paddr, "size": self.size}


def _size(text: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:].upper(), 1)
    digits = text[:-1] if mult != 1 else text
    return int(digits, 0) * mult


def load_filter(path: Path, vmcoreinfo: Mapping[str, str], memory: int) -> list[ScrubRange]:
    """Parse the filter file; every symbol must be in VMCOREINFO and in RAM."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise HvdumpError(f"{path}: cannot read the scrub filter: {exc.strerror}") from None
    out = []
    offset = 0
    for lineno, line in enumerate(text.splitlines(keepends=True), 1):
        here = offset
        offset += len(line.encode())
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] == "erase" and len(words) == 4 and words[2] == "size":
            name, size_text = words[1], words[3]
        elif len(words) == 2:
            name, size_text = words
        else:
            raise FormatError(
                f"line {lineno}: expected 'erase SYMBOL size SIZE' or 'SYMBOL SIZE'",
                path=str(path),
                offset=here,
            )
        try:
            size = _size(size_text)
        except ValueError:
            raise FormatError(
                f"line {lineno}: bad size {size_text!r}", path=str(path), offset=here
            ) from None
        value = vmcoreinfo.get(f"SYMBOL({name})")
        if value is None:
            raise FormatError(
                f"line {lineno}: symbol {name!r} is not in the dump's VMCOREINFO",
                path=str(path),
                offset=here,
            )
        vaddr = int(value, 16)
        paddr = vaddr - PAGE_OFFSET_PPC64 if vaddr >= PAGE_OFFSET_PPC64 else vaddr
        if size <= 0 or paddr < 0 or paddr + size > memory:
            raise FormatError(
                f"line {lineno}: {name} at {paddr:#x}+{size:#x} is not in RAM",
                path=str(path),
                offset=here,
            )
        out.append(ScrubRange(name, vaddr, paddr, size))
    return out


def apply_scrub(buf: bytearray | mmap.mmap, paddr: int, ranges: list[ScrubRange]) -> int:
    """Zero the parts of ``buf`` (crashed memory at ``paddr``) that ``ranges`` cover."""
    zeroed = 0
    end = paddr + len(buf)
    for r in ranges:
        a, b = max(paddr, r.paddr), min(end, r.paddr + r.size)
        if a < b:
            buf[a - paddr : b - paddr] = bytes(b - a)
            zeroed += b - a
    return zeroed
