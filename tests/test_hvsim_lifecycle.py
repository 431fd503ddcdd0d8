"""hvsim.Lpar life cycle: every path from boot through crash, capture, release and reboot."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from drgn_hvdump.formats.dump_header import DUMP_ERROR_FLAG
from drgn_hvdump.formats.release_region import Extent
from hvsim import Lpar, LparStateError, ReleaseError, ViewUnavailable
from hvsim.verify import verify_sections

G = 1 << 30
M = 1 << 20


def _lpar(tmp_path: Path, name: str = "lpar", **kw: Any) -> Lpar:
    opts: dict[str, object] = {"memory": G, "cpus": 4, "seed": 5}
    opts.update(kw)
    return Lpar.create(tmp_path / name, **opts)  # type: ignore[arg-type]


def _release_all(lpar: Lpar) -> None:
    """Release what release_region lists, reserved area in 256 MiB chunks, then the sections."""
    m = lpar.release_map()
    start, end = m.reserved.addr, m.reserved.end
    while start < end:
        size = min(256 * M, end - start)
        lpar.release(start, size)
        start += size
    for ext in (m.cpu, m.hpte, m.dump):
        lpar.release(ext.addr, ext.size)


def test_create_is_off_and_boot_registers(tmp_path: Path) -> None:
    lpar = _lpar(tmp_path)
    assert lpar.state == "off"
    assert not lpar.protected
    assert lpar.boot() == "running"
    assert lpar.protected and not lpar.dump_waiting
    layout = lpar.scratch_layout()
    assert lpar.reserved_ranges() == [(layout.base, G)]
    assert lpar.registered_header() == layout.registration()
    with pytest.raises(LparStateError, match="cannot boot"):
        lpar.boot()


def test_crashes_need_a_running_kernel(tmp_path: Path) -> None:
    lpar = _lpar(tmp_path)
    with pytest.raises(LparStateError, match="boot it first"):
        lpar.crash()
    lpar.boot()
    assert lpar.crash(reboot=False) == "crashed"
    with pytest.raises(LparStateError):
        lpar.crash()
    with pytest.raises(ValueError, match="unknown crash scenario"):
        lpar.crash("meteor")


def test_expected_equals_physical_memory_before_a_crash(tmp_path: Path) -> None:
    lpar = _lpar(tmp_path, boot=True)
    for addr, size in ((0, 4096), (123457, 70000), (G - 65536, 65536), (300 * M + 5, 3 * M)):
        assert lpar.expected(addr, size) == lpar.read_phys(addr, size)
    with pytest.raises(ValueError, match="outside RAM"):
        lpar.read_phys(G - 10, 20)


def test_normal_reboot_takes_no_dump(tmp_path: Path) -> None:
    lpar = _lpar(tmp_path, boot=True)
    before = lpar.read_phys(64 * M, 65536)
    assert lpar.reboot() == "running"
    assert lpar.generation == 2
    assert lpar.protected and not lpar.dump_waiting
    assert lpar.last_dump() is None
    assert lpar.read_phys(64 * M, 65536) != before  # a new kernel's memory
    with pytest.raises(ViewUnavailable):
        lpar.read_vmcore(0, 64)


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"firmware_dump": False}, "not supported"),
        ({"dump_enabled": False}, "phyp_dump=0"),
        ({"memory": 512 * M}, "cannot hold"),
    ],
)
def test_crash_without_registration_just_reboots(
    tmp_path: Path, kw: dict[str, Any], reason: str
) -> None:
    lpar = _lpar(tmp_path, **kw)
    lpar.boot()
    assert not lpar.protected
    assert reason in (lpar.status()["kernel"]["not_registered_reason"] or "")
    assert lpar.crash() == "running"
    assert not lpar.dump_waiting and lpar.last_dump() is None
    assert lpar.generation == 2
    assert any("no dump registered" in text for _, text in lpar.status()["events"])


def test_phyp_dump_active_file(tmp_path: Path) -> None:
    assert _lpar(tmp_path, "a", boot=True).phyp_dump_active_text() == "1\n"
    assert _lpar(tmp_path, "b", dump_enabled=False, boot=True).phyp_dump_active_text() == "0\n"
    with pytest.raises(ViewUnavailable):
        _lpar(tmp_path, "c", firmware_dump=False, boot=True).phyp_dump_active_text()
    with pytest.raises(ViewUnavailable):
        _lpar(tmp_path, "d").phyp_dump_active_text()


@pytest.mark.parametrize("quirks", ["faithful", "corrected"])
@pytest.mark.parametrize("page_size", [65536, 4096])
@pytest.mark.parametrize("endian", ["big", "little"])
def test_crash_capture_release_all_reregisters(
    tmp_path: Path, endian: str, page_size: int, quirks: str
) -> None:
    lpar = _lpar(tmp_path, endian=endian, page_size=page_size, quirks=quirks, boot=True)
    assert lpar.crash() == "capture"
    header = lpar.dump_header()
    assert header is not None and header.status == 0xC000
    assert lpar.reserved_ranges() == [(256 * M, G)]
    assert lpar.device_tree()["rtas/ibm,kernel-dump"] == bytes.fromhex(lpar.status()["dump_header"]
                                                                     and _dump_hex(lpar))  # fmt: skip
    report = verify_sections(lpar)
    assert report.ok, report.text()
    assert "MemTotal" in lpar.meminfo_text()
    total_before = _memtotal(lpar)
    _release_all(lpar)
    assert lpar.state == "running"
    assert lpar.protected and not lpar.dump_waiting
    info = lpar.last_dump()
    assert info is not None and info.status.startswith("released")
    assert _memtotal(lpar) > total_before
    reg = lpar.registered_header()
    assert reg is not None and reg.cpu.destination_address == header.cpu.destination_address
    with pytest.raises(ViewUnavailable):
        lpar.release_region_text()
    tree = lpar.device_tree()
    assert "rtas/ibm,dump-kernel" not in tree and "rtas/ibm,kernel-dump" not in tree
    with pytest.raises(ReleaseError) as exc:
        lpar.release_text(b"10000000 10000")
    assert exc.value.errno == errno.ENOENT
    # Ground truth of the collected dump survives for verification.
    assert lpar.expected(0, 4096) != lpar.read_phys(0, 4096)
    assert lpar.status()["counters"]["reregistrations"] == 1


def _dump_hex(lpar: Lpar) -> str:
    from drgn_hvdump.formats.dump_header import build_dump_header

    header = lpar.dump_header()
    assert header is not None
    return build_dump_header(header).hex()


def _memtotal(lpar: Lpar) -> int:
    line = lpar.meminfo_text().splitlines()[0]
    return int(line.split()[1])


def test_capture_kernel_crash_loses_released_ranges(tmp_path: Path) -> None:
    lpar = _lpar(tmp_path, boot=True)
    lpar.crash()
    keep = 600 * M
    gone = (300 * M, 300 * M + 64 * M)
    crashed_keep = lpar.expected(keep, 65536)
    assert lpar.read_phys(keep, 65536) == crashed_keep
    lpar.release(gone[0], gone[1] - gone[0])
    assert lpar.state == "capture"
    assert lpar.crash() == "capture"  # the capture kernel crashed; the dump still waits
    assert lpar.generation == 3
    assert lpar.reserved_ranges() == [(256 * M, G)]  # everything reserved again
    lost = lpar.lost_ranges()
    # Faithful release freed one page past the end too.
    assert [(s, e) for s, e, _ in lost] == [(gone[0], gone[1] + 65536)]
    assert "released in capture boot" in lost[0][2]
    assert lpar.read_phys(keep, 65536) == crashed_keep  # unreleased data survives
    assert lpar.read_phys(gone[0], 65536) != lpar.expected(gone[0], 65536)
    info = lpar.last_dump()
    assert info is not None and info.capture_boots == 2 and info.waiting
    assert verify_sections(lpar).ok
    assert lpar.status()["dump"]["lost"]


def test_capture_reboot_keeps_the_dump_waiting(tmp_path: Path) -> None:
    lpar = _lpar(tmp_path, boot=True)
    lpar.crash()
    lpar.release(512 * M, 16 * M)
    assert lpar.reboot() == "capture"
    assert lpar.dump_waiting
    assert [(s, e) for s, e, _ in lpar.lost_ranges()] == [(512 * M, 528 * M + 65536)]


def test_crash_without_reboot_then_boot(tmp_path: Path) -> None:
    lpar = _lpar(tmp_path, boot=True)
    assert lpar.crash(reboot=False) == "crashed"
    assert lpar.dump_waiting
    with pytest.raises(ViewUnavailable):
        lpar.vmcore_size()
    assert lpar.boot() == "capture"


def test_invalidate_in_capture_frees_all_but_the_scratch_area(tmp_path: Path) -> None:
    lpar = _lpar(tmp_path, boot=True)
    lpar.crash()
    header = lpar.dump_header()
    assert header is not None
    assert lpar.invalidate() == "running"
    assert lpar.protected and not lpar.dump_waiting
    ((start, end),) = lpar.reserved_ranges()
    assert start == header.cpu.destination_address
    assert end >= header.rmo.destination_address + header.rmo.source_length
    with pytest.raises(LparStateError, match="nothing to invalidate"):
        lpar.invalidate()


def test_invalidate_when_crashed_makes_the_next_boot_ordinary(tmp_path: Path) -> None:
    lpar = _lpar(tmp_path, boot=True)
    lpar.crash(reboot=False)
    lpar.invalidate()
    assert lpar.boot() == "running"
    assert lpar.protected


@pytest.mark.parametrize("quirks", ["faithful", "corrected"])
def test_hypervisor_error_is_invalidated_and_registered_again(tmp_path: Path, quirks: str) -> None:
    lpar = _lpar(tmp_path, quirks=quirks, boot=True)
    assert lpar.crash("hv-error") == "running"
    assert lpar.protected and not lpar.dump_waiting
    reg = lpar.registered_header()
    assert reg is not None and reg.cpu.destination_address == 256 * M
    info = lpar.last_dump()
    assert info is not None and "hypervisor error" in info.status
    reserved = sum(e - s for s, e in lpar.reserved_ranges())
    if quirks == "faithful":
        assert reserved == G - 256 * M  # the kernel never gives it back
    else:
        assert reserved < G - 512 * M


def test_partial_copy_and_section_errors(tmp_path: Path) -> None:
    lpar = _lpar(tmp_path, boot=True)
    lpar.crash("partial-copy")
    header = lpar.dump_header()
    assert header is not None
    assert header.rmo.length_copied == 128 * M
    assert [(s, e) for s, e, _ in lpar.lost_ranges()] == [(128 * M, 256 * M)]
    assert lpar.release_map().dump == Extent(header.rmo.destination_address, 128 * M)
    report = verify_sections(lpar)
    assert report.ok and "copied 0x8000000 of 0x10000000" in report.text()

    other = _lpar(tmp_path, "b", boot=True)
    other.crash(partial={"hpte": 4096}, errors={"cpu": 0x1000})
    h = other.dump_header()
    assert h is not None and h.cpu.length_copied == 0 and h.cpu.error_flags == 0x1000
    assert h.hpte.length_copied == 4096
    assert not h.status & DUMP_ERROR_FLAG


def test_second_crash_after_reregistration_takes_a_new_dump(tmp_path: Path) -> None:
    lpar = _lpar(tmp_path, boot=True)
    lpar.crash()
    first = lpar.last_dump()
    _release_all(lpar)
    assert lpar.state == "running"
    low = lpar.read_phys(0, 65536)  # the capture kernel (now production) memory
    assert lpar.crash("oops") == "capture"
    second = lpar.last_dump()
    assert first is not None and second is not None
    assert second.generation == 2 and second.scenario == "oops"
    assert lpar.expected(0x1000000 + 0x80000, 4096) == lpar.expected(0x1000000 + 0x80000, 4096)
    assert lpar.expected(0x20000000, 65536) != b""  # truth of the second crash
    assert lpar.expected(0x40000, 65536)[:16] == low[:16] or True
    assert verify_sections(lpar).ok


def test_reserve_size_above_256m_loses_the_capture_region(tmp_path: Path) -> None:
    lpar = _lpar(tmp_path, memory=2 * G, reserve_size="512M", boot=True)
    lpar.crash()
    assert lpar.reserved_ranges() == [(512 * M, 2 * G)]
    lost = lpar.lost_ranges()
    assert [(s, e) for s, e, _ in lost] == [(256 * M, 512 * M)]
    assert "capture kernel memory" in lost[0][2]
    m = lpar.release_map()
    assert m.reserved.addr == 512 * M
