"""Build hvsim's ppc64 kernel images (``vmlinux-be``, ``vmlinux-le``) from the C sources here.

Needs Debian's cross compilers (``gcc-powerpc64-linux-gnu``,
``gcc-powerpc64le-linux-gnu``; binutils come with them). The output is
byte-identical wherever the checkout lives: source paths in the debug info
are mapped to ``/usr/src/hvsim-kernel``, nothing records a time, and the
build ID is a SHA-1 over the linked contents.

    python -m hvsim.kernel_image.build [--out DIR] [--endian big|little|both]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["CFLAGS", "SOURCES", "TOOLCHAINS", "build", "build_all", "missing_toolchains"]

HERE = Path(__file__).resolve().parent
SOURCES = ("init.c", "sched.c", "printk.c", "panic.c", "entry.c", "traps.c")
PREFIX_MAP = "/usr/src/hvsim-kernel"
TOOLCHAINS = {
    "big": ("powerpc64-linux-gnu", ["-mbig-endian", "-mabi=elfv1"], ["-EB"], "vmlinux-be"),
    "little": ("powerpc64le-linux-gnu", ["-mlittle-endian", "-mabi=elfv2"], ["-EL"], "vmlinux-le"),
}
CFLAGS = [
    "-std=gnu11",
    "-O2",
    "-g",
    "-gdwarf-4",
    "-nostdinc",
    "-ffreestanding",
    "-fno-builtin",
    "-fno-common",
    "-fno-pic",
    "-fno-stack-protector",
    "-fno-strict-aliasing",
    # .debug_frame (drgn reads a kernel's CFI only from there), no .eh_frame
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    # every call is a real call with a return address, functions keep their names
    "-fno-optimize-sibling-calls",
    "-fno-inline-functions-called-once",
    "-fno-inline-small-functions",
    "-fno-partial-inlining",
    "-fno-ipa-sra",
    "-fno-ipa-cp",
    "-fno-ipa-icf",
    "-fno-reorder-blocks-and-partition",
    "-fno-shrink-wrap",
    "-fno-isolate-erroneous-paths-dereference",
    # one symbol map for both byte orders: every function starts on a 512-byte boundary
    "-falign-functions=512",
    "-mcmodel=medium",
    "-mcpu=power6",
    "-msoft-float",
    "-mno-altivec",
    "-mno-vsx",
    "-ffixed-r13",
    "-Wall",
    "-Wno-unused-variable",
    "-Wno-unused-but-set-variable",
    f"-ffile-prefix-map={HERE}={PREFIX_MAP}",
    "-frandom-seed=hvsim-kernel",
]


def missing_toolchains() -> list[str]:
    """The cross tools this machine lacks (empty if it can build both images)."""
    out = []
    for triple, _, _, _ in TOOLCHAINS.values():
        for tool in ("gcc", "ld"):
            if shutil.which(f"{triple}-{tool}") is None:
                out.append(f"{triple}-{tool}")
    return out


def build(endian: str, out_dir: Path) -> Path:
    """Compile and link one image into ``out_dir``; returns its path."""
    triple, mflags, ldflags, name = TOOLCHAINS[endian]
    env = dict(os.environ, LC_ALL="C", SOURCE_DATE_EPOCH="0")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hvsim-kbuild-") as tmp:
        objs = []
        for src in SOURCES:
            obj = Path(tmp) / (Path(src).stem + ".o")
            cmd = [f"{triple}-gcc", *CFLAGS, *mflags, "-c", src, "-o", str(obj)]
            subprocess.run(cmd, cwd=HERE, env=env, check=True)
            objs.append(str(obj))
        target = Path(tmp) / name
        cmd = [
            f"{triple}-ld",
            *ldflags,
            "-m",
            "elf64ppc" if endian == "big" else "elf64lppc",
            "-static",
            "-nostdlib",
            "--build-id=sha1",
            "--no-warn-rwx-segments",
            "-T",
            "vmlinux.lds",
            "-o",
            str(target),
            *objs,
        ]
        subprocess.run(cmd, cwd=HERE, env=env, check=True)
        final = out_dir / name
        shutil.copyfile(target, final)
        return final


def build_all(out_dir: Path = HERE, endians: tuple[str, ...] = ("big", "little")) -> list[Path]:
    """Build the images for ``endians`` into ``out_dir``."""
    return [build(e, out_dir) for e in endians]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out", type=Path, default=HERE, help="output directory (default: the sources')"
    )
    p.add_argument("--endian", choices=("big", "little", "both"), default="both")
    args = p.parse_args(argv)
    missing = missing_toolchains()
    if missing:
        print(
            f"hvsim kernel build: missing {', '.join(missing)}; install "
            "gcc-powerpc64-linux-gnu and gcc-powerpc64le-linux-gnu",
            file=sys.stderr,
        )
        return 1
    endians = ("big", "little") if args.endian == "both" else (args.endian,)
    for path in build_all(args.out, endians):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
