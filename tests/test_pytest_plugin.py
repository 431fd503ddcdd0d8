"""hvsim's pytest plugin: registered by the package, and its documented example passes.

The example (``examples/pytest-hvsim``) tests a third party's shell collector
with the plugin's fixtures and no conftest of its own; it runs here in a
separate pytest, as a user's project would, so the fixtures must come from the
``pytest11`` entry point.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from hvsim import Lpar
from hvsim.pytest_plugin import fuse_missing
from tests.collect_support import PROJECT

EXAMPLE = PROJECT / "examples" / "pytest-hvsim"


def test_the_entry_point_names_the_plugin() -> None:
    eps = importlib.metadata.entry_points(group="pytest11")
    assert [e.value for e in eps if e.name == "hvsim"] == ["hvsim.pytest_plugin"]


def test_the_documented_example_passes(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", "/dev/null",
         "--rootdir", str(EXAMPLE), f"--basetemp={tmp_path / 'run'}", "-rs", str(EXAMPLE)],
        capture_output=True, text=True, check=False, cwd=EXAMPLE, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    want = "1 passed, 2 skipped" if fuse_missing() else "3 passed"
    assert want in proc.stdout.splitlines()[-1], proc.stdout[-2000:]


def test_the_factory_makes_crashed_and_running_lpars(
    hvsim_lpar_factory: Callable[..., Lpar],
) -> None:
    crashed = hvsim_lpar_factory("a", seed=1)
    running = hvsim_lpar_factory("b", crash=False, dump="fadump")
    assert crashed.state == "capture" and running.state == "running"
    assert Path(crashed.path).parent == Path(running.path).parent


@pytest.mark.hvsim_fuse
def test_the_capture_root_is_unmounted_after_a_failing_test(tmp_path: Path) -> None:
    # A test that fails with the root mounted, in its own pytest: the root must
    # be gone from /proc/mounts afterwards.
    (tmp_path / "test_fails.py").write_text(
        "def test_fails(hvsim_capture_root):\n"
        "    open('root.txt', 'w').write(str(hvsim_capture_root))\n"
        "    assert (hvsim_capture_root / 'proc/vmcore').exists()\n"
        "    assert False, 'on purpose'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", "/dev/null",
         "--rootdir", str(tmp_path), f"--basetemp={tmp_path / 'run'}", "test_fails.py"],
        capture_output=True, text=True, check=False, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1 and "on purpose" in proc.stdout
    root = (tmp_path / "root.txt").read_text()
    assert root and root not in Path("/proc/mounts").read_text()


def test_the_fleet_factory_takes_its_fleet_down(
    hvsim_fleet_factory: Callable[..., list[object]], tmp_path: Path
) -> None:
    hosts = hvsim_fleet_factory(2, seed=3)
    assert len(hosts) == 2
    mounts = Path("/proc/mounts").read_text()
    assert all(str(h.root) in mounts for h in hosts)
