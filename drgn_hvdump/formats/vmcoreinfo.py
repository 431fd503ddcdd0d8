"""The kernel's VMCOREINFO text: ``KEY=value`` lines describing the crashed kernel.

It travels as the descriptor of an ELF note named ``VMCOREINFO`` (type 0).
Values are printed by the kernel as ``SYMBOL(x)=%lx`` (hex without ``0x``),
``SIZE(x)``, ``OFFSET(s.f)``, ``LENGTH(x)`` (decimal), and ``NUMBER(x)``
(decimal, a few in hex with ``0x``). 2.6.2x kernels append ``CRASHTIME=``
without a final newline, and the note is padded with NULs, so both are
accepted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from drgn_hvdump.errors import FormatError

__all__ = [
    "VMCOREINFO_NOTE_NAME",
    "VMCOREINFO_NOTE_TYPE",
    "build_vmcoreinfo",
    "parse_vmcoreinfo",
    "vmcoreinfo_length",
    "vmcoreinfo_number",
    "vmcoreinfo_offset",
    "vmcoreinfo_size",
    "vmcoreinfo_symbol",
]

VMCOREINFO_NOTE_NAME = "VMCOREINFO"
VMCOREINFO_NOTE_TYPE = 0

_PRINTABLE = re.compile(rb"[\x20-\x7e]*")
_DECIMAL = re.compile(r"[0-9]+")
_SIGNED = re.compile(r"-?[0-9]+|0[xX][0-9a-fA-F]+")
_HEX = re.compile(r"[0-9a-fA-F]+")


def parse_vmcoreinfo(
    data: bytes | bytearray | memoryview, path: str | None = None, offset: int = 0
) -> dict[str, str]:
    """Parse VMCOREINFO text; errors name the offset (``offset`` + position in ``data``).

    Every line must be printable ASCII with a non-empty key before ``=``.
    Trailing NULs are padding. A repeated key keeps its last value, as the
    kernel's readers (makedumpfile, drgn) do.
    """
    data = bytes(data)
    end = len(data.rstrip(b"\0"))
    result: dict[str, str] = {}
    pos = 0
    while pos < end:
        nl = data.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl
        line = data[pos:line_end]
        printable = _PRINTABLE.match(line)
        assert printable is not None
        if printable.end() != len(line):
            bad = pos + printable.end()
            raise FormatError(
                f"VMCOREINFO: byte {data[bad]:#04x} is not printable ASCII",
                path=path,
                offset=offset + bad,
            )
        eq = line.find(b"=")
        if eq <= 0:
            raise FormatError(
                "VMCOREINFO: expected KEY=value" + (" (empty key)" if eq == 0 else ""),
                path=path,
                offset=offset + pos,
            )
        result[line[:eq].decode("ascii")] = line[eq + 1 :].decode("ascii")
        pos = line_end + 1
    return result


def build_vmcoreinfo(entries: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
    """VMCOREINFO text for ``entries``, one ``KEY=value`` line each (no NUL)."""
    items = entries.items() if isinstance(entries, Mapping) else entries
    out: list[str] = []
    for key, value in items:
        for part, what in ((key, "key"), (value, "value")):
            if not (part.isascii() and part.isprintable()):
                raise ValueError(f"VMCOREINFO {what} {part!r} is not printable ASCII")
        if not key or "=" in key:
            raise ValueError(f"VMCOREINFO key {key!r} is empty or holds '='")
        out.append(f"{key}={value}\n")
    return "".join(out).encode("ascii")


def _lookup(
    info: Mapping[str, str], key: str, pattern: re.Pattern[str], base: int, path: str | None
) -> int | None:
    value = info.get(key)
    if value is None:
        return None
    if pattern.fullmatch(value) is None:
        raise FormatError(f"VMCOREINFO: {key}={value!r} is not a number", path=path)
    if value[:2] in ("0x", "0X"):
        return int(value[2:], 16)
    return int(value, base)


def vmcoreinfo_symbol(info: Mapping[str, str], name: str, path: str | None = None) -> int | None:
    """The address in ``SYMBOL(name)`` (hex without ``0x``), or None."""
    return _lookup(info, f"SYMBOL({name})", _HEX, 16, path)


def vmcoreinfo_size(info: Mapping[str, str], name: str, path: str | None = None) -> int | None:
    """``SIZE(name)`` (decimal), or None."""
    return _lookup(info, f"SIZE({name})", _DECIMAL, 10, path)


def vmcoreinfo_offset(info: Mapping[str, str], member: str, path: str | None = None) -> int | None:
    """``OFFSET(struct.member)`` (decimal), or None."""
    return _lookup(info, f"OFFSET({member})", _DECIMAL, 10, path)


def vmcoreinfo_length(info: Mapping[str, str], name: str, path: str | None = None) -> int | None:
    """``LENGTH(name)`` (decimal), or None."""
    return _lookup(info, f"LENGTH({name})", _DECIMAL, 10, path)


def vmcoreinfo_number(info: Mapping[str, str], name: str, path: str | None = None) -> int | None:
    """``NUMBER(name)``: signed decimal, or hex with ``0x``; or None."""
    return _lookup(info, f"NUMBER({name})", _SIGNED, 10, path)
