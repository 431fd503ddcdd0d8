"""A simulated POWER6 LPAR with hypervisor-assisted dump: :class:`Lpar`.

Life cycle (``Lpar.state``)::

    off --boot--> running --crash--> crashed --boot--> capture --release all--> running
                     ^                  |                 |  ^
                     |   (no dump)      |                 |  | crash / reboot of the
                     +------boot--------+                 +--+ capture kernel: the dump
                                                               stays, released ranges lost

``running``
    an ordinary kernel. If the firmware supports dumps and the kernel was
    booted with ``phyp_dump=1``, it reserved the scratch area at the top of
    RAM and registered a dump header: the LPAR is *protected*.
``crashed``
    stopped after a crash (``crash(reboot=False)``). If it was protected the
    hypervisor has saved the CPU state, the HPTEs and low memory into the
    scratch area and a dump is waiting in the firmware.
``capture``
    the capture kernel runs in ``[0, reserve_size)`` with a dump waiting:
    ``/proc/vmcore`` and ``/sys/kernel/release_region`` exist and everything
    above ``reserve_size`` is reserved until released.

Capture-kernel views (what :mod:`hvsim.fuse_root` serves):
:meth:`Lpar.device_tree`, :meth:`Lpar.proc_version`,
:meth:`Lpar.meminfo_text`, :meth:`Lpar.phyp_dump_active_text`,
:meth:`Lpar.release_region_text`, :meth:`Lpar.release_text` (a write to
release_region), :meth:`Lpar.vmcore_size`, :meth:`Lpar.read_vmcore`. A view
that would not exist on the real kernel raises :class:`ViewUnavailable`
(``errno`` ENOENT).

Ground truth: :meth:`Lpar.expected` is the crashed kernel's memory (of the
last dump the hypervisor took; before any dump, the running kernel's memory),
:meth:`Lpar.expected_cpu_states`, :meth:`Lpar.expected_hptes`.

Every method works on the LPAR's directory (see :mod:`hvsim.store`) and
notices changes made by other processes before it runs. Memory is a stack of
layers (:mod:`hvsim.memory`): each boot, crash, hypervisor save and release
pushes or grows one, and the ground truth is a frozen copy of the stack
taken at the crash, so nothing the size of RAM is ever stored.

Where the real kernel left a choice open, hvsim decides so:

- The capture kernel reserves ``[reserve_size, RAM)`` (256 MiB by default,
  ``reserve_size=`` as ``phyp_dump_reserve_size=``) and overwrites what is
  below. With a reserve larger than 256 MiB the crashed memory in
  ``[256 MiB, reserve_size)`` is lost (only 256 MiB are copied); it is
  listed in the dump's lost ranges.
- An LPAR too small to hold the scratch area above the capture region
  (512 MiB with the default reserve) does not register; the real kernel
  registered a dump it could not use.
- When the last release re-registers, the dump is gone and state is
  ``running``: ``/proc/vmcore`` and ``release_region`` disappear (as
  fadump's release does). The 2.6 kernel kept both files until the next
  boot; an early re-registration here makes the rest of the dump unreadable,
  which a collector must never cause.
- In faithful mode a release whose start is past the end of the reserved
  area counts but frees nothing (the kernel's length underflows); a size
  that overflows 64 bits is clamped to the end.
- The device tree shows ``rtas/ibm,dump-kernel`` and ``ibm,kernel-dump``
  only while the dump waits (Linux kept its boot-time tree).
- A crash of the capture kernel, or a reboot of it, leaves the dump waiting
  in the firmware: the next boot is a capture boot again, with everything
  reserved again; what was released before is lost (``lost_ranges``).
- A dump the hypervisor flagged in error is invalidated at the capture boot
  and the area registered again at ``reserve_size`` (the kernel's
  ``dump_area_start`` in that path); faithful mode keeps all memory above
  the capture region reserved, as the kernel did, corrected mode frees it.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from drgn_hvdump.errors import FormatError
from drgn_hvdump.formats.dump_header import DumpHeader
from drgn_hvdump.formats.elfcore import CoreLayout
from drgn_hvdump.formats.layout import ByteOrder
from drgn_hvdump.formats.regsave import CpuState
from drgn_hvdump.formats.release_region import (
    ReleaseMap,
    format_release_map,
    parse_release_request,
)

from . import fadump, lifecycle, releasing, views
from .adopt import adoption_config, inspect_image
from .config import DEFAULT_RESERVE_SIZE, LparConfig, format_size, parse_size
from .hypervisor import ScratchLayout, hpt_size, scratch_layout
from .kernel import SCENARIOS, CrashedKernel, Scenario
from .machine import LparStateError, Machine, ReleaseError, ViewUnavailable
from .pages import PageMix
from .published import PublishedState
from .releasing import ReleaseResult
from .state import DumpInfo, LparState
from .store import LparStore, StoreError

__all__ = ["Lpar"]

_U64 = (1 << 64) - 1
_T = TypeVar("_T")


def _host_name(path: str | os.PathLike[str]) -> str:
    """A utsname-safe host name from the LPAR directory's name."""
    base = os.path.basename(os.path.normpath(os.fspath(path)))
    name = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "-" for c in base)
    return name[:64] or "lpar"


class Lpar:
    """One simulated LPAR, backed by its directory; see the module docstring.

    A facade: every method takes the directory's lock, brings the typed state
    (:class:`hvsim.state.LparState`) up to date with what other processes
    did, and hands it to :mod:`hvsim.lifecycle`, :mod:`hvsim.releasing` or
    :mod:`hvsim.views`; a change is saved atomically when it succeeds.
    """

    def __init__(self, store: LparStore, config: LparConfig) -> None:
        self._store = store
        self.config = config
        self._machine = Machine(config, store)
        self._shared = PublishedState(store, config)
        self._reading = self._shared.reading
        self._mutate = self._shared.mutate
        self._reader = self._shared.reader
        self._vmcore_cache: tuple[tuple[int, int], tuple[CoreLayout, dict[int, int]]] | None = None

    # ------------------------------------------------------------------ creation

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        memory: int | str,
        cpus: int = 4,
        endian: str = "big",
        page_size: int = 65536,
        seed: int = 0,
        mix: PageMix | str | None = None,
        firmware_dump: bool = True,
        dump_enabled: bool = True,
        reserve_size: int | str = DEFAULT_RESERVE_SIZE,
        quirks: str = "faithful",
        literal_release_map: bool = False,
        osrelease: str = "2.6.32-hvsim",
        name: str | None = None,
        tasks: str = "",
        boot: bool = False,
        adopted: Mapping[str, Any] | None = None,
        dump: str = "phyp",
        boot_regions: int = 1,
    ) -> Lpar:
        """Create a new LPAR directory at ``path`` (powered off unless ``boot``).

        Sizes may be strings such as ``"4G"``; see :class:`LparConfig` for
        the meaning of each option. Bad values raise ``ValueError``.
        ``adopted`` holds the image fields of an adopting LPAR (see :meth:`adopt`).
        """
        if isinstance(mix, str):
            mix = PageMix.parse(mix)
        values: dict[str, Any] = {
            "memory": parse_size(memory),
            "cpus": cpus,
            "endian": endian,
            "page_size": page_size,
            "seed": seed,
            "firmware_dump": firmware_dump,
            "dump_enabled": dump_enabled,
            "reserve_size": parse_size(reserve_size),
            "quirks": quirks,
            "literal_release_map": literal_release_map,
            "osrelease": osrelease,
            "name": name if name is not None else _host_name(path),
            "tasks": tasks,
            "dump": dump,
            "boot_regions": boot_regions,
        }
        if mix is not None:
            values["mix"] = mix
        values.update(adopted or {})
        config = LparConfig(**values)
        store = LparStore.create(path, config.to_json())
        lpar = cls(store, config)
        with lpar._mutate() as st:
            st.event(
                f"created: {format_size(config.memory)} RAM, {config.cpus} CPUs, "
                f"{config.endian}-endian, {format_size(config.page_size)} pages, "
                + (f"adopted image {config.image}" if config.adopted else f"seed {config.seed}")
                + f", quirks {config.quirks}"
                + (
                    f", fadump ({format_size(config.reserve_size)} boot memory in "
                    f"{config.boot_regions} sections)"
                    if config.dump == "fadump"
                    else ""
                ),
            )
        if boot:
            lpar.boot()
        return lpar

    @classmethod
    def adopt(
        cls,
        path: str | os.PathLike[str],
        image: str | os.PathLike[str],
        *,
        vmcoreinfo_at: int | None = None,
        endian: ByteOrder | None = None,
        crash_cpu: int = 0,
        quirks: str = "faithful",
        name: str | None = None,
        mmu: str | None = None,
        boot: bool = False,
        dump: str = "phyp",
    ) -> Lpar:
        """Create an LPAR whose first kernel's memory is a real image (see :mod:`hvsim.adopt`).

        ``dump="fadump"``: a fadump LPAR (its reserved area above the image).

        Memory, CPUs, byte order, page size and release come from the image;
        the LPAR's RAM is larger, so the scratch area fits above the image.
        """
        guest = inspect_image(image, vmcoreinfo_at=vmcoreinfo_at, endian=endian)
        values = adoption_config(
            guest,
            crash_cpu=crash_cpu,
            vmcoreinfo_at=vmcoreinfo_at,
            quirks=quirks,
            name=name if name is not None else _host_name(path),
            mmu=mmu,
            dump=dump,
        )
        lpar = cls.create(path, **values)
        with lpar._mutate() as st:
            st.event(
                f"adopted {guest.path}: {format_size(guest.ram_end)} of RAM, "
                f"{len(guest.registers)} CPUs, {guest.byteorder}-endian kernel "
                f"{guest.osrelease}, {lpar.config.image_mmu} MMU, VMCOREINFO "
                f"{guest.vmcoreinfo_where}",
            )
        if boot:
            lpar.boot()
        return lpar

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Lpar:
        """Open an existing LPAR directory."""
        store = LparStore.open(path)
        try:
            config = LparConfig.from_json(store.read_config())
        except (ValueError, TypeError, KeyError) as exc:
            raise StoreError(f"{store.path}/config.json: invalid configuration: {exc}") from None
        lpar = cls(store, config)
        with lpar._reading():
            pass  # refuses a directory whose creation was interrupted
        return lpar

    @property
    def path(self) -> str:
        """The LPAR directory."""
        return str(self._store.path)

    def close(self) -> None:
        """Close cached file descriptors (the object stays usable)."""
        self._shared.close()

    def __enter__(self) -> Lpar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------- properties

    @property
    def state(self) -> str:
        """``off``, ``running``, ``crashed`` or ``capture``."""
        with self._reading() as st:
            return st.state

    @property
    def generation(self) -> int:
        """Boot generation: how many times the LPAR has booted."""
        with self._reading() as st:
            return st.generation

    @property
    def protected(self) -> bool:
        """Whether a dump header is registered (a crash now would be saved)."""
        with self._reading() as st:
            return st.hv["registered"] is not None

    @property
    def dump_waiting(self) -> bool:
        """Whether the firmware holds a dump (``ibm,kernel-dump``)."""
        with self._reading() as st:
            return st.hv["dump"] is not None

    def dump_header(self) -> DumpHeader | None:
        """The waiting dump's header as the hypervisor filled it, or None."""
        with self._reading() as st:
            return self._machine.hv(st).dump

    def registered_header(self) -> DumpHeader | None:
        """The header the running kernel registered, or None."""
        with self._reading() as st:
            return self._machine.hv(st).registered

    def scratch_layout(self) -> ScratchLayout:
        """Where a kernel of this LPAR puts its scratch area when it registers."""
        return scratch_layout(self.config)

    # --------------------------------------------------------------- life cycle

    def boot(self) -> str:
        """Boot from ``off`` or ``crashed``; returns the new state.

        With a dump waiting in the firmware this is a capture boot (state
        ``capture``), or, if the hypervisor flagged the dump in error, the
        kernel invalidates it and registers anew (``running``). Otherwise an
        ordinary boot that registers a dump header if it can.
        """
        with self._mutate() as work:
            if work.state not in ("off", "crashed"):
                raise LparStateError(
                    f"{self.path}: cannot boot: the LPAR is {work.state} (crash or reboot it)"
                )
            lifecycle.boot(self._machine, work)
            return work.state

    def crash(
        self,
        scenario: str | None = None,
        reboot: bool = True,
        *,
        partial: Mapping[str, int] | None = None,
        errors: Mapping[str, int] | None = None,
    ) -> str:
        """Crash the running kernel; returns the new state.

        ``scenario`` (see :data:`hvsim.kernel.SCENARIOS`) shapes the crashing
        CPU's registers and can make the hypervisor copy part of low memory
        or flag an error; ``partial`` sets bytes copied per section
        (``{"rmo": 64 << 20}``), ``errors`` a section's error flags. If the
        kernel was registered the hypervisor saves the dump. With ``reboot``
        the LPAR boots again at once (a capture boot when a dump waits).
        """
        sc = self._scenario(scenario)
        with self._mutate() as work:
            lifecycle.crash(self._machine, work, sc, partial or {}, errors or {})
            if reboot:
                lifecycle.boot(self._machine, work)
            return work.state

    @staticmethod
    def _scenario(name: str | None) -> Scenario:
        if name is None:
            return SCENARIOS["panic"]
        try:
            return SCENARIOS[name]
        except KeyError:
            raise ValueError(
                f"unknown crash scenario {name!r}; known: {', '.join(SCENARIOS)}"
            ) from None

    def reboot(self) -> str:
        """Reboot without a crash; returns the new state.

        From ``running``: an ordinary reboot (no dump is taken; the
        registration lapses and the new kernel registers again). From
        ``capture``: the capture kernel reboots, the firmware still holds the
        dump, so the LPAR boots into capture again; memory released so far
        was reused and is lost to the dump (see ``status``). From ``off`` or
        ``crashed``: the same as :meth:`boot`.
        """
        with self._mutate() as work:
            lifecycle.reboot(self._machine, work)
            return work.state

    def invalidate(self) -> str:
        """Give up the waiting dump without collecting the rest; returns the new state.

        In ``capture`` the kernel invalidates the dump, registers again at
        the scratch area, and frees all other reserved memory (what fadump's
        ``release_mem`` does in one write). In ``crashed`` the firmware
        forgets the dump, so the next boot is an ordinary one.
        """
        with self._mutate() as work:
            lifecycle.invalidate(self._machine, work)
            return work.state

    # ------------------------------------------------------------------ release

    def release(self, addr: int, size: int) -> ReleaseResult:
        """Release ``size`` bytes at ``addr`` as a write of ``"ADDR SIZE"`` to release_region does."""
        if not (0 <= addr <= _U64 and 0 <= size <= _U64):
            raise ReleaseError("release: address and size must be 64-bit unsigned", errno.EINVAL)
        with self._mutate() as work:
            return releasing.release(self._machine, work, addr, size)

    def release_text(self, data: bytes | str) -> ReleaseResult:
        """A write to ``/sys/kernel/release_region``: ``"%lx %lx"``, else EINVAL."""
        raw = data.encode("latin-1") if isinstance(data, str) else bytes(data)
        with self._reading() as st:
            if st.state != "capture":
                raise ReleaseError(self._machine.no_dump_message(st), errno.ENOENT)
        try:
            addr, size = parse_release_request(raw, "release_region")
        except FormatError as exc:
            raise ReleaseError(f"{exc} (EINVAL)", errno.EINVAL) from None
        with self._mutate() as work:
            return releasing.release(self._machine, work, addr, size)

    def fadump_text(self, name: str) -> str:
        """``/sys/kernel/fadump/NAME`` (see :func:`hvsim.fadump.sysfs_text`)."""
        self._need_fadump(name)
        return self._view(functools.partial(fadump.sysfs_text, name=name))

    def fadump_write(self, name: str, data: bytes | str) -> str:
        """One write to ``/sys/kernel/fadump/NAME`` (``registered``, ``release_mem``; and
        ``soft_offline_page``, under ``/sys/devices/system/memory``) with
        the kernel's errors (``.errno`` EPERM, EINVAL); says what it did."""
        self._need_fadump(name)
        raw = data.encode("latin-1") if isinstance(data, str) else bytes(data)
        with self._mutate() as work:
            return fadump.sysfs_write(self._machine, work, name, raw)

    def _need_fadump(self, name: str) -> None:
        if self.config.dump != "fadump":
            raise ViewUnavailable(
                f"{self.path}: /sys/kernel/fadump/{name} does not exist: the LPAR runs "
                "phyp dump (create it with --dump fadump)"
            )

    # --------------------------------------------------------------- memory

    def read_phys(self, paddr: int, size: int) -> bytes:
        """Physical memory as it is now (what the running kernel's RAM holds)."""
        with self._reading() as st:
            self._check_range(paddr, size)
            return bytes(self._reader.read(st.stack, paddr, size))

    def read_phys_into(self, paddr: int, out: memoryview) -> None:
        """Like :meth:`read_phys`, into a caller's writable buffer."""
        with self._reading() as st:
            self._check_range(paddr, len(out))
            self._reader.read_into(st.stack, paddr, out)

    def expected(self, paddr: int, size: int) -> bytes:
        """The crashed kernel's memory at ``paddr``: ground truth for verification.

        After a dump was taken: what the kernel's RAM held at the crash, before
        the hypervisor wrote anything, whatever happened since (capture boots,
        releases, reboots). For the scratch area that is its reserved-and-unused
        contents, which no dump can contain (the hypervisor wrote over them).
        Before any dump: the running kernel's memory now.
        """
        with self._reading() as st:
            self._check_range(paddr, size)
            return bytes(self._reader.read(self._shared.truth_stack(st), paddr, size))

    def expected_into(self, paddr: int, out: memoryview) -> None:
        """Like :meth:`expected`, into a caller's writable buffer (no copies: for big scans)."""
        with self._reading() as st:
            self._check_range(paddr, len(out))
            self._reader.read_into(self._shared.truth_stack(st), paddr, out)

    def _check_range(self, paddr: int, size: int) -> None:
        if paddr < 0 or size < 0 or paddr + size > self.config.memory:
            raise ValueError(
                f"physical range {paddr:#x}+{size:#x} is outside RAM (0-{self.config.memory:#x})"
            )

    # ------------------------------------------------------------- ground truth

    def expected_cpu_states(self) -> list[CpuState]:
        """Every CPU's registers at the crash of the last dump as the firmware saves them
        (fadump: QEMU's registers and order); empty before any dump."""
        with self._reading() as st:
            image = self._machine.dump_image(st)
            if image is None:
                return []
            if self.config.dump == "fadump":
                return fadump.firmware_cpu_states(image)
            return image.cpu_states()

    def expected_hptes(self) -> list[tuple[int, int, int]]:
        """The crashed kernel's hash page table as ``(slot, v, r)`` (empty before any dump)."""
        with self._reading() as st:
            image = self._machine.dump_image(st)
            if image is None:
                return []
            return sorted(image.hash_page_table(hpt_size(self.config.memory)))

    def crashed_kernel(self) -> CrashedKernel | None:
        """The kernel image of the last dump (its banner, VMCOREINFO, crash CPU), or None."""
        with self._reading() as st:
            return self._machine.dump_image(st)

    def last_dump(self) -> DumpInfo | None:
        """The last dump the hypervisor took, or None."""
        with self._reading() as st:
            return None if st.dump is None else st.dump.info()

    def lost_ranges(self) -> list[tuple[int, int, str]]:
        """Ranges of the last dump's crashed memory that no collector can recover, with why."""
        with self._reading() as st:
            return [] if st.dump is None else sorted(st.dump.lost)

    def released_ranges(self) -> list[tuple[int, int]]:
        """Pages freed so far by the running capture kernel."""
        with self._reading() as st:
            cap = st.kernel and st.kernel.release_state
            return [] if not cap else list(cap.released)

    def reserved_ranges(self) -> list[tuple[int, int]]:
        """Memory the running kernel keeps reserved (scratch area, or the waiting dump)."""
        with self._reading() as st:
            return [] if st.kernel is None else list(st.kernel.reserved)

    # ----------------------------------------------------- capture-kernel views

    def _view(self, view: Callable[[Machine, LparState], _T]) -> _T:
        with self._reading() as st:
            return view(self._machine, st)

    def device_tree(self) -> dict[str, bytes]:
        """The running kernel's device tree properties, by path (``rtas/ibm,kernel-dump`` ...).

        ``rtas/ibm,dump-kernel`` and ``rtas/ibm,kernel-dump`` are there only
        while the dump waits: when the last release re-registers they go,
        with ``/proc/vmcore`` and ``release_region`` (Linux's
        ``/proc/device-tree`` kept the boot-time tree; hvsim shows the
        firmware's present state, so a tool never sees a dump that is gone).
        """
        return self._view(views.device_tree)

    def proc_version(self) -> str:
        """``/proc/version``: the running kernel's banner (the same kernel boots for capture)."""
        return self._view(views.proc_version)

    def phyp_dump_active_text(self) -> str:
        """``/sys/kernel/phyp_dump_active`` (see :func:`hvsim.views.phyp_dump_active_text`)."""
        return self._view(views.phyp_dump_active_text)

    def boot_id_text(self) -> str:
        """``/proc/sys/kernel/random/boot_id``: a UUID that changes with every boot."""
        return self._view(views.boot_id_text)

    def meminfo_text(self) -> str:
        """``/proc/meminfo``: MemTotal is RAM minus what stays reserved (grows as memory is released)."""
        return self._view(views.meminfo_text)

    def release_map(self) -> ReleaseMap:
        """The values ``release_region`` shows (see :meth:`release_region_text`)."""
        return self._view(views.release_map)

    def release_region_text(self) -> str:
        """What reading ``/sys/kernel/release_region`` gives.

        ``CPU:0xA-0xL: HPTE:0xA-0xL: DUMP:0xA-0xL, 0xS-0xN:`` with each
        section's destination and bytes copied from the hypervisor's header,
        then the reserved area's start and its size minus the scratch area's
        size, exactly as the kernel computes them (the last pair can overlap
        the CPU section by less than a page, because the scratch area starts
        at the reservation rounded down to a page). With
        ``literal_release_map`` the kernel's literal output instead.
        """
        return format_release_map(self.release_map())

    def _vmcore(self, st: LparState) -> tuple[CoreLayout, dict[int, int]]:
        self._machine.need_capture(st, "/proc/vmcore")
        assert st.dump is not None
        key = (st.dump.generation, st.dump.crash_time)
        if self._vmcore_cache is None or self._vmcore_cache[0] != key:
            self._vmcore_cache = (key, views.vmcore_layout(self._machine, st))
        return self._vmcore_cache[1]

    def _vmcore_layout(self, st: LparState) -> CoreLayout:
        return self._vmcore(st)[0]

    def vmcore_size(self) -> int:
        """Size of ``/proc/vmcore`` in bytes."""
        with self._reading() as st:
            return self._vmcore_layout(st).file_size

    def vmcore_layout(self) -> CoreLayout:
        """The ELF layout of ``/proc/vmcore`` (header bytes and segment offsets)."""
        with self._reading() as st:
            return self._vmcore_layout(st)

    def read_vmcore(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of ``/proc/vmcore`` at ``offset`` (short at the end).

        An ELF64 core in the kernel's byte order: one PT_NOTE with an
        ``NT_PRSTATUS`` note per CPU that the capture kernel found in the
        hypervisor's register save area at boot (``pr_pid`` = CPU + 1, none
        when that section was not copied whole) and the crashed kernel's
        VMCOREINFO note, and PT_LOADs for ``[0, reserve_size)`` (the
        capture kernel's own memory, as a real capture kernel exposes it) and
        ``[reserve_size, RAM)`` (the reserved memory with the scratch area in
        it). Released ranges read as the data that reused them.
        """
        if offset < 0 or size < 0:
            raise ValueError("negative vmcore offset or size")
        with self._reading() as st:
            layout, moved = self._vmcore(st)
            return views.read_core(
                layout, functools.partial(self._reader.read_into, st.stack), offset, size, moved
            )

    # ------------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """Everything ``hvsim status`` shows, as JSON-ready data."""
        return self._view(views.status)

    def disk_usage(self) -> int:
        """Bytes of disk the LPAR directory uses."""
        return self._store.disk_usage()
