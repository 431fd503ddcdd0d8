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

import contextlib
import copy
import errno
import os
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from drgn_hvdump.errors import FormatError, HvdumpError
from drgn_hvdump.formats.dump_header import DUMP_ERROR_FLAG, DumpHeader, describe_dump_header
from drgn_hvdump.formats.elfcore import CoreLayout, LoadSegment, Note, build_core_header
from drgn_hvdump.formats.layout import ByteOrder
from drgn_hvdump.formats.regsave import (
    CpuState,
    build_regsave,
    cpu_state_to_pt_regs,
    parse_regsave,
    prstatus_notes,
)
from drgn_hvdump.formats.release_region import (
    Extent,
    ReleaseMap,
    format_release_map,
    parse_release_request,
)
from drgn_hvdump.formats.vmcoreinfo import VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE
from drgn_hvdump.model.pages import page_down as _page_down
from drgn_hvdump.model.pages import page_span
from drgn_hvdump.model.pages import page_up as _page_up
from drgn_hvdump.model.release import (
    ReleaseArea,
    ReleaseCounters,
    corrected_release,
    counts_in_reserved,
    counts_in_scratch,
    dump_data,
    faithful_release,
    reregisters,
)
from drgn_hvdump.native import PageMix

from .adopt import AdoptedKernel, adoption_config, inspect_image, open_adopted
from .config import DEFAULT_RESERVE_SIZE, LparConfig, format_size, parse_size
from .hypervisor import Hypervisor, ScratchLayout, hpt_size, scratch_layout
from .kernel import SCENARIOS, CrashedKernel, KernelImage, Scenario
from .memory import IntervalSet, Layer, MemoryReader, derive_seed, pack_hpte_records
from .store import LparStore, StoreError

__all__ = [
    "STATES",
    "DumpInfo",
    "HvsimError",
    "Lpar",
    "LparStateError",
    "ReleaseError",
    "ReleaseResult",
    "ViewUnavailable",
]

STATES = ("off", "running", "crashed", "capture")
_U64 = (1 << 64) - 1
_MAX_EVENTS = 100
_RMO_SIZE = 256 << 20
# Memory the simulated kernel keeps for itself (its image and a 64-byte struct
# page per page frame), fixed at boot as on Linux, so that MemTotal grows by
# exactly the bytes a release frees (totalram_pages counts each freed page).
_STRUCT_PAGE_SIZE = 64


class HvsimError(HvdumpError):
    """A simulator operation failed; ``errno`` says how a file system would report it."""

    def __init__(self, message: str, err: int = errno.EIO) -> None:
        super().__init__(message)
        self.errno = err


class LparStateError(HvsimError):
    """The operation does not fit the LPAR's life-cycle state (e.g. crash when off)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, errno.EBUSY)


class ViewUnavailable(HvsimError):
    """The capture-kernel file asked for does not exist in the LPAR's state."""

    def __init__(self, message: str) -> None:
        super().__init__(message, errno.ENOENT)


class ReleaseError(HvsimError):
    """A write to release_region failed: ``errno`` is EINVAL (junk) or ENOENT (no dump)."""


@dataclass(frozen=True)
class ReleaseResult:
    """What one release did.

    ``addr``/``size`` are the values written; ``freed`` the page ranges that
    went back to the kernel (only pages that were still reserved);
    ``clamped`` whether the range was cut to the reserved area;
    ``reregistered`` whether this write completed the release and the kernel
    invalidated the dump and registered again.
    """

    addr: int
    size: int
    freed: tuple[tuple[int, int], ...]
    clamped: bool
    reregistered: bool
    note: str = ""

    @property
    def freed_bytes(self) -> int:
        return sum(e - s for s, e in self.freed)


@dataclass(frozen=True)
class DumpInfo:
    """The last dump the hypervisor took (waiting, or already released).

    ``sections`` maps ``cpu``, ``hpte``, ``rmo`` to (destination, bytes
    requested, bytes copied); ``lost`` lists ranges of the crashed memory no
    collector can recover any more, with the reason; ``status`` is
    ``waiting`` or how the dump ended.
    """

    generation: int
    crash_time: int
    crash_cpu: int
    scenario: str
    status: str
    capture_boots: int
    sections: Mapping[str, tuple[int, int, int]]
    lost: tuple[tuple[int, int, str], ...]

    @property
    def waiting(self) -> bool:
        return self.status == "waiting"

    @property
    def scratch(self) -> tuple[int, int]:
        """The scratch area ``[start, end)`` the sections were saved in."""
        start = self.sections["cpu"][0]
        dest, length, _ = self.sections["rmo"]
        return start, dest + length


def _host_name(path: str | os.PathLike[str]) -> str:
    """A utsname-safe host name from the LPAR directory's name."""
    base = os.path.basename(os.path.normpath(os.fspath(path)))
    name = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "-" for c in base)
    return name[:64] or "lpar"


class Lpar:
    """One simulated LPAR, backed by its directory; see the module docstring."""

    def __init__(self, store: LparStore, config: LparConfig) -> None:
        self._store = store
        self.config = config
        self._lock = threading.RLock()
        self._state: dict[str, Any] = {}
        self._serial = -1
        self._layers: dict[str, Layer] = {}
        self._snapshots: dict[str, list[str]] = {}
        self._reader = MemoryReader(
            store,
            self._layers,
            self._snapshots,
            page_size=config.page_size,
            mix=config.mix,
            big_endian=config.big_endian,
        )
        self._vmcore_cache: tuple[tuple[Any, ...], CoreLayout] | None = None

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
        }
        if mix is not None:
            values["mix"] = mix
        values.update(adopted or {})
        config = LparConfig(**values)
        store = LparStore.create(path, config.to_json())
        lpar = cls(store, config)
        with lpar._mutate() as st:
            st.update(cls._initial_state())
            lpar._event(
                st,
                f"created: {format_size(config.memory)} RAM, {config.cpus} CPUs, "
                f"{config.endian}-endian, {format_size(config.page_size)} pages, "
                + (f"adopted image {config.image}" if config.adopted else f"seed {config.seed}")
                + f", quirks {config.quirks}",
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
    ) -> Lpar:
        """Create an LPAR whose first kernel's memory is a real image (see :mod:`hvsim.adopt`).

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
        )
        lpar = cls.create(path, **values)
        with lpar._mutate() as st:
            lpar._event(
                st,
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
            if not lpar._state:
                raise StoreError(f"{store.path}: LPAR has no state (creation was interrupted)")
        return lpar

    @staticmethod
    def _initial_state() -> dict[str, Any]:
        return {
            "serial": 0,
            "state": "off",
            "generation": 0,
            "next_layer": 1,
            "layers": {},
            "stack": [],
            "snapshots": {},
            "truth": None,
            "hv": {"registered": None, "dump": None},
            "kernel": None,
            "dump": None,
            "counters": {
                "boots": 0,
                "capture_boots": 0,
                "crashes": 0,
                "dumps": 0,
                "registrations": 0,
                "reregistrations": 0,
                "releases": 0,
            },
            "events": [],
        }

    @property
    def path(self) -> str:
        """The LPAR directory."""
        return str(self._store.path)

    def close(self) -> None:
        """Close cached file descriptors (the object stays usable)."""
        with self._lock:
            self._store.close()
            self._reader.close()

    def __enter__(self) -> Lpar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ state plumbing

    def _load(self) -> None:
        state = self._store.load_state()
        if state is None:
            self._state = {}
            return
        if state.get("serial") == self._serial:
            return
        self._state = state
        self._serial = state["serial"]
        self._layers.clear()
        self._layers.update({k: Layer.from_json(v) for k, v in state["layers"].items()})
        self._snapshots.clear()
        self._snapshots.update({k: list(v) for k, v in state["snapshots"].items()})
        files = [layer.file for layer in self._layers.values() if layer.file]
        self._store.forget_data(files)
        self._reader.forget(files)
        self._vmcore_cache = None

    @contextlib.contextmanager
    def _reading(self) -> Iterator[dict[str, Any]]:
        """Shared lock, state reloaded if another process changed it."""
        with self._lock, self._store.locked(exclusive=False):
            if self._store.state_changed() or not self._state:
                self._load()
            yield self._state

    @contextlib.contextmanager
    def _mutate(self) -> Iterator[dict[str, Any]]:
        """Exclusive lock around a change; the state is saved (atomically) on success.

        The change works on a copy whose ``layers`` holds :class:`Layer`
        objects; an exception leaves the published state untouched (a data
        file it wrote is unreferenced and removed by the next change).
        """
        with self._lock, self._store.locked(exclusive=True):
            if self._store.state_changed() or not self._state:
                self._load()
            work = copy.deepcopy(self._state)
            work["layers"] = {k: Layer.from_json(v) for k, v in work.get("layers", {}).items()}
            yield work
            work["serial"] = work.get("serial", 0) + 1
            self._collect_garbage(work)
            work["layers"] = {k: v.to_json() for k, v in work["layers"].items()}
            self._store.save_state(work)
            referenced = {v["file"] for v in work["layers"].values() if v.get("file")}
            self._store.remove_data(set(self._store.list_data()) - referenced)
            self._load()

    @staticmethod
    def _collect_garbage(work: dict[str, Any]) -> None:
        """Drop layers and snapshots nothing can read any more.

        A layer stays only where it shows: in the current stack (read
        anywhere), in the ground-truth snapshot (read anywhere), or in a
        snapshot a live copy layer reads, within the range it copies. Layers
        hidden there by layers above them are dropped, so a long-lived LPAR
        that crashes again and again keeps only what its last dump needs.
        """
        layers: dict[str, Layer] = work["layers"]
        memory = max((b for layer in layers.values() for _, b in layer.extents), default=0)
        needs: dict[str, IntervalSet] = {}
        live: set[str] = set()

        def visit(stack: list[str], ranges: IntervalSet) -> list[str]:
            covered = IntervalSet()
            kept: list[str] = []
            for lid in reversed(stack):
                layer = layers[lid]
                shown = IntervalSet()
                for a, b in ranges:
                    for c, d in layer.extents.intersect(a, b):
                        shown.add(c, d)
                for c, d in covered:
                    shown.remove(c, d)
                if not shown:
                    continue
                kept.append(lid)
                live.add(lid)
                for c, d in shown:
                    covered.add(c, d)
                    if layer.kind == "copy":
                        need = needs.setdefault(layer.snapshot, IntervalSet())
                        need.add(c - layer.delta, d - layer.delta)
            kept.reverse()
            return kept

        everything = IntervalSet([(0, memory)])
        work["stack"] = visit(work["stack"], everything)
        if work["truth"]:
            needs.setdefault(work["truth"], IntervalSet()).add(0, memory)
        snapshots: dict[str, list[str]] = work["snapshots"]
        kept_snaps: dict[str, list[str]] = {}
        done: dict[str, IntervalSet] = {}
        # Copies only refer to older snapshots, so this settles in a few rounds.
        while any(done.get(name) != need for name, need in needs.items()):
            for name, need in list(needs.items()):
                if done.get(name) != need:
                    done[name] = need.copy()
                    kept_snaps[name] = visit(snapshots[name], need)
        work["snapshots"] = kept_snaps
        work["layers"] = {k: v for k, v in layers.items() if k in live}

    @staticmethod
    def _event(work: dict[str, Any], text: str) -> None:
        events: list[list[Any]] = work["events"]
        events.append([round(time.time(), 3), text])
        del events[:-_MAX_EVENTS]

    def _new_layer(self, work: dict[str, Any], layer: Layer) -> Layer:
        layer.id = f"L{work['next_layer']}"
        work["next_layer"] += 1
        work["layers"][layer.id] = layer
        return layer

    def _push_generated(
        self, work: dict[str, Any], seed: int, ranges: Sequence[tuple[int, int]], note: str
    ) -> Layer:
        layer = self._new_layer(
            work, Layer("", "generated", IntervalSet(ranges), seed=seed, note=note)
        )
        work["stack"].append(layer.id)
        return layer

    def _push_image(self, work: dict[str, Any]) -> None:
        # The adopted image's bytes, read in place; RAM above it (where the
        # kernel keeps its scratch area) is in no layer and reads as zero.
        guest = open_adopted(self.config)
        for seg in guest.segments:
            if seg.filesz:
                layer = Layer(
                    "",
                    "image",
                    IntervalSet([(seg.paddr, seg.paddr + seg.filesz)]),
                    file=guest.path,
                    delta=seg.offset - seg.paddr,
                    note="kernel g1 (adopted image)",
                )
                work["stack"].append(self._new_layer(work, layer).id)

    def _push_overlay(
        self, work: dict[str, Any], pieces: Sequence[tuple[int, bytes]], note: str
    ) -> Layer:
        base = min(p for p, _ in pieces)
        layer = self._new_layer(work, Layer("", "overlay", base=base, note=note))
        layer.file = f"{layer.id}.ovl"
        self._store.write_data(layer.file, [(p - base, data) for p, data in pieces])
        for p, data in pieces:
            layer.extents.add(p, p + len(data))
        work["stack"].append(layer.id)
        return layer

    # --------------------------------------------------------------- properties

    @property
    def state(self) -> str:
        """``off``, ``running``, ``crashed`` or ``capture``."""
        with self._reading() as st:
            return str(st["state"])

    @property
    def generation(self) -> int:
        """Boot generation: how many times the LPAR has booted."""
        with self._reading() as st:
            return int(st["generation"])

    @property
    def protected(self) -> bool:
        """Whether a dump header is registered (a crash now would be saved)."""
        with self._reading() as st:
            return st["hv"]["registered"] is not None

    @property
    def dump_waiting(self) -> bool:
        """Whether the firmware holds a dump (``ibm,kernel-dump``)."""
        with self._reading() as st:
            return st["hv"]["dump"] is not None

    def _hv(self, work: Mapping[str, Any]) -> Hypervisor:
        return Hypervisor(self.config, work["hv"])

    def dump_header(self) -> DumpHeader | None:
        """The waiting dump's header as the hypervisor filled it, or None."""
        with self._reading() as st:
            return self._hv(st).dump

    def registered_header(self) -> DumpHeader | None:
        """The header the running kernel registered, or None."""
        with self._reading() as st:
            return self._hv(st).registered

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
            if work["state"] not in ("off", "crashed"):
                raise LparStateError(
                    f"{self.path}: cannot boot: the LPAR is {work['state']} (crash or reboot it)"
                )
            self._boot(work)
            return str(work["state"])

    def _boot(self, work: dict[str, Any]) -> None:
        work["generation"] += 1
        work["counters"]["boots"] += 1
        hv = self._hv(work)
        if hv.dump is not None and self.config.dump_enabled and hv.supported:
            self._capture_boot(work, hv)
        else:
            self._normal_boot(work, hv)

    def _kernel_seed(self, gen: int) -> int:
        # The first kernel's memory is exactly what the LPAR's seed generates.
        return self.config.seed if gen == 1 else derive_seed(self.config.seed, "kernel", gen)

    def _normal_boot(self, work: dict[str, Any], hv: Hypervisor) -> None:
        gen = work["generation"]
        cfg = self.config
        # A fresh kernel owns all of RAM: one new layer covers it, older layers
        # stay only if the last dump's ground truth needs them.
        work["stack"] = []
        if cfg.adopted and gen == 1:
            self._push_image(work)
        else:
            self._push_generated(work, self._kernel_seed(gen), [(0, cfg.memory)], f"kernel g{gen}")
        kernel: dict[str, Any] = {
            "kind": "normal",
            "generation": gen,
            "reserved": [],
            "reason": "",
            "capture": None,
            "boot_time": round(time.time(), 3),
        }
        work["kernel"] = kernel
        work["state"] = "running"
        if not hv.supported:
            kernel["reason"] = (
                "Phyp-dump not supported on this hardware (no ibm,configure-kernel-dump)"
            )
        elif not cfg.dump_enabled:
            kernel["reason"] = "Phyp-dump disabled at boot time (phyp_dump=0)"
        else:
            layout = scratch_layout(cfg)
            problem = layout.problem()
            if problem:
                kernel["reason"] = problem
            else:
                hv.register(layout.registration())
                work["counters"]["registrations"] += 1
                kernel["reserved"] = [[layout.base, cfg.memory]]
        if kernel["reason"]:
            self._event(work, f"boot g{gen}: ordinary kernel, unprotected: {kernel['reason']}")
        else:
            self._event(
                work,
                f"boot g{gen}: ordinary kernel, dump registered, scratch area at "
                f"{kernel['reserved'][0][0]:#x}",
            )

    def _capture_boot(self, work: dict[str, Any], hv: Hypervisor) -> None:
        gen = work["generation"]
        cfg = self.config
        header = hv.dump
        assert header is not None
        dump = work["dump"]
        work["counters"]["capture_boots"] += 1
        # The capture kernel runs in [0, reserve_size) and overwrites it.
        self._push_generated(
            work,
            derive_seed(cfg.seed, "capture", gen),
            [(0, cfg.reserve_size)],
            f"capture kernel g{gen}",
        )
        kernel: dict[str, Any] = {
            "kind": "capture",
            "generation": gen,
            "reserved": [[cfg.reserve_size, cfg.memory]],
            "reason": "",
            "capture": None,
            "boot_time": round(time.time(), 3),
        }
        work["kernel"] = kernel
        if dump is not None:
            # Released ranges of an earlier capture boot of this dump were reused
            # by that kernel: their crashed contents are gone for good.
            prev = dump.get("capture_released") or []
            for s, e in prev:
                self._add_lost(dump, s, e, f"released in capture boot g{dump['last_capture']}")
            dump["capture_released"] = []
            dump["captures"] += 1
            dump["last_capture"] = gen
        if header.status & DUMP_ERROR_FLAG:
            # phyp_dump_setup(): a dump in error is invalidated and the area
            # registered again at dump_area_start, which in the dump-waiting
            # path is the start of the reservation (reserve_size).
            hv.invalidate()
            new = replace_layout_base(header, _page_down(cfg.reserve_size, cfg.page_size))
            hv.register(new)
            work["counters"]["registrations"] += 1
            work["state"] = "running"
            if dump is not None:
                dump["status"] = "invalidated (hypervisor error)"
            if cfg.quirks == "corrected":
                # The corrected kernel keeps only the new scratch area reserved.
                end = _page_up(new.rmo.destination_address + new.rmo.source_length, cfg.page_size)
                to_free = IntervalSet([(cfg.reserve_size, cfg.memory)])
                to_free.remove(new.cpu.destination_address, end)
                for s, e in list(to_free):
                    self._free(work, s, e)
            self._event(
                work,
                f"boot g{gen}: dump flagged in error by the hypervisor: invalidated "
                f"and registered again at {new.cpu.destination_address:#x}"
                + (
                    ""
                    if cfg.quirks == "corrected"
                    else "; everything above the capture region stays reserved (kernel quirk)"
                ),
            )
            return
        scratch_addr = header.cpu.destination_address
        scratch_size = sum(s.source_length for s in header.sections())
        # The dump's data, as the release map lists it: the rest of the reserved
        # area and the bytes the hypervisor copied into each section. (The map's
        # last pair ends inside the CPU section's first page, and a sliver at the
        # very top of RAM is in no extent: it holds no dump data.)
        irs = cfg.reserve_size
        data = dump_data(
            irs,
            irs + (cfg.memory - irs) - scratch_size,
            [(s.destination_address, s.length_copied) for s in header.sections()],
        )
        kernel["capture"] = {
            "unreleased": data.to_json(),
            "init_reserve_start": cfg.reserve_size,
            "init_reserve_size": cfg.memory - cfg.reserve_size,
            "scratch_addr": scratch_addr,
            "scratch_size": scratch_size,
            "reserved_counter": 0,
            "scratch_counter": 0,
            "released": [],
            "releases": 0,
            "reuse_layer": None,
        }
        work["state"] = "capture"
        self._event(
            work,
            f"boot g{gen}: capture kernel, dump waiting; reserved "
            f"{cfg.reserve_size:#x}-{cfg.memory:#x}",
        )

    @staticmethod
    def _add_lost(dump: dict[str, Any], start: int, end: int, reason: str) -> None:
        # A range lost again (released in two capture boots) is listed once.
        if end > start and [start, end, reason] not in dump["lost"]:
            dump["lost"].append([start, end, reason])

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
            if work["state"] not in ("running", "capture"):
                raise LparStateError(
                    f"{self.path}: cannot crash: the LPAR is {work['state']}"
                    + (" (boot it first)" if work["state"] in ("off", "crashed") else "")
                )
            self._crash(work, sc, partial or {}, errors or {})
            if reboot:
                self._boot(work)
            return str(work["state"])

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

    def _crash(
        self,
        work: dict[str, Any],
        sc: Scenario,
        partial: Mapping[str, int],
        errors: Mapping[str, int],
    ) -> None:
        cfg = self.config
        gen = work["generation"]
        crash_time = int(time.time())
        image = self._kernel_of(gen, crash_time, sc)
        work["counters"]["crashes"] += 1
        was = work["state"]
        # The dying kernel writes its crash-time data (VMCOREINFO with CRASHTIME,
        # registers into each paca) into its own memory; an adopted image
        # already holds what its kernel wrote.
        overlays = image.overlays()
        if overlays:
            self._push_overlay(work, overlays, f"kernel g{gen} crash data")
        hv = self._hv(work)
        registered = hv.registered
        work["state"] = "crashed"
        work["kernel"] = None
        if registered is None:
            why = "no dump registered"
            if was == "capture":
                why = "capture kernel crashed; the waiting dump stays in the firmware"
            self._event(work, f"crash g{gen} ({sc.name}, CPU {image.crash_cpu}): {why}")
            return
        copied = dict(partial)
        if sc.rmo_fraction < 1.0 and "rmo" not in copied:
            copied["rmo"] = _page_down(int(registered.rmo.source_length * sc.rmo_fraction), 4096)
        header = hv.crash(copied=copied, errors=errors, hv_error=sc.hv_error)
        assert header is not None
        work["counters"]["dumps"] += 1
        # Ground truth: memory as the kernel left it, before the hypervisor writes.
        snap = f"S{gen}"
        work["snapshots"][snap] = list(work["stack"])
        work["truth"] = snap
        self._hv_save(work, image, header, snap)
        dump: dict[str, Any] = {
            "generation": gen,
            "crash_time": crash_time,
            "crash_cpu": image.crash_cpu,
            "scenario": sc.name,
            "status": "waiting",
            "captures": 0,
            "last_capture": None,
            "capture_released": [],
            "lost": [],
            "sections": {
                name: [
                    getattr(header, name).destination_address,
                    getattr(header, name).source_length,
                    getattr(header, name).length_copied,
                ]
                for name in ("cpu", "hpte", "rmo")
            },
        }
        rmo = header.rmo
        self._add_lost(
            dump,
            rmo.source_address + rmo.length_copied,
            rmo.source_address + rmo.source_length,
            "not copied by the hypervisor (partial copy)",
        )
        self._add_lost(
            dump,
            _RMO_SIZE,
            cfg.reserve_size,
            "capture kernel memory above the 256 MiB low-memory copy",
        )
        work["dump"] = dump
        flags = describe_dump_header(header)[0]
        self._event(
            work,
            f"crash g{gen} ({sc.name}, CPU {image.crash_cpu}): hypervisor saved the dump, {flags}",
        )

    def _hv_save(
        self, work: dict[str, Any], image: CrashedKernel, header: DumpHeader, snap: str
    ) -> None:
        """Lay the hypervisor's saved sections into memory as layers."""
        cpu, hpte, rmo = header.cpu, header.hpte, header.rmo
        if cpu.length_copied:
            regsave = _saved_regsave(image, header)
            self._push_overlay(work, [(cpu.destination_address, regsave)], "hypervisor: CPU state")
        if hpte.length_copied:
            entries = [
                e
                for e in image.hash_page_table(hpte.source_length)
                if 16 * e[0] + 16 <= hpte.length_copied
            ]
            layer = self._new_layer(
                work,
                Layer(
                    "",
                    "hpte",
                    IntervalSet(
                        [(hpte.destination_address, hpte.destination_address + hpte.length_copied)]
                    ),
                    base=hpte.destination_address,
                    note="hypervisor: HPTEs",
                ),
            )
            layer.file = f"{layer.id}.hpt"
            self._store.write_data(layer.file, [(0, pack_hpte_records(entries))])
            work["stack"].append(layer.id)
        if rmo.length_copied:
            layer = self._new_layer(
                work,
                Layer(
                    "",
                    "copy",
                    IntervalSet(
                        [(rmo.destination_address, rmo.destination_address + rmo.length_copied)]
                    ),
                    snapshot=snap,
                    delta=rmo.destination_address - rmo.source_address,
                    note="hypervisor: low-memory copy",
                ),
            )
            work["stack"].append(layer.id)

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
            was = work["state"]
            if was in ("running", "capture"):
                self._hv(work).unregister()
                work["state"] = "off"
                self._event(work, f"reboot g{work['generation']} ({was}), no crash")
            self._boot(work)
            return str(work["state"])

    def invalidate(self) -> str:
        """Give up the waiting dump without collecting the rest; returns the new state.

        In ``capture`` the kernel invalidates the dump, registers again at
        the scratch area, and frees all other reserved memory (what fadump's
        ``release_mem`` does in one write). In ``crashed`` the firmware
        forgets the dump, so the next boot is an ordinary one.
        """
        with self._mutate() as work:
            hv = self._hv(work)
            if hv.dump is None:
                raise LparStateError(f"{self.path}: no dump is waiting; nothing to invalidate")
            if work["state"] == "capture":
                cap = work["kernel"]["capture"]
                reserved = IntervalSet(work["kernel"]["reserved"])
                scratch = page_span(
                    cap["scratch_addr"],
                    cap["scratch_addr"] + cap["scratch_size"],
                    self.config.page_size,
                )
                to_free = reserved.copy()
                to_free.remove(*scratch)
                for s, e in list(to_free):
                    self._free(work, s, e)
                self._reregister(work, "invalidated by request")
                kernel = work["kernel"]
                kernel["reserved"] = [list(scratch)]
            else:
                hv.invalidate()
                if work["dump"] is not None:
                    work["dump"]["status"] = "invalidated by request"
                self._event(work, "dump invalidated in the firmware; the next boot is ordinary")
            return str(work["state"])

    # ------------------------------------------------------------------ release

    def release(self, addr: int, size: int) -> ReleaseResult:
        """Release ``size`` bytes at ``addr`` as a write of ``"ADDR SIZE"`` to release_region does."""
        if not (0 <= addr <= _U64 and 0 <= size <= _U64):
            raise ReleaseError("release: address and size must be 64-bit unsigned", errno.EINVAL)
        return self._release(addr, size)

    def release_text(self, data: bytes | str) -> ReleaseResult:
        """A write to ``/sys/kernel/release_region``: ``"%lx %lx"``, else EINVAL."""
        raw = data.encode("latin-1") if isinstance(data, str) else bytes(data)
        with self._reading() as st:
            if st["state"] != "capture":
                raise ReleaseError(self._no_dump_message(st), errno.ENOENT)
        try:
            addr, size = parse_release_request(raw, "release_region")
        except FormatError as exc:
            raise ReleaseError(f"{exc} (EINVAL)", errno.EINVAL) from None
        return self._release(addr, size)

    def _no_dump_message(self, st: Mapping[str, Any]) -> str:
        return (
            f"{self.path}: no dump is waiting (LPAR {st['state']}): "
            "/sys/kernel/release_region does not exist"
        )

    def _release(self, addr: int, size: int) -> ReleaseResult:
        with self._mutate() as work:
            if work["state"] != "capture":
                raise ReleaseError(self._no_dump_message(work), errno.ENOENT)
            if self.config.quirks == "faithful":
                result = self._release_faithful(work, addr, size)
            else:
                result = self._release_corrected(work, addr, size)
            return result

    @staticmethod
    def _release_area(cap: Mapping[str, Any]) -> ReleaseArea:
        """The capture kernel's reservation and scratch area, for the release rules."""
        return ReleaseArea(
            cap["init_reserve_start"],
            cap["init_reserve_size"],
            cap["scratch_addr"],
            cap["scratch_size"],
        )

    def _release_faithful(self, work: dict[str, Any], addr: int, size: int) -> ReleaseResult:
        cap = work["kernel"]["capture"]
        area = self._release_area(cap)
        cap["releases"] += 1
        work["counters"]["releases"] += 1
        # track_freed_range(): unclamped values into two counters (unsigned long).
        counted = counts_in_reserved(addr, area) or counts_in_scratch(addr, area)
        counters = ReleaseCounters(cap["reserved_counter"], cap["scratch_counter"]).count(
            addr, size, area
        )
        cap["reserved_counter"], cap["scratch_counter"] = counters.reserved, counters.scratch
        rereg = reregisters(addr, counters, area)
        # Clamp as the kernel does: the start moves up but the length is kept,
        # so "0 X" releases [reserve start, reserve start + X]; pages are freed
        # through one page past the end (kernel quirk). A start past the end
        # underflows in the kernel; hvsim frees nothing (but the write still counted).
        rel = faithful_release(addr, size, area, self.config.page_size)
        note = ""
        if rel.underflow:
            note = "start past the end of the reserved area: nothing freed (kernel underflow)"
        freed: list[tuple[int, int]] = []
        if rel.freed is not None:
            freed = self._free(work, *rel.freed)
        parts = [f"release {addr:#x} {size:#x}: freed {sum(e - s for s, e in freed):#x} bytes"]
        if rel.clamped:
            parts.append("clamped")
        if not counted:
            parts.append("not counted")
        if note:
            parts.append(note)
        self._event(work, ", ".join(parts))
        if rereg:
            self._reregister(work, "release counters reached the reserved and scratch sizes")
        return ReleaseResult(addr, size, tuple(freed), rel.clamped, rereg, note)

    def _release_corrected(self, work: dict[str, Any], addr: int, size: int) -> ReleaseResult:
        cap = work["kernel"]["capture"]
        area = self._release_area(cap)
        if addr < area.start or addr + size > area.end:
            raise ReleaseError(
                f"release {addr:#x} {size:#x}: outside the reserved area "
                f"{area.start:#x}-{area.end:#x} (EINVAL)",
                errno.EINVAL,
            )
        cap["releases"] += 1
        work["counters"]["releases"] += 1
        # A page goes back once none of its dump bytes is still unreleased: a
        # page shared by two sections goes back when the second is released.
        rel = corrected_release(addr, size, IntervalSet(cap["unreleased"]), self.config.page_size)
        cap["unreleased"] = rel.unreleased.to_json()
        freed: list[tuple[int, int]] = []
        for a, b in rel.pages:
            freed.extend(self._free(work, a, b))
        rereg = rel.complete
        if rereg:
            # Nothing of the dump is left: reserved pages that held no dump data
            # (above a partial copy, the sliver at the top of RAM) go back too.
            for a, b in list(IntervalSet(work["kernel"]["reserved"])):
                freed.extend(self._free(work, a, b))
        self._event(
            work, f"release {addr:#x} {size:#x}: freed {sum(e - s for s, e in freed):#x} bytes"
        )
        if rereg:
            self._reregister(work, "every byte of the dump released")
        return ReleaseResult(addr, size, tuple(sorted(freed)), False, rereg)

    def _free(self, work: dict[str, Any], start: int, end: int) -> list[tuple[int, int]]:
        """Give still-reserved pages in ``[start, end)`` back to the kernel, which reuses them."""
        kernel = work["kernel"]
        reserved = IntervalSet(kernel["reserved"])
        freed = reserved.intersect(start, end)
        if not freed:
            return []
        for s, e in freed:
            reserved.remove(s, e)
        kernel["reserved"] = reserved.to_json()
        cap = kernel["capture"]
        if cap is not None:
            released = IntervalSet(cap["released"])
            for s, e in freed:
                released.add(s, e)
            cap["released"] = released.to_json()
            unreleased = IntervalSet(cap["unreleased"])
            for s, e in freed:
                unreleased.remove(s, e)
            cap["unreleased"] = unreleased.to_json()
            if work["dump"] is not None:
                dump_released = IntervalSet(work["dump"]["capture_released"])
                for s, e in freed:
                    dump_released.add(s, e)
                work["dump"]["capture_released"] = dump_released.to_json()
        # Released memory is reused at once: it reads as the running kernel's new data.
        layers: dict[str, Layer] = work["layers"]
        reuse_id = cap["reuse_layer"] if cap is not None else None
        if reuse_id is None or reuse_id not in layers or work["stack"][-1] != reuse_id:
            gen = kernel["generation"]
            layer = self._push_generated(
                work,
                derive_seed(self.config.seed, "reuse", gen),
                [],
                f"memory reused by kernel g{gen}",
            )
            reuse_id = layer.id
            if cap is not None:
                cap["reuse_layer"] = reuse_id
        for s, e in freed:
            layers[reuse_id].extents.add(s, e)
        return freed

    def _reregister(self, work: dict[str, Any], why: str) -> None:
        """Invalidate the dump and register at the old scratch area; back to ``running``."""
        hv = self._hv(work)
        kernel = work["kernel"]
        cap = kernel["capture"]
        header = hv.dump
        assert header is not None and cap is not None
        hv.invalidate()
        new = replace_layout_base(header, cap["scratch_addr"])
        hv.register(new)
        work["counters"]["registrations"] += 1
        work["counters"]["reregistrations"] += 1
        work["state"] = "running"
        if work["dump"] is not None:
            work["dump"]["status"] = f"released ({why})"
            work["dump"]["capture_released"] = []
        ps = self.config.page_size
        scratch = page_span(cap["scratch_addr"], cap["scratch_addr"] + cap["scratch_size"], ps)
        reserved = IntervalSet(kernel["reserved"])
        warning = ""
        if self.config.quirks == "corrected":
            # The corrected kernel takes its scratch area back before registering it.
            reserved.add(*scratch)
        elif reserved.intersect(*scratch) != [scratch]:
            warning = "; the registered scratch area is partly in use by the kernel (kernel quirk)"
        leftover = IntervalSet(kernel["reserved"])
        leftover.remove(*scratch)
        if leftover and self.config.quirks == "faithful":
            warning += f"; re-registered early: {leftover.total():#x} bytes were never released"
        kernel["reserved"] = reserved.to_json()
        kernel["capture_done"] = cap
        kernel["capture"] = None
        self._event(
            work,
            f"dump invalidated and registered again at {cap['scratch_addr']:#x} ({why}){warning}",
        )

    # --------------------------------------------------------------- memory

    def read_phys(self, paddr: int, size: int) -> bytes:
        """Physical memory as it is now (what the running kernel's RAM holds)."""
        with self._reading() as st:
            self._check_range(paddr, size)
            return bytes(self._reader.read(st["stack"], paddr, size))

    def read_phys_into(self, paddr: int, out: memoryview) -> None:
        """Like :meth:`read_phys`, into a caller's writable buffer."""
        with self._reading() as st:
            self._check_range(paddr, len(out))
            self._reader.read_into(st["stack"], paddr, out)

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
            stack = self._snapshots[st["truth"]] if st["truth"] else st["stack"]
            return bytes(self._reader.read(stack, paddr, size))

    def expected_into(self, paddr: int, out: memoryview) -> None:
        """Like :meth:`expected`, into a caller's writable buffer (no copies: for big scans)."""
        with self._reading() as st:
            self._check_range(paddr, len(out))
            stack = self._snapshots[st["truth"]] if st["truth"] else st["stack"]
            self._reader.read_into(stack, paddr, out)

    def _check_range(self, paddr: int, size: int) -> None:
        if paddr < 0 or size < 0 or paddr + size > self.config.memory:
            raise ValueError(
                f"physical range {paddr:#x}+{size:#x} is outside RAM (0-{self.config.memory:#x})"
            )

    def _kernel_of(self, gen: int, crash_time: int, sc: Scenario) -> CrashedKernel:
        if self.config.adopted and gen == 1:
            return AdoptedKernel(self.config)
        return KernelImage(self.config, gen, crash_time, sc)

    def _dump_image(self, st: Mapping[str, Any]) -> CrashedKernel | None:
        dump = st["dump"]
        if dump is None:
            return None
        return self._kernel_of(dump["generation"], dump["crash_time"], SCENARIOS[dump["scenario"]])

    def expected_cpu_states(self) -> list[CpuState]:
        """Every CPU's registers at the crash of the last dump (empty before any dump)."""
        with self._reading() as st:
            image = self._dump_image(st)
            return [] if image is None else image.cpu_states()

    def expected_hptes(self) -> list[tuple[int, int, int]]:
        """The crashed kernel's hash page table as ``(slot, v, r)`` (empty before any dump)."""
        with self._reading() as st:
            image = self._dump_image(st)
            if image is None:
                return []
            return sorted(image.hash_page_table(hpt_size(self.config.memory)))

    def crashed_kernel(self) -> CrashedKernel | None:
        """The kernel image of the last dump (its banner, VMCOREINFO, crash CPU), or None."""
        with self._reading() as st:
            return self._dump_image(st)

    def last_dump(self) -> DumpInfo | None:
        """The last dump the hypervisor took, or None."""
        with self._reading() as st:
            dump = st["dump"]
            if dump is None:
                return None
            return DumpInfo(
                generation=dump["generation"],
                crash_time=dump["crash_time"],
                crash_cpu=dump["crash_cpu"],
                scenario=dump["scenario"],
                status=dump["status"],
                capture_boots=dump["captures"],
                sections={k: (v[0], v[1], v[2]) for k, v in dump["sections"].items()},
                lost=tuple(sorted((int(a), int(b), str(r)) for a, b, r in dump["lost"])),
            )

    def lost_ranges(self) -> list[tuple[int, int, str]]:
        """Ranges of the last dump's crashed memory that no collector can recover, with why."""
        with self._reading() as st:
            dump = st["dump"]
            if dump is None:
                return []
            out = [(int(s), int(e), str(r)) for s, e, r in dump["lost"]]
            return sorted(out)

    def released_ranges(self) -> list[tuple[int, int]]:
        """Pages freed so far by the running capture kernel."""
        with self._reading() as st:
            kernel = st["kernel"]
            cap = kernel and (kernel["capture"] or kernel.get("capture_done"))
            return [] if not cap else [(s, e) for s, e in cap["released"]]

    def reserved_ranges(self) -> list[tuple[int, int]]:
        """Memory the running kernel keeps reserved (scratch area, or the waiting dump)."""
        with self._reading() as st:
            kernel = st["kernel"]
            return [] if kernel is None else [(s, e) for s, e in kernel["reserved"]]

    # ----------------------------------------------------- capture-kernel views

    def _need_running(self, st: Mapping[str, Any], what: str) -> dict[str, Any]:
        if st["state"] not in ("running", "capture") or st["kernel"] is None:
            raise ViewUnavailable(f"{self.path}: {what}: the LPAR is {st['state']}, no kernel runs")
        kernel: dict[str, Any] = st["kernel"]
        return kernel

    def _need_capture(self, st: Mapping[str, Any], what: str) -> dict[str, Any]:
        if st["state"] != "capture":
            raise ViewUnavailable(
                f"{self.path}: {what} does not exist: no dump is waiting (LPAR {st['state']})"
            )
        cap: dict[str, Any] = st["kernel"]["capture"]
        return cap

    def device_tree(self) -> dict[str, bytes]:
        """The running kernel's device tree properties, by path (``rtas/ibm,kernel-dump`` ...).

        ``rtas/ibm,dump-kernel`` and ``rtas/ibm,kernel-dump`` are there only
        while the dump waits: when the last release re-registers they go,
        with ``/proc/vmcore`` and ``release_region`` (Linux's
        ``/proc/device-tree`` kept the boot-time tree; hvsim shows the
        firmware's present state, so a tool never sees a dump that is gone).
        """
        with self._reading() as st:
            self._need_running(st, "/proc/device-tree")
            cfg = self.config
            tree: dict[str, bytes] = {
                "model": b"IBM,9117-MMA\0",
                "compatible": b"IBM,9117-MMA\0chrp\0",
                "device_type": b"chrp\0",
                "ibm,partition-name": cfg.name.encode() + b"\0",
                "memory@0/device_type": b"memory\0",
                "memory@0/reg": cfg.memory.to_bytes(16, "big"),
                "rtas/name": b"rtas\0",
                "cpus/PowerPC,POWER6@0/ibm,pft-size": (0).to_bytes(4, "big")
                + (hpt_size(cfg.memory).bit_length() - 1).to_bytes(4, "big"),
            }
            waiting = st["state"] == "capture"
            hv = self._hv(dict(st))
            tree.update(
                hv.rtas_properties(
                    dump_kernel=waiting, kernel_dump=hv.dump_bytes if waiting else None
                )
            )
            return tree

    def proc_version(self) -> str:
        """``/proc/version``: the running kernel's banner (the same kernel boots for capture)."""
        with self._reading() as st:
            kernel = self._need_running(st, "/proc/version")
            return self._kernel_of(kernel["generation"], 0, SCENARIOS["panic"]).banner()

    def phyp_dump_active_text(self) -> str:
        """``/sys/kernel/phyp_dump_active``: ``1`` when booted with ``phyp_dump=1``.

        Absent (ENOENT) without firmware support, where phyp_dump gives up
        before creating its files.
        """
        with self._reading() as st:
            self._need_running(st, "/sys/kernel/phyp_dump_active")
            if not self.config.firmware_dump:
                raise ViewUnavailable(
                    f"{self.path}: /sys/kernel/phyp_dump_active does not exist: "
                    "the firmware has no dump support"
                )
            return f"{1 if self.config.dump_enabled else 0:x}\n"

    def _kernel_overhead(self) -> int:
        frames = self.config.memory // self.config.page_size
        # Capped so a huge LPAR's capture kernel still shows memory of its own.
        return min(frames * _STRUCT_PAGE_SIZE, self.config.reserve_size // 2)

    def boot_id_text(self) -> str:
        """``/proc/sys/kernel/random/boot_id``: a UUID that changes with every boot."""
        with self._reading() as st:
            kernel = self._need_running(st, "/proc/sys/kernel/random/boot_id")
            value = derive_seed(self.config.seed, "boot-id", kernel["generation"])
            value = (value << 64) | derive_seed(value, "boot-id-low")
            return f"{uuid.UUID(int=value, version=4)}\n"

    def meminfo_text(self) -> str:
        """``/proc/meminfo``: MemTotal is RAM minus what stays reserved (grows as memory is released)."""
        with self._reading() as st:
            kernel = self._need_running(st, "/proc/meminfo")
            reserved = IntervalSet(kernel["reserved"]).total()
            available = self.config.memory - reserved
            total = max(0, available - self._kernel_overhead())
            if kernel["kind"] == "capture" and st["state"] == "capture":
                used = 96 << 20
            else:
                used = total // 3
            free = max(0, total - used)
            kb = 1024
            lines = [
                ("MemTotal", total // kb),
                ("MemFree", free // kb),
                ("Buffers", (used // 16) // kb),
                ("Cached", (used // 4) // kb),
                ("SwapCached", 0),
                ("Active", (used // 2) // kb),
                ("Inactive", (used // 4) // kb),
                ("SwapTotal", 0),
                ("SwapFree", 0),
                ("Dirty", 0),
                ("Slab", (used // 8) // kb),
                ("PageTables", (used // 64) // kb),
                ("CommitLimit", (total // 2) // kb),
                ("Committed_AS", used // kb),
                ("VmallocTotal", 8589934592),
                ("HugePages_Total", 0),
                ("Hugepagesize", 16384),
            ]
            out = []
            for key, value in lines:
                if key.startswith("HugePages"):
                    out.append(f"{key + ':':<16}{value:>8}")
                else:
                    out.append(f"{key + ':':<16}{value:>8} kB")
            return "\n".join(out) + "\n"

    def release_map(self) -> ReleaseMap:
        """The values ``release_region`` shows (see :meth:`release_region_text`)."""
        with self._reading() as st:
            cap = self._need_capture(st, "/sys/kernel/release_region")
            header = self._hv(dict(st)).dump
            assert header is not None
            rest = Extent(cap["init_reserve_start"], cap["init_reserve_size"] - cap["scratch_size"])
            if self.config.literal_release_map:
                # The kernel prints its own, never-relocated header: bare offsets
                # and zero lengths (a quirk of the original code).
                cpu = header.cpu.source_length
                hpte = header.hpte.source_length
                return ReleaseMap(Extent(0, 0), Extent(cpu, 0), Extent(cpu + hpte, 0), rest)
            return ReleaseMap(
                Extent(header.cpu.destination_address, header.cpu.length_copied),
                Extent(header.hpte.destination_address, header.hpte.length_copied),
                Extent(header.rmo.destination_address, header.rmo.length_copied),
                rest,
            )

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

    def _vmcore_layout(self, st: Mapping[str, Any]) -> CoreLayout:
        dump = st["dump"]
        key = (dump["generation"], dump["crash_time"])
        if self._vmcore_cache is not None and self._vmcore_cache[0] == key:
            return self._vmcore_cache[1]
        image = self._dump_image(st)
        assert image is not None
        cfg = self.config
        notes = _cpu_notes(image, self._hv(st).dump, cfg.endian)
        notes.append(Note(VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE, image.vmcoreinfo()))
        segments = [
            LoadSegment(0, cfg.reserve_size),
            LoadSegment(cfg.reserve_size, cfg.memory - cfg.reserve_size),
        ]
        layout = build_core_header(notes, segments, cfg.endian, page_size=cfg.page_size)
        self._vmcore_cache = (key, layout)
        return layout

    def vmcore_size(self) -> int:
        """Size of ``/proc/vmcore`` in bytes."""
        with self._reading() as st:
            self._need_capture(st, "/proc/vmcore")
            return self._vmcore_layout(st).file_size

    def vmcore_layout(self) -> CoreLayout:
        """The ELF layout of ``/proc/vmcore`` (header bytes and segment offsets)."""
        with self._reading() as st:
            self._need_capture(st, "/proc/vmcore")
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
            self._need_capture(st, "/proc/vmcore")
            layout = self._vmcore_layout(st)
            end = min(offset + size, layout.file_size)
            if offset >= end:
                return b""
            out = bytearray(end - offset)
            view = memoryview(out)
            if offset < layout.data_start:
                n = min(end, layout.data_start) - offset
                view[:n] = layout.header[offset : offset + n]
            for ph in layout.segments:
                lo = max(offset, ph.p_offset)
                hi = min(end, ph.p_offset + ph.p_filesz)
                if lo < hi:
                    paddr = ph.p_paddr + (lo - ph.p_offset)
                    self._reader.read_into(st["stack"], paddr, view[lo - offset : hi - offset])
            return bytes(out)

    # ------------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """Everything ``hvsim status`` shows, as JSON-ready data."""
        with self._reading() as st:
            cfg = self.config
            hv = self._hv(dict(st))
            kernel = st["kernel"]
            out: dict[str, Any] = {
                "path": self.path,
                "config": cfg.to_json(),
                "state": st["state"],
                "generation": st["generation"],
                "protected": hv.registered is not None,
                "dump_waiting": hv.dump is not None,
                "firmware_dump": cfg.firmware_dump,
            }
            if kernel is not None:
                reserved = IntervalSet(kernel["reserved"])
                k: dict[str, Any] = {
                    "kind": kernel["kind"],
                    "generation": kernel["generation"],
                    "not_registered_reason": kernel["reason"] or None,
                    "reserved": reserved.to_json(),
                    "reserved_bytes": reserved.total(),
                }
                cap = kernel["capture"] or kernel.get("capture_done")
                if cap is not None:
                    released = IntervalSet(cap["released"])
                    k["release"] = {
                        "active": kernel["capture"] is not None,
                        "reserved_area": [
                            cap["init_reserve_start"],
                            cap["init_reserve_start"] + cap["init_reserve_size"],
                        ],
                        "scratch_area": [
                            cap["scratch_addr"],
                            cap["scratch_addr"] + cap["scratch_size"],
                        ],
                        "released": released.to_json(),
                        "released_bytes": released.total(),
                        "unreleased_dump_bytes": IntervalSet(cap["unreleased"]).total(),
                        "writes": cap["releases"],
                        "reserved_counter": cap["reserved_counter"],
                        "reserved_target": cap["init_reserve_size"],
                        "scratch_counter": cap["scratch_counter"],
                        "scratch_target": cap["scratch_size"],
                    }
                out["kernel"] = k
            for name, header in (("registered_header", hv.registered), ("dump_header", hv.dump)):
                if header is not None:
                    out[name] = _header_json(header)
            dump = st["dump"]
            if dump is not None:
                out["dump"] = {
                    "generation": dump["generation"],
                    "crash_time": dump["crash_time"],
                    "crash_cpu": dump["crash_cpu"],
                    "scenario": dump["scenario"],
                    "status": dump["status"],
                    "capture_boots": dump["captures"],
                    "lost": sorted(dump["lost"]),
                    "lost_bytes": IntervalSet((s, e) for s, e, _ in dump["lost"]).total(),
                }
            out["counters"] = dict(st["counters"])
            out["events"] = list(st["events"])
            return out

    def disk_usage(self) -> int:
        """Bytes of disk the LPAR directory uses."""
        return self._store.disk_usage()


def _header_json(h: DumpHeader) -> dict[str, Any]:
    from drgn_hvdump.formats.dump_header import section_error_names, status_names

    return {
        "status": h.status,
        "status_flags": status_names(h.status),
        "sections": {
            name: {
                "dump_flags": s.dump_flags,
                "source_type": s.source_type,
                "error_flags": s.error_flags,
                "errors": section_error_names(s.error_flags),
                "source_address": s.source_address,
                "source_length": s.source_length,
                "length_copied": s.length_copied,
                "destination_address": s.destination_address,
            }
            for name, s in (("cpu", h.cpu), ("hpte", h.hpte), ("rmo", h.rmo))
        },
    }


def replace_layout_base(header: DumpHeader, base: int) -> DumpHeader:
    """A fresh registration with ``header``'s section sizes at scratch address ``base``."""
    from drgn_hvdump.formats.dump_header import registration_header

    return registration_header(
        header.cpu.source_length, header.hpte.source_length, header.rmo.source_length, base
    )


def _saved_regsave(image: CrashedKernel, header: DumpHeader) -> bytes:
    """The register save area as the hypervisor copied it (cut short by a partial copy)."""
    return build_regsave(image.cpu_states())[: header.cpu.length_copied]


def _cpu_notes(image: CrashedKernel, header: DumpHeader | None, order: ByteOrder) -> list[Note]:
    """The capture kernel's ``NT_PRSTATUS`` notes, built at boot from the saved CPU state.

    A register save area the hypervisor did not copy whole gives none: the
    capture kernel cannot tell which CPUs' entries are complete.
    """
    if header is None or not header.cpu.length_copied:
        return []
    try:
        states = parse_regsave(_saved_regsave(image, header), "register save area")
    except FormatError:
        return []
    return prstatus_notes(((s.cpu, cpu_state_to_pt_regs(s)) for s in states), order)
