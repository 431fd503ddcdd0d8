"""hvsim as a pytest plugin: test your own dump tooling against simulated crashed LPARs.

Installed with hvdump (entry point ``pytest11``: pytest loads it by itself).
Fixtures:

``hvsim_lpar_factory``
    ``make(name="lpar", *, crash=True, **create_kwargs) -> Lpar``: a booted
    LPAR under the test's ``tmp_path``, crashed unless ``crash=False`` (1 GiB,
    mostly zero pages unless given; any :meth:`hvsim.Lpar.create` argument,
    e.g. ``dump="fadump"``, ``endian="little"``, ``seed=``).
``hvsim_crashed_lpar``
    One crashed LPAR (hypervisor-assisted dump, 1 GiB).
``hvsim_capture_root``
    The crashed LPAR's capture-kernel root, mounted with FUSE: ``ROOT/proc/vmcore``,
    ``ROOT/sys/kernel/release_region`` and the rest a capture kernel offers.
    Unmounted after the test, failed or not. Skips the test without FUSE.
``hvsim_fleet_factory``
    ``up(count, **fleet_up_kwargs) -> list[FleetHost]``: a fleet of crashed,
    mounted LPARs and its Ansible inventory; taken down after the test.

Marker ``hvsim_fuse``: skip the test where FUSE is missing (``/dev/fuse`` and
``fusermount3``); the root and fleet fixtures skip by themselves.

Ground truth for assertions, from :class:`hvsim.Lpar`: ``expected(paddr, size)``
(the crashed kernel's memory), ``released_ranges()`` (what was given back, so
a test can tell a release came too early), ``status()``; and the command
``hvsim verify LPAR FILE`` (a dump file checked page by page).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hvsim.lpar import Lpar

__all__ = [
    "FAST_MIX",
    "fuse_missing",
    "hvsim_capture_root",
    "hvsim_crashed_lpar",
    "hvsim_fleet_factory",
    "hvsim_lpar_factory",
    "mounted",
]

FAST_MIX = "zero=0.7,text=0.1,pointer=0.15,random=0.05"
"""Mostly zero pages: fast collections, every page kind still present."""


def fuse_missing() -> str:
    """Why FUSE roots cannot be mounted here ("" when they can)."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (apt-get install fuse3)"
    return ""


@contextlib.contextmanager
def mounted(lpar: Lpar, root: Path) -> Iterator[Path]:
    """``lpar``'s capture root mounted at ``root`` for the ``with`` block."""
    from hvsim import fuse_root

    root.mkdir(exist_ok=True)
    fuse_root.mount(lpar.path, str(root))
    try:
        yield root
    finally:
        fuse_root.umount(str(root))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hvsim_fuse: needs FUSE to mount hvsim capture roots")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("hvsim_fuse") is not None and fuse_missing():
        pytest.skip(fuse_missing())


@pytest.fixture
def hvsim_lpar_factory(tmp_path: Path) -> Callable[..., Lpar]:
    def make(name: str = "lpar", *, crash: bool = True, **kw: Any) -> Lpar:
        kw.setdefault("memory", "1G")
        kw.setdefault("mix", FAST_MIX)
        lpar = Lpar.create(tmp_path / name, boot=True, **kw)
        if crash:
            lpar.crash()
        return lpar

    return make


@pytest.fixture
def hvsim_crashed_lpar(hvsim_lpar_factory: Callable[..., Lpar]) -> Lpar:
    return hvsim_lpar_factory("crashed")


@pytest.fixture
def hvsim_capture_root(hvsim_crashed_lpar: Lpar, tmp_path: Path) -> Iterator[Path]:
    if fuse_missing():
        pytest.skip(fuse_missing())
    with mounted(hvsim_crashed_lpar, tmp_path / "root") as root:
        yield root


@pytest.fixture
def hvsim_fleet_factory(tmp_path: Path) -> Iterator[Callable[..., list[Any]]]:
    from hvsim.fleet import fleet_down, fleet_up

    if fuse_missing():
        pytest.skip(fuse_missing())
    made: list[Path] = []

    def up(count: int, **kw: Any) -> list[Any]:
        d = tmp_path / f"fleet{len(made)}"
        made.append(d)
        return fleet_up(d, count, **kw)

    yield up
    for d in made:
        fleet_down(d)
