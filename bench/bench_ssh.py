"""hvdump collect straight to an archive host over SSH against the same collection to a local directory.

    .venv/bin/python bench/bench_ssh.py [--memory 4G] [--repeat 3]

The archive host is this machine's loopback: an sshd with throwaway keys
(tests/sshd_support.py), so both runs write to the same disk and the ratio
is the cost of the SSH path (encryption both ways, the receiver, one more
copy through a pipe and a socket). The LPAR's root is exported as plain
files with its vmcore in the page cache (bench/export_root.py); every run
uses ``--release never`` (releases cost the same either way). Prints wall
time, throughput, the negotiated cipher, and the CPU seconds per GiB read on
each side: the capture side (collector + ssh client) and the archive side
(sshd + hvdump receive, from the sshd listener's reaped children).
Results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_collect import _wait_idle
from bench.export_root import export_root
from bench.timing import machine_line
from drgn_hvdump.dumpdir.remote import SshTarget
from hvsim import Lpar
from tests.sshd_support import BIN, Sshd

PY = sys.executable
_HZ = os.sysconf("SC_CLK_TCK")


def _reaped_cpu(pid: int) -> float:
    """CPU seconds of ``pid``'s children that it has waited for (``cutime + cstime``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / _HZ


def _ssh_flags(sshd: Sshd) -> list[str]:
    return [
        "--ssh-identity", str(sshd.user_key),
        "--ssh-option", f"UserKnownHostsFile={sshd.known_hosts}",
        "--ssh-option", "StrictHostKeyChecking=yes",
        "--remote-hvdump", str(BIN / "hvdump"),
    ]  # fmt: skip


def _cipher(sshd: Sshd) -> str:
    """The cipher ssh negotiates as hvdump runs it (from ``ssh -v``)."""
    target = SshTarget.parse(
        f"ssh://root@127.0.0.1:{sshd.port}/unused",
        identity=str(sshd.user_key),
        options=(f"UserKnownHostsFile={sshd.known_hosts}",),
    )
    argv = target.argv()
    argv[1:1] = ["-v"]
    res = subprocess.run([*argv[:-1], "true"], capture_output=True, text=True, check=False)
    m = re.search(r"kex: client->server cipher: (\S+)", res.stderr)
    return m.group(1) if m else "unknown"


def _run(root: Path, out: str, args: list[str], sshd: Sshd | None) -> tuple[float, float, float]:
    """Wall, capture-side CPU and archive-side CPU seconds of one collection."""
    _wait_idle()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    s0 = _reaped_cpu(sshd.proc.pid) if sshd else 0.0
    t = time.perf_counter()
    subprocess.run(
        [PY, "-m", "drgn_hvdump.cli", "collect", "--root", str(root), "-o", out,
         "--no-progress", "--release", "never", *args],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    server = 0.0
    if sshd is not None:
        # The session's processes are reaped by the listener a moment after the
        # collector's ssh exits.
        deadline = time.monotonic() + 5
        while True:
            server = _reaped_cpu(sshd.proc.pid) - s0
            if server > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        time.sleep(0.3)
        server = _reaped_cpu(sshd.proc.pid) - s0
    return wall, cpu, server


RUNS = (
    ("kdump zstd 1, 1 thread", ["--compress", "zstd", "--threads", "1"]),
    ("kdump zstd 1, 2 threads", ["--compress", "zstd", "--threads", "2"]),
    ("elf (pages raw)", ["--format", "elf"]),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--memory", default="4G")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk-size", default="64M")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="hvdump-bench-ssh-", dir="/var/tmp"))
    sshd = Sshd(base / "sshd")
    try:
        lpar = Lpar.create(base / "lpar", memory=args.memory, boot=True)
        lpar.crash()
        root = export_root(lpar, base / "root")
        vmcore = root / "proc/vmcore"
        subprocess.run(["cat", str(vmcore)], stdout=subprocess.DEVNULL, check=True)
        print(machine_line())
        print(
            f"cipher: {_cipher(sshd)} (as hvdump runs ssh; loopback sshd); chunk size {args.chunk_size}"
        )
        for label, extra in RUNS:
            flags = [*extra, "--chunk-size", args.chunk_size]
            best: dict[str, tuple[float, float, float]] = {}
            read = 0
            for _ in range(args.repeat):
                for where in ("local", "ssh"):  # alternating: same conditions for both
                    out = base / f"out-{where}"
                    shutil.rmtree(out, ignore_errors=True)
                    if where == "local":
                        r = _run(root, str(out), flags, None)
                    else:
                        url = f"ssh://root@127.0.0.1:{sshd.port}{out}"
                        r = _run(root, url, [*flags, *_ssh_flags(sshd)], sshd)
                    m = json.loads((out / "manifest.json").read_text())
                    read = sum(c["size"] for c in m["chunks"])
                    if where not in best or r[0] < best[where][0]:
                        best[where] = r
            gib = read / (1 << 30)
            lw, lc, _ = best["local"]
            sw, sc, ss = best["ssh"]
            print(
                f"{label:26s} local {lw:6.2f} s {read / lw / 1e6:5.0f} MB/s "
                f"({lc / gib:.2f} CPU s/GiB) | ssh {sw:6.2f} s {read / sw / 1e6:5.0f} MB/s "
                f"(capture side {sc / gib:.2f}, archive side {ss / gib:.2f} CPU s/GiB) | "
                f"ssh/local throughput {lw / sw:.2f}x"
            )
    finally:
        sshd.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
