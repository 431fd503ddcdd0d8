"""How a capture kernel offers a waiting dump, one implementation per kernel generation.

The collector, the drgn plugin and the Ansible modules ask :func:`open_capture`
for the interface of the system under ``root`` (``/`` on a real LPAR, a FUSE
mount of a simulated one in tests) and use only :class:`CaptureInterface`.
Two generations: hypervisor-assisted dump (:mod:`drgn_hvdump.capture.phyp`,
``release_region``) and firmware-assisted dump (:mod:`drgn_hvdump.capture.fadump`,
``/sys/kernel/fadump/``). Each generation names the files of its capture root
once, as data (:mod:`drgn_hvdump.capture.rootfiles`, e.g. ``PhypDump.ROOT_FILES``).
"""

from __future__ import annotations

from pathlib import Path

from drgn_hvdump.capture.base import CaptureInterface, DumpState, NoDumpError
from drgn_hvdump.capture.fadump import FADUMP_ROOT_FILES, FadumpDump
from drgn_hvdump.capture.phyp import PHYP_ROOT_FILES, PhypDump
from drgn_hvdump.capture.rootfiles import RootFile, RootTable

__all__ = [
    "FADUMP_ROOT_FILES",
    "PHYP_ROOT_FILES",
    "CaptureInterface",
    "DumpState",
    "FadumpDump",
    "NoDumpError",
    "PhypDump",
    "RootFile",
    "RootTable",
    "detect_capture",
    "open_capture",
]

# Newer generations first: a kernel offers at most one of them.
_GENERATIONS: tuple[type[CaptureInterface], ...] = (FadumpDump, PhypDump)


def open_capture(root: str | Path = "/") -> CaptureInterface:
    """The capture interface of the system mounted at ``root``.

    Always returns an interface, so callers can ask whether firmware supports
    dumps at all; :meth:`CaptureInterface.state` says whether one is waiting.
    """
    return detect_capture(root) or PhypDump(Path(root))


def detect_capture(root: str | Path = "/") -> CaptureInterface | None:
    """The capture interface the system mounted at ``root`` shows, or None when
    it shows none (not a capture root, or firmware without dump support)."""
    root = Path(root)
    for generation in _GENERATIONS:
        if generation.detect(root):
            return generation(root)
    return None
