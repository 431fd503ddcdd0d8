"""cffi API-mode builds of the C in ``native/``: two extensions, one per package.

``ffibuilder``: ``native/hvnative.c``, ``native/hvcodec.c`` and
``native/hvpages.c`` into ``drgn_hvdump._native`` (the dump tool's hot loops,
page codecs and dump-level decisions).
``genbuilder``: ``native/hvgen.c`` into ``hvsim._gen`` (the simulator's page
generator, which the tool never needs). setuptools imports both from here
(``setup.py``'s ``cffi_modules``) and compiles them at install time,
``pip install -e .`` included. Run as a script, it builds both in place next
to their Python wrappers, so a developer can test C changes without pip::

    .venv/bin/python native/build_native.py

The declarations given to cffi are the block between the ``cffi-cdef``
markers in each extension's header: one copy of every prototype. Each
extension is described once (:class:`Extension`); the wheels for other
architectures (``scripts/build_dist.py``) and the firmware suite's guest
build compile the same description with a cross compiler
(:func:`cross_compile`). A host build without a codec's headers stops with one
line naming the package to install.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import NamedTuple

from cffi import FFI

__all__ = [
    "EXTENSIONS",
    "GEN",
    "GEN_MODULE",
    "MODULE",
    "NATIVE",
    "NATIVE_SOURCES",
    "Extension",
    "builder",
    "cross_compile",
    "ffibuilder",
    "genbuilder",
    "main",
    "missing_headers",
    "require_headers",
]

MODULE = "drgn_hvdump._native"
GEN_MODULE = "hvsim._gen"

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
_BEGIN = "/* cffi-cdef-begin */"
_END = "/* cffi-cdef-end */"


def _cdef_text(header: Path) -> str:
    text = header.read_text(encoding="utf-8")
    start = text.find(_BEGIN)
    stop = text.find(_END)
    if start < 0 or stop < start:
        raise RuntimeError(f"{header}: missing {_BEGIN} ... {_END} block for cffi")
    return text[start + len(_BEGIN) : stop]


def _rel(path: Path) -> str:
    # setuptools wants paths relative to the project root, where it runs; as a
    # script, cffi's compile() runs gcc from its tmpdir, so paths must be absolute.
    if __name__ == "__main__" or Path.cwd() != _ROOT:
        return str(path)
    return os.path.relpath(path, _ROOT)


class Extension(NamedTuple):
    """One C extension, described once: the host build (cffi under setuptools or
    :func:`main`) and the cross builds (:func:`cross_compile`) read the same.
    (A NamedTuple: cffi runs this file without a module, where dataclasses fail.)"""

    module: str
    header: str
    sources: tuple[str, ...]
    libraries: tuple[str, ...] = ()
    """Link names (``-l``) of the libraries it needs."""
    headers: tuple[tuple[str, str], ...] = ()
    """(header, Debian package) of each library: checked before a host build."""

    @property
    def stem(self) -> str:
        return self.module.rpartition(".")[2]

    @property
    def package(self) -> str:
        return self.module.rpartition(".")[0]


NATIVE = Extension(
    MODULE,
    "hvnative.h",
    ("hvnative.c", "hvcodec.c", "hvpages.c"),
    # The page codecs of the kdump format.
    ("deflate", "lzo2", "snappy", "zstd"),
    (
        ("libdeflate.h", "libdeflate-dev"),
        ("lzo/lzo1x.h", "liblzo2-dev"),
        ("snappy-c.h", "libsnappy-dev"),
        ("zstd.h", "libzstd-dev"),
    ),
)
GEN = Extension(GEN_MODULE, "hvgen.h", ("hvgen.c",))
EXTENSIONS = (NATIVE, GEN)
NATIVE_SOURCES = NATIVE.sources
"""The C files of ``drgn_hvdump._native``."""

_CFLAGS = ["-O3", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"]
_FEDORA = {"libdeflate-dev": "libdeflate-devel", "liblzo2-dev": "lzo-devel",
           "libsnappy-dev": "snappy-devel", "libzstd-dev": "libzstd-devel"}  # fmt: skip


def missing_headers(ext: Extension, cc: str | None = None) -> list[tuple[str, str]]:
    """The (header, package) pairs of ``ext`` the C compiler cannot find."""
    cc = cc or os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    missing = []
    for header, package in ext.headers:
        proc = subprocess.run(
            [*shlex.split(cc), "-E", "-x", "c", "-o", os.devnull, "-"],
            input=f"#include <{header}>\n",
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode:
            missing.append((header, package))
    return missing


def require_headers(ext: Extension) -> None:
    """Stop a host build with one line naming the packages to install, before gcc
    fails deep inside setuptools' output."""
    missing = missing_headers(ext)
    if missing:
        debian = " ".join(pkg for _, pkg in missing)
        fedora = " ".join(_FEDORA.get(pkg, pkg) for _, pkg in missing)
        headers = ", ".join(h for h, _ in missing)
        raise SystemExit(
            f"hvdump: cannot build {ext.module}: {headers} not found; install {debian}"
            f" (Debian/Ubuntu) or {fedora} (Fedora/RHEL), or install hvdump from a wheel"
        )


def builder(ext: Extension) -> FFI:
    """The cffi API-mode builder of ``ext`` for this host."""
    ffi = FFI()
    ffi.cdef(_cdef_text(_HERE / ext.header))
    ffi.set_source(
        ext.module,
        f'#include "{ext.header}"',
        sources=[_rel(_HERE / name) for name in ext.sources],
        libraries=list(ext.libraries),
        include_dirs=[_rel(_HERE)],
        depends=[_rel(_HERE / ext.header), _rel(_HERE / "hvcommon.h")],
        # The build directory (a random temporary one under pip or build) must not
        # reach the debug info: the same sources make the same wheel.
        extra_compile_args=[*_CFLAGS, f"-ffile-prefix-map={_ROOT}=."],
        # The stable ABI, as pip builds it (cffi's default under setuptools).
        py_limited_api=True,
    )
    return ffi


def cross_compile(
    ext: Extension,
    out: Path,
    cc: str,
    include_dirs: list[Path],
    link_args: list[str],
) -> Path:
    """``ext`` as a stable-ABI shared object for another architecture: cffi's
    generated C, compiled by ``cc`` against that architecture's Python headers
    (``include_dirs``) and libraries (``link_args``). Written to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    gen = out.parent / f"{ext.stem}.c"
    with contextlib.redirect_stdout(io.StringIO()):  # cffi says 'generating ...'
        builder(ext).emit_c_code(str(gen))
    tmp = out.with_name(out.name + ".part")
    subprocess.run(
        [
            cc, "-shared", "-fPIC", *_CFLAGS, "-DPy_LIMITED_API=0x030B0000",
            f"-I{_HERE}", *(f"-I{d}" for d in include_dirs),
            str(gen), *(str(_HERE / name) for name in ext.sources),
            *link_args, "-o", str(tmp),
        ],
        check=True,
    )  # fmt: skip
    os.replace(tmp, out)
    return out


def _host_builder(ext: Extension) -> FFI:
    if __name__ != "__main__":
        require_headers(ext)
    return builder(ext)


ffibuilder = _host_builder(NATIVE)
genbuilder = _host_builder(GEN)


def _build(builder: FFI, package: str, stem: str, verbose: bool) -> None:
    tmpdir = _ROOT / "build" / "cffi"
    tmpdir.mkdir(parents=True, exist_ok=True)
    built = Path(builder.compile(tmpdir=str(tmpdir), verbose=verbose))
    dest = _ROOT / package / built.name
    # Same name as pip's build (stable ABI, .abi3.so), so whichever ran last
    # is what Python imports; an older differently named copy would shadow it.
    for stale in dest.parent.glob(f"{stem}.*.so"):
        if stale.name != dest.name:
            stale.unlink()
            print(f"removed stale {stale.relative_to(_ROOT)}")
    # Copy then rename: overwriting a loaded .so in place can crash its users.
    partial = dest.with_name(dest.name + ".tmp")
    shutil.copy2(built, partial)
    os.replace(partial, dest)
    print(f"built {dest.relative_to(_ROOT)}")


def main() -> int:
    """Build both extensions under ``build/cffi`` and copy them next to their wrappers."""
    verbose = "-q" not in sys.argv[1:]
    for ext in EXTENSIONS:
        require_headers(ext)
        _build(builder(ext), ext.package, ext.stem, verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
