"""Hash-MMU translation in real drgn, against hvsim's ground truth (vmalloc pages, HPTEs)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import drgn
import pytest

from drgn_hvdump.formats.hpte import Hpte, build_hpte_table
from drgn_hvdump.plugin.translate import CACHE_KEY, HashTranslator, install_hash_translation
from hvsim.groundcore import write_truth_core
from hvsim.hypervisor import hpt_size
from hvsim.kernel import HVDEMO_STATS_MAGIC, KernelImage, VmallocMapping, vmlinux_path
from hvsim.lpar import Lpar


@dataclass
class Case:
    lpar: Lpar
    image: KernelImage
    core: Path
    prog: drgn.Program
    translator: HashTranslator
    table: bytes


CASES = [
    ("big", "1G", 65536),
    ("little", "1G", 65536),
    ("big", "1G", 4096),
    ("little", "1G", 4096),
]


@pytest.fixture(scope="module", params=CASES, ids=[f"{e}-{p >> 10}K" for e, _, p in CASES])
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Case]:
    endian, memory, page_size = request.param
    d = tmp_path_factory.mktemp(f"hash-{endian}-{page_size}")
    lpar = Lpar.create(
        d / "lpar", memory=memory, cpus=4, endian=endian, page_size=page_size, seed=11, boot=True
    )
    lpar.crash("oops")
    image = lpar.crashed_kernel()
    assert image is not None
    core = d / "truth.core"
    # All of RAM: vmalloc pages come from anywhere below the scratch area.
    write_truth_core(lpar, core, full=True)
    # The HPTE section as the hypervisor saved it: the whole table, big-endian.
    entries = {slot: Hpte(v, r) for slot, v, r in lpar.expected_hptes()}
    table = build_hpte_table(entries, hpt_size(lpar.config.memory))
    prog = drgn.Program()
    prog.set_core_dump(str(core))
    translator = install_hash_translation(prog, lambda: table)
    prog.load_debug_info([vmlinux_path(endian)])
    yield Case(lpar, image, core, prog, translator, table)
    lpar.close()


def test_every_vmalloc_page_reads_its_ground_truth_bytes(case: Case) -> None:
    mappings = case.image.vmalloc_mappings()
    by_ea: dict[int, list[VmallocMapping]] = {}
    for m in mappings:
        by_ea.setdefault(m.ea, []).append(m)
    checked = 0
    for m in mappings:
        # Page tables first: where both map an address to different pages,
        # the page tables' page is read (the stale HPTE is only reported).
        if not m.in_page_tables and len(by_ea[m.ea]) > 1:
            continue
        data = case.prog.read(m.ea, m.page_size)
        assert data == case.lpar.expected(m.pa, m.page_size), hex(m.ea)
        t = case.translator.translate(m.ea + 8)
        assert t.pa == m.pa + 8
        assert t.source == ("page tables" if m.in_page_tables else "hpt")
        checked += 1
    assert checked == len(by_ea) >= 40


def test_a_global_pointing_into_vmalloc_dereferences(case: Case) -> None:
    stats = case.prog["hvdemo_stats"]
    truth = case.image.hvdemo_stats_values()
    assert stats.value_() == case.image.hvdemo_stats_address()
    assert stats.magic.value_() == HVDEMO_STATS_MAGIC == truth["magic"]
    assert stats.reads.value_() == truth["reads"]
    n = stats.nr_counters.value_()
    # The counters straddle two vmalloc pages backed by unrelated physical pages.
    values = [stats.counters[i].value_() for i in range(n)]
    assert values == case.image.hvdemo_counters()


def test_unmapped_addresses_fault(case: Case) -> None:
    mappings = case.image.vmalloc_mappings()
    ps = mappings[0].page_size
    mapped = {m.ea for m in mappings}
    hole = next(ea + ps for ea in sorted(mapped) if ea + ps not in mapped)
    with pytest.raises(drgn.FaultError, match="not mapped") as info:
        case.prog.read(hole + 0x10, 8)
    assert info.value.address == hole + 0x10
    with pytest.raises(drgn.FaultError, match="not mapped"):
        case.prog.read(0xD000080090000000, 8)  # ioremap range: nothing there
    # A read that runs off a mapped page into a hole faults at the hole.
    with pytest.raises(drgn.FaultError) as info:
        case.prog.read(hole - 8, 16)
    assert info.value.address == hole


def test_disagreements_are_the_seeded_ones(case: Case) -> None:
    truth: dict[int, tuple[int | None, int | None]] = {}
    for m in case.image.vmalloc_mappings():
        pt, hpt = truth.get(m.ea, (None, None))
        truth[m.ea] = (m.pa if m.in_page_tables else pt, m.pa if m.in_hpt else hpt)
    expected = {(ea, pt, hpt) for ea, (pt, hpt) in truth.items() if pt != hpt}
    found = case.translator.disagreements()
    assert {(d.ea, d.page_table_pa, d.hpt_pa) for d in found} == expected
    kinds = {d.kind for d in found}
    assert kinds == {"hpt only", "page tables only", "different pages"}
    # Reading a disagreeing page records it in the translator's state.
    stale = next(d for d in found if d.kind == "hpt only")
    case.prog.read(stale.ea, 8)
    assert stale.ea in case.translator.from_hpt
    assert stale.ea in case.translator.seen_disagreements


def test_hpte_entries_of_vmalloc_and_linear_map_addresses(case: Case) -> None:
    m = next(m for m in case.image.vmalloc_mappings() if m.agrees)
    entries = case.translator.hpte_entries(m.ea + 0x20)
    assert [(e.ea, e.pa, e.page_size) for e in entries] == [(m.ea, m.pa, m.page_size)]
    slots = {slot for slot, _, _ in case.lpar.expected_hptes()}
    assert entries[0].slot in slots
    linear = case.translator.hpte_entries(0xC000000001234567)
    assert [(e.pa, e.page_size, e.bolted) for e in linear] == [(0x1000000, 16 << 20, True)]


def test_install_is_idempotent_and_takes_the_table_only_once(case: Case) -> None:
    again = install_hash_translation(case.prog, lambda: None)
    assert again is case.translator is case.prog.cache[CACHE_KEY]


def test_stock_drgn_cannot_read_these_addresses(case: Case) -> None:
    script = (
        "import sys, drgn\n"
        "prog = drgn.Program()\n"
        "prog.set_core_dump(sys.argv[1])\n"
        "prog.load_debug_info([sys.argv[2]])\n"
        "try:\n"
        "    prog['hvdemo_stats'].magic.value_()\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
        "else:\n"
        "    print('READ')\n"
    )
    env = dict(os.environ, DRGN_DISABLE_PLUGINS="hvdump")
    out = subprocess.run(
        [sys.executable, "-c", script, str(case.core), vmlinux_path(case.lpar.config.endian)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    ).stdout
    assert "only supported for Radix MMU" in out, out
