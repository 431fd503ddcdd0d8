"""Hashed page table entries (64-bit hash MMU, POWER6 era) as the hypervisor saves them.

An HPTE is two big-endian doublewords, ``v`` and ``r`` (16 bytes); eight make
a group (PTEG, 128 bytes). The saved HPTE region is taken to be a raw image
of the table. Kernel addresses use 256 MiB segments whose VSID is
``vsid_scramble_256m(ea >> 28)`` (2.6.2x kernels), and an entry sits in the
group its hash selects (primary), or in the group of the complemented hash
with ``HPTE_V_SECONDARY`` set.

Bit masks are in Linux's ``mmu-hash64.h`` (LSB-0) numbering. The hash
functions are defined here; :mod:`drgn_hvdump.native` has the same ones in C.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from drgn_hvdump.errors import FormatError
from drgn_hvdump.formats.layout import Layout, check_u64, u64

__all__ = [
    "HPTES_PER_GROUP",
    "HPTE_GROUP_SIZE",
    "HPTE_LAYOUT",
    "HPTE_R_C",
    "HPTE_R_G",
    "HPTE_R_I",
    "HPTE_R_KEY_HI",
    "HPTE_R_KEY_LO",
    "HPTE_R_LP_SHIFT",
    "HPTE_R_M",
    "HPTE_R_N",
    "HPTE_R_PP",
    "HPTE_R_PP0",
    "HPTE_R_R",
    "HPTE_R_RPN",
    "HPTE_R_W",
    "HPTE_SIZE",
    "HPTE_V_AVPN",
    "HPTE_V_AVPN_SHIFT",
    "HPTE_V_BOLTED",
    "HPTE_V_LARGE",
    "HPTE_V_LOCK",
    "HPTE_V_SECONDARY",
    "HPTE_V_SSIZE_SHIFT",
    "HPTE_V_VALID",
    "KERNEL_BASE",
    "SSIZE_1T",
    "SSIZE_256M",
    "WIMG_M",
    "Hpte",
    "build_hpte_table",
    "check_hpte_args",
    "decode_ea",
    "decode_va",
    "encode_hpte",
    "hpte_group",
    "hpte_hash",
    "hpte_hash_raw",
    "hpte_slot",
    "htab_hash_mask",
    "kernel_ea_of_va",
    "kernel_vsid",
    "linear_map_hptes",
    "parse_hpte_table",
    "va_of",
    "vsid_scramble_256m",
    "vsid_unscramble_256m",
]


_MASK64 = (1 << 64) - 1


def check_hpte_args(page_shift: int, ssize: int) -> None:
    """Refuse a page shift outside [0, 63] or a segment size other than 0 or 1."""
    if isinstance(page_shift, bool) or not isinstance(page_shift, int):
        raise TypeError(f"page_shift must be an int, got {type(page_shift).__name__}")
    if not 0 <= page_shift <= 63:
        raise ValueError(f"page_shift must be in [0, 63] (12 for 4 KiB pages), got {page_shift}")
    if ssize not in (0, 1) or isinstance(ssize, bool):
        raise ValueError(f"ssize must be 0 (256 MiB segment) or 1 (1 TiB segment), got {ssize!r}")


def vsid_scramble_256m(proto_vsid: int) -> int:
    """``proto_vsid * 200730139 mod (2**36 - 1)``: the kernel's VSID for 256 MiB segments."""
    check_u64("proto_vsid", proto_vsid)
    return (proto_vsid * 200730139) % ((1 << 36) - 1)


def hpte_hash_raw(vsid: int, ea: int, page_shift: int, ssize: int) -> int:
    """:func:`hpte_hash` without its argument checks (for loops that checked them once)."""
    if ssize == 0:
        h = vsid ^ ((ea & 0x0FFFFFFF) >> page_shift)
    else:
        h = vsid ^ ((vsid << 25) & _MASK64) ^ ((ea & 0xFFFFFFFFFF) >> page_shift)
    return h & 0x7FFFFFFFFF


def hpte_hash(vsid: int, ea: int, page_shift: int, ssize: int) -> int:
    """Primary hash-table hash (39 bits) of ``ea`` in segment ``vsid``.

    ssize 0 (256 MiB): ``vsid ^ ((ea & 0x0FFFFFFF) >> page_shift)``; ssize 1
    (1 TiB): ``vsid ^ (vsid << 25) ^ ((ea & 0xFFFFFFFFFF) >> page_shift)``;
    both masked to ``0x7FFFFFFFFF``. The secondary hash is its complement.
    """
    check_u64("vsid", vsid)
    check_u64("ea", ea)
    check_hpte_args(page_shift, ssize)
    return hpte_hash_raw(vsid, ea, page_shift, ssize)


HPTES_PER_GROUP = 8
SSIZE_256M = 0
SSIZE_1T = 1

HPTE_V_SSIZE_SHIFT = 62
HPTE_V_AVPN_SHIFT = 7
HPTE_V_AVPN = 0x3FFFFFFFFFFFFF80
HPTE_V_BOLTED = 0x10
HPTE_V_LOCK = 0x08
HPTE_V_LARGE = 0x04
HPTE_V_SECONDARY = 0x02
HPTE_V_VALID = 0x01

HPTE_R_PP0 = 0x8000000000000000
HPTE_R_KEY_HI = 0x3000000000000000
HPTE_R_RPN = 0x0FFFFFFFFFFFF000
HPTE_R_LP_SHIFT = 12
HPTE_R_KEY_LO = 0x0000000000000E00
HPTE_R_R = 0x100
HPTE_R_C = 0x80
HPTE_R_W = 0x40
HPTE_R_I = 0x20
HPTE_R_M = 0x10
HPTE_R_G = 0x08
HPTE_R_N = 0x04
HPTE_R_PP = 0x03

WIMG_M = 0x2
"""WIMG with only M (coherent), the kernel linear map's setting."""

KERNEL_BASE = 0xC000000000000000
"""ppc64 ``KERNELBASE``: the linear map's effective address of physical 0."""

_SID_SHIFT = 28
_SID_SHIFT_1T = 40
_VSID_MODULUS = (1 << 36) - 1
_VSID_MULTIPLIER_256M = 200730139
_VSID_INVERSE_256M = pow(_VSID_MULTIPLIER_256M, -1, _VSID_MODULUS)
_U64_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class Hpte:
    """One hashed page table entry; properties decode its bits."""

    v: int = u64()
    r: int = u64()

    @property
    def valid(self) -> bool:
        return bool(self.v & HPTE_V_VALID)

    @property
    def secondary(self) -> bool:
        return bool(self.v & HPTE_V_SECONDARY)

    @property
    def large(self) -> bool:
        return bool(self.v & HPTE_V_LARGE)

    @property
    def bolted(self) -> bool:
        return bool(self.v & HPTE_V_BOLTED)

    @property
    def locked(self) -> bool:
        return bool(self.v & HPTE_V_LOCK)

    @property
    def ssize(self) -> int:
        """Segment size: 0 = 256 MiB, 1 = 1 TiB."""
        return self.v >> HPTE_V_SSIZE_SHIFT

    @property
    def avpn(self) -> int:
        """Abbreviated virtual page number: virtual address bits 23 and up."""
        return (self.v & HPTE_V_AVPN) >> HPTE_V_AVPN_SHIFT

    def rpn(self, page_shift: int = 12) -> int:
        """Real page number for pages of ``1 << page_shift`` bytes (large-page encoding dropped)."""
        return (self.r & HPTE_R_RPN) >> page_shift

    def real_address(self, page_shift: int = 12) -> int:
        """Physical address of the page."""
        return self.rpn(page_shift) << page_shift

    @property
    def lp(self) -> int:
        """The 8 LP bits (12..19); for a large page only those below its shift encode its size."""
        return (self.r >> HPTE_R_LP_SHIFT) & 0xFF

    @property
    def pp(self) -> int:
        return self.r & HPTE_R_PP

    @property
    def pp0(self) -> bool:
        return bool(self.r & HPTE_R_PP0)

    @property
    def n(self) -> bool:
        """No-execute."""
        return bool(self.r & HPTE_R_N)

    @property
    def wimg(self) -> int:
        """Write-through, cache-Inhibited, Memory-coherent, Guarded, as 4 bits."""
        return (self.r >> 3) & 0xF

    @property
    def referenced(self) -> bool:
        return bool(self.r & HPTE_R_R)

    @property
    def changed(self) -> bool:
        return bool(self.r & HPTE_R_C)

    @property
    def key(self) -> int:
        """Storage key: KEY_HI (2 bits) above KEY_LO (3 bits)."""
        return ((self.r & HPTE_R_KEY_HI) >> 57) | ((self.r & HPTE_R_KEY_LO) >> 9)


HPTE_LAYOUT = Layout(Hpte, size=16, name="HPTE")
HPTE_SIZE = HPTE_LAYOUT.size
HPTE_GROUP_SIZE = HPTE_SIZE * HPTES_PER_GROUP


def _avpn_mask(page_shift: int) -> int:
    # mmu_psize_defs[].avpnm: VA bits >= 23 that lie inside a page larger than 8 MiB.
    return (1 << (page_shift - 23)) - 1 if page_shift > 23 else 0


def encode_hpte(
    va: int,
    pa: int,
    page_shift: int = 12,
    *,
    ssize: int = SSIZE_256M,
    penc: int = 0,
    valid: bool = True,
    secondary: bool = False,
    bolted: bool = False,
    pp: int = 0,
    pp0: bool = False,
    wimg: int = WIMG_M,
    n: bool = False,
    referenced: bool = False,
    changed: bool = False,
    key: int = 0,
) -> Hpte:
    """An HPTE mapping virtual address ``va`` to physical ``pa``, as Linux builds it.

    ``v`` follows ``hpte_encode_v``: ``((va >> 23) & ~avpnm) << 7 | ssize << 62
    | L | V``, L set for pages larger than 4 KiB; ``r`` follows
    ``hpte_encode_r``: the page's real address, plus ``penc << 12`` (the
    large-page encoding) for large pages.
    """
    if not (0 <= pp <= 3 and 0 <= wimg <= 0xF and 0 <= key <= 0x1F and 0 <= penc <= 0xFF):
        raise ValueError("pp, wimg, key or penc out of range")
    if ssize not in (SSIZE_256M, SSIZE_1T):
        raise ValueError(f"ssize must be 0 or 1, got {ssize}")
    v = (((va >> 23) & ~_avpn_mask(page_shift)) << HPTE_V_AVPN_SHIFT) & HPTE_V_AVPN
    v |= ssize << HPTE_V_SSIZE_SHIFT
    if page_shift != 12:
        v |= HPTE_V_LARGE
    v |= (
        (HPTE_V_VALID if valid else 0)
        | (HPTE_V_SECONDARY if secondary else 0)
        | (HPTE_V_BOLTED if bolted else 0)
    )
    if page_shift == 12:
        r = pa & HPTE_R_RPN
    else:
        r = (pa & ~((1 << page_shift) - 1) & HPTE_R_RPN) | (penc << HPTE_R_LP_SHIFT)
    r |= (
        pp
        | (HPTE_R_PP0 if pp0 else 0)
        | (wimg << 3)
        | (HPTE_R_N if n else 0)
        | (HPTE_R_R if referenced else 0)
        | (HPTE_R_C if changed else 0)
        | ((key >> 3) << 60)
        | ((key & 7) << 9)
    )
    return Hpte(v, r)


def parse_hpte_table(
    buf: bytes | bytearray | memoryview, path: str | None = None, offset: int = 0
) -> list[Hpte]:
    """All entries from ``offset`` to the end of ``buf`` (a whole number of 16-byte entries)."""
    if not 0 <= offset <= len(buf):
        raise FormatError(
            f"HPTE table offset {offset:#x} is outside the {len(buf):#x}-byte buffer",
            path=path,
            offset=offset,
        )
    view = memoryview(buf).cast("B")[offset:]
    extra = len(view) % HPTE_SIZE
    if extra:
        raise FormatError(
            f"HPTE table of {len(view)} bytes ends with a partial {extra}-byte entry",
            path=path,
            offset=offset + len(view) - extra,
            hint="HPTEs are 16 bytes",
        )
    return list(HPTE_LAYOUT.iter_unpack(view, "big"))


def build_hpte_table(entries: Mapping[int, Hpte] | Sequence[Hpte], size: int) -> bytes:
    """A ``size``-byte table: ``entries`` by slot index (a mapping) or from slot 0 (a sequence)."""
    if size < 0 or size % HPTE_SIZE:
        raise ValueError(f"table size {size} is not a multiple of {HPTE_SIZE}")
    items = entries.items() if isinstance(entries, Mapping) else enumerate(entries)
    out = bytearray(size)
    for slot, entry in items:
        if not 0 <= slot < size // HPTE_SIZE:
            raise ValueError(f"slot {slot} is outside a table of {size // HPTE_SIZE} entries")
        HPTE_LAYOUT.pack_into(out, slot * HPTE_SIZE, entry, "big")
    return bytes(out)


def htab_hash_mask(table_size: int) -> int:
    """``htab_hash_mask`` of a table of ``table_size`` bytes (a power of two, >= one group)."""
    groups = table_size // HPTE_GROUP_SIZE
    if table_size % HPTE_GROUP_SIZE or groups <= 0 or groups & (groups - 1):
        raise ValueError(f"hash table size {table_size} is not a power-of-two number of groups")
    return groups - 1


def kernel_vsid(ea: int) -> int:
    """The VSID a 2.6.2x kernel gives the 256 MiB segment of ``ea``."""
    return vsid_scramble_256m(ea >> _SID_SHIFT)


def vsid_unscramble_256m(vsid: int) -> int:
    """The proto-VSID (ESID for kernel addresses) that ``vsid_scramble_256m`` maps to ``vsid``."""
    return (vsid * _VSID_INVERSE_256M) % _VSID_MODULUS


def va_of(ea: int) -> int:
    """The virtual address of kernel effective address ``ea`` (256 MiB segments)."""
    return (kernel_vsid(ea) << _SID_SHIFT) | (ea & ((1 << _SID_SHIFT) - 1))


def kernel_ea_of_va(va: int) -> int:
    """Inverse of :func:`va_of`."""
    esid = vsid_unscramble_256m(va >> _SID_SHIFT)
    return ((esid << _SID_SHIFT) | (va & ((1 << _SID_SHIFT) - 1))) & _U64_MASK


def hpte_group(hash_: int, htab_hash_mask: int, secondary: bool = False) -> int:
    """The group (PTEG) index for a hash: primary, or secondary (complemented hash)."""
    return (~hash_ if secondary else hash_) & htab_hash_mask


def hpte_slot(hash_: int, htab_hash_mask: int, secondary: bool = False, index: int = 0) -> int:
    """Slot number in the table of entry ``index`` (0..7) of the hash's group."""
    if not 0 <= index < HPTES_PER_GROUP:
        raise ValueError(f"index {index} is not 0..7")
    return hpte_group(hash_, htab_hash_mask, secondary) * HPTES_PER_GROUP + index


def decode_va(hpte: Hpte, slot_index: int, htab_hash_mask: int, page_shift: int) -> int:
    """The (page-aligned) virtual address an entry maps, as Linux's ``hpte_decode`` computes it.

    The AVPN gives the address from bit 23 up; for pages under 8 MiB the bits
    below come from undoing the hash with the group the entry sits in.
    """
    va = (hpte.avpn & ~_avpn_mask(page_shift)) << 23
    if page_shift < 23:
        pteg = slot_index // HPTES_PER_GROUP
        if hpte.secondary:
            pteg = ~pteg
        if hpte.ssize == SSIZE_256M:
            vpi = ((va >> _SID_SHIFT) ^ pteg) & htab_hash_mask
        elif hpte.ssize == SSIZE_1T:
            vsid = va >> _SID_SHIFT_1T
            vpi = (vsid ^ (vsid << 25) ^ pteg) & htab_hash_mask
        else:
            raise ValueError(f"segment size {hpte.ssize} is reserved")
        va |= vpi << page_shift
    return va


def decode_ea(hpte: Hpte, slot_index: int, htab_hash_mask: int, page_shift: int) -> int:
    """The kernel effective address an entry in a 256 MiB kernel segment maps."""
    if hpte.ssize != SSIZE_256M:
        raise ValueError("kernel VSIDs are only defined for 256 MiB segments")
    return kernel_ea_of_va(decode_va(hpte, slot_index, htab_hash_mask, page_shift))


def linear_map_hptes(
    mem_size: int,
    table_size: int,
    page_shift: int = 24,
    *,
    penc: int = 0,
    bolted: bool = True,
    referenced: bool = True,
    changed: bool = True,
) -> dict[int, Hpte]:
    """Entries for the kernel linear map of ``[0, mem_size)``, by slot, placed as Linux places them.

    Each page goes in the first free slot of its primary group, else of its
    secondary group; a table too small for that raises ``ValueError`` (bolted
    entries cannot be evicted). The default is 16 MiB pages (POWER5+/6).
    """
    mask = htab_hash_mask(table_size)
    page = 1 << page_shift
    table: dict[int, Hpte] = {}
    used: dict[int, int] = {}
    for pa in range(0, mem_size, page):
        ea = KERNEL_BASE + pa
        h = hpte_hash(kernel_vsid(ea), ea, page_shift, SSIZE_256M)
        for secondary in (False, True):
            group = hpte_group(h, mask, secondary)
            n = used.get(group, 0)
            if n < HPTES_PER_GROUP:
                slot = group * HPTES_PER_GROUP + n
                used[group] = n + 1
                table[slot] = encode_hpte(
                    va_of(ea),
                    pa,
                    page_shift,
                    penc=penc,
                    secondary=secondary,
                    bolted=bolted,
                    referenced=referenced,
                    changed=changed,
                )
                break
        else:
            raise ValueError(f"hash table of {table_size} bytes is full at physical {pa:#x}")
    return table
