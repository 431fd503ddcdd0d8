"""hvsim.memory: interval sets, seed derivation, and layered memory reads against a naive model."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hvsim.memory import IntervalSet, Layer, MemoryReader, derive_seed, pack_hpte_records
from hvsim.pages import BUSY_MIX, gen_pages_into
from hvsim.store import LparStore

# ------------------------------------------------------------------ IntervalSet

_ops = st.lists(
    st.tuples(st.booleans(), st.integers(0, 200), st.integers(0, 60)), min_size=0, max_size=30
)


@given(_ops, st.integers(0, 220), st.integers(0, 60))
def test_interval_set_matches_a_set_of_integers(
    ops: list[tuple[bool, int, int]], a: int, n: int
) -> None:
    model: set[int] = set()
    s = IntervalSet()
    for add, start, length in ops:
        if add:
            s.add(start, start + length)
            model |= set(range(start, start + length))
        else:
            s.remove(start, start + length)
            model -= set(range(start, start + length))
    ranges = list(s)
    # Sorted, disjoint and never touching (merged).
    for (s1, e1), (s2, e2) in itertools.pairwise(ranges):
        assert s1 < e1 < s2 < e2
    assert {x for lo, hi in ranges for x in range(lo, hi)} == model
    assert s.total() == len(model)
    inter = s.intersect(a, a + n)
    assert {x for lo, hi in inter for x in range(lo, hi)} == model & set(range(a, a + n))
    assert s.contains(a, a + n) == (set(range(a, a + n)) <= model)
    assert s.overlaps(a, a + n) == bool(model & set(range(a, a + n)))
    assert IntervalSet(s.to_json()) == s


def test_interval_set_copy_is_independent() -> None:
    s = IntervalSet([(0, 10)])
    c = s.copy()
    c.add(20, 30)
    assert list(s) == [(0, 10)]
    assert list(c) == [(0, 10), (20, 30)]


def test_derive_seed_differs_by_path_and_is_stable() -> None:
    a = derive_seed(7, "capture", 2)
    assert a == derive_seed(7, "capture", 2)
    assert (
        len(
            {
                a,
                derive_seed(7, "capture", 3),
                derive_seed(7, "reuse", 2),
                derive_seed(8, "capture", 2),
            }
        )
        == 4
    )
    assert 0 <= a < 1 << 64


# ----------------------------------------------------------------- layered reads

PS = 4096
MEM = 64 * PS


def _gen(seed: int) -> bytearray:
    out = bytearray(MEM)
    gen_pages_into(out, seed, 0, MEM // PS, PS, BUSY_MIX, True)
    return out


@pytest.fixture(scope="module")
def model_memory(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[MemoryReader, list[str], bytearray]:
    """A reader over five kinds of layers and the bytes it must give, built naively."""
    store = LparStore.create(tmp_path_factory.mktemp("mem") / "lpar", {"x": 1})
    base = Layer("A", "generated", IntervalSet([(0, MEM)]), seed=11)
    top = Layer(
        "B", "generated", IntervalSet([(5 * PS + 100, 9 * PS + 7), (40 * PS, 41 * PS)]), seed=22
    )
    overlay_data = bytes(range(256)) * 3
    store.write_data("C.ovl", [(0, overlay_data), (5000, b"tail")])
    overlay = Layer("C", "overlay", IntervalSet([(3 * PS + 10, 3 * PS + 10 + len(overlay_data)),
                                                 (3 * PS + 5010, 3 * PS + 5014)]),
                    file="C.ovl", base=3 * PS + 10)  # fmt: skip
    hpte_base = 20 * PS + 8
    entries = [(0, 0x1111, 0x2222), (3, 0xAAAA, 0xBBBB), (200, 5, 6)]
    store.write_data("D.hpt", [(0, pack_hpte_records(entries))])
    hpte = Layer(
        "D", "hpte", IntervalSet([(hpte_base, hpte_base + 16 * 201)]), file="D.hpt", base=hpte_base
    )
    # A copy of [0, 4 pages) of the snapshot {A, B, C} placed at 50 pages + 3.
    copy_dest = 50 * PS + 3
    copy = Layer(
        "E", "copy", IntervalSet([(copy_dest, copy_dest + 4 * PS)]), snapshot="S", delta=copy_dest
    )
    layers = {layer.id: layer for layer in (base, top, overlay, hpte, copy)}
    snaps = {"S": ["A", "B", "C"]}
    reader = MemoryReader(store, layers, snaps, page_size=PS, mix=BUSY_MIX, big_endian=True)

    want = _gen(11)
    b = _gen(22)
    for s, e in top.extents:
        want[s:e] = b[s:e]
    o = overlay.base
    want[o : o + len(overlay_data)] = overlay_data
    want[o + 5000 : o + 5004] = b"tail"
    snapshot = bytes(want)
    want[hpte_base : hpte_base + 16 * 201] = bytes(16 * 201)
    for slot, v, r in entries:
        want[hpte_base + 16 * slot : hpte_base + 16 * slot + 16] = struct.pack(">QQ", v, r)
    want[copy_dest : copy_dest + 4 * PS] = snapshot[: 4 * PS]
    return reader, ["A", "B", "C", "D", "E"], want


@given(st.integers(0, MEM - 1), st.integers(0, 6 * PS))
def test_reads_match_the_naive_model(
    model_memory: tuple[MemoryReader, list[str], bytearray], addr: int, size: int
) -> None:
    reader, stack, want = model_memory
    size = min(size, MEM - addr)
    assert reader.read(stack, addr, size) == want[addr : addr + size]


def test_resolve_names_the_topmost_layer(
    model_memory: tuple[MemoryReader, list[str], bytearray],
) -> None:
    reader, stack, _ = model_memory
    pieces = reader.resolve(stack, 5 * PS, 5 * PS)
    assert pieces[0] == (5 * PS, 5 * PS + 100, "A")
    assert pieces[1] == (5 * PS + 100, 9 * PS + 7, "B")
    assert reader.hpte_entries(reader.layers["D"])[1] == (3, 0xAAAA, 0xBBBB)


def test_uncovered_memory_reads_zero(tmp_path: Path) -> None:
    store = LparStore.create(tmp_path / "l", {})
    layers = {"A": Layer("A", "generated", IntervalSet([(PS, 2 * PS)]), seed=1)}
    reader = MemoryReader(store, layers, {}, page_size=PS, mix=BUSY_MIX, big_endian=False)
    data = reader.read(["A"], 0, 3 * PS)
    assert data[:PS] == bytes(PS) and data[2 * PS :] == bytes(PS)
    page = bytearray(PS)
    gen_pages_into(page, 1, 1, 1, PS, BUSY_MIX, False)
    assert data[PS : 2 * PS] == page


def test_layer_json_round_trip() -> None:
    for layer in (
        Layer("L1", "generated", IntervalSet([(0, 10)]), seed=5, note="n"),
        Layer("L2", "overlay", IntervalSet([(3, 4)]), file="L2.ovl", base=3),
        Layer("L3", "hpte", IntervalSet([(16, 32)]), file="L3.hpt", base=16),
        Layer("L4", "copy", IntervalSet([(100, 200)]), snapshot="S1", delta=100),
    ):
        assert Layer.from_json(layer.to_json()) == layer
    with pytest.raises(ValueError, match="unknown layer kind"):
        Layer.from_json({"id": "x", "kind": "bogus", "extents": []})
