"""hvsim.kernel and hvsim.hypervisor: the crashed kernel's image, sizes, scratch layout, the save."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from drgn_hvdump.formats.dump_header import (
    DUMP_ERROR_FLAG,
    DUMP_PERFORMED,
    DUMP_REQUEST_FLAG,
    DUMP_TRIGGERED,
    parse_dump_header,
)
from drgn_hvdump.formats.elfcore import parse_notes
from drgn_hvdump.formats.hpte import Hpte, decode_ea, htab_hash_mask, linear_map_hptes
from drgn_hvdump.formats.regsave import build_regsave, parse_regsave
from drgn_hvdump.formats.vmcoreinfo import parse_vmcoreinfo, vmcoreinfo_symbol
from hvsim.config import LparConfig
from hvsim.hypervisor import (
    Hypervisor,
    ScratchLayout,
    cpu_state_size,
    hpt_size,
    perform_dump,
    scratch_layout,
    sizes_property,
)
from hvsim.kernel import KERNELBASE, PACA_SIZE, SCENARIOS, SYMBOLS, KernelImage, kernel_symbol


def _image(endian: str = "big", memory: int = 4 << 30, scenario: str = "panic") -> KernelImage:
    cfg = LparConfig(memory=memory, cpus=6, endian=endian, seed=99)  # type: ignore[arg-type]
    return KernelImage(cfg, 1, 1_700_000_000, SCENARIOS[scenario])


@pytest.mark.parametrize("endian", ["big", "little"])
def test_registers_are_plausible(endian: str) -> None:
    image = _image(endian)
    states = image.cpu_states()
    assert [s.cpu for s in states] == list(range(6))
    text_end = kernel_symbol("_etext")
    for s in states:
        r = s.regs
        assert KERNELBASE <= r["NIA"] < text_end
        assert KERNELBASE <= r["LR"] < text_end
        assert KERNELBASE < r["GPR01"] < KERNELBASE + image.config.memory
        assert r["GPR01"] % 16 == 0
        assert r["GPR13"] == kernel_symbol("paca") + s.cpu * PACA_SIZE
        assert r["MSR"] & (1 << 63) and r["MSR"] & (1 << 12)  # SF, ME
        assert bool(r["MSR"] & 1) == (endian == "little")  # LE
        assert r["PIR"] == s.cpu
    crash = states[image.crash_cpu].regs
    fn = kernel_symbol("panic")
    assert fn <= crash["NIA"] < fn + 0x100
    others = [s.regs["NIA"] for s in states if s.cpu != image.crash_cpu]
    assert all(not fn <= nia < fn + 0x100 for nia in others)


def test_oops_scenario_sets_dar_and_dsisr() -> None:
    image = _image(scenario="oops")
    regs = image.cpu_states()[image.crash_cpu].regs
    assert regs["DAR"] == 0 and regs["DSISR"] == 0x40000000
    assert image.pt_regs(image.crash_cpu).trap == 0x300


def test_registers_round_trip_through_the_save_area() -> None:
    image = _image()
    assert parse_regsave(build_regsave(image.cpu_states())) == image.cpu_states()


@pytest.mark.parametrize("endian", ["big", "little"])
def test_vmcoreinfo_note_and_overlays(endian: str) -> None:
    image = _image(endian)
    (note,) = parse_notes(image.vmcoreinfo_note(), endian)  # type: ignore[arg-type]
    assert note.name == "VMCOREINFO" and note.type == 0
    info = parse_vmcoreinfo(note.desc)
    assert info["OSRELEASE"] == "2.6.32-hvsim"
    assert info["PAGESIZE"] == "65536"
    assert info["CRASHTIME"] == "1700000000"
    assert info["KERNELOFFSET"] == "0" and info["NUMBER(RADIX_MMU)"] == "0"
    assert vmcoreinfo_symbol(info, "_stext") == KERNELBASE
    assert vmcoreinfo_symbol(info, "swapper_pg_dir") == kernel_symbol("swapper_pg_dir")
    pieces = dict(image.overlays())
    assert pieces[SYMBOLS["linux_banner"]].startswith(b"Linux version 2.6.32-hvsim ")
    uts = pieces[SYMBOLS["init_uts_ns"]]
    assert uts[4 + 2 * 65 : 4 + 2 * 65 + 12] == b"2.6.32-hvsim"
    assert all(addr + len(data) <= 256 << 20 for addr, data in image.overlays())
    paca = pieces[SYMBOLS["paca"] + 2 * PACA_SIZE]
    fmt = ">HxxxxxxH" if endian == "big" else "<HxxxxxxH"
    assert struct.unpack(fmt, paca) == (0x8000, 2)


@pytest.mark.parametrize("memory", [1 << 30, 3 << 30, 16 << 30])
def test_linear_map_is_placed_as_formats_hpte_places_it(memory: int) -> None:
    image = _image(memory=memory)
    size = hpt_size(memory)
    fast = {slot: (v, r) for slot, v, r in image.hash_page_table(size)}
    ref = linear_map_hptes(memory, size)
    for slot, entry in ref.items():
        assert fast[slot] == (entry.v, entry.r)
    # Every linear-map entry decodes back to its physical page's kernel address.
    mask = htab_hash_mask(size)
    for slot, entry in list(ref.items())[:64]:
        assert decode_ea(entry, slot, mask, 24) == KERNELBASE + entry.real_address(24)


def test_page_table_has_vmalloc_entries_in_the_right_groups() -> None:
    image = _image()
    size = hpt_size(image.config.memory)
    entries = image.hash_page_table(size)
    linear = image.config.memory >> 24
    assert len(entries) > linear
    mask = htab_hash_mask(size)
    vmalloc = [Hpte(v, r) for slot, v, r in entries if not v & 0x10]
    assert vmalloc and all(h.valid and h.large for h in vmalloc)
    for slot, v, r in entries:
        if not v & 0x10:
            ea = decode_ea(Hpte(v, r), slot, mask, 16)
            assert ea >> 60 == 0xD
    assert len({slot for slot, _, _ in entries}) == len(entries)


def test_sizes() -> None:
    assert hpt_size(512 << 20) == 4 << 20
    assert hpt_size(768 << 20) == 8 << 20  # 6 MiB rounds up
    assert hpt_size(1 << 40) == 8 << 30
    assert hpt_size(1 << 20) == 256 << 10
    size = cpu_state_size(8)
    assert size % 4096 != 0  # like real firmware: not page aligned
    assert size == 16 + 4 + 8 * (len(_image().cpu_states()[0].regs) + 2) * 16
    assert sizes_property(size, 1 << 20) == struct.pack(">IIIIII", 1, 0, size, 2, 0, 1 << 20)


def test_scratch_layout_reproduces_the_kernel_documentation_example() -> None:
    # Documentation/powerpc/phyp-assisted-dump.txt: "CPU:0x177fee000-0x10000:
    # HPTE:0x177ffe020-0x1000: DUMP:0x177fff020-0x10000000" on 4K pages.
    layout = ScratchLayout(
        memory=0x188000000,
        page_size=4096,
        cpu_size=0x10020,
        hpte_size=0x1000,
        reserve_size=256 << 20,
    )
    assert layout.base == 0x177FEE000
    assert layout.hpte_dest == 0x177FFE020
    assert layout.rmo_dest == 0x177FFF020
    assert layout.reserve_start == 0x177FEEFE0
    assert layout.problem() is None


def test_scratch_layout_of_a_config_is_unaligned_and_at_the_top() -> None:
    cfg = LparConfig(memory=4 << 30, cpus=8)
    layout = scratch_layout(cfg)
    assert layout.base % cfg.page_size == 0
    assert layout.hpte_dest % 4096 != 0
    assert layout.rmo_dest + layout.rmo_size <= cfg.memory
    assert cfg.memory - (layout.rmo_dest + layout.rmo_size) < cfg.page_size
    header = layout.registration()
    assert header.cpu.destination_address == layout.base
    assert header.rmo.source_length == 256 << 20


def test_small_lpar_cannot_register() -> None:
    small = scratch_layout(LparConfig(memory=512 << 20))
    problem = small.problem()
    assert problem is not None and "768M" in problem
    assert scratch_layout(LparConfig(memory=768 << 20)).problem() is None


def test_perform_dump_fills_flags_and_lengths() -> None:
    reg = scratch_layout(LparConfig(memory=1 << 30)).registration()
    h = perform_dump(reg)
    assert h.status == DUMP_TRIGGERED | DUMP_PERFORMED
    for s in h.sections():
        assert s.length_copied == s.source_length
        assert s.dump_flags == DUMP_REQUEST_FLAG | DUMP_PERFORMED
    h = perform_dump(reg, copied={"rmo": 1 << 20}, errors={"hpte": 0x1000}, hv_error=True)
    assert h.status & DUMP_ERROR_FLAG
    assert h.rmo.length_copied == 1 << 20
    assert h.hpte.length_copied == 0 and h.hpte.error_flags == 0x1000
    with pytest.raises(ValueError, match="sections are"):
        perform_dump(reg, copied={"disk": 1})
    with pytest.raises(ValueError, match="cannot copy"):
        perform_dump(reg, copied={"cpu": 1 << 40})


def test_hypervisor_register_crash_invalidate() -> None:
    cfg = LparConfig(memory=1 << 30)
    hv_state: dict[str, Any] = {}
    hv = Hypervisor(cfg, hv_state)
    assert hv.crash() is None  # nothing registered: nothing saved
    reg = scratch_layout(cfg).registration()
    hv.register(reg)
    assert hv.registered == reg
    header = hv.crash()
    assert header is not None and hv.registered is None
    dump_bytes = hv.dump_bytes
    assert dump_bytes is not None and parse_dump_header(dump_bytes) == header
    with pytest.raises(RuntimeError, match="invalidate"):
        hv.register(reg)
    props = hv.rtas_properties(dump_kernel=True, kernel_dump=dump_bytes)
    assert props["rtas/ibm,kernel-dump"] == dump_bytes
    assert props["rtas/ibm,dump-kernel"] == b""
    hv.invalidate()
    assert hv.dump is None
    no_fw = Hypervisor(LparConfig(memory=1 << 30, firmware_dump=False), {})
    assert no_fw.rtas_properties(dump_kernel=False, kernel_dump=None) == {}
