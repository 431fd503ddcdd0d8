"""cffi API-mode build of ``native/hvnative.c`` into ``drgn_hvdump._native``.

setuptools imports ``ffibuilder`` from here (``setup.py``'s ``cffi_modules``)
and compiles the extension at install time, ``pip install -e .`` included.
Run as a script, it builds the extension in place next to
``drgn_hvdump/native.py``, so a developer can test C changes without pip::

    .venv/bin/python native/build_native.py

The declarations given to cffi are the block between the ``cffi-cdef``
markers in ``native/hvnative.h``: one copy of every prototype.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from cffi import FFI

__all__ = ["MODULE", "ffibuilder", "main"]

MODULE = "drgn_hvdump._native"

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
_HEADER = _HERE / "hvnative.h"
_BEGIN = "/* cffi-cdef-begin */"
_END = "/* cffi-cdef-end */"


def _cdef_text() -> str:
    text = _HEADER.read_text(encoding="utf-8")
    start = text.find(_BEGIN)
    stop = text.find(_END)
    if start < 0 or stop < start:
        raise RuntimeError(f"{_HEADER}: missing {_BEGIN} ... {_END} block for cffi")
    return text[start + len(_BEGIN) : stop]


def _rel(path: Path) -> str:
    # setuptools wants paths relative to the project root, where it runs; as a
    # script, cffi's compile() runs gcc from its tmpdir, so paths must be absolute.
    if __name__ == "__main__" or Path.cwd() != _ROOT:
        return str(path)
    return os.path.relpath(path, _ROOT)


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    MODULE,
    '#include "hvnative.h"',
    sources=[_rel(_HERE / "hvnative.c"), _rel(_HERE / "hvcodec.c")],
    # The page codecs of the kdump format (Debian: liblzo2-dev libdeflate-dev
    # libsnappy-dev libzstd-dev, installed by scripts/install-system-deps.sh).
    libraries=["deflate", "lzo2", "snappy", "zstd"],
    include_dirs=[_rel(_HERE)],
    depends=[_rel(_HEADER)],
    extra_compile_args=["-O3", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
    # The stable ABI, as pip builds it (cffi's default under setuptools).
    py_limited_api=True,
)


def main() -> int:
    """Build the extension under ``build/cffi`` and copy it into ``drgn_hvdump/``."""
    tmpdir = _ROOT / "build" / "cffi"
    tmpdir.mkdir(parents=True, exist_ok=True)
    built = Path(ffibuilder.compile(tmpdir=str(tmpdir), verbose="-q" not in sys.argv[1:]))
    dest = _ROOT / "drgn_hvdump" / built.name
    # Same name as pip's build (stable ABI, .abi3.so), so whichever ran last
    # is what Python imports; an older differently named copy would shadow it.
    for stale in dest.parent.glob("_native.*.so"):
        if stale.name != dest.name:
            stale.unlink()
            print(f"removed stale {stale.relative_to(_ROOT)}")
    # Copy then rename: overwriting a loaded .so in place can crash its users.
    partial = dest.with_name(dest.name + ".tmp")
    shutil.copy2(built, partial)
    os.replace(partial, dest)
    print(f"built {dest.relative_to(_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
