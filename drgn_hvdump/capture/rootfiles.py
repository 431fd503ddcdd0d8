"""The files of a capture root, described once as data.

A capture kernel offers a waiting dump through files of its root filesystem
(``/`` on a real LPAR, a FUSE mount of a simulated one in tests). Each kernel
interface of :mod:`drgn_hvdump.capture` owns one :class:`RootTable` naming its
files: where each one is, its mode, whether it takes writes, in which states
of the running kernel it is there, and what it means. The readers of the
interface find their files through the table, and the simulator builds its
FUSE root, its plain-directory fleet roots and ``hvsim cat`` from the same
table, supplying only each file's content. A second interface is a second
table, not a second list of paths in every tool.

States are those of the running kernel: :data:`RUNNING` (no dump waits) and
:data:`CAPTURE` (a capture kernel runs with a dump waiting). While no kernel
runs the root is empty.

The device tree has two spellings, ``proc/device-tree`` (a symlink on
kernels since 3.x, a procfs directory before) and the sysfs directory
``sys/firmware/devicetree/base``; property files are named relative to the
tree and found under either (:attr:`DeviceTree.dirs`).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ALWAYS",
    "BOOT_ID",
    "CAPTURE",
    "COMMON_PROPERTIES",
    "COMMON_ROOT_FILES",
    "CONFIGURE_KERNEL_DUMP",
    "DEVICE_TREE",
    "DUMP_WAITING",
    "KERNEL_STATES",
    "MEMINFO",
    "MEMORY",
    "PROPERTY",
    "RUNNING",
    "TEXT",
    "VERSION",
    "VMCORE",
    "DeviceTree",
    "RootFile",
    "RootTable",
    "dir_mode",
]

RUNNING = "running"
"""A kernel runs and no dump waits (an ordinary boot, or after the last release)."""
CAPTURE = "capture"
"""A capture kernel runs with a dump waiting."""
KERNEL_STATES = (RUNNING, CAPTURE)
"""The states in which a kernel runs and the root shows files."""
ALWAYS = frozenset(KERNEL_STATES)
DUMP_WAITING = frozenset({CAPTURE})

TEXT = "text"
"""A text file: read whole (a snapshot at open, as sysfs and seq_file give)."""
MEMORY = "memory"
"""The old kernel's memory: large, read in place at any offset."""
PROPERTY = "property"
"""A device-tree property: bytes, named relative to the device tree."""


@dataclass(frozen=True)
class RootFile:
    """One file of a capture root."""

    #: The kernel's name for it; readers and content providers look it up by this name.
    name: str
    #: Where it is, relative to the root (a property: relative to the device tree).
    path: str
    #: Permission bits as the kernel shows them.
    mode: int
    #: One line: what the file holds or does.
    meaning: str
    #: The states (:data:`RUNNING`, :data:`CAPTURE`) in which the kernel shows it.
    shown_in: frozenset[str] = ALWAYS
    #: A write is a request to the kernel (the others refuse writes).
    writable: bool = False
    #: :data:`TEXT`, :data:`MEMORY` or :data:`PROPERTY`.
    kind: str = TEXT
    #: When set, the file is there only if this also holds (in the states above).
    condition: str = ""
    #: Older names of the file, shown as symlinks to it (read when ``path`` is absent).
    also: tuple[str, ...] = ()

    @property
    def is_text(self) -> bool:
        """Whether the file is text, read whole (not memory, not a device-tree property)."""
        return self.kind == TEXT


@dataclass(frozen=True)
class DeviceTree:
    """Where a capture root shows the device tree."""

    #: The directory holding the tree (sysfs).
    base: str
    #: Other spellings of ``base``: symlinks to it in the root.
    links: tuple[str, ...]
    #: Mode of the tree's directories.
    dir_mode: int = 0o755

    @property
    def dirs(self) -> tuple[str, ...]:
        """Every spelling, the traditional one first (readers try them in this order)."""
        return (*self.links, self.base)

    def link_target(self, link: str) -> str:
        """Target of the symlink ``link``: relative, so it resolves inside the root."""
        return posixpath.relpath(self.base, posixpath.dirname(link))


DEVICE_TREE = DeviceTree(base="sys/firmware/devicetree/base", links=("proc/device-tree",))

VERSION = RootFile("version", "proc/version", 0o444, "the running kernel's banner")
MEMINFO = RootFile(
    "meminfo",
    "proc/meminfo",
    0o444,
    "the running kernel's memory; MemTotal grows by exactly what a release frees",
)
BOOT_ID = RootFile(
    "boot_id", "proc/sys/kernel/random/boot_id", 0o444, "a UUID that changes with every boot"
)
COMMON_ROOT_FILES = (VERSION, MEMINFO, BOOT_ID)
"""Files every capture kernel shows, whatever its dump interface."""

VMCORE = RootFile(
    "vmcore",
    "proc/vmcore",
    0o400,
    "the old kernel's memory as an ELF core",
    shown_in=DUMP_WAITING,
    kind=MEMORY,
)
"""``/proc/vmcore``: every capture kernel shows it while a dump waits."""
CONFIGURE_KERNEL_DUMP = RootFile(
    "ibm,configure-kernel-dump",
    "rtas/ibm,configure-kernel-dump",
    0o444,
    "the RTAS token of the dump call: the firmware supports dumps",
    kind=PROPERTY,
    condition="the firmware supports dumps",
)
"""The device-tree property both dump interfaces are offered through."""

COMMON_PROPERTIES = tuple(
    RootFile(name, name, 0o444, meaning, kind=PROPERTY, condition="the firmware names it")
    for name, meaning in (
        ("system-id", "the machine's serial number"),
        ("ibm,partition-no", "the partition's number on its machine"),
        ("ibm,partition-name", "the partition's name"),
    )
)
"""Device-tree properties that name the machine and partition (part of a dump's identity)."""

# Directory modes: the mount points "/", "/proc" and "/sys" as Linux creates
# them; below them, procfs makes 0555 directories and sysfs 0755 ones.
_DIR_MODES = {"": 0o755, "proc": 0o555, "sys": 0o555}
_FS_DIR_MODES = {"proc": 0o555, "sys": 0o755}


def dir_mode(path: str) -> int:
    """Mode of the directory ``path`` (relative to the root) of a capture root."""
    if path in _DIR_MODES:
        return _DIR_MODES[path]
    return _FS_DIR_MODES.get(path.split("/", 1)[0], 0o755)


@dataclass(frozen=True)
class RootTable:
    """The files of one kernel interface's capture root."""

    #: The interface's name (:attr:`CaptureInterface.name`).
    interface: str
    #: Files directly under the root (text files, memory).
    files: tuple[RootFile, ...]
    #: Device-tree properties the interface reads (the tree holds more).
    properties: tuple[RootFile, ...] = ()
    device_tree: DeviceTree = DEVICE_TREE

    def __post_init__(self) -> None:
        names = [f.name for f in (*self.files, *self.properties)]
        paths = [p for f in self.files for p in (f.path, *f.also)]
        if len(set(paths)) != len(paths):
            raise ValueError(f"{self.interface}: a path is used twice in {paths}")
        if len(set(names)) != len(names):
            raise ValueError(f"{self.interface}: a name is used twice in {names}")

    def __getitem__(self, name: str) -> RootFile:
        for f in (*self.files, *self.properties):
            if f.name == name:
                return f
        raise KeyError(f"{self.interface} has no root file {name!r}")

    def __iter__(self) -> Iterator[RootFile]:
        return iter((*self.files, *self.properties))

    def at(self, path: str) -> RootFile | None:
        """The file (not property) at ``path`` relative to the root, or None."""
        path = path.strip("/")
        return next((f for f in self.files if f.path == path), None)

    def property_at(self, path: str) -> RootFile | None:
        """The property at ``path`` (any spelling of the device tree), or None."""
        path = path.strip("/")
        for d in self.device_tree.dirs:
            if path.startswith(d + "/"):
                rel = path[len(d) + 1 :]
                return next((p for p in self.properties if p.path == rel), None)
        return None

    def paths(self, root: Path, name: str) -> tuple[Path, ...]:
        """Every place the file ``name`` may be under ``root`` (properties: one per spelling;
        files: the name first, then older names)."""
        f = self[name]
        if f.kind == PROPERTY:
            return tuple(root / d / f.path for d in self.device_tree.dirs)
        return tuple(root / p for p in (f.path, *f.also))

    def link_at(self, path: str) -> str | None:
        """The target of the older name ``path`` (a symlink relative to its directory), or None."""
        path = path.strip("/")
        for f in self.files:
            if path in f.also:
                return posixpath.relpath(f.path, posixpath.dirname(path))
        return None

    def path(self, root: Path, name: str) -> Path:
        """Where the file ``name`` is under ``root`` (a property: its first spelling)."""
        return self.paths(root, name)[0]

    def find(self, root: Path, name: str) -> Path | None:
        """The first existing place of the file ``name`` under ``root``, or None."""
        return next((p for p in self.paths(root, name) if p.exists()), None)

    def shown(self, state: str) -> tuple[RootFile, ...]:
        """The files (not properties) the kernel shows in ``state``; none while no kernel runs."""
        return tuple(f for f in self.files if state in f.shown_in)

    def entries(self, state: str) -> dict[str, str]:
        """Every path the root shows in ``state`` besides the device tree's content:
        ``"file"``, ``"link"`` (another spelling of the device tree) or ``"dir"``."""
        if state not in KERNEL_STATES:
            return {}
        out: dict[str, str] = {f.path: "file" for f in self.shown(state)}
        out.update({p: "link" for f in self.shown(state) for p in f.also})
        out.update(dict.fromkeys(self.device_tree.links, "link"))
        out[self.device_tree.base] = "dir"
        for path in list(out):
            parts = path.split("/")
            for i in range(1, len(parts)):
                out.setdefault("/".join(parts[:i]), "dir")
        return out

    def children(self, directory: str, state: str) -> dict[str, str] | None:
        """Names in ``directory`` (relative to the root, outside the device tree) in
        ``state`` and their kinds as :meth:`entries` gives them; None where there is
        no such directory. The root itself is always a directory."""
        directory = directory.strip("/")
        entries = self.entries(state)
        if directory and entries.get(directory) != "dir":
            return None
        prefix = directory + "/" if directory else ""
        return {
            path[len(prefix) :]: kind
            for path, kind in entries.items()
            if path.startswith(prefix) and "/" not in path[len(prefix) :]
        }
