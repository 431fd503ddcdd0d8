"""The crashed kernel's ``init_uts_ns.name`` (``struct new_utsname``), as makedumpfile reads it.

A kdump file's header repeats the kernel's utsname (system name, node name,
release, version, machine, domain name: six fields of 65 bytes). Its address
comes from VMCOREINFO's ``SYMBOL(init_uts_ns)``, a ppc64 linear-map address,
and ``OFFSET(uts_namespace.name)`` where the kernel gives it (6.x); older
kernels put the name after the namespace's 4-byte ``kref``.
"""

from __future__ import annotations

from collections.abc import Callable

from drgn_hvdump.formats.elfcore import PAGE_OFFSET_PPC64

__all__ = ["UTSNAME_SIZE", "UTS_FIELD", "parse_utsname", "read_utsname", "utsname_paddr"]

UTS_FIELD = 65
"""Bytes of each field (``__NEW_UTS_LEN + 1``)."""
_FIELD = UTS_FIELD
UTSNAME_SIZE = 6 * _FIELD
"""Bytes of ``struct new_utsname``."""


def utsname_paddr(info: dict[str, str]) -> int | None:
    """The physical address of a ppc64 kernel's ``init_uts_ns.name``, from VMCOREINFO."""
    try:
        vaddr = int(info["SYMBOL(init_uts_ns)"], 16)
    except (KeyError, ValueError):
        return None
    # Newer kernels say where the name is (6.x: first); older ones put a
    # 4-byte kref before it and say nothing.
    try:
        offset = int(info["OFFSET(uts_namespace.name)"])
    except (KeyError, ValueError):
        offset = 4
    return vaddr - PAGE_OFFSET_PPC64 + offset


def parse_utsname(data: bytes) -> list[str] | None:
    """The six fields, or None when ``data`` is not a utsname (no ``Linux``, not ASCII)."""
    if len(data) < UTSNAME_SIZE:
        return None
    fields = [data[i * _FIELD : (i + 1) * _FIELD].split(b"\0", 1)[0] for i in range(6)]
    if fields[0] != b"Linux" or not all(f.isascii() for f in fields):
        return None
    return [f.decode("ascii") for f in fields]


def read_utsname(
    info: dict[str, str], read_phys: Callable[[int, int], bytes | None]
) -> list[str] | None:
    """The utsname read through ``read_phys(paddr, size)`` (None: not readable there)."""
    paddr = utsname_paddr(info)
    if paddr is None or paddr < 0:
        return None
    data = read_phys(paddr, UTSNAME_SIZE)
    return parse_utsname(data) if data is not None else None
