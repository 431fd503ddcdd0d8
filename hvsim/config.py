"""The fixed description of a simulated LPAR (:class:`LparConfig`) and its JSON form.

What a configuration fixes never changes for the life of the LPAR: the
machine (memory, CPUs), the kernel it runs (byte order, page size, release),
the seed its memory content is generated from, and how the firmware and the
kernel behave (dump support, ``phyp_dump=``, the reserve size, the release
quirks). Everything that changes (life-cycle state, dump header, released
ranges) lives in the LPAR's ``state.json``, see :mod:`hvsim.store`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from drgn_hvdump.units import format_size, parse_size

from .pages import BUSY_MIX, PageMix

__all__ = [
    "DEFAULT_RESERVE_SIZE",
    "DUMP_KINDS",
    "MAX_BOOT_REGIONS",
    "MAX_CPUS",
    "MAX_MEMORY",
    "MEMORY_GRANULE",
    "MIN_MEMORY",
    "QUIRKS",
    "LparConfig",
    "auto_reserve_size",
    "format_size",
    "parse_size",
    "parse_tasks",
]

MEMORY_GRANULE = 256 << 20
"""RAM comes in multiples of 256 MiB (an LPAR's logical memory block)."""
MIN_MEMORY = 512 << 20
MAX_MEMORY = 16 << 40
"""16 TiB: far beyond a POWER6 LPAR, and still a few MiB of state on disk."""
MAX_CPUS = 1024
DEFAULT_RESERVE_SIZE = 256 << 20
"""What the capture kernel keeps for itself (the first kernels' fixed 256 MiB)."""

QUIRKS = ("faithful", "corrected")
DUMP_KINDS = ("phyp", "fadump")
MAX_BOOT_REGIONS = 7
"""fadump registers at most 7 boot-memory sections (``RTAS_FADUMP_MAX_BOOT_MEM_REGS``)."""
Quirks = Literal["faithful", "corrected"]
Endian = Literal["big", "little"]
DumpKind = Literal["phyp", "fadump"]


def auto_reserve_size(memory: int) -> int:
    """The later kernels' default: 5 % of RAM rounded down to 256 MiB, at least 256 MiB."""
    return max(DEFAULT_RESERVE_SIZE, (memory // 20) // MEMORY_GRANULE * MEMORY_GRANULE)


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value


@dataclass(frozen=True)
class LparConfig:
    """What an LPAR is: machine, kernel, seed, firmware and kernel options.

    ``memory``
        bytes of RAM: a multiple of 256 MiB from 512 MiB to 16 TiB.
    ``cpus``
        logical CPUs (the register save area holds one entry list each).
    ``endian``
        the kernel's byte order, ``"big"`` (POWER6) or ``"little"``; the
        hypervisor's own structures are big-endian either way.
    ``page_size``
        the kernel's base page size, 65536 or 4096.
    ``seed``
        memory content is a function of the seed; two LPARs with the same
        configuration hold the same bytes.
    ``mix``
        shares of zero, text, pointer and random pages.
    ``firmware_dump``
        the firmware offers ``ibm,configure-kernel-dump`` (dump support).
    ``dump_enabled``
        the kernel was booted with ``phyp_dump=1`` and registers for a dump.
    ``reserve_size``
        ``phyp_dump_reserve_size=``: the memory the capture kernel runs in
        (from address 0), and the third part of the scratch area.
    ``quirks``
        ``"faithful"`` reproduces the 2.6-era release_region code (inclusive
        end page, naive counters, clamping); ``"corrected"`` is what that
        code should have done.
    ``literal_release_map``
        reading release_region prints the kernel's own unrelocated header
        (bare offsets, zero lengths) instead of the meaningful values.
    ``osrelease``
        the kernel release shown in VMCOREINFO and ``/proc/version``.
    ``name``
        the LPAR's host name (``init_uts_ns``' nodename).
    ``tasks``
        the crashed kernel's user processes, ``"comm[:pid],..."`` (empty: a
        default set; see :func:`parse_tasks`).
    ``image``
        an adopted real memory image (absolute path of an ELF core): the
        first kernel's memory, registers and VMCOREINFO come from it, not
        from the seed (see :mod:`hvsim.adopt`); empty for a generated kernel.
    ``image_size``
        the image's size when adopted (a changed file is refused).
    ``image_vmcoreinfo``
        physical address of the image's VMCOREINFO note, or -1: the core's
        note, or the one found in memory.
    ``image_crash_cpu``
        the CPU that panicked in the image.
    ``image_mmu``
        the adopted kernel's MMU, ``"hash"`` or ``"radix"`` (what its
        hashed page table section holds).
    ``dump``
        the kernel's dump interface: ``"phyp"`` (hypervisor-assisted dump,
        ``phyp_dump=1``, Linux 2.6.26-3.3) or ``"fadump"`` (firmware-assisted
        dump, ``fadump=on``, Linux 3.4 on; see :mod:`hvsim.fadump`). With
        fadump ``reserve_size`` is the boot memory size and ``dump_enabled``
        is ``fadump=on``.
    ``boot_regions``
        fadump: how many boot-memory sections the kernel registers (1 to 7;
        newer kernels split boot memory into several).
    """

    memory: int
    cpus: int = 4
    endian: Endian = "big"
    page_size: int = 65536
    seed: int = 0
    mix: PageMix = field(default=BUSY_MIX)
    firmware_dump: bool = True
    dump_enabled: bool = True
    reserve_size: int = DEFAULT_RESERVE_SIZE
    quirks: Quirks = "faithful"
    literal_release_map: bool = False
    osrelease: str = "2.6.32-hvsim"
    name: str = "hvsim-lpar"
    tasks: str = ""
    image: str = ""
    image_size: int = 0
    image_vmcoreinfo: int = -1
    image_crash_cpu: int = 0
    image_mmu: str = "hash"
    dump: DumpKind = "phyp"
    boot_regions: int = 1

    def __post_init__(self) -> None:
        memory = _check_int("memory", self.memory)
        if memory % MEMORY_GRANULE or not MIN_MEMORY <= memory <= MAX_MEMORY:
            raise ValueError(
                f"memory must be a multiple of 256 MiB from 512M to 16T, got {memory} "
                f"({format_size(memory)})"
            )
        cpus = _check_int("cpus", self.cpus)
        if not 1 <= cpus <= MAX_CPUS:
            raise ValueError(f"cpus must be from 1 to {MAX_CPUS}, got {cpus}")
        if self.endian not in ("big", "little"):
            raise ValueError(f"endian must be 'big' or 'little', got {self.endian!r}")
        if _check_int("page_size", self.page_size) not in (4096, 65536):
            raise ValueError(f"page_size must be 4096 or 65536 (4K or 64K), got {self.page_size}")
        seed = _check_int("seed", self.seed)
        if not 0 <= seed < 1 << 64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        if not isinstance(self.mix, PageMix):
            raise ValueError(f"mix must be a PageMix, got {self.mix!r}")
        reserve = _check_int("reserve_size", self.reserve_size)
        # The low-memory copy is always 256 MiB; a smaller reserve would make
        # the scratch area too small for it and run the copy off the end of RAM.
        if reserve < DEFAULT_RESERVE_SIZE or reserve % self.page_size:
            raise ValueError(
                f"reserve_size must be at least 256M and a multiple of the page size, got "
                f"{format_size(reserve)}"
            )
        if reserve >= memory:
            raise ValueError(
                f"reserve_size {format_size(reserve)} leaves no memory to reserve in a "
                f"{format_size(memory)} LPAR"
            )
        if self.quirks not in QUIRKS:
            raise ValueError(f"quirks must be 'faithful' or 'corrected', got {self.quirks!r}")
        for name in ("osrelease", "name"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.isascii() or not value.isprintable():
                raise ValueError(f"{name} must be printable ASCII, got {value!r}")
            # new_utsname fields are 65 bytes with the NUL.
            if not 0 < len(value) <= 64 or " " in value:
                raise ValueError(f"{name} must be 1 to 64 characters without spaces, got {value!r}")
        if not isinstance(self.tasks, str):
            raise ValueError(f"tasks must be a string like 'sshd,bash:1234', got {self.tasks!r}")
        if self.tasks:
            parse_tasks(self.tasks)
        if not isinstance(self.image, str) or (self.image and not self.image.startswith("/")):
            raise ValueError(f"image must be an absolute path, got {self.image!r}")
        for name in ("image_size", "image_vmcoreinfo", "image_crash_cpu"):
            _check_int(name, getattr(self, name))
        if self.image and not 0 <= self.image_crash_cpu < cpus:
            raise ValueError(
                f"image_crash_cpu must be a CPU of the LPAR, got {self.image_crash_cpu}"
            )
        if self.image_mmu not in ("hash", "radix"):
            raise ValueError(f"image_mmu must be 'hash' or 'radix', got {self.image_mmu!r}")
        if self.dump not in DUMP_KINDS:
            raise ValueError(f"dump must be 'phyp' or 'fadump', got {self.dump!r}")
        regions = _check_int("boot_regions", self.boot_regions)
        if not 1 <= regions <= MAX_BOOT_REGIONS:
            raise ValueError(f"boot_regions must be from 1 to {MAX_BOOT_REGIONS}, got {regions}")
        if regions > 1 and self.dump != "fadump":
            raise ValueError("boot_regions is fadump's: phyp dump copies one low-memory section")
        for name in ("firmware_dump", "dump_enabled", "literal_release_map"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false")

    @property
    def big_endian(self) -> bool:
        """Whether the kernel is big-endian."""
        return self.endian == "big"

    @property
    def adopted(self) -> bool:
        """The first kernel's memory is a real image (:mod:`hvsim.adopt`)."""
        return bool(self.image)

    @property
    def page_shift(self) -> int:
        """log2 of the page size."""
        return self.page_size.bit_length() - 1

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the mix in its text form)."""
        out = asdict(self)
        out["mix"] = str(self.mix)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LparConfig:
        """The inverse of :meth:`to_json`; unknown keys are refused, missing ones defaulted."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
        values = dict(data)
        if "mix" in values and isinstance(values["mix"], str):
            values["mix"] = PageMix.parse(values["mix"])
        return cls(**values)


def parse_tasks(text: str) -> list[tuple[str, int | None]]:
    """``"sshd,bash:1234,db:2000"`` → ``[("sshd", None), ("bash", 1234), ...]`` (user processes).

    Raises ValueError for a bad entry (empty name, name longer than 15
    characters, a pid outside 2..4194304).
    """
    out: list[tuple[str, int | None]] = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        comm, sep, pid_text = item.partition(":")
        if not comm or len(comm) > 15 or not comm.isprintable():
            raise ValueError(f"task name must be 1 to 15 printable characters, got {comm!r}")
        pid: int | None = None
        if sep:
            try:
                pid = int(pid_text)
            except ValueError:
                raise ValueError(
                    f"task {comm!r}: pid must be an integer, got {pid_text!r}"
                ) from None
            if not 2 <= pid <= 4194304:
                raise ValueError(f"task {comm!r}: pid must be from 2 to 4194304, got {pid}")
        out.append((comm, pid))
    return out
