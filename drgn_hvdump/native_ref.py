"""Pure-Python definition of hvdump's native hot loops.

:mod:`drgn_hvdump.native` has the same API backed by C (``native/hvnative.c``);
this module is the specification it is tested against, and it owns the
shared pieces: the page-kind constants, :class:`PageMix`, :data:`BUSY_MIX` and
argument checks. It is 30 to 900 times slower than the C: read it, test against
it, do not run on it.

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

import math
import os
import struct
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.formats.hpte import (
    check_hpte_args,
    hpte_hash,
    hpte_hash_raw,
    vsid_scramble_256m,
)
from drgn_hvdump.formats.kdump import PAGE_DESC, PageDesc
from drgn_hvdump.formats.layout import ByteOrder, check_u64

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "BUSY_MIX",
    "CODEC_LZO",
    "CODEC_NONE",
    "CODEC_SNAPPY",
    "CODEC_ZLIB",
    "CODEC_ZSTD",
    "MAX_PAGE_SIZE",
    "MIN_PAGE_SIZE",
    "PAGE_KIND_NAMES",
    "PAGE_POINTER",
    "PAGE_RANDOM",
    "PAGE_TEXT",
    "PAGE_ZERO",
    "PageBatch",
    "PageCodec",
    "PageMix",
    "PageMixError",
    "buffer_address",
    "dup_pages",
    "gen_page",
    "gen_pages_into",
    "hash64",
    "hpte_hash",
    "hpte_hashes",
    "kdump_descs",
    "page_hashes",
    "page_kind",
    "vsid_scramble_256m",
    "write_pages",
    "zero_pages",
]

PAGE_ZERO = 0
PAGE_TEXT = 1
PAGE_POINTER = 2
PAGE_RANDOM = 3
#: Names of the kinds, indexed by kind; also :class:`PageMix`'s field names.
PAGE_KIND_NAMES: tuple[str, str, str, str] = ("zero", "text", "pointer", "random")

#: Page sizes accepted: powers of two in [MIN_PAGE_SIZE, MAX_PAGE_SIZE].
MIN_PAGE_SIZE = 512
MAX_PAGE_SIZE = 1 << 20

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


# ------------------------------------------------------------------ checks
# Used by drgn_hvdump.native too, so both modules refuse the same arguments.


def check_page_size(page_size: int) -> None:
    """Refuse page sizes that are not a power of two in [512, 1 MiB]."""
    if isinstance(page_size, bool) or not isinstance(page_size, int):
        raise TypeError(f"page_size must be an int, got {type(page_size).__name__}")
    if not (MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE and page_size & (page_size - 1) == 0):
        raise ValueError(
            f"page_size must be a power of two from {MIN_PAGE_SIZE} to {MAX_PAGE_SIZE} "
            f"(4096 or 65536 on POWER), got {page_size}"
        )


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
