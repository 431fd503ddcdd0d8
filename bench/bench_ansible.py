"""Ansible's overhead over a bare ``hvdump collect``: 16 LPARs of 2 GiB, forks 8.

Two identical fleets (same seed, every LPAR crashed): one collected by
``hvdump collect`` processes run 8 at a time, one by ``collect-dumps.yml``
with forks 8. Per-host overhead = (T_ansible - T_bare) * forks / count: the
extra time each host occupies one of the 8 slots. Target: at most 3 s.

Both runs use the same concurrency (8 collections at a time), so the comparison is
fair as to parallelism; but on a 2-core machine 8 CPU-bound collectors share 2 cores,
so every CPU-second Ansible spends per host shows up ~4x in that slot figure
(16 hosts x c CPU-s / 2 cores = 8c s of wall, x 8/16 = 4c). The script therefore
also reports the extra wall time per host (delta / count) and the extra CPU-seconds
per host (busy time of the whole machine from /proc/stat, so run it on an idle
machine), the CPU-seconds of each run's own process tree (getrusage of waited-for
children: ansible-playbook with its workers, modules and collectors, against the bare
collectors; this does not depend on other load), plus the load average before each run. The playbook's output goes to
DIR/ansible.log.

    python bench/bench_ansible.py [--count 16] [--memory 2G] [--forks 8]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hvsim.fleet import FleetHost, fleet_down, fleet_up  # noqa: E402

BIN = Path(sys.executable).parent


def _busy_s() -> float:
    """CPU-seconds the whole machine has spent busy (user+nice+system+irq+softirq)."""
    f = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(f[i]) for i in (0, 1, 2, 5, 6)) / ticks


def _subreaper() -> None:
    """Adopt orphaned descendants (Ansible's async wrapper daemonizes the module and its
    collector), so their CPU time reaches RUSAGE_CHILDREN once reaped."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _reap() -> None:
    """Wait for adopted descendants that have exited (live ones, like FUSE daemons, stay)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _children_cpu_s() -> float:
    """CPU-seconds of this process's waited-for children and their descendants (robust to other load)."""
    _reap()
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _load() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[0]


def _bare(
    bare: Path, count: int, memory: str, forks: int, kinds: list[str]
) -> dict[str, float | str]:
    hosts = fleet_up(bare, count, seed=11, memory=memory, kinds=kinds)
    try:

        def one(h: FleetHost) -> float:
            t = time.monotonic()
            subprocess.run(
                [
                    str(BIN / "hvdump"),
                    "collect",
                    "--root",
                    h.root,
                    "--output",
                    str(Path(h.dump_dir) / "dump"),
                    "--no-progress",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            return time.monotonic() - t

        load = _load()
        c0, p0, t0 = _busy_s(), _children_cpu_s(), time.monotonic()
        with ThreadPoolExecutor(forks) as pool:
            per_host = list(pool.map(one, hosts))
        return {
            "bare_wall_s": round(time.monotonic() - t0, 2),
            "bare_cpu_s": round(_busy_s() - c0, 1),
            "bare_proc_cpu_s": round(_children_cpu_s() - p0, 1),
            "bare_load_before": load,
            "bare_host_mean_s": round(sum(per_host) / len(per_host), 2),
        }
    finally:
        fleet_down(bare)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--memory", default="2G")
    ap.add_argument("--forks", type=int, default=8)
    ap.add_argument("--dir", type=Path)
    ap.add_argument(
        "-e", "--extra-vars", action="append", default=[], help="passed to ansible-playbook"
    )
    ap.add_argument(
        "--bare-wall", type=float, help="reuse a measured bare wall time (s) instead of measuring"
    )
    ap.add_argument(
        "--bare-proc-cpu", type=float, help="with --bare-wall: the bare run's process-tree CPU (s)"
    )
    args = ap.parse_args()
    _subreaper()
    base = args.dir or Path(tempfile.mkdtemp(prefix="hvdump-bench-ansible-"))
    kinds = ["crashed"]
    results: dict[str, float | int | str] = {
        "count": args.count,
        "memory": args.memory,
        "forks": args.forks,
    }

    if args.bare_wall:
        results["bare_wall_s"] = args.bare_wall
        if args.bare_proc_cpu:
            results["bare_proc_cpu_s"] = args.bare_proc_cpu
    else:
        results.update(_bare(base / "bare", args.count, args.memory, args.forks, kinds))

    fl = base / "ansible"
    fleet_up(fl, args.count, seed=11, memory=args.memory, kinds=kinds)
    try:
        home = base / "ansible-home"
        for sub in ("tmp", "async"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        env = dict(
            os.environ,
            ANSIBLE_HOME=str(home),
            ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
            ANSIBLE_ASYNC_DIR=str(home / "async"),
            ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
            PATH=f"{BIN}:{os.environ.get('PATH', '')}",
        )
        results["ansible_load_before"] = _load()
        c0, p0, t0 = _busy_s(), _children_cpu_s(), time.monotonic()
        res = subprocess.run(
            [
                str(BIN / "ansible-playbook"),
                "playbooks/collect-dumps.yml",
                "-i",
                str(fl / "inventory.yml"),
                "-f",
                str(args.forks),
                "-e",
                f"hvdump_collect_concurrency={args.forks}",
                "-e",
                f"hvdump_report_file={base / 'report.json'}",
                *[a for e in args.extra_vars for a in ("-e", e)],
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        results["ansible_wall_s"] = round(time.monotonic() - t0, 2)
        results["ansible_cpu_s"] = round(_busy_s() - c0, 1)
        results["ansible_proc_cpu_s"] = round(_children_cpu_s() - p0, 1)
        (base / "ansible.log").write_text(res.stdout + res.stderr)
        # The collectors' own CPU under Ansible (the collect module reports it per host), so
        # Ansible's own cost can be told from collectors that ran slower or faster than bare.
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            report = json.loads((base / "report.json").read_text())["hosts"]
            results["ansible_collectors_cpu_s"] = round(
                sum(float(r["cpu_s"]) for r in report.values()), 1
            )
        results["ansible_rc"] = res.returncode
        results["extra_vars"] = " ".join(args.extra_vars)
    finally:
        fleet_down(fl)
    over = (
        (float(results["ansible_wall_s"]) - float(results["bare_wall_s"])) * args.forks / args.count
    )
    results["overhead_per_host_s"] = round(over, 2)
    delta = float(results["ansible_wall_s"]) - float(results["bare_wall_s"])
    results["extra_wall_per_host_s"] = round(delta / args.count, 2)
    if "bare_cpu_s" in results:
        results["extra_cpu_per_host_s"] = round(
            (float(results["ansible_cpu_s"]) - float(results["bare_cpu_s"])) / args.count, 2
        )
    if "bare_proc_cpu_s" in results:
        # ansible-playbook's process tree (controller, workers, modules, collectors) minus the
        # bare collectors: what Ansible itself costs per host, whatever else runs on the machine.
        results["ansible_own_cpu_per_host_s"] = round(
            (float(results["ansible_proc_cpu_s"]) - float(results["bare_proc_cpu_s"])) / args.count,
            2,
        )
    if "ansible_collectors_cpu_s" in results:
        # The process tree minus its collectors: controller, workers and modules only.
        results["ansible_excl_collectors_cpu_per_host_s"] = round(
            (float(results["ansible_proc_cpu_s"]) - float(results["ansible_collectors_cpu_s"]))
            / args.count,
            2,
        )
        if "bare_proc_cpu_s" in results:
            results["collector_cpu_ratio_ansible_to_bare"] = round(
                float(results["ansible_collectors_cpu_s"]) / float(results["bare_proc_cpu_s"]), 3
            )
    results["log"] = str(base / "ansible.log")
    results["target_per_host_s"] = 3.0
    print(json.dumps(results, indent=1))
    return 0 if res.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
