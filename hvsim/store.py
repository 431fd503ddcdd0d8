"""The LPAR directory on disk: configuration, atomic state, lock, and data files.

Layout (directory mode 0700, files 0600)::

    LPAR/
      config.json     the LparConfig, written once at creation
      state.json      life-cycle state, dump header, memory layers, counters, events
      lock            flock(2) target: exclusive for changes, shared for reads
      data/           immutable data files named by the memory layer they belong to
        L5.ovl        an overlay: bytes at physical address (base + file offset); sparse
        L9.hpt        a sparse HPTE table: sorted (slot, v, r) records

Separate processes (a FUSE daemon, a collector, ``hvsim status``) share one
machine through this directory. A change takes the exclusive lock, writes any
new data file completely (fsync) under a name never used before, then
replaces ``state.json`` atomically (temporary file, fsync, rename, fsync of
the directory). Data files are never modified after they are published, so a
reader holding an older state still reads consistent bytes; files are only
deleted under the exclusive lock, and readers take the shared lock around
each operation.

Readers notice changes cheaply: :meth:`LparStore.state_changed` compares
``state.json``'s inode, size and modification time with what was loaded,
and distrusts the comparison while the file is younger than the file
system's timestamp granularity (an inode number can be reused within one
timer tick).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.fsutil import fsync_dir, write_atomic

__all__ = ["STATE_VERSION", "LparStore", "StoreError"]

STATE_VERSION = 1
_CONFIG = "config.json"
_STATE = "state.json"
_LOCK = "lock"
_DATA = "data"
# Coarse file-system timestamps tick every few milliseconds (a jiffy); a file
# younger than this could have been replaced within the same tick.
_TIMESTAMP_SLACK_NS = 50_000_000


class StoreError(HvdumpError):
    """The LPAR directory is missing, not an LPAR, or unreadable."""

    def __init__(self, message: str, err: int = errno.EIO) -> None:
        super().__init__(message)
        self.errno = err


class LparStore:
    """One LPAR directory: its files, its lock, and its JSON state."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._state_path = os.fspath(self.path / _STATE)  # stat()ed before every operation
        self._lock_fd: int | None = None
        self._lock_depth = 0
        self._lock_exclusive = False
        self._stamp: tuple[int, int, int] | None = None
        self._data_fds: dict[str, int] = {}

    # ------------------------------------------------------------ creation

    @classmethod
    def create(cls, path: str | os.PathLike[str], config: dict[str, Any]) -> LparStore:
        """Make a new LPAR directory (mode 0700) holding ``config``; refuse an existing path."""
        p = Path(path)
        try:
            p.mkdir(mode=0o700)
        except FileExistsError:
            raise StoreError(f"{p}: already exists; pick a new LPAR path", errno.EEXIST) from None
        except FileNotFoundError:
            raise StoreError(f"{p}: parent directory does not exist", errno.ENOENT) from None
        os.chmod(p, 0o700)  # mkdir's mode is filtered by the umask
        (p / _DATA).mkdir(mode=0o700)
        fd = os.open(p / _LOCK, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
        write_atomic(p / _CONFIG, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
        return cls(p)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> LparStore:
        """Open an existing LPAR directory."""
        p = Path(path)
        if not p.is_dir():
            raise StoreError(f"{p}: no such LPAR (create it with 'hvsim create')", errno.ENOENT)
        for name in (_CONFIG, _LOCK):
            if not (p / name).is_file():
                raise StoreError(f"{p}: not an hvsim LPAR directory (no {name})", errno.ENOENT)
        return cls(p)

    def read_config(self) -> dict[str, Any]:
        """The configuration written at creation."""
        try:
            data = json.loads((self.path / _CONFIG).read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.path / _CONFIG}: cannot read: {exc}") from None
        if not isinstance(data, dict):
            raise StoreError(f"{self.path / _CONFIG}: not a JSON object")
        return data

    # ------------------------------------------------------------- locking

    @contextlib.contextmanager
    def locked(self, exclusive: bool) -> Iterator[None]:
        """Hold the LPAR lock; nested use in one process keeps the outer lock.

        A nested exclusive request inside a shared hold is a bug (it could
        deadlock two processes upgrading at once) and raises RuntimeError.
        """
        if self._lock_depth:
            if exclusive and not self._lock_exclusive:
                raise RuntimeError("cannot upgrade a shared LPAR lock to exclusive")
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        if self._lock_fd is None:
            try:
                self._lock_fd = os.open(self.path / _LOCK, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                raise StoreError(f"{self.path}: LPAR directory vanished", errno.ENOENT) from None
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        self._lock_depth = 1
        self._lock_exclusive = exclusive
        try:
            yield
        finally:
            self._lock_depth = 0
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # --------------------------------------------------------------- state

    def _stat_state(self) -> os.stat_result | None:
        try:
            return os.stat(self._state_path)
        except FileNotFoundError:
            return None

    def state_changed(self) -> bool:
        """Whether ``state.json`` may differ from what :meth:`load_state` last returned."""
        st = self._stat_state()
        if st is None:
            return self._stamp is not None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            return True
        return time.time_ns() - st.st_mtime_ns < _TIMESTAMP_SLACK_NS

    def load_state(self) -> dict[str, Any] | None:
        """The current state, or None before the first save."""
        path = self.path / _STATE
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._stamp = None
            return None
        try:
            st = os.fstat(fd)
            with os.fdopen(os.dup(fd), "rb") as f:
                raw = f.read()
        finally:
            os.close(fd)
        try:
            state = json.loads(raw)
        except ValueError as exc:
            raise StoreError(f"{path}: corrupt state ({exc})") from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise StoreError(f"{path}: not a version {STATE_VERSION} hvsim state")
        self._stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        return state

    def save_state(self, state: dict[str, Any]) -> None:
        """Replace ``state.json`` atomically; call with the exclusive lock held."""
        if not (self._lock_depth and self._lock_exclusive):
            raise RuntimeError("save_state needs the exclusive LPAR lock")
        state["version"] = STATE_VERSION
        data = (json.dumps(state, separators=(",", ":"), sort_keys=True) + "\n").encode()
        write_atomic(self.path / _STATE, data)
        st = os.stat(self.path / _STATE)
        self._stamp = (st.st_ino, st.st_size, st.st_mtime_ns)

    # ---------------------------------------------------------- data files

    def data_path(self, name: str) -> Path:
        """Where data file ``name`` lives."""
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad data file name {name!r}")
        return self.path / _DATA / name

    def write_data(self, name: str, pieces: Iterable[tuple[int, bytes]]) -> None:
        """Publish a new, never-modified data file holding each piece's bytes at its offset.

        Holes between pieces stay sparse. The file is complete and fsynced
        before it appears under its name.
        """
        # A leftover of a change that failed before publishing its state may
        # hold this name; nothing refers to it, so replacing it is safe.
        final = self.data_path(name)
        tmp = final.with_name(f".{name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            for offset, data in pieces:
                view = memoryview(data)
                pos = offset
                while view:
                    n = os.pwrite(fd, view, pos)
                    view = view[n:]
                    pos += n
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        fsync_dir(final.parent)

    def data_fd(self, name: str) -> int:
        """A cached read-only descriptor of data file ``name``."""
        fd = self._data_fds.get(name)
        if fd is None:
            try:
                fd = os.open(self.data_path(name), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise StoreError(
                    f"{self.data_path(name)}: data file missing; the LPAR directory is damaged"
                ) from None
            self._data_fds[name] = fd
        return fd

    def read_data(self, name: str) -> bytes:
        """The whole of data file ``name``."""
        fd = self.data_fd(name)
        size = os.fstat(fd).st_size
        return os.pread(fd, size, 0)

    def remove_data(self, names: Iterable[str]) -> None:
        """Delete data files no state refers to any more (exclusive lock held)."""
        if not (self._lock_depth and self._lock_exclusive):
            raise RuntimeError("remove_data needs the exclusive LPAR lock")
        for name in names:
            fd = self._data_fds.pop(name, None)
            if fd is not None:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.data_path(name))

    def forget_data(self, keep: Iterable[str]) -> None:
        """Close cached descriptors of data files not in ``keep`` (another process removed them)."""
        keep_set = set(keep)
        for name in [n for n in self._data_fds if n not in keep_set]:
            os.close(self._data_fds.pop(name))

    def list_data(self) -> list[str]:
        """Names of the data files present."""
        return sorted(n for n in os.listdir(self.path / _DATA) if not n.startswith("."))

    def disk_usage(self) -> int:
        """Bytes of disk the LPAR directory occupies (allocated blocks, like ``du``)."""
        total = 0
        for root, _dirs, files in os.walk(self.path):
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512
        return total

    def close(self) -> None:
        """Close every cached descriptor."""
        for fd in self._data_fds.values():
            os.close(fd)
        self._data_fds.clear()
        if self._lock_fd is not None and not self._lock_depth:
            os.close(self._lock_fd)
            self._lock_fd = None
