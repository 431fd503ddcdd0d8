"""DataWriter: O_DIRECT where the file system allows, the page cache elsewhere, same bytes."""

from __future__ import annotations

import errno
import mmap
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from drgn_hvdump.dumpdir import filewrite
from drgn_hvdump.dumpdir.filewrite import DIRECT_ALIGN, DataWriter, LocalFile, write_runs


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


def _aligned_block(rng: random.Random, pages: int) -> mmap.mmap:
    m = mmap.mmap(-1, pages * DIRECT_ALIGN)
    m[:] = rng.randbytes(len(m))
    return m


def _pieces(rng: random.Random, n: int) -> list[Any]:
    """Parts of appends: unaligned bytes of any length, whole aligned mapped blocks."""
    out: list[Any] = []
    for _ in range(n):
        if rng.random() < 0.4:
            out.append(_aligned_block(rng, rng.randint(1, 3)))
        else:
            out.append(rng.randbytes(rng.choice([1, 7, 511, 4095, 4096, 4097, 10000])))
    return out


def _direct_supported(tmp_path: Path) -> bool:
    fd = _open(tmp_path / "probe")
    try:
        w = DataWriter(LocalFile(fd, str(tmp_path / "probe")))
        ok = w.direct
        w.close()
        return ok
    finally:
        os.close(fd)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("direct", [True, False])
def test_appends_of_any_length_read_back(tmp_path: Path, seed: int, direct: bool) -> None:
    rng = random.Random(seed)
    path = tmp_path / "out"
    fd = _open(path)
    head = rng.choice([0, DIRECT_ALIGN, 3 * DIRECT_ALIGN])
    os.pwrite(fd, b"H" * head, 0)
    w = DataWriter(LocalFile(fd, str(path)), direct=direct)
    w.seek(head)
    want = bytearray(b"H" * head)
    for _ in range(rng.randint(1, 12)):
        parts = _pieces(rng, rng.randint(0, 4))
        start = w.append(parts)
        assert start == len(want)
        for p in parts:
            want += bytes(p)
        assert w.end == len(want)
        # what is on the disk so far is right, padding of the last block aside
        assert os.pread(fd, len(want), 0) == bytes(want)
    if direct and _direct_supported(tmp_path):
        assert w.direct, "aligned writes on this file system should stay direct"
    w.truncate()
    w.close()
    os.close(fd)
    assert path.read_bytes() == bytes(want)


def test_resume_at_an_unaligned_end(tmp_path: Path) -> None:
    rng = random.Random(7)
    path = tmp_path / "out"
    fd = _open(path)
    w = DataWriter(LocalFile(fd, str(path)))
    first = rng.randbytes(3 * DIRECT_ALIGN + 100)
    w.append([first])
    w.close()
    # a crash: the file holds a padded last block; the journal says where data ends
    end = 2 * DIRECT_ALIGN + 50
    os.ftruncate(fd, end)
    w = DataWriter(LocalFile(fd, str(path)))
    w.seek(end)
    more = rng.randbytes(5000)
    assert w.append([more]) == end
    w.truncate()
    w.close()
    os.close(fd)
    assert path.read_bytes() == first[:end] + more


def test_pages_go_out_without_a_copy_when_aligned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not _direct_supported(tmp_path):
        pytest.skip("no O_DIRECT on this file system")
    rng = random.Random(3)
    src = _aligned_block(rng, 8)
    zero = bytes([0, 1, 1, 0, 0, 0, 1, 0])
    for i, z in enumerate(zero):
        if z:
            src[i * DIRECT_ALIGN : (i + 1) * DIRECT_ALIGN] = bytes(DIRECT_ALIGN)
    calls: list[int] = []
    real = filewrite.native.write_pages

    def spy(fd: int, *args: Any, **kw: Any) -> int:
        calls.append(fd)
        return real(fd, *args, **kw)

    monkeypatch.setattr(filewrite.native, "write_pages", spy)
    path = tmp_path / "out"
    fd = _open(path)
    w = DataWriter(LocalFile(fd, str(path)))
    w.seek(0)
    view = memoryview(src)
    assert w.append_pages(view, zero, DIRECT_ALIGN) == 0
    assert calls == [w.dfd] and w.end == 5 * DIRECT_ALIGN
    # now unaligned: a short append, then pages again (staged, same bytes)
    w.append([b"xyz"])
    w.append_pages(view, zero, DIRECT_ALIGN)
    kept = b"".join(
        bytes(view[i * DIRECT_ALIGN : (i + 1) * DIRECT_ALIGN]) for i in range(8) if not zero[i]
    )
    w.truncate()
    w.close()
    view.release()
    src.close()
    os.close(fd)
    assert path.read_bytes() == kept + b"xyz" + kept


def test_pages_at_their_places_leave_holes(tmp_path: Path) -> None:
    rng = random.Random(5)
    src = _aligned_block(rng, 6)
    zero = bytes([1, 0, 0, 1, 0, 1])
    path = tmp_path / "out"
    fd = _open(path)
    os.ftruncate(fd, 16 * DIRECT_ALIGN)
    view = memoryview(src)
    assert write_runs(fd, view, zero, DIRECT_ALIGN, 4 * DIRECT_ALIGN) == 3 * DIRECT_ALIGN
    got = path.read_bytes()
    for i in range(6):
        page = got[(4 + i) * DIRECT_ALIGN : (5 + i) * DIRECT_ALIGN]
        want = (
            bytes(DIRECT_ALIGN)
            if zero[i]
            else bytes(view[i * DIRECT_ALIGN : (i + 1) * DIRECT_ALIGN])
        )
        assert page == want
    view.release()
    src.close()
    os.close(fd)
    assert os.stat(path).st_blocks * 512 < 16 * DIRECT_ALIGN  # holes stay holes


def _refuse(direct_fd: Callable[[], int | None], err: int) -> Callable[..., int]:
    real = os.pwritev

    def pwritev(fd: int, buffers: Any, offset: int, *args: Any) -> int:
        if fd == direct_fd():
            raise OSError(err, os.strerror(err))
        return real(fd, buffers, offset, *args)

    return pwritev


def test_einval_falls_back_to_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system that opens with O_DIRECT but refuses the writes: same bytes, buffered."""
    rng = random.Random(11)
    path = tmp_path / "out"
    fd = _open(path)
    w = DataWriter(LocalFile(fd, str(path)))
    w.seek(0)
    before = rng.randbytes(DIRECT_ALIGN + 10)
    w.append([before])
    dfd = w.dfd
    monkeypatch.setattr(os, "pwritev", _refuse(lambda: dfd, errno.EINVAL))
    after = [_aligned_block(rng, 2), rng.randbytes(333)]
    w.append(after)
    assert not w.direct
    w.truncate()
    w.close()
    os.close(fd)
    assert path.read_bytes() == before + b"".join(bytes(p) for p in after)


def test_no_o_direct_at_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.open

    def no_direct(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    path = tmp_path / "out"
    fd = _open(path)
    w = DataWriter(LocalFile(fd, str(path)))
    assert not w.direct
    w.seek(0)
    w.append([b"a" * 5000, b"b" * 3])
    w.truncate()
    w.close()
    os.close(fd)
    assert path.read_bytes() == b"a" * 5000 + b"b" * 3


def test_other_errors_are_not_swallowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not _direct_supported(tmp_path):
        pytest.skip("no O_DIRECT on this file system")
    path = tmp_path / "out"
    fd = _open(path)
    w = DataWriter(LocalFile(fd, str(path)))
    w.seek(0)
    monkeypatch.setattr(os, "pwritev", _refuse(lambda: w.dfd, errno.ENOSPC))
    with pytest.raises(OSError) as info:
        w.append([b"x" * 100])
    assert info.value.errno == errno.ENOSPC and w.direct and w.end == 0
    w.close()
    os.close(fd)
