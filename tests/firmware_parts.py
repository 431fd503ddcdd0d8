"""The parts of the real-firmware suite, fetched from Debian and built once (cached).

Everything comes from Debian 13's archive (``trixie`` and ``trixie-backports``),
downloaded with apt's own resolver into private list and cache directories
(:func:`tests.real_kernel._apt_options`) and unpacked with ``dpkg-deb``, never
installed, so the machine's own packages are untouched:

* :func:`fetch_qemu`: ``qemu-system-ppc`` 11 (backports) with every library it
  needs, unpacked into a tree and run through that tree's own dynamic loader:
  a Debian 13 userland for one program, on any Linux host, without root;
* :func:`build_kernel`: a pseries guest kernel with firmware-assisted dump,
  built from Debian's ``linux-source-6.12`` with the host's ppc64le cross
  compiler (:data:`KCONFIG` on top of ``ppc64le_guest_defconfig``; debug info
  for drgn; two modules: ``lkdtm`` to oops on demand and ``dummy``);
* :func:`fetch_userland`: the guest's ppc64el userspace (Debian 12): busybox, CPython 3.11,
  cffi's backend, the page codecs' libraries and ``makedumpfile``;
* :func:`build_native`: ``drgn_hvdump._native`` cross-compiled for ppc64le
  against that Python's headers (the stable ABI), from the same cffi
  description as the host build (``native/build_native.py``).

Each product sits under :func:`cache_dir` in a directory named for what it was
built from (package versions, the configuration, the C sources' hash), so a
change rebuilds it and nothing else. :class:`tests.real_kernel.RegistryUnreachable`
is raised only when the archive cannot be reached and nothing is cached.

By hand: ``python -m tests.firmware_parts`` fetches and builds everything and
prints the timings.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.real_kernel import RegistryUnreachable, _apt_options, _run, update_lists

__all__ = [
    "DEV_PACKAGES",
    "GUEST_PACKAGES",
    "KCONFIG",
    "Kernel",
    "Qemu",
    "Userland",
    "build_kernel",
    "build_native",
    "cache_dir",
    "fetch_qemu",
    "fetch_userland",
]

SUITE = "trixie"
BACKPORTS = "trixie-backports"
KERNEL_SOURCE = "linux-source-6.12"
CROSS = "powerpc64le-linux-gnu-"

KCONFIG = {
    # drgn needs the types; BTF would need pahole and adds nothing for drgn
    "DEBUG_INFO_NONE": "n",
    "DEBUG_INFO_DWARF5": "y",
    "DEBUG_INFO_BTF": "n",
    "DEBUG_INFO_REDUCED": "n",
    # what the suite exercises
    "FA_DUMP": "y",
    "CRASH_DUMP": "y",
    "PROC_VMCORE": "y",
    "MAGIC_SYSRQ": "y",
    "DEBUG_FS": "y",
    # as distributions build it (Debian, RHEL): soft_offline_page, which hvdump
    # uses to keep the fadump header's page out of use (docs/real-firmware.md)
    "MEMORY_FAILURE": "y",
    "LKDTM": "m",
    "DUMMY": "m",
    "EXT4_FS": "y",
    "VIRTIO_BLK": "y",
    "BLK_DEV_INITRD": "y",
    # self-tests that would run at boot; lockdown (which selects module signing)
    "KUNIT": "n",
    "SECURITY_LOCKDOWN_LSM": "n",
    "MODULE_SIG": "n",
}
"""On top of ``ppc64le_guest_defconfig``, after every other ``=m`` is turned off
(only the two modules the guest loads are built)."""

MODULES = {"lkdtm": "drivers/misc/lkdtm/lkdtm.ko", "dummy": "drivers/net/dummy.ko"}

GUEST_PACKAGES = (
    "busybox-static",
    "python3.11-minimal",
    "libpython3.11-stdlib",
    "python3-cffi-backend",
    "libdeflate0",
    "liblzo2-2",
    "libsnappy1v5",
    "libzstd1",
    "makedumpfile",
)
DEV_PACKAGES = (
    "libpython3.11-dev",
    "libdeflate-dev",
    "liblzo2-dev",
    "libsnappy-dev",
    "libzstd-dev",
)
"""Headers for the cross build only; never copied into the guest."""
GUEST_SUITE = "bookworm"
"""Debian 12 for the guest's userspace: its ppc64el pool is complete on the archive
mirrors this suite has met, Debian 13's point-release files were not (404)."""
PYTHON = "python3.11"
NATIVE_LIBS = ("libdeflate.so.0", "liblzo2.so.2", "libsnappy.so.1", "libzstd.so.1")
"""The page codecs ``drgn_hvdump._native`` links, by soname."""


def cache_dir() -> Path:
    return Path(os.environ.get("HVDUMP_FIRMWARE_CACHE", Path.home() / ".cache" / "hvdump-firmware"))


def _say(msg: str) -> None:
    print(f"firmware-parts: {msg}", file=sys.stderr, flush=True)


def _download_closure(
    cache: Path,
    arch: str,
    packages: tuple[str, ...],
    suite: str = SUITE,
    release: str | None = None,
    closure: bool = True,
) -> list[Path]:
    """``packages`` and everything they depend on (no recommends), as .deb files;
    without ``closure``, the packages alone.

    apt resolves as if nothing were installed (``Dir::State::status=/dev/null``),
    so the set is complete on any host."""
    opts = _apt_options(cache, suite, arch, (f"{suite}-backports",))
    archives = cache / "apt" / "cache" / "archives"
    listing = cache / "closure.txt"
    key = " ".join((release or "", *packages))
    if listing.exists() and listing.read_text().splitlines()[0] == key:
        names = listing.read_text().splitlines()[1:]
        if all((archives / n).exists() for n in names):
            update_lists(opts, cache, cached=True)
            return [archives / n for n in names]
    update_lists(opts, cache, cached=False)
    before = {p.name for p in archives.glob("*.deb")}
    if closure:
        cmd = ["apt-get", *opts, "install", "-d", "-y", "-qq", "--no-install-recommends"]
        cmd += ["-t", release] if release else []
    else:
        cmd = ["apt-get", *opts, "download"]
    proc = subprocess.run(
        [*cmd, *packages],
        cwd=archives,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    if proc.returncode:
        raise RegistryUnreachable(
            f"apt-get could not download {' '.join(packages)}: " + proc.stderr.strip()[-500:]
        )
    # apt prints what it would install; every .deb of the closure is now in archives
    names = sorted(p.name for p in archives.glob("*.deb"))
    _say(f"{arch}: {len(set(names) - before)} packages downloaded")
    listing.write_text("\n".join([key, *names]) + "\n")
    return [archives / n for n in names]


def _unpack(debs: list[Path], root: Path) -> None:
    """Unpack every .deb into ``root`` (once: a stamp names what is there)."""
    stamp = root / ".unpacked"
    want = "\n".join(sorted(d.name for d in debs))
    if stamp.exists() and stamp.read_text() == want:
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    stamp.write_text(want)


def _version(deb: Path) -> str:
    """The package's version, as a file name may hold it (``1:11.1`` → ``11.1``)."""
    return deb.name.split("_")[1].split("%3a")[-1]


@dataclass(frozen=True)
class Qemu:
    """``qemu-system-ppc64`` from Debian 13, runnable on this host."""

    root: Path

    @property
    def version(self) -> str:
        return _run([*self.command(), "-version"]).splitlines()[0]

    def command(self) -> list[str]:
        """argv[0..] that runs the tree's QEMU with the tree's own loader and libraries."""
        libs = ":".join(
            str(self.root / d) for d in ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu")
        )
        # Debian 13's packages put the loader under usr/ (merged /usr)
        loader = next(
            p
            for p in (self.root / "usr/lib64", self.root / "lib64")
            if (p / "ld-linux-x86-64.so.2").exists()
        )
        return [
            str(loader / "ld-linux-x86-64.so.2"),
            "--library-path",
            libs,
            str(self.root / "usr/bin/qemu-system-ppc64"),
            "-L",
            str(self.root / "usr/share/qemu"),
        ]


def fetch_qemu(cache: Path | None = None) -> Qemu:
    cache = (cache or cache_dir()) / "qemu"
    debs = _download_closure(cache, "amd64", ("qemu-system-ppc",), release=BACKPORTS)
    qemu = next(d for d in debs if d.name.startswith("qemu-system-ppc_"))
    root = cache / f"root-{_version(qemu)}"
    _unpack(debs, root)
    for old in cache.glob("root-*"):
        if old != root:
            shutil.rmtree(old, ignore_errors=True)
    return Qemu(root)


@dataclass(frozen=True)
class Userland:
    """The guest's ppc64el packages, unpacked."""

    root: Path

    @property
    def python_include(self) -> list[Path]:
        return [self.root / "usr/include", self.root / f"usr/include/{PYTHON}"]

    @property
    def libdirs(self) -> list[Path]:
        # Debian 12 has libraries in both (/lib is not merged in its packages)
        return [
            self.root / "usr/lib/powerpc64le-linux-gnu",
            self.root / "lib/powerpc64le-linux-gnu",
        ]


def fetch_userland(cache: Path | None = None) -> Userland:
    cache = (cache or cache_dir()) / "ppc64el"
    debs = _download_closure(cache, "ppc64el", GUEST_PACKAGES, GUEST_SUITE)
    debs += _download_closure(cache / "dev", "ppc64el", DEV_PACKAGES, GUEST_SUITE, closure=False)
    root = cache / "root"
    _unpack(debs, root)
    return Userland(root)


@dataclass(frozen=True)
class Kernel:
    """A built guest kernel: the image QEMU boots (with its debug info) and modules."""

    version: str
    vmlinux: Path
    system_map: Path
    modules: dict[str, Path]
    build_s: float


def _config_key() -> str:
    text = "\n".join(f"{k}={v}" for k, v in sorted(KCONFIG.items()))
    return hashlib.sha256((text + "".join(MODULES.values())).encode()).hexdigest()[:12]


def _apply_config(src: Path, make: list[str]) -> None:
    subprocess.run([*make, "ppc64le_guest_defconfig"], cwd=src, check=True, capture_output=True)
    config = src / ".config"
    lines = []
    for line in config.read_text().splitlines():
        if line.endswith("=m"):
            line = f"# {line[:-2]} is not set"
        lines.append(line)
    config.write_text("\n".join(lines) + "\n")
    flags = {"y": "-e", "n": "-d", "m": "-m"}
    args = [a for k, v in KCONFIG.items() for a in (flags[v], k)]
    subprocess.run(["scripts/config", *args], cwd=src, check=True)
    subprocess.run([*make, "olddefconfig"], cwd=src, check=True, capture_output=True)
    got = {}
    for line in config.read_text().splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            k, v = line[7:].split("=", 1)
            got[k] = v
    wrong = [f"{k}={got.get(k, 'n')}" for k, v in KCONFIG.items() if got.get(k, "n") != v]
    if wrong:
        raise RuntimeError(f"kernel configuration did not take: {', '.join(wrong)}")


def _kernel_tree(cache: Path, deb: Path, version: str) -> Path:
    """The unpacked source of ``deb``, kept (with its objects) so that a change of
    :data:`KCONFIG` rebuilds only what the change touches."""
    work = cache / f"src-{version}"
    stamp = work / ".unpacked"
    for old in cache.glob("src-*"):
        if old != work:
            shutil.rmtree(old, ignore_errors=True)
    if not stamp.exists():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        _say(f"unpacking {deb.name}")
        with subprocess.Popen(
            ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE
        ) as p:
            assert p.stdout is not None
            with tarfile.open(fileobj=p.stdout, mode="r|") as tar:
                for m in tar:
                    if m.name.endswith(".tar.xz") and "/usr/src/" in m.name:
                        f = tar.extractfile(m)
                        assert f is not None
                        with tarfile.open(fileobj=f, mode="r|xz") as src_tar:
                            src_tar.extractall(work, filter="data")
                        break
        stamp.touch()
    return next(p for p in work.iterdir() if p.is_dir())


def build_kernel(cache: Path | None = None, jobs: int | None = None) -> Kernel:
    """The guest kernel, built once per source version and :data:`KCONFIG` (cached)."""
    cache = (cache or cache_dir()) / "kernel"
    debs = _download_closure(cache, "ppc64el", (KERNEL_SOURCE,), closure=False)
    deb = next(d for d in debs if d.name.startswith(f"{KERNEL_SOURCE}_"))
    version = _version(deb)
    out = cache / f"{version}-{_config_key()}"
    mods = {name: out / f"{name}.ko" for name in MODULES}
    timing = out / "build-seconds"
    if timing.exists():
        return Kernel(version, out / "vmlinux", out / "System.map", mods, float(timing.read_text()))
    if not shutil.which(f"{CROSS}gcc"):
        raise RuntimeError(
            f"{CROSS}gcc is missing: run `make setup` (scripts/install-system-deps.sh)"
        )
    t0 = time.monotonic()
    src = _kernel_tree(cache, deb, version)
    make = ["make", "-s", "ARCH=powerpc", f"CROSS_COMPILE={CROSS}"]
    _apply_config(src, make)
    _say(f"building the guest kernel {version} (about 16 minutes on 2 cores from scratch)")
    n = str(jobs or os.cpu_count() or 2)
    proc = subprocess.run(
        [*make, f"-j{n}", "vmlinux", "modules"],
        cwd=src,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise RuntimeError(f"kernel build failed: {proc.stderr[-2000:]}")
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(src / "vmlinux", tmp / "vmlinux")
    shutil.copy2(src / "System.map", tmp / "System.map")
    shutil.copy2(src / ".config", tmp / "config")
    for name, rel in MODULES.items():
        shutil.copy2(src / rel, tmp / f"{name}.ko")
    build_s = time.monotonic() - t0
    (tmp / "build-seconds").write_text(f"{build_s:.1f}\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    _say(f"guest kernel {version} built in {build_s:.0f} s")
    return Kernel(version, out / "vmlinux", out / "System.map", mods, build_s)


def build_native(user: Userland, cache: Path | None = None, module: str = "") -> Path:
    """``drgn_hvdump/_native.abi3.so`` (or ``module``'s) for ppc64le, cached by the C
    sources' hash: the host build's description, compiled by the cross compiler."""
    from native.build_native import EXTENSIONS, NATIVE, cross_compile  # the one description

    ext = next((e for e in EXTENSIONS if e.module == module), NATIVE)
    repo = Path(__file__).resolve().parent.parent
    native = repo / "native"
    h = hashlib.sha256()
    for p in [*sorted(native.glob("*.[ch]")), native / "build_native.py"]:
        h.update(p.name.encode() + p.read_bytes())
    out = (cache or cache_dir()) / "native" / h.hexdigest()[:12] / f"{ext.stem}.abi3.so"
    if out.exists():
        return out
    sonames = dict(zip(NATIVE.libraries, NATIVE_LIBS, strict=True))
    link = [f"-L{d}" for d in user.libdirs] + [f"-l:{sonames[n]}" for n in ext.libraries]
    return cross_compile(ext, out, f"{CROSS}gcc", user.python_include, link)


def main() -> int:
    t0 = time.monotonic()
    q = fetch_qemu()
    print(f"qemu: {q.version} ({time.monotonic() - t0:.0f} s)")
    t0 = time.monotonic()
    u = fetch_userland()
    print(f"userland: {u.root} ({time.monotonic() - t0:.0f} s)")
    print(f"native: {build_native(u)}")
    k = build_kernel()
    print(f"kernel {k.version}: {k.vmlinux} (built in {k.build_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
