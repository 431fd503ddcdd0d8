"""``make dist``: the sdist and the self-contained wheels, installed where nothing can compile.

One build (``scripts/build_dist.py``, both architectures) serves every test:

* the x86_64 wheel goes into a fresh venv inside a mount namespace where
  ``/usr/include`` is empty and the machine's codec libraries are masked, so
  nothing can be compiled and only the libraries the wheel bundles can load;
  there ``hvdump --help``, ``hvsim --help``, the drgn plugin's registration, a
  collection from a crashed simulated LPAR and ``hvdump verify`` must work;
* the ppc64le wheel is unpacked and its extension loaded by Debian 12's ppc64el
  CPython under qemu-user, without the userland's own codec libraries: a page
  compressed and decoded by every codec;
* the sdist builds a wheel only where the codec headers are: without one, the
  build stops with one line naming the package;
* two builds of the same checkout are the same bytes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from tests.collect_support import FUSE_MISSING, PROJECT

pytestmark = [pytest.mark.slow]

sys.path.insert(0, str(PROJECT))
from scripts.build_dist import build  # noqa: E402

CODEC_LIBS = ("libzstd", "libdeflate", "liblzo2", "libsnappy")
WHEEL = re.compile(r"^hvdump-0\.1\.0-cp311-abi3-manylinux_2_(\d+)_(x86_64|ppc64le)\.whl$")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("powerpc64le-linux-gnu-gcc") is None:
        pytest.skip("powerpc64le-linux-gnu-gcc missing (make setup installs it)")
    made = build(tmp_path_factory.mktemp("dist"))
    out = {"sdist": next(p for p in made if p.name.endswith(".tar.gz"))}
    for p in made:
        m = WHEEL.match(p.name)
        if m:
            out[m[2]] = p
    return out


def _hide_dev() -> str:
    """sh lines that empty ``/usr/include`` and mask the host's codec libraries
    (gcc itself needs libzstd: nothing can compile afterwards)."""
    masks = [
        str(p)
        for d in (Path("/usr/lib/x86_64-linux-gnu"), Path("/lib/x86_64-linux-gnu"))
        if d.is_dir()
        for p in sorted(d.iterdir())
        if p.name.startswith(CODEC_LIBS) and ".so" in p.name and not p.is_symlink()
    ]
    return "mount -t tmpfs -o mode=755 tmpfs /usr/include\n" + "".join(
        f"mount --bind /dev/null {m}\n" for m in masks
    )


def _in_namespace(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``script`` (sh -eu) in a private mount namespace: its mounts end with it."""
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-euc", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )


def test_wheels_are_tagged_abi3_manylinux_and_bundle_their_codecs(dist: dict[str, Path]) -> None:
    machines = {"x86_64": "EM_X86_64", "ppc64le": "EM_PPC64"}
    for arch, machine in machines.items():
        wheel = dist[arch]
        with zipfile.ZipFile(wheel) as z:
            names = z.namelist()
            tag = z.read("hvdump-0.1.0.dist-info/WHEEL").decode()
            assert f"Tag: {wheel.name[len('hvdump-0.1.0-') : -4]}" in tag
            bundled = {n.rsplit("/", 1)[1] for n in names if n.startswith("hvdump.libs/")}
            assert sorted(b.split("-")[0] for b in bundled if b) == sorted(CODEC_LIBS)
            for so in ("drgn_hvdump/_native.abi3.so", "hvsim/_gen.abi3.so"):
                elf = ELFFile(z.open(so))
                assert elf["e_machine"] == machine, (arch, so)
                dyn = elf.get_section_by_name(".dynamic")
                needed = [t.needed for t in dyn.iter_tags("DT_NEEDED")]
                rpath = [t.rpath for t in dyn.iter_tags("DT_RPATH")]
                for lib in needed:
                    assert lib.startswith("libc.so") or lib in bundled, (arch, so, lib)
                if so.endswith("_native.abi3.so"):
                    assert rpath == ["$ORIGIN/../hvdump.libs"]
            assert "native/build_native.py" not in names
            assert not [n for n in names if n.startswith("tests/")]


def test_sdist_holds_what_builds_it_and_no_tests(dist: dict[str, Path]) -> None:
    import tarfile

    with tarfile.open(dist["sdist"]) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
        assert {"native/build_native.py", "native/hvcodec.c", "COPYING", "setup.py"} <= names
        assert not [n for n in names if n.startswith(("tests/", "bench/"))]
        assert {m.mtime for m in t.getmembers()} == {int(os.environ["SOURCE_DATE_EPOCH"])}


@pytest.mark.skipif(bool(FUSE_MISSING), reason=FUSE_MISSING or "FUSE")
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare missing")
def test_x86_64_wheel_works_in_a_fresh_venv_without_dev_packages(
    dist: dict[str, Path], tmp_path: Path
) -> None:
    script = (
        _hide_dev()
        + f"""
test ! -e /usr/include/stdio.h
{sys.executable} -m venv v
v/bin/pip install -q --disable-pip-version-check {dist["x86_64"]}
v/bin/hvdump --version
v/bin/hvdump --help >/dev/null
v/bin/hvsim --help >/dev/null
v/bin/python -c 'import importlib.metadata as m; \
print("plugin", [e.value for e in m.entry_points(group="drgn.plugins") if e.name == "hvdump"])'
v/bin/python -c 'import drgn_hvdump._native as n; print("native", n.__file__)'
v/bin/hvsim create lpar --memory 1G --cpus 2 --seed 7 --mix zero=0.7,text=0.2,random=0.1
v/bin/hvsim boot lpar
v/bin/hvsim crash lpar
mkdir root
v/bin/hvsim mount lpar root
v/bin/hvdump collect --root root --output dump --no-progress || {{ v/bin/hvsim umount root; exit 1; }}
v/bin/hvsim umount root
v/bin/hvdump verify dump
v/bin/hvsim verify lpar dump/dump.kdump
v/bin/hvdump-makedumpfile --help >/dev/null
v/bin/python -c 'import drgn' 2>/dev/null && exit 9  # collecting needs no drgn
v/bin/pip install -q --disable-pip-version-check "{dist["x86_64"]}[drgn]"
v/bin/drgn -q -c dump/dump.kdump -s "$(v/bin/hvsim vmlinux lpar)" \
    -e 'print("release", prog["init_uts_ns"].name.release.string_().decode())'
"""
    )
    proc = _in_namespace(script, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "hvdump 0.1.0" in proc.stdout
    assert "plugin ['drgn_hvdump.plugin']" in proc.stdout
    assert "release 2.6.32-hvsim" in proc.stdout
    assert f"native {tmp_path}/v/lib/python3.11/site-packages/drgn_hvdump/_native" in proc.stdout


def test_ppc64le_wheel_loads_its_own_codecs_under_qemu_user(
    dist: dict[str, Path], tmp_path: Path
) -> None:
    from tests.firmware_parts import PYTHON, fetch_userland
    from tests.makedumpfile_ppc64 import qemu_user

    user = fetch_userland()
    site = tmp_path / "site"
    with zipfile.ZipFile(dist["ppc64le"]) as z:
        z.extractall(site)
    for so in site.rglob("*.so*"):
        so.chmod(0o755)
    # The userland's libraries but its codecs: only the wheel's copies can load.
    libs = tmp_path / "libs"
    libs.mkdir()
    for d in user.libdirs:
        for p in d.iterdir():
            if not p.name.startswith(CODEC_LIBS) and not (libs / p.name).exists():
                (libs / p.name).symlink_to(p)
    code = f"""
import sys
sys.path[:0] = [{str(site)!r}, {str(user.root / "usr/lib/python3/dist-packages")!r}]
from drgn_hvdump import native
page = bytes(range(256)) * 256
for codec in (native.CODEC_ZLIB, native.CODEC_LZO, native.CODEC_SNAPPY, native.CODEC_ZSTD):
    c = native.PageCodec(codec, None, 65536)
    batch = c.compress(page, bytes(1))
    assert batch.flags[0] and c.decode(bytes(batch.data), batch.flags[0]) == page, codec
print("codecs ok")
import drgn_hvdump._native as n
print(n.__file__)
"""
    proc = subprocess.run(
        [
            *qemu_user(),
            str(user.root / "lib/powerpc64le-linux-gnu/ld64.so.2"),
            "--library-path",
            str(libs),
            str(user.root / f"usr/bin/{PYTHON}"),
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONHOME": str(user.root / "usr"), "PATH": "/usr/bin:/bin"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "codecs ok" in proc.stdout
    assert f"{site}/drgn_hvdump/_native.abi3.so" in proc.stdout


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare missing")
def test_sdist_without_a_codec_header_names_the_package(
    dist: dict[str, Path], tmp_path: Path
) -> None:
    # The machine's headers but zstd's, so only that one is missing.
    script = f"""
mkdir inc
cp -a /usr/include/. inc/
rm inc/zstd.h
mount --bind inc /usr/include
{sys.executable} -m venv v
v/bin/pip wheel -q --no-deps --disable-pip-version-check -w out {dist["sdist"]}
"""
    proc = _in_namespace(script, tmp_path)
    assert proc.returncode != 0
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "hvdump: cannot build" in ln]
    assert lines, proc.stderr[-3000:]
    assert "zstd.h not found; install libzstd-dev (Debian/Ubuntu) or libzstd-devel" in lines[0]


def test_the_same_checkout_builds_the_same_bytes(dist: dict[str, Path], tmp_path: Path) -> None:
    again = build(tmp_path / "again")
    first = {p.name: p.read_bytes() for p in dist.values()}
    assert {p.name: p.read_bytes() for p in again} == first
