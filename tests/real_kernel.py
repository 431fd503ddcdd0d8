"""A real ppc64 Linux guest under QEMU, panicked and dumped, for the real-kernel suite.

Everything comes from Debian's archive, downloaded (never installed) for the
foreign architecture with apt's own client pointed at private list and cache
directories, so the machine's apt configuration is untouched:

* ``linux-image-*-powerpc64le``: the kernel (``/boot/vmlinux-*`` boots as
  it is under ``qemu-system-ppc64 -M pseries``) and a few modules;
  Debian 12's 6.1 (64 KiB pages, the machine's own apt sources) and
  Debian 13's 6.12 (4 KiB pages, a private ``trixie`` source list), see
  :data:`KERNELS`;
* ``linux-image-*-powerpc64le-dbg``: its debug vmlinux, for drgn;
* ``busybox-static``: the guest's userspace.

A tiny initramfs loads two modules, prints what the tests compare against
(the VMCOREINFO note's address, ``/proc/modules``, a module symbol, the pids
of a few named processes), then panics with sysrq. QEMU keeps running after
the panic (``-action panic=none``) so the panicking CPU is caught in
``panic()``'s loop in kernel mode, not inside RTAS; the test harness stops
the guest over QMP and writes its memory with ``dump-guest-memory``. The
sysrq writer is pinned to CPU :data:`PANIC_CPU` (``taskset``), so the crash
happens on a CPU other than 0.

Downloads and extracted files are cached in ``$HVDUMP_REAL_CACHE``
(default ``~/.cache/hvdump-real``). :class:`RegistryUnreachable` is the only
failure that lets the suite skip.

Run by hand: ``python -m tests.real_kernel OUT_DIR [--mmu hash|radix] [--kernel 6.1|6.12]``.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "KERNELS",
    "PANIC_CPU",
    "START_PROCESSES",
    "Distribution",
    "GuestDump",
    "GuestInfo",
    "Parts",
    "RegistryUnreachable",
    "boot_and_dump",
    "build_initramfs",
    "cache_dir",
    "fetch_parts",
    "parse_console",
    "update_lists",
    "write_cpio",
]

MODULES = ("crc7", "crc8")
"""Modules with no dependencies the guest loads (their code lives in vmalloc space)."""
RODATA_MODULE = "crc7"
"""Its .rodata is one constant table with no relocations: the guest's bytes equal the .ko's."""
PROCESSES = ("hvtest-reader", "hvtest-sleeper", "hvtest-pipe")
"""Named processes the guest starts, each blocked in a different way."""
CPU_MODELS = {"hash": "POWER8", "radix": "POWER9"}
"""QEMU has no POWER6; POWER8 boots Linux with the hash MMU, POWER9 with radix."""
PANIC_CPU = 1
"""The CPU the sysrq writer is pinned to: a crash on a CPU other than 0."""


@dataclass(frozen=True)
class Distribution:
    """Where one kernel series comes from."""

    kernel: str
    """The series, as the suite names it (``6.1``, ``6.12``)."""
    suite: str | None
    """Debian suite of a private source list; None: the machine's own apt sources."""
    release_pattern: str
    """Regular expression of the kernel package's release (``linux-image-RELEASE``)."""
    page_size: int


KERNELS = {
    "6.1": Distribution("6.1", None, r"6\.1\.\S+-powerpc64le", 65536),
    "6.12": Distribution("6.12", "trixie", r"6\.12\.\S+-powerpc64le", 4096),
}
"""Debian 12's kernel (64 KiB pages) and Debian 13's (4 KiB pages: ``CONFIG_PPC_4K_PAGES``)."""

_APT_FLAVOUR = "powerpc64le"
_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev 2>/dev/null
echo 0 > /proc/sys/kernel/kptr_restrict
for m in /lib/modules/*.ko; do insmod "$m"; done
echo "HVTEST-UNAME $(uname -r)"
echo "HVTEST-VMCOREINFO $(cat /sys/kernel/vmcoreinfo)"
while read -r line; do echo "HVTEST-MODULE $line"; done < /proc/modules
echo "HVTEST-RODATA $(cat /sys/module/@MODULE@/sections/.rodata)"
mkfifo /tmp/fifo /tmp/pipe
# Subshells rename themselves (comm) and block where a shell builtin leaves
# them: opening a FIFO, waiting for a child, reading a pipe.
@PROCESSES@
sleep 1
echo HVTEST-PANIC
# On CPU @CPU@, not 0: where panic() runs is the crashed thread's CPU.
taskset @MASK@ sh -c 'echo c > /proc/sysrq-trigger'
"""


START_PROCESSES = """\
( echo -n hvtest-reader > /proc/self/comm; read -r x < /tmp/fifo ) &
echo "HVTEST-PID hvtest-reader $!"
( echo -n hvtest-sleeper > /proc/self/comm; sleep 100000; : ) &
echo "HVTEST-PID hvtest-sleeper $!"
( echo -n hvtest-pipe > /proc/self/comm; exec 3<>/tmp/pipe; read -r x <&3 ) &
echo "HVTEST-PID hvtest-pipe $!"
"""
"""Shell lines that start :data:`PROCESSES` (FIFOs /tmp/fifo and /tmp/pipe must exist)
and print their pids for :func:`parse_console`."""


class RegistryUnreachable(RuntimeError):
    """Debian's archive could not be reached: the only reason the suite may skip."""


@dataclass(frozen=True)
class Parts:
    """The extracted pieces, all inside the cache."""

    release: str
    vmlinux: Path
    debug_vmlinux: Path
    busybox: Path
    modules: dict[str, Path]
    download_s: float = 0.0
    kernel: str = "6.1"


@dataclass
class GuestInfo:
    """What the guest printed before its panic."""

    release: str = ""
    vmcoreinfo_addr: int = 0
    modules: list[tuple[str, int]] = field(default_factory=list)
    """(name, core address) from /proc/modules."""
    rodata: int = 0
    """Address of :data:`RODATA_MODULE`'s ``.rodata`` (module memory: vmalloc space)."""
    pids: dict[str, int] = field(default_factory=dict)
    panic_cpu: int = -1


@dataclass
class GuestDump:
    """One guest's run: its dump, console, what it printed and the times."""

    core: Path
    console: str
    info: GuestInfo
    mmu: str
    boot_to_panic_s: float
    dump_s: float
    total_s: float
    stops: int = 1
    """QMP stops it took to catch the panicking CPU in panic()'s loop."""


def cache_dir() -> Path:
    return Path(os.environ.get("HVDUMP_REAL_CACHE", Path.home() / ".cache" / "hvdump-real"))


def _apt_options(
    cache: Path, suite: str | None = None, arch: str = "ppc64el", suites: tuple[str, ...] = ()
) -> list[str]:
    """apt options for ``arch`` packages with lists and cache under ``cache/apt``; with
    ``suite``, a private source list naming it and ``suites`` (e.g. its backports)."""
    lists = cache / "apt" / "lists"
    archives = cache / "apt" / "cache"
    for d in (lists / "partial", archives / "archives" / "partial"):
        d.mkdir(parents=True, exist_ok=True)
    sources: list[str] = []
    if suite is not None:
        # Another Debian release than the machine's: a source list of our own.
        listing = cache / "apt" / "sources.list"
        listing.write_text(
            "".join(
                f"deb [arch={arch} signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                f"http://deb.debian.org/debian {s} main\n"
                for s in (suite, *suites)
            )
        )
        sources = [
            "-o",
            f"Dir::Etc::SourceList={listing}",
            "-o",
            "Dir::Etc::SourceParts=/nonexistent",
        ]
    return [
        *sources,
        "-o",
        f"APT::Architecture={arch}",
        "-o",
        f"APT::Architectures={arch}",
        "-o",
        f"Dir::State::Lists={lists}",
        "-o",
        f"Dir::Cache={archives}",
        "-o",
        "Dir::State::status=/dev/null",
        "-o",
        "Debug::NoLocking=1",
    ]


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(
            f"{' '.join(cmd[:3])}... failed ({proc.returncode}): {proc.stderr[-800:]}"
        )
    return proc.stdout


def _extract(deb: Path, members: list[str], dest: Path) -> None:
    """Extract ``members`` (paths as in the .deb) of ``deb`` into ``dest``."""
    # dpkg-deb complains of a broken pipe when we stop reading early: expected.
    with subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as p:
        assert p.stdout is not None
        with tarfile.open(fileobj=p.stdout, mode="r|") as tar:
            wanted = set(members)
            for m in tar:
                name = m.name.removeprefix("./")
                if name in wanted and m.isfile():
                    out = dest / name
                    out.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(m)
                    assert src is not None
                    tmp = out.with_suffix(out.suffix + ".part")
                    with open(tmp, "wb") as f:
                        shutil.copyfileobj(src, f, 1 << 20)
                    tmp.rename(out)
                    wanted.discard(name)
                    if not wanted:
                        break
        p.stdout.close()
    if wanted:
        raise RuntimeError(f"{deb.name}: not found in the package: {', '.join(sorted(wanted))}")


def update_lists(opts: list[str], cache: Path, *, cached: bool) -> None:
    """Refresh the package lists once a day; unreachable is fatal only with nothing cached.

    One index that fails while others arrive (a mirror mid-sync: "File has unexpected
    size" for bookworm-security's ppc64el list) is not fatal either: what is needed may
    well be in the lists that did arrive, and a download that needs the missing one
    fails on its own with apt's message. The next run tries again."""
    stamp = cache / "apt" / "updated"
    if stamp.exists() and time.time() - stamp.stat().st_mtime < 86400:
        return
    proc = subprocess.run(
        ["apt-get", *opts, "update", "-qq"], capture_output=True, text=True, check=False
    )
    failed = [ln for ln in proc.stderr.splitlines() if ln.startswith(("E:", "W: Failed"))]
    if proc.returncode or failed:
        lists = cache / "apt" / "lists"
        arrived = any(lists.glob("*_Packages*"))
        if not cached and not arrived:
            raise RegistryUnreachable(
                "Debian's archive cannot be reached: "
                + "; ".join(failed or [proc.stderr.strip()[-300:]])
            )
        print(f"apt lists incomplete, going on with those that arrived: {'; '.join(failed)[:300]}",
              file=sys.stderr)  # fmt: skip
    else:
        stamp.touch()


def _update_lists(opts: list[str], cache: Path) -> None:
    update_lists(opts, cache, cached=any(cache.glob("debs/linux-image-*-dbg_*.deb")))


def _releases(opts: list[str], dist: Distribution, debs: Path) -> list[str]:
    """Kernel releases to try, best first: one already cached, the metapackage's, the others
    the lists name (a mirror may lag behind the metapackage)."""
    cached = sorted(
        m.group(1)
        for p in debs.glob("linux-image-*-dbg_*.deb")
        if (m := re.match(rf"linux-image-({dist.release_pattern})-dbg_", p.name))
    )
    found = []
    try:
        depends = _run(["apt-cache", *opts, "depends", f"linux-image-{_APT_FLAVOUR}"])
        found += re.findall(rf"Depends: linux-image-({dist.release_pattern})\b", depends)
        names = _run(["apt-cache", *opts, "search", "--names-only", "^linux-image-.*-dbg$"])
        others = re.findall(rf"^linux-image-({dist.release_pattern})-dbg ", names, re.M)
        found += sorted(set(others), key=_version_key, reverse=True)
    except RuntimeError:
        if not cached:
            raise
    out: list[str] = []
    for r in [*reversed(cached), *found]:
        if r not in out:
            out.append(r)
    if not out:
        raise RuntimeError(f"no linux-image-{dist.release_pattern} in the package lists")
    return out


def _version_key(release: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", release))


def _download(opts: list[str], debs: Path, releases: list[str]) -> str:
    """The first release of ``releases`` whose image and debug packages are (now) cached."""
    errors: list[str] = []
    for release in releases[:3]:
        names = [f"linux-image-{release}", f"linux-image-{release}-dbg", "busybox-static"]
        missing = [n for n in names if not any(debs.glob(f"{n}_*.deb"))]
        if missing:
            proc = subprocess.run(
                ["apt-get", *opts, "download", *missing],
                cwd=debs,
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode:
                errors.append(f"{' '.join(missing)}: {proc.stderr.strip()[-300:]}")
                continue
        return release
    raise RegistryUnreachable("apt-get download failed: " + "; ".join(errors))


def _members(deb: Path) -> list[str]:
    proc = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True)
    return [line.split()[-1].removeprefix("./") for line in proc.stdout.splitlines()]


def _module_members(deb: Path, release: str) -> dict[str, str]:
    """Package paths of :data:`MODULES` (``lib/`` or ``usr/lib/``, plain or ``.ko.xz``)."""
    out: dict[str, str] = {}
    for name in _members(deb):
        for m in MODULES:
            for suffix in (".ko", ".ko.xz"):
                if name.endswith(f"modules/{release}/kernel/lib/{m}{suffix}"):
                    out[m] = name
    if set(out) != set(MODULES):
        raise RuntimeError(f"{deb.name}: modules {sorted(set(MODULES) - set(out))} not found")
    return out


def fetch_parts(cache: Path | None = None, kernel: str = "6.1") -> Parts:
    """Download (once) and extract a kernel of :data:`KERNELS`, its debug info, modules
    and busybox."""
    dist = KERNELS[kernel]
    cache = cache or cache_dir()
    if dist.suite is not None:
        cache = cache / dist.suite
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    opts = _apt_options(cache, dist.suite)
    _update_lists(opts, cache)
    debs = cache / "debs"
    debs.mkdir(exist_ok=True)
    release = _download(opts, debs, _releases(opts, dist, debs))
    names = {
        "image": f"linux-image-{release}",
        "dbg": f"linux-image-{release}-dbg",
        "busybox": "busybox-static",
    }
    deb = {k: sorted(debs.glob(f"{n}_*.deb"))[-1] for k, n in names.items()}
    root = cache / "root" / release
    vmlinux = root / f"boot/vmlinux-{release}"
    mods = {name: root / f"modules/{name}.ko" for name in MODULES}
    if not vmlinux.exists() or not all(p.exists() for p in mods.values()):
        members = _module_members(deb["image"], release)
        _extract(deb["image"], [str(vmlinux.relative_to(root)), *members.values()], root)
        for name, member in members.items():
            data = (root / member).read_bytes()
            if member.endswith(".xz"):
                data = lzma.decompress(data)  # the guest's insmod and the checks want ELF
            mods[name].parent.mkdir(parents=True, exist_ok=True)
            mods[name].write_bytes(data)
    debug = root / f"usr/lib/debug/boot/vmlinux-{release}"
    if not debug.exists():
        _extract(deb["dbg"], [str(debug.relative_to(root))], root)
    busybox = root / "bin/busybox"
    if not busybox.exists():
        # /bin before the merged /usr (Debian 13: /usr/bin)
        member = next(
            m for m in ("bin/busybox", "usr/bin/busybox") if m in _members(deb["busybox"])
        )
        _extract(deb["busybox"], [member], root)
        if member != "bin/busybox":
            busybox.parent.mkdir(parents=True, exist_ok=True)
            (root / member).rename(busybox)
    busybox.chmod(0o755)
    return Parts(release, vmlinux, debug, busybox, mods, time.monotonic() - t0, kernel)


def build_initramfs(parts: Parts, out: Path) -> Path:
    """A newc cpio with busybox, the modules and the test's ``/init``."""
    tree = out.parent / (out.name + ".d")
    shutil.rmtree(tree, ignore_errors=True)
    for d in ("bin", "proc", "sys", "dev", "tmp", "lib/modules"):
        (tree / d).mkdir(parents=True)
    shutil.copy2(parts.busybox, tree / "bin/busybox")
    for name, path in parts.modules.items():
        shutil.copy2(path, tree / "lib/modules" / f"{name}.ko")
    init = tree / "init"
    script = _INIT.replace("@MODULE@", RODATA_MODULE).replace("@CPU@", str(PANIC_CPU))
    script = script.replace("@PROCESSES@", START_PROCESSES)
    init.write_text(script.replace("@MASK@", f"{1 << PANIC_CPU:x}"))
    init.chmod(0o755)
    return write_cpio(tree, out)


def write_cpio(tree: Path, out: Path) -> Path:
    """``tree`` as a newc cpio archive (an initramfs) at ``out``; the tree is removed."""
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    with open(out, "wb") as f:
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"],
            input="\n".join([".", *names]).encode(),
            cwd=tree,
            stdout=f,
            check=True,
        )
    shutil.rmtree(tree)
    return out


def parse_console(text: str) -> GuestInfo:
    """What the guest's ``/init`` printed, and the CPU ``panic()`` ran on."""
    info = GuestInfo()
    # Kernel messages can share a console line with /init's output.
    for m in re.finditer(r"HVTEST-([A-Z]+) ?([^\r\n]*)", text):
        key, f = m.group(1), m.group(2).split()
        if key == "UNAME":
            info.release = f[0]
        elif key == "VMCOREINFO":
            info.vmcoreinfo_addr = int(f[0], 16)
        elif key == "MODULE":
            info.modules.append((f[0], int(f[5], 16)))
        elif key == "RODATA":
            info.rodata = int(f[0], 16)
        elif key == "PID":
            info.pids[f[0]] = int(f[1])
    # 6.x prints "CPU: 1 UID: 0 PID: 150", 6.1 "CPU: 1 PID: 150"
    m = re.search(r"Kernel panic - not syncing.*\n.*?CPU: (\d+) (?:UID: \d+ )?PID", text)
    # an oops that goes to the firmware before any panic (fadump's oops_end)
    m = m or re.search(r"Oops: .*(?:\n.*?){1,4}CPU: (\d+) (?:UID: \d+ )?PID", text)
    if m:
        info.panic_cpu = int(m.group(1))
    return info


class _Qmp:
    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        end = time.monotonic() + timeout
        while True:
            try:
                self.sock.connect(str(path))
                break
            except OSError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)
        self.f = self.sock.makefile("rw")
        json.loads(self.f.readline())
        self.cmd("qmp_capabilities")

    def cmd(self, name: str, **args: Any) -> Any:
        msg: dict[str, Any] = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg) + "\n")
        self.f.flush()
        while True:
            reply = json.loads(self.f.readline())
            if "error" in reply:
                raise RuntimeError(f"QMP {name}: {reply['error']}")
            if "return" in reply:
                return reply["return"]

    def close(self) -> None:
        self.sock.close()


PANIC_LOOP = ("panic", "__delay", "udelay", "__udelay", "mdelay", "touch_softlockup_watchdog")
"""Functions of panic()'s endless loop (panic_timeout 0): a stop there leaves a trace
drgn unwinds to the sysrq handler. A stop in an interrupt (a timer softirq on the
IRQ stack, seen on 6.12 hash under load) does not."""
_STOP_TRIES = 20


def parse_function_ranges(readelf_symbols: str, names: tuple[str, ...]) -> list[tuple[int, int]]:
    """``[start, end)`` of each FUNC symbol named in ``names``, from ``readelf -sW`` output."""
    out = []
    for line in readelf_symbols.splitlines():
        f = line.split()
        # Num: Value Size Type Bind Vis [<localentry>: N] Ndx Name (ELFv2 adds the bracket)
        if len(f) >= 8 and f[3] == "FUNC" and f[-1] in names:
            start, size = int(f[1], 16), int(f[2], 0)
            if size:
                out.append((start, start + size))
    return sorted(out)


_RANGES: dict[Path, list[tuple[int, int]]] = {}


def panic_loop_ranges(debug_vmlinux: Path) -> list[tuple[int, int]]:
    """Where :data:`PANIC_LOOP`'s functions are in the guest kernel (cached per file)."""
    if debug_vmlinux not in _RANGES:
        text = _run(["readelf", "-sW", str(debug_vmlinux)])
        _RANGES[debug_vmlinux] = parse_function_ranges(text, PANIC_LOOP)
    return _RANGES[debug_vmlinux]


def _cpu_nip(qmp: _Qmp, cpu: int) -> int | None:
    # Each human-monitor-command runs in a fresh monitor: "cpu N" would not last.
    regs = qmp.cmd("human-monitor-command", **{"command-line": "info registers", "cpu-index": cpu})
    m = re.search(r"NIP\s+([0-9a-fA-F]+)", str(regs))
    return int(m.group(1), 16) if m else None


def _stop_in_panic_loop(qmp: _Qmp, cpu: int, loop: list[tuple[int, int]]) -> int:
    """Stop the guest with ``cpu`` inside panic()'s loop; the number of stops it took.

    Under load TCG may stop the CPU in an interrupt that came during the
    loop; then the guest runs on briefly and is stopped again.
    """
    for tries in range(1, _STOP_TRIES + 1):
        qmp.cmd("stop")
        nip = _cpu_nip(qmp, cpu)
        if not loop or nip is None or any(a <= nip < b for a, b in loop):
            return tries
        qmp.cmd("cont")
        time.sleep(0.05 * tries)
    raise RuntimeError(
        f"CPU {cpu} was not in panic()'s loop at any of {_STOP_TRIES} stops (last NIP {nip:#x})"
    )


def boot_and_dump(
    parts: Parts, initrd: Path, out_dir: Path, mmu: str = "hash", timeout: float = 240.0
) -> GuestDump:
    """Boot the guest, wait for its panic, stop it and dump its memory (1 GiB, 2 CPUs)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{parts.kernel}-{mmu}"
    console = out_dir / f"console-{tag}.txt"
    qmp_path = out_dir / f"qmp-{tag}.sock"
    core = out_dir / f"guest-{tag}.core"
    for p in (console, qmp_path, core):
        p.unlink(missing_ok=True)
    cmd = [
        "qemu-system-ppc64",
        "-M", "pseries", "-cpu", CPU_MODELS[mmu], "-m", "1G", "-smp", "2",
        "-nographic", "-nodefaults", "-no-reboot",
        "-chardev", f"file,id=con,path={console}",
        "-device", "spapr-vty,chardev=con",
        "-kernel", str(parts.vmlinux), "-initrd", str(initrd),
        "-append", "console=hvc0 quiet",
        "-qmp", f"unix:{qmp_path},server=on,wait=off",
        "-action", "panic=none",
    ]  # fmt: skip
    t0 = time.monotonic()
    qemu = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        qmp = _Qmp(qmp_path)
        text = ""
        while "Kernel panic - not syncing" not in text or "---[ end Kernel panic" not in text:
            if qemu.poll() is not None:
                raise RuntimeError(
                    f"QEMU exited early: {qemu.stderr.read() if qemu.stderr else ''}"
                )
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"no panic within {timeout:.0f} s; console:\n{text[-2000:]}")
            time.sleep(0.2)
            text = console.read_text(errors="replace") if console.exists() else ""
        panicked = time.monotonic()
        cpu = parse_console(text).panic_cpu
        loop = panic_loop_ranges(parts.debug_vmlinux)
        time.sleep(0.5)  # the panicking CPU settles into panic()'s delay loop
        stops = _stop_in_panic_loop(qmp, max(cpu, 0), loop)
        t1 = time.monotonic()
        qmp.cmd("dump-guest-memory", paging=False, protocol=f"file:{core}")
        dump_s = time.monotonic() - t1
        qmp.cmd("quit")
        qmp.close()
        qemu.wait(30)
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
    text = console.read_text(errors="replace")
    return GuestDump(
        core, text, parse_console(text), mmu, panicked - t0, dump_s, time.monotonic() - t0, stops
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", type=Path, help="directory for the initramfs, console and dumps")
    ap.add_argument("--mmu", choices=tuple(CPU_MODELS), action="append")
    ap.add_argument("--kernel", choices=tuple(KERNELS), default="6.1")
    args = ap.parse_args(argv)
    parts = fetch_parts(kernel=args.kernel)
    print(f"kernel {parts.release}: {parts.vmlinux} ({parts.download_s:.1f} s to fetch)")
    args.out.mkdir(parents=True, exist_ok=True)
    initrd = build_initramfs(parts, args.out / "initrd.cpio")
    for mmu in args.mmu or list(CPU_MODELS):
        g = boot_and_dump(parts, initrd, args.out, mmu)
        print(
            f"{mmu}: {g.core} boot-to-panic {g.boot_to_panic_s:.1f} s, dump {g.dump_s:.1f} s, "
            f"panic CPU {g.info.panic_cpu} ({g.stops} stops), VMCOREINFO at {g.info.vmcoreinfo_addr:#x}, "
            f"modules {g.info.modules}, .rodata {g.info.rodata:#x}, pids {g.info.pids}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
