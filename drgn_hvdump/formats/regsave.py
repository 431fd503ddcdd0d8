"""The register save area: the CPU state the hypervisor saves on a crash.

Always big-endian. A 16-byte header (magic ``"REGSAVE\\0"``, version, offset
of the CPU count), a 32-bit CPU count at that offset, then 16-byte entries
``(id, value)`` starting right after the count, so generally not 8-byte
aligned. An id is up to 8 ASCII characters packed big-endian and padded with
NULs. Each CPU's entries start with ``CPUSTRT`` (CPU id in the low 32 bits)
and end with ``CPUEND``.

Registers the reader does not know are kept (the simulator and ``%``
commands show them); :func:`cpu_state_to_pt_regs` uses the ones fadump uses.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from drgn_hvdump.errors import FormatError
from drgn_hvdump.formats.elfcore import NT_PRSTATUS, Note, PtRegs, build_prstatus
from drgn_hvdump.formats.layout import ByteOrder, Layout, u32, u64

__all__ = [
    "CPUEND",
    "CPUSTRT",
    "POWER6_REGISTERS",
    "QEMU_FADUMP_REGISTERS",
    "REGSAVE_ENTRY",
    "REGSAVE_HEADER",
    "REGSAVE_MAGIC",
    "CpuState",
    "RegEntry",
    "RegsaveHeader",
    "build_regsave",
    "cpu_state_to_pt_regs",
    "parse_regsave",
    "prstatus_notes",
    "pt_regs_to_cpu_state",
    "reg_id",
    "reg_name",
    "regsave_size",
]


@dataclass(frozen=True)
class RegsaveHeader:
    """The register save area's header."""

    magic: int = u64()
    version: int = u32()
    num_cpu_offset: int = u32()


@dataclass(frozen=True)
class RegEntry:
    """One saved register: packed ASCII id and value."""

    id: int = u64()
    value: int = u64()


@dataclass(frozen=True)
class _CpuCount:
    count: int = u32()


REGSAVE_HEADER = Layout(RegsaveHeader, size=16, name="register save area header")
REGSAVE_ENTRY = Layout(RegEntry, size=16, name="register entry")
_CPU_COUNT = Layout(_CpuCount, size=4, name="CPU count")

_ID_LEN = 8
_ID_MASK = (1 << 32) - 1


def reg_id(name: str) -> int:
    """The packed id of register ``name`` (``"GPR05"`` -> 0x4750523035000000).

    Also accepts what :func:`reg_name` gives for ids that are not names
    (``"0x"`` and 16 hex digits).
    """
    if len(name) == 18 and name.startswith("0x"):
        return int(name[2:], 16)
    if not (0 < len(name) <= _ID_LEN and all("!" <= ch <= "~" for ch in name)):
        raise ValueError(f"register name {name!r} is not 1..8 printable ASCII characters")
    return int.from_bytes(name.encode("ascii").ljust(_ID_LEN, b"\0"), "big")


@functools.lru_cache(maxsize=4096)
def reg_name(id_: int) -> str:
    """The name packed in ``id_``; other ids come back as ``0x`` and 16 hex digits.

    A name is 1..8 printable ASCII characters other than space, NUL-padded.
    """
    raw = id_.to_bytes(_ID_LEN, "big")
    text = raw.rstrip(b"\0")
    if text and b"\0" not in text and all(0x20 < b < 0x7F for b in text):
        return text.decode("ascii")
    return f"0x{id_:016x}"


REGSAVE_MAGIC = reg_id("REGSAVE")
CPUSTRT = reg_id("CPUSTRT")
CPUEND = reg_id("CPUEND")
_SWAPPED_MAGIC = int.from_bytes(REGSAVE_MAGIC.to_bytes(8, "big"), "little")

POWER6_REGISTERS: tuple[str, ...] = (
    *(f"GPR{n:02d}" for n in range(32)),
    "NIA",
    "MSR",
    "CTR",
    "LR",
    "XER",
    "CR",
    "DAR",
    "DSISR",
    "SRR0",
    "SRR1",
    "PVR",
    "PIR",
    "DABR",
    "DABRX",
    "DSCR",
    "SPRG0",
    "SPRG1",
    "SPRG2",
    "SPRG3",
    "FPSCR",
    "VRSAVE",
    "VSCR",
)

QEMU_FADUMP_REGISTERS: tuple[str, ...] = (
    *[
        "ACOP",
        "AMR",
        "BESCR",
        "CFAR",
        "CIABR",
        "CR",
        "CTR",
        "CTRL",
        "DABR",
        "DABRX",
        "DAR",
        "DAWR0",
        "DAWR1",
        "DAWRX0",
    ],
    *["DAWRX1", "DPDES", "DSCR", "DSISR", "EBBHR", "EBBRR", "FPSCR", "FSCR"],
    *(f"GPR{n:02d}" for n in range(32)),
    *[
        "IAMR",
        "IC",
        "LR",
        "MSR",
        "NIA",
        "PIR",
        "PSPB",
        "PVR",
        "RPR",
        "SPURR",
        "SRR0",
        "SRR1",
        "TAR",
        "TEXASR",
        "TFHAR",
        "TFIAR",
    ],
    *["TIR", "UAMOR", "VRSAVE", "VSCR", "VTB", "WORT", "XER"],
)
"""The registers of each CPU in QEMU 11's fadump CPU state data (``hw/ppc/spapr_fadump.c``),
in its order: sorted by name, as captured from a real run (tests/data/qemu-fadump)."""
"""A POWER6-era register list: the names fadump maps plus common SPRs.

What PowerVM firmware on POWER6 emitted exactly is not documented in what we
have; QEMU's (POWER9/10-flavoured) list is a superset of these names.
"""


@dataclass(frozen=True)
class CpuState:
    """One CPU's saved registers by name, in the order they were saved."""

    cpu: int
    regs: Mapping[str, int] = field(default_factory=dict)


def regsave_size(ncpus: int, nregs: int, num_cpu_offset: int = REGSAVE_HEADER.size) -> int:
    """Bytes of a save area holding ``ncpus`` CPUs of ``nregs`` registers each."""
    return num_cpu_offset + _CPU_COUNT.size + ncpus * (nregs + 2) * REGSAVE_ENTRY.size


def build_regsave(
    cpus: Iterable[CpuState], version: int = 1, num_cpu_offset: int = REGSAVE_HEADER.size
) -> bytes:
    """The big-endian save area for ``cpus`` (zero bytes between header and count, if any)."""
    if num_cpu_offset < REGSAVE_HEADER.size:
        raise ValueError(f"num_cpu_offset must be at least {REGSAVE_HEADER.size}")
    cpu_list = list(cpus)
    out = bytearray(REGSAVE_HEADER.pack(RegsaveHeader(REGSAVE_MAGIC, version, num_cpu_offset)))
    out += bytes(num_cpu_offset - len(out))
    out += _CPU_COUNT.pack(_CpuCount(len(cpu_list)))
    pack = REGSAVE_ENTRY.pack
    for state in cpu_list:
        if not 0 <= state.cpu <= _ID_MASK:
            raise ValueError(f"CPU id {state.cpu} does not fit in 32 bits")
        out += pack(RegEntry(CPUSTRT, state.cpu))
        for name, value in state.regs.items():
            out += pack(RegEntry(reg_id(name), value))
        out += pack(RegEntry(CPUEND, state.cpu))
    return bytes(out)


def parse_regsave(
    buf: bytes | bytearray | memoryview, path: str | None = None, offset: int = 0
) -> list[CpuState]:
    """Read the save area at ``offset`` of ``buf``; errors name the offset of the bad entry.

    Bytes after the last ``CPUEND`` are ignored (the area is sized for the
    maximum CPU count and QEMU leaves a tail unwritten).
    """
    buf = memoryview(buf).cast("B")
    if len(buf) - offset < REGSAVE_HEADER.size:
        raise FormatError(
            f"truncated register save area: needs {REGSAVE_HEADER.size} header bytes, "
            f"{max(0, len(buf) - offset)} left",
            path=path,
            offset=offset,
        )
    hdr = REGSAVE_HEADER.unpack_from(buf, offset, "big")
    if hdr.magic != REGSAVE_MAGIC:
        if hdr.magic == _SWAPPED_MAGIC:
            raise FormatError(
                "little-endian register save area: hypervisor structures are big-endian",
                path=path,
                offset=offset,
            )
        raise FormatError(
            f"bad register save area magic {hdr.magic:#018x}, expected "
            f"{REGSAVE_MAGIC:#018x} ('REGSAVE')",
            path=path,
            offset=offset,
        )
    count_at = offset + hdr.num_cpu_offset
    if hdr.num_cpu_offset < REGSAVE_HEADER.size or count_at + _CPU_COUNT.size > len(buf):
        raise FormatError(
            f"CPU count offset {hdr.num_cpu_offset:#x} is outside the save area "
            f"({len(buf) - offset:#x} bytes)",
            path=path,
            offset=offset + REGSAVE_HEADER.offset_of("num_cpu_offset"),
        )
    count = _CPU_COUNT.unpack_from(buf, count_at, "big").count
    pos = count_at + _CPU_COUNT.size
    # Every CPU takes at least CPUSTRT and CPUEND: refuse a count that cannot fit
    # before reading it entry by entry.
    if count * 2 * REGSAVE_ENTRY.size > len(buf) - pos:
        raise FormatError(
            f"{count} CPUs cannot fit in the {len(buf) - pos:#x} bytes after the CPU count",
            path=path,
            offset=count_at,
        )
    cpus: list[CpuState] = []
    for _ in range(count):
        entry = _entry(buf, pos, path)
        if entry.id != CPUSTRT:
            raise FormatError(
                f"expected CPUSTRT for CPU {len(cpus)} of {count}, found {reg_name(entry.id)}",
                path=path,
                offset=pos,
            )
        cpu = entry.value & _ID_MASK
        regs: dict[str, int] = {}
        pos += REGSAVE_ENTRY.size
        while True:
            entry = _entry(buf, pos, path, cpu)
            pos += REGSAVE_ENTRY.size
            if entry.id == CPUEND:
                break
            if entry.id == CPUSTRT:
                raise FormatError(
                    f"CPU {cpu} has no CPUEND before the next CPUSTRT",
                    path=path,
                    offset=pos - REGSAVE_ENTRY.size,
                )
            regs[reg_name(entry.id)] = entry.value
        cpus.append(CpuState(cpu, regs))
    return cpus


def _entry(buf: memoryview, pos: int, path: str | None, cpu: int | None = None) -> RegEntry:
    if len(buf) - pos < REGSAVE_ENTRY.size:
        where = "" if cpu is None else f" (CPU {cpu} has no CPUEND)"
        raise FormatError(
            f"truncated register entry: {len(buf) - pos} of {REGSAVE_ENTRY.size} bytes{where}",
            path=path,
            offset=pos,
        )
    return REGSAVE_ENTRY.unpack_from(buf, pos, "big")


_PT_REGS_FIELDS = {
    "NIA": "nip",
    "MSR": "msr",
    "CTR": "ctr",
    "LR": "link",
    "XER": "xer",
    "CR": "ccr",
    "DAR": "dar",
    "DSISR": "dsisr",
}
_GPR_INDEX = {f"GPR{n:02d}": n for n in range(32)}


def cpu_state_to_pt_regs(state: CpuState) -> PtRegs:
    """The ``pt_regs`` fadump builds from a CPU's saved registers; others stay zero."""
    gpr = [0] * 32
    named: dict[str, int] = {}
    for name, value in state.regs.items():
        n = _GPR_INDEX.get(name)
        if n is not None:
            gpr[n] = value
        elif name in _PT_REGS_FIELDS:
            named[_PT_REGS_FIELDS[name]] = value
    return PtRegs(gpr=tuple(gpr), **named)


def prstatus_notes(
    cpus: Iterable[tuple[int, PtRegs]], byteorder: ByteOrder, *, numbered: bool = True
) -> list[Note]:
    """One ``CORE``/``NT_PRSTATUS`` note per CPU, in the order given, ``pr_pid`` = CPU + 1.

    That is where drgn looks for an on-CPU task's registers in a kernel core
    whose VMCOREINFO has no ``CRASHTIME`` (QEMU's ``dump-guest-memory``
    numbering); with ``CRASHTIME`` it reads the crashed kernel's
    ``crash_notes`` instead, and the plugin answers those. ``numbered=False``
    gives every note ``pr_pid`` 0, as fadump's capture kernel writes them.
    """
    return [
        Note("CORE", NT_PRSTATUS, build_prstatus(regs, byteorder, pid=cpu + 1 if numbered else 0))
        for cpu, regs in cpus
    ]


def pt_regs_to_cpu_state(cpu: int, regs: PtRegs, pir: int | None = None) -> CpuState:
    """What the firmware saves for a CPU whose state ``regs`` shows (an ``NT_PRSTATUS`` note's).

    The inverse of :func:`cpu_state_to_pt_regs` for every register both
    hold; the registers ``pt_regs`` does not carry (SRRs, SPRGs, FPSCR, ...)
    are saved as zero, and ``PIR`` is the CPU number unless given.
    """
    named = {name: getattr(regs, attr) for name, attr in _PT_REGS_FIELDS.items()}
    values: dict[str, int] = {}
    for name in POWER6_REGISTERS:
        n = _GPR_INDEX.get(name)
        if n is not None:
            values[name] = regs.gpr[n]
        elif name in named:
            values[name] = named[name]
        elif name == "PIR":
            values[name] = cpu if pir is None else pir
        else:
            values[name] = 0
    return CpuState(cpu, values)
