"""hvsim's firmware-assisted dump: the reservation, the firmware's save, the capture
kernel's vmcore and sysfs files with the kernel's errors, release_mem and re-registration."""

from __future__ import annotations

import errno
import itertools
import re
from pathlib import Path

import pytest

from drgn_hvdump.formats.elfcore import ElfCore
from drgn_hvdump.formats.fadump_mem import parse_fadump_mem, section_names
from hvsim import Lpar
from hvsim.config import LparConfig
from hvsim.fadump import PARAM_AREA_SIZE, VERSION_PROPERTY, reservation
from hvsim.machine import HvsimError, ViewUnavailable
from hvsim.verify import verify_dump, verify_sections

MIX = "zero=0.5,text=0.2,pointer=0.2,random=0.1"


def _lpar(tmp_path: Path, name: str = "l", **kw: object) -> Lpar:
    kw.setdefault("memory", "1G")
    kw.setdefault("mix", MIX)
    return Lpar.create(tmp_path / name, dump="fadump", boot=True, **kw)  # type: ignore[arg-type]


def _memtotal(lpar: Lpar) -> int:
    match = re.search(r"MemTotal:\s+(\d+)", lpar.meminfo_text())
    assert match
    return int(match.group(1))


def _vmcore(lpar: Lpar, tmp_path: Path) -> ElfCore:
    path = tmp_path / "vmcore"
    path.write_bytes(lpar.read_vmcore(0, lpar.vmcore_size()))
    return ElfCore.open(path)


def test_reservation_layout_and_registration() -> None:
    cfg = LparConfig(memory=2 << 30, dump="fadump", boot_regions=3, page_size=65536)
    res = reservation(cfg)
    regions = res.boot_regions()
    assert len(regions) == 3 and regions[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(regions))
    assert sum(n for _, n in regions) == res.boot_mem_top == 256 << 20
    # Linux's size: the CPU state and HPTE page aligned, the copies, the 0x2a8-byte header
    assert res.ra_start == res.boot_mem_top
    assert res.ra_end - res.ra_start == 0x1010000 + res.boot_size + 0x2A8
    assert res.ra_end % cfg.page_size == 0x2A8 and res.header_page == res.ra_end - 0x2A8
    # Linux frees the header's page (and the parameter area); a fixed kernel keeps both
    assert res.kept() == (res.ra_start, res.header_page)
    assert res.kept("corrected") == (res.ra_start, res.param_end)
    mem = res.registration()
    assert section_names(mem) == ["cpu", "hpte", "boot0", "boot1", "boot2", "param"]
    param = mem.sections[-1]
    assert param.source_address == param.destination_address == res.param_addr
    assert param.source_length == PARAM_AREA_SIZE
    # the CPU state data, the HPTEs, then the boot-memory copies back to back from the
    # next page boundary (Linux's layout, and QEMU's firmware's: test_hvsim_qemu_fadump)
    dests = [s.destination_address for s in mem.sections[:-1]]
    sizes = [s.source_length for s in mem.sections[:-1]]
    assert dests[0] == res.ra_start and dests[1] == dests[0] + sizes[0]
    assert dests[2] == res.ra_start + 0x1010000
    assert all(d + n == e for d, n, e in zip(dests[2:], sizes[2:], dests[3:], strict=False))
    assert res.problem() is None
    small = reservation(LparConfig(memory=512 << 20, dump="fadump"))
    assert small.problem() and "not registered" in (small.problem() or "")


def test_config_refuses_what_fadump_cannot_be(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="boot_regions is fadump's"):
        LparConfig(memory=1 << 30, boot_regions=2)
    with pytest.raises(ValueError, match="from 1 to 7"):
        LparConfig(memory=1 << 30, dump="fadump", boot_regions=8)
    with pytest.raises(ValueError, match="'phyp' or 'fadump'"):
        LparConfig(memory=1 << 30, dump="opal")  # type: ignore[arg-type]


@pytest.mark.parametrize("endian", ["big", "little"])
def test_ordinary_boot_registers_and_shows_sysfs(tmp_path: Path, endian: str) -> None:
    lpar = _lpar(tmp_path, endian=endian)
    res = reservation(lpar.config)
    assert lpar.state == "running" and lpar.protected
    assert lpar.fadump_text("enabled") == "1\n"
    assert lpar.fadump_text("registered") == "1\n"
    assert lpar.fadump_text("hotplug_ready") == "1\n"
    assert int(lpar.fadump_text("mem_reserved")) == res.ra_end - res.ra_start
    tree = lpar.device_tree()
    assert tree["rtas/ibm,configure-kernel-dump-version"] == VERSION_PROPERTY
    assert "rtas/ibm,kernel-dump" not in tree and "rtas/ibm,dump-kernel" not in tree
    with pytest.raises(HvsimError) as exc:
        lpar.fadump_write("release_mem", b"1")
    assert exc.value.errno == errno.EPERM
    # registered: 0 unregisters, 1 registers again, anything else EINVAL
    lpar.fadump_write("registered", b"0\n")
    assert lpar.fadump_text("registered") == "0\n" and not lpar.protected
    lpar.fadump_write("registered", b"0x1")
    assert lpar.protected
    assert lpar.fadump_write("registered", "1") == "registered"  # again: re-registers
    for junk in (b"2", b"yes", b""):
        with pytest.raises(HvsimError) as exc:
            lpar.fadump_write("registered", junk)
        assert exc.value.errno == errno.EINVAL


def test_unsupported_and_disabled(tmp_path: Path) -> None:
    off = _lpar(tmp_path, "off", dump_enabled=False)
    assert not off.protected and off.fadump_text("enabled") == "0\n"
    assert off.fadump_text("mem_reserved") == "0\n"
    with pytest.raises(HvsimError) as exc:
        off.fadump_write("registered", b"1")
    assert exc.value.errno == errno.EPERM
    nofw = _lpar(tmp_path, "nofw", firmware_dump=False)
    assert not nofw.protected
    with pytest.raises(ViewUnavailable):
        nofw.fadump_text("enabled")
    assert "rtas/ibm,configure-kernel-dump" not in nofw.device_tree()
    assert "not supported" in nofw.status()["kernel"]["not_registered_reason"]
    phyp = Lpar.create(tmp_path / "phyp", memory="1G", boot=True)
    with pytest.raises(ViewUnavailable, match="--dump fadump"):
        phyp.fadump_text("enabled")


@pytest.mark.parametrize(("endian", "regions"), [("big", 1), ("little", 3)])
def test_capture_vmcore_is_the_crashed_memory(tmp_path: Path, endian: str, regions: int) -> None:
    lpar = _lpar(tmp_path, endian=endian, boot_regions=regions, cpus=3)
    assert lpar.crash("oops") == "capture"
    res = reservation(lpar.config)
    tree = lpar.device_tree()
    mem = parse_fadump_mem(tree["rtas/ibm,kernel-dump"])
    assert all(s.length_copied == s.source_length for s in mem.sections)
    assert lpar.fadump_text("registered") == "0\n"
    core = _vmcore(lpar, tmp_path)
    try:
        assert core.byteorder == endian
        loads = sorted((ph.p_paddr, ph.p_memsz) for ph in core.segments)
        assert loads == [(a, n) for a, n in res.boot_regions()] + [
            (res.ra_end, lpar.config.memory - res.ra_end)
        ]
        # Every byte the vmcore maps is the crashed kernel's, boot memory included.
        for ph in core.segments:
            for off in range(0, ph.p_memsz, 16 << 20):
                n = min(1 << 20, ph.p_memsz - off)
                assert core.read_phys(ph.p_paddr + off, n) == lpar.expected(ph.p_paddr + off, n)
        assert [p.pr_pid for p in core.prstatus] == [0, 0, 0]
        want = [(s.regs["NIA"], s.regs["GPR01"]) for s in lpar.expected_cpu_states()]
        assert [(p.pr_reg.nip, p.pr_reg.gpr[1]) for p in core.prstatus] == want
        assert core.vmcoreinfo and "OSRELEASE" in core.vmcoreinfo
    finally:
        core.close()
    assert verify_sections(lpar).ok
    assert lpar.lost_ranges() == [(res.ra_start, res.ra_end, lpar.lost_ranges()[0][2])]


def test_release_mem_frees_all_but_what_the_next_registration_needs(tmp_path: Path) -> None:
    lpar = _lpar(tmp_path)
    lpar.crash()
    res = reservation(lpar.config)
    before = _memtotal(lpar)
    with pytest.raises(HvsimError) as exc:
        lpar.fadump_write("registered", b"1")
    assert exc.value.errno == errno.EPERM  # a dump is active
    for junk in (b"0", b"2", b"x"):
        with pytest.raises(HvsimError) as exc:
            lpar.fadump_write("release_mem", junk)
        assert exc.value.errno == errno.EINVAL
    assert lpar.state == "capture"
    info_tree = lpar.device_tree()["rtas/ibm,kernel-dump"]
    lpar.fadump_write("release_mem", b"1\n")
    assert lpar.state == "running" and not lpar.protected
    freed = lpar.config.memory - res.kept()[1]
    assert _memtotal(lpar) - before == freed // 1024
    assert lpar.reserved_ranges() == [res.kept()]
    with pytest.raises(ViewUnavailable):
        lpar.vmcore_size()
    with pytest.raises(HvsimError) as exc:
        lpar.fadump_write("release_mem", b"1")
    assert exc.value.errno == errno.EPERM
    # Linux keeps its boot-time device tree
    assert lpar.device_tree()["rtas/ibm,kernel-dump"] == info_tree
    # Linux freed the header's page: take it out of use before registering again
    # (the reserved area's own pages refuse: EBUSY; MemTotal does not change)
    with pytest.raises(HvsimError) as exc:
        lpar.fadump_write("soft_offline_page", f"{res.ra_start:#x}".encode())
    assert exc.value.errno == errno.EBUSY
    lpar.fadump_write("soft_offline_page", f"{res.ra_end:#x}\n".encode())
    assert _memtotal(lpar) - before == freed // 1024
    lpar.fadump_write("registered", b"1")
    assert lpar.protected and lpar.status()["counters"]["reregistrations"] == 1
    # the re-registered capture kernel crashes: a second dump, collected the same way
    assert lpar.crash("panic") == "capture"
    info = lpar.last_dump()
    assert info is not None and info.waiting and info.generation == 2
    assert verify_sections(lpar).ok


@pytest.mark.parametrize("quirks", ["faithful", "corrected"])
def test_registering_after_release_mem_loses_the_next_dump(tmp_path: Path, quirks: str) -> None:
    """Linux 6.12's bug, as QEMU showed it: registering again after release_mem writes the
    crash-info header into a page the release freed; the next capture boot finds "Fadump
    header is corrupted" and frees the dump. A fixed kernel (corrected) keeps the page."""
    lpar = _lpar(tmp_path, quirks=quirks)
    assert lpar.crash("panic") == "capture"
    lpar.fadump_write("release_mem", b"1")
    lpar.fadump_write("registered", b"1")
    assert lpar.protected
    if quirks == "corrected":
        assert lpar.crash("panic") == "capture"
        return
    assert any("freed (Linux bug)" in text for _, text in lpar.status()["events"])
    assert lpar.crash("panic") == "running"
    assert not lpar.dump_waiting and not lpar.protected
    assert any("Fadump header is corrupted" in why for _, _, why in lpar.lost_ranges())


def test_invalid_dump_is_invalidated_at_the_capture_boot(tmp_path: Path) -> None:
    lpar = _lpar(tmp_path)
    assert lpar.crash(errors={"boot0": 0x8000}) == "running"
    assert not lpar.protected and lpar.fadump_text("registered") == "0\n"
    with pytest.raises(ViewUnavailable):
        lpar.vmcore_size()
    assert any("invalid" in why for _, _, why in lpar.lost_ranges())
    assert lpar.reserved_ranges() == [reservation(lpar.config).kept()]
    lpar.fadump_write("registered", b"1")
    with pytest.raises(ValueError, match="sections are cpu, hpte, boot0, param"):
        lpar.crash(errors={"rmo": 1})
    assert lpar.state == "running" and lpar.protected  # nothing changed


def test_capture_kernel_crash_and_reopen_keep_the_dump(tmp_path: Path) -> None:
    lpar = _lpar(tmp_path, boot_regions=2)
    lpar.crash()
    assert lpar.crash("panic") == "capture"  # not registered: the firmware still holds the dump
    reopened = Lpar.open(lpar.path)
    info = reopened.last_dump()
    assert info is not None and info.capture_boots == 2 and info.fadump
    assert info.sources["boot1"] == reservation(lpar.config).boot_regions()[1][0]
    assert verify_sections(reopened).ok


def test_raw_vmcore_verifies_against_ground_truth(tmp_path: Path) -> None:
    lpar = _lpar(tmp_path, endian="little")
    lpar.crash()
    core = tmp_path / "vmcore"
    core.write_bytes(lpar.read_vmcore(0, lpar.vmcore_size()))
    report = verify_dump(lpar, core)
    assert report.ok, report.text()
    assert report.counts["wrong"] == report.counts["missing"] == 0


def test_adopt_turns_a_fadump_vmcore_into_a_fadump_lpar(tmp_path: Path) -> None:
    """A fadump vmcore (PRSTATUS with pr_pid 0, a hole where the reserved area was)
    adopted as a fadump LPAR: its reserved area goes above the image, so nothing of
    the image is lost, and its own dump verifies against the image."""
    first = _lpar(tmp_path, "first", endian="little", cpus=2)
    first.crash("oops")
    core = tmp_path / "fadump.vmcore"
    core.write_bytes(first.read_vmcore(0, first.vmcore_size()))
    lpar = Lpar.adopt(tmp_path / "adopted", core, dump="fadump", boot=True)
    cfg = lpar.config
    assert cfg.dump == "fadump" and cfg.adopted and lpar.protected
    res = reservation(cfg)
    image_end = max(ph.p_paddr + ph.p_memsz for ph in ElfCore.open(core).segments)
    assert res.ra_start >= image_end and res.problem() is None
    assert lpar.crash() == "capture"
    assert lpar.lost_ranges()[0][:2] == (res.ra_start, res.ra_end)
    copy = tmp_path / "vmcore2"
    copy.write_bytes(lpar.read_vmcore(0, lpar.vmcore_size()))
    report = verify_dump(lpar, copy)
    assert report.ok, report.text()
    # the image's registers (its PRSTATUS notes, CPU order) are the crashed CPUs'
    want = [(s.regs["NIA"], s.regs["GPR01"]) for s in first.expected_cpu_states()]
    got = [(s.regs["NIA"], s.regs["GPR01"]) for s in lpar.expected_cpu_states()]
    assert got == want
