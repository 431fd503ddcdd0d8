"""The hvsim command: each subcommand, help that teaches the model, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hvsim import Lpar
from hvsim.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as exc:  # argparse: --help and usage errors
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def test_a_whole_session(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lpar = str(tmp_path / "lpar")
    rc, out, _ = _run(capsys, "create", lpar, "--memory", "1G", "--cpus", "2", "--seed", "3",
                      "--page-size", "4K", "--endian", "little")  # fmt: skip
    assert rc == 0 and "1G RAM, 2 CPUs, little-endian, 4K pages" in out
    rc, out, _ = _run(capsys, "boot", lpar)
    assert rc == 0 and "running" in out and "dump registered" in out
    rc, out, _ = _run(capsys, "crash", lpar, "--scenario", "oops")
    assert rc == 0 and "hypervisor saved the dump" in out and "now capture" in out
    rc, out, _ = _run(capsys, "status", lpar)
    assert rc == 0
    for word in (
        "capture",
        "dump header",
        "PERFORMED",
        "CPU ",
        "HPTE ",
        "RMO ",
        "release counters",
    ):
        assert word in out
    rc, out, _ = _run(capsys, "status", lpar, "--json")
    status = json.loads(out)
    assert status["state"] == "capture" and status["dump"]["scenario"] == "oops"
    rc, out, _ = _run(capsys, "cat", lpar, "/sys/kernel/release_region")
    assert rc == 0 and out.startswith("CPU:0x")
    rc, out, _ = _run(capsys, "cat", lpar, "/proc/device-tree/rtas/ibm,kernel-dump")
    assert rc == 0 and len(out.strip()) == 320  # 160 bytes in hex
    rc, out, _ = _run(capsys, "cat", lpar)
    assert "rtas/ibm,dump-kernel" in out
    rc, out, _ = _run(capsys, "verify", lpar)
    assert rc == 0 and out.splitlines()[-1].startswith("OK:")
    rc, out, _ = _run(capsys, "release", lpar, "0x10000000", "0x1000")
    assert rc == 0 and "released 0x2000 bytes" in out
    vmcore = tmp_path / "vmcore"
    rc, out, _ = _run(capsys, "vmcore", lpar, str(vmcore))
    assert rc == 0 and vmcore.stat().st_size == Lpar.open(lpar).vmcore_size()
    assert (vmcore.stat().st_mode & 0o777) == 0o600
    rc, out, _ = _run(capsys, "verify", lpar, str(vmcore))
    # The first released pages were read after their release: reused data.
    assert rc == 1 and "wrong pages: 2 (2 released before they were saved?)" in out
    rc, out, _ = _run(capsys, "invalidate", lpar)
    assert rc == 0 and "running" in out
    rc, out, _ = _run(capsys, "reboot", lpar)
    assert rc == 0 and "running" in out


def test_crash_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lpar = str(tmp_path / "lpar")
    _run(capsys, "create", lpar, "--memory", "1G", "--boot")
    rc, out, _ = _run(
        capsys, "crash", lpar, "--no-reboot", "--partial", "rmo=64M", "--error", "hpte=0x1000"
    )
    assert rc == 0 and "now crashed" in out
    header = Lpar.open(lpar).dump_header()
    assert header is not None
    assert header.rmo.length_copied == 64 << 20 and header.hpte.error_flags == 0x1000
    rc, _, err = _run(capsys, "crash", lpar, "--partial", "disk=1")
    assert rc == 2 and err.count("\n") == 1


def test_create_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lpar = str(tmp_path / "lpar")
    rc, _, _ = _run(capsys, "create", lpar, "--memory", "1T", "--reserve-size", "auto", "--quirks",
                    "corrected", "--no-firmware", "--mix", "zero=0.5,random=0.5", "--literal-release-map")  # fmt: skip
    assert rc == 0
    cfg = Lpar.open(lpar).config
    assert cfg.reserve_size == 52224 << 20 and cfg.quirks == "corrected"
    assert not cfg.firmware_dump and cfg.literal_release_map and cfg.mix.zero == 0.5


@pytest.mark.parametrize(
    ("argv", "rc", "needle"),
    [
        (["create", "X", "--memory", "3M"], 1, "multiple of 256 MiB"),
        (["create", "X", "--memory", "lots"], 2, "not a number"),
        (["create", "X", "--memory", "1G", "--page-size", "8K"], 2, "4K or 64K"),
        (["create", "X", "--memory", "1G", "--mix", "zero=2"], 1, "page mix"),
        (["boot", "NOPE"], 1, "no such LPAR"),
        (["crash"], 2, "required"),
        (["frobnicate"], 2, "invalid choice"),
        (["release", "C", "junk", "1"], 1, "EINVAL"),
        (["release", "L", "10000000", "1000"], 1, "no dump is waiting"),
        (["crash", "L", "--scenario", "meteor"], 2, "invalid choice"),
        (["verify", "L"], 1, "no dump was ever taken"),
        (["boot", "L"], 1, "cannot boot"),
        (["cat", "L", "/proc/vmcore2"], 1, "no such file"),
        (["cat", "L", "/sys/kernel/release_region"], 1, "does not exist"),
    ],
)
def test_errors_are_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    rc: int,
    needle: str,
) -> None:
    Lpar.create(tmp_path / "L", memory="1G", boot=True)
    Lpar.create(tmp_path / "C", memory="1G", boot=True).crash()
    monkeypatch.chdir(tmp_path)
    got_rc, _out, err = _run(capsys, *argv)
    assert got_rc == rc
    assert err.startswith("hvsim: error: ") and err.count("\n") == 1, err
    assert needle in err
    assert "Traceback" not in err


def test_no_traceback_from_a_real_process(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "hvsim", "crash", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("hvsim: error:")


def test_help_explains_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, "--help")
    assert rc == 0
    for words in ("scratch area", "release_region", "one page past its end", "256 MiB",
                  "re-register", "--quirks corrected", "ibm,dump-kernel"):  # fmt: skip
        assert words in out, words
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert commands is not None
    for name in ("create", "boot", "crash", "reboot", "invalidate", "status", "release", "verify",
                 "cat", "vmcore", "mount", "umount"):  # fmt: skip
        assert name in commands
        rc, out, _ = _run(capsys, name, "--help")
        assert rc == 0 and len(out) > 200, name
    rc, out, _ = _run(capsys, "crash", "--help")
    assert "partial-copy" in out and "hv-error" in out
    rc, out, _ = _run(capsys, "release", "--help")
    assert "one page past the end" in out
