"""Debian's ppc64el makedumpfile, run on this x86-64 machine under qemu-user: the reference for dump levels.

The machine's own makedumpfile reads only x86-64 dumps. Debian 13's ppc64el
package (makedumpfile 1.7.6, the first release that knows 6.10+'s
``page_type`` values) runs under Debian 13's ``qemu-ppc64le`` (a static
binary), through the ppc64el loader and libraries of the guest userland
:func:`tests.firmware_parts.fetch_userland` already keeps (Debian 12's:
Debian 13's ppc64el libc is not on the mirror, and makedumpfile needs
nothing newer). Everything is fetched by apt's own client (signatures and
checksums checked), unpacked, never installed; cached beside the firmware
suite's parts.

It reads dumps of its own byte order only: little-endian ones.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.firmware_parts import SUITE, _download_closure, _unpack, cache_dir, fetch_userland

__all__ = ["fetch_makedumpfile", "makedumpfile_command", "qemu_user", "run_makedumpfile"]


def fetch_makedumpfile(cache: Path | None = None) -> Path:
    """Debian 13's ppc64el ``makedumpfile`` binary (it runs with Debian 12's libraries:
    the firmware suite's capture kernel runs it too)."""
    cache = cache or cache_dir()
    debs = _download_closure(
        cache / "makedumpfile", "ppc64el", ("makedumpfile",), SUITE, closure=False
    )
    _unpack(debs, cache / "makedumpfile" / "root")
    return cache / "makedumpfile/root/usr/bin/makedumpfile"


def qemu_user(cache: Path | None = None) -> list[str]:
    """The command line prefix that runs a ppc64le program here (Debian 13's static
    ``qemu-ppc64le``)."""
    cache = cache or cache_dir()
    qemu_debs = _download_closure(
        cache / "qemu-user", "amd64", ("qemu-user",), SUITE, closure=False
    )
    _unpack(qemu_debs, cache / "qemu-user" / "root")
    return [str(cache / "qemu-user/root/usr/bin/qemu-ppc64le")]


def makedumpfile_command(cache: Path | None = None) -> list[str]:
    """The command line prefix that runs Debian 13's ppc64el makedumpfile here."""
    cache = cache or cache_dir()
    binary = fetch_makedumpfile(cache)
    user = fetch_userland(cache)
    loader = user.root / "lib/powerpc64le-linux-gnu/ld64.so.2"
    return [
        *qemu_user(cache),
        str(loader),
        "--library-path",
        ":".join(str(d) for d in user.libdirs),
        str(binary),
    ]


def run_makedumpfile(
    args: list[str], cache: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run it with ``args``; its output as text."""
    return subprocess.run(
        [*makedumpfile_command(cache), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
