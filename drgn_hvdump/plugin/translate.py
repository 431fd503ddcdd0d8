"""vmalloc and module addresses of hash-MMU kernels, for drgn.

drgn 0.3 walks only Radix page tables; on a hash-MMU ppc64 kernel (POWER6
and the other machines of hypervisor-assisted dump) reading a vmalloc or
module address fails with ``NotImplementedError``. :func:`install_hash_translation`
adds a virtual memory segment over the page-table-mapped kernel range
(vmalloc, modules, I/O, ioremap) whose reads are translated page by page by
:class:`drgn_hvdump.mmu.HashMmu`: the kernel page tables (``swapper_pg_dir``)
first, the hypervisor's saved HPTEs when the page tables do not map an
address. Physical memory is read through ``prog.read(pa, n, True)``, so the
plugin's other physical segments (the saved low memory, released ranges)
apply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import drgn

from drgn_hvdump.formats.vmcoreinfo import parse_vmcoreinfo, vmcoreinfo_symbol
from drgn_hvdump.mmu import (
    BOOK3S64_PTE_FORMAT,
    Disagreement,
    Geometry,
    HashMmu,
    HpteMatch,
    SavedHpt,
    Translation,
    hash_geometry,
    pte_format_2_6_32,
    table_range_from_vmcoreinfo,
)

__all__ = [
    "CACHE_KEY",
    "HashTranslator",
    "HptSource",
    "install_hash_translation",
    "program_vmcoreinfo",
]

CACHE_KEY = "hvdump.mmu"
"""``prog.cache`` key of the program's :class:`HashTranslator`."""

HptSource = Callable[[], "bytes | None"]
"""Returns the raw saved HPTE section (big-endian), or None if the dump has none."""

_KERNEL_BASE = 0xC000000000000000
_BOOK3S64_RANGE = (0xC008000000000000, 0xC00C000000000000)
"""vmalloc and I/O of Book3S-64 hash kernels with 64 KiB pages since 4.x (up to vmemmap).

Before debug info is loaded the geometry variables cannot be read. Kernels
that put ``NUMBER(VMALLOC_START)`` and ``SYMBOL(vmemmap)`` in VMCOREINFO say
where the range is (:func:`~drgn_hvdump.mmu.table_range_from_vmcoreinfo`);
for the others the plugin cannot tell a 2.6-era kernel from a newer one yet:
it covers both kernels' ranges. An address is checked against the real
geometry at read time.
"""
_VARIABLES = (
    "__pte_index_size",
    "__pmd_index_size",
    "__pud_index_size",
    "__pgd_index_size",
    "__vmalloc_start",
    "__vmalloc_end",
    "__kernel_io_start",
    "__kernel_io_end",
)


def program_vmcoreinfo(prog: drgn.Program) -> dict[str, str]:
    """The program's VMCOREINFO (drgn knows it without debug info); empty if unreadable."""
    try:
        return parse_vmcoreinfo(prog["VMCOREINFO"].string_())
    except (LookupError, drgn.FaultError, ValueError):
        return {}


def _page_size(prog: drgn.Program) -> int:
    # drgn makes PAGE_SIZE from VMCOREINFO's PAGESIZE, which it requires of every
    # kernel core: no debug info needed, and nothing to assume.
    return int(prog["PAGE_SIZE"].value_())


def _geometry_variables(prog: drgn.Program) -> dict[str, int]:
    found: dict[str, int] = {}
    for name in _VARIABLES:
        try:
            found[name] = prog[name].value_()
        except (LookupError, drgn.FaultError):
            continue
    return found


def _geometry(prog: drgn.Program) -> Geometry:
    return hash_geometry(_page_size(prog), _geometry_variables(prog))


class HashTranslator:
    """Translation of one program's kernel addresses; drgn's segment calls :meth:`read`.

    State an analyst (or ``%hvdump hpte``) can look at: :attr:`from_hpt`
    holds the pages read through a saved HPTE because the page tables did not
    map them, and :attr:`seen_disagreements` the disagreements met while reading.
    """

    def __init__(self, prog: drgn.Program, hpt: HptSource) -> None:
        self._prog = prog
        self._sources: list[HptSource] = [hpt]
        self._mmu: HashMmu | None = None
        self._pages: dict[int, Translation] = {}
        self.geometry: Geometry = _geometry(prog)
        """The geometry at install time; :attr:`mmu` re-reads it with debug info, if loaded since."""
        self.start = self.geometry.vmalloc_start
        self.end = self.geometry.io_end
        self.from_hpt: dict[int, HpteMatch] = {}
        self.seen_disagreements: dict[int, str] = {}

    def add_hpt_source(self, hpt: HptSource) -> None:
        """Also try ``hpt`` for the saved table (used when the ones before give None)."""
        if hpt in self._sources:
            return
        self._sources.append(hpt)
        if self._mmu is not None and self._mmu.hpt is None:
            self._reset()

    def _reset(self) -> None:
        self._mmu = None
        self._pages.clear()
        self.from_hpt.clear()
        self.seen_disagreements.clear()

    def _load_hpt(self) -> SavedHpt | None:
        for source in self._sources:
            table = source()
            if table:
                return SavedHpt(table)
        return None

    def _read_phys(self, pa: int, size: int) -> bytes:
        return bytes(self._prog.read(pa, size, True))

    def _swapper_pg_dir(self) -> int:
        try:
            text = self._prog["VMCOREINFO"].string_()
            address = vmcoreinfo_symbol(parse_vmcoreinfo(text), "swapper_pg_dir")
        except (LookupError, drgn.FaultError, ValueError):
            address = None
        if address is None:
            address = self._prog["swapper_pg_dir"].address_
            if address is None:  # pragma: no cover - a register variable cannot be a table
                raise LookupError("swapper_pg_dir has no address")
        return address

    @property
    def mmu(self) -> HashMmu:
        """The translation state, built on first use from the program."""
        if self._mmu is None:
            prog = self._prog
            geometry = _geometry(prog)
            flags = prog.platform.flags if prog.platform is not None else drgn.PlatformFlags(0)
            order: Literal["big", "little"] = (
                "little" if flags & drgn.PlatformFlags.IS_LITTLE_ENDIAN else "big"
            )
            if geometry.source.startswith("Linux 2.6.32"):
                fmt = pte_format_2_6_32(geometry.page_size, order)
            else:
                # Kernels that have the run-time geometry variables store entries big-endian.
                fmt = BOOK3S64_PTE_FORMAT
            pgd_pa = self._swapper_pg_dir() - _KERNEL_BASE
            self._mmu = HashMmu(geometry, fmt, pgd_pa, self._read_phys, self._load_hpt())
        return self._mmu

    def translate(self, ea: int) -> Translation:
        """Where ``ea`` leads: physical address, page size, source, HPTEs found, disagreement."""
        return self.mmu.translate(ea)

    def hpte_entries(self, ea: int) -> list[HpteMatch]:
        """The saved HPTEs that map ``ea`` (linear-map addresses: their bolted 16 MiB entries)."""
        return self.mmu.hpte_entries(ea)

    def disagreements(self) -> list[Disagreement]:
        """Every page of the kernel range that page tables and saved HPTEs see differently."""
        return self.mmu.disagreements()

    def _page(self, address: int) -> Translation:
        mmu = self.mmu
        page = address & ~(mmu.geometry.page_size - 1)
        t = self._pages.get(page)
        if t is None:
            t = mmu.translate(page)
            self._pages[page] = t
            if t.source == "hpt" and t.hptes:
                self.from_hpt[page] = t.hptes[0]
            if t.disagreement:
                self.seen_disagreements[page] = t.disagreement
        return t

    def _newer_geometry(self) -> bool:
        """Whether the kernel's geometry variables now say more than the geometry in use
        (debug info loaded after the first read); the translation starts afresh if so."""
        if self._mmu is None or not self._mmu.geometry.source.startswith("Linux 2.6.32"):
            return False
        if _geometry(self._prog) == self._mmu.geometry:
            return False
        self._reset()
        return True

    def read(self, address: int, count: int, offset: int, physical: bool) -> bytes:
        """drgn's segment callback: translate and read ``count`` bytes at virtual ``address``."""
        try:
            return self._read(address, count)
        except drgn.FaultError:
            if not self._newer_geometry():
                raise
        return self._read(address, count)

    def _read(self, address: int, count: int) -> bytes:
        out = bytearray()
        geometry = self.mmu.geometry
        if not geometry.vmalloc_start <= address < geometry.io_end:
            raise drgn.FaultError(
                f"not a vmalloc, module or I/O address of this kernel "
                f"({geometry.vmalloc_start:#x}-{geometry.io_end:#x}, from {geometry.source})",
                address,
            )
        page_size = geometry.page_size
        while count > 0:
            t = self._page(address)
            n = min(count, page_size - (address & (page_size - 1)))
            if t.pa is None:
                why = f": {t.error}" if t.error else ""
                raise drgn.FaultError(
                    f"{self.mmu.geometry.region(address)} address not mapped by the kernel page "
                    f"tables (swapper_pg_dir) or the saved HPTEs{why}",
                    address,
                )
            pa = t.pa + (address & (page_size - 1))
            try:
                out += self._read_phys(pa, n)
            except drgn.FaultError as e:
                raise drgn.FaultError(
                    f"{address:#x} maps to physical {pa:#x} ({t.source}), which cannot be read: "
                    f"{e.message}",
                    address,
                ) from None
            address += n
            count -= n
        return bytes(out)


def install_hash_translation(prog: drgn.Program, hpt: HptSource) -> HashTranslator:
    """Translate ``prog``'s vmalloc, module and ioremap addresses (hash MMU); idempotent.

    The first call adds a virtual memory segment over the range the page
    tables cover (both candidate ranges while the kernel's geometry variables
    cannot be read yet) and keeps the translator in ``prog.cache["hvdump.mmu"]``;
    later calls return it, adding ``hpt`` as another source of the saved
    HPTE section.
    """
    existing = prog.cache.get(CACHE_KEY)
    if isinstance(existing, HashTranslator):
        existing.add_hpt_source(hpt)
        return existing
    translator = HashTranslator(prog, hpt)
    ranges = {(translator.start, translator.end)}
    if translator.geometry.source.startswith("Linux 2.6.32"):
        learnt = table_range_from_vmcoreinfo(program_vmcoreinfo(prog))
        ranges = {learnt} if learnt is not None else {*ranges, _BOOK3S64_RANGE}
    for start, end in sorted(ranges):
        prog.add_memory_segment(start, end - start, translator.read, False)
    prog.cache[CACHE_KEY] = translator
    return translator
