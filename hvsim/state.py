"""The LPAR's persisted state, typed: what ``state.json`` holds, with its JSON round trip.

:class:`LparState` is the whole of it: the life-cycle state, the memory's
layer stack and ground-truth snapshots, the hypervisor's registered and
waiting headers, the running kernel (:class:`KernelState`, with its
capture-time release bookkeeping :class:`CaptureState`), the last dump
(:class:`DumpRecord`), counters and recent events. The JSON keys are those
of earlier versions, so existing LPAR directories open unchanged.
:class:`DumpInfo` is the read-only view of a dump that callers get.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from drgn_hvdump.intervals import IntervalSet
from drgn_hvdump.model.release import ReleaseArea

from .memory import Layer

__all__ = [
    "STATES",
    "CaptureState",
    "Counters",
    "DumpInfo",
    "DumpRecord",
    "KernelState",
    "LparState",
]

STATES = ("off", "running", "crashed", "capture")
_MAX_EVENTS = 100


@dataclass
class Counters:
    """How often each life-cycle step happened (``hvsim status``)."""

    boots: int = 0
    capture_boots: int = 0
    crashes: int = 0
    dumps: int = 0
    registrations: int = 0
    reregistrations: int = 0
    releases: int = 0


@dataclass
class CaptureState:
    """A capture kernel's reservation and what has been released from it.

    ``unreleased`` is the dump's data still reserved (as the release map
    lists it); ``released`` the pages freed so far; the two counters are the
    faithful kernel's ``track_freed_range()`` sums; ``reuse_layer`` the
    memory layer that holds what the kernel wrote into freed pages.
    """

    unreleased: IntervalSet
    init_reserve_start: int
    init_reserve_size: int
    scratch_addr: int
    scratch_size: int
    reserved_counter: int = 0
    scratch_counter: int = 0
    released: IntervalSet = field(default_factory=IntervalSet)
    releases: int = 0
    reuse_layer: str | None = None

    @property
    def area(self) -> ReleaseArea:
        """The reservation and scratch area, for the release rules."""
        return ReleaseArea(
            self.init_reserve_start, self.init_reserve_size, self.scratch_addr, self.scratch_size
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["unreleased"] = self.unreleased.to_json()
        out["released"] = self.released.to_json()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CaptureState:
        values = dict(data)
        values["unreleased"] = IntervalSet(values["unreleased"])
        values["released"] = IntervalSet(values["released"])
        return cls(**values)


@dataclass
class KernelState:
    """The running kernel: ``normal`` or ``capture``, and the memory it keeps reserved.

    ``reason`` says why a normal kernel is not protected (empty when it
    registered); ``capture`` is set while a dump waits, ``capture_done``
    keeps it after the last release re-registered.
    """

    kind: str
    generation: int
    reserved: IntervalSet = field(default_factory=IntervalSet)
    reason: str = ""
    capture: CaptureState | None = None
    capture_done: CaptureState | None = None
    boot_time: float = field(default_factory=lambda: round(time.time(), 3))
    offline: IntervalSet = field(default_factory=IntervalSet)
    """Pages taken out of use (``soft_offline_page``): never handed out again this boot."""

    @property
    def release_state(self) -> CaptureState | None:
        """The capture bookkeeping, active or finished."""
        return self.capture or self.capture_done

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "generation": self.generation,
            "reserved": self.reserved.to_json(),
            "reason": self.reason,
            "capture": None if self.capture is None else self.capture.to_json(),
            "boot_time": self.boot_time,
        }
        if self.capture_done is not None:
            out["capture_done"] = self.capture_done.to_json()
        if self.offline:
            out["offline"] = self.offline.to_json()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KernelState:
        cap, done = data.get("capture"), data.get("capture_done")
        return cls(
            kind=data["kind"],
            generation=data["generation"],
            reserved=IntervalSet(data["reserved"]),
            reason=data["reason"],
            capture=None if cap is None else CaptureState.from_json(cap),
            capture_done=None if done is None else CaptureState.from_json(done),
            boot_time=data["boot_time"],
            offline=IntervalSet(data.get("offline", [])),
        )


@dataclass
class DumpRecord:
    """The last dump the hypervisor took, as the simulator tracks it.

    ``sections`` maps ``cpu``, ``hpte``, ``rmo`` to (destination, bytes
    requested, bytes copied); ``capture_released`` what the current capture
    boot released (lost for good if the capture kernel goes down);
    ``lost`` the crashed memory no collector can recover, with why.
    """

    generation: int
    crash_time: int
    crash_cpu: int
    scenario: str
    sections: dict[str, tuple[int, int, int]]
    status: str = "waiting"
    captures: int = 0
    last_capture: int | None = None
    capture_released: IntervalSet = field(default_factory=IntervalSet)
    lost: list[tuple[int, int, str]] = field(default_factory=list)
    sources: dict[str, int] = field(default_factory=dict)

    def captured_again(self, gen: int) -> None:
        """A capture boot (generation ``gen``) of this dump: what an earlier capture boot
        released was reused by that kernel, so its crashed contents are gone for good."""
        for s, e in self.capture_released:
            self.add_lost(s, e, f"released in capture boot g{self.last_capture}")
        self.capture_released = IntervalSet()
        self.captures += 1
        self.last_capture = gen

    def source(self, name: str) -> int:
        """Where section ``name`` was copied from (phyp's low memory: 0)."""
        return self.sources.get(name, 0)

    def add_lost(self, start: int, end: int, reason: str) -> None:
        # A range lost again (released in two capture boots) is listed once.
        if end > start and (start, end, reason) not in self.lost:
            self.lost.append((start, end, reason))

    def info(self) -> DumpInfo:
        return DumpInfo(
            generation=self.generation,
            crash_time=self.crash_time,
            crash_cpu=self.crash_cpu,
            scenario=self.scenario,
            status=self.status,
            capture_boots=self.captures,
            sections=dict(self.sections),
            lost=tuple(sorted(self.lost)),
            sources=dict(self.sources),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "crash_time": self.crash_time,
            "crash_cpu": self.crash_cpu,
            "scenario": self.scenario,
            "status": self.status,
            "captures": self.captures,
            "last_capture": self.last_capture,
            "capture_released": self.capture_released.to_json(),
            "lost": [list(x) for x in self.lost],
            "sections": {k: list(v) for k, v in self.sections.items()},
            **({"sources": dict(self.sources)} if self.sources else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DumpRecord:
        return cls(
            generation=data["generation"],
            crash_time=data["crash_time"],
            crash_cpu=data["crash_cpu"],
            scenario=data["scenario"],
            sections={k: (int(v[0]), int(v[1]), int(v[2])) for k, v in data["sections"].items()},
            status=data["status"],
            captures=data["captures"],
            last_capture=data["last_capture"],
            capture_released=IntervalSet(data["capture_released"]),
            lost=[(int(a), int(b), str(r)) for a, b, r in data["lost"]],
            sources={k: int(v) for k, v in data.get("sources", {}).items()},
        )


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
    sources: Mapping[str, int] = field(default_factory=dict)

    @property
    def waiting(self) -> bool:
        return self.status == "waiting"

    @property
    def fadump(self) -> bool:
        """Whether fadump took the dump (its sections: cpu, hpte, boot0..., param)."""
        return "rmo" not in self.sections

    def copies(self) -> list[tuple[str, int, int, int]]:
        """``(name, source, destination, bytes copied)`` of each memory copy the firmware made."""
        return [
            (name, self.sources.get(name, 0), dest, copied)
            for name, (dest, _, copied) in self.sections.items()
            if name == "rmo" or name.startswith("boot")
        ]

    @property
    def scratch(self) -> tuple[int, int]:
        """The area ``[start, end)`` the sections were saved in (phyp's scratch area,
        fadump's reserved area without its headers)."""
        start = self.sections["cpu"][0]
        end = max(d + n for name, (d, n, _) in self.sections.items() if name != "param")
        return start, end


@dataclass
class LparState:
    """Everything ``state.json`` holds (see the module docstring).

    ``layers`` are the memory layers by id; ``stack`` the current memory
    (bottom first); ``snapshots`` frozen stacks, ``truth`` the one that is
    the last dump's ground truth; ``hv`` the hypervisor's own state (see
    :class:`hvsim.hypervisor.Hypervisor`).
    """

    serial: int = 0
    state: str = "off"
    generation: int = 0
    next_layer: int = 1
    layers: dict[str, Layer] = field(default_factory=dict)
    stack: list[str] = field(default_factory=list)
    snapshots: dict[str, list[str]] = field(default_factory=dict)
    truth: str | None = None
    hv: dict[str, Any] = field(default_factory=lambda: {"registered": None, "dump": None})
    kernel: KernelState | None = None
    dump: DumpRecord | None = None
    counters: Counters = field(default_factory=Counters)
    events: list[list[Any]] = field(default_factory=list)

    def event(self, text: str) -> None:
        """Log ``text`` with the time; only the last 100 events are kept."""
        self.events.append([round(time.time(), 3), text])
        del self.events[:-_MAX_EVENTS]

    def add_layer(self, layer: Layer) -> Layer:
        """Give ``layer`` the next id and keep it (not yet on the stack)."""
        layer.id = f"L{self.next_layer}"
        self.next_layer += 1
        self.layers[layer.id] = layer
        return layer

    def to_json(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "state": self.state,
            "generation": self.generation,
            "next_layer": self.next_layer,
            "layers": {k: v.to_json() for k, v in self.layers.items()},
            "stack": list(self.stack),
            "snapshots": {k: list(v) for k, v in self.snapshots.items()},
            "truth": self.truth,
            "hv": dict(self.hv),
            "kernel": None if self.kernel is None else self.kernel.to_json(),
            "dump": None if self.dump is None else self.dump.to_json(),
            "counters": asdict(self.counters),
            "events": [list(e) for e in self.events],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LparState:
        kernel, dump = data["kernel"], data["dump"]
        return cls(
            serial=data["serial"],
            state=data["state"],
            generation=data["generation"],
            next_layer=data["next_layer"],
            layers={k: Layer.from_json(v) for k, v in data["layers"].items()},
            stack=list(data["stack"]),
            snapshots={k: list(v) for k, v in data["snapshots"].items()},
            truth=data["truth"],
            hv=dict(data["hv"]),
            kernel=None if kernel is None else KernelState.from_json(kernel),
            dump=None if dump is None else DumpRecord.from_json(dump),
            counters=Counters(**data["counters"]),
            events=[list(e) for e in data["events"]],
        )
