"""The crashed kernel's memory as an ELF core: ground truth that stock drgn opens.

``write_truth_core(lpar, path)`` writes what the crashed kernel held (from
:meth:`hvsim.Lpar.expected`) as an ELF64 ``ET_CORE`` in the kernel's byte
order: one ``PT_LOAD`` per range (by default the low 256 MiB, where hvsim's
kernel keeps its image, tasks, stacks and log; ``full=True`` for all of RAM),
a ``VMCOREINFO`` note, and an ``NT_PRSTATUS`` note per CPU (``pr_pid`` is
the CPU number + 1, as QEMU's dumps number them, so each is distinct). Open it
with the matching image::

    drgn -c CORE -s $(hvsim vmlinux LPAR)

This is what a perfect collector would produce; it is also the reference
the collector's output is checked against.
"""

from __future__ import annotations

import os
from pathlib import Path

from drgn_hvdump.formats.elfcore import NT_PRSTATUS, LoadSegment, Note, build_core_header
from drgn_hvdump.formats.vmcoreinfo import VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE

from .kernel import CrashedKernel
from .lpar import Lpar

__all__ = ["LOW_MEMORY", "truth_core_notes", "write_truth_core"]

LOW_MEMORY = 256 << 20
_CHUNK = 16 << 20


def truth_core_notes(image: CrashedKernel) -> list[Note]:
    """The notes of a ground-truth core: one ``NT_PRSTATUS`` per CPU, then VMCOREINFO."""
    notes = [
        Note("CORE", NT_PRSTATUS, image.prstatus(cpu, pid=cpu + 1))
        for cpu in range(image.config.cpus)
    ]
    notes.append(Note(VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE, image.vmcoreinfo()))
    return notes


def write_truth_core(lpar: Lpar, path: str | os.PathLike[str], *, full: bool = False) -> int:
    """Write the last dump's crashed memory as an ELF core (mode 0600); returns its size.

    Raises ValueError if the LPAR has not crashed with a dump yet.
    """
    image = lpar.crashed_kernel()
    if image is None:
        raise ValueError(f"{lpar.path}: no crash yet: nothing to write (hvsim crash first)")
    size = lpar.config.memory if full else min(LOW_MEMORY, lpar.config.memory)
    layout = build_core_header(
        truth_core_notes(image),
        [LoadSegment(0, size)],
        image.config.endian,
        page_size=lpar.config.page_size,
    )
    target = Path(path)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(layout.header)
        buf = bytearray(_CHUNK)
        for start in range(0, size, _CHUNK):
            n = min(_CHUNK, size - start)
            view = memoryview(buf)[:n]
            lpar.expected_into(start, view)
            f.write(view)
    return layout.file_size
