"""Whether drgn can analyse a dump, not only whether its bytes are right.

A dump whose every chunk matches its manifest can still be useless: drgn's
kdump reader (libkdumpfile, also inside drgn's wheel) translates ppc64
addresses only for kernels with 64 KiB pages (``Unsupported page shift: 12``
for Debian 13's 6.12, built with ``CONFIG_PPC_4K_PAGES``), so every read of a
kdump file of a 4 KiB-page ppc64 kernel fails, physical ones too. Two uses:

* before writing, :func:`analysable_format` (and :func:`collect_format` for a
  capture root's ``/proc/vmcore``) picks ELF instead of kdump for such a
  kernel, with the one line that says why;
* after writing, :func:`analysable_problems` (``hvdump verify``) checks what
  drgn needs: a ``VMCOREINFO`` note with ``OSRELEASE``, ``PAGESIZE`` and
  ``SYMBOL(swapper_pg_dir)``, a format drgn reads for this kernel, and one
  known kernel address read through drgn (``init_uts_ns.name.release``, which
  must equal ``OSRELEASE``; else ``swapper_pg_dir``, which must read).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from drgn_hvdump.errors import FormatError
from drgn_hvdump.formats.elfcore import EM_PPC64, PAGE_OFFSET_PPC64, ElfCore, parse_notes
from drgn_hvdump.formats.utsname import UTS_FIELD as _UTS_FIELD
from drgn_hvdump.formats.vmcoreinfo import (
    VMCOREINFO_NOTE_NAME,
    parse_vmcoreinfo,
    vmcoreinfo_offset,
    vmcoreinfo_symbol,
)
from drgn_hvdump.model.pages import kernel_page_size

__all__ = [
    "KDUMP_PPC64_PAGE_SIZE",
    "analysable_format",
    "analysable_problems",
    "collect_format",
    "kdump_unreadable",
    "known_address",
    "vmcoreinfo_problems",
]

KDUMP_PPC64_PAGE_SIZE = 65536
"""The only ppc64 page size libkdumpfile translates (its ``addrxlat`` ppc64 method)."""

# What drgn refuses a kernel without.
_REQUIRED = ("OSRELEASE", "PAGESIZE", "SYMBOL(swapper_pg_dir)")


def kdump_unreadable(ppc64: bool, page_size: int) -> str | None:
    """Why drgn cannot read a kdump file of this kernel, or None when it can."""
    if ppc64 and page_size != KDUMP_PPC64_PAGE_SIZE:
        return (
            f"drgn's kdump reader (libkdumpfile) cannot read ppc64 kernels with "
            f"{page_size >> 10} KiB pages (only {KDUMP_PPC64_PAGE_SIZE >> 10} KiB)"
        )
    return None


def analysable_format(requested: str, ppc64: bool, page_size: int) -> tuple[str, str | None]:
    """The format to write for ``requested``, and the line saying why when it differs."""
    why = kdump_unreadable(ppc64, page_size) if requested == "kdump" else None
    if why is None:
        return requested, None
    return "elf", f"writing an ELF dump, not kdump: {why}"


def collect_format(requested: str, vmcore: Path) -> tuple[str, str | None]:
    """:func:`analysable_format` for the kernel behind ``vmcore`` (its VMCOREINFO's
    ``PAGESIZE``); ``requested`` when the file cannot tell (it is gone, or has no note)."""
    if requested != "kdump":
        return requested, None
    try:
        with ElfCore.open(vmcore, machine=None) as core:
            machine, info = core.machine, core.vmcoreinfo or {}
    except (OSError, FormatError):
        return requested, None
    size = kernel_page_size(info.get("PAGESIZE"))
    if size is None:
        return requested, None
    return analysable_format(requested, machine == EM_PPC64, size)


def vmcoreinfo_problems(info: Mapping[str, str] | None) -> list[str]:
    """What drgn would refuse in a dump's VMCOREINFO (empty: nothing)."""
    if info is None:
        return ["no VMCOREINFO note: drgn cannot tell the kernel"]
    missing = [k for k in _REQUIRED if not info.get(k)]
    if missing:
        return [f"VMCOREINFO has no {', '.join(missing)}: drgn refuses such a kernel"]
    size = info["PAGESIZE"]
    if not size.isdigit() or int(size) & (int(size) - 1) or not int(size):
        return [f"VMCOREINFO's PAGESIZE={size} is not a power of two: drgn refuses it"]
    return []


def known_address(info: Mapping[str, str]) -> tuple[int, bytes | None, str] | None:
    """A kernel address to read, what it must hold (None: only that it reads), and its name.

    ``init_uts_ns.name.release`` (the third field of ``struct new_utsname``)
    holds ``OSRELEASE``; kernels whose VMCOREINFO names no ``init_uts_ns``
    offer ``swapper_pg_dir``.
    """
    try:
        uts = vmcoreinfo_symbol(info, "init_uts_ns")
        name = vmcoreinfo_offset(info, "uts_namespace.name")
        pgd = vmcoreinfo_symbol(info, "swapper_pg_dir")
    except FormatError:
        return None
    release = info.get("OSRELEASE", "")
    if uts is not None and name is not None and release:
        want = release.encode("ascii", "replace")[: _UTS_FIELD - 1] + b"\0"
        return uts + name + 2 * _UTS_FIELD, want, "init_uts_ns.name.release"
    if pgd is not None:
        return pgd, None, "swapper_pg_dir"
    return None


def _dump_facts(dump: Path, fmt: str) -> tuple[bool, int, dict[str, str] | None]:
    """(ppc64, page size, VMCOREINFO or None) of a dump file hvdump wrote."""
    if fmt == "kdump":
        from drgn_hvdump.codecs import decompress_page
        from drgn_hvdump.formats.kdump import KdumpFile

        with KdumpFile.open(dump, decompress_page) as kd:
            notes = parse_notes(kd.notes, kd.byteorder, str(dump))
            raw = next((n.desc for n in notes if n.name == VMCOREINFO_NOTE_NAME), None)
            machine = kd.header.utsname[4 * _UTS_FIELD : 5 * _UTS_FIELD].split(b"\0")[0]
            info = parse_vmcoreinfo(raw, str(dump)) if raw is not None else None
            return machine.startswith(b"ppc64"), kd.page_size, info
    with ElfCore.open(dump, machine=None) as core:
        info = core.vmcoreinfo
        page_size = kernel_page_size((info or {}).get("PAGESIZE")) or 0
        return core.machine == EM_PPC64, page_size, info


def _drgn_reads(dump: Path, address: int, size: int) -> bytes:
    import drgn

    prog = drgn.Program()
    prog.set_core_dump(os.fspath(dump))
    return bytes(prog.read(address, size))


def _stored(dump: Path, fmt: str, pa: int, size: int) -> bytes | None:
    """``size`` bytes at physical ``pa`` as hvdump's own readers see the file, or None
    when the dump does not hold them."""
    try:
        if fmt == "kdump":
            from drgn_hvdump.codecs import decompress_page
            from drgn_hvdump.formats.kdump import KdumpFile

            with KdumpFile.open(dump, decompress_page) as kd:
                ps = kd.page_size
                if pa % ps + size > ps or not kd.has_page(pa // ps):
                    return None
                return kd.read_page(pa // ps)[pa % ps : pa % ps + size]
        with ElfCore.open(dump, machine=None) as core:
            return core.read_phys(pa, size)
    except (OSError, FormatError):
        return None


def analysable_problems(dump: Path, fmt: str) -> list[str]:
    """Why drgn cannot analyse ``dump`` (written by hvdump in ``fmt``); empty when it can.

    Only ppc64 dumps whose VMCOREINFO drgn accepts (:func:`vmcoreinfo_problems`)
    are judged: for others there is nothing hvdump could have written better. The
    known address is judged when the dump holds its page: drgn must read there
    what hvdump's own reader reads, and ``init_uts_ns`` must hold ``OSRELEASE``.
    """
    try:
        ppc64, page_size, info = _dump_facts(dump, fmt)
    except (OSError, FormatError) as exc:
        return [f"{dump}: not analysable: {exc}"]
    if not ppc64 or info is None or vmcoreinfo_problems(info):
        # Another machine's core, or a source drgn refuses whatever hvdump writes
        # (convert takes cores without VMCOREINFO): a faithful copy of it is all
        # hvdump can give, and its bytes are what verify checks.
        return []
    known = known_address(info)
    why = kdump_unreadable(ppc64, page_size) if fmt == "kdump" else None
    problems = _read_problems(dump, fmt, known, why) if known is not None else []
    if known is None and why:
        problems.append(why)
    if why and problems:
        problems[-1] += "; collect or convert again with --format elf"
    return [f"{dump}: not analysable: {p}" for p in problems]


def _read_problems(
    dump: Path, fmt: str, known: tuple[int, bytes | None, str], why: str | None
) -> list[str]:
    address, want, name = known
    size = len(want) if want is not None else 8
    stored = _stored(dump, fmt, address - PAGE_OFFSET_PPC64, size)
    if stored is None:
        return [why] if why else []  # not in the dump (a partial source): nothing to compare
    if want is not None and stored != want:
        return [
            f"{name} ({address:#x}) holds {stored.rstrip(bytes(1))!r}, VMCOREINFO says "
            f"OSRELEASE={want.rstrip(bytes(1)).decode(errors='replace')}"
        ]
    try:
        got = _drgn_reads(dump, address, size)
    except ImportError:
        return []
    except Exception as exc:  # drgn's errors (FaultError, ValueError, ...) are the finding
        return [f"drgn cannot read {name} at {address:#x}: {exc}" + (f" ({why})" if why else "")]
    if got != stored:
        return [f"drgn reads {got!r} at {name} ({address:#x}), the dump holds {stored!r}"]
    return []
