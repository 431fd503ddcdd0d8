"""hvdump convert head to head with Debian's makedumpfile on the same ELF vmcores.

    .venv/bin/python bench/vs_makedumpfile.py [--size 4G] [--kinds x86-64,ppc64le,ppc64]
        [--mix zero=0.22,text=0.3,pointer=0.33,random=0.15] [--repeat N]
        [--dir DIR] [--keep] [--json FILE] [--quick]

What it measures, per kind of vmcore (x86-64 with 4 KiB pages, ppc64le and
big-endian ppc64 with 64 KiB pages, page contents from hvsim's generator):

* ``makedumpfile -d 1`` (zero pages excluded, as hvdump does) with each codec
  its build has (zlib ``-c``, LZO ``-l``, none; snappy ``-p`` and zstd ``-z``
  only if ``makedumpfile -v`` says they are enabled) against
  ``hvdump convert --no-sync --compress`` the same codec, alternating the pair;
* ``hvdump convert --threads 2`` against ``makedumpfile --split`` into 2 files
  (makedumpfile's way of using 2 cores) and against makedumpfile on 1 core;
* hvdump once with its final fsync (makedumpfile never syncs, so every other
  hvdump run uses --no-sync);
* the limits: ``zstd -1 -T1``, ``lz4 -1`` and ``cat`` of the whole core.

Per run: wall seconds, input GB/s, user+sys CPU seconds of the child, input GB
per CPU second, output bytes, and hvdump/makedumpfile ratios of throughput
(higher is better for hvdump) and of output size, all from the same run.
The core is in the page cache (read once before), ``sync`` runs before each
timed command so earlier outputs' writeback does not land in it, and the
timed part holds /tmp/hvdump-bench.lock so other benchmarks do not overlap.
Afterwards libkdumpfile (the system python's ``kdumpfile``) reads about 2000
random pages (and the first and last) back from both tools' LZO and zlib
dumps and compares each with the source core's bytes.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import cpu_model

from drgn_hvdump import native
from drgn_hvdump.clitools import parse_size
from drgn_hvdump.formats.elfcore import (
    EM_PPC64,
    EM_X86_64,
    NT_PRSTATUS,
    LoadSegment,
    Note,
    PtRegs,
    build_core_header,
    build_prstatus,
)
from hvsim.pages import BUSY_MIX, PageMix, gen_pages_into

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HVDUMP = [sys.executable, "-m", "drgn_hvdump.cli"]
LOCK = "/tmp/hvdump-bench.lock"
STEP = 64 << 20  # generate and write the core in 64 MiB steps
SEED = 0x5EED


@dataclass(frozen=True)
class Kind:
    name: str
    page_size: int
    byteorder: str
    machine: int
    paddr: int
    vaddr: int


KINDS = {
    "x86-64": Kind("x86-64", 4096, "little", EM_X86_64, 0x100000, 0xFFFF888000100000),
    "ppc64le": Kind("ppc64le", 65536, "little", EM_PPC64, 0, 0xC000000000000000),
    "ppc64": Kind("ppc64", 65536, "big", EM_PPC64, 0, 0xC000000000000000),
}

# makedumpfile option, hvdump --compress name
CODECS = {"zlib": "-c", "lzo": "-l", "none": "", "snappy": "-p", "zstd": "-z"}


@dataclass
class Run:
    label: str
    tool: str  # makedumpfile, hvdump, limit
    codec: str
    wall: float
    cpu: float
    out_bytes: int
    ref: str | None = None  # label of the makedumpfile row this one is compared with
    timings: dict[str, float] = field(default_factory=dict)


class CommandFailed(Exception):
    pass


def _die(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def ensure_makedumpfile() -> str:
    found = shutil.which("makedumpfile")
    if found:
        return found
    print("makedumpfile is missing: apt-get install -y makedumpfile", flush=True)
    res = subprocess.run(
        ["apt-get", "install", "-y", "makedumpfile"], capture_output=True, text=True, check=False
    )
    found = shutil.which("makedumpfile")
    if res.returncode or not found:
        last = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        _die(f"could not install makedumpfile with apt-get (exit {res.returncode}): {last}")
    assert found is not None
    return found


def makedumpfile_info() -> tuple[str, list[str]]:
    """Version line and the codecs this build has (zlib always; lzo, snappy, zstd if enabled)."""
    out = subprocess.run(["makedumpfile", "-v"], capture_output=True, text=True, check=False).stdout
    lines = [x.strip() for x in out.splitlines() if x.strip()]
    version = lines[0] if lines else "makedumpfile: unknown version"
    enabled = {x.split()[0] for x in lines[1:] if x.split()[-1] == "enabled"}
    codecs = ["none", "lzo", "zlib"] + [c for c in ("snappy", "zstd") if c in enabled]
    return version, codecs


# ---------------------------------------------------------------- the vmcore


def build_core(path: Path, kind: Kind, size: int, mix: PageMix) -> tuple[int, float]:
    """Write the ELF vmcore; return its data offset and the measured share of zero pages."""
    ps = kind.page_size
    order: Literal["big", "little"] = "big" if kind.byteorder == "big" else "little"
    # x86-64: an all-zero struct elf_prstatus (336 bytes); ppc64: 504 bytes
    prstatus = bytes(336) if kind.machine == EM_X86_64 else build_prstatus(PtRegs(), order)
    # No VMCOREINFO: with it makedumpfile looks up kernel symbols (system_utsname)
    # and gives up on synthetic memory; without it, it allows -d 1 only.
    notes = [Note("CORE", NT_PRSTATUS, prstatus)]
    layout = build_core_header(
        notes,
        [LoadSegment(kind.paddr, size, vaddr=kind.vaddr)],
        order,
        machine=kind.machine,
        page_size=ps,
    )
    buf = bytearray(STEP)
    zero = 0
    with path.open("wb") as f:
        f.write(layout.header)
        done = 0
        while done < size:
            n = min(STEP, size - done)
            view = memoryview(buf)[:n]
            gen_pages_into(view, SEED, (kind.paddr + done) // ps, n // ps, ps, mix, order == "big")
            zero += sum(native.zero_pages(view, ps))
            f.write(view)
            done += n
    return layout.data_start, zero / (size // ps)


# ---------------------------------------------------------------- timing


def timed(cmd: list[str], stdout_path: Path | None, log: Path) -> tuple[float, float]:
    """Wall and user+sys CPU seconds of ``cmd`` (os.wait4), stdout to ``stdout_path``."""
    os.sync()  # earlier outputs' writeback must not land in this run
    with log.open("wb") as err:
        out = stdout_path.open("wb") if stdout_path else None
        try:
            t = time.perf_counter()
            p = subprocess.Popen(cmd, stdout=out or err, stderr=err, stdin=subprocess.DEVNULL)
            _, status, ru = os.wait4(p.pid, 0)
            wall = time.perf_counter() - t
        finally:
            if out:
                out.close()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        text = log.read_text(errors="replace").replace("\r", "\n")
        lines = [x.strip() for x in text.splitlines() if x.strip() and "Failed." not in x]
        raise CommandFailed(f"{' '.join(cmd[:4])}...: {lines[-1] if lines else 'no output'}")
    return wall, ru.ru_utime + ru.ru_stime


def _rm(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


@contextmanager
def bench_lock() -> Iterator[None]:
    with open(LOCK, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {LOCK} (another benchmark is running)", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def kdump_block_size(path: Path) -> int:
    """block_size (page size) in the header of a kdump file written on this (LE) host."""
    with path.open("rb") as f:
        head = f.read(432)
    return int(struct.unpack_from("<i", head, 428)[0])


# ---------------------------------------------------------------- read back


_CHECKER = r"""
import json, random, sys
import kdumpfile
core, data_start, paddr, size, ps, n, seed = sys.argv[1], *map(int, sys.argv[2:8])
files = sys.argv[8:]
npages = size // ps
rng = random.Random(seed)
idx = sorted({0, npages - 1, *rng.sample(range(npages), min(n, npages))})
ctxs, errors = {}, {}
for f in files:
    try:
        k = kdumpfile.kdumpfile(file=f)
        k.read(kdumpfile.KDUMP_MACHPHYSADDR, paddr, ps)
        ctxs[f] = k
    except Exception as e:
        errors[f] = f"{type(e).__name__}: {e}"
checked, mismatch = 0, None
with open(core, "rb") as c:
    for i in idx:
        addr = paddr + i * ps
        c.seek(data_start + i * ps)
        want = c.read(ps)
        for f, k in list(ctxs.items()):
            try:
                got = k.read(kdumpfile.KDUMP_MACHPHYSADDR, addr, ps)
            except Exception as e:
                errors[f] = f"page {addr:#x}: {type(e).__name__}: {e}"
                del ctxs[f]
                continue
            if got != want:
                first = next(j for j in range(ps) if got[j] != want[j])
                mismatch = f"{f}: page at paddr {addr:#x} differs from the core at byte {first}"
                break
        if mismatch or not ctxs:
            break
        checked += 1
print(json.dumps({"checked": checked, "errors": errors, "mismatch": mismatch}))
"""


def check_pages(
    core: Path, data_start: int, kind: Kind, size: int, files: list[Path], n: int = 2000
) -> dict[str, Any]:
    cmd = ["/usr/bin/python3", "-c", _CHECKER, str(core), str(data_start), str(kind.paddr)]
    cmd += [str(size), str(kind.page_size), str(n), str(SEED), *map(str, files)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        err = (res.stderr.strip().splitlines() or ["no output"])[-1]
        return {"checked": 0, "errors": {"checker": err}, "mismatch": None}
    result: dict[str, Any] = json.loads(res.stdout)
    return result


# ---------------------------------------------------------------- one kind


def bench_kind(
    kind: Kind, size: int, mix: PageMix, work: Path, repeat: int, md_codecs: list[str]
) -> dict[str, Any]:
    need = 3 * size
    free = shutil.disk_usage(work).free
    if free < need:
        _die(
            f"{work} has {free / 2**30:.1f} GiB free; a {size / 2**30:g} GiB {kind.name} core "
            f"and its outputs need about {need / 2**30:.1f} GiB (use --dir or a smaller --size)"
        )
    core = work / f"{kind.name}.core"
    t = time.perf_counter()
    data_start, zero_share = build_core(core, kind, size, mix)
    print(f"built {core.name}: {time.perf_counter() - t:.1f} s", flush=True)
    subprocess.run(["cat", str(core)], stdout=subprocess.DEVNULL, check=True)  # page cache
    log = work / "log"
    md_out, md_1, md_2 = work / "md.kdump", work / "md.1", work / "md.2"
    hv_dir = work / "hv"
    hv_ps = ["--page-size", str(kind.page_size)] if kind.machine == EM_PPC64 else []
    runs: list[Run] = []
    md_error: str | None = None
    md_page_size: int | None = None
    checks: dict[str, Any] = {}

    def best(new: Run) -> None:
        for i, r in enumerate(runs):
            if r.label == new.label:
                if new.wall < r.wall:
                    runs[i] = new
                return
        runs.append(new)

    def md(codec: str, split: bool) -> None:
        nonlocal md_error, md_page_size
        if md_error is not None:
            return
        opt = [CODECS[codec]] if CODECS[codec] else []
        outs = [md_1, md_2] if split else [md_out]
        _rm(*outs)
        cmd = ["makedumpfile", "-d", "1", *opt, *(["--split"] if split else []), str(core)]
        try:
            wall, cpu = timed([*cmd, *map(str, outs)], None, log)
        except CommandFailed as e:
            md_error = str(e).split(": ", 1)[1]
            print(f"makedumpfile refuses the {kind.name} core: {md_error}", flush=True)
            return
        if md_page_size is None:
            md_page_size = kdump_block_size(outs[0])
        label = f"makedumpfile -d 1 {' '.join(opt)}".strip()
        label += " --split 2" if split else ""
        best(Run(label, "makedumpfile", codec, wall, cpu, sum(p.stat().st_size for p in outs)))

    def md_label(codec: str) -> str | None:
        if md_error is not None:
            return None
        return f"makedumpfile -d 1 {CODECS[codec]}".strip()

    def hv(codec: str, threads: int = 1, sync: bool = False) -> None:
        _rm(hv_dir)
        cmd = [*HVDUMP, "convert", "--no-progress", "--compress", codec, *hv_ps]
        cmd += [] if sync else ["--no-sync"]
        cmd += ["--threads", str(threads)] if threads > 1 else []
        wall, cpu = timed([*cmd, str(core), str(hv_dir)], None, log)
        manifest = json.loads((hv_dir / "manifest.json").read_text())
        label = f"hvdump convert {codec}" + (f" --threads {threads}" if threads > 1 else "")
        label += " (with fsync)" if sync else ""
        out_bytes = (hv_dir / "dump.kdump").stat().st_size
        timings = {k: float(v) for k, v in manifest.get("timings", {}).items()}
        best(Run(label, "hvdump", codec, wall, cpu, out_bytes, md_label(codec), timings))

    # hvdump's own default, zstd, runs even if makedumpfile has no -z (compare: zstd -1 -T1)
    for codec in [*md_codecs, *([] if "zstd" in md_codecs else ["zstd"])]:
        in_md = codec in md_codecs
        for _ in range(repeat):
            if in_md:
                md(codec, split=False)
            hv(codec)
        if codec in ("lzo", "zlib"):
            files = [p for p in (md_out, hv_dir / "dump.kdump") if p.exists()]
            res = check_pages(core, data_start, kind, size, files)
            checks[codec] = res
            _report_check(kind.name, codec, res)
        _rm(md_out, hv_dir)
        if codec == "none":
            continue
        for _ in range(repeat):
            if codec in ("lzo", "zlib") and in_md:
                md(codec, split=True)
            hv(codec, threads=2)
        _rm(md_1, md_2, hv_dir)
        if codec == "lzo":
            for _ in range(repeat):
                hv(codec, sync=True)
            _rm(hv_dir)
    limits = {
        "zstd -1 -T1": ["zstd", "-1", "-T1", "-q", "-c", str(core)],
        "lz4 -1": ["lz4", "-1", "-q", "-c", str(core)],
        "cat": ["cat", str(core)],
    }
    lim_out = work / "limit.out"
    for label, cmd in limits.items():
        for _ in range(repeat):
            _rm(lim_out)
            wall, cpu = timed(cmd, lim_out, log)
            best(Run(label, "limit", label.split()[0], wall, cpu, lim_out.stat().st_size))
    _rm(lim_out, core, log)
    zstd_run = next(r for r in runs if r.label == "zstd -1 -T1")
    return {
        "kind": kind.name,
        "page_size": kind.page_size,
        "byteorder": kind.byteorder,
        "size": size,
        "mix": str(mix),
        "zero_page_share": zero_share,
        "zstd1_ratio": size / zstd_run.out_bytes,
        "makedumpfile_error": md_error,
        "makedumpfile_page_size": md_page_size,
        "runs": [asdict(r) for r in runs],
        "page_checks": checks,
    }


def _report_check(kind: str, codec: str, res: dict[str, Any]) -> None:
    for f, err in res["errors"].items():
        print(f"libkdumpfile ERROR ({kind}, {codec}) {f}: {err}", flush=True)
    if res["mismatch"]:
        print(f"PAGES DIFFER ({kind}, {codec}): {res['mismatch']}", flush=True)
        raise SystemExit(f"error: pages differ ({kind}, {codec}): {res['mismatch']}")
    print(f"{kind} {codec}: pages match: {res['checked']} checked", flush=True)


# ---------------------------------------------------------------- report


def print_kind(r: dict[str, Any]) -> None:
    size = r["size"]
    gb = size / 1e9
    print(
        f"\n## {r['kind']}: {size / 2**30:g} GiB ELF vmcore, {r['page_size']}-byte pages, "
        f"{r['byteorder']}-endian"
    )
    print(
        f"page mix {r['mix']}; measured: zero pages {r['zero_page_share']:.1%}, "
        f"zstd -1 ratio {r['zstd1_ratio']:.2f}"
    )
    if r["makedumpfile_error"]:
        print(
            f"makedumpfile: cannot read {r['kind']} vmcores on an {platform.machine()} host "
            f"({r['makedumpfile_error']})"
        )
    elif r["makedumpfile_page_size"] and r["makedumpfile_page_size"] != r["page_size"]:
        print(
            f"makedumpfile: reads this core with {r['makedumpfile_page_size']}-byte pages "
            "(the host's page size; the core has no VMCOREINFO PAGESIZE), hvdump with "
            f"{r['page_size']}-byte pages"
        )
    runs = {x["label"]: x for x in r["runs"]}
    head = (
        f"{'command':44s} {'wall s':>7s} {'GB/s':>6s} {'CPU s':>7s} {'GB/CPUs':>7s} "
        f"{'output bytes':>14s} {'speed':>6s} {'size':>6s}"
    )
    print(head)
    print("-" * len(head))
    for x in r["runs"]:
        ref = runs.get(x["ref"]) if x["ref"] else None
        speed = f"{ref['wall'] / x['wall']:.2f}x" if ref else "-"
        ratio = f"{x['out_bytes'] / ref['out_bytes']:.3f}" if ref else "-"
        print(
            f"{x['label']:44s} {x['wall']:7.2f} {gb / x['wall']:6.2f} {x['cpu']:7.2f} "
            f"{gb / max(x['cpu'], 1e-9):7.2f} {x['out_bytes']:14d} {speed:>6s} {ratio:>6s}"
        )
    print(
        "speed = makedumpfile wall / hvdump wall for the same codec, makedumpfile on 1 core "
        "(higher is better for hvdump); size = hvdump output / makedumpfile output"
    )
    for codec in ("lzo", "zlib"):
        hv2 = runs.get(f"hvdump convert {codec} --threads 2")
        split = runs.get(f"makedumpfile -d 1 {CODECS[codec]} --split 2")
        if hv2 and split:
            print(
                f"2 cores, {codec}: hvdump --threads 2 {hv2['wall']:.2f} s vs makedumpfile "
                f"--split 2 {split['wall']:.2f} s: {split['wall'] / hv2['wall']:.2f}x"
            )
    none = runs.get("hvdump convert none")
    if none and none["timings"]:
        t = none["timings"]
        parts = [f"{k} {t[k]:.2f} s = {gb / t[k]:.2f} GB/s" for k in ("read", "write") if t.get(k)]
        rest = ", ".join(f"{k} {t[k]:.2f} s" for k in ("compress_wait", "elapsed_s") if k in t)
        print(f"pass-through (--compress none, input GB/s): {', '.join(parts)}; {rest}")
    for codec, res in r["page_checks"].items():
        state = "ERRORS " + "; ".join(f"{k}: {v}" for k, v in res["errors"].items())
        print(
            f"libkdumpfile read-back {codec}: pages match: {res['checked']} checked"
            + (f" ({state})" if res["errors"] else "")
        )


def machine() -> dict[str, str]:
    model = cpu_model()
    git = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return {
        "cpu": model,
        "nproc": str(os.cpu_count()),
        "kernel": platform.release(),
        "makedumpfile": makedumpfile_info()[0],
        "hvdump_commit": git.stdout.strip() if git.returncode == 0 else "unknown",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 2)[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="A full default run (3 kinds of 4 GiB) takes 5-10 minutes on 2 cores; "
        "makedumpfile -c (zlib) is the slowest part. --quick is a smoke test.",
    )
    ap.add_argument(
        "--size",
        type=parse_size,
        default=None,
        help="memory in each vmcore, like 4G or 512M (default 4G; 512M with --quick)",
    )
    ap.add_argument(
        "--kinds",
        default=None,
        help=f"comma-separated vmcore kinds out of {', '.join(KINDS)} (default all; "
        "x86-64 with --quick)",
    )
    ap.add_argument(
        "--mix",
        type=PageMix.parse,
        default=BUSY_MIX,
        help=f"page mix of the generated memory (default: busy system, {BUSY_MIX})",
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="runs per command, best one reported (default 1)"
    )
    ap.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to make the fresh work directory hvdump-h2h-* for the cores and "
        "outputs; needs 3x --size free (default /var/tmp)",
    )
    ap.add_argument("--keep", action="store_true", help="do not remove the work directory")
    ap.add_argument("--json", type=Path, default=None, help="also write all results to FILE")
    ap.add_argument(
        "--quick", action="store_true", help="smoke test: 512M cores, x86-64 only (< 2 minutes)"
    )
    a = ap.parse_args(argv)
    size = a.size or ((512 << 20) if a.quick else (4 << 30))
    kinds = (a.kinds or ("x86-64" if a.quick else ",".join(KINDS))).split(",")
    for k in kinds:
        if k not in KINDS:
            ap.error(f"unknown kind {k!r}; the kinds are {', '.join(KINDS)}")
    if size <= 0 or size % 65536:
        ap.error("--size must be a positive multiple of 64 KiB")
    if a.repeat < 1:
        ap.error("--repeat must be at least 1")
    ensure_makedumpfile()
    for tool in ("zstd", "lz4", "/usr/bin/python3"):
        if not shutil.which(tool):
            _die(f"{tool} is missing (apt-get install zstd lz4 python3-libkdumpfile)")
    version, md_codecs = makedumpfile_info()
    if a.dir is not None:
        a.dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="hvdump-h2h-", dir=a.dir))
    else:
        work = Path(tempfile.mkdtemp(prefix="hvdump-h2h-", dir="/var/tmp"))
    print(f"{version}; codecs: {', '.join(md_codecs)}; work dir {work}")
    print(
        "makedumpfile does not fsync its output, so hvdump runs with --no-sync except the "
        "row marked (with fsync); sync before each timed command; core in the page cache",
        flush=True,
    )
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    try:
        with bench_lock():
            for k in kinds:
                print(f"\n# {k}", flush=True)
                results.append(bench_kind(KINDS[k], size, a.mix, work, a.repeat, md_codecs))
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for r in results:
        print_kind(r)
    m = machine()
    total = time.perf_counter() - t0
    print(
        f"\nmachine: {m['cpu']}, nproc {m['nproc']}, Linux {m['kernel']}; {m['makedumpfile']}; "
        f"hvdump {m['hvdump_commit']}; total {total:.0f} s"
    )
    if a.json is not None:
        doc = {"machine": m, "total_s": total, "repeat": a.repeat, "kinds": results}
        a.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
