"""The memory structure fadump registers with the firmware (``struct rtas_fadump_mem_struct``).

Firmware-assisted dump keeps phyp dump's wire format: the same 40-byte
section header (:class:`~drgn_hvdump.formats.dump_header.SectionHeader`) and
40-byte sections (:class:`~drgn_hvdump.formats.dump_header.DumpSection`),
always big-endian. What differs is the list of sections: up to ten, in the
order the kernel registered them: CPU state data (type ``0x0001``), the HPTE
region (``0x0002``), one to seven boot-memory regions (``0x0011``, several on
kernels since 6.10) and, on those kernels, an OS-defined parameter area
(``0x0100``) that the firmware leaves in place. After a crash the capture
kernel finds the structure as the firmware filled it (status flags, each
section's error flags and bytes dumped) in ``/proc/device-tree/rtas/ibm,kernel-dump``.

Sources: Linux ``arch/powerpc/platforms/pseries/rtas-fadump.{c,h}`` and QEMU
``hw/ppc/spapr_fadump.c`` (facts only).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from drgn_hvdump.errors import FormatError
from drgn_hvdump.formats.dump_header import (
    DUMP_ERROR_FLAG,
    DUMP_REQUEST_FLAG,
    DUMP_SECTION,
    FIRST_SECTION_OFFSET,
    SECTION_HEADER,
    SOURCE_CPU,
    SOURCE_HPTE,
    SOURCE_RMO,
    DumpSection,
    SectionHeader,
    check_section_header,
    describe_section,
    section_error_names,
    status_names,
)

__all__ = [
    "MAX_BOOT_MEM_REGIONS",
    "MAX_SECTIONS",
    "SOURCE_BOOT_MEMORY",
    "SOURCE_PARAM_AREA",
    "FadumpMem",
    "build_fadump_mem",
    "describe_fadump_mem",
    "fadump_registration",
    "fadump_validity",
    "parse_fadump_mem",
    "section_name",
    "section_names",
]

SOURCE_BOOT_MEMORY = SOURCE_RMO
"""fadump's name for the real-mode region: boot memory, copied by the firmware."""
SOURCE_PARAM_AREA = 0x0100
"""The OS-defined parameter area (extra capture-kernel arguments); not copied."""
MAX_SECTIONS = 10
MAX_BOOT_MEM_REGIONS = 7
"""Ten sections less CPU state, HPTE and the parameter area."""

_NAMES = {
    SOURCE_CPU: "cpu",
    SOURCE_HPTE: "hpte",
    SOURCE_BOOT_MEMORY: "boot",
    SOURCE_PARAM_AREA: "param",
}


@dataclass(frozen=True)
class FadumpMem:
    """The section header and the sections, in registration order."""

    header: SectionHeader
    sections: tuple[DumpSection, ...]

    def of_type(self, source_type: int) -> tuple[DumpSection, ...]:
        """The sections of one source type, in order (boot memory may have several)."""
        return tuple(s for s in self.sections if s.source_type == source_type)

    def one(self, source_type: int) -> DumpSection | None:
        """The section of a type that occurs at most once (CPU, HPTE, parameter area)."""
        found = self.of_type(source_type)
        return found[0] if found else None

    @property
    def boot_regions(self) -> tuple[DumpSection, ...]:
        """The boot-memory regions, in the order their copies follow each other."""
        return self.of_type(SOURCE_BOOT_MEMORY)

    @property
    def boot_memory_size(self) -> int:
        """Bytes of boot memory registered (the regions' source lengths)."""
        return sum(s.source_length for s in self.boot_regions)


def section_name(s: DumpSection, index: int = 0) -> str:
    """``cpu``, ``hpte``, ``param``, ``boot0``, ``boot1``… or the type in hex."""
    name = _NAMES.get(s.source_type, f"type{s.source_type:#06x}")
    return f"{name}{index}" if s.source_type == SOURCE_BOOT_MEMORY else name


def section_names(mem: FadumpMem) -> list[str]:
    """Each section's :func:`section_name`, boot regions numbered in order."""
    names = []
    boot = 0
    for s in mem.sections:
        names.append(section_name(s, boot))
        boot += s.source_type == SOURCE_BOOT_MEMORY
    return names


def build_fadump_mem(mem: FadumpMem) -> bytes:
    """The big-endian bytes of ``mem``, its section count and first offset made consistent."""
    header = replace(
        mem.header, num_of_sections=len(mem.sections), first_offset_section=FIRST_SECTION_OFFSET
    )
    return SECTION_HEADER.pack(header, "big") + b"".join(
        DUMP_SECTION.pack(s, "big") for s in mem.sections
    )


def parse_fadump_mem(buf: bytes | bytearray | memoryview, path: str | None = None) -> FadumpMem:
    """Read and check a fadump memory structure.

    Checks the size, the version (recognising a byte-swapped one), the
    section count (1 to 10, all present), the first section's offset, the
    source types (known ones only; CPU, HPTE and the parameter area at most
    once; one to seven boot-memory regions). Flags and lengths are left to
    :func:`fadump_validity`.
    """
    size = len(buf)
    if size < SECTION_HEADER.size:
        raise FormatError(
            f"truncated fadump memory structure: needs {SECTION_HEADER.size} bytes "
            f"for the header, has {size}",
            path=path,
            offset=0,
        )
    header = SECTION_HEADER.unpack_from(buf, 0, "big", path=path)
    check_section_header(
        header,
        name="fadump memory structure",
        noun="structure",
        counts=range(1, MAX_SECTIONS + 1),
        path=path,
    )
    count, first = header.num_of_sections, header.first_offset_section
    need = first + count * DUMP_SECTION.size
    if size < need:
        raise FormatError(
            f"truncated fadump memory structure: {count} sections need {need} bytes, has {size}",
            path=path,
            offset=size,
        )
    sections = tuple(
        DUMP_SECTION.unpack_from(buf, first + i * DUMP_SECTION.size, "big", path=path)
        for i in range(count)
    )
    _check_types(sections, path)
    return FadumpMem(header, sections)


def _check_types(sections: tuple[DumpSection, ...], path: str | None) -> None:
    seen: dict[int, int] = {}
    for i, s in enumerate(sections):
        offset = (
            FIRST_SECTION_OFFSET + i * DUMP_SECTION.size + DUMP_SECTION.offset_of("source_type")
        )
        if s.source_type not in _NAMES:
            raise FormatError(
                f"section {i} has unknown source type {s.source_type:#06x}",
                path=path,
                offset=offset,
            )
        seen[s.source_type] = seen.get(s.source_type, 0) + 1
        limit = MAX_BOOT_MEM_REGIONS if s.source_type == SOURCE_BOOT_MEMORY else 1
        if seen[s.source_type] > limit:
            raise FormatError(
                f"section {i}: more than {limit} {_NAMES[s.source_type]} section(s)",
                path=path,
                offset=offset,
            )
    if SOURCE_BOOT_MEMORY not in seen:
        raise FormatError(
            "no boot-memory section (type 0x0011)", path=path, offset=FIRST_SECTION_OFFSET
        )


def fadump_registration(
    *,
    cpu_size: int,
    hpte_size: int,
    boot_regions: list[tuple[int, int]],
    dest_base: int,
    param_area: tuple[int, int] | None = None,
    page_size: int = 1,
) -> FadumpMem:
    """The structure a kernel registers: request flags set, the CPU state data and HPTE
    from ``dest_base`` (the reserved area's start), then the boot-memory copies back to
    back from the next ``page_size`` boundary (Linux aligns them so the capture kernel
    can mmap them), the parameter area left where it is."""
    if not 1 <= len(boot_regions) <= MAX_BOOT_MEM_REGIONS:
        raise ValueError(
            f"1 to {MAX_BOOT_MEM_REGIONS} boot-memory regions, got {len(boot_regions)}"
        )
    dest = dest_base
    sections: list[DumpSection] = []

    def add(source_type: int, source: int, length: int, to: int) -> None:
        sections.append(
            DumpSection(
                dump_flags=DUMP_REQUEST_FLAG,
                source_type=source_type,
                source_address=source,
                source_length=length,
                destination_address=to,
            )
        )

    add(SOURCE_CPU, 0, cpu_size, dest)
    dest += cpu_size
    add(SOURCE_HPTE, 0, hpte_size, dest)
    dest += hpte_size
    dest = -(-dest // page_size) * page_size
    for start, length in boot_regions:
        add(SOURCE_BOOT_MEMORY, start, length, dest)
        dest += length
    if param_area is not None:
        add(SOURCE_PARAM_AREA, param_area[0], param_area[1], param_area[0])
    return FadumpMem(SectionHeader(num_of_sections=len(sections)), tuple(sections))


def fadump_validity(mem: FadumpMem) -> tuple[bool, str]:
    """Whether the firmware's dump can be used, as the capture kernel decides, with the reason.

    Not valid: the status has the error flag, or the CPU state or a boot-memory
    region has error flags. Incomplete: a boot-memory region copied short, or
    no CPU state copied. HPTE and parameter-area errors are ignored, as Linux
    ignores them.
    """
    if mem.header.status & DUMP_ERROR_FLAG:
        return False, "dump taken by platform is not valid: status has the error flag"
    cpu = mem.one(SOURCE_CPU)
    checked = ([("CPU state", cpu)] if cpu is not None else []) + [
        (f"boot memory region {i}", s) for i, s in enumerate(mem.boot_regions)
    ]
    for name, s in checked:
        if s.error_flags:
            flags = ", ".join(section_error_names(s.error_flags))
            return False, f"dump taken by platform is not valid: {name} errors {flags}"
    for i, s in enumerate(mem.boot_regions):
        if s.length_copied != s.source_length:
            return False, (
                f"dump taken by platform is incomplete: boot memory region {i} copied "
                f"{s.length_copied:#x} of {s.source_length:#x} bytes"
            )
    if cpu is None or cpu.length_copied == 0:
        return False, "dump taken by platform is incomplete: no CPU state copied"
    return True, "dump is valid"


def describe_fadump_mem(mem: FadumpMem) -> list[str]:
    """Human-readable lines: the status and each section's range, copy and errors."""
    status = ", ".join(status_names(mem.header.status)) or "none"
    lines = [f"status {mem.header.status:#06x} ({status}), {len(mem.sections)} sections"]
    for name, s in zip(section_names(mem), mem.sections, strict=True):
        lines.append(describe_section(name, s))
    return lines
