"""hvsim.verify: saved sections in place, collected dumps and raw vmcore copies, page by page."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from drgn_hvdump.formats.elfcore import LoadSegment, Note, build_core_header
from drgn_hvdump.formats.vmcoreinfo import VMCOREINFO_NOTE_NAME
from hvsim import HvsimError, Lpar
from hvsim.memory import IntervalSet
from hvsim.verify import verify_dump, verify_sections

M = 1 << 20
MEM = 768 * M
CHUNK = 16 * M


@pytest.fixture
def tmp_path(tmp_path: Path) -> Iterator[Path]:
    """A scratch directory in RAM when /dev/shm exists: these tests write GiBs of dumps."""
    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="hvsim-verify-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _capture(tmp_path: Path, **kw: object) -> Lpar:
    opts: dict[str, object] = {"memory": MEM, "cpus": 2, "seed": 33, "boot": True}
    opts.update(kw)
    lpar = Lpar.create(tmp_path / "lpar", **opts)  # type: ignore[arg-type]
    lpar.crash()
    return lpar


def _write_collected(
    lpar: Lpar,
    path: Path,
    *,
    corrupt: Sequence[int] = (),
    omit: Sequence[tuple[int, int]] = (),
    vmcoreinfo: bytes | None = None,
) -> None:
    """A collected dump: the crashed memory at physical addresses, minus ``omit``."""
    ranges = IntervalSet([(0, MEM)])
    for a, b in omit:
        ranges.remove(a, b)
    image = lpar.crashed_kernel()
    assert image is not None
    notes = [Note(VMCOREINFO_NOTE_NAME, 0, vmcoreinfo or image.vmcoreinfo())]
    segs = [LoadSegment(a, b - a) for a, b in ranges]
    layout = build_core_header(notes, segs, lpar.config.endian, page_size=lpar.config.page_size)
    buf = bytearray(CHUNK)
    with open(path, "wb") as f:
        f.write(layout.header)
        for a, b in ranges:
            for pos in range(a, b, CHUNK):
                data = memoryview(buf)[: min(CHUNK, b - pos)]
                lpar.expected_into(pos, data)
                for c in corrupt:
                    if pos <= c < pos + len(data):
                        data[c - pos] ^= 0xFF
                f.write(data)


def _write_vmcore(lpar: Lpar, path: Path, corrupt_offset: int | None = None) -> None:
    with open(path, "wb") as f:
        offset = 0
        while data := lpar.read_vmcore(offset, CHUNK):
            if corrupt_offset is not None and offset <= corrupt_offset < offset + len(data):
                buf = bytearray(data)
                buf[corrupt_offset - offset] ^= 0xFF
                data = bytes(buf)
            f.write(data)
            offset += len(data)


def test_sections_verify_in_place(tmp_path: Path) -> None:
    lpar = _capture(tmp_path)
    report = verify_sections(lpar)
    assert report.ok, report.text()
    assert "CPU state: 2 CPUs match" in report.text()
    assert "HPTEs:" in report.text() and "low memory copy: 0x10000000 bytes match" in report.text()


def test_sections_need_a_waiting_dump(tmp_path: Path) -> None:
    lpar = Lpar.create(tmp_path / "l", memory=MEM, boot=True)
    with pytest.raises(HvsimError, match="no dump was ever taken"):
        verify_sections(lpar)
    lpar.crash()
    lpar.invalidate()
    with pytest.raises(HvsimError, match="no longer waiting"):
        verify_sections(lpar)


def test_released_scratch_memory_is_reported_not_failed(tmp_path: Path) -> None:
    lpar = _capture(tmp_path)
    info = lpar.last_dump()
    assert info is not None
    dest = info.sections["rmo"][0]
    lpar.release(dest, 16 * M)
    report = verify_sections(lpar)
    assert report.ok, report.text()
    assert "partly released already" in report.text()


@pytest.mark.parametrize("endian", ["big", "little"])
def test_collected_dump_verifies_and_a_corrupt_page_is_found(tmp_path: Path, endian: str) -> None:
    lpar = _capture(tmp_path, endian=endian)
    good = tmp_path / "good.elf"
    _write_collected(lpar, good)
    report = verify_dump(lpar, good)
    assert report.ok, report.text()
    assert "collected dump" in report.text()
    assert report.counts["wrong"] == 0 and report.counts["missing"] == 0
    bad = tmp_path / "bad.elf"
    page = 300 * M + 5 * 65536
    _write_collected(lpar, bad, corrupt=[page + 123, 10 * M])
    report = verify_dump(lpar, bad)
    assert not report.ok
    assert report.counts["wrong"] == 2
    assert f"{10 * M:#x}, {page:#x}" in report.text()
    assert report.summary.startswith("FAILED")


def test_missing_pages_and_excluded_zero_pages(tmp_path: Path) -> None:
    lpar = _capture(tmp_path)
    # Find one zero and one non-zero page above low memory and leave both out.
    ps = 65536
    zero = nonzero = None
    addr = 400 * M
    while zero is None or nonzero is None:
        page = lpar.expected(addr, ps)
        if any(page):
            nonzero = nonzero if nonzero is not None else addr
        else:
            zero = zero if zero is not None else addr
        addr += ps
    dump = tmp_path / "holes.elf"
    _write_collected(lpar, dump, omit=[(zero, zero + ps), (nonzero, nonzero + ps)])
    report = verify_dump(lpar, dump)
    assert not report.ok
    assert report.counts["missing"] == 1 and report.counts["zero_excluded"] == 1
    assert f"missing pages: 1: {nonzero:#x}" in report.text()


def test_wrong_vmcoreinfo_fails(tmp_path: Path) -> None:
    lpar = _capture(tmp_path)
    dump = tmp_path / "d.elf"
    _write_collected(lpar, dump, vmcoreinfo=b"OSRELEASE=9.9\nPAGESIZE=65536\n")
    report = verify_dump(lpar, dump, kind="collected")
    assert not report.ok and "VMCOREINFO differs" in report.text()


def test_raw_vmcore_copy_is_recognised_and_checked(tmp_path: Path) -> None:
    lpar = _capture(tmp_path)
    raw = tmp_path / "vmcore"
    _write_vmcore(lpar, raw)
    report = verify_dump(lpar, raw)
    assert report.ok, report.text()
    assert "raw /proc/vmcore copy" in report.text()
    assert report.counts["scratch"] > 0
    # A flipped byte inside the low-memory copy is reported at its source address.
    info = lpar.last_dump()
    assert info is not None
    seg = lpar.vmcore_layout().segments[1]
    src = 100 * M + 7
    bad = tmp_path / "vmcore.bad"
    _write_vmcore(
        lpar, bad, corrupt_offset=seg.p_offset + info.sections["rmo"][0] + src - seg.p_paddr
    )
    report = verify_dump(lpar, bad)
    assert not report.ok and report.counts["wrong"] == 1
    assert f"{100 * M:#x}" in report.text()


def test_released_before_saved_shows_up_as_wrong(tmp_path: Path) -> None:
    lpar = _capture(tmp_path)
    lpar.release(300 * M, 16 * M)  # released before anyone copied it
    raw = tmp_path / "vmcore"
    _write_vmcore(lpar, raw)
    report = verify_dump(lpar, raw, kind="vmcore")
    assert not report.ok
    assert "released before they were saved" in report.text()


def test_lost_ranges_after_a_capture_crash(tmp_path: Path) -> None:
    lpar = _capture(tmp_path)
    lpar.release(300 * M, 16 * M)
    lpar.crash()  # the capture kernel crashed; the released range is lost for good
    lost = [(s, e) for s, e, _ in lpar.lost_ranges()]
    assert lost == [(300 * M, 316 * M + 65536)]
    # A collector that leaves the lost range out produces a good dump.
    good = tmp_path / "good.elf"
    _write_collected(lpar, good, omit=lost)
    report = verify_dump(lpar, good)
    assert report.ok, report.text()
    assert report.counts["lost_absent"] == (16 * M + 65536) // 65536
    # A raw vmcore copy holds reused data there: reported, not a failure.
    raw = tmp_path / "vmcore"
    _write_vmcore(lpar, raw)
    report = verify_dump(lpar, raw)
    assert report.ok, report.text()
    assert report.counts["lost_other"] > 0


def test_other_formats_get_a_clear_message(tmp_path: Path) -> None:
    lpar = _capture(tmp_path)
    kdump = tmp_path / "dump.kdump"
    kdump.write_bytes(b"KDUMP   " + bytes(4088))
    with pytest.raises(HvsimError, match=r"dump\.kdump: offset 0x[0-9a-f]+: .*header"):
        verify_dump(lpar, kdump)
    flat = tmp_path / "dump.flat"
    flat.write_bytes(b"makedumpfile\0\0\0\0" + bytes(100))
    with pytest.raises(HvsimError, match="flattened"):
        verify_dump(lpar, flat)
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello")
    with pytest.raises(HvsimError, match="not an ELF core"):
        verify_dump(lpar, junk)
    with pytest.raises(HvsimError, match="cannot read"):
        verify_dump(lpar, tmp_path / "absent")


def test_wrong_byte_order_is_refused(tmp_path: Path) -> None:
    lpar = _capture(tmp_path)
    other = Lpar.create(tmp_path / "le", memory=MEM, cpus=2, seed=33, endian="little", boot=True)
    other.crash()
    dump = tmp_path / "le.elf"
    _write_collected(other, dump)
    report = verify_dump(lpar, dump)
    assert not report.ok and "little-endian dump" in report.text()
    os.unlink(dump)
