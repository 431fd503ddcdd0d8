"""The text of ``/sys/kernel/release_region``: the map it shows and the requests it takes.

Reading the file gives one line (Linux's phyp_dump ``show_release_region``)::

    CPU:0xA-0xL: HPTE:0xA-0xL: DUMP:0xA-0xL, 0xS-0xN:

where each pair is an **address and a size** (not start-end): the CPU state,
HPTE and low-memory copies in the scratch area, then the rest of the reserved
memory. Writing ``ADDR SIZE`` (hex, parsed by the kernel with
``sscanf(buf, "%lx %lx", ...)``) releases a range.

:func:`parse_release_map` is strict: a tool that releases memory must not
guess what the kernel meant.
"""

from __future__ import annotations

from dataclasses import dataclass

from drgn_hvdump.errors import FormatError

__all__ = [
    "Extent",
    "ReleaseMap",
    "format_release_map",
    "format_release_request",
    "parse_release_map",
    "parse_release_request",
]

_U64_LIMIT = 1 << 64
_U64_MASK = _U64_LIMIT - 1
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, order=True)
class Extent:
    """A physical range given as start address and size in bytes."""

    addr: int
    size: int

    @property
    def end(self) -> int:
        """The first address past the range."""
        return self.addr + self.size

    def overlaps(self, other: Extent) -> bool:
        """Whether the two ranges share a byte (empty ranges share none)."""
        return self.addr < other.end and other.addr < self.end

    def __str__(self) -> str:
        return f"{self.addr:#x}+{self.size:#x}"


@dataclass(frozen=True)
class ReleaseMap:
    """What ``release_region`` shows: the three saved sections and the rest of the reservation."""

    cpu: Extent
    hpte: Extent
    dump: Extent
    reserved: Extent

    def extents(self) -> tuple[tuple[str, Extent], ...]:
        """The four extents with the names the kernel prints (the last as ``RESERVED``)."""
        return (
            ("CPU", self.cpu),
            ("HPTE", self.hpte),
            ("DUMP", self.dump),
            ("RESERVED", self.reserved),
        )


def format_release_map(m: ReleaseMap) -> str:
    """The line the kernel prints for ``m``, newline included."""
    return (
        f"CPU:0x{m.cpu.addr:x}-0x{m.cpu.size:x}: "
        f"HPTE:0x{m.hpte.addr:x}-0x{m.hpte.size:x}: "
        f"DUMP:0x{m.dump.addr:x}-0x{m.dump.size:x}, "
        f"0x{m.reserved.addr:x}-0x{m.reserved.size:x}:\n"
    )


class _Scanner:
    """A cursor over the text that reports the first character it did not expect."""

    def __init__(self, text: str, path: str | None) -> None:
        self.text = text
        self.pos = 0
        self.path = path

    def fail(self, expected: str, pos: int | None = None) -> FormatError:
        at = self.pos if pos is None else pos
        found = repr(self.text[at]) if at < len(self.text) else "end of text"
        return FormatError(
            f"release_region: column {at + 1}: expected {expected}, found {found}",
            path=self.path,
            offset=at,
        )

    def literal(self, word: str) -> None:
        for i, ch in enumerate(word):
            at = self.pos + i
            if at >= len(self.text) or self.text[at] != ch:
                raise self.fail(repr(word), at)
        self.pos += len(word)

    def number(self) -> int:
        self.literal("0x")
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _HEX:
            self.pos += 1
        if self.pos == start:
            raise self.fail("a hex digit")
        value = int(self.text[start : self.pos], 16)
        if value > _U64_MASK:
            raise FormatError(
                f"release_region: column {start + 1}: number 0x{value:x} does not fit in 64 bits",
                path=self.path,
                offset=start,
            )
        return value

    def extent(self) -> Extent:
        start = self.pos
        addr = self.number()
        self.literal("-")
        size = self.number()
        if addr + size > _U64_LIMIT:
            raise FormatError(
                f"release_region: column {start + 1}: range 0x{addr:x}+0x{size:x} "
                "runs past the end of the 64-bit address space",
                path=self.path,
                offset=start,
            )
        return Extent(addr, size)


_MAX_PAGE = 0x10000


def _kernel_sliver(name: str, reserved: Extent, section: Extent) -> bool:
    """Whether ``reserved`` runs less than a page into ``section`` from below.

    The kernel prints the reserved area's size minus the scratch size, and the
    scratch area starts at the reservation rounded down to a page, so the last
    pair legitimately ends up to a page (64 KiB at most on ppc64) inside the
    CPU section.
    """
    return (
        name == "RESERVED"
        and reserved.addr < section.addr
        and reserved.end - section.addr < _MAX_PAGE
    )


def parse_release_map(text: str | bytes, path: str | None = None) -> ReleaseMap:
    """Parse what reading ``release_region`` gave.

    Accepts exactly the kernel's line; also, as in the kernel's documentation
    example, upper-case hex digits and a missing final colon, and a missing
    final newline. Anything else, overlapping extents, and extents running past
    2**64 raise :class:`FormatError` naming the offset of the first bad character.
    """
    if isinstance(text, bytes | bytearray):
        # latin-1 maps every byte to one character, so offsets stay byte offsets
        # and any non-ASCII byte is simply a character the grammar rejects.
        text = bytes(text).decode("latin-1")
    s = _Scanner(text, path)
    found: list[tuple[str, int, Extent]] = []
    for name, before in (
        ("CPU", "CPU:"),
        ("HPTE", ": HPTE:"),
        ("DUMP", ": DUMP:"),
        ("RESERVED", ", "),
    ):
        s.literal(before)
        found.append((name, s.pos, s.extent()))
    if s.text.startswith(":", s.pos):
        s.pos += 1
    if s.text.startswith("\n", s.pos):
        s.pos += 1
    if s.pos != len(s.text):
        raise s.fail("':' then a newline and the end of the text")
    for i, (name_a, _, a) in enumerate(found):
        for name_b, at, b in found[i + 1 :]:
            if a.overlaps(b) and not _kernel_sliver(name_b, b, a):
                raise FormatError(
                    f"release_region: column {at + 1}: {name_b} {b} overlaps {name_a} {a}",
                    path=path,
                    offset=at,
                )
    return ReleaseMap(*(extent for _, _, extent in found))


def format_release_request(addr: int, size: int) -> str:
    """What to write to ``release_region`` to release ``size`` bytes at ``addr``."""
    if not (0 <= addr <= _U64_MASK and 0 <= size <= _U64_MASK):
        raise ValueError("release address and size must fit in 64 bits")
    return f"0x{addr:x} 0x{size:x}\n"


# Linux's isspace(): the C locale's six plus Latin-1 NBSP (lib/ctype.c marks 0xA0 _S).
_KERNEL_SPACE = frozenset(b" \t\n\v\f\r\xa0")
_KERNEL_XDIGIT = frozenset(b"0123456789abcdefABCDEF")


def parse_release_request(data: bytes, path: str | None = None) -> tuple[int, int]:
    """Parse a write to ``release_region`` as the kernel's ``sscanf(buf, "%lx %lx")`` does.

    Leading whitespace is skipped, each number may start with ``0x``/``0X``
    (after which no digit at all gives 0, as ``simple_strtoull`` does), any
    whitespace may separate the two, and whatever follows the second number
    is ignored. The string ends at the first NUL byte. Numbers longer than 64
    bits keep their low 64 bits: ``simple_strtoull`` multiplies in an
    ``unsigned long long`` and wraps the same way.

    Fewer than two numbers raises :class:`FormatError` (the kernel's EINVAL).
    """
    end = data.find(b"\0")
    if end < 0:
        end = len(data)
    values: list[int] = []
    pos = 0
    for index in range(2):
        if index:
            # The format's ' ' between the conversions; vsscanf stops at end of input.
            if pos >= end:
                break
            while pos < end and data[pos] in _KERNEL_SPACE:
                pos += 1
        while pos < end and data[pos] in _KERNEL_SPACE:
            pos += 1
        if pos >= end or data[pos] not in _KERNEL_XDIGIT:
            break
        if data[pos] == 0x30 and pos + 1 < end and data[pos + 1] in b"xX":
            pos += 2
        value = 0
        while pos < end and data[pos] in _KERNEL_XDIGIT:
            value = (value * 16 + int(chr(data[pos]), 16)) & _U64_MASK
            pos += 1
        values.append(value)
    if len(values) < 2:
        which = "an address" if not values else "a size after the address"
        raise FormatError(
            f"release request: expected {which} in hex",
            path=path,
            offset=min(pos, len(data)),
            hint="write 'ADDR SIZE' in hex; the kernel answers EINVAL",
        )
    return values[0], values[1]
