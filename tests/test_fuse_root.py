"""The FUSE capture-kernel root (hvsim.fuse_root) against real simulated LPARs.

Most tests mount an LPAR with FUSE and use it the way an operator or a tool
would: from a shell (``cat``, ``echo ADDR SIZE > ...``, ``readelf``) or with
plain file I/O, and compare with what :class:`hvsim.Lpar` says in this
process. Every mount is undone by the fixtures, even when a test fails.
A few tests drive :class:`CaptureRoot` directly and need no FUSE.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hvsim import Lpar

try:
    from hvsim import fuse_root as fr
except ImportError as exc:  # libfuse3 (package fuse3) or mfusepy missing
    pytest.skip(f"FUSE support is unavailable: {exc}", allow_module_level=True)

_FUSE_MISSING = (
    "/dev/fuse is missing"
    if not os.path.exists("/dev/fuse")
    else "fusermount3 is missing (apt-get install fuse3)"
    if shutil.which("fusermount3") is None
    else ""
)

# (kernel byte order, page size): POWER6 big-endian with 64K pages, and a
# little-endian kernel with 4K pages.
BYTE_ORDERS = [("big", 65536), ("little", 4096)]
BYTE_ORDER_IDS = ["big-64k", "little-4k"]

PROJECT = Path(__file__).resolve().parent.parent


def needs_fuse(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a test as a FUSE test, skipped with the reason when FUSE is unavailable."""
    return pytest.mark.fuse(pytest.mark.skipif(bool(_FUSE_MISSING), reason=_FUSE_MISSING)(fn))


def _hvsim(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    return subprocess.run(
        [sys.executable, "-m", "hvsim", *args],
        capture_output=True,
        text=True,
        check=check,
        env=env,
        timeout=120,
    )


def _sh(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)


def _hvsim_mounts_under(base: Path) -> list[str]:
    prefix = str(base.resolve()) + "/"
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            point = fr._unescape_mountinfo(left.split()[4])
            if right.split()[0] == fr.FSTYPE and point.startswith(prefix):
                out.append(point)
    return out


def _force_unmount(root: str) -> None:
    """Unmount by every means (the fixtures' last resort), then end the daemon."""
    daemon = fr._read_pidfile(root)
    try:
        fr.umount(root)
    except Exception:
        subprocess.run(["fusermount3", "-u", "-z", root], capture_output=True, check=False)
    if daemon is not None and daemon.alive():
        os.kill(daemon.pid, signal.SIGKILL)


@pytest.fixture
def make_root(tmp_path: Path) -> Iterator[Callable[..., tuple[Lpar, Path]]]:
    """``make(endian, page_size)``: a crashed LPAR in capture, mounted; always unmounted."""
    count = 0

    def make(endian: str = "big", page_size: int = 65536) -> tuple[Lpar, Path]:
        nonlocal count
        count += 1
        lpar = Lpar.create(
            tmp_path / f"lpar{count}",
            memory="1G",
            cpus=2,
            endian=endian,
            page_size=page_size,
            seed=100 + count,
            boot=True,
        )
        assert lpar.crash() == "capture"
        root = tmp_path / f"root{count}"
        fr.mount(lpar.path, root)
        return lpar, root

    yield make
    leftover = _hvsim_mounts_under(tmp_path)
    for point in leftover:
        _force_unmount(point)
    assert _hvsim_mounts_under(tmp_path) == [], "a mount survived the cleanup"


def _plan_release(map_text: str, page_size: int, chunk: int = 64 << 20) -> list[tuple[int, int]]:
    """Writes that release the reserved rest and the scratch area exactly once each.

    Chunks start page-aligned (the last one of each area has what is left),
    and are issued from the top of memory down: the kernel frees one page past
    each range, and that page then always belongs to a range released before.
    """
    m = re.fullmatch(
        r"CPU:0x([0-9a-f]+)-0x([0-9a-f]+): HPTE:0x([0-9a-f]+)-0x([0-9a-f]+): "
        r"DUMP:0x([0-9a-f]+)-0x([0-9a-f]+), 0x([0-9a-f]+)-0x([0-9a-f]+):\n",
        map_text,
    )
    assert m is not None, map_text
    cpu_a, _cpu_n, _h_a, _h_n, dump_a, dump_n, rest_a, rest_n = (int(g, 16) for g in m.groups())
    areas = [(rest_a, rest_n), (cpu_a, dump_a + dump_n - cpu_a)]
    writes = []
    for start, size in areas:
        assert start % page_size == 0
        a = start
        while a < start + size:
            n = min(chunk, start + size - a)
            writes.append((a, n))
            a += n
    return sorted(writes, reverse=True)


def _tree(root: Path) -> dict[str, os.stat_result]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            out[str(p.relative_to(root))] = p.lstat()
    return out


# ----------------------------------------------------------------------- the tree


@needs_fuse
@pytest.mark.parametrize(("endian", "page_size"), BYTE_ORDERS, ids=BYTE_ORDER_IDS)
def test_tree_lists_expected_files(make_root: Any, endian: str, page_size: int) -> None:
    lpar, root = make_root(endian, page_size)
    tree = _tree(root)
    dt = lpar.device_tree()
    expected_files = {
        "proc/version": 0o444,
        "proc/meminfo": 0o444,
        "proc/sys/kernel/random/boot_id": 0o444,
        "proc/vmcore": 0o400,
        "sys/kernel/release_region": 0o600,
        "sys/kernel/phyp_dump_active": 0o600,
    }
    expected_files.update({f"sys/firmware/devicetree/base/{k}": 0o444 for k in dt})
    for rel, mode in expected_files.items():
        st = tree[rel]
        assert stat.S_ISREG(st.st_mode), rel
        assert stat.S_IMODE(st.st_mode) == mode, rel
        assert (st.st_uid, st.st_gid) == (0, 0), rel
    dirs = {k for k, st in tree.items() if stat.S_ISDIR(st.st_mode)}
    assert {"proc", "sys", "sys/kernel", "sys/firmware/devicetree/base/rtas"} <= dirs
    assert set(tree) == set(expected_files) | dirs | {"proc/device-tree"}
    assert stat.S_ISLNK(tree["proc/device-tree"].st_mode)
    assert os.readlink(root / "proc/device-tree") == "../sys/firmware/devicetree/base"
    assert tree["proc/vmcore"].st_size == lpar.vmcore_size()
    for rel in ("proc/version", "proc/meminfo", "sys/kernel/release_region"):
        assert tree[rel].st_size == len((root / rel).read_bytes()), rel
    # Property files hold the device tree's bytes, also through the symlink.
    for key, value in dt.items():
        assert (root / "proc/device-tree" / key).read_bytes() == value, key
    assert "rtas/ibm,dump-kernel" in dt and "rtas/ibm,kernel-dump" in dt
    sv = os.statvfs(root)
    assert sv.f_bsize == 4096 and sv.f_blocks == 0
    assert fr.is_mounted(root)
    assert fr.mount_info(root) is not None


@needs_fuse
def test_cat_gives_the_kernel_text(make_root: Any) -> None:
    lpar, root = make_root()
    res = _sh(f"cat {shlex.quote(str(root))}/sys/kernel/release_region")
    assert res.returncode == 0, res.stderr
    assert res.stdout == lpar.release_region_text()
    assert res.stdout.startswith("CPU:0x") and ", 0x10000000-0x" in res.stdout
    for rel, text in (
        ("proc/version", lpar.proc_version()),
        ("proc/meminfo", lpar.meminfo_text()),
        ("sys/kernel/phyp_dump_active", "1\n"),
    ):
        res = _sh(f"cat {shlex.quote(str(root / rel))}")
        assert (res.returncode, res.stdout) == (0, text), rel
    assert "Linux version 2.6.32-hvsim" in lpar.proc_version()


@needs_fuse
@pytest.mark.tools
@pytest.mark.parametrize(("endian", "page_size"), BYTE_ORDERS, ids=BYTE_ORDER_IDS)
def test_readelf_reads_vmcore(make_root: Any, endian: str, page_size: int) -> None:
    if shutil.which("readelf") is None:
        pytest.skip("readelf is missing (apt-get install binutils)")
    lpar, root = make_root(endian, page_size)
    res = subprocess.run(
        ["readelf", "-h", "-l", str(root / "proc/vmcore")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert res.stderr == ""
    assert "CORE (Core file)" in res.stdout
    assert f"{endian} endian" in res.stdout
    assert "PowerPC64" in res.stdout
    loads = re.findall(
        r"^\s+LOAD\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)", res.stdout, re.M
    )
    assert [int(paddr, 16) for _, _, paddr in loads] == [0, 0x10000000]
    assert re.search(r"^\s+NOTE\s", res.stdout, re.M)
    offset = int(loads[1][0], 16)
    with open(root / "proc/vmcore", "rb") as f:
        f.seek(offset)
        assert f.read(4096) == lpar.read_vmcore(offset, 4096)


@needs_fuse
@pytest.mark.parametrize(("endian", "page_size"), BYTE_ORDERS, ids=BYTE_ORDER_IDS)
def test_vmcore_bytes_equal_read_vmcore(make_root: Any, endian: str, page_size: int) -> None:
    lpar, root = make_root(endian, page_size)
    size = lpar.vmcore_size()
    layout = lpar.vmcore_layout()
    second = layout.segments[1].p_offset
    probes = [
        (0, 64),  # ELF header
        (0, 1 << 20),  # header, notes, first pages
        (layout.data_start - 100, 300),  # across the end of the headers
        (second - 5000, 10000),  # across the two PT_LOADs
        (second + (0x2000_0000 - 0x1000_0000) + 12345, 3 << 20),  # deep in reserved memory
        (size - 4096 * 3 - 17, 1 << 20),  # short read at the end
        (size - 1, 10),
    ]
    fd = os.open(root / "proc/vmcore", os.O_RDONLY)
    try:
        for offset, n in probes:
            got = os.pread(fd, n, offset)
            assert got == lpar.read_vmcore(offset, n), (hex(offset), n)
            assert len(got) == min(n, size - offset)
        assert os.pread(fd, 4096, size) == b""
        assert os.pread(fd, 4096, size + (1 << 30)) == b""
    finally:
        os.close(fd)
    # dd with 1 MiB blocks (the benchmark's access pattern) gets the same bytes.
    res = subprocess.run(
        ["dd", f"if={root / 'proc/vmcore'}", "bs=1M", "skip=300", "count=3", "status=none"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert res.stdout == lpar.read_vmcore(300 << 20, 3 << 20)


# ------------------------------------------------------------------------ release


@needs_fuse
@pytest.mark.parametrize(("endian", "page_size"), BYTE_ORDERS, ids=BYTE_ORDER_IDS)
def test_release_range_by_range_from_a_shell(make_root: Any, endian: str, page_size: int) -> None:
    """Done-when: release everything with echo from a shell; the LPAR ends re-registered."""
    lpar, root = make_root(endian, page_size)
    rr = root / "sys/kernel/release_region"
    vmcore = root / "proc/vmcore"
    map_text = rr.read_text()
    assert map_text == lpar.release_region_text()
    writes = _plan_release(map_text, page_size)
    assert len(writes) > 8
    for i, (addr, size) in enumerate(writes):
        assert lpar.state == "capture"
        res = _sh(f"echo {addr:#x} {size:#x} > {shlex.quote(str(rr))}")
        assert res.returncode == 0, (hex(addr), hex(size), res.stderr)
        if i < len(writes) - 1:
            # Still waiting: same map, the files stay; nothing below this range
            # (not yet "saved") was freed.
            assert rr.read_text() == map_text
            assert vmcore.exists()
            released = lpar.released_ranges()
            assert min(s for s, _ in released) == addr
            assert any(s <= addr and addr + size <= e for s, e in released)
            assert "vmcore" in os.listdir(root / "proc")
    # The last write completed the release: invalidated and registered again.
    assert lpar.state == "running"
    assert lpar.protected
    assert lpar.lost_ranges() == []
    assert not rr.exists() and not vmcore.exists()
    assert sorted(os.listdir(root / "proc")) == ["device-tree", "meminfo", "sys", "version"]
    assert os.listdir(root / "sys/kernel") == ["phyp_dump_active"]
    res = _sh(f"cat {shlex.quote(str(rr))}")
    assert res.returncode != 0 and "No such file or directory" in res.stderr
    # The device tree shown is the running kernel's, whatever it holds now.
    dt_root = root / "proc/device-tree"
    assert {str(p.relative_to(dt_root)) for p in dt_root.rglob("*") if p.is_file()} == set(
        lpar.device_tree()
    )


@needs_fuse
def test_reregistered_device_tree_has_no_dump_kernel(make_root: Any) -> None:
    lpar, root = make_root()
    for addr, size in _plan_release(lpar.release_region_text(), lpar.config.page_size):
        lpar.release(addr, size)
    assert lpar.state == "running"
    assert not (root / "proc/device-tree/rtas/ibm,dump-kernel").exists()


@needs_fuse
def test_junk_write_fails_with_einval_and_changes_nothing(make_root: Any) -> None:
    lpar, root = make_root()
    rr = root / "sys/kernel/release_region"
    before = (lpar.status()["counters"], lpar.released_ranges(), rr.read_text())
    target = shlex.quote(str(rr))
    for junk in ("junk", "0x20000000", "zz 10", "0x20000000,0x10000"):
        # bash and coreutils print the errno; dash (sh) says "I/O error" for any
        # failed write, so from sh only the failure itself is checked.
        for shell in ("bash", "sh"):
            res = subprocess.run(
                [shell, "-c", f"echo {shlex.quote(junk)} > {target}"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert res.returncode != 0, (shell, junk)
            if shell == "bash":
                assert "write error: Invalid argument" in res.stderr, (junk, res.stderr)
        res = _sh(f"/bin/echo {shlex.quote(junk)} > {target}")
        assert res.returncode != 0 and "Invalid argument" in res.stderr, (junk, res.stderr)
    with open(rr, "wb", buffering=0) as f, pytest.raises(OSError) as info:
        f.write(b"not a number\n")
    assert info.value.errno == errno.EINVAL
    assert (lpar.status()["counters"], lpar.released_ranges(), rr.read_text()) == before
    assert lpar.state == "capture"


@needs_fuse
def test_release_by_another_process_is_seen(make_root: Any) -> None:
    lpar, root = make_root()
    vmcore = root / "proc/vmcore"
    plan = _plan_release(lpar.release_region_text(), lpar.config.page_size)
    addr, size = 0x20000000, 64 << 20
    assert (addr, size) in plan
    seg = lpar.vmcore_layout().segments[1]
    offset = seg.p_offset + (addr - seg.p_paddr)
    with open(vmcore, "rb") as f:
        f.seek(offset)
        before = f.read(1 << 20)
        assert before == lpar.read_vmcore(offset, 1 << 20)
        total_before = int((root / "proc/meminfo").read_text().split()[1])
        # Another process (the hvsim command) releases a range while the file is open.
        res = _hvsim("release", lpar.path, f"{addr:#x}", f"{size:#x}")
        assert "released" in res.stdout
        f.seek(offset)
        after = f.read(1 << 20)
    assert after != before, "released memory must read as reused"
    assert after == Lpar.open(lpar.path).read_vmcore(offset, 1 << 20)
    assert int((root / "proc/meminfo").read_text().split()[1]) > total_before
    # This process (not the daemon) releases the rest: the mount follows.
    for a, n in plan:
        assert vmcore.exists()
        if (a, n) != (addr, size):
            lpar.release(a, n)
    assert lpar.state == "running"
    assert not vmcore.exists()
    assert not (root / "sys/kernel/release_region").exists()


@needs_fuse
def test_dump_gone_while_release_region_is_open(make_root: Any) -> None:
    lpar, root = make_root()
    plan = _plan_release(lpar.release_region_text(), lpar.config.page_size)
    with (
        open(root / "sys/kernel/release_region", "wb", buffering=0) as rr,
        open(root / "proc/vmcore", "rb", buffering=0) as vmcore,
    ):
        assert len(vmcore.read(4096)) == 4096
        for addr, size in plan:
            lpar.release(addr, size)
        assert lpar.state == "running"
        with pytest.raises(OSError) as info:
            rr.write(b"0x10000000 0x10000\n")
        assert info.value.errno == errno.ENODEV  # as kernfs for a removed attribute
        with pytest.raises(OSError) as info:
            vmcore.read(4096)
        assert info.value.errno == errno.EIO  # as procfs for a removed entry


@needs_fuse
def test_kernel_files_refuse_changes(make_root: Any) -> None:
    lpar, root = make_root()
    q = shlex.quote
    for rel in ("proc/version", "proc/vmcore", "sys/kernel/phyp_dump_active"):
        res = _sh(f"echo 1 > {q(str(root / rel))}")
        assert "Permission denied" in res.stderr, rel
    assert "Permission denied" in _sh(f"touch {q(str(root / 'proc/new'))}").stderr
    assert "Permission denied" in _sh(f"mkdir {q(str(root / 'sys/new'))}").stderr
    assert "not permitted" in _sh(f"rm -f {q(str(root / 'proc/version'))}").stderr
    assert "not permitted" in _sh(f"chmod 666 {q(str(root / 'proc/vmcore'))}").stderr
    # `>` truncates before writing: release_region accepts it (sysfs does).
    os.truncate(root / "sys/kernel/release_region", 0)
    assert (root / "proc/version").read_text() == lpar.proc_version()


@needs_fuse
def test_root_follows_the_life_cycle(make_root: Any) -> None:
    lpar, root = make_root()
    assert lpar.crash(reboot=False) == "crashed"
    assert os.listdir(root) == []  # no kernel runs
    assert not (root / "proc/version").exists()
    assert lpar.boot() == "capture"  # the dump still waits: capture again
    assert sorted(os.listdir(root)) == ["proc", "sys"]
    assert (root / "sys/kernel/release_region").read_text() == lpar.release_region_text()
    assert (root / "proc/vmcore").stat().st_size == lpar.vmcore_size()


@needs_fuse
def test_mount_without_a_dump_waiting(tmp_path: Path) -> None:
    lpar = Lpar.create(tmp_path / "lpar", memory="1G", seed=8, boot=True)
    crashed = Lpar.create(tmp_path / "crashed", memory="1G", seed=8, boot=True)
    crashed.crash(reboot=False)
    try:
        fr.mount(lpar.path, tmp_path / "root")
        fr.mount(crashed.path, tmp_path / "croot")
        root = tmp_path / "root"
        assert os.listdir(tmp_path / "croot") == []
        assert sorted(os.listdir(root / "proc")) == ["device-tree", "meminfo", "sys", "version"]
        assert os.listdir(root / "sys/kernel") == ["phyp_dump_active"]
        assert "ibm,dump-kernel" not in os.listdir(root / "proc/device-tree/rtas")
        assert (root / "proc/device-tree/rtas/ibm,configure-kernel-dump").exists()
        assert os.stat(root / "sys").st_nlink == 4  # firmware and kernel
        assert os.stat(root / "proc").st_nlink == 3  # sys; device-tree is a symlink
        # The hvsim command crashes the LPAR: the capture kernel's files appear.
        _hvsim("crash", lpar.path)
        assert (root / "proc/vmcore").stat().st_size == lpar.vmcore_size()
        assert (root / "sys/kernel/release_region").read_text() == lpar.release_region_text()
    finally:
        for point in _hvsim_mounts_under(tmp_path):
            _force_unmount(point)


# ------------------------------------------------------------- mount and umount


@needs_fuse
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_unmounts_cleanly(make_root: Any, sig: signal.Signals) -> None:
    _lpar, root = make_root()
    daemon = fr._read_pidfile(str(root))
    assert daemon is not None and daemon.alive()
    child = fr._CHILDREN[daemon.pid]
    os.kill(daemon.pid, sig)
    assert child.wait(timeout=20) == 0
    assert not fr.is_mounted(root)
    assert not fr._side_file(str(root), "pid").exists()
    assert "Traceback" not in fr._side_file(str(root), "log").read_text()
    assert os.listdir(root) == []  # the bare mount point again


@needs_fuse
def test_umount_clears_a_dead_daemons_stale_mount(make_root: Any) -> None:
    _lpar, root = make_root()
    daemon = fr._read_pidfile(str(root))
    assert daemon is not None
    fd = os.open(root / "proc/version", os.O_RDONLY)  # keeps the mount busy
    try:
        os.kill(daemon.pid, signal.SIGKILL)
        fr._CHILDREN[daemon.pid].wait(timeout=20)
        with pytest.raises(OSError) as info:
            os.stat(root / "proc")
        assert info.value.errno == errno.ENOTCONN
        assert fr.is_mounted(root)
        fr.umount(root)  # busy and stale: detached lazily
        assert not fr.is_mounted(root)
        assert os.listdir(root) == []
    finally:
        # The kernel closes the fd, but its FUSE flush fails: the daemon is gone.
        with contextlib.suppress(OSError):
            os.close(fd)
    with pytest.raises(fr.HvdumpError, match="not mounted"):
        fr.umount(root)


@needs_fuse
def test_umount_waits_for_the_daemon(make_root: Any) -> None:
    _lpar, root = make_root()
    daemon = fr._read_pidfile(str(root))
    assert daemon is not None
    fr.umount(root)
    assert not daemon.alive()
    assert not fr.is_mounted(root)
    assert not fr._side_file(str(root), "pid").exists()
    assert not fr._side_file(str(root), "log").exists()  # nothing was logged


@needs_fuse
def test_busy_root_with_live_daemon_is_not_unmounted(make_root: Any) -> None:
    _lpar, root = make_root()
    with open(root / "proc/vmcore", "rb"):
        with pytest.raises(fr.HvdumpError, match="cannot unmount"):
            fr.umount(root)
        assert fr.is_mounted(root)
        assert (root / "proc/version").exists()  # still served
    fr.umount(root)
    assert not fr.is_mounted(root)


@needs_fuse
def test_hvsim_command_mounts_and_unmounts(tmp_path: Path) -> None:
    lpar = Lpar.create(tmp_path / "lpar", memory="1G", endian="little", seed=5, boot=True)
    lpar.crash()
    root = tmp_path / "new" / "root"
    try:
        res = _hvsim("mount", lpar.path, str(root))
        assert "hvsim umount" in res.stdout
        assert stat.S_IMODE(os.stat(root.parent / ".root.hvsim-fuse.pid").st_mode) == 0o600
        assert fr.is_mounted(root)
        assert (root / "sys/kernel/release_region").read_text() == lpar.release_region_text()
        again = _hvsim("mount", lpar.path, str(root), check=False)
        assert again.returncode != 0 and "already mounted" in again.stderr
        _hvsim("umount", str(root))
        assert not fr.is_mounted(root)
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o700  # created 0700
        res = _hvsim("umount", str(root), check=False)
        assert res.returncode != 0 and "not mounted" in res.stderr
    finally:
        for point in _hvsim_mounts_under(tmp_path):
            _force_unmount(point)


@needs_fuse
def test_foreground_mount_ends_on_ctrl_c(tmp_path: Path) -> None:
    lpar = Lpar.create(tmp_path / "lpar", memory="1G", seed=6, boot=True)
    lpar.crash()
    root = tmp_path / "root"
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hvsim", "mount", "--foreground", lpar.path, str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while not fr.is_mounted(root):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no mount within 30 s"
            time.sleep(0.02)
        assert (root / "proc/vmcore").stat().st_size == lpar.vmcore_size()
        daemon = fr._read_pidfile(str(root))
        assert daemon is not None and daemon.pid == proc.pid
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        assert not fr.is_mounted(root)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for point in _hvsim_mounts_under(tmp_path):
            _force_unmount(point)


@needs_fuse
def test_mount_of_a_missing_lpar_fails_in_the_caller(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with pytest.raises(fr.HvdumpError):
        fr.mount(tmp_path / "no-such-lpar", root)
    assert not fr.is_mounted(root)


def test_mount_help_teaches() -> None:
    res = _hvsim("mount", "--help")
    assert "echo 0x10000000 0x1000000 > ROOT/sys/kernel/release_region" in res.stdout
    for word in ("proc/vmcore", "device-tree", "phyp_dump_active", "hvsim umount ROOT"):
        assert word in res.stdout
    assert "Transport endpoint is not connected" in _hvsim("umount", "--help").stdout


# ------------------------------------------------- the operations, without FUSE


class _Fi:
    """The fields of fuse_file_info that CaptureRoot uses."""

    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.fh = 0
        self.direct_io = 0
        self.keep_cache = 1


def test_operations_map_errors_without_fuse(tmp_path: Path) -> None:
    lpar = Lpar.create(tmp_path / "lpar", memory="1G", seed=9, boot=True)
    lpar.crash()
    ops = fr.CaptureRoot(lpar)
    fi = _Fi(os.O_WRONLY | os.O_TRUNC)
    assert ops.open("/sys/kernel/release_region", fi) == 0
    assert fi.direct_io == 1 and fi.keep_cache == 0
    with pytest.raises(OSError) as info:
        ops.write("/sys/kernel/release_region", b"junk\n", 0, fi)
    assert info.value.errno == errno.EINVAL
    assert ops.write("/sys/kernel/release_region", b"0x3c000000 0x10000\n", 0, fi) == 19
    assert lpar.released_ranges()[0][0] == 0x3C000000
    ro = _Fi(os.O_RDONLY)
    ops.open("/proc/vmcore", ro)
    assert ops.read("/proc/vmcore", 64, 0, ro) == lpar.read_vmcore(0, 64)
    for path, flags, code in (
        ("/proc/vmcore", os.O_RDWR, errno.EACCES),
        ("/proc", os.O_RDONLY, errno.EISDIR),
        ("/proc/nothing", os.O_RDONLY, errno.ENOENT),
    ):
        with pytest.raises(OSError) as info:
            ops.open(path, _Fi(flags))
        assert info.value.errno == code, path
    ops.release("/proc/vmcore", ro)
    with pytest.raises(OSError) as info:
        ops.read("/proc/vmcore", 64, 0, ro)
    assert info.value.errno == errno.EBADF
    assert ops.getattr("/proc/vmcore")["st_blksize"] == 1 << 20


def test_mountinfo_unescape_and_pidfile_names() -> None:
    assert fr._unescape_mountinfo(r"/tmp/a\040b\011c\134d") == "/tmp/a b\tc\\d"
    assert fr._unescape_mountinfo(r"/x\04") == r"/x\04"
    assert fr._side_file("/tmp/x/root", "pid") == Path("/tmp/x/.root.hvsim-fuse.pid")
    assert fr._fuse_option_value("hvsim:/a,b\\c") == "hvsim:/a\\,b\\\\c"
    assert fr.tune_malloc() in (True, False)


def test_dead_pid_is_not_alive() -> None:
    proc = subprocess.Popen(["true"])
    start = fr._proc_start_time(proc.pid)
    assert start is not None or proc.poll() is not None
    proc.wait()
    assert fr._proc_start_time(proc.pid) is None
    me = fr._Daemon(os.getpid(), fr._proc_start_time(os.getpid()) or -1)
    assert me.alive()
    assert not fr._Daemon(os.getpid(), me.start_time + 1).alive()  # pid reused later


@needs_fuse
def test_boot_id_changes_with_each_boot_and_meminfo_grows_exactly(make_root: Any) -> None:
    lpar, root = make_root()
    boot_id = root / "proc/sys/kernel/random/boot_id"
    first = boot_id.read_text()
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\n", first
    )
    assert boot_id.read_text() == first

    def mem_total() -> int:
        line = next(
            x for x in (root / "proc/meminfo").read_text().splitlines() if x.startswith("MemTotal:")
        )
        return int(line.split()[1]) * 1024

    before = mem_total()
    page = lpar.config.page_size
    start = lpar.release_map().reserved.addr + 16 * page
    lpar.release(start, 4 * page)
    # Linux adds each freed page to totalram_pages; faithful mode frees one page more.
    freed = 5 if lpar.config.quirks == "faithful" else 4
    assert mem_total() - before == freed * page
    lpar.reboot()
    assert boot_id.read_text() != first
