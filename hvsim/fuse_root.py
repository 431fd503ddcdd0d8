"""A simulated LPAR's capture-kernel root, served with FUSE.

``hvsim mount LPAR ROOT`` makes ``ROOT`` look like ``/`` on the LPAR's
running kernel, so every hvdump tool runs against it with ``--root ROOT``
exactly as it runs on a real POWER LPAR with ``--root /``::

    ROOT/proc/version                     the kernel banner
    ROOT/proc/meminfo                     memory the kernel has (capture: low 256 MiB)
    ROOT/proc/sys/kernel/random/boot_id   changes with every boot of the LPAR
    ROOT/proc/vmcore                      0400, the ELF core (only while a dump waits)
    ROOT/proc/device-tree                 -> ../sys/firmware/devicetree/base
    ROOT/sys/firmware/devicetree/base/... the device tree (rtas/ibm,kernel-dump ...)
    ROOT/sys/kernel/release_region        0600, read: the map; write "ADDR SIZE": release
    ROOT/sys/kernel/phyp_dump_active      0600, read-only: dump enabled at boot

and for an LPAR created with ``--dump fadump`` (:data:`FADUMP_ROOT_FILES
<drgn_hvdump.capture.FADUMP_ROOT_FILES>`), instead of the last two::

    ROOT/sys/kernel/fadump/{enabled,registered,release_mem,mem_reserved,hotplug_ready}
    ROOT/sys/kernel/fadump_{enabled,registered,release_mem}   -> fadump/... (old names)

Everything is computed from the LPAR's live state on every access, nothing
is cached by the kernel (zero attribute, entry and negative timeouts;
``direct_io`` on every file), so a release made by another process
(``hvsim release``) shows at once, and ``release_region`` and ``vmcore``
disappear when the last release re-registers the dump, as they do on the
real kernel. While no kernel runs (LPAR off, or crashed and not rebooted)
the root is empty. Text files are snapshots taken at open (like sysfs), and
their ``st_size`` is their current length.

Reads of ``proc/vmcore`` are one :meth:`Lpar.read_vmcore` call per FUSE
request, and requests are 1 MiB (libfuse's ``max_write``-derived
``max_pages`` of 256 under ``direct_io``; ``st_blksize`` 1 MiB makes ``cat``
and ``cp`` ask for 1 MiB too). The daemon raises glibc's mmap and trim
thresholds (:func:`tune_malloc`), which more than triples throughput. It is
single-threaded: ``Lpar`` serialises its calls with a lock anyway.

Writes to ``release_region`` go to :meth:`Lpar.release_text`, one write(2)
per request as on sysfs (``>``'s ``O_TRUNC`` is accepted and ignored); a
refused write fails with the errno the error carries, so
``echo junk > ROOT/sys/kernel/release_region`` says "Invalid argument".
Once the dump is gone, an already open ``release_region`` answers writes with
ENODEV (as kernfs does) and an open ``vmcore`` answers reads with EIO (as
procfs does). Other files refuse writes with EACCES, and the tree refuses
changes (create: EACCES; unlink, rename, chmod: EPERM).

Which files there are, their modes, which take writes and in which state
each one shows come from the capture interface's table
(:data:`drgn_hvdump.capture.PHYP_ROOT_FILES`); this module supplies only
their content (:func:`text_providers`, :func:`write_handlers`, and vmcore).

One difference from the real kernel: ``/proc/device-tree`` is a *relative*
symlink, so that it resolves inside ``ROOT`` rather than on the host.

:func:`mount` starts a daemon (a fresh interpreter in its own session),
waits until the root answers and returns; the daemon unmounts cleanly on
SIGTERM, SIGINT or SIGHUP. It records itself in ``.NAME.hvsim-fuse.pid``
beside the mount point (JSON: pid, process start time, LPAR, root) and logs
warnings to ``.NAME.hvsim-fuse.log`` there. :func:`umount` unmounts with
``fusermount3 -u``, waits for the daemon to exit, and clears a stale mount
left by a dead daemon ("Transport endpoint is not connected") with a lazy
unmount.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import functools
import json
import logging
import os
import posixpath
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from drgn_hvdump.capture import FADUMP_ROOT_FILES, PHYP_ROOT_FILES, RootFile, RootTable
from drgn_hvdump.capture.rootfiles import DUMP_WAITING, KERNEL_STATES, MEMORY, dir_mode
from drgn_hvdump.errors import HvdumpError

try:
    import mfusepy as fuse
except OSError as _exc:  # mfusepy looks for libfuse at import time
    raise ImportError(f"libfuse3 not found ({_exc}); install the fuse3 package") from _exc

__all__ = [
    "DEVICE_TREE_LINK",
    "FSTYPE",
    "ROOT_FILES",
    "CaptureRoot",
    "CaptureViews",
    "MountInfo",
    "add_subcommands",
    "is_mounted",
    "mount",
    "mount_info",
    "root_table",
    "serve",
    "text_providers",
    "tune_malloc",
    "umount",
    "write_handlers",
]

log = logging.getLogger(__name__)

#: Filesystem type of our mounts in ``/proc/self/mountinfo`` (FUSE subtype ``hvsim``).
FSTYPE = "fuse.hvsim"
#: The files of the root hvsim serves for an LPAR of the default interface (phyp dump).
ROOT_FILES = PHYP_ROOT_FILES


def root_table(dump: str) -> RootTable:
    """The files of the root of an LPAR whose ``LparConfig.dump`` is ``dump``."""
    return FADUMP_ROOT_FILES if dump == "fadump" else PHYP_ROOT_FILES


#: Target of ``ROOT/proc/device-tree`` (relative, so it stays inside ROOT).
DEVICE_TREE_LINK = ROOT_FILES.device_tree.link_target("proc/device-tree")

_VMCORE_BLKSIZE = 1 << 20  # st_blksize of vmcore: cat/cp then read 1 MiB at a time
_TEXT_BLKSIZE = 4096
_MOUNT_TIMEOUT = 30.0
_EXIT_TIMEOUT = 15.0
_M_TRIM_THRESHOLD = -1  # mallopt() parameters (glibc's malloc.h)
_M_MMAP_THRESHOLD = -3
_LIBFUSE_LOOP_ENDED = 8  # fuse_main_real(): the session loop returned non-zero
#: How :func:`serve` runs libfuse: raw fuse_file_info (open() sets direct_io per
#: file), one request at a time (CaptureRoot is not thread-safe), readable by
#: every user with the kernel checking the modes, as on procfs and sysfs.
_FUSE_OPTIONS = {
    "raw_fi": True,
    "foreground": True,
    "nothreads": True,
    "allow_other": True,
    "default_permissions": True,
}


class CaptureViews(Protocol):
    """What the root serves: the capture-kernel views of :class:`hvsim.Lpar`.

    Every method reflects the LPAR's current state (the implementation reloads
    it when another process changed it).
    """

    @property
    def state(self) -> str:
        """``off``, ``running``, ``crashed`` or ``capture`` (a dump is waiting)."""
        ...

    def device_tree(self) -> Mapping[str, bytes]:
        """Property files by path relative to the device tree's root."""
        ...

    def proc_version(self) -> str:
        """Contents of ``/proc/version``."""
        ...

    def meminfo_text(self) -> str:
        """Contents of ``/proc/meminfo``."""
        ...

    def boot_id_text(self) -> str:
        """Contents of ``/proc/sys/kernel/random/boot_id``."""
        ...

    def phyp_dump_active_text(self) -> str:
        """Contents of ``/sys/kernel/phyp_dump_active``."""
        ...

    def release_region_text(self) -> str:
        """Contents of ``/sys/kernel/release_region`` (state ``capture`` only)."""
        ...

    def release_text(self, data: bytes) -> object:
        """One write to ``release_region``; raises an error carrying ``.errno``."""
        ...

    def fadump_text(self, name: str) -> str:
        """Contents of ``/sys/kernel/fadump/NAME`` (fadump LPARs)."""
        ...

    def fadump_write(self, name: str, data: bytes) -> object:
        """One write to ``/sys/kernel/fadump/NAME``; raises an error carrying ``.errno``."""
        ...

    def vmcore_size(self) -> int:
        """Size of ``/proc/vmcore`` in bytes (state ``capture`` only)."""
        ...

    def read_vmcore(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of ``/proc/vmcore`` at ``offset`` (short at the end)."""
        ...


def text_providers(views: CaptureViews) -> dict[str, Callable[[], str]]:
    """The content of each text file of the root, by its name in the capture table."""
    return {
        "version": views.proc_version,
        "meminfo": views.meminfo_text,
        "boot_id": views.boot_id_text,
        "phyp_dump_active": views.phyp_dump_active_text,
        "release_region": views.release_region_text,
        **{
            name: functools.partial(views.fadump_text, name)
            for name in ("enabled", "registered", "mem_reserved", "hotplug_ready")
        },
    }


def write_handlers(views: CaptureViews) -> dict[str, Callable[[bytes], object]]:
    """What one write(2) to each writable file does, by its name in the capture table."""
    return {
        "release_region": views.release_text,
        **{
            name: functools.partial(views.fadump_write, name)
            for name in ("registered", "release_mem", "soft_offline_page")
        },
    }


def _check_providers(
    table: RootTable, texts: Mapping[str, object], writers: Mapping[str, object]
) -> None:
    # A table entry without content would only show up as a failed read much later.
    missing = [f.name for f in table.files if f.is_text and f.mode & 0o444 and f.name not in texts]
    missing += [f"{f.name} (writes)" for f in table.files if f.writable and f.name not in writers]
    if missing:
        raise ValueError(f"no content for {table.interface} root files: {', '.join(missing)}")


# --------------------------------------------------------------------------------------
# The filesystem
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dir:
    mode: int
    children: tuple[str, ...]
    #: How many children are directories (st_nlink is 2 + subdirs, as find expects).
    subdirs: int = 0


@dataclass(frozen=True)
class _Link:
    target: str


@dataclass(frozen=True)
class _File:
    mode: int
    #: Computes the content (text and device-tree files); None for vmcore.
    content: Callable[[], bytes] | None
    writable: bool = False


_Node = _Dir | _Link | _File


@dataclass
class _Handle:
    #: Snapshot taken at open for reading (like sysfs/seq_file), None for vmcore.
    data: bytes | None
    #: The table's entry for the file (None for device-tree properties).
    file: RootFile | None


def _errno_of(exc: BaseException, default: int = errno.EIO) -> int:
    code = getattr(exc, "errno", None)
    return code if isinstance(code, int) and code > 0 else default


def _os_error(path: str, exc: Exception, default: int = errno.EIO) -> fuse.FuseOSError:
    """The error a failed view call gives the caller (the errno it carries).

    Expected answers (a file that does not exist in this state, a refused
    write) pass silently; anything else (EIO, a bug) is logged.
    """
    if isinstance(exc, fuse.FuseOSError):
        return exc
    code = _errno_of(exc, 0)
    if code in (0, errno.EIO):
        log.warning("%s: %s: %s", path, type(exc).__name__, exc)
    return fuse.FuseOSError(code or default)


def _dt_property_mode(name: str) -> int:
    # The kernel's __of_add_property_sysfs(): "security-*" properties are 0400.
    return 0o400 if name.startswith("security-") else 0o444


class CaptureRoot(fuse.Operations):  # type: ignore[misc]
    """FUSE operations serving one :class:`CaptureViews` object as a capture root.

    Not thread-safe: run it with FUSE's single-threaded loop (what :func:`serve`
    does). Each request asks ``views`` afresh; only the content of an open text
    file is a snapshot taken at open, as sysfs and seq_file do.
    """

    use_ns = True

    def __init__(self, views: CaptureViews, table: RootTable = ROOT_FILES) -> None:
        self._views = views
        self._table = table
        self._texts = text_providers(views)
        self._writers = write_handlers(views)
        _check_providers(table, self._texts, self._writers)
        self._handles: dict[int, _Handle] = {}
        self._next_fh = 1
        self._time_ns = time.time_ns()

    # -- the tree ----------------------------------------------------------------------

    def _file_node(self, f: RootFile) -> _File:
        if f.kind == MEMORY:
            return _File(f.mode, None)
        if not f.mode & 0o444:
            # Write-only (release_mem): sysfs has no content to show.
            return _File(f.mode, lambda: b"", writable=f.writable)
        text = self._texts[f.name]
        return _File(f.mode, lambda: text().encode("utf-8"), writable=f.writable)

    def _node(self, path: str) -> _Node | None:
        """The node at ``path`` in the current state, or None (the table says what is where)."""
        rel = path.strip("/")
        state = self._views.state
        dt = self._table.device_tree
        if state in KERNEL_STATES:
            if rel in dt.links:
                return _Link(dt.link_target(rel))
            target = self._table.link_at(rel)
            if target is not None:
                f = self._table.at(
                    posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
                )
                return _Link(target) if f is not None and state in f.shown_in else None
            if rel == dt.base or rel.startswith(dt.base + "/"):
                return self._dt_node(rel[len(dt.base) :].strip("/"))
            f = self._table.at(rel)
            if f is not None:
                return self._file_node(f) if state in f.shown_in else None
        # Off or crashed: nothing is mounted on this "/", which lists empty.
        children = self._table.children(rel, state)
        if children is None:
            return None
        subdirs = sum(kind == "dir" for kind in children.values())
        return _Dir(dir_mode(rel), tuple(sorted(children)), subdirs)

    def _dt_node(self, rel: str) -> _Node | None:
        tree = self._views.device_tree()
        if rel in tree:
            value = tree[rel]
            return _File(_dt_property_mode(rel.rsplit("/", 1)[-1]), lambda: value)
        prefix = rel + "/" if rel else ""
        children: set[str] = set()
        subdirs: set[str] = set()
        for key in tree:
            if key.startswith(prefix):
                name, sep, _ = key[len(prefix) :].partition("/")
                children.add(name)
                if sep:
                    subdirs.add(name)
        if not children:
            return None if rel else _Dir(0o755, ())
        return _Dir(0o755, tuple(sorted(children)), len(subdirs))

    def _lookup(self, path: str) -> _Node:
        try:
            node = self._node(path)
        except Exception as exc:
            raise _os_error(path, exc) from exc
        if node is None:
            raise fuse.FuseOSError(errno.ENOENT)
        return node

    def _stat(self, node: _Node) -> dict[str, Any]:
        st: dict[str, Any] = {
            "st_uid": 0,
            "st_gid": 0,
            "st_atime": self._time_ns,
            "st_mtime": self._time_ns,
            "st_ctime": self._time_ns,
        }
        if isinstance(node, _Dir):
            st.update(st_mode=stat.S_IFDIR | node.mode, st_nlink=2 + node.subdirs, st_size=0)
        elif isinstance(node, _Link):
            st.update(st_mode=stat.S_IFLNK | 0o777, st_nlink=1, st_size=len(node.target))
        elif node.content is None:
            st.update(
                st_mode=stat.S_IFREG | node.mode,
                st_nlink=1,
                st_size=self._views.vmcore_size(),
                st_blksize=_VMCORE_BLKSIZE,
            )
        else:
            st.update(
                st_mode=stat.S_IFREG | node.mode,
                st_nlink=1,
                st_size=len(node.content()),
                st_blksize=_TEXT_BLKSIZE,
            )
        return st

    @staticmethod
    def _kind(node: _Node) -> int:
        if isinstance(node, _Dir):
            return stat.S_IFDIR | node.mode
        if isinstance(node, _Link):
            return stat.S_IFLNK | 0o777
        return stat.S_IFREG | node.mode

    # -- FUSE operations ---------------------------------------------------------------

    def init_with_config(self, conn_info: Any, config_3: Any) -> None:
        """Nothing cached by the kernel: attributes, entries and misses expire at once."""
        if config_3 is not None:
            config_3.attr_timeout = 0.0
            config_3.entry_timeout = 0.0
            config_3.negative_timeout = 0.0
            config_3.kernel_cache = 0
            config_3.auto_cache = 0

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        """stat(2) of ``path`` from the live state (sizes are the content's length)."""
        node = self._lookup(path)
        try:
            return self._stat(node)
        except Exception as exc:
            # ENOENT: the file does not exist in this state (no phyp_dump_active
            # without firmware support) or vanished since the lookup.
            raise _os_error(path, exc) from exc

    def readdir(self, path: str, fh: int) -> list[str | tuple[str, dict[str, int], int]]:
        """The directory's entries with their types (for d_type)."""
        node = self._lookup(path)
        if not isinstance(node, _Dir):
            raise fuse.FuseOSError(errno.ENOTDIR)
        entries: list[str | tuple[str, dict[str, int], int]] = [".", ".."]
        base = path.rstrip("/")
        for name in node.children:
            # List exactly what stat() finds (e.g. no phyp_dump_active without
            # firmware support, no vmcore once the dump is gone).
            try:
                child = self._node(f"{base}/{name}")
                if child is not None:
                    self._stat(child)
            except Exception:
                child = None
            if child is not None:
                entries.append((name, {"st_mode": self._kind(child)}, 0))
        return entries

    def readlink(self, path: str) -> str:
        """Target of a symlink (only ``proc/device-tree``)."""
        node = self._lookup(path)
        if not isinstance(node, _Link):
            raise fuse.FuseOSError(errno.EINVAL)
        return node.target

    def open(self, path: str, fi: Any) -> int:
        """Open a file; refuse writing what the kernel does not let one write (EACCES)."""
        node = self._lookup(path)
        if isinstance(node, _Dir):
            raise fuse.FuseOSError(errno.EISDIR)
        if not isinstance(node, _File):
            raise fuse.FuseOSError(errno.ELOOP)
        accmode = fi.flags & os.O_ACCMODE
        if accmode != os.O_RDONLY and not node.writable:
            raise fuse.FuseOSError(errno.EACCES)
        if accmode != os.O_WRONLY and not node.mode & 0o444:
            # kernfs: a file with no read method cannot be opened for reading, by root neither
            raise fuse.FuseOSError(errno.EACCES)
        data: bytes | None = None
        if node.content is not None and accmode != os.O_WRONLY:
            try:
                data = node.content()
            except Exception as exc:
                raise _os_error(path, exc) from exc
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = _Handle(data, self._table.at(path))
        fi.fh = fh
        # Every read goes to the daemon: nothing stale survives a release, and
        # reads are as large as the caller asks (up to FUSE's max_pages).
        fi.direct_io = 1
        fi.keep_cache = 0
        return 0

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        """Bytes of an open file: vmcore straight from the LPAR, others from the snapshot."""
        handle = self._handles.get(fi.fh)
        if handle is None:
            raise fuse.FuseOSError(errno.EBADF)
        if handle.data is not None:
            return handle.data[offset : offset + size]
        if handle.file is None or handle.file.kind != MEMORY:
            raise fuse.FuseOSError(errno.EBADF)
        try:
            return self._views.read_vmcore(offset, size)
        except Exception as exc:
            err = _os_error(f"{path} at {offset:#x}+{size:#x}", exc)
            if err.errno == errno.ENOENT:
                # The dump is gone (re-registered) while the file was open: procfs
                # answers reads of a removed entry with EIO.
                err = fuse.FuseOSError(errno.EIO)
            raise err from exc

    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        """One write(2) to ``release_region`` is one release request (offset ignored, as sysfs)."""
        handle = self._handles.get(fi.fh)
        if handle is None:
            raise fuse.FuseOSError(errno.EBADF)
        writer = self._writers.get(handle.file.name) if handle.file is not None else None
        if writer is None:
            raise fuse.FuseOSError(errno.EACCES)
        try:
            writer(data)
        except Exception as exc:
            err = _os_error(path, exc)
            if err.errno == errno.ENOENT:
                # The dump is gone (re-registered) while this file was open:
                # kernfs answers writes to a removed attribute with ENODEV.
                err = fuse.FuseOSError(errno.ENODEV)
            raise err from exc
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        """Accepted (and ignored) on writable files, as on sysfs: makes ``>`` work."""
        node = self._lookup(path)
        if isinstance(node, _Dir):
            raise fuse.FuseOSError(errno.EISDIR)
        if not (isinstance(node, _File) and node.writable):
            raise fuse.FuseOSError(errno.EACCES)
        return 0

    def release(self, path: str, fi: Any) -> int:
        """Forget an open file."""
        self._handles.pop(fi.fh, None)
        return 0

    def flush(self, path: str, fi: Any) -> int:
        """Nothing is buffered."""
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        """An empty in-memory filesystem, like procfs and sysfs."""
        return {
            "f_bsize": 4096,
            "f_frsize": 4096,
            "f_blocks": 0,
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": 0,
            "f_ffree": 0,
            "f_namemax": 255,
        }

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        """Accepted and ignored (``touch`` works, as on sysfs)."""
        self._lookup(path)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        """Refused: modes are the kernel's."""
        self._lookup(path)
        raise fuse.FuseOSError(errno.EPERM)

    def chown(self, path: str, uid: int, gid: int) -> int:
        """Refused: everything belongs to root."""
        self._lookup(path)
        raise fuse.FuseOSError(errno.EPERM)

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        """Refused: the kernel owns the tree."""
        raise fuse.FuseOSError(errno.EACCES)

    def mknod(self, path: str, mode: int, dev: int) -> int:
        """Refused: the kernel owns the tree."""
        raise fuse.FuseOSError(errno.EACCES)

    def mkdir(self, path: str, mode: int) -> int:
        """Refused: the kernel owns the tree."""
        raise fuse.FuseOSError(errno.EACCES)

    def symlink(self, target: str, source: str) -> int:
        """Refused: the kernel owns the tree."""
        raise fuse.FuseOSError(errno.EACCES)

    def link(self, target: str, source: str) -> int:
        """Refused: the kernel owns the tree."""
        raise fuse.FuseOSError(errno.EACCES)

    def unlink(self, path: str) -> int:
        """Refused: the kernel owns the tree."""
        self._lookup(path)
        raise fuse.FuseOSError(errno.EPERM)

    def rmdir(self, path: str) -> int:
        """Refused: the kernel owns the tree."""
        self._lookup(path)
        raise fuse.FuseOSError(errno.EPERM)

    def rename(self, old: str, new: str) -> int:
        """Refused: the kernel owns the tree."""
        self._lookup(old)
        raise fuse.FuseOSError(errno.EPERM)


# --------------------------------------------------------------------------------------
# Mount points, pidfiles, the daemon
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MountInfo:
    """One line of ``/proc/self/mountinfo``."""

    mount_point: str
    fstype: str
    source: str


def _unescape_mountinfo(field: str) -> str:
    # The kernel escapes space, tab, newline and backslash as \ooo.
    out: list[str] = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and len(field[i + 1 : i + 4]) == 3:
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mountpoint_path(root: str | os.PathLike[str]) -> str:
    """Absolute path of ``root`` without touching ``root`` itself (it may be a stale mount)."""
    p = Path(os.path.abspath(root))
    return str(Path(os.path.realpath(p.parent)) / p.name) if p.name else str(p)


def mount_info(root: str | os.PathLike[str]) -> MountInfo | None:
    """The topmost mount at ``root`` (any filesystem), or None."""
    target = _mountpoint_path(root)
    found: MountInfo | None = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            rest = right.split()
            if len(fields) < 5 or len(rest) < 2:
                continue
            if _unescape_mountinfo(fields[4]) == target:
                found = MountInfo(target, rest[0], _unescape_mountinfo(rest[1]))
    return found


def is_mounted(root: str | os.PathLike[str]) -> bool:
    """True when an hvsim capture root is mounted at ``root`` (also a stale one)."""
    info = mount_info(root)
    return info is not None and info.fstype == FSTYPE


def _side_file(root: str, suffix: str) -> Path:
    p = Path(root)
    return p.parent / f".{p.name}.hvsim-fuse.{suffix}"


def _proc_start_time(pid: int) -> int | None:
    """Start time of a live (not zombie) process in clock ticks, or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


@dataclass(frozen=True)
class _Daemon:
    pid: int
    start_time: int

    def alive(self) -> bool:
        child = _CHILDREN.get(self.pid)
        if child is not None and child.poll() is not None:
            del _CHILDREN[self.pid]
            return False
        return _proc_start_time(self.pid) == self.start_time


#: Daemons started by this process, so umount() can reap them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _write_pidfile(root: str, lpar_path: str) -> Path:
    pid = os.getpid()
    start = _proc_start_time(pid)
    record = {"pid": pid, "start_time": start, "lpar": lpar_path, "root": root}
    pidfile = _side_file(root, "pid")
    tmp = pidfile.with_name(pidfile.name + f".{pid}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record, f)
        f.write("\n")
    os.replace(tmp, pidfile)
    return pidfile


def _read_pidfile(root: str) -> _Daemon | None:
    try:
        record = json.loads(_side_file(root, "pid").read_text(encoding="utf-8"))
        return _Daemon(int(record["pid"]), int(record["start_time"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove_own_pidfile(root: str) -> None:
    pidfile = _side_file(root, "pid")
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if json.loads(pidfile.read_text(encoding="utf-8"))["pid"] == os.getpid():
            pidfile.unlink()


def _fuse_option_value(text: str) -> str:
    # libfuse splits -o on commas; a backslash escapes the next character.
    return text.replace("\\", "\\\\").replace(",", "\\,")


def _prepare_mountpoint(root: str) -> None:
    if mount_info(root) is not None:
        what = "an hvsim root" if is_mounted(root) else "something"
        raise HvdumpError(f"{root}: {what} is already mounted there; unmount it first")
    if not os.path.exists(root):
        os.makedirs(root, mode=0o700, exist_ok=True)
        os.chmod(root, 0o700)
    elif not os.path.isdir(root):
        raise HvdumpError(f"{root}: not a directory")


def tune_malloc() -> bool:
    """Keep freed megabyte buffers in the heap instead of returning them to the OS.

    Every vmcore read allocates and frees buffers of about 1 MiB; with glibc's
    defaults each one is a fresh mmap() whose pages fault in again, which costs
    more than generating the data. Raising the mmap and trim thresholds (64 MiB,
    256 MiB) makes reads 3-4 times faster. Returns False where mallopt() is
    unavailable (not glibc).
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, 64 << 20) == 1)
    return bool(mallopt(_M_TRIM_THRESHOLD, 256 << 20) == 1) and ok


def serve(
    views: CaptureViews,
    root: str | os.PathLike[str],
    *,
    name: str = "hvsim",
    table: RootTable = ROOT_FILES,
) -> None:
    """Serve ``views`` at ``root`` in this process until it is unmounted or signalled.

    SIGTERM, SIGINT and SIGHUP end the loop and unmount cleanly (libfuse's own
    handlers). Single-threaded: requests are answered one at a time.
    """
    mnt = _mountpoint_path(root)
    tune_malloc()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        # libfuse installs its exit handlers only over SIG_DFL (not over inherited SIG_IGN).
        signal.signal(sig, signal.SIG_DFL)
    try:
        fuse.FUSE(
            CaptureRoot(views, table),
            mnt,
            fsname=_fuse_option_value(name),
            subtype="hvsim",
            **_FUSE_OPTIONS,
        )
    except RuntimeError as exc:
        status = exc.args[0] if exc.args else None
        if status != _LIBFUSE_LOOP_ENDED:
            raise HvdumpError(f"{mnt}: libfuse failed to serve (status {status})") from exc
        # libfuse's exit handler records the signal as the loop's "error", so an
        # exit on SIGTERM/SIGINT/SIGHUP ends with status 8; the mount is gone either way.
        log.info("%s: FUSE loop ended by a signal", mnt)


def _serve_lpar(lpar_path: str, root: str) -> None:
    from hvsim.lpar import Lpar

    mnt = _mountpoint_path(root)
    lpar = Lpar.open(lpar_path)
    _write_pidfile(mnt, lpar_path)
    try:
        serve(lpar, mnt, name=f"hvsim:{lpar_path}", table=root_table(lpar.config.dump))
    finally:
        _remove_own_pidfile(mnt)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def mount(
    lpar_path: str | os.PathLike[str],
    root: str | os.PathLike[str],
    *,
    foreground: bool = False,
) -> int:
    """Mount the LPAR at ``lpar_path`` as a capture-kernel root at ``root``.

    Creates ``root`` (0700) if missing. By default starts a daemon, waits until
    the root answers and returns the daemon's pid; with ``foreground`` serves in
    this process until unmounted (SIGINT/SIGTERM/SIGHUP or :func:`umount`) and
    returns this process's pid.
    """
    lpar = os.path.abspath(lpar_path)
    mnt = _mountpoint_path(root)
    from hvsim.lpar import Lpar

    with Lpar.open(lpar):  # a missing or corrupt LPAR fails here, in the caller
        pass
    _prepare_mountpoint(mnt)
    if foreground:
        _serve_lpar(lpar, mnt)
        return os.getpid()

    logfile = _side_file(mnt, "log")
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "hvsim.fuse_root", lpar, mnt],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=fd,
            start_new_session=True,
            cwd="/",
            env=env,
        )
    finally:
        os.close(fd)
    _CHILDREN[child.pid] = child
    deadline = time.monotonic() + _MOUNT_TIMEOUT
    while True:
        if child.poll() is not None:
            del _CHILDREN[child.pid]
            detail = _tail(logfile) or f"exit status {child.returncode}"
            raise HvdumpError(f"{mnt}: the FUSE daemon failed to mount {lpar}: {detail}")
        if is_mounted(mnt):
            with contextlib.suppress(OSError):
                os.stat(mnt)  # answered: the init handshake is done
                return child.pid
        if time.monotonic() > deadline:
            child.terminate()  # libfuse's handler unmounts if it got that far
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(_EXIT_TIMEOUT)
            raise HvdumpError(f"{mnt}: the FUSE daemon did not mount within {_MOUNT_TIMEOUT:.0f} s")
        time.sleep(0.01)


def _fusermount(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["fusermount3", *args], capture_output=True, text=True, check=False, timeout=60
        )
    except FileNotFoundError as exc:
        raise HvdumpError(
            "fusermount3 not found; install the fuse3 package (apt-get install fuse3)"
        ) from exc


def _is_stale(mnt: str) -> bool:
    try:
        os.stat(mnt)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def _wait_gone(daemon: _Daemon, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while daemon.alive():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def umount(root: str | os.PathLike[str]) -> None:
    """Unmount an hvsim root and wait for its daemon to exit.

    A root whose daemon died (reads fail with "Transport endpoint is not
    connected") is detached lazily. A busy root with a live daemon is refused.
    """
    mnt = _mountpoint_path(root)
    daemon = _read_pidfile(mnt)
    if daemon is not None and not daemon.alive():
        daemon = None
    info = mount_info(mnt)
    if info is not None and info.fstype != FSTYPE:
        raise HvdumpError(f"{mnt}: not an hvsim root (a {info.fstype} filesystem is mounted there)")
    if info is None and daemon is None:
        _side_file(mnt, "pid").unlink(missing_ok=True)
        raise HvdumpError(f"{mnt}: not mounted")
    if info is not None:
        res = _fusermount("-u", mnt)
        if res.returncode != 0 and is_mounted(mnt):
            if daemon is None or _is_stale(mnt):
                res = _fusermount("-u", "-z", mnt)
            if res.returncode != 0 and is_mounted(mnt):
                why = res.stderr.strip().replace("\n", " ") or "fusermount3 failed"
                raise HvdumpError(
                    f"{mnt}: cannot unmount: {why}; close files and leave shells that use it,"
                    " then retry"
                )
    if daemon is not None and not _wait_gone(daemon, _EXIT_TIMEOUT):
        log.warning("%s: daemon %d did not exit after unmount; terminating it", mnt, daemon.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon.pid, signal.SIGTERM)
        if not _wait_gone(daemon, 5.0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon.pid, signal.SIGKILL)
            _wait_gone(daemon, 5.0)
    _side_file(mnt, "pid").unlink(missing_ok=True)
    logfile = _side_file(mnt, "log")
    with contextlib.suppress(OSError):
        if logfile.stat().st_size == 0:
            logfile.unlink()
    _forget_collection(mnt)


def _forget_collection(mnt: str) -> None:
    """The root is gone: a collection registered for it names memory no longer
    there (whatever is mounted at this path next is another LPAR)."""
    from drgn_hvdump.dumpdir.registry import read_registration, registration_path

    entry, _ = read_registration(mnt)
    if entry is not None:
        with contextlib.suppress(OSError):
            registration_path(mnt).unlink()


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _root_lines(table: RootTable) -> str:
    """The files of a capture root, one wrapped line each, for the mount help."""
    rows = []
    for f in table.files:
        notes = [f"{f.mode:04o}"]
        if f.shown_in == DUMP_WAITING:
            notes.append("only while a dump waits, i.e. after a crash")
        if f.condition:
            notes.append(f"when {f.condition}")
        rows.append((f.path, f"{f.meaning} ({'; '.join(notes)})"))
    dt = table.device_tree
    rows += [(link, f"-> {dt.link_target(link)}") for link in dt.links]
    props = ", ".join(p.path for p in table.properties)
    rows.append((dt.base + "/", f"the device tree: {props}, ..."))
    return "".join(
        textwrap.fill(
            text,
            79,
            initial_indent=f"  {path:<33}",
            subsequent_indent=" " * 35,
            break_on_hyphens=False,
        )
        + "\n"
        for path, text in rows
    )


_MOUNT_HELP = f"""\
Mount a simulated LPAR as the root filesystem its capture kernel would see,
so hvdump tools can run on it with --root ROOT as on a real LPAR with --root /.

ROOT then holds:
{_root_lines(ROOT_FILES)}
Release a range from a shell once its bytes are safely stored:
  echo 0x10000000 0x1000000 > ROOT/sys/kernel/release_region
Like the real kernel (with the default faithful quirks), a release also
frees the page after its end: release a range only once the page after it is
stored too (working from the top of memory down does that). Malformed input
fails with "Invalid argument" and changes nothing. When everything is
released the dump is re-registered: release_region and proc/vmcore vanish.

Changes made by other processes (hvsim release, hvsim crash) show at once.
By default the command returns once the root is mounted; the daemon records
its pid in .ROOTNAME.hvsim-fuse.pid and logs to .ROOTNAME.hvsim-fuse.log
beside ROOT. Unmount with: hvsim umount ROOT
"""

_UMOUNT_HELP = """\
Unmount a root mounted with "hvsim mount" and wait for its daemon to exit.
A root left behind by a killed daemon, where every access fails with
"Transport endpoint is not connected", is detached lazily. A live root
with files still open in it is not unmounted (close them and retry).
"""


def _cmd_mount(args: argparse.Namespace) -> int:
    pid = mount(args.lpar, args.root, foreground=args.foreground)
    if not args.foreground:
        print(
            f"mounted {args.lpar} at {args.root} (daemon pid {pid}); unmount with: hvsim umount {args.root}"
        )
    return 0


def _cmd_umount(args: argparse.Namespace) -> int:
    umount(args.root)
    return 0


def add_subcommands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``hvsim mount`` and ``hvsim umount``; each sets ``func(args) -> int``."""
    commands = (
        ("mount", "mount an LPAR as its capture kernel's root (FUSE)", _MOUNT_HELP, _cmd_mount),
        ("umount", "unmount a root mounted with hvsim mount", _UMOUNT_HELP, _cmd_umount),
    )
    parsers = {}
    for name, summary, description, func in commands:
        parsers[name] = subparsers.add_parser(
            name,
            help=summary,
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parsers[name].set_defaults(func=func)
    p = parsers["mount"]
    p.add_argument("lpar", metavar="LPAR", help="the LPAR directory (hvsim create)")
    p.add_argument("root", metavar="ROOT", help="mount point; created 0700 if missing")
    p.add_argument(
        "--foreground",
        action="store_true",
        help="serve in this process until unmounted or interrupted (Ctrl-C unmounts)",
    )
    parsers["umount"].add_argument("root", metavar="ROOT", help="the mount point")


def _daemon_main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s hvsim-fuse[%(process)d] %(message)s"
    )
    if len(argv) != 2:
        print("usage: python -m hvsim.fuse_root LPAR ROOT (use: hvsim mount)", file=sys.stderr)
        return 2
    try:
        _serve_lpar(argv[0], argv[1])
    except HvdumpError as exc:
        print(f"hvsim mount: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_daemon_main(sys.argv[1:]))
