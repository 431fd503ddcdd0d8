"""The dump header registered with the hypervisor (``struct phyp_dump_header``).

160 bytes, always big-endian: a 40-byte header and three 40-byte sections
(CPU state, HPTEs, low memory "RMO"). The kernel registers it with the
request flag set and zero lengths copied; after a crash the hypervisor fills
in the status, per-section error flags and bytes copied, and the capture
kernel finds the filled copy in ``/proc/device-tree/rtas/ibm,kernel-dump``.
The same wire format is fadump's ``rtas_fadump_mem_struct``.
"""

from __future__ import annotations

from dataclasses import dataclass

from drgn_hvdump.errors import FormatError
from drgn_hvdump.formats.layout import Layout, nested, u16, u32, u64

__all__ = [
    "DUMP_ERROR_FLAG",
    "DUMP_HEADER",
    "DUMP_HEADER_VERSION",
    "DUMP_PERFORMED",
    "DUMP_REQUEST_FLAG",
    "DUMP_SECTION",
    "DUMP_TRIGGERED",
    "FIRST_SECTION_OFFSET",
    "HEADER_SIZE",
    "NUM_SECTIONS",
    "RMO_SIZE",
    "SECTION_DEST_TOO_SMALL",
    "SECTION_HEADER",
    "SECTION_INVALID_DATA_TYPE",
    "SECTION_INVALID_DEST_ADDR",
    "SECTION_INVALID_SOURCE_ADDR",
    "SECTION_LENGTH_EXCEEDS_SOURCE",
    "SECTION_SIZE",
    "SOURCE_CPU",
    "SOURCE_HPTE",
    "SOURCE_RMO",
    "DumpHeader",
    "DumpSection",
    "SectionHeader",
    "build_dump_header",
    "check_section_header",
    "describe_dump_header",
    "describe_section",
    "is_dump_valid",
    "parse_dump_header",
    "registration_header",
    "section_error_names",
    "source_type_name",
    "status_names",
]

DUMP_HEADER_VERSION = 1
NUM_SECTIONS = 3
FIRST_SECTION_OFFSET = 0x28

DUMP_REQUEST_FLAG = 0x0001
"""Section ``dump_flags``: the kernel asks for this section to be saved."""
DUMP_ERROR_FLAG = 0x2000
DUMP_TRIGGERED = 0x4000
DUMP_PERFORMED = 0x8000

SOURCE_CPU = 0x0001
SOURCE_HPTE = 0x0002
SOURCE_RMO = 0x0011

# Per-section error flags as QEMU's pseries fadump sets them.
SECTION_INVALID_DATA_TYPE = 0x8000
SECTION_INVALID_SOURCE_ADDR = 0x4000
SECTION_LENGTH_EXCEEDS_SOURCE = 0x2000
SECTION_INVALID_DEST_ADDR = 0x1000
SECTION_DEST_TOO_SMALL = 0x0800

RMO_SIZE = 256 << 20
"""What phyp_dump always registers as the low-memory section's length."""

_STATUS_NAMES = (
    (DUMP_PERFORMED, "PERFORMED"),
    (DUMP_TRIGGERED, "TRIGGERED"),
    (DUMP_ERROR_FLAG, "ERROR"),
)
_SECTION_ERROR_NAMES = (
    (SECTION_INVALID_DATA_TYPE, "INVALID_DATA_TYPE"),
    (SECTION_INVALID_SOURCE_ADDR, "INVALID_SOURCE_ADDR"),
    (SECTION_LENGTH_EXCEEDS_SOURCE, "LENGTH_EXCEEDS_SOURCE"),
    (SECTION_INVALID_DEST_ADDR, "INVALID_DEST_ADDR"),
    (SECTION_DEST_TOO_SMALL, "DEST_TOO_SMALL"),
)
_SOURCE_NAMES = {SOURCE_CPU: "CPU", SOURCE_HPTE: "HPTE", SOURCE_RMO: "RMO"}


@dataclass(frozen=True)
class DumpSection:
    """``struct dump_section``: one region the hypervisor copies on a crash."""

    dump_flags: int = u32()
    source_type: int = u16()
    error_flags: int = u16()
    source_address: int = u64()
    source_length: int = u64()
    length_copied: int = u64()
    destination_address: int = u64()


DUMP_SECTION = Layout(DumpSection, size=40, name="dump_section")
SECTION_SIZE = DUMP_SECTION.size


@dataclass(frozen=True)
class SectionHeader:
    """The 40 bytes before the sections, the same in phyp dump and fadump
    (``struct rtas_fadump_section_header``): format version, section count,
    status flags, offset of the first section, the unused disk-dump fields
    and the automatic-reboot time."""

    version: int = u32(DUMP_HEADER_VERSION)
    num_of_sections: int = u16(NUM_SECTIONS)
    status: int = u16()
    first_offset_section: int = u32(FIRST_SECTION_OFFSET)
    dump_disk_section: int = u32()
    block_num_dd: int = u64()
    num_of_blocks_dd: int = u64()
    offset_dd: int = u32()
    maxtime_to_auto: int = u32()


SECTION_HEADER = Layout(SectionHeader, size=FIRST_SECTION_OFFSET, name="dump_section_header")


@dataclass(frozen=True)
class DumpHeader(SectionHeader):
    """``struct phyp_dump_header``: the section header and its three sections."""

    cpu: DumpSection = nested(DUMP_SECTION)
    hpte: DumpSection = nested(DUMP_SECTION)
    rmo: DumpSection = nested(DUMP_SECTION)

    def sections(self) -> tuple[DumpSection, DumpSection, DumpSection]:
        """The sections in the order the header holds them."""
        return (self.cpu, self.hpte, self.rmo)


DUMP_HEADER = Layout(DumpHeader, size=160, name="phyp_dump_header")
HEADER_SIZE = DUMP_HEADER.size

assert DUMP_HEADER.offset_of("cpu") == FIRST_SECTION_OFFSET

_BYTESWAPPED_VERSION = int.from_bytes(DUMP_HEADER_VERSION.to_bytes(4, "big"), "little")
_EXPECTED_SOURCES = (("cpu", SOURCE_CPU), ("hpte", SOURCE_HPTE), ("rmo", SOURCE_RMO))


def build_dump_header(h: DumpHeader) -> bytes:
    """The 160 big-endian bytes of ``h``."""
    return DUMP_HEADER.pack(h, "big")


def check_section_header(
    h: SectionHeader, *, name: str, noun: str, counts: range, path: str | None, offset: int = 0
) -> None:
    """Check the version (recognising a byte-swapped one), the section count (one
    of ``counts``) and the first section's offset of a header read at ``offset``;
    ``name`` and ``noun`` say what holds it in the error."""
    where = SECTION_HEADER.offset_of
    if h.version != DUMP_HEADER_VERSION:
        raise FormatError(
            f"little-endian {noun}: hypervisor structures are big-endian"
            if h.version == _BYTESWAPPED_VERSION
            else f"{name} version {h.version:#x}, expected {DUMP_HEADER_VERSION}",
            path=path,
            offset=offset + where("version"),
        )
    if h.num_of_sections not in counts:
        expected = str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
        raise FormatError(
            f"{name} has {h.num_of_sections} sections, expected {expected}",
            path=path,
            offset=offset + where("num_of_sections"),
        )
    if h.first_offset_section != FIRST_SECTION_OFFSET:
        raise FormatError(
            f"first section at {h.first_offset_section:#x}, expected {FIRST_SECTION_OFFSET:#x}",
            path=path,
            offset=offset + where("first_offset_section"),
        )


def parse_dump_header(
    buf: bytes | bytearray | memoryview, path: str | None = None, offset: int = 0
) -> DumpHeader:
    """Read and check a dump header at ``offset`` of ``buf``.

    Checks the size, version (recognising a byte-swapped one), the number of
    sections, the offset of the first section and the sections' source types.
    Flags and lengths are left to :func:`is_dump_valid`.
    """
    if len(buf) - offset < HEADER_SIZE:
        raise FormatError(
            f"truncated dump header: needs {HEADER_SIZE} bytes, {max(0, len(buf) - offset)} left",
            path=path,
            offset=offset,
        )
    h = DUMP_HEADER.unpack_from(buf, offset, "big", path=path)
    one_count = range(NUM_SECTIONS, NUM_SECTIONS + 1)
    check_section_header(
        h, name="dump header", noun="header", counts=one_count, path=path, offset=offset
    )
    where = DUMP_HEADER.offset_of
    for name, expected in _EXPECTED_SOURCES:
        section: DumpSection = getattr(h, name)
        if section.source_type != expected:
            raise FormatError(
                f"{name} section has source type {section.source_type:#06x}, "
                f"expected {expected:#06x} ({source_type_name(expected)})",
                path=path,
                offset=offset + where(f"{name}.source_type"),
            )
    return h


def registration_header(cpu_size: int, hpte_size: int, rmo_size: int, dest_base: int) -> DumpHeader:
    """The header the kernel registers: request flags set, destinations consecutive from ``dest_base``."""

    def section(source_type: int, source_address: int, length: int, dest: int) -> DumpSection:
        return DumpSection(
            dump_flags=DUMP_REQUEST_FLAG,
            source_type=source_type,
            source_address=source_address,
            source_length=length,
            destination_address=dest,
        )

    return DumpHeader(
        cpu=section(SOURCE_CPU, 0, cpu_size, dest_base),
        hpte=section(SOURCE_HPTE, 0, hpte_size, dest_base + cpu_size),
        rmo=section(SOURCE_RMO, 0, rmo_size, dest_base + cpu_size + hpte_size),
    )


def _flag_names(value: int, table: tuple[tuple[int, str], ...]) -> list[str]:
    names = [name for bit, name in table if value & bit]
    rest = value & ~sum(bit for bit, _ in table)
    if rest:
        names.append(f"{rest:#06x}")
    return names


def status_names(status: int) -> list[str]:
    """Names of the header status flags set in ``status`` (unknown bits in hex)."""
    return _flag_names(status, _STATUS_NAMES)


def section_error_names(error_flags: int) -> list[str]:
    """Names of a section's error flags (unknown bits in hex)."""
    return _flag_names(error_flags, _SECTION_ERROR_NAMES)


def source_type_name(source_type: int) -> str:
    """``CPU``, ``HPTE``, ``RMO``, or the number in hex."""
    return _SOURCE_NAMES.get(source_type, f"{source_type:#06x}")


def is_dump_valid(h: DumpHeader) -> tuple[bool, str]:
    """Whether the hypervisor's dump can be used, as fadump decides it, with the reason.

    Not valid: the status has the error flag, or the CPU or RMO section has
    error flags. Incomplete: fewer RMO bytes copied than requested, or no CPU
    state copied. HPTE errors are ignored, as fadump ignores them.
    """
    if h.status & DUMP_ERROR_FLAG:
        return False, "dump taken by platform is not valid: status has the error flag"
    for name, section in (("CPU", h.cpu), ("RMO", h.rmo)):
        if section.error_flags:
            flags = ", ".join(section_error_names(section.error_flags))
            return False, f"dump taken by platform is not valid: {name} section errors {flags}"
    if h.rmo.length_copied != h.rmo.source_length:
        return False, (
            f"dump taken by platform is incomplete: RMO copied {h.rmo.length_copied:#x} "
            f"of {h.rmo.source_length:#x} bytes"
        )
    if h.cpu.length_copied == 0:
        return False, "dump taken by platform is incomplete: no CPU state copied"
    return True, "dump is valid"


def describe_dump_header(h: DumpHeader) -> list[str]:
    """Human-readable lines: the status and each section's range, copy and errors."""
    status = ", ".join(status_names(h.status)) or "none"
    lines = [f"status {h.status:#06x} ({status})"]
    lines += [describe_section(source_type_name(s.source_type), s) for s in h.sections()]
    return lines


def describe_section(name: str, s: DumpSection) -> str:
    """One line: the section's source range, destination, bytes copied, flags and errors."""
    errors = ", ".join(section_error_names(s.error_flags)) or "none"
    return (
        f"{name}: source {s.source_address:#x}+{s.source_length:#x} -> "
        f"{s.destination_address:#x}, copied {s.length_copied:#x}, "
        f"flags {s.dump_flags:#x}, errors {errors}"
    )
