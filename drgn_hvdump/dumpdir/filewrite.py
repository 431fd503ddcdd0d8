"""Writing dump files: through the page cache, or straight to the disk with O_DIRECT.

A dump is written once and read back once (after its fsync, with the page
cache dropped), so the page cache gains nothing from holding it, and the
kernel's copy into it is the dearest part of writing: on a 2-vCPU VM,
1.7 GB written with ``write()`` cost 0.9-4.7 s of system time (it varies
with how much of the guest's memory the page cache has touched before),
against 0.25 s with O_DIRECT, which hands the user pages to the disk. In a
capture kernel it also leaves the page cache to the memory being given back.

:class:`DataWriter` appends a kdump file's page data in whole aligned
blocks with O_DIRECT, and through the page cache where the file system
refuses O_DIRECT (tmpfs before Linux 6.6, many FUSE and network file
systems), with the same result on the disk. The header, bitmaps and page
descriptors go through the page cache; they keep to separate blocks, since
the kdump layout starts its page data on a page boundary. Sparse files (ELF
cores, the metadata files) are written through the page cache
(:func:`write_runs`).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from drgn_hvdump import native
from drgn_hvdump.formats.flattened import END, FLAT_RECORD, flat_header

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "DIRECT_ALIGN",
    "DataWriter",
    "DumpFile",
    "FlatFile",
    "LocalFile",
    "WriteGate",
    "nonzero_runs",
    "page_runs",
    "pwrite_all",
    "pwritev_all",
    "write_runs",
    "writev_all",
]

T = TypeVar("T")

# Offsets, lengths and buffer addresses of O_DIRECT writes are multiples of
# this: the logical block size of every disk in use (512 or 4096 bytes).
DIRECT_ALIGN = 4096
_STAGE = 4 << 20
_BOUNCE = 256 << 10
_bounce_local = threading.local()


def pwrite_all(fd: int, data: Buffer, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (``pwrite`` may write less)."""
    view = memoryview(data).cast("B")
    while view.nbytes:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _bounce_buffer() -> bytearray:
    buf: bytearray | None = getattr(_bounce_local, "buf", None)
    if buf is None:
        buf = _bounce_local.buf = bytearray(_BOUNCE)
    return buf


def _gather(
    buf: bytearray | mmap.mmap, fill: int, parts: Sequence[Buffer], flush: Callable[[], None]
) -> int:
    """Copy ``parts`` into ``buf`` from ``fill`` on, calling ``flush`` each time it is
    full; return how much of it the last bytes fill."""
    size = len(buf)
    for part in parts:
        view = memoryview(part).cast("B")
        while view.nbytes:
            n = min(view.nbytes, size - fill)
            buf[fill : fill + n] = view[:n]
            fill += n
            view = view[n:]
            if fill == size:
                flush()
                fill = 0
    return fill


def pwritev_all(fd: int, parts: Sequence[Buffer], offset: int) -> None:
    """Write ``parts`` one after another at ``offset`` through the page cache.

    They go through a small bounce buffer: the kernel's copy into the page
    cache cost 1.8-2.2 s of system time per 4.3 GB from a 256 KiB buffer that
    stays in the CPU's cache, and 2.7-3.9 s straight from the mapped or
    16 MiB source, in alternating runs; the extra copy cost 0.4-0.5 s.
    makedumpfile writes from a small buffer the same way.
    """
    bounce = _bounce_buffer()
    at = offset

    def flush() -> None:
        nonlocal at
        pwrite_all(fd, bounce, at)
        at += len(bounce)

    fill = _gather(bounce, 0, parts, flush)
    if fill:
        pwrite_all(fd, memoryview(bounce)[:fill], at)


def nonzero_runs(zero: bytes) -> Iterator[tuple[int, int]]:
    """(first, end) page index of each run of non-zero pages."""
    n = len(zero)
    i = 0
    while i < n:
        i = zero.find(0, i)
        if i < 0:
            return
        j = zero.find(1, i)
        j = n if j < 0 else j
        yield i, j
        i = j


def page_runs(view: memoryview, zero: bytes, page_size: int) -> Iterator[tuple[int, memoryview]]:
    """(first page index, its bytes) of each run of non-zero pages of ``view``."""
    for i, j in nonzero_runs(zero):
        yield i, view[i * page_size : j * page_size]


def write_runs(fd: int, view: memoryview, zero: bytes, page_size: int, offset: int) -> int:
    """Write the non-zero pages of ``view`` each at its place from ``offset``, through the
    page cache (zero pages stay holes); return the bytes written.

    Not O_DIRECT: a sparse file's runs are many small writes, and an O_DIRECT
    write waits for the disk. A 1 GiB ELF collection took 2.26 s that way
    against 1.72 s through the page cache (same run).
    """
    written = 0
    for i, run in page_runs(view, zero, page_size):
        pwritev_all(fd, [run], offset + i * page_size)
        written += run.nbytes
    return written


def _pwrite_direct(fd: int, view: memoryview, offset: int) -> None:
    """Write an aligned ``view`` at ``offset`` through an O_DIRECT descriptor."""
    done = 0
    while done < view.nbytes:
        # each rest released at once, even when the write fails: a view left
        # in a traceback would keep the stage from being closed
        with view[done:] as rest:
            n = os.pwritev(fd, [rest], offset + done)
        if n <= 0:
            raise OSError(errno.EIO, f"direct write at {offset + done:#x} wrote nothing")
        if n % DIRECT_ALIGN:
            # the rest is unaligned, which the caller handles by writing the
            # whole range through the page cache
            raise OSError(errno.EINVAL, "short direct write")
        done += n


class WriteGate:
    """Lets a file's writes, made in order on one thread, stop at the first failure.

    A write after a failed one would put its data where the failed one's
    should be; the failure reaches the caller from the failed write, which it
    waits for first.
    """

    def __init__(self) -> None:
        self.failed = False

    def run(self, skipped: T, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, or ``skipped`` once an earlier call has raised."""
        if self.failed:
            return skipped
        try:
            return fn(*args)
        except BaseException:
            self.failed = True
            raise


class DataWriter:
    """The page data of a kdump file, appended with O_DIRECT where the file system allows.

    :meth:`append` adds bytes of any length at :attr:`end`; :meth:`append_pages`
    the non-zero pages of a buffer. An append that does not end on a block boundary writes its
    last block padded with zeros and keeps that block's bytes, so the next
    append writes them again with what follows: the file can end past
    :attr:`end` by less than a block until :meth:`truncate`.
    """

    def __init__(self, file: DumpFile, *, direct: bool = True) -> None:
        self.file = file
        self.dfd: int | None = None
        if direct and isinstance(file, LocalFile):
            try:
                # Reopened through the descriptor, not the name: the same inode
                # even if the name was replaced meanwhile.
                self.dfd = os.open(
                    f"/proc/self/fd/{file.fd}", os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC
                )
            except OSError:
                self.dfd = None
        self._stage: mmap.mmap | None = None
        self.end = 0
        self._tail = b""

    @property
    def direct(self) -> bool:
        """Whether aligned writes still go straight to the disk."""
        return self.dfd is not None

    def _no_direct(self) -> None:
        # EINVAL: the file system takes O_DIRECT at open but not these writes
        # (alignment larger than DIRECT_ALIGN, or none at all).
        if self.dfd is not None:
            os.close(self.dfd)
            self.dfd = None

    def append_pages(self, view: memoryview, zero: bytes, page_size: int) -> int:
        """Append the non-zero pages of ``view`` one after another; return where they start."""
        start = self.end
        if (
            self.dfd is not None
            and start % DIRECT_ALIGN == 0  # so no tail is kept
            and page_size % DIRECT_ALIGN == 0
            and native.buffer_address(view) % DIRECT_ALIGN == 0
        ):
            try:
                self.end += native.write_pages(self.dfd, view, zero, page_size, start)
                return start
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._no_direct()
        return self.append([run for _, run in page_runs(view, zero, page_size)])

    def seek(self, end: int) -> None:
        """Make ``end`` (the end of what the file holds) where the next append goes."""
        self.end = end
        keep = end % DIRECT_ALIGN
        self._tail = b""
        if self.dfd is not None and keep:
            assert isinstance(self.file, LocalFile)
            data = os.pread(self.file.fd, keep, end - keep)
            self._tail = data + bytes(keep - len(data))

    def append(self, parts: Sequence[Buffer]) -> int:
        """Write ``parts`` at :attr:`end` and move it past them; return where they start."""
        start = self.end
        views = [memoryview(p).cast("B") for p in parts]
        length = sum(v.nbytes for v in views)
        if self.dfd is not None:
            try:
                self._append_direct(views)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._no_direct()
                self.file.pwritev([self._tail, *views], start - len(self._tail))
        else:
            self.file.pwritev(views, start)
        self.end = start + length
        return start

    def _append_direct(self, views: list[memoryview]) -> None:
        # Direct mode keeps len(self._tail) == self.end % DIRECT_ALIGN, so the
        # stage starts on a block boundary.
        if self._stage is None:
            self._stage = mmap.mmap(-1, _STAGE)
        stage = self._stage
        base = self.end - len(self._tail)
        stage[: len(self._tail)] = self._tail

        def flush() -> None:
            nonlocal base
            self._write_stage(_STAGE, base)
            base += _STAGE

        fill = _gather(stage, len(self._tail), views, flush)
        keep = fill % DIRECT_ALIGN
        if fill:
            padded = fill - keep + (DIRECT_ALIGN if keep else 0)
            stage[fill:padded] = bytes(padded - fill)
            self._write_stage(padded, base)
        self._tail = bytes(stage[fill - keep : fill])

    def _write_stage(self, size: int, offset: int) -> None:
        assert self.dfd is not None and self._stage is not None
        # released even when the write fails, so that the stage can be closed
        with memoryview(self._stage) as whole, whole[:size] as part:
            _pwrite_direct(self.dfd, part, offset)

    def truncate(self) -> None:
        """Cut the file at :attr:`end` (drops the padding of the last block)."""
        self.file.truncate(self.end)

    def close(self) -> None:
        self._no_direct()
        if self._stage is not None:
            self._stage.close()
            self._stage = None


def _drop_cache(fd: int, offset: int, size: int) -> None:
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, offset, size, os.POSIX_FADV_DONTNEED)


class DumpFile(Protocol):
    """A file of a dump directory, as the writers use it: on this machine
    (:class:`LocalFile`) or on an archive host (``remote.RemoteFile``).

    ``read``, ``hash`` and ``same`` read what the disk holds (page cache
    dropped first), so they prove what a sync made durable.
    """

    path: str

    def pwrite(self, data: Buffer, offset: int) -> None: ...
    def pwritev(self, parts: Sequence[Buffer], offset: int) -> None: ...
    def write_runs(self, view: memoryview, zero: bytes, page_size: int, offset: int) -> int: ...
    def write_zeros(self, offset: int, size: int) -> None: ...
    def read(self, size: int, offset: int) -> bytes: ...
    def hash(self, offset: int, size: int) -> int: ...
    def same(self, offset: int, parts: Sequence[Buffer]) -> bool: ...
    def sync(self, *, metadata: bool = False) -> None: ...
    def truncate(self, size: int) -> None: ...
    def size(self) -> int: ...
    def allocated(self) -> int: ...
    def file_id(self) -> tuple[int, int]: ...
    def close(self) -> None: ...


def _zero_pieces(offset: int, size: int) -> Iterator[tuple[int, memoryview]]:
    """``[offset, offset + size)`` as (offset, zeros) pieces of at most 1 MiB."""
    zero = memoryview(bytes(min(size, 1 << 20)))
    for off in range(0, size, len(zero) or 1):
        yield offset + off, zero[: min(len(zero), size - off)]


class LocalFile:
    """A :class:`DumpFile` on this machine: an open descriptor."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path

    def pwrite(self, data: Buffer, offset: int) -> None:
        pwrite_all(self.fd, data, offset)

    def pwritev(self, parts: Sequence[Buffer], offset: int) -> None:
        pwritev_all(self.fd, parts, offset)

    def write_runs(self, view: memoryview, zero: bytes, page_size: int, offset: int) -> int:
        return write_runs(self.fd, view, zero, page_size, offset)

    def write_zeros(self, offset: int, size: int) -> None:
        """Zeros over ``[offset, offset + size)`` (written, not a hole: old bytes go)."""
        for at, zero in _zero_pieces(offset, size):
            pwrite_all(self.fd, zero, at)

    def read(self, size: int, offset: int) -> bytes:
        """``size`` bytes at ``offset`` as the disk holds them; ``OSError`` if fewer."""
        _drop_cache(self.fd, offset, size)
        data = os.pread(self.fd, size, offset)
        if len(data) != size:
            raise OSError(errno.EIO, f"short read at {offset:#x}", self.path)
        return data

    def hash(self, offset: int, size: int) -> int:
        return native.hash64(self.read(size, offset))

    def same(self, offset: int, parts: Sequence[Buffer]) -> bool:
        """Whether the disk holds ``parts``, one after another, at ``offset``: byte for byte."""
        size = sum(memoryview(p).nbytes for p in parts)
        return self.read(size, offset) == b"".join(parts)

    def sync(self, *, metadata: bool = False) -> None:
        (os.fsync if metadata else os.fdatasync)(self.fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def allocated(self) -> int:
        """The bytes of disk the file takes (less than its size where it has holes)."""
        return os.fstat(self.fd).st_blocks * 512

    def file_id(self) -> tuple[int, int]:
        st = os.fstat(self.fd)
        return st.st_dev, st.st_ino

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class FlatFile:
    """A :class:`DumpFile` written as makedumpfile's flattened stream (``-F``) to a pipe.

    Every write becomes a record (:mod:`drgn_hvdump.formats.flattened`) in the
    order made; :meth:`end` writes the end record once the dump is complete, so a
    stream cut short (an error, a kill) is never taken for a whole dump. Nothing
    can be read back, synced or cut: the reader rebuilds the file.
    """

    def __init__(self, fd: int, path: str = "<stdout>") -> None:
        self.fd = fd
        self.path = path
        self._size = 0
        self._started = False

    def _record(self, parts: Sequence[Buffer], offset: int) -> None:
        views = [v for v in (memoryview(p).cast("B") for p in parts) if v.nbytes]
        size = sum(v.nbytes for v in views)
        if not size:
            return  # makedumpfile -R stops at an empty record
        head = FLAT_RECORD.pack(offset, size)
        if not self._started:
            head = flat_header() + head
            self._started = True
        writev_all(self.fd, [memoryview(head), *views])
        self._size = max(self._size, offset + size)

    def pwrite(self, data: Buffer, offset: int) -> None:
        self._record([data], offset)

    def pwritev(self, parts: Sequence[Buffer], offset: int) -> None:
        self._record(parts, offset)

    def write_runs(self, view: memoryview, zero: bytes, page_size: int, offset: int) -> int:
        written = 0
        for i, run in page_runs(view, zero, page_size):
            self._record([run], offset + i * page_size)
            written += run.nbytes
        return written

    def write_zeros(self, offset: int, size: int) -> None:
        for at, zero in _zero_pieces(offset, size):
            self._record([zero], at)

    def _unreadable(self) -> OSError:
        return OSError(errno.ESPIPE, "a flattened stream cannot be read back", self.path)

    def read(self, size: int, offset: int) -> bytes:
        raise self._unreadable()

    def hash(self, offset: int, size: int) -> int:
        raise self._unreadable()

    def same(self, offset: int, parts: Sequence[Buffer]) -> bool:
        raise self._unreadable()

    def sync(self, *, metadata: bool = False) -> None:
        pass  # the reader makes the file durable

    def truncate(self, size: int) -> None:
        # Only ever to extend (a sparse ELF core's size is set first; nothing is
        # written past a kdump file's end on a stream): its last byte, the rest a hole.
        if size > self._size:
            self._record([b"\0"], size - 1)

    def size(self) -> int:
        return self._size

    def allocated(self) -> int:
        return self._size

    def file_id(self) -> tuple[int, int]:
        return (0, 0)

    def end(self) -> None:
        """The dump is complete: the end record."""
        if not self._started:
            writev_all(self.fd, [memoryview(flat_header())])
            self._started = True
        writev_all(self.fd, [memoryview(END)])

    def close(self) -> None:
        pass  # the pipe is the caller's


def writev_all(fd: int, views: list[memoryview]) -> None:
    """Write ``views`` one after another to a pipe or socket (``writev`` may write less)."""
    views = [v for v in views if v.nbytes]
    while views:
        n = os.writev(fd, views[:512])
        while n and views:
            if n >= views[0].nbytes:
                n -= views[0].nbytes
                views.pop(0)
            else:
                views[0] = views[0][n:]
                n = 0
