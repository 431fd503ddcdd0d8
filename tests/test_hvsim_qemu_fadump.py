"""hvsim's fadump firmware against an independent one: QEMU 11's pseries firmware.

The fixtures in ``tests/data/qemu-fadump/{hash,radix}`` are what QEMU produced
for a real 6.12 kernel's registration and crash (``make test-firmware`` writes
them with :func:`tests.real_firmware.save_fixtures` and checks that QEMU still
produces the same shape): the capture boot's ``rtas`` properties and the CPU
state data. hvsim, given the same configuration, must produce the same
structures, field by field; every difference left is asserted here with its
reason (docs/real-firmware.md lists them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from drgn_hvdump.formats.dump_header import SOURCE_CPU, SOURCE_HPTE
from drgn_hvdump.formats.fadump_mem import (
    DUMP_REQUEST_FLAG,
    SOURCE_BOOT_MEMORY,
    FadumpMem,
    parse_fadump_mem,
)
from drgn_hvdump.formats.regsave import QEMU_FADUMP_REGISTERS, parse_regsave
from drgn_hvdump.model.pages import page_up
from drgn_hvdump.model.scratch import hpt_size
from hvsim import Lpar
from hvsim.fadump import reservation

FIXTURES = Path(__file__).resolve().parent / "data" / "qemu-fadump"
MMUS = ["hash", "radix"]


def _qemu(mmu: str) -> dict[str, Any]:
    d = FIXTURES / mmu
    config = json.loads((d / "config.json").read_text())
    return {
        "config": config,
        "mem": parse_fadump_mem((d / "ibm,kernel-dump").read_bytes()),
        "sizes": (d / "ibm,configure-kernel-dump-sizes").read_bytes(),
        "version": (d / "ibm,configure-kernel-dump-version").read_bytes(),
        "cpu": (d / "cpu-state.bin").read_bytes(),
    }


def _hvsim(tmp_path: Path, config: dict[str, Any]) -> dict[str, Any]:
    lpar = Lpar.create(
        tmp_path / "lpar",
        memory=config["memory"],
        cpus=config["cpus"],
        endian=config["byteorder"],
        page_size=config["page_size"],
        reserve_size=config["boot_memory"],
        dump="fadump",
        boot=True,
    )
    assert lpar.crash("panic") == "capture"
    tree = lpar.device_tree()
    mem = parse_fadump_mem(tree["rtas/ibm,kernel-dump"])
    cpu = mem.one(SOURCE_CPU)
    assert cpu is not None
    return {
        "lpar": lpar,
        "mem": mem,
        "sizes": tree["rtas/ibm,configure-kernel-dump-sizes"],
        "version": tree["rtas/ibm,configure-kernel-dump-version"],
        "cpu": lpar.read_phys(cpu.destination_address, cpu.length_copied),
    }


def _sizes(raw: bytes) -> dict[int, int]:
    """``ibm,configure-kernel-dump-sizes``: (u32 type, u64 size) records."""
    out = {}
    for i in range(0, len(raw), 12):
        out[int.from_bytes(raw[i : i + 4], "big")] = int.from_bytes(raw[i + 4 : i + 12], "big")
    return out


@pytest.mark.parametrize("mmu", MMUS)
def test_the_same_structures_as_qemus_firmware(tmp_path: Path, mmu: str) -> None:
    qemu = _qemu(mmu)
    sim = _hvsim(tmp_path, qemu["config"])
    q_mem: FadumpMem = qemu["mem"]
    s_mem: FadumpMem = sim["mem"]
    # the version property and the header, byte for byte where it is the firmware's
    assert sim["version"] == qemu["version"] == bytes([1, 0, 1, 0])
    for field in ("version", "status", "first_offset_section"):
        assert getattr(s_mem.header, field) == getattr(q_mem.header, field), field
    assert q_mem.header.status == 0xC000  # DUMP_PERFORMED | DUMP_TRIGGERED
    # the sections the kernel registered, in order; the firmware's filled fields
    q_types = [s.source_type for s in q_mem.sections]
    assert [s.source_type for s in s_mem.sections][: len(q_types)] == q_types
    for q, s in zip(q_mem.sections, s_mem.sections, strict=False):
        assert q.error_flags == s.error_flags == 0
        assert q.dump_flags & DUMP_REQUEST_FLAG and s.dump_flags & DUMP_REQUEST_FLAG
        if q.source_type == SOURCE_BOOT_MEMORY:
            assert (q.source_address, q.source_length) == (s.source_address, s.source_length)
            assert q.length_copied == s.length_copied == q.source_length
        # Linux places the copies: CPU state at the reserved area's start, the boot
        # copies from the next page boundary after the CPU state and HPTE sections
        if q.source_type == SOURCE_CPU:
            assert q.destination_address == s.destination_address
    for mem in (q_mem, s_mem):
        cpu, hpte = mem.one(SOURCE_CPU), mem.one(SOURCE_HPTE)
        assert cpu is not None and hpte is not None
        boot = mem.boot_regions[0]
        end = cpu.destination_address + cpu.source_length + hpte.source_length
        assert boot.destination_address == page_up(end, qemu["config"]["page_size"])
    # the CPU state data: same header, same registers in the same order, each CPU
    q_cpus, s_cpus = parse_regsave(qemu["cpu"]), parse_regsave(sim["cpu"])
    assert [c.cpu for c in s_cpus] == [c.cpu for c in q_cpus] == [0, 1]
    for q, s in zip(q_cpus, s_cpus, strict=True):
        assert tuple(q.regs) == tuple(s.regs) == QEMU_FADUMP_REGISTERS
    assert qemu["cpu"][:20] == sim["cpu"][:20]  # magic, version, count offset, count


@pytest.mark.parametrize("mmu", MMUS)
def test_the_differences_left_and_why(tmp_path: Path, mmu: str) -> None:
    """What hvsim does differently from QEMU's firmware, each on purpose."""
    qemu = _qemu(mmu)
    sim = _hvsim(tmp_path, qemu["config"])
    q_sizes, s_sizes = _sizes(qemu["sizes"]), _sizes(sim["sizes"])
    memory = qemu["config"]["memory"]
    # QEMU saves no HPTEs (its hash table is not in guest memory) and says so, hash
    # MMU or radix; PowerVM saves them, and hvsim models PowerVM's hash LPARs.
    assert q_sizes[2] == 0 and s_sizes[2] == hpt_size(memory)
    # QEMU reports its CPU state data 12 bytes longer than it writes (0xa00 for two
    # CPUs); hvsim reports what it writes. Linux reads up to the last CPUEND either way.
    assert q_sizes[1] == 0xA00 and s_sizes[1] == len(sim["cpu"]) == 0xA00 - 12
    # QEMU leaves each section's flags as requested; hvsim also sets 0x8000 on a
    # section it saved, as the phyp-era firmware did. Linux reads neither.
    assert {s.dump_flags for s in qemu["mem"].sections} == {DUMP_REQUEST_FLAG}
    assert {s.dump_flags for s in sim["mem"].sections} == {0x8000 | DUMP_REQUEST_FLAG}
    # The parameter area is the kernel's: 6.12 took it from the top of RAM on radix and
    # found no room on hash ("Could not setup area to pass additional parameters");
    # hvsim's kernel puts it in the page after the reserved area.
    res = reservation(sim["lpar"].config)
    sim_param = sim["mem"].sections[-1]
    assert sim_param.source_address == res.param_addr
    if mmu == "radix":
        assert qemu["mem"].sections[-1].source_address == memory - 0x800
    else:
        assert len(qemu["mem"].sections) == 3
