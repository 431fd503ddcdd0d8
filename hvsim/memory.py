"""Physical memory of a simulated LPAR as a stack of layers, generated on demand.

Nothing the size of RAM is ever stored. Memory is a stack of **layers**, each
covering a set of physical ranges (its extents) and supplying their bytes:

``generated``
    pages made by :func:`hvsim.pages.gen_pages_into` from a seed (a
    kernel's memory, the capture kernel's low memory, memory reused after a
    release). A boot pushes one covering all of RAM.
``overlay``
    bytes stored in a sparse data file at ``physical address - base`` (the
    crashed kernel's VMCOREINFO note and banner, the register save area).
``hpte``
    a sparse hashed page table: 16-byte entries at ``base + 16 * slot``,
    stored as a sorted list of (slot, v, r), zeros elsewhere.
``image``
    bytes of an adopted real memory image (an ELF core outside the LPAR
    directory, read in place) at file offset ``physical address + delta``.
``copy``
    the hypervisor's copy of low memory: bytes at ``addr`` are those of the
    named *snapshot* (a frozen stack) at ``addr - delta``. Nothing is copied
    on disk; the snapshot keeps the layers it needs alive.
``memmap``
    the crashed kernel's memory model (:mod:`hvsim.memmodel`): its metadata
    and a ``struct page`` for every page, generated from ``seed`` for RAM of
    ``delta`` bytes whose kernel owns memory up to ``base``, all of it below ``low``.

A read resolves, for each byte, the topmost layer covering it, then fills one
output buffer piece by piece: generated pages straight into the buffer with
the C generator, overlays with ``preadv``, copies recursively. This module
knows nothing about kernels or hypervisors; :mod:`hvsim.lpar` decides what
the layers are.
"""

from __future__ import annotations

import bisect
import errno
import functools
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Literal

from drgn_hvdump import native
from drgn_hvdump.intervals import IntervalSet

from . import pages
from .memmodel import MemModel, memmap_into
from .pages import PageMix
from .store import LparStore

__all__ = [
    "HPTE_RECORD",
    "IntervalSet",
    "Layer",
    "LayerKind",
    "MemoryReader",
    "derive_seed",
    "pack_hpte_records",
]

_MASK64 = (1 << 64) - 1
HPTE_RECORD = struct.Struct(">QQQ")
"""A stored HPTE: slot index in the table, then the V and R doublewords."""

LayerKind = Literal["generated", "overlay", "hpte", "image", "copy", "memmap"]


def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def derive_seed(seed: int, *parts: str | int) -> int:
    """A 64-bit seed derived from ``seed`` and a path of labels (e.g. ``"reuse", 3``).

    Different paths give unrelated seeds, so each kernel generation's memory
    differs from every other's while staying a pure function of the LPAR seed.
    """
    h = _mix64(seed ^ 0x6A09E667F3BCC908)
    for part in parts:
        data = part.encode() if isinstance(part, str) else part.to_bytes(8, "little", signed=False)
        h = _mix64((h + native.hash64(data, h)) & _MASK64)
    return h


def _subtract(
    pieces: list[tuple[int, int]], covered: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """``pieces`` minus ``covered`` (both sorted, disjoint)."""
    out: list[tuple[int, int]] = []
    j = 0
    for a, b in pieces:
        pos = a
        while j < len(covered) and covered[j][1] <= pos:
            j += 1
        k = j
        while k < len(covered) and covered[k][0] < b:
            c, d = covered[k]
            if c > pos:
                out.append((pos, c))
            pos = max(pos, d)
            k += 1
        if pos < b:
            out.append((pos, b))
    return out


@dataclass
class Layer:
    """One layer of physical memory; see the module docstring for the kinds.

    ``seed`` is used by ``generated``; ``file`` and ``base`` by ``overlay``
    and ``hpte``; ``file`` and ``delta`` by ``image``; ``snapshot`` and
    ``delta`` by ``copy``.
    """

    id: str
    kind: LayerKind
    extents: IntervalSet = field(default_factory=IntervalSet)
    seed: int = 0
    file: str = ""
    base: int = 0
    snapshot: str = ""
    delta: int = 0
    low: int = 0
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        """The layer as stored in ``state.json``."""
        out: dict[str, Any] = {"id": self.id, "kind": self.kind, "extents": self.extents.to_json()}
        if self.kind == "generated":
            out["seed"] = self.seed
        elif self.kind == "memmap":
            out["seed"] = self.seed
            out["base"] = self.base
            out["delta"] = self.delta
            out["low"] = self.low
        elif self.kind in ("overlay", "hpte"):
            out["file"] = self.file
            out["base"] = self.base
        elif self.kind == "image":
            out["file"] = self.file
            out["delta"] = self.delta
        else:
            out["snapshot"] = self.snapshot
            out["delta"] = self.delta
        if self.note:
            out["note"] = self.note
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Layer:
        """The inverse of :meth:`to_json`."""
        kind = data["kind"]
        if kind not in ("generated", "overlay", "hpte", "image", "copy", "memmap"):
            raise ValueError(f"unknown layer kind {kind!r}")
        return cls(
            id=str(data["id"]),
            kind=kind,
            extents=IntervalSet(data["extents"]),
            seed=int(data.get("seed", 0)),
            file=str(data.get("file", "")),
            base=int(data.get("base", 0)),
            snapshot=str(data.get("snapshot", "")),
            delta=int(data.get("delta", 0)),
            low=int(data.get("low", 0)),
            note=str(data.get("note", "")),
        )


@functools.lru_cache(maxsize=4)
def _metadata(model: MemModel) -> bytes:
    return model.metadata()


def pack_hpte_records(entries: Iterable[tuple[int, int, int]]) -> bytes:
    """Stored form of a sparse HPTE table: (slot, v, r) records sorted by slot."""
    return b"".join(HPTE_RECORD.pack(s, v, r) for s, v, r in sorted(entries))


class _HpteTable:
    """A loaded sparse HPTE table: parallel arrays sorted by slot."""

    __slots__ = ("r", "slots", "v")

    def __init__(self, data: bytes) -> None:
        n = len(data) // HPTE_RECORD.size
        words = struct.unpack(f">{3 * n}Q", data[: n * HPTE_RECORD.size])
        self.slots = list(words[0::3])
        self.v = list(words[1::3])
        self.r = list(words[2::3])


@dataclass(eq=False)
class MemoryReader:
    """Reads physical memory through a stack of layers.

    ``layers`` maps layer ids to layers, ``snapshots`` names frozen stacks
    (lists of layer ids, bottom first) that ``copy`` layers refer to. Page
    content uses the kernel's ``page_size``, ``mix`` and byte order.
    """

    store: LparStore
    layers: Mapping[str, Layer]
    snapshots: Mapping[str, Sequence[str]]
    _: KW_ONLY
    page_size: int
    mix: PageMix
    big_endian: bool
    _hpte_cache: dict[str, _HpteTable] = field(default_factory=dict, init=False)
    _image_fds: dict[str, int] = field(default_factory=dict, init=False)
    _edge_page: bytearray = field(init=False)
    _zeros: bytes = field(default=b"", init=False)

    def __post_init__(self) -> None:
        self._edge_page = bytearray(self.page_size)

    def read(self, stack: Sequence[str], paddr: int, size: int) -> bytearray:
        """``size`` bytes of physical memory at ``paddr`` as the layer stack shows it."""
        out = bytearray(size)
        self.read_into(stack, paddr, memoryview(out))
        return out

    def read_into(self, stack: Sequence[str], paddr: int, out: memoryview) -> None:
        """Fill ``out`` with memory at ``paddr``; bytes no layer covers read as zero."""
        pending = [(paddr, paddr + len(out))]
        for layer_id in reversed(stack):
            if not pending:
                return
            layer = self.layers[layer_id]
            covered: list[tuple[int, int]] = []
            for a, b in pending:
                covered.extend(layer.extents.intersect(a, b))
            if not covered:
                continue
            for a, b in covered:
                self._fill(layer, out[a - paddr : b - paddr], a)
            pending = _subtract(pending, covered)
        for a, b in pending:
            self._zero(out[a - paddr : b - paddr])

    def resolve(self, stack: Sequence[str], paddr: int, size: int) -> list[tuple[int, int, str]]:
        """Which layer supplies each piece of ``[paddr, paddr+size)``: (start, end, layer id)."""
        pending = [(paddr, paddr + size)]
        out: list[tuple[int, int, str]] = []
        for layer_id in reversed(stack):
            if not pending:
                break
            covered: list[tuple[int, int]] = []
            for a, b in pending:
                covered.extend(self.layers[layer_id].extents.intersect(a, b))
            out.extend((a, b, layer_id) for a, b in covered)
            pending = _subtract(pending, covered)
        return sorted(out)

    # --------------------------------------------------------------- kinds

    def _fill(self, layer: Layer, out: memoryview, paddr: int) -> None:
        if layer.kind == "generated":
            self._fill_generated(layer.seed, out, paddr)
        elif layer.kind == "overlay":
            self._fill_overlay(layer, out, paddr)
        elif layer.kind == "hpte":
            self._fill_hpte(layer, out, paddr)
        elif layer.kind == "image":
            self._fill_image(layer, out, paddr)
        elif layer.kind == "memmap":
            self._fill_memmap(layer, out, paddr)
        else:
            self.read_into(self.snapshots[layer.snapshot], paddr - layer.delta, out)

    def _fill_generated(self, seed: int, out: memoryview, paddr: int) -> None:
        ps = self.page_size
        end = paddr + len(out)
        first_full = -(-paddr // ps)
        last_full = end // ps
        if first_full < last_full:
            a = first_full * ps - paddr
            b = last_full * ps - paddr
            pages.gen_pages_into(
                out[a:b], seed, first_full, last_full - first_full, ps, self.mix, self.big_endian
            )
            # Partial pages at either edge come from a whole generated page.
            if paddr % ps:
                self._edge(seed, paddr // ps, out[:a], paddr % ps)
            if end % ps:
                self._edge(seed, last_full, out[b:], 0)
        else:
            # The piece lies inside a single page (or straddles one boundary).
            pos = paddr
            while pos < end:
                pfn = pos // ps
                stop = min(end, (pfn + 1) * ps)
                self._edge(seed, pfn, out[pos - paddr : stop - paddr], pos - pfn * ps)
                pos = stop

    def _edge(self, seed: int, pfn: int, out: memoryview, offset: int) -> None:
        page = self._edge_page
        pages.gen_pages_into(page, seed, pfn, 1, self.page_size, self.mix, self.big_endian)
        out[:] = page[offset : offset + len(out)]

    def memmap_model(self, layer: Layer) -> MemModel:
        """The memory model a ``memmap`` layer generates."""
        return MemModel(
            layer.delta, self.page_size, self.big_endian, layer.seed, layer.base, layer.low
        )

    def _fill_memmap(self, layer: Layer, out: memoryview, paddr: int) -> None:
        model = self.memmap_model(layer)
        end = paddr + len(out)
        if paddr < model.base:
            meta = _metadata(model)
            n = min(end, model.base) - paddr
            lo = paddr - model.meta
            out[:n] = meta[lo : lo + n].ljust(n, b"\0")
            paddr += n
            out = out[n:]
        if len(out):
            memmap_into(model, out, paddr - model.base)

    def _fill_overlay(self, layer: Layer, out: memoryview, paddr: int) -> None:
        fd = self.store.data_fd(layer.file)
        got = os.preadv(fd, [out], paddr - layer.base)
        if got < len(out):
            # Sparse overlays end at their last written byte; beyond is zero.
            self._zero(out[got:])

    def _fill_image(self, layer: Layer, out: memoryview, paddr: int) -> None:
        fd = self._image_fds.get(layer.file)
        if fd is None:
            fd = self._image_fds[layer.file] = os.open(layer.file, os.O_RDONLY | os.O_CLOEXEC)
        got = os.preadv(fd, [out], paddr + layer.delta)
        if got < len(out):
            raise OSError(
                errno.EIO,
                f"adopted image ends at offset {paddr + layer.delta + got:#x}",
                layer.file,
            )

    def close(self) -> None:
        """Close the adopted images' files."""
        for fd in self._image_fds.values():
            os.close(fd)
        self._image_fds.clear()

    def _hpte_table(self, name: str) -> _HpteTable:
        table = self._hpte_cache.get(name)
        if table is None:
            table = _HpteTable(self.store.read_data(name))
            self._hpte_cache[name] = table
        return table

    def _zero(self, out: memoryview) -> None:
        # One shared zero buffer: allocating a fresh one per call costs more
        # than the copy when scanning a table of many GiB.
        if len(self._zeros) < len(out):
            self._zeros = bytes(len(out))
        out[:] = memoryview(self._zeros)[: len(out)]

    def _fill_hpte(self, layer: Layer, out: memoryview, paddr: int) -> None:
        self._zero(out)
        table = self._hpte_table(layer.file)
        end = paddr + len(out)
        first_slot = max(0, (paddr - layer.base) // 16)
        last_slot = (end - layer.base + 15) // 16
        i = bisect.bisect_left(table.slots, first_slot)
        pack = struct.Struct(">QQ").pack
        while i < len(table.slots) and table.slots[i] < last_slot:
            entry_addr = layer.base + 16 * table.slots[i]
            data = pack(table.v[i], table.r[i])
            lo = max(entry_addr, paddr)
            hi = min(entry_addr + 16, end)
            out[lo - paddr : hi - paddr] = data[lo - entry_addr : hi - entry_addr]
            i += 1

    def forget(self, keep: Iterable[str]) -> None:
        """Drop cached HPTE tables of data files not in ``keep`` (their layers are gone)."""
        keep_set = set(keep)
        for name in [n for n in self._hpte_cache if n not in keep_set]:
            del self._hpte_cache[name]

    def hpte_entries(self, layer: Layer) -> list[tuple[int, int, int]]:
        """The (slot, v, r) records of an ``hpte`` layer."""
        table = self._hpte_table(layer.file)
        return list(zip(table.slots, table.v, table.r, strict=True))
