"""Export a simulated LPAR's capture-kernel root as plain files (no FUSE).

``ROOT/proc/vmcore`` becomes an ordinary file (page cache speed, for the
benchmarks), the device tree and the interface's sysfs files (phyp:
``release_region``; fadump: ``/sys/kernel/fadump/*``) plain files; a write to
one just lands in the file, so tests can see whether a tool wrote anything
there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hvsim import Lpar
from hvsim.fuse_root import root_table, text_providers


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
    # The interface's own text files (phyp: release_region, phyp_dump_active;
    # fadump: /sys/kernel/fadump/*), as its capture kernel shows them.
    table = root_table(lpar.config.dump)
    texts = text_providers(lpar)
    for f in table.shown(lpar.state):
        if f.is_text and f.path.startswith("sys/"):
            path = root / f.path
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write-only files (fadump's release_mem) show nothing.
            path.write_text(texts[f.name]() if f.mode & 0o444 else "")
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
