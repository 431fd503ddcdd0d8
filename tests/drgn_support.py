"""Shared by the tests that run real drgn on hvsim's crashed kernel."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drgn import Program

from hvsim import Lpar
from hvsim.groundcore import write_truth_core
from hvsim.kernel import KernelImage, vmlinux_path


@dataclass
class TruthCore:
    """A crashed LPAR and its memory as an ordinary ELF core (low memory in place)."""

    endian: str
    lpar: Lpar
    image: KernelImage
    core: Path
    vmlinux: str


def crash_lpar(
    d: Path, endian: str, scenario: str, *, cpus: int = 4, seed: int = 11, **kw: Any
) -> tuple[Lpar, KernelImage]:
    """Create a 1 GiB LPAR in ``d/lpar`` and crash it with ``scenario``."""
    lpar = Lpar.create(
        d / "lpar", memory="1G", cpus=cpus, endian=endian, seed=seed, boot=True, **kw
    )
    lpar.crash(scenario)
    image = lpar.crashed_kernel()
    assert image is not None
    return lpar, image


def crash_to_truth_core(
    d: Path, endian: str, scenario: str, *, cpus: int = 4, seed: int = 11, **kw: Any
) -> TruthCore:
    """:func:`crash_lpar`, then write the crashed memory to ``d/core``."""
    lpar, image = crash_lpar(d, endian, scenario, cpus=cpus, seed=seed, **kw)
    core = d / "core"
    write_truth_core(lpar, core)
    return TruthCore(endian, lpar, image, core, vmlinux_path(endian))


def open_core(path: Path | str, vmlinux: str) -> Program:
    """drgn on ``path`` with ``vmlinux``'s debug info (plugins as drgn loads them)."""
    prog = Program()
    prog.set_core_dump(str(path))
    prog.load_debug_info([vmlinux])
    return prog
