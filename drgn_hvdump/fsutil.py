"""Durable file updates shared by the collector and the simulator's LPAR directories,
and the one line a failed write of an output file becomes."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from drgn_hvdump.errors import HvdumpError

__all__ = [
    "disk_error",
    "flock_holders",
    "fsync_dir",
    "parse_proc_locks",
    "take_flock",
    "write_atomic",
]

T = TypeVar("T")


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or a new file in ``path`` durable (the directory entry itself)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_error(path: str, exc: OSError, what: str, need: int | None = None) -> HvdumpError:
    """One clear line for an output error; nothing not yet saved has been released."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        more = f"; about {need / (1 << 20):.0f} MiB more is needed" if need else ""
        return HvdumpError(
            f"{path}: {what}: no space left on the output device{more}; nothing that is not "
            "saved was released: free space and run the same command again to resume"
        )
    if exc.errno == errno.EROFS:
        return HvdumpError(f"{path}: {what}: the output file system is read-only")
    if exc.errno == errno.ENOENT:
        return HvdumpError(f"{path}: {what}: the output directory vanished")
    return HvdumpError(f"{path}: {what}: {exc.strerror or exc}")


def write_atomic(path: str | os.PathLike[str], data: bytes, *, dir_fd: int | None = None) -> None:
    """Replace ``path`` with ``data`` (mode 0600): readers see the old or the new file whole.

    The temporary file is named for this process and created exclusively
    without following links (a planted file or link of that name is removed,
    never written through), written completely (short writes are continued),
    fsynced, renamed over ``path``, and the rename is fsynced. With ``dir_fd``,
    ``path`` is a name in that directory.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        os.unlink(tmp, dir_fd=dir_fd)
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    if dir_fd is not None:
        os.fsync(dir_fd)
    else:
        fsync_dir(target.parent)


def parse_proc_locks(text: str, dev: int, ino: int) -> list[int]:
    """Pids holding a ``FLOCK`` on the inode ``(dev, ino)``, from ``/proc/locks`` text.

    Lines look like ``1: FLOCK  ADVISORY  WRITE 3555 00:28:4 0 EOF``; blocked
    waiters (``->``) are not holders.
    """
    want = f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino}"
    pids = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->" or fields[1] != "FLOCK":
            continue
        if fields[5].lower() == want and fields[4].isdigit():
            pids.append(int(fields[4]))
    return pids


def flock_holders(path: Path) -> list[int]:
    """Pids that hold a ``flock`` on ``path`` (empty when none or unknowable)."""
    try:
        st = os.stat(path)
        text = Path("/proc/locks").read_text()
    except OSError:
        return []
    return parse_proc_locks(text, st.st_dev, st.st_ino)


def take_flock(
    fd: int,
    *,
    wait: bool,
    timeout: float | None,
    holder: Callable[[], T | None],
    unknown: T,
    on_wait: Callable[[T], None] | None = None,
) -> T | None:
    """Take an exclusive ``flock`` on ``fd``: None once taken, else the holder when
    it is busy and ``wait`` is false or ``timeout`` seconds (None: no limit) passed.

    ``holder()`` describes the holder, or gives None when it finds none: the
    holder may have just let go, so the lock is tried again (ten times, 50 ms
    apart, before the holder is reported as ``unknown``). Waiting polls every
    0.2 s and calls ``on_wait`` once with the holder. Errors other than "busy"
    propagate.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    told = False
    gone = 0
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            pass
        found = holder()
        if found is None and gone < 10:
            gone += 1
            time.sleep(0.05)
            continue
        who = unknown if found is None else found
        if not wait or (deadline is not None and time.monotonic() >= deadline):
            return who
        if not told and on_wait is not None:
            on_wait(who)
            told = True
        time.sleep(0.2)
