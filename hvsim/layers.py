"""The LPAR's memory as a stack of layers: pushing them, and dropping what nothing reads.

Each boot, crash, hypervisor save and release pushes or grows a layer
(:class:`hvsim.memory.Layer`) on :attr:`hvsim.state.LparState.stack`; the
ground truth is a frozen copy of the stack taken at the crash
(``snapshots``), so nothing the size of RAM is ever stored.
"""

from __future__ import annotations

from collections.abc import Sequence

from drgn_hvdump.intervals import IntervalSet

from .adopt import open_adopted
from .config import LparConfig
from .memmodel import MemModel
from .memory import Layer, pack_hpte_records
from .state import LparState
from .store import LparStore

__all__ = [
    "collect_garbage",
    "push_copy",
    "push_generated",
    "push_hptes",
    "push_image",
    "push_overlay",
]


def push_generated(st: LparState, seed: int, ranges: Sequence[tuple[int, int]], note: str) -> Layer:
    """A layer of generated pages (from ``seed``) over ``ranges``, on top of the stack."""
    layer = st.add_layer(Layer("", "generated", IntervalSet(ranges), seed=seed, note=note))
    st.stack.append(layer.id)
    return layer


def push_image(st: LparState, config: LparConfig) -> None:
    """The adopted image's bytes, read in place, on top of the stack.

    RAM above the image (where the kernel keeps its scratch area) is in no
    layer and reads as zero.
    """
    guest = open_adopted(config)
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
            st.stack.append(st.add_layer(layer).id)


def push_overlay(
    st: LparState, store: LparStore, pieces: Sequence[tuple[int, bytes]], note: str
) -> Layer:
    """Bytes written at physical addresses (``(paddr, data)`` pieces), on top of the stack."""
    base = min(p for p, _ in pieces)
    layer = st.add_layer(Layer("", "overlay", base=base, note=note))
    layer.file = f"{layer.id}.ovl"
    store.write_data(layer.file, [(p - base, data) for p, data in pieces])
    for p, data in pieces:
        layer.extents.add(p, p + len(data))
    st.stack.append(layer.id)
    return layer


def push_memmap(st: LparState, model: MemModel, note: str) -> Layer:
    """The crashed kernel's memory model (:mod:`hvsim.memmodel`), on top of the stack."""
    extent = IntervalSet([(model.meta, model.base + model.memmap_size)])
    layer = st.add_layer(
        Layer(
            "",
            "memmap",
            extent,
            seed=model.seed,
            base=model.top,
            delta=model.memory,
            low=model.low,
            note=note,
        )
    )
    st.stack.append(layer.id)
    return layer


def push_hptes(
    st: LparState,
    store: LparStore,
    entries: Sequence[tuple[int, int, int]],
    dest: int,
    copied: int,
    note: str,
) -> Layer:
    """The hash page table entries ``(slot, v, r)`` saved at ``dest``, the first ``copied``
    bytes of the table (entries past them are left out), on top of the stack."""
    kept = [e for e in entries if 16 * e[0] + 16 <= copied]
    layer = st.add_layer(
        Layer("", "hpte", IntervalSet([(dest, dest + copied)]), base=dest, note=note)
    )
    layer.file = f"{layer.id}.hpt"
    store.write_data(layer.file, [(0, pack_hpte_records(kept))])
    st.stack.append(layer.id)
    return layer


def push_copy(st: LparState, snap: str, source: int, dest: int, length: int, note: str) -> Layer:
    """``length`` bytes of the memory snapshot ``snap`` at ``source``, copied to ``dest``."""
    extent = IntervalSet([(dest, dest + length)])
    layer = st.add_layer(Layer("", "copy", extent, snapshot=snap, delta=dest - source, note=note))
    st.stack.append(layer.id)
    return layer


def collect_garbage(st: LparState) -> None:
    """Drop layers and snapshots nothing can read any more.

    A layer stays only where it shows: in the current stack (read
    anywhere), in the ground-truth snapshot (read anywhere), or in a
    snapshot a live copy layer reads, within the range it copies. Layers
    hidden there by layers above them are dropped, so a long-lived LPAR
    that crashes again and again keeps only what its last dump needs.
    """
    layers = st.layers
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

    st.stack = visit(st.stack, IntervalSet([(0, memory)]))
    if st.truth:
        needs.setdefault(st.truth, IntervalSet()).add(0, memory)
    kept_snaps: dict[str, list[str]] = {}
    done: dict[str, IntervalSet] = {}
    # Copies only refer to older snapshots, so this settles in a few rounds.
    while any(done.get(name) != need for name, need in needs.items()):
        for name, need in list(needs.items()):
            if done.get(name) != need:
                done[name] = need.copy()
                kept_snaps[name] = visit(st.snapshots[name], need)
    st.snapshots = kept_snaps
    st.layers = {k: v for k, v in layers.items() if k in live}
