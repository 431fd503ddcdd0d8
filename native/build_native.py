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
markers in each extension's header: one copy of every prototype.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from cffi import FFI

__all__ = ["GEN_MODULE", "MODULE", "NATIVE_SOURCES", "ffibuilder", "genbuilder", "main"]

MODULE = "drgn_hvdump._native"
GEN_MODULE = "hvsim._gen"

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
_HEADER = _HERE / "hvnative.h"
_GEN_HEADER = _HERE / "hvgen.h"
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


NATIVE_SOURCES = ("hvnative.c", "hvcodec.c", "hvpages.c")
"""The C files of ``drgn_hvdump._native`` (the firmware suite cross-builds the same)."""

_CFLAGS = ["-O3", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"]

ffibuilder = FFI()
ffibuilder.cdef(_cdef_text(_HEADER))
ffibuilder.set_source(
    MODULE,
    '#include "hvnative.h"',
    sources=[_rel(_HERE / name) for name in NATIVE_SOURCES],
    # The page codecs of the kdump format (Debian: liblzo2-dev libdeflate-dev
    # libsnappy-dev libzstd-dev, installed by scripts/install-system-deps.sh).
    libraries=["deflate", "lzo2", "snappy", "zstd"],
    include_dirs=[_rel(_HERE)],
    depends=[_rel(_HEADER), _rel(_HERE / "hvcommon.h")],
    extra_compile_args=_CFLAGS,
    # The stable ABI, as pip builds it (cffi's default under setuptools).
    py_limited_api=True,
)

genbuilder = FFI()
genbuilder.cdef(_cdef_text(_GEN_HEADER))
genbuilder.set_source(
    GEN_MODULE,
    '#include "hvgen.h"',
    sources=[_rel(_HERE / "hvgen.c")],
    include_dirs=[_rel(_HERE)],
    depends=[_rel(_GEN_HEADER), _rel(_HERE / "hvcommon.h")],
    extra_compile_args=_CFLAGS,
    py_limited_api=True,
)


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
    _build(ffibuilder, "drgn_hvdump", "_native", verbose)
    _build(genbuilder, "hvsim", "_gen", verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
