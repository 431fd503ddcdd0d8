"""``hvdump-makedumpfile``: makedumpfile's command line, and Debian's kdump-tools calling it.

The kdump-tools test runs Debian's own ``kdump-config savecore`` (unpacked
from the package, never installed) with the documented one-line
configuration, on the vmcore of a crashed simulated LPAR: kdump-tools pipes
``makedumpfile -F`` into the saved file; makedumpfile ``-R`` (a tool we did
not write) rebuilds it, and hvsim checks every page against the crashed
kernel's memory.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from drgn_hvdump.core_collector import parse_args
from drgn_hvdump.errors import HvdumpError
from hvsim import Lpar
from hvsim.pytest_plugin import mounted

COLLECTOR = str(Path(sys.executable).parent / "hvdump-makedumpfile")


@pytest.mark.parametrize(
    ("argv", "compress", "level", "flattened"),
    [
        (["-l", "--message-level", "7", "-d", "31", "V", "D"], "lzo", 31, False),
        (["-F", "-c", "-d", "31", "V"], "zlib", 31, True),
        (["-cd", "31", "-F", "V"], "zlib", 31, True),
        (["-z", "V", "D"], "zstd", 0, False),
        (["-p", "V", "D"], "snappy", 0, False),
        (["V", "D"], "none", 0, False),
    ],
)
def test_makedumpfile_options(argv: list[str], compress: str, level: int, flattened: bool) -> None:
    args = parse_args(argv)
    assert (args.compress, args.dump_level, args.flattened) == (compress, level, flattened)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["-E", "-d", "31", "V", "D"], "-E is not supported (ELF output"),
        (["--split", "V", "D1", "D2"], "--split is not supported (split output"),
        (["--dump-dmesg", "V", "D"], "--dump-dmesg is not supported"),
        (["-x", "vmlinux", "-d", "31", "V", "D"], "-x is not supported"),
        (["--frobnicate", "V", "D"], "--frobnicate is not supported (not a makedumpfile option"),
        (["-c", "-l", "V", "D"], "give one of -c -l -p -z, not 2"),
        (["-d", "32", "V", "D"], "-d 32: the dump level is 0 to 31"),
        (["-F", "V", "D"], "-F writes the dump to stdout: give VMCORE only"),
        (["V"], "give VMCORE and DUMPFILE (or -F"),
        (["--num-threads", "0", "V", "D"], "--num-threads 0: give 1 or more"),
    ],
)
def test_what_it_does_not_do_is_one_line(argv: list[str], says: str) -> None:
    with pytest.raises(HvdumpError) as exc:
        parse_args(argv)
    assert says in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.hvsim_fuse
def test_writes_the_file_and_refuses_to_overwrite_it(
    hvsim_lpar_factory: Callable[..., Lpar], tmp_path: Path
) -> None:
    lpar = hvsim_lpar_factory(seed=11)
    with mounted(lpar, tmp_path / "root") as root:
        vmcore = str(root / "proc/vmcore")
        out = tmp_path / "crash" / "vmcore"
        out.parent.mkdir()
        run = [COLLECTOR, "-l", "--message-level", "7", "-d", "31", vmcore, str(out)]
        proc = subprocess.run(run, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        assert f"the dumpfile is saved to {out}" in proc.stderr
        assert out.stat().st_mode & 0o777 == 0o600
        assert sorted(p.name for p in out.parent.iterdir()) == ["vmcore"]  # no work dir left
        again = subprocess.run(run, capture_output=True, text=True, check=False)
        assert again.returncode == 1
        assert again.stderr.strip().splitlines() == [
            f"hvdump-makedumpfile: error: {out}: already exists; give -f to overwrite it"
        ]
        refused = subprocess.run(
            [COLLECTOR, "-E", vmcore, str(tmp_path / "x")], capture_output=True, text=True
        )
        assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "x").exists()
    check = subprocess.run(
        [sys.executable, "-m", "hvsim", "verify", str(lpar.path), str(out)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0 and "0 wrong, 0 missing" in check.stdout, check.stdout


def _kdump_config(tmp_path: Path) -> Path:
    """Debian's kdump-config, unpacked from the kdump-tools package."""
    from tests.firmware_parts import SUITE, _download_closure, _unpack, cache_dir

    cache = cache_dir() / "kdump-tools"
    debs = _download_closure(cache, "amd64", ("kdump-tools",), SUITE, closure=False)
    _unpack(debs, cache / "root")
    return cache / "root/usr/sbin/kdump-config"


@pytest.mark.hvsim_fuse
@pytest.mark.skipif(shutil.which("makedumpfile") is None, reason="makedumpfile missing")
@pytest.mark.skipif(not Path("/lib/lsb/init-functions").exists(), reason="no lsb init-functions")
def test_debian_kdump_tools_saves_the_core_through_it(
    hvsim_lpar_factory: Callable[..., Lpar], tmp_path: Path
) -> None:
    lpar = hvsim_lpar_factory(seed=12)
    crash = tmp_path / "crash"
    crash.mkdir()
    defaults = tmp_path / "kdump-tools"
    shim = tmp_path / "hvdump-kdump"  # /usr/local/lib/hvdump-kdump in docs/kdump.md
    shim.mkdir()
    (shim / "makedumpfile").symlink_to(COLLECTOR)
    # The configuration docs/kdump.md gives, plus where this test keeps its files.
    defaults.write_text(
        f'KDUMP_COREDIR="{crash}"\n'
        'MAKEDUMP_ARGS="-c -d 31"\n'
        "KDUMP_DUMP_DMESG=0\n"
        f"PATH={shim}:$PATH\n"
    )
    with mounted(lpar, tmp_path / "root") as root:
        # The test's paths for the package's fixed ones: its defaults file and the vmcore.
        script = _kdump_config(tmp_path).read_text()
        script = script.replace(
            "KDUMP_DEFAULTS=/etc/default/kdump-tools", f"KDUMP_DEFAULTS={defaults}"
        )
        script = script.replace("vmcore_file=/proc/vmcore", f"vmcore_file={root}/proc/vmcore")
        config = tmp_path / "kdump-config"
        config.write_text(script)
        proc = subprocess.run(
            ["sh", str(config), "savecore"], capture_output=True, text=True, check=False
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "running makedumpfile -c -d 31 -F" in proc.stdout + proc.stderr
    (stamp,) = crash.iterdir()
    (saved,) = [p for p in stamp.iterdir() if re.fullmatch(r"dump\.\d{12}", p.name)]
    assert saved.stat().st_size > 0
    rebuilt = tmp_path / "vmcore.kdump"
    with open(saved, "rb") as stream:
        subprocess.run(["makedumpfile", "-R", str(rebuilt)], stdin=stream, check=True,
                       capture_output=True)  # fmt: skip
    check = subprocess.run(
        [sys.executable, "-m", "hvsim", "verify", str(lpar.path), str(rebuilt)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0 and "0 wrong, 0 missing" in check.stdout, check.stdout
    assert "left out by level 31" in check.stdout
