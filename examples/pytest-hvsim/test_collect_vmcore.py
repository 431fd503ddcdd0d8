"""Testing a shell dump collector against hvsim with hvdump's pytest plugin.

With hvdump installed, pytest loads the plugin by itself (entry point
``pytest11``): the fixtures below need no conftest. Run from this directory:

    pytest -q
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from hvsim import Lpar

COLLECTOR = Path(__file__).with_name("collect-vmcore.sh")


def run_collector(root: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(COLLECTOR), str(root), str(out)], capture_output=True, text=True)


def test_the_copy_is_the_crashed_kernels_memory(
    hvsim_crashed_lpar: Lpar, hvsim_capture_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "vmcore"
    proc = run_collector(hvsim_capture_root, out)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    # hvsim checks every page of the copy against the crashed kernel's memory.
    check = subprocess.run(
        [sys.executable, "-m", "hvsim", "verify", str(hvsim_crashed_lpar.path), str(out)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # The collector gives nothing back: the dump's memory is all still reserved.
    assert hvsim_crashed_lpar.released_ranges() == []


@pytest.mark.hvsim_fuse
def test_fadump_little_endian_too(hvsim_lpar_factory: Callable[..., Lpar], tmp_path: Path) -> None:
    from hvsim.pytest_plugin import mounted

    lpar = hvsim_lpar_factory("fadump", dump="fadump", endian="little", seed=5)
    with mounted(lpar, tmp_path / "root") as root:
        assert run_collector(root, tmp_path / "vmcore").returncode == 0
    check = subprocess.run(
        [sys.executable, "-m", "hvsim", "verify", str(lpar.path), str(tmp_path / "vmcore")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_no_dump_is_one_line(tmp_path: Path) -> None:
    proc = run_collector(tmp_path, tmp_path / "vmcore")
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"collect-vmcore: no dump waiting under {tmp_path}"
