"""
Hypervisor-assisted dumps
-------------------------

The ``drgn_hvdump.plugin.helpers`` module describes the hypervisor-assisted
dump behind a program: what it is, where each range of the crashed kernel's
memory is now, the CPU registers the hypervisor saved, and the hashed page
table entries that map an address. The ``%hvdump`` commands print the same.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import drgn
from drgn import IntegerLike
from drgn.helpers.common.prog import takes_program_or_default

from drgn_hvdump.dumpdir.manifest import read_manifest
from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.formats.dump_header import (
    describe_dump_header,
    section_error_names,
    status_names,
)
from drgn_hvdump.formats.elfcore import PT_REGS_PPC64, ElfCore, PtRegs
from drgn_hvdump.formats.fadump_mem import describe_fadump_mem, section_names
from drgn_hvdump.formats.layout import ByteOrder
from drgn_hvdump.formats.regsave import CpuState, cpu_state_to_pt_regs
from drgn_hvdump.mmu import Disagreement, Translation
from drgn_hvdump.plugin.attach import dump_source
from drgn_hvdump.plugin.source import DumpSource, split_ranges
from drgn_hvdump.plugin.translate import CACHE_KEY, HashTranslator, install_hash_translation

__all__ = (
    "DumpInfo",
    "RegionState",
    "hvdump_hash_disagreements",
    "hvdump_hpte",
    "hvdump_hpte_lines",
    "hvdump_info",
    "hvdump_pt_regs",
    "hvdump_regions",
    "hvdump_registers",
)


@dataclass
class DumpInfo:
    """What :func:`hvdump_info` returns (all plain data, ``json``-ready with ``vars()``)."""

    kind: str
    path: str
    root: str | None
    byteorder: str
    page_size: int
    memory: int
    cpus: int
    header: list[str]
    status: list[str]
    section_errors: dict[str, list[str]]
    collection: dict[str, Any] | None
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RegionState:
    """``[start, end)`` of the crashed kernel's physical memory and its state.

    ``state`` is one of ``saved-low`` (the hypervisor's copy of low memory),
    ``memory`` (reserved memory, read in place), ``released-saved`` (given back
    to the running kernel; read from the collection's output),
    ``released-lost`` (given back and not saved: unreadable), ``lost``
    (overwritten by the capture kernel or never copied), ``scratch`` (the
    hypervisor's save area), ``in-dump`` and ``not-in-dump`` (a collected file).
    """

    start: int
    end: int
    state: str
    detail: str = ""


def _source(prog: drgn.Program) -> DumpSource:
    source = dump_source(prog)
    if source is None:
        raise ValueError("not a hypervisor-assisted dump (the hvdump plugin did not recognise it)")
    return source


@takes_program_or_default
def hvdump_info(prog: drgn.Program) -> DumpInfo:
    """
    Describe the hypervisor-assisted dump behind *prog*.

    >>> info = hvdump_info()
    >>> info.kind, info.byteorder, info.cpus
    ('live', 'big', 4)

    :raises ValueError: if *prog* is not a hypervisor-assisted dump
    """
    src = _source(prog)
    h = src.header
    collection: dict[str, Any] | None = None
    cv = src.current_collection()
    if cv is not None:
        cv.refresh()
        mem_chunks = [c for c in cv.chunks if c.kind in ("rmo", "mem")]
        collection = {
            "output": str(cv.out),
            "format": cv.format,
            "done": cv.done,
            "chunks_saved": len(cv.durable_chunks),
            "chunks": len(cv.chunks),
            "bytes_saved": cv.durable.total(),
            "bytes_to_save": sum(c.size for c in mem_chunks),
            "bytes_released": cv.released.total(),
        }
    header: list[str] = []
    status: list[str] = []
    errors: dict[str, list[str]] = {}
    if h is not None:
        header, status = describe_dump_header(h), status_names(h.status)
        named = [("cpu", h.cpu), ("hpte", h.hpte), ("rmo", h.rmo)]
        errors = {name: section_error_names(s.error_flags) for name, s in named}
    elif src.fadump is not None:
        mem = src.fadump
        header, status = describe_fadump_mem(mem), status_names(mem.header.status)
        errors = {
            name: section_error_names(s.error_flags)
            for name, s in zip(section_names(mem), mem.sections, strict=True)
        }
    return DumpInfo(
        kind=src.kind,
        path=str(src.path),
        root=str(src.root) if src.root else None,
        byteorder=src.byteorder,
        page_size=src.page_size,
        memory=src.memory,
        cpus=len(src.cpu_states()),
        header=header,
        status=status,
        section_errors=errors,
        collection=collection,
        warnings=list(src.warnings),
    )


def _collected_regions(src: DumpSource) -> list[RegionState]:
    segments: list[tuple[int, int]] = []
    memory = src.memory
    gap = "not collected (see the manifest)"
    try:
        manifest = read_manifest(src.path.parent)
        segments = manifest.dump.ranges()
        memory = max(memory, manifest.source.memory or 0)
        level = manifest.dump.dump_level
        if level is not None and level > 1:
            gap = (
                f"left out by dump level {level} (page cache, user or free pages), or not collected"
            )
    except HvdumpError:
        if src.path.suffix != ".kdump":
            with ElfCore.open(src.path) as core:
                segments = [(ph.p_paddr, ph.p_paddr + ph.p_memsz) for ph in core.segments]
    out: list[RegionState] = []
    at = 0
    for a, b in sorted(segments):
        if a > at:
            out.append(RegionState(at, a, "not-in-dump", gap))
        out.append(RegionState(a, b, "in-dump"))
        at = b
    if at < memory:
        out.append(RegionState(at, memory, "not-in-dump", "the hypervisor's scratch area"))
    return out


@takes_program_or_default
def hvdump_regions(prog: drgn.Program) -> list[RegionState]:
    """
    The crashed kernel's physical memory, range by range, with where each is now.

    During a collection, released ranges show whether the collection saved
    them first (``released-saved``) or not (``released-lost``).

    >>> for r in hvdump_regions():
    ...     print(hex(r.start), hex(r.end), r.state)
    0x0 0x10000000 saved-low
    0x10000000 0x2f7f0000 memory
    0x2f7f0000 0x40000000 scratch

    :raises ValueError: if *prog* is not a hypervisor-assisted dump
    """
    src = _source(prog)
    if src.kind == "collected":
        return _collected_regions(src)
    released = src.released()
    cv = src.collection
    out: list[RegionState] = []
    for r in src.regions:
        if r.src is None:
            out.append(RegionState(r.start, r.end, r.kind, r.why))
            continue
        where = f"from the hypervisor's copy at {r.src:#x}" if r.kind == "saved-low" else "in place"
        for lo, hi, gone in split_ranges(released, r.src, r.src + r.end - r.start):
            start, end = r.start + lo - r.src, r.start + hi - r.src
            if not gone:
                out.append(RegionState(start, end, r.kind, where))
                continue
            assert cv is not None
            for a, b, saved in split_ranges(cv.durable, lo, hi):
                s, e = r.start + a - r.src, r.start + b - r.src
                if saved:
                    out.append(RegionState(s, e, "released-saved", f"read from {cv.dump_path}"))
                else:
                    out.append(RegionState(s, e, "released-lost", "released before it was saved"))
    return out


@takes_program_or_default
def hvdump_registers(prog: drgn.Program, cpu: int | None = None) -> list[CpuState]:
    """
    The registers the hypervisor saved for every CPU, or for *cpu* only.

    >>> hex(hvdump_registers(cpu=2)[0].regs["NIA"])
    '0xc000000000041c08'

    :raises ValueError: if *prog* is not a hypervisor-assisted dump, or *cpu*
        has no saved registers
    """
    states = _source(prog).cpu_states()
    if cpu is None:
        return states
    found = [s for s in states if s.cpu == cpu]
    if not found:
        have = ", ".join(str(s.cpu) for s in states) or "none"
        raise ValueError(f"CPU {cpu} has no saved registers (saved: {have})")
    return found


@takes_program_or_default
def hvdump_pt_regs(prog: drgn.Program, cpu: int) -> drgn.Object:
    """
    A CPU's saved registers as a ``struct pt_regs`` object, for
    :meth:`drgn.Program.stack_trace()`.

    >>> prog.stack_trace(hvdump_pt_regs(0))
    #0  cede_processor (...)

    :return: ``struct pt_regs``
    :raises ValueError: as :func:`hvdump_registers`
    """
    (state,) = hvdump_registers(prog, cpu)
    return pt_regs_object(prog, cpu_state_to_pt_regs(state), _source(prog).byteorder)


def pt_regs_object(prog: drgn.Program, regs: PtRegs, byteorder: ByteOrder) -> drgn.Object:
    """``regs`` as the kernel's ``struct pt_regs`` (for :meth:`drgn.Program.stack_trace`).

    The kernel's struct starts with the uapi registers; newer kernels have
    more members after them, left zero.
    """
    raw = PT_REGS_PPC64.pack(regs, byteorder)
    size = drgn.sizeof(prog.type("struct pt_regs"))
    return drgn.Object.from_bytes_(prog, "struct pt_regs", raw.ljust(size, b"\0"))


def _translator(prog: drgn.Program) -> HashTranslator:
    translator = prog.cache.get(CACHE_KEY)
    if not isinstance(translator, HashTranslator):
        source = dump_source(prog)
        translator = install_hash_translation(
            prog, source.hpte_bytes if source is not None else lambda: None
        )
    return translator


@takes_program_or_default
def hvdump_hpte(prog: drgn.Program, address: IntegerLike) -> Translation:
    """
    Translate a kernel effective address on a hash-MMU kernel, and find the
    saved hashed page table entries that map it.

    Linux's page tables (``swapper_pg_dir``) are asked first, the HPTEs the
    hypervisor saved second; the result says which answered and where the
    two disagree.

    >>> print(hvdump_hpte(prog["hvdemo_stats"].value_()).describe())
    0xd000000000230000 -> 0xc5a0000 (64 KiB page, from page tables)
      PTE 0x000c5a0000000101 at physical 0x810118
      HPTE slot 52913 (group 0x19d6 primary, index 1): ...

    :param address: effective (virtual) address
    """
    return _translator(prog).translate(operator.index(address))


@takes_program_or_default
def hvdump_hpte_lines(prog: drgn.Program, address: IntegerLike) -> list[str]:
    """What ``%hvdump hpte ADDR`` prints: :func:`hvdump_hpte`, described line by line."""
    return hvdump_hpte(prog, address).describe().splitlines()


@takes_program_or_default
def hvdump_hash_disagreements(prog: drgn.Program) -> list[Disagreement]:
    """
    Every page of the vmalloc, module and ioremap range that the kernel's
    page tables and the saved HPTEs map differently (stale hash entries of
    freed pages, pages never faulted into the hash table, different pages).

    >>> for d in hvdump_hash_disagreements():
    ...     print(d.describe())
    """
    return _translator(prog).disagreements()
