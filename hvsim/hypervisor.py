"""The POWER hypervisor's side of phyp dump: sizes, registration, the crash-time save.

What the firmware tells the kernel (``/rtas`` properties), where the kernel
puts its scratch area, the header it registers, and what the hypervisor
does when the registered partition crashes: fill in the dump header. The
bytes it saves (register save area, HPTEs, the low-memory copy) are laid
into memory by :mod:`hvsim.lpar` as memory layers.

Sizes follow real firmware: the CPU state size is the register save area's
exact size (header, count, one entry list per CPU), **not** page aligned, so
the HPTE and low-memory destinations that follow it are unaligned, as in the
kernel documentation's example (``CPU:0x177fee000-0x10000:
HPTE:0x177ffe020-...``). The HPTE region is the hash table's size: RAM/128
rounded up to a power of two, at least 256 KiB.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from drgn_hvdump.formats.dump_header import (
    DUMP_ERROR_FLAG,
    DUMP_PERFORMED,
    DUMP_REQUEST_FLAG,
    DUMP_TRIGGERED,
    DumpHeader,
    DumpSection,
    build_dump_header,
    parse_dump_header,
)
from drgn_hvdump.formats.fadump_mem import FadumpMem
from drgn_hvdump.formats.regsave import POWER6_REGISTERS, regsave_size
from drgn_hvdump.model import scratch as model_scratch
from drgn_hvdump.model.scratch import MIN_HPT_SIZE, hpt_size

from .config import LparConfig, format_size

__all__ = [
    "MIN_HPT_SIZE",
    "RTAS_CONFIGURE_KERNEL_DUMP_TOKEN",
    "SECTION_NAMES",
    "Firmware",
    "Hypervisor",
    "ScratchLayout",
    "cpu_state_size",
    "fill_section",
    "hpt_size",
    "perform_dump",
    "saved_status",
    "scratch_layout",
    "sizes_property",
]

RTAS_CONFIGURE_KERNEL_DUMP_TOKEN = 0x2C
"""The RTAS token in ``/rtas/ibm,configure-kernel-dump`` (any value; presence matters)."""
SECTION_NAMES = ("cpu", "hpte", "rmo")


def cpu_state_size(cpus: int, registers: tuple[str, ...] = POWER6_REGISTERS) -> int:
    """Bytes of the register save area for ``cpus`` CPUs (the firmware's type-1 size)."""
    return regsave_size(cpus, len(registers))


def sizes_property(cpu_size: int, hpte_size: int) -> bytes:
    """``ibm,configure-kernel-dump-sizes``: (u32 type, u64 size as two cells) records."""
    return struct.pack(">IQIQ", 1, cpu_size, 2, hpte_size)


@dataclass(frozen=True)
class ScratchLayout(model_scratch.ScratchLayout):
    """:class:`drgn_hvdump.model.scratch.ScratchLayout`, and whether hvsim registers it."""

    def problem(self) -> str | None:
        """Why a dump could not work with this layout, or None.

        The scratch area must lie above the memory the capture kernel boots
        in (``[0, reserve_size)``), or the capture kernel would overwrite the
        saved data; the real kernel did not check, so a 512 MiB LPAR would
        register a dump it could never use. hvsim refuses to register instead.
        """
        if self.fits:
            return None
        return (
            f"not registered: {format_size(self.memory)} of RAM cannot hold the "
            f"{format_size(self.reserve_size)} capture region plus a "
            f"{self.total:#x}-byte scratch area above it (needs at least "
            f"{format_size(self.min_memory)})"
        )


def scratch_layout(config: LparConfig) -> ScratchLayout:
    """The scratch area a kernel of ``config`` reserves when no dump is waiting."""
    return ScratchLayout(
        memory=config.memory,
        page_size=config.page_size,
        cpu_size=cpu_state_size(config.cpus),
        hpte_size=hpt_size(config.memory),
        reserve_size=config.reserve_size,
    )


def perform_dump(
    registered: DumpHeader,
    *,
    copied: Mapping[str, int] | None = None,
    errors: Mapping[str, int] | None = None,
    hv_error: bool = False,
) -> DumpHeader:
    """The header as the hypervisor fills it in after saving the registered sections.

    ``copied`` overrides a section's bytes copied (a partial copy);
    ``errors`` sets a section's error flags (such a section copies nothing
    unless ``copied`` says otherwise); ``hv_error`` sets the header's error
    flag. Sections the kernel did not request are skipped.
    """
    copied = dict(copied or {})
    errors = dict(errors or {})
    for name in (*copied, *errors):
        if name not in SECTION_NAMES:
            raise ValueError(f"unknown dump section {name!r}; the sections are cpu, hpte, rmo")
    sections = {
        name: fill_section(
            getattr(registered, name), name, copied=copied.get(name), error=errors.get(name, 0)
        )
        for name in SECTION_NAMES
    }
    return replace(
        registered,
        status=saved_status(hv_error),
        cpu=sections["cpu"],
        hpte=sections["hpte"],
        rmo=sections["rmo"],
    )


def fill_section(s: DumpSection, name: str, *, copied: int | None, error: int) -> DumpSection:
    """Section ``s`` as the firmware leaves it after the crash: a section the kernel did not
    request is skipped; ``error`` flags copy nothing unless ``copied`` (bytes) says otherwise."""
    if not s.dump_flags & DUMP_REQUEST_FLAG:
        return s
    length = (0 if error else s.source_length) if copied is None else copied
    if not 0 <= length <= s.source_length:
        raise ValueError(
            f"{name} section: cannot copy {length:#x} bytes of a {s.source_length:#x}-byte source"
        )
    flags = s.dump_flags | (DUMP_PERFORMED if length else 0)
    return replace(s, error_flags=error, length_copied=length, dump_flags=flags)


def saved_status(hv_error: bool) -> int:
    """The header's status after the firmware saved a dump (with its error flag)."""
    return DUMP_TRIGGERED | DUMP_PERFORMED | (DUMP_ERROR_FLAG if hv_error else 0)


_S = TypeVar("_S", DumpHeader, FadumpMem)


class Firmware(Generic[_S]):
    """The firmware's dump state for one LPAR, kept in ``state["hv"]``, whatever the
    structure the kernel registers (phyp's header or fadump's memory structure).

    ``registered``: what the running kernel registered (None when
    unprotected). ``dump``: the filled structure of a dump that is waiting
    (``ibm,kernel-dump``), None when there is none. Like QEMU's pseries
    firmware, registering while a dump waits is refused: the kernel must
    invalidate the old dump first.
    """

    def __init__(self, config: LparConfig, hv_state: dict[str, Any]) -> None:
        self.config = config
        self._state = hv_state
        hv_state.setdefault("registered", None)
        hv_state.setdefault("dump", None)

    @staticmethod
    def parse(raw: bytes) -> _S:
        raise NotImplementedError

    @staticmethod
    def build(value: _S) -> bytes:
        raise NotImplementedError

    @property
    def supported(self) -> bool:
        """Whether the firmware offers ``ibm,configure-kernel-dump``."""
        return self.config.firmware_dump

    def _get(self, key: str) -> _S | None:
        value = self._state[key]
        return None if value is None else self.parse(bytes.fromhex(value))

    @property
    def registered(self) -> _S | None:
        return self._get("registered")

    @property
    def dump(self) -> _S | None:
        return self._get("dump")

    @property
    def dump_bytes(self) -> bytes | None:
        """The waiting dump's structure as ``/rtas/ibm,kernel-dump`` holds it."""
        value = self._state["dump"]
        return None if value is None else bytes.fromhex(value)

    def register(self, value: _S) -> None:
        """RTAS ``ibm,configure-kernel-dump`` request 1."""
        if not self.supported:
            raise RuntimeError("firmware has no dump support")
        if self._state["dump"] is not None:
            raise RuntimeError("a dump is waiting: invalidate it before registering")
        self._state["registered"] = self.build(value).hex()

    def unregister(self) -> None:
        """Request 2: forget the registration (phyp_dump called this "invalidate")."""
        self._state["registered"] = None

    def invalidate(self) -> None:
        """Forget the waiting dump; the next boot is an ordinary one."""
        self._state["dump"] = None

    def cpu_state_size(self) -> int:
        """Bytes of this firmware's CPU state data."""
        return cpu_state_size(self.config.cpus)

    def support_properties(self) -> dict[str, bytes]:
        """``/rtas`` properties saying the firmware supports dumps: the call's token and
        the sizes of the CPU state and HPTE sections (none without support)."""
        if not self.supported:
            return {}
        sizes = sizes_property(self.cpu_state_size(), hpt_size(self.config.memory))
        return {
            "rtas/ibm,configure-kernel-dump": struct.pack(">I", RTAS_CONFIGURE_KERNEL_DUMP_TOKEN),
            "rtas/ibm,configure-kernel-dump-sizes": sizes,
        }

    def _saved(self, value: _S) -> None:
        """The registration was consumed by a crash: ``value`` is the dump now waiting."""
        self._state["registered"] = None
        self._state["dump"] = self.build(value).hex()


class Hypervisor(Firmware[DumpHeader]):
    """Hypervisor-assisted dump's firmware: the three-section dump header."""

    @staticmethod
    def parse(raw: bytes) -> DumpHeader:
        return parse_dump_header(raw)

    @staticmethod
    def build(value: DumpHeader) -> bytes:
        return build_dump_header(value)

    def crash(
        self,
        *,
        copied: Mapping[str, int] | None = None,
        errors: Mapping[str, int] | None = None,
        hv_error: bool = False,
    ) -> DumpHeader | None:
        """The partition crashed: save the registered sections, or do nothing if none.

        Returns the filled header (the registration is consumed), or None
        when nothing was registered.
        """
        registered = self.registered
        if registered is None:
            return None
        header = perform_dump(registered, copied=copied, errors=errors, hv_error=hv_error)
        self._saved(header)
        return header

    def rtas_properties(self, *, dump_kernel: bool, kernel_dump: bytes | None) -> dict[str, bytes]:
        """The ``/rtas`` properties of a boot: support token, sizes, and a waiting dump."""
        props = self.support_properties()
        if props and dump_kernel:
            props["rtas/ibm,dump-kernel"] = b""
        if props and kernel_dump is not None:
            props["rtas/ibm,kernel-dump"] = kernel_dump
        return props
