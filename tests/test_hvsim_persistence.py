"""One LPAR, many processes: state survives, changes are seen at once, and big LPARs stay small."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hvsim import Lpar, StoreError

M = 1 << 20
G = 1 << 30
ROOT = Path(__file__).resolve().parent.parent


def _py(code: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=True
    )
    return out.stdout


def test_state_survives_reopening(tmp_path: Path) -> None:
    lpar = Lpar.create(tmp_path / "l", memory=G, seed=4, boot=True)
    lpar.crash()
    lpar.release(300 * M, M)
    again = Lpar.open(tmp_path / "l")
    assert again.state == "capture"
    assert again.config == lpar.config
    assert again.released_ranges() == lpar.released_ranges()
    assert again.read_vmcore(0, 4096) == lpar.read_vmcore(0, 4096)
    assert again.expected(300 * M, M) == lpar.expected(300 * M, M)


def test_another_process_sees_changes_and_makes_them(tmp_path: Path) -> None:
    path = tmp_path / "l"
    lpar = Lpar.create(path, memory=G, seed=4, boot=True)
    show = "import sys; from hvsim import Lpar; l = Lpar.open(sys.argv[1]); print(l.state)"
    assert _py(show, str(path)).strip() == "running"
    lpar.crash()
    assert _py(show, str(path)).strip() == "capture"
    addr = 400 * M
    before = lpar.read_phys(addr, 65536)
    # A separate process (think: FUSE daemon, collector) releases a range...
    _py(
        "import sys; from hvsim import Lpar; Lpar.open(sys.argv[1]).release(int(sys.argv[2]), 65536)",
        str(path),
        str(addr),
    )
    # ...and this object sees it on its next call, without reopening.
    assert lpar.released_ranges() == [(addr, addr + 2 * 65536)]
    assert lpar.read_phys(addr, 65536) != before
    status = json.loads(
        _py(
            "import sys, json; from hvsim import Lpar; print(json.dumps(Lpar.open(sys.argv[1]).status()))",
            str(path),
        )
    )
    assert status["kernel"]["release"]["writes"] == 1


def test_rapid_changes_from_two_objects_are_never_missed(tmp_path: Path) -> None:
    path = tmp_path / "l"
    a = Lpar.create(path, memory=G, boot=True)
    a.crash()
    b = Lpar.open(path)
    for i in range(20):
        a.release(300 * M + i * 4 * 65536, 65536)
        assert len(b.released_ranges()) == i + 1


def test_concurrent_releases_from_threads_and_processes(tmp_path: Path) -> None:
    path = tmp_path / "l"
    lpar = Lpar.create(path, memory=G, boot=True)
    lpar.crash()
    code = (
        "import sys; from hvsim import Lpar; l = Lpar.open(sys.argv[1]); base = int(sys.argv[2])\n"
        "for i in range(10): l.release(base + i * 4 * 65536, 65536)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(path), str(300 * M + k * 64 * M)],
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        for k in range(2)
    ]
    errors: list[BaseException] = []

    def work(base: int) -> None:
        try:
            for i in range(10):
                lpar.release(base + i * 4 * 65536, 65536)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(300 * M + k * 64 * M,)) for k in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait() for p in procs] == [0, 0]
    assert not errors
    assert len(lpar.released_ranges()) == 40
    assert lpar.status()["kernel"]["release"]["writes"] == 40


def test_open_refuses_non_lpars(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        Lpar.open(tmp_path / "missing")
    d = tmp_path / "half"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "lock").write_text("")
    with pytest.raises(StoreError):
        Lpar.open(d)


def test_files_are_private(tmp_path: Path) -> None:
    lpar = Lpar.create(tmp_path / "l", memory=G, boot=True)
    lpar.crash()
    for root, dirs, files in os.walk(lpar.path):
        for name in dirs:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) == 0o700
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(lpar.path).st_mode) == 0o700


def test_unreachable_layers_and_files_are_collected(tmp_path: Path) -> None:
    lpar = Lpar.create(tmp_path / "l", memory=G, boot=True)
    counts = []
    for _ in range(6):
        lpar.crash()
        truth = lpar.expected(0, 4 * M)
        lpar.invalidate()
        assert lpar.expected(0, 4 * M) == truth
        counts.append(
            (len(os.listdir(os.path.join(lpar.path, "data"))), len(lpar.status()["events"]))
        )
    # What is kept does not grow: the last dump's truth (whose scratch area
    # holds the previous dump's sections) and the saved sections.
    assert counts[2][0] == counts[5][0] <= 6
    verify_sections_ok(lpar)
    lpar.reboot()
    assert len(os.listdir(os.path.join(lpar.path, "data"))) <= 6


def verify_sections_ok(lpar: Lpar) -> None:
    lpar.crash()
    from hvsim.verify import verify_sections

    report = verify_sections(lpar)
    assert report.ok, report.text()


@pytest.mark.parametrize("memory", ["1T", "4T"])
def test_a_huge_lpar_costs_a_few_mib(tmp_path: Path, memory: str) -> None:
    lpar = Lpar.create(tmp_path / "big", memory=memory, cpus=64, seed=1, boot=True)
    assert lpar.crash() == "capture"
    assert lpar.disk_usage() < 100 * M
    size = lpar.vmcore_size()
    assert size > lpar.config.memory
    tail = lpar.read_vmcore(size - M, M)
    assert len(tail) == M
    info = lpar.last_dump()
    assert info is not None
    dest, _, _copied = info.sections["rmo"]
    assert lpar.read_phys(dest + 5 * M, 65536) == lpar.expected(5 * M, 65536)
    quarter = lpar.config.memory // 4
    lpar.release(quarter, quarter)
    assert lpar.released_ranges() == [(quarter, 2 * quarter + 65536)]
