"""Pure-Python definition of the simulator's page generator: what memory hvsim makes.

:mod:`hvsim.pages` has the same API backed by C (``native/hvgen.c``, built
into ``hvsim._gen``); this module is the specification it is tested against
and owns the shared pieces: the page-kind constants, :class:`PageMix`,
:data:`BUSY_MIX` and the argument checks. Memory content is a function of
the seed, so an LPAR of any size costs no disk. Read it, test against it, do
not run on it.

Definitions (all arithmetic on unsigned 64-bit integers, wrapping):

``mix64(z)``
    the splitmix64 finaliser: ``z = (z ^ z>>30) * 0xBF58476D1CE4E5B9;
    z = (z ^ z>>27) * 0x94D049BB133111EB; z ^ z>>31``.

Page kind
    ``r = mix64(mix64(seed ^ 0x243F6A8885A308D3) + pfn) >> 48`` (16 bits); with
    the mix's cumulative thresholds ``t0 <= t1 <= t2`` out of 65536
    (:meth:`PageMix.thresholds`) the kind is ZERO if ``r < t0``, TEXT if
    ``r < t1``, POINTER if ``r < t2``, else RANDOM.

Page content
    A page's generator starts at ``state = mix64(mix64(seed ^ 0x13198A2E03707344)
    + pfn)``; each draw is wyrand: ``state += 0xA0761D6478BD642F; t = state *
    (state ^ 0xE7037ED1A0B428DB)`` as a 128-bit product, drawing ``hi64(t) ^ lo64(t)``.
    ZERO: zero bytes. TEXT: one draw per 64-byte line, seven 8-byte words
    ``_TEXT_WORDS[(r >> 6k) & 63]`` then the ending ``_TEXT_ENDS[(r >> 42) & 7]``.
    RANDOM: each draw stored little-endian (random pages do not depend on
    byte order). POINTER: 64-bit words in the kernel's byte order, mostly
    linear-map pointers ``0xC000...`` plus zeros, small ints and list_heads,
    see :func:`_gen_pointer`; only POINTER pages depend on ``big_endian``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.formats.layout import check_u64
from drgn_hvdump.native_ref import byte_view, check_page_size

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "BUSY_MIX",
    "PAGE_KIND_NAMES",
    "PAGE_POINTER",
    "PAGE_RANDOM",
    "PAGE_TEXT",
    "PAGE_ZERO",
    "PageMix",
    "PageMixError",
    "check_gen_args",
    "check_kind",
    "check_mix",
    "gen_page",
    "gen_pages_into",
    "page_kind",
]

PAGE_ZERO = 0
PAGE_TEXT = 1
PAGE_POINTER = 2
PAGE_RANDOM = 3
#: Names of the kinds, indexed by kind; also :class:`PageMix`'s field names.
PAGE_KIND_NAMES: tuple[str, str, str, str] = ("zero", "text", "pointer", "random")

_MASK64 = (1 << 64) - 1
_KIND_SALT = 0x243F6A8885A308D3
_CONTENT_SALT = 0x13198A2E03707344
_WY_ADD = 0xA0761D6478BD642F
_WY_XOR = 0xE7037ED1A0B428DB
_KERNEL_BASE = 0xC000000000000000
_ADDR_MASK = 0x0FFFFFFFFFFFFFFF
_MIX_TOLERANCE = 1e-6
_MIX_EXAMPLE = "zero=0.22,text=0.3,pointer=0.33,random=0.15"


class PageMixError(HvdumpError, ValueError):
    """A page mix that is malformed or does not add up (a user-facing ``ValueError``)."""


@dataclass(frozen=True)
class PageMix:
    """Shares of zero, text, pointer and random pages in simulated memory.

    Each share is in [0, 1] and they sum to 1 (within 1e-6). ``str(mix)`` is
    the text form :meth:`parse` reads, e.g. ``zero=0.22,text=0.3,pointer=0.33,random=0.15``.
    """

    zero: float
    text: float
    pointer: float
    random: float

    def __post_init__(self) -> None:
        for name in PAGE_KIND_NAMES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise PageMixError(f"page mix: {name} share must be a number, got {value!r}")
            if not 0.0 <= value <= 1.0:  # also refuses NaN
                raise PageMixError(
                    f"page mix: {name} share {value!r} is outside [0, 1]; give a fraction such as 0.25"
                )
            object.__setattr__(self, name, float(value))
        total = self.zero + self.text + self.pointer + self.random
        if abs(total - 1.0) > _MIX_TOLERANCE:
            raise PageMixError(
                f"page mix: shares sum to {total:.9g}, not 1; adjust them so that "
                "zero + text + pointer + random = 1"
            )

    @classmethod
    def parse(cls, text: str) -> PageMix:
        """Read ``"zero=Z,text=T,pointer=P,random=R"``; kinds left out get 0."""
        if not isinstance(text, str):
            raise PageMixError(f"page mix must be text like {_MIX_EXAMPLE!r}, got {text!r}")
        shares = dict.fromkeys(PAGE_KIND_NAMES, 0.0)
        seen: set[str] = set()
        if not text.strip():
            raise PageMixError(f"page mix is empty; give shares like {_MIX_EXAMPLE!r}")
        for item in text.split(","):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep:
                raise PageMixError(
                    f"page mix {text!r}: {item.strip()!r} is not KIND=SHARE; "
                    f"write it like {_MIX_EXAMPLE!r}"
                )
            if key not in shares:
                raise PageMixError(
                    f"page mix {text!r}: unknown page kind {key!r}; "
                    f"the kinds are {', '.join(PAGE_KIND_NAMES)}"
                )
            if key in seen:
                raise PageMixError(f"page mix {text!r}: {key} is given twice")
            seen.add(key)
            try:
                share = float(value.strip())
            except ValueError:
                raise PageMixError(
                    f"page mix {text!r}: {key} share {value.strip()!r} is not a number"
                ) from None
            if not math.isfinite(share):
                raise PageMixError(f"page mix {text!r}: {key} share must be finite")
            shares[key] = share
        try:
            return cls(**shares)
        except PageMixError as exc:
            raise PageMixError(
                f"page mix {text!r}: {str(exc).removeprefix('page mix: ')}"
            ) from None

    def __str__(self) -> str:
        return ",".join(f"{name}={getattr(self, name)!r}" for name in PAGE_KIND_NAMES)

    def thresholds(self) -> tuple[int, int, int]:
        """Cumulative shares of zero, zero+text and zero+text+pointer, out of 65536."""
        c0 = self.zero
        c1 = c0 + self.text
        c2 = c1 + self.pointer
        t0, t1, t2 = (min(65536, max(0, round(c * 65536))) for c in (c0, c1, c2))
        return t0, t1, t2


#: A busy production system: about a fifth of memory free (zero), the rest
#: page cache text, kernel data structures and incompressible user data. See
#: docs/benchmarks.md for how it compresses.
BUSY_MIX = PageMix(zero=0.22, text=0.30, pointer=0.33, random=0.15)


def check_kind(kind: int) -> None:
    """Refuse a page kind other than PAGE_ZERO..PAGE_RANDOM."""
    if isinstance(kind, bool) or not isinstance(kind, int):
        raise TypeError(f"kind must be an int, got {type(kind).__name__}")
    if kind not in (PAGE_ZERO, PAGE_TEXT, PAGE_POINTER, PAGE_RANDOM):
        raise ValueError(f"kind must be one of PAGE_ZERO..PAGE_RANDOM (0..3), got {kind}")


def check_mix(mix: PageMix) -> None:
    """Refuse anything but a PageMix."""
    if not isinstance(mix, PageMix):
        raise TypeError(f"mix must be a PageMix (see PageMix.parse), got {type(mix).__name__}")


def check_gen_args(
    nbytes: int, seed: int, pfn: int, npages: int, page_size: int, mix: PageMix
) -> None:
    """Check gen_pages_into's arguments against a buffer of nbytes."""
    check_u64("seed", seed)
    check_u64("pfn", pfn)
    check_page_size(page_size)
    check_mix(mix)
    if isinstance(npages, bool) or not isinstance(npages, int):
        raise TypeError(f"npages must be an int, got {type(npages).__name__}")
    if npages < 0 or pfn + npages > _MASK64 + 1:
        raise ValueError(f"npages must be >= 0 with pfn + npages <= 2**64, got {npages}")
    if nbytes != npages * page_size:
        raise ValueError(
            f"buffer is {nbytes} bytes but {npages} pages of {page_size} bytes need "
            f"{npages * page_size}; pass a buffer (or memoryview slice) of exactly that size"
        )


def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _kind_of(kind_key: int, pfn: int, thresholds: tuple[int, int, int]) -> int:
    r = _mix64((kind_key + pfn) & _MASK64) >> 48
    t0, t1, t2 = thresholds
    if r < t0:
        return PAGE_ZERO
    if r < t1:
        return PAGE_TEXT
    if r < t2:
        return PAGE_POINTER
    return PAGE_RANDOM


def page_kind(seed: int, pfn: int, mix: PageMix) -> int:
    """The kind of page ``pfn`` in memory generated from ``seed`` with ``mix``."""
    check_u64("seed", seed)
    check_u64("pfn", pfn)
    check_mix(mix)
    return _kind_of(_mix64(seed ^ _KIND_SALT), pfn, mix.thresholds())


# ------------------------------------------------------------- page content


def _words(*tokens: str) -> tuple[bytes, ...]:
    out = tuple(t.encode("ascii") for t in tokens)
    if any(len(t) != 8 for t in out):
        raise AssertionError("text tokens must be 8 bytes each")
    return out


# The same tables, in the same order, as TEXT_WORDS and TEXT_ENDS in hvnative.c.
_TEXT_WORDS = _words(
    "kernel: ", "systemd:", "sshd:   ", "audit:  ", "usb 1-1:", "eth0:   ", "sda:    ", "xfs:    ",
    "device  ", "driver  ", "module  ", "process ", "thread  ", "memory  ", "buffer  ", "request ",
    "started ", "stopped ", "failed  ", "error   ", "warning:", "timeout ", "reset   ", "link    ",
    "is      ", "up      ", "down    ", "the     ", "for     ", "with    ", "from    ", "on      ",
    "at      ", "to      ", "of      ", "and     ", "not     ", "new     ", "read    ", "write   ",
    "page    ", "cpu0    ", "cpu1    ", "irq 17  ", "pid 4242", "uid=0   ", "ok.     ", "done.   ",
    "session ", "user    ", "root    ", "login   ", "network ", "address ", "port 22 ", "status=0",
    "mounted ", "volume  ", "block   ", "queue   ", "service ", "Accepted", "closed  ", "opened  ",
)  # fmt: skip
_TEXT_ENDS = _words(
    "ok.    \n", "done.  \n", "failed.\n", "(0x0)  \n",
    "(-5)   \n", "retry. \n", "[OK]   \n", "       \n",
)  # fmt: skip


class _Stream:
    """wyrand: ``state += WY_ADD; t = state * (state ^ WY_XOR)`` (128-bit), draw ``hi(t) ^ lo(t)``."""

    __slots__ = ("state",)

    def __init__(self, state: int) -> None:
        self.state = state

    def next(self) -> int:
        self.state = state = (self.state + _WY_ADD) & _MASK64
        t = state * (state ^ _WY_XOR)
        return (t >> 64) ^ (t & _MASK64)


def _gen_text(stream: _Stream, page_size: int) -> bytes:
    parts: list[bytes] = []
    for _ in range(page_size // 64):
        r = stream.next()
        parts.extend(_TEXT_WORDS[(r >> (6 * k)) & 63] for k in range(7))
        parts.append(_TEXT_ENDS[(r >> 42) & 7])
    return b"".join(parts)


_POINTER_SHIFT = (0,) * 5 + (3,) * 7 + (0,) * 2 + (4,) * 2
_POINTER_MASK = (0,) * 5 + (0xFFF8,) * 5 + (0x7FFFFFF8,) * 2 + (0x3FF,) * 2 + (0xFFF0,) * 2


def _gen_pointer(stream: _Stream, pfn: int, page_size: int, big_endian: bool) -> bytes:
    """Kernel data: 64-bit words in the kernel's byte order, made in 16-byte pairs.

    ``K = 0xC000000000000000``; ``near = K | base`` with ``base = (first draw
    >> 16) & 0xFFFFF0000``, the page's 64 KiB neighbourhood. Each pair takes
    one draw r: ``s1 = r & 15``, ``s2 = (r >> 4) & 15`` pick the two words,
    ``v1 = (r >> 8) & (2**28 - 1)`` and ``v2 = r >> 36`` feed them. By s:
    0-4: zero; 5-9: ``near + ((v << 3) & 0xFFF8)``; 10-11: far,
    ``K | ((v << 3) & 0x7FFFFFF8)``; 12-13: small int ``v & 0x3FF``; 14-15:
    ``near + ((v << 4) & 0xFFF0)``. If s1 >= 14 the pair is a list_head: the
    second word is ``near + ((v1 >> 8) & 0xFFF0)``, and if bit 27 of v1 is set
    the list is empty: both words are ``K | ((pfn * page_size + offset) &
    (2**60 - 1))``, the address of the pair itself.
    """
    base = (stream.next() >> 16) & 0xFFFFF0000
    near = _KERNEL_BASE | base
    add = (0,) * 5 + (near,) * 5 + (_KERNEL_BASE,) * 2 + (0,) * 2 + (near,) * 2
    self_addr = (pfn * page_size) & _MASK64
    words: list[int] = []
    for off in range(0, page_size, 16):
        r = stream.next()
        s1, s2 = r & 15, (r >> 4) & 15
        v1, v2 = (r >> 8) & 0xFFFFFFF, r >> 36
        w1 = ((v1 << _POINTER_SHIFT[s1]) & _POINTER_MASK[s1]) + add[s1]
        w2 = ((v2 << _POINTER_SHIFT[s2]) & _POINTER_MASK[s2]) + add[s2]
        if s1 >= 14:
            w2 = near + ((v1 >> 8) & 0xFFF0)
            if (v1 >> 27) & 1:
                w1 = w2 = _KERNEL_BASE | ((self_addr + off) & _ADDR_MASK)
        words += (w1, w2)
    return struct.pack(f"{'>' if big_endian else '<'}{page_size // 8}Q", *words)


def _gen_random(stream: _Stream, page_size: int) -> bytes:
    n = page_size // 8
    return struct.pack(f"<{n}Q", *(stream.next() for _ in range(n)))


def _gen(content_key: int, pfn: int, kind: int, page_size: int, big_endian: bool) -> bytes:
    stream = _Stream(_mix64((content_key + pfn) & _MASK64))
    if kind == PAGE_TEXT:
        return _gen_text(stream, page_size)
    if kind == PAGE_POINTER:
        return _gen_pointer(stream, pfn, page_size, big_endian)
    if kind == PAGE_RANDOM:
        return _gen_random(stream, page_size)
    return bytes(page_size)


def gen_page(seed: int, pfn: int, kind: int, page_size: int, big_endian: bool) -> bytes:
    """The content of page ``pfn`` as a page of ``kind`` (whatever the mix says)."""
    check_u64("seed", seed)
    check_u64("pfn", pfn)
    check_kind(kind)
    check_page_size(page_size)
    return _gen(_mix64(seed ^ _CONTENT_SALT), pfn, kind, page_size, bool(big_endian))


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
    with byte_view(buf, writable=True) as out:
        check_gen_args(out.nbytes, seed, pfn, npages, page_size, mix)
        kind_key = _mix64(seed ^ _KIND_SALT)
        content_key = _mix64(seed ^ _CONTENT_SALT)
        thresholds = mix.thresholds()
        for i in range(npages):
            kind = _kind_of(kind_key, pfn + i, thresholds)
            out[i * page_size : (i + 1) * page_size] = _gen(
                content_key, pfn + i, kind, page_size, bool(big_endian)
            )


# ----------------------------------------------------------- scans, hashes
