"""The table of a capture root's files, and the simulator's root built from it.

The table (``drgn_hvdump.capture.rootfiles``, ``PhypDump.ROOT_FILES``) is the
one description of the capture root's files; hvsim's FUSE operations must
serve exactly what it says in every state. These tests drive
:class:`hvsim.fuse_root.CaptureRoot` directly and need no mount.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from drgn_hvdump.capture import PHYP_ROOT_FILES, PhypDump, RootFile, RootTable, open_capture
from drgn_hvdump.capture.base import DT_DIRS
from drgn_hvdump.capture.rootfiles import (
    CAPTURE,
    COMMON_ROOT_FILES,
    DUMP_WAITING,
    KERNEL_STATES,
    PROPERTY,
    RUNNING,
    dir_mode,
)
from hvsim import Lpar

try:
    from hvsim import fuse_root as fr
except ImportError as exc:  # libfuse3 (package fuse3) or mfusepy missing
    pytest.skip(f"FUSE support is unavailable: {exc}", allow_module_level=True)

TABLE = PHYP_ROOT_FILES
DT = TABLE.device_tree


def _walk(ops: fr.CaptureRoot, path: str = "/") -> dict[str, int]:
    """Every path under ``path`` (relative to the root) and its st_mode, as readdir lists them."""
    out: dict[str, int] = {}
    for entry in ops.readdir(path, 0):
        if isinstance(entry, str):
            continue  # "." and ".."
        name, attrs, _ = entry
        child = f"{path.rstrip('/')}/{name}"
        mode = ops.getattr(child)["st_mode"]
        assert mode == attrs["st_mode"], child  # d_type agrees with stat
        out[child.lstrip("/")] = mode
        if stat.S_ISDIR(mode):
            out.update(_walk(ops, child))
    return out


def _lpar(tmp_path: Path, state: str, *, firmware: bool = True) -> Lpar:
    lpar = Lpar.create(
        tmp_path / f"{state}-{firmware}",
        memory="1G",
        seed=5,
        firmware_dump=firmware,
        boot=state != "off",
    )
    if state == CAPTURE:
        assert lpar.crash() == CAPTURE
    elif state == "crashed":
        assert lpar.crash(reboot=False) == "crashed"
    assert lpar.state == state
    return lpar


def test_table_is_consistent() -> None:
    paths = [f.path for f in TABLE.files]
    assert len(set(paths)) == len(paths)
    assert DT_DIRS == ("proc/device-tree", "sys/firmware/devicetree/base")
    assert DT.link_target("proc/device-tree") == fr.DEVICE_TREE_LINK
    assert PhypDump.ROOT_FILES is TABLE and PhypDump.name == TABLE.interface
    assert set(COMMON_ROOT_FILES) <= set(TABLE.files)
    assert TABLE["release_region"].writable and TABLE["release_region"].shown_in == DUMP_WAITING
    assert not TABLE["phyp_dump_active"].writable and TABLE["phyp_dump_active"].mode == 0o600
    assert all(p.kind == PROPERTY for p in TABLE.properties)
    assert TABLE.property_at("proc/device-tree/rtas/ibm,kernel-dump") is TABLE["ibm,kernel-dump"]
    with pytest.raises(KeyError):
        TABLE["no-such-file"]


@pytest.mark.parametrize("firmware", [True, False], ids=["firmware", "no-firmware"])
@pytest.mark.parametrize("state", ["off", RUNNING, "crashed", CAPTURE])
def test_served_tree_is_the_table(tmp_path: Path, state: str, firmware: bool) -> None:
    """What the root lists in each state, outside the device tree, is what the table says."""
    if state == CAPTURE and not firmware:
        pytest.skip("no dump waits without the firmware's support")
    lpar = _lpar(tmp_path, state, firmware=firmware)
    tree = _walk(fr.CaptureRoot(lpar))
    outside = {p: m for p, m in tree.items() if not p.startswith(DT.base + "/")}
    expected = TABLE.entries(state)
    if not firmware:  # only the firmware's dump support makes these files appear
        expected = {p: k for p, k in expected.items() if not _conditional(TABLE.at(p))}
    assert set(outside) == set(expected)
    for path, mode in outside.items():
        kind = expected[path]
        if kind == "file":
            file = TABLE.at(path)
            assert file is not None
            assert stat.S_ISREG(mode) and stat.S_IMODE(mode) == file.mode, path
        elif kind == "dir":
            assert stat.S_ISDIR(mode) and stat.S_IMODE(mode) == dir_mode(path), path
        else:
            assert stat.S_ISLNK(mode), path
    assert (state in KERNEL_STATES) == bool(tree)


@pytest.mark.parametrize("state", [RUNNING, CAPTURE])
def test_served_properties_follow_the_table(tmp_path: Path, state: str) -> None:
    tree = _walk(fr.CaptureRoot(_lpar(tmp_path, state)))
    for prop in TABLE.properties:
        if prop.condition and prop.condition != TABLE["phyp_dump_active"].condition:
            continue  # identity properties: the simulated firmware names only some
        there = f"{DT.base}/{prop.path}" in tree
        assert there == (state in prop.shown_in), prop.name


def _conditional(file: RootFile | None) -> bool:
    return file is not None and bool(file.condition)


def test_a_table_file_without_content_is_refused(tmp_path: Path) -> None:
    """A second interface needs content for each of its files, and nothing else."""
    extra = RootFile("bootargs_append", "sys/kernel/fadump/bootargs_append", 0o644, "arguments")
    table = RootTable("fadump-like", (*TABLE.files, extra), TABLE.properties)
    with pytest.raises(ValueError, match="bootargs_append"):
        fr.CaptureRoot(_lpar(tmp_path, RUNNING), table)


def test_readers_find_files_through_the_table(tmp_path: Path) -> None:
    """Either spelling of the device tree is found, in the table's order."""
    root = tmp_path / "root"
    prop = TABLE["ibm,configure-kernel-dump"]
    sysfs = root / DT.base / prop.path
    sysfs.parent.mkdir(parents=True)
    sysfs.write_bytes(b"\0\0\0\x2a")
    assert TABLE.find(root, prop.name) == sysfs
    assert TABLE.paths(root, prop.name) == tuple(root / d / prop.path for d in DT_DIRS)
    capture = open_capture(root)
    assert isinstance(capture, PhypDump) and capture.state().firmware_supported
    assert capture.vmcore_path == root / TABLE["vmcore"].path
    assert capture.release_region_path == root / TABLE["release_region"].path
