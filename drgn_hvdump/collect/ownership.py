"""One collector per dump: its lock, and who holds it.

A dump is known by its identity (:mod:`drgn_hvdump.dumpdir.identity`),
which the journal, the plan, the manifest and the runtime registry entry all
carry, so state left by another dump is recognised as such.

The lock is an exclusive ``flock`` on the capture interface's release file
(``/sys/kernel/release_region``): every collector of the machine, whatever
its output directory or user, opens that one inode, the kernel drops the lock
when its holder dies (``kill -9`` included), and ``/proc/locks`` names the
holder's pid. The holder's output directory and start time come from its
runtime registry entry when the caller may read it.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.fsutil import flock_holders, take_flock

__all__ = [
    "EXIT_BUSY",
    "DumpBusyError",
    "DumpLock",
    "Owner",
    "dump_owner",
]


@dataclass(frozen=True)
class Owner:
    """The process that holds a dump, with what can be learnt of it."""

    pid: int | None
    output: str | None = None
    since: float | None = None

    def describe(self) -> str:
        parts = [f"pid {self.pid}" if self.pid is not None else "another process"]
        if self.output:
            parts.append(f"into {self.output}")
        if self.since is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
            parts.append(f"since {stamp}")
        return " ".join(parts)

    def to_json(self) -> dict[str, object]:
        return {"pid": self.pid, "output": self.output, "since": self.since}


EXIT_BUSY = 75
"""Exit status when another collector holds the dump (``EX_TEMPFAIL``: try again later)."""


class DumpBusyError(HvdumpError):
    """Another collector holds the dump."""

    exit_code = EXIT_BUSY

    def __init__(self, root: Path, owner: Owner, what: str = "") -> None:
        what = what or f"{root}: the dump is being collected by"
        super().__init__(
            f"{what} {owner.describe()}; wait for it with --wait, or follow it with hvdump status"
        )
        self.owner = owner


def dump_owner(root: Path, lock_path: Path | None = None) -> Owner | None:
    """Who collects the dump under ``root`` now (None when nobody does)."""
    if lock_path is None:
        from drgn_hvdump.capture import open_capture

        lock_path = open_capture(root).lock_path
    pids = flock_holders(lock_path)
    if not pids:
        return None
    return _describe_holder(root, pids[0])


def _describe_holder(root: Path, pid: int | None) -> Owner:
    from drgn_hvdump.dumpdir.registry import read_registration

    entry, _ = read_registration(root)
    if entry is not None and (pid is None or entry.get("pid") == pid):
        since = entry.get("since")
        return Owner(
            pid=int(entry["pid"]) if isinstance(entry.get("pid"), int) else pid,
            output=str(entry.get("output") or "") or None,
            since=float(since) if isinstance(since, (int, float)) else None,
        )
    return Owner(pid)


def _lock_access(path: Path) -> int:
    """How to open the lock file: sysfs refuses to open a write-only file (fadump's
    ``release_mem``, mode 0200) for reading, even to root; opening one for writing
    writes nothing."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return os.O_RDONLY
    return os.O_RDONLY if mode & 0o444 else os.O_WRONLY


class DumpLock:
    """The exclusive lock of one capture root's dump, held until :meth:`release`."""

    def __init__(self, root: Path, lock_path: Path) -> None:
        self.root = root
        self.path = lock_path
        self._fd = -1

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def acquire(
        self,
        *,
        wait: bool = False,
        timeout: float | None = None,
        on_wait: Callable[[Owner], None] | None = None,
    ) -> None:
        """Take the lock, or raise :class:`DumpBusyError` naming the holder.

        With ``wait`` it polls until the holder is gone (``timeout`` seconds at
        most, None for no limit), calling ``on_wait`` once with the holder.
        """
        try:
            fd = os.open(self.path, _lock_access(self.path) | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise HvdumpError(f"{self.path}: not present; no dump is waiting") from None
        except OSError as exc:
            raise HvdumpError(
                f"{self.path}: cannot open to lock the dump: {exc.strerror}"
                + ("; run as root" if exc.errno == errno.EACCES else "")
            ) from None
        try:
            owner = take_flock(
                fd,
                wait=wait,
                timeout=timeout,
                holder=self._holder,
                unknown=Owner(None),
                on_wait=on_wait,
            )
        except OSError as exc:
            os.close(fd)
            raise HvdumpError(f"{self.path}: cannot lock the dump: {exc.strerror}") from None
        if owner is not None:
            os.close(fd)
            raise DumpBusyError(self.root, owner)
        self._fd = fd

    def _holder(self) -> Owner | None:
        pids = flock_holders(self.path)
        if not pids:
            return None  # let go meanwhile (or /proc/locks cannot tell)
        owner = _describe_holder(self.root, pids[0])
        for _ in range(10):
            # the holder registers moments after it takes the lock
            if owner.output is not None:
                break
            time.sleep(0.1)
            owner = _describe_holder(self.root, pids[0])
        return owner

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = -1
