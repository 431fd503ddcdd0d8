"""/proc/vmcore of the capture kernel: an ELF core readers accept, in both byte orders."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest

from drgn_hvdump.formats.elfcore import EM_PPC64, ET_CORE, PT_LOAD, ElfCore
from drgn_hvdump.formats.regsave import cpu_state_to_pt_regs
from drgn_hvdump.formats.release_region import parse_release_request
from hvsim import Lpar, ViewUnavailable

G = 1 << 30
M = 1 << 20


class _VmcoreIO(io.RawIOBase):
    """A read-only file object over Lpar.read_vmcore (no copy of the core on disk)."""

    def __init__(self, lpar: Lpar) -> None:
        self.lpar = lpar
        self.pos = 0
        self.size = lpar.vmcore_size()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.lpar.read_vmcore(self.pos, len(b))
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)


def _capture(tmp_path: Path, **kw: object) -> Lpar:
    opts: dict[str, object] = {"memory": G, "cpus": 3, "seed": 21, "boot": True}
    opts.update(kw)
    lpar = Lpar.create(tmp_path / "lpar", **opts)  # type: ignore[arg-type]
    lpar.crash()
    return lpar


@pytest.mark.parametrize("page_size", [65536, 4096])
@pytest.mark.parametrize("endian", ["big", "little"])
def test_vmcore_parses_with_elfcore(tmp_path: Path, endian: str, page_size: int) -> None:
    lpar = _capture(tmp_path, endian=endian, page_size=page_size)
    core = ElfCore(_VmcoreIO(lpar), "vmcore")  # type: ignore[arg-type]
    assert core.byteorder == endian
    assert core.header.e_type == ET_CORE and core.machine == EM_PPC64
    loads = [(ph.p_paddr, ph.p_memsz, ph.p_vaddr) for ph in core.segments]
    assert loads == [
        (0, 256 * M, 0xC000000000000000),
        (256 * M, G - 256 * M, 0xC000000000000000 + 256 * M),
    ]
    assert all(ph.p_filesz == ph.p_memsz and ph.p_type == PT_LOAD for ph in core.segments)
    assert core.vmcoreinfo is not None
    info = lpar.last_dump()
    assert info is not None
    assert core.vmcoreinfo["OSRELEASE"] == "2.6.32-hvsim"
    assert core.vmcoreinfo["PAGESIZE"] == str(page_size)
    assert core.vmcoreinfo["CRASHTIME"] == str(info.crash_time)
    # The capture kernel's notes: each CPU's saved registers, pr_pid = CPU + 1.
    states = lpar.expected_cpu_states()
    assert [p.pr_pid for p in core.prstatus] == [s.cpu + 1 for s in states] == [1, 2, 3]
    assert [p.pr_reg for p in core.prstatus] == [cpu_state_to_pt_regs(s) for s in states]
    # Low memory is the capture kernel's; the reserved area is the crashed kernel's.
    assert core.read_phys(64 * M, M) != lpar.expected(64 * M, M)
    assert core.read_phys(64 * M, M) == lpar.read_phys(64 * M, M)
    assert core.read_phys(300 * M, 8192) == lpar.expected(300 * M, 8192)
    # The low-memory copy sits at its destination inside the scratch area.
    dest = info.sections["rmo"][0]
    assert core.read_phys(dest + 64 * M, 4096) == lpar.expected(64 * M, 4096)
    assert lpar.vmcore_size() == core.segments[-1].p_offset + core.segments[-1].p_filesz


def test_vmcore_reads_at_any_offset_and_stop_at_the_end(tmp_path: Path) -> None:
    lpar = _capture(tmp_path)
    size = lpar.vmcore_size()
    whole_head = lpar.read_vmcore(0, 3 * 65536)
    assert lpar.read_vmcore(100, 70000) == whole_head[100:70100]
    assert lpar.read_vmcore(size - 10, 100) == lpar.read_vmcore(size - 10, 10)
    assert len(lpar.read_vmcore(size - 10, 100)) == 10
    assert lpar.read_vmcore(size, 100) == b""
    with pytest.raises(ValueError):
        lpar.read_vmcore(-1, 10)


def test_vmcore_only_exists_while_a_dump_waits(tmp_path: Path) -> None:
    lpar = Lpar.create(tmp_path / "l", memory=G, boot=True)
    for call in (lpar.vmcore_size, lambda: lpar.read_vmcore(0, 10), lpar.release_region_text):
        with pytest.raises(ViewUnavailable) as exc:
            call()
        assert exc.value.errno == 2


def test_device_tree_of_capture_and_ordinary_boots(tmp_path: Path) -> None:
    lpar = _capture(tmp_path)
    tree = lpar.device_tree()
    assert tree["rtas/ibm,configure-kernel-dump"]
    assert "rtas/ibm,dump-kernel" in tree
    assert len(tree["rtas/ibm,kernel-dump"]) == 160
    assert len(tree["rtas/ibm,configure-kernel-dump-sizes"]) == 24
    assert tree["memory@0/reg"] == G.to_bytes(16, "big")
    assert lpar.proc_version().startswith("Linux version 2.6.32-hvsim ")
    other = Lpar.create(tmp_path / "o", memory=G, boot=True)
    plain = other.device_tree()
    assert "rtas/ibm,kernel-dump" not in plain and "rtas/ibm,dump-kernel" not in plain
    assert "rtas/ibm,configure-kernel-dump" in plain
    no_fw = Lpar.create(tmp_path / "n", memory=G, firmware_dump=False, boot=True)
    assert not any(k.startswith("rtas/ibm,") for k in no_fw.device_tree())


def test_release_requests_from_the_map_round_trip(tmp_path: Path) -> None:
    lpar = _capture(tmp_path)
    m = lpar.release_map()
    assert parse_release_request(f"{m.reserved.addr:#x} {m.reserved.size:#x}".encode()) == (
        m.reserved.addr,
        m.reserved.size,
    )


@pytest.mark.tools
@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf is not installed")
@pytest.mark.parametrize("endian", ["big", "little"])
def test_readelf_reads_a_copy_of_the_vmcore(tmp_path: Path, endian: str) -> None:
    lpar = Lpar.create(tmp_path / "lpar", memory=768 * M, cpus=2, endian=endian, boot=True)
    lpar.crash()
    out = tmp_path / "vmcore"
    with open(out, "wb") as f:
        offset = 0
        while data := lpar.read_vmcore(offset, 8 * M):
            f.write(data)
            offset += len(data)
    text = subprocess.run(
        ["readelf", "-h", "-l", "-n", "-W", str(out)], capture_output=True, text=True, check=True
    ).stdout
    assert "CORE (Core file)" in text
    assert ("big endian" if endian == "big" else "little endian") in text
    assert "PowerPC64" in text
    assert text.count("LOAD") == 2
    assert "0xc000000010000000" in text
    assert "VMCOREINFO" in text


def test_vmcore_has_no_cpu_notes_when_the_save_area_was_cut_short(tmp_path: Path) -> None:
    # The capture kernel cannot tell which CPUs' entries are whole: no notes at all.
    lpar = Lpar.create(tmp_path / "lpar", memory=G, cpus=2, seed=3, boot=True)
    lpar.crash(partial={"cpu": 100})
    core = ElfCore(_VmcoreIO(lpar), "vmcore")  # type: ignore[arg-type]
    assert core.prstatus == () and core.vmcoreinfo is not None
