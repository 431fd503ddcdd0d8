"""hvsim adopt: the pure parts, and adoptions of cores shaped like QEMU's, in both byte orders.

The cores are written from a simulated crashed kernel (so the truth is known)
the way QEMU's ``dump-guest-memory`` writes a pseries guest: one ``PT_LOAD``
with ``p_paddr`` and ``p_vaddr`` 0, ``NT_PRSTATUS`` per CPU, no VMCOREINFO
note, and for the little-endian kernel a big-endian ELF header and notes.
The real thing is in tests/test_real_kernel.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drgn_hvdump.formats.elfcore import (
    NT_PRSTATUS,
    LoadSegment,
    Note,
    PtRegs,
    build_core_header,
    build_notes,
    build_prstatus,
)
from drgn_hvdump.formats.guestcore import (
    KERNEL_BASE,
    find_vmcoreinfo_notes,
    kernel_byteorder,
    place_segments,
)
from drgn_hvdump.formats.layout import ByteOrder
from drgn_hvdump.formats.regsave import cpu_state_to_pt_regs, pt_regs_to_cpu_state
from drgn_hvdump.formats.vmcoreinfo import VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE
from hvsim import Lpar
from hvsim.adopt import ImageError, adopted_memory_size, inspect_image
from hvsim.hypervisor import scratch_layout
from hvsim.verify import verify_dump, verify_sections
from tests.collect_support import (
    FUSE_MISSING,
    PROJECT,
    compare_with_truth,
    crashed_source,
    hvdump,
    mounted,
    qemu_like_core,
)

needs_fuse = pytest.mark.skipif(bool(FUSE_MISSING), reason=FUSE_MISSING)

# ------------------------------------------------------------------ pure parts


def test_place_segments_trusts_paddr_and_fixes_qemus_zeros() -> None:
    one = place_segments([(0, 0, 1 << 30, 0xF50, 1 << 30)])
    assert [(s.paddr, s.memsz, s.offset) for s in one] == [(0, 1 << 30, 0xF50)]
    two = place_segments([(1 << 30, 0, 1 << 20, 0x2000, 1 << 20), (0, 0, 1 << 20, 0x1000, 1 << 20)])
    assert [s.paddr for s in two] == [0, 1 << 30]
    linear = place_segments(
        [(0, KERNEL_BASE, 1 << 20, 0x1000, 1 << 20), (0, KERNEL_BASE + (4 << 20), 8, 0, 8)]
    )
    assert [s.paddr for s in linear] == [0, 4 << 20]
    with pytest.raises(ImageError, match="all at physical address 0"):
        place_segments([(0, 0, 1 << 20, 0x1000, 1 << 20), (0, 0, 1 << 20, 0x2000, 1 << 20)])
    with pytest.raises(ImageError, match="overlap at physical address 0x80000"):
        place_segments([(0, 0, 1 << 20, 0, 1 << 20), (0x80000, 0, 1 << 20, 0, 1 << 20)])
    with pytest.raises(ImageError, match="no memory"):
        place_segments([(0, 0, 0, 0, 0)], "x.core")


@pytest.mark.parametrize("order", ["big", "little"])
def test_find_vmcoreinfo_notes_in_both_byte_orders(order: ByteOrder) -> None:
    text = b"OSRELEASE=6.1.0-57-powerpc64le\nPAGESIZE=65536\n"
    note = build_notes([Note(VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE, text)], order)
    decoy = b"VMCOREINFO\0\0OSRELEASE=" + b"\xff" * 12  # the name without a header
    buf = os.urandom(1000) + decoy + b"\0" * 37 + note + os.urandom(500)
    found = list(find_vmcoreinfo_notes(buf, base=0x4000000))
    assert found == [(0x4000000 + buf.index(note), order)]
    assert list(find_vmcoreinfo_notes(buf, 0, buf.index(note) + 10)) == []


def test_adopted_memory_leaves_the_image_alone() -> None:
    for ram_end in (1 << 30, (1 << 30) + 4096, 3 << 30, 16 << 30):
        memory = adopted_memory_size(ram_end, 2, 65536)
        assert memory % (256 << 20) == 0 and memory > ram_end
        from hvsim.config import LparConfig

        assert scratch_layout(LparConfig(memory=memory, cpus=2)).base >= ram_end


def test_kernel_byteorder_is_the_msr_le_bit() -> None:
    assert kernel_byteorder(0x8000000000001033) == "little"
    assert kernel_byteorder(0x8000000000001032) == "big"


@given(
    gpr=st.lists(st.integers(0, 2**64 - 1), min_size=32, max_size=32),
    words=st.lists(st.integers(0, 2**64 - 1), min_size=8, max_size=8),
)
def test_pt_regs_survive_the_register_save_area(gpr: list[int], words: list[int]) -> None:
    nip, msr, ctr, link, xer, ccr, dar, dsisr = words
    regs = PtRegs(
        gpr=tuple(gpr), nip=nip, msr=msr, ctr=ctr, link=link, xer=xer, ccr=ccr, dar=dar,
        dsisr=dsisr,
    )  # fmt: skip
    state = pt_regs_to_cpu_state(3, regs)
    assert state.regs["PIR"] == 3
    assert cpu_state_to_pt_regs(state) == regs


# ------------------------------------------------------------ QEMU-shaped cores


@needs_fuse
@pytest.mark.slow
@pytest.mark.parametrize(
    ("endian", "elf_order", "note"),
    [("big", "big", False), ("little", "big", False), ("little", "little", True)],
    ids=["be-kernel", "le-kernel-be-elf-as-qemu", "le-kernel-with-note"],
)
def test_adopted_core_runs_the_whole_life_cycle(
    tmp_path: Path, endian: str, elf_order: ByteOrder, note: bool
) -> None:
    source, image = crashed_source(tmp_path, endian)
    core = qemu_like_core(source, image, tmp_path / "guest.core", elf_order, vmcoreinfo_note=note)
    guest = inspect_image(core)
    assert guest.byteorder == endian and guest.elf_byteorder == elf_order
    assert guest.vmcoreinfo_where == ("note in the core" if note else f"{_note_addr(source):#x}")
    assert guest.osrelease == source.config.osrelease and len(guest.registers) == 3

    lpar = Lpar.adopt(tmp_path / "lpar", core, crash_cpu=image.crash_cpu, boot=True)
    cfg = lpar.config
    assert (cfg.endian, cfg.cpus, cfg.page_size) == (endian, 3, 65536)
    assert cfg.memory == adopted_memory_size(1 << 30, 3, 65536)
    assert lpar.expected(0, 1 << 20) == source.expected(0, 1 << 20)
    lpar.crash()
    assert lpar.state == "capture"
    report = verify_sections(lpar)
    assert report.ok, report.text()
    # The hypervisor saved the image's registers, and the low 256 MiB are the image's.
    saved = {s.cpu: s.regs for s in lpar.expected_cpu_states()}
    for cpu in range(3):
        assert saved[cpu]["NIA"] == image.pt_regs(cpu).nip
    out = tmp_path / "dump"
    with mounted(lpar, tmp_path / "root") as root:
        res = hvdump("collect", "--root", str(root), "-o", str(out), "--no-progress")
        assert res.returncode == 0, res.stderr
    assert compare_with_truth(lpar, out) == []
    report = verify_dump(lpar, out / "dump.kdump")
    assert report.ok, report.text()
    # The truth of the adopted LPAR is the source kernel's memory, byte for byte.
    for pa in (0, 300 << 20, (1 << 30) - (1 << 20)):
        assert lpar.expected(pa, 1 << 20) == source.expected(pa, 1 << 20)
    assert lpar.protected


def _note_addr(lpar: Lpar) -> int:
    found = []
    for start in range(0, lpar.config.memory, 64 << 20):
        chunk = lpar.expected(start, 64 << 20)
        found += [a for a, _ in find_vmcoreinfo_notes(chunk, base=start)]
    assert len(found) == 1
    return found[0]


# ------------------------------------------------------------------ bad images


def _hvsim(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    return subprocess.run(
        [sys.executable, "-m", "hvsim", *args], capture_output=True, text=True, env=env
    )


def _one_line_error(res: subprocess.CompletedProcess[str], *want: str) -> None:
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for w in want:
        assert w in lines[0], lines[0]


def test_bad_images_get_one_line_and_no_lpar(tmp_path: Path) -> None:
    lpar = tmp_path / "lpar"
    _one_line_error(_hvsim("adopt", str(tmp_path / "missing.core"), str(lpar)), "missing.core")
    junk = tmp_path / "junk.core"
    junk.write_bytes(b"not an ELF file at all" * 10)
    _one_line_error(_hvsim("adopt", str(junk), str(lpar)), "junk.core", "not an ELF")
    mem = bytes(1 << 20)
    bare = tmp_path / "bare.core"
    layout = build_core_header([], [LoadSegment(0, len(mem), vaddr=0)], "big", page_size=65536)
    bare.write_bytes(layout.header + mem)
    _one_line_error(_hvsim("adopt", str(bare), str(lpar)), "bare.core", "no NT_PRSTATUS")
    regs = PtRegs(gpr=(0,) * 32, msr=0x8000000000001033)
    prs = [Note("CORE", NT_PRSTATUS, build_prstatus(regs, "big", pid=1))]
    layout = build_core_header(prs, [LoadSegment(0, len(mem), vaddr=0)], "big", page_size=65536)
    novmci = tmp_path / "novmci.core"
    novmci.write_bytes(layout.header + mem)
    _one_line_error(_hvsim("adopt", str(novmci), str(lpar)), "no VMCOREINFO", "--vmcoreinfo")
    _one_line_error(
        _hvsim("adopt", str(novmci), str(lpar), "--vmcoreinfo", "0x1000"),
        "no VMCOREINFO note at physical address 0x1000",
    )
    truncated = tmp_path / "short.core"
    truncated.write_bytes(layout.header + mem[:4096])
    _one_line_error(_hvsim("adopt", str(truncated), str(lpar)), "short.core", "truncated")
    assert not lpar.exists()


def test_an_image_that_changed_is_refused(tmp_path: Path) -> None:
    source, image = crashed_source(tmp_path, "big")
    core = qemu_like_core(source, image, tmp_path / "g.core", "big", vmcoreinfo_note=True)
    Lpar.adopt(tmp_path / "lpar", core)
    with open(core, "ab") as f:
        f.write(b"\0" * 4096)
    res = _hvsim("boot", str(tmp_path / "lpar"))
    _one_line_error(res, "g.core", "adopt it again")
    res = _hvsim("vmlinux", str(tmp_path / "lpar"))
    _one_line_error(res, "adopted a real image")
