"""fadump end to end on QEMU's PAPR firmware, with hvdump inside the real capture kernel.

One run (:func:`run_guest`) boots the guest kernel of :mod:`tests.firmware_parts`
under ``qemu-system-ppc64 -M pseries`` (TCG, 2 GiB, 2 CPUs, ``fadump=on``),
hash or radix, with one initramfs whose ``/init`` (:data:`INIT`) plays every
part, told apart by ``/proc/vmcore`` and a step file on the dump disk:

1. **production**: loads two modules, starts named processes blocked in
   different ways, prints what the host compares against (``HVTEST-`` lines as
   in :mod:`tests.real_kernel`), and crashes: sysrq first;
2. **capture** (QEMU's memory-preserving reset): ``hvdump status``, then
   Debian 13's ``makedumpfile -l -d 31`` and ``-l -d 1`` and ``hvdump collect
   --compress lzo --release never`` at ``-d 31`` and ``-d 1`` (first capture
   only), then ``hvdump collect`` to the dump disk (the second capture:
   ``hvdump service run``, the capture-boot service's entry point, with its
   configuration file), which releases the memory with ``release_mem`` and
   re-registers;
3. the capture kernel, now in production again, crashes the second way: an oops
   (lkdtm ``EXCEPTION``, ``panic_on_oops``) on CPU 1; the next capture boot
   collects that dump too and powers off.

The host side attaches ``gdb-multiarch`` to QEMU's gdbstub with a breakpoint on
``crash_fadump``: at each panic, before the firmware is called, QEMU writes
the whole guest with ``dump-guest-memory`` (the reference image drgn reads
directly), then the guest goes on. The console is timestamped by the host as it
arrives, for the time from panic to production. The dump disk (ext4) is read
back with ``debugfs``, without mounting.

Run by hand: ``python -m tests.real_firmware OUT_DIR [--mmu hash|radix]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.firmware_parts import (
    PYTHON,
    Kernel,
    Qemu,
    Userland,
    build_kernel,
    cache_dir,
    fetch_qemu,
    fetch_userland,
)
from tests.real_kernel import PANIC_CPU, START_PROCESSES, GuestInfo, parse_console, write_cpio

__all__ = [
    "CPU_MODELS",
    "FIXTURES",
    "INIT",
    "Capture",
    "FirmwareRun",
    "Parts",
    "build_initramfs",
    "fetch_parts",
    "parse_captures",
    "run_guest",
]

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "data" / "qemu-fadump"
"""QEMU's structures for one crash per MMU (:func:`save_fixtures`), committed."""
CPU_MODELS = {"hash": "POWER9", "radix": "POWER9"}
"""POWER9 either way; ``disable_radix`` on the command line makes it hash."""
MEMORY = "2G"
BOOT_MEMORY = "512M"
RODATA_MODULE = "dummy"
RODATA_SECTION = ".rodata.str1.8"
"""A module section with no relocations: the guest's bytes equal the .ko's."""
BREAK_AT = "rtas_fadump_trigger"
"""Where the crashing CPU stops for the reference image: panic() (or the oops path) has
run and ``crash_fadump()`` filled the crash info header; the firmware is called next.
Reached through a function pointer (``fw_dump.ops``), once per crash, only when
fadump is registered."""

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug
mkdir -p /out /tmp /root
mount -t ext4 /dev/vda /out || { echo "HVFW-ERROR the dump disk did not mount"; poweroff -f; }
echo 0 > /proc/sys/kernel/kptr_restrict
up() { cut -d' ' -f1 /proc/uptime; }
timed() {  # timed NAME COMMAND...: runs it and prints its wall time
    name=$1; shift
    t0=$(up); "$@"; rc=$?; echo "HVFW-TIME $name $t0 $(up) $rc"
}

production() {  # production CRASH WAY
    echo "HVFW-STAGE production $1"
    echo "HVFW-REGISTERED $(cat /sys/kernel/fadump/registered)"
    for m in /lib/modules/*.ko; do insmod "$m"; done
    echo "HVTEST-UNAME $(uname -r)"
    echo "HVTEST-VMCOREINFO $(cat /sys/kernel/vmcoreinfo)"
    while read -r line; do echo "HVTEST-MODULE $line"; done < /proc/modules
    echo "HVTEST-RODATA $(cat /sys/module/@MODULE@/sections/@SECTION@)"
    rm -f /tmp/fifo /tmp/pipe; mkfifo /tmp/fifo /tmp/pipe
@PROCESSES@
    if [ "$1" = 2 ]; then
        # back in production after the release, the kernel uses the freed memory
        mb=$(awk '/MemAvailable/ { print int($2 * 0.85 / 1024) }' /proc/meminfo)
        mkdir -p /fill; mount -t tmpfs -o size=${mb}m tmpfs /fill
        dd if=/dev/zero of=/fill/zero bs=1M count="$mb" 2>/dev/null
        echo "HVFW-FILLED $mb MiB"; rm /fill/zero; umount /fill
    fi
    echo "$1" > /out/step; sync
    sleep 1
    echo "HVFW-PANIC $1 $2"
    if [ "$2" = sysrq ]; then
        taskset 1 sh -c 'echo c > /proc/sysrq-trigger'
    else
        echo 1 > /proc/sys/kernel/panic_on_oops
        taskset @MASK@ sh -c 'echo @OOPS@ > /sys/kernel/debug/provoke-crash/DIRECT'
    fi
    echo "HVFW-ERROR still running after the crash"; poweroff -f
}

capture() {  # capture DUMP
    echo "HVFW-STAGE capture $1 $(up)"
    for p in ibm,kernel-dump ibm,configure-kernel-dump-sizes ibm,configure-kernel-dump-version; do
        echo "HVFW-DT $p $(od -An -tx1 -v /proc/device-tree/rtas/$p | tr -d ' \n')"
    done
    echo "HVFW-MEMTOTAL before $(grep MemTotal /proc/meminfo)"
    timed hvdump-status hvdump status
    if [ "$1" = 1 ]; then
        # the head-to-head, same codec (LZO), nothing released yet
        timed makedumpfile-d31 makedumpfile -l -d 31 /proc/vmcore /out/makedumpfile-d31.kdump
        timed makedumpfile-d1 makedumpfile -l -d 1 /proc/vmcore /out/makedumpfile-d1.kdump
        timed hvdump-kdump31 hvdump collect --no-progress --compress lzo --release never \
            -d 31 -o /out/kdump31-1
        timed hvdump-kdump hvdump collect --no-progress --compress lzo --release never \
            -o /out/kdump-1
        ls -ln /out
    fi
    # the dump drgn reads (ELF: see docs/real-firmware.md), released and re-registered;
    # the second by the capture-boot service's entry point, as its unit would run it
    if [ "$1" = 1 ]; then
        timed hvdump-collect hvdump collect --no-progress --format elf -o /out/dump-$1
    else
        mkdir -p /etc/hvdump
        printf '[collect]\noutput = "/out/service-%s"\nformat = "elf"\nthreads = 1\n' "$1" \
            > /etc/hvdump/hvdump.toml
        printf '[service]\nprogress_interval = 5\n' >> /etc/hvdump/hvdump.toml
        timed hvdump-collect hvdump service run
    fi
    ls -lnR /out/dump-$1 /out/service-$1 2>/dev/null
    echo "HVFW-MEMTOTAL after $(grep MemTotal /proc/meminfo)"
    echo "HVFW-HWCORRUPTED $(grep HardwareCorrupted /proc/meminfo)"
    echo "HVFW-REGISTERED $(cat /sys/kernel/fadump/registered)"
    sync
}

bare() {  # bare DUMP: what a hand-written script does with fadump's sysfs files
    echo "HVFW-STAGE capture $1 $(up)"
    echo 1 > /sys/kernel/fadump/release_mem; echo "HVFW-RELEASED $?"
    echo 1 > /sys/kernel/fadump/registered
    echo "HVFW-REGISTERED $(cat /sys/kernel/fadump/registered)"
}

if [ -e /proc/vmcore ]; then
    step=$(cat /out/step 2>/dev/null)
    @CAPTURE@ "$step"
    if [ "$step" = 1 ]; then
        production 2 oops
    fi
    echo "HVFW-DONE"
    umount /out
    poweroff -f
elif [ "$(cat /out/step 2>/dev/null)" = 2 ]; then
    echo "HVFW-NO-DUMP the second crash left no dump"; umount /out; poweroff -f
else
    production 1 sysrq
fi
sleep 100000
"""


@dataclass(frozen=True)
class Parts:
    qemu: Qemu
    kernel: Kernel
    user: Userland
    wheel: Path
    """hvdump's ppc64le wheel from ``make dist`` (codec libraries bundled)."""
    makedumpfile: Path
    """Debian 13's makedumpfile (1.7.6): Debian 12's 1.7.2 cannot read 6.12's struct pages."""


def build_wheel() -> Path:
    """hvdump's ppc64le wheel, built as ``make dist`` builds it (the guest installs it)."""
    sys.path.insert(0, str(REPO))
    from scripts.build_dist import build

    (wheel,) = (p for p in build(cache_dir() / "dist", ("ppc64le",)) if p.suffix == ".whl")
    return wheel


def fetch_parts() -> Parts:
    from tests.makedumpfile_ppc64 import fetch_makedumpfile

    user = fetch_userland()
    return Parts(fetch_qemu(), build_kernel(), user, build_wheel(), fetch_makedumpfile())


_STDLIB_SKIP = {"test", "idlelib", "tkinter", "ensurepip", "lib2to3", "pydoc_data", "turtledemo"}


def _copy_libs(src: Path, dest: Path) -> None:
    """Shared libraries (files and symlinks) of one directory, not its subdirectories."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if ".so" in p.name and (p.is_symlink() or p.is_file()):
            shutil.copy2(p, dest / p.name, follow_symlinks=False)


OOPS = {"radix": "EXCEPTION", "hash": "BUG"}
"""The lkdtm crash of the second kernel, by MMU: a NULL write (page fault) on radix, a
``BUG()`` on hash, where an oops from the hash page-fault path cannot reach the firmware
on 6.12 (``crash_fadump`` from ``oops_end`` with interrupts on hits ``BUG_ON(!irqs_disabled())``
in ``rtas_call_unlocked``, the kernel hangs and no dump is taken: docs/real-firmware.md)."""


def build_initramfs(parts: Parts, out: Path, mmu: str = "radix", bare: bool = False) -> Path:
    """A newc cpio: busybox, Python with hvdump (from its ppc64le wheel), makedumpfile,
    the two modules and :data:`INIT`. Python's files are compiled on the host (the same
    3.11 bytecode), so the guest never compiles under emulation."""
    oops = OOPS[mmu]
    tree = out.parent / (out.name + ".d")
    shutil.rmtree(tree, ignore_errors=True)
    root = parts.user.root
    for d in ("bin", "proc", "sys", "dev", "tmp", "lib/modules", "usr/bin", "usr/sbin", "out"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(root / "bin/busybox", tree / "bin/busybox")
    for arch_dir in ("lib/powerpc64le-linux-gnu", "usr/lib/powerpc64le-linux-gnu"):
        _copy_libs(root / arch_dir, tree / arch_dir)
    shutil.copytree(root / "lib64", tree / "lib64", symlinks=True)
    shutil.copy2(root / f"usr/bin/{PYTHON}", tree / f"usr/bin/{PYTHON}")
    shutil.copy2(parts.makedumpfile, tree / "usr/bin/makedumpfile")
    shutil.copytree(
        root / f"usr/lib/{PYTHON}",
        tree / f"usr/lib/{PYTHON}",
        symlinks=True,
        ignore=lambda d, names: [n for n in names if n in _STDLIB_SKIP],
    )
    dist = tree / "usr/lib/python3/dist-packages"
    dist.mkdir(parents=True)
    for p in (root / "usr/lib/python3/dist-packages").glob("_cffi_backend*.so"):
        shutil.copy2(p, dist / p.name)
    # hvdump as a user installs it: the ppc64le wheel of make dist, its extension
    # loading the codec libraries it bundles (hvsim, the simulator, left out).
    pkg = tree / "opt/hvdump"
    with zipfile.ZipFile(parts.wheel) as z:
        members = [n for n in z.namelist() if not n.startswith("hvsim/")]
        z.extractall(pkg, members)
    for so in pkg.rglob("*.so*"):
        so.chmod(0o755)
    for lib in (tree / f"usr/lib/{PYTHON}", pkg):
        subprocess.run(
            [
                sys.executable, "-m", "compileall", "-q", "-j0",
                "--invalidation-mode", "unchecked-hash",
                "-s", str(tree), "-p", "/", str(lib),
            ],
            check=False,  # a few stdlib test helpers do not compile; they are not imported
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
    wrapper = tree / "usr/bin/hvdump"
    wrapper.write_text(
        f"#!/usr/bin/{PYTHON}\nimport sys\nsys.path.insert(0, '/opt/hvdump')\n"
        "from drgn_hvdump.cli import main\nsys.exit(main())\n"
    )
    wrapper.chmod(0o755)
    for name, path in parts.kernel.modules.items():
        shutil.copy2(path, tree / "lib/modules" / f"{name}.ko")
    init = tree / "init"
    script = INIT.replace("@MODULE@", RODATA_MODULE).replace("@SECTION@", RODATA_SECTION)
    script = script.replace("@CAPTURE@", "bare" if bare else "capture")
    script = script.replace("@PROCESSES@", START_PROCESSES)
    init.write_text(script.replace("@MASK@", f"{1 << PANIC_CPU:x}").replace("@OOPS@", oops))
    init.chmod(0o755)
    return write_cpio(tree, out)


def make_disk(path: Path, size: str = "8G") -> Path:
    """A sparse ext4 image for the guest's dumps."""
    path.unlink(missing_ok=True)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=0", str(path), size],
        check=True,
    )
    return path


def read_disk(image: Path, dest: Path) -> list[str]:
    """Copy every top-level entry of the guest's disk into ``dest`` (no mount: debugfs)."""
    dest.mkdir(parents=True, exist_ok=True)
    listing = subprocess.run(
        ["debugfs", "-R", "ls -p /", str(image)], capture_output=True, text=True, check=True
    ).stdout
    names = [f.split("/")[5] for f in listing.splitlines() if f.count("/") >= 6]
    names = [n for n in names if n not in (".", "..", "lost+found")]
    if names:
        subprocess.run(
            ["debugfs", "-R", f"rdump {' '.join('/' + n for n in names)} {dest}", str(image)],
            check=True,
            capture_output=True,
        )
    return names


@dataclass
class Capture:
    """One capture boot as its console told it."""

    dump: int
    times: dict[str, float] = field(default_factory=dict)
    """Wall seconds of each timed step (``hvdump-collect``, ``makedumpfile-d31``...)."""
    rcs: dict[str, int] = field(default_factory=dict)
    memtotal_kb: dict[str, int] = field(default_factory=dict)
    registered: str = ""
    device_tree: dict[str, bytes] = field(default_factory=dict)
    """``/proc/device-tree/rtas`` properties the capture kernel booted with."""
    boot_s: float = 0.0
    """The capture kernel's uptime when /init started."""
    text: str = ""


@dataclass
class FirmwareRun:
    mmu: str
    work: Path
    console: str
    infos: dict[int, GuestInfo]
    """What each production stage printed, by crash number."""
    registered: dict[int, str]
    captures: dict[int, Capture]
    images: dict[int, Path]
    """QEMU's image of the guest at each crash (:data:`BREAK_AT`), by crash number."""
    saved: dict[int, Path]
    """:data:`SAVE_AREA` bytes from the reserved area's start as the capture kernel found
    them (QEMU's CPU state data), by dump number."""
    files: Path
    """The dump disk's contents, copied out."""
    seen: dict[str, float]
    """Host time (seconds since QEMU started) a console marker was first seen."""
    total_s: float
    hung: bool = False
    """The console stayed silent after the second panic (``quiet_after_second_crash``)."""


def _stages(console: str) -> list[tuple[str, int, str]]:
    """(kind, number, text) of each ``HVFW-STAGE`` section of the console."""
    marks = list(re.finditer(r"HVFW-STAGE (production|capture) (\d+)", console))
    out = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(console)
        out.append((m.group(1), int(m.group(2)), console[m.start() : end]))
    return out


def parse_captures(console: str) -> dict[int, Capture]:
    caps: dict[int, Capture] = {}
    for kind, n, text in _stages(console):
        if kind != "capture":
            continue
        cap = Capture(n, text=text)
        if m := re.match(r"HVFW-STAGE capture \d+ ([\d.]+)", text):
            cap.boot_s = float(m.group(1))
        for m in re.finditer(r"HVFW-TIME (\S+) ([\d.]+) ([\d.]+) (\d+)", text):
            cap.times[m.group(1)] = float(m.group(3)) - float(m.group(2))
            cap.rcs[m.group(1)] = int(m.group(4))
        for m in re.finditer(r"HVFW-MEMTOTAL (\w+) MemTotal:\s+(\d+) kB", text):
            cap.memtotal_kb[m.group(1)] = int(m.group(2))
        if m := re.search(r"HVFW-REGISTERED (\d)", text):
            cap.registered = m.group(1)
        for m in re.finditer(r"HVFW-DT (\S+) ([0-9a-f]*)", text):
            cap.device_tree[m.group(1)] = bytes.fromhex(m.group(2))
        caps[n] = cap
    return caps


def _size(text: str) -> int:
    return int(text[:-1]) << {"K": 10, "M": 20, "G": 30}[text[-1]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(vmlinux: Path, name: str, local: bool) -> int:
    """Where a call enters function ``name``: through a pointer at the global entry, by a
    direct call at ELFv2's local entry point (past the TOC setup)."""
    out = subprocess.run(
        ["readelf", "-sW", str(vmlinux)], capture_output=True, text=True, check=True
    )
    for line in out.stdout.splitlines():
        f = line.split()
        if len(f) >= 8 and f[-1] == name and f[3] == "FUNC":
            m = re.search(r"<localentry>: (\d+)", line)
            return int(f[1], 16) + (int(m.group(1)) if m and local else 0)
    raise RuntimeError(f"{vmlinux}: no function {name}")


SAVE_AREA = 0x10000
"""Bytes saved from the reserved area's start when the capture kernel releases it: the
CPU state data as QEMU's firmware wrote it (and the HPTE section's start)."""

_GDB_SCRIPT = """\
set pagination off
set confirm off
set architecture powerpc:common64
set endian little
target remote 127.0.0.1:{port}
break *{crash:#x}
break *{release:#x}
python
import gdb
n = 0
while True:
    try:
        gdb.execute("continue")
    except gdb.error:
        break
    if not gdb.selected_inferior().threads():  # QEMU exited
        break
    if int(gdb.parse_and_eval("$pc")) == {release:#x}:
        gdb.execute('monitor pmemsave {area:#x} {size:#x} "{out}/saved-%d.bin"' % n)
        print("HVFW-GDB saved the reserved area of dump %d" % n, flush=True)
        continue
    n += 1
    gdb.execute("monitor dump-guest-memory {out}/guest-%d.core" % n)
    print("HVFW-GDB dumped %d" % n, flush=True)
end
"""

_MARKERS = (
    "HVFW-STAGE production 1",
    "Kernel panic - not syncing",
    "HVFW-STAGE capture 1",
    "HVFW-TIME hvdump-collect",
    "HVFW-STAGE production 2",
    "HVFW-PANIC 2",
    "HVFW-STAGE capture 2",
    "HVFW-DONE",
    "HVFW-NO-DUMP",
)


def run_guest(
    parts: Parts,
    initrd: Path,
    work: Path,
    mmu: str,
    timeout: float = 1500.0,
    quiet_after_second_crash: float | None = None,
) -> FirmwareRun:
    """Boot, crash, capture, crash again, capture again; the whole run's record.

    With ``quiet_after_second_crash``, a console silent that long after the second
    panic ends the run (``hung`` set) instead of waiting for ``timeout``: the bare
    script's run, where the second boot may hang on memory Linux's bug let be
    reused."""
    work.mkdir(parents=True, exist_ok=True)
    console = work / "console.txt"
    console.unlink(missing_ok=True)
    disk = make_disk(work / "disk.img")
    port = _free_port()
    append = f"console=hvc0 fadump=on crashkernel={BOOT_MEMORY}"
    if mmu == "hash":
        append += " disable_radix"
    cmd = [
        *parts.qemu.command(),
        "-M", "pseries", "-cpu", CPU_MODELS[mmu], "-m", MEMORY, "-smp", "2",
        # Node 0 as large as boot memory: QEMU makes the RMA all of node 0, and the
        # capture boot's firmware and prom_init allocate from the RMA's top; with one
        # 2 GiB node that is the crashed kernel's memory above boot memory (CPU 0's
        # per-CPU area: drgn's crashed_thread() read garbage). PowerVM's RMA is
        # within boot memory, which Linux requires to be at least the RMA.
        "-object", f"memory-backend-ram,id=m0,size={BOOT_MEMORY}",
        "-object", f"memory-backend-ram,id=m1,size={_size(MEMORY) - _size(BOOT_MEMORY) >> 20}M",
        "-numa", "node,nodeid=0,cpus=0-1,memdev=m0",
        "-numa", "node,nodeid=1,memdev=m1",
        "-nographic", "-nodefaults", "-S",
        "-chardev", f"file,id=con,path={console}",
        "-device", "spapr-vty,chardev=con",
        "-kernel", str(parts.kernel.vmlinux), "-initrd", str(initrd),
        "-append", append,
        "-drive", f"file={disk},format=raw,if=virtio",
        "-gdb", f"tcp:127.0.0.1:{port}",
    ]  # fmt: skip
    script = work / "gdb.cmd"
    script.write_text(
        _GDB_SCRIPT.format(
            port=port,
            crash=_entry(parts.kernel.vmlinux, BREAK_AT, local=False),
            # sysfs calls it through a pointer; the reserved area is intact until it runs
            release=_entry(parts.kernel.vmlinux, "release_mem_store", local=False),
            area=_size(BOOT_MEMORY),
            size=SAVE_AREA,
            out=work,
        )
    )
    for old in [*work.glob("guest-*.core"), *work.glob("saved-*.bin")]:
        old.unlink()
    t0 = time.monotonic()
    seen: dict[str, float] = {}
    hung = False
    grew_at, size = t0, -1
    qemu = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    gdb_log = open(work / "gdb.log", "w")  # noqa: SIM115 - closed in finally
    gdb = None
    try:
        time.sleep(0.5)
        gdb = subprocess.Popen(
            ["gdb-multiarch", "-q", "-batch", "-x", str(script)],
            stdout=gdb_log,
            stderr=subprocess.STDOUT,
        )
        while qemu.poll() is None:
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"the guest did not finish within {timeout:.0f} s")
            text = console.read_text(errors="replace") if console.exists() else ""
            for mark in _MARKERS:
                if mark not in seen and mark in text:
                    seen[mark] = time.monotonic() - t0
            if "HVFW-ERROR" in text:
                raise RuntimeError("the guest failed: " + text[text.index("HVFW-ERROR") :][:300])
            if len(text) != size:
                grew_at, size = time.monotonic(), len(text)
            elif (
                quiet_after_second_crash is not None
                and "HVFW-PANIC 2" in seen
                and time.monotonic() - grew_at > quiet_after_second_crash
            ):
                hung = True
                break
            time.sleep(0.2)
        if qemu.returncode and not hung:
            raise RuntimeError(
                f"QEMU failed ({qemu.returncode}): {qemu.stderr.read() if qemu.stderr else ''}"
            )
        if not hung:
            gdb.wait(60)
    finally:
        for p in (qemu, gdb):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        gdb_log.close()
    total = time.monotonic() - t0
    text = console.read_text(errors="replace")
    for mark in _MARKERS:
        if mark not in seen and mark in text:
            seen[mark] = total
    infos: dict[int, GuestInfo] = {}
    registered: dict[int, str] = {}
    for kind, n, part in _stages(text):
        if kind == "production":
            infos[n] = parse_console(part)
            if m := re.search(r"HVFW-REGISTERED (\d)", part):
                registered[n] = m.group(1)
    files = work / "disk"
    shutil.rmtree(files, ignore_errors=True)
    read_disk(disk, files)
    disk.unlink()  # its files are copied out: GiBs a CI machine needs for the next run
    images = {int(p.stem.split("-")[1]): p for p in work.glob("guest-*.core")}
    saved = {int(p.stem.split("-")[1]): p for p in work.glob("saved-*.bin")}
    return FirmwareRun(
        mmu=mmu,
        work=work,
        console=text,
        infos=infos,
        registered=registered,
        captures=parse_captures(text),
        images=images,
        saved=saved,
        files=files,
        seen=seen,
        total_s=total,
        hung=hung,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", type=Path, help="directory for the initramfs, disks, consoles, images")
    ap.add_argument("--mmu", choices=tuple(CPU_MODELS), action="append")
    args = ap.parse_args(argv)
    parts = fetch_parts()
    args.out.mkdir(parents=True, exist_ok=True)
    for mmu in args.mmu or list(CPU_MODELS):
        initrd = build_initramfs(parts, args.out / f"initrd-{mmu}.cpio", mmu)
        print(f"initramfs {initrd.stat().st_size >> 20} MiB; kernel {parts.kernel.version}")
        r = run_guest(parts, initrd, args.out / mmu, mmu)
        print(f"{mmu}: {r.total_s:.0f} s; markers {r.seen}")
        for n, cap in r.captures.items():
            print(
                f"  capture {n}: boot {cap.boot_s:.1f} s, times {cap.times}, rcs {cap.rcs}, "
                f"MemTotal {cap.memtotal_kb}, registered {cap.registered}"
            )
        print(f"  images {r.images}; disk {sorted(os.listdir(r.files))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


FIXTURE_FILES = (
    "ibm,kernel-dump",
    "ibm,configure-kernel-dump-sizes",
    "ibm,configure-kernel-dump-version",
)


def save_fixtures(run: FirmwareRun, dest: Path) -> Path:
    """What QEMU's firmware produced for the first crash of ``run``, as files that
    ``make test`` compares hvsim with (``tests/test_hvsim_qemu_fadump.py``): the
    capture boot's ``rtas`` properties, the CPU state data as the firmware wrote it
    (the CPU section's bytes dumped), and the configuration that produced them."""
    import json

    from drgn_hvdump.formats.dump_header import SOURCE_CPU
    from drgn_hvdump.formats.fadump_mem import parse_fadump_mem

    cap = run.captures[1]
    dest.mkdir(parents=True, exist_ok=True)
    for name in FIXTURE_FILES:
        (dest / name).write_bytes(cap.device_tree[name])
    mem = parse_fadump_mem(cap.device_tree["ibm,kernel-dump"])
    cpu = mem.one(SOURCE_CPU)
    assert cpu is not None
    saved = run.saved[1].read_bytes()
    start = cpu.destination_address - _size(BOOT_MEMORY)
    (dest / "cpu-state.bin").write_bytes(saved[start : start + cpu.length_copied])
    info = run.infos[1]
    config = {
        "memory": _size(MEMORY),
        "cpus": 2,
        "boot_memory": _size(BOOT_MEMORY),
        "mmu": run.mmu,
        "cpu_model": CPU_MODELS[run.mmu],
        "kernel": info.release,
        "page_size": 65536,
        "byteorder": "little",
        "crash_cpu": info.panic_cpu,
        "qemu": "QEMU 11.1.3 (Debian 1:11.1.3+ds-2~bpo13+1)",
    }
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return dest
