"""Export a simulated LPAR's capture-kernel root as plain files (no FUSE).

``ROOT/proc/vmcore`` becomes an ordinary file (page cache speed, for the
benchmarks), the device tree and ``release_region`` plain files; a write to
that ``release_region`` just lands in the file, so tests can see whether a
tool wrote anything there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hvsim import Lpar


def export_root(lpar: Lpar, root: Path, *, vmcore: bool = True) -> Path:
    dt = root / "sys/firmware/devicetree/base"
    for name, value in lpar.device_tree().items():
        path = dt / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value)
    (root / "proc").mkdir(parents=True, exist_ok=True)
    link = root / "proc/device-tree"
    if not link.exists():
        link.symlink_to("../sys/firmware/devicetree/base")
    (root / "sys/kernel").mkdir(parents=True, exist_ok=True)
    (root / "sys/kernel/release_region").write_text(lpar.release_region_text())
    (root / "sys/kernel/phyp_dump_active").write_text(lpar.phyp_dump_active_text())
    if vmcore:
        size = lpar.vmcore_size()
        with open(root / "proc/vmcore", "wb") as f:
            step = 64 << 20
            for off in range(0, size, step):
                f.write(lpar.read_vmcore(off, min(step, size - off)))
        os.chmod(root / "proc/vmcore", 0o400)
    return root


if __name__ == "__main__":
    export_root(Lpar.open(sys.argv[1]), Path(sys.argv[2]))
