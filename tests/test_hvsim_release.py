"""Release semantics of /sys/kernel/release_region: the faithful quirks and the corrected model."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from drgn_hvdump.formats.release_region import ReleaseMap, format_release_map
from hvsim import Lpar, ReleaseError

G = 1 << 30
M = 1 << 20
RES = 256 * M  # start of the reserved area


def _capture(tmp_path: Path, **kw: object) -> Lpar:
    opts: dict[str, object] = {"memory": G, "cpus": 2, "seed": 9, "boot": True}
    opts.update(kw)
    lpar = Lpar.create(tmp_path / "lpar", **opts)  # type: ignore[arg-type]
    lpar.crash()
    assert lpar.state == "capture"
    return lpar


def _chunks(m: ReleaseMap, chunk: int = 128 * M) -> list[tuple[int, int]]:
    out = []
    start, end = m.reserved.addr, m.reserved.end
    while start < end:
        out.append((start, min(chunk, end - start)))
        start += chunk
    out += [(e.addr, e.size) for e in (m.cpu, m.hpte, m.dump)]
    return out


def _reused(lpar: Lpar, addr: int, size: int = 4096) -> bool:
    return lpar.read_phys(addr, size) != lpar.expected(addr, size)


# ------------------------------------------------------------------ the map


def test_release_region_text_is_the_kernels_line(tmp_path: Path) -> None:
    lpar = _capture(tmp_path)
    h = lpar.dump_header()
    assert h is not None
    text = lpar.release_region_text()
    scratch = h.cpu.source_length + h.hpte.source_length + h.rmo.source_length
    assert text == (
        f"CPU:{h.cpu.destination_address:#x}-{h.cpu.length_copied:#x}: "
        f"HPTE:{h.hpte.destination_address:#x}-{h.hpte.length_copied:#x}: "
        f"DUMP:{h.rmo.destination_address:#x}-{h.rmo.length_copied:#x}, "
        f"{RES:#x}-{G - RES - scratch:#x}:\n"
    )
    assert text == format_release_map(lpar.release_map())


def test_literal_release_map_quirk(tmp_path: Path) -> None:
    lpar = _capture(tmp_path, literal_release_map=True)
    h = lpar.dump_header()
    assert h is not None
    cpu, hpte = h.cpu.source_length, h.hpte.source_length
    assert lpar.release_region_text().startswith(
        f"CPU:0x0-0x0: HPTE:{cpu:#x}-0x0: DUMP:{cpu + hpte:#x}-0x0, {RES:#x}-"
    )


# ------------------------------------------------------------------ faithful


def test_release_frees_one_page_past_the_end(tmp_path: Path) -> None:
    lpar = _capture(tmp_path)
    ps = 65536
    result = lpar.release(RES + 4 * ps, 2 * ps)
    assert result.freed == ((RES + 4 * ps, RES + 7 * ps),)
    assert _reused(lpar, RES + 6 * ps)  # the page after the range is gone
    assert not _reused(lpar, RES + 7 * ps)
    assert not _reused(lpar, RES + 3 * ps)
    # Already-released pages are skipped silently.
    assert lpar.release(RES + 4 * ps, ps).freed == ()


def test_unaligned_release_rounds_the_start_down(tmp_path: Path) -> None:
    lpar = _capture(tmp_path, page_size=4096)
    result = lpar.release(RES + 0x1800, 0x1000)
    assert result.freed == ((RES + 0x1000, RES + 0x3000),)


def test_zero_length_release_still_frees_a_page(tmp_path: Path) -> None:
    lpar = _capture(tmp_path)
    assert lpar.release(RES, 0).freed == ((RES, RES + 65536),)


def test_start_below_the_area_is_clamped_without_shortening(tmp_path: Path) -> None:
    lpar = _capture(tmp_path)
    result = lpar.release(0, 16 * M)
    assert result.clamped
    # The kernel moves the start up and keeps the length: [RES, RES + 16M] inclusive.
    assert result.freed == ((RES, RES + 16 * M + 65536),)
    status = lpar.status()["kernel"]["release"]
    assert status["reserved_counter"] == 0  # below the area: not counted


def test_size_is_clamped_to_the_end_and_start_past_end_frees_nothing(tmp_path: Path) -> None:
    lpar = _capture(tmp_path)
    result = lpar.release(G - 65536, 16 * M)
    assert result.clamped and result.freed == ((G - 65536, G),)
    result = lpar.release(G + 65536, 4096)
    assert result.freed == () and "underflow" in result.note
    status = lpar.status()["kernel"]["release"]
    # Both writes started inside [start, start + size] or past it: the first counted.
    assert status["reserved_counter"] == 16 * M


def test_releasing_everything_in_order_reregisters(tmp_path: Path) -> None:
    lpar = _capture(tmp_path)
    chunks = _chunks(lpar.release_map())
    for addr, size in chunks[:-1]:
        assert not lpar.release(addr, size).reregistered
    assert lpar.release(*chunks[-1]).reregistered
    assert lpar.state == "running" and lpar.protected
    assert lpar.reserved_ranges() == []  # faithful: the scratch area itself was freed too
    assert any("partly in use" in t for _, t in lpar.status()["events"])


def test_double_release_leaves_the_lpar_never_reregistered(tmp_path: Path) -> None:
    lpar = _capture(tmp_path)
    chunks = _chunks(lpar.release_map())
    lpar.release(*chunks[0])
    for addr, size in chunks:
        assert not lpar.release(addr, size).reregistered
    assert lpar.state == "capture"
    assert lpar.reserved_ranges() == []  # every page is free...
    assert not lpar.protected  # ...but the counters overshot: never protected again
    rel = lpar.status()["kernel"]["release"]
    assert rel["reserved_counter"] > rel["reserved_target"]


def test_overlapping_release_reregisters_early(tmp_path: Path) -> None:
    lpar = _capture(tmp_path)
    chunks = _chunks(lpar.release_map())
    # Release the first chunk twice and skip the second (same size): the
    # counters reach their targets with a chunk still unreleased.
    first, second = chunks[0], chunks[1]
    assert first[1] == second[1]
    plan = [first, first, *chunks[2:]]
    results = [lpar.release(a, s) for a, s in plan]
    assert results[-1].reregistered
    assert lpar.state == "running" and lpar.protected
    left = lpar.reserved_ranges()
    assert left and left[0][0] == second[0] + 65536  # the inclusive page of chunk 0 took one
    assert any("re-registered early" in t for _, t in lpar.status()["events"])


@pytest.mark.parametrize("data", [b"", b"junk", b"10000000", b"  \n", b"x10 20", b"-1 2"])
def test_junk_is_einval(tmp_path: Path, data: bytes) -> None:
    lpar = _capture(tmp_path)
    with pytest.raises(ReleaseError) as exc:
        lpar.release_text(data)
    assert exc.value.errno == errno.EINVAL
    assert lpar.status()["kernel"]["release"]["writes"] == 0


def test_release_text_accepts_the_kernels_sscanf_forms(tmp_path: Path) -> None:
    lpar = _capture(tmp_path)
    assert lpar.release_text(b"0x10000000 0x10000\n").freed == ((RES, RES + 0x20000),)
    assert lpar.release_text(b"10100000\t10000 trailing").freed == (
        (RES + 0x100000, RES + 0x120000),
    )


def test_release_without_a_dump_is_enoent(tmp_path: Path) -> None:
    lpar = Lpar.create(tmp_path / "l", memory=G, boot=True)
    with pytest.raises(ReleaseError) as exc:
        lpar.release(RES, 4096)
    assert exc.value.errno == errno.ENOENT
    with pytest.raises(ReleaseError) as exc:
        lpar.release_text(b"10000000 1000")
    assert exc.value.errno == errno.ENOENT


# ------------------------------------------------------------------ corrected


def test_corrected_end_is_exclusive_and_out_of_range_is_einval(tmp_path: Path) -> None:
    lpar = _capture(tmp_path, quirks="corrected")
    ps = 65536
    assert lpar.release(RES + 4 * ps, 2 * ps).freed == ((RES + 4 * ps, RES + 6 * ps),)
    assert not _reused(lpar, RES + 6 * ps)
    for addr, size in ((0, 16 * M), (G - ps, 2 * ps), (G + ps, 1)):
        with pytest.raises(ReleaseError) as exc:
            lpar.release(addr, size)
        assert exc.value.errno == errno.EINVAL


def test_corrected_partial_pages_wait_for_all_their_bytes(tmp_path: Path) -> None:
    lpar = _capture(tmp_path, quirks="corrected")
    ps = 65536
    assert lpar.release(RES + 100, ps).freed == ()
    assert lpar.release(RES, 100).freed == ((RES, RES + ps),)
    assert lpar.release(RES + ps + 100, ps - 100).freed == ((RES + ps, RES + 2 * ps),)


def test_corrected_double_release_still_reregisters_once_all_is_released(tmp_path: Path) -> None:
    lpar = _capture(tmp_path, quirks="corrected")
    chunks = _chunks(lpar.release_map())
    lpar.release(*chunks[0])
    lpar.release(*chunks[0])
    for addr, size in chunks[1:-1]:
        assert not lpar.release(addr, size).reregistered
    assert lpar.release(*chunks[-1]).reregistered
    assert lpar.state == "running" and lpar.protected
    h = lpar.registered_header()
    assert h is not None
    # The corrected kernel keeps its scratch area reserved for the next dump.
    ((start, end),) = lpar.reserved_ranges()
    assert (
        start == h.cpu.destination_address
        and end >= h.rmo.destination_address + h.rmo.source_length
    )


def test_corrected_release_with_a_partial_copy(tmp_path: Path) -> None:
    lpar = _capture(tmp_path, quirks="corrected", boot=True)
    lpar.reboot()  # capture reboot: the dump stays
    # Releasing what the map lists is enough even when parts of the scratch
    # area hold nothing (here: none), and order does not matter.
    chunks = _chunks(lpar.release_map())
    for addr, size in reversed(chunks):
        lpar.release(addr, size)
    assert lpar.state == "running"


@pytest.mark.parametrize("quirks", ["faithful", "corrected"])
def test_released_memory_reads_as_reused_in_the_vmcore(tmp_path: Path, quirks: str) -> None:
    lpar = _capture(tmp_path, quirks=quirks)
    layout = lpar.vmcore_layout()
    seg = layout.segments[1]
    assert seg.p_paddr == RES
    addr = RES + 64 * M
    off = seg.p_offset + (addr - RES)
    before = lpar.read_vmcore(off, 65536)
    assert before == lpar.expected(addr, 65536)
    lpar.release(addr, 65536)
    after = lpar.read_vmcore(off, 65536)
    assert after != before and after == lpar.read_phys(addr, 65536)
    meminfo_total = int(lpar.meminfo_text().split()[1])
    assert meminfo_total > 0
