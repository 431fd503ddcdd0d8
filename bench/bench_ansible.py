"""Ansible's cost over bare ``hvdump collect`` on a fleet: 64 LPARs of 1 GiB, forks 8.

Two identical fleets of simulated LPARs (FUSE roots, same seed, every LPAR crashed): one
collected by bare ``hvdump collect`` processes 8 at a time, one by
``playbooks/collect-dumps.yml`` with forks 8 (which bound the collections at once; no
archive target). Then the same playbook again over the collected fleet: the do-nothing
pass an operator runs to check.

What it prints (JSON), per the fleet issue's numbers:

* ``wall_ratio``: playbook wall / bare wall (target at most 1.3);
* ``controller_cpu_per_host_s``: the CPU of the playbook's process tree (controller,
  workers, connection shells; orphans adopted with ``PR_SET_CHILD_SUBREAPER``) minus what
  the module processes used (and their collectors), per host (target at most 1.0 CPU-s).
  The modules run under a wrapper interpreter (``ansible_python_interpreter``) that appends
  the CPU of each module run, from bash's ``times``, to a file: on real LPARs that CPU is
  the LPAR's own, not the controller's;
* ``rerun_controller_cpu_per_host_s``: the same for the do-nothing pass (target 0.3);
* the module CPU per host, both walls, the load average before each phase.

The playbook's output goes to DIR/ansible.log and DIR/rerun.log.

    python bench/bench_ansible.py [--count 64] [--memory 1G] [--forks 8]
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


WRAPPER = """#!/bin/bash
# A module run's interpreter that appends its CPU (and its children's: the collectors) to a file.
"{python}" "$@"
rc=$?
{{ times; }} >> "{log}"
exit $rc
"""


def _module_cpu_s(log: Path) -> float:
    """The CPU-seconds the wrapped module runs logged (bash ``times``: 2 lines of user sys)."""
    total = 0.0
    if not log.exists():
        return total
    for line in log.read_text().splitlines():
        for field in line.split():
            mins, _, secs = field.rstrip("s").partition("m")
            total += int(mins) * 60 + float(secs)
    return total


def _playbook(
    fl: Path, base: Path, name: str, forks: int, extra: list[str]
) -> dict[str, float | int | str]:
    """One ansible-playbook run over the fleet in ``fl``: wall, tree CPU, module CPU."""
    home = base / "ansible-home"
    for sub in ("tmp", "async"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    log = base / f"{name}-modules.cpu"
    log.unlink(missing_ok=True)
    wrapper = base / f"{name}-python"
    wrapper.write_text(WRAPPER.format(python=sys.executable, log=log))
    wrapper.chmod(0o700)
    env = dict(
        os.environ,
        ANSIBLE_HOME=str(home),
        ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
        ANSIBLE_ASYNC_DIR=str(home / "async"),
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        PATH=f"{BIN}:{os.environ.get('PATH', '')}",
    )
    out: dict[str, float | int | str] = {f"{name}_load_before": _load()}
    p0, t0 = _children_cpu_s(), time.monotonic()
    res = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "playbooks/collect-dumps.yml",
            "-i",
            str(fl / "inventory.yml"),
            "-f",
            str(forks),
            "-e",
            f"ansible_python_interpreter={wrapper}",
            "-e",
            f"hvdump_report_file={base / (name + '-report.json')}",
            *[a for e in extra for a in ("-e", e)],
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    out[f"{name}_wall_s"] = round(time.monotonic() - t0, 2)
    tree = _children_cpu_s() - p0
    modules = _module_cpu_s(log)
    out[f"{name}_tree_cpu_s"] = round(tree, 1)
    out[f"{name}_module_cpu_s"] = round(modules, 1)
    out[f"{name}_rc"] = res.returncode
    (base / f"{name}.log").write_text(res.stdout + res.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--memory", default="1G")
    ap.add_argument("--forks", type=int, default=8)
    ap.add_argument("--dir", type=Path)
    ap.add_argument(
        "-e", "--extra-vars", action="append", default=[], help="passed to ansible-playbook"
    )
    ap.add_argument("--no-bare", action="store_true", help="skip the bare run (no wall ratio)")
    args = ap.parse_args()
    _subreaper()
    base = args.dir or Path(tempfile.mkdtemp(prefix="hvdump-bench-ansible-"))
    base.mkdir(parents=True, exist_ok=True)
    kinds = ["crashed"]
    n = args.count
    results: dict[str, float | int | str] = {
        "count": n,
        "memory": args.memory,
        "forks": args.forks,
        "roots": "FUSE (hvsim fleet)",
        "extra_vars": " ".join(args.extra_vars),
    }
    if not args.no_bare:
        results.update(_bare(base / "bare", n, args.memory, args.forks, kinds))

    fl = base / "ansible"
    fleet_up(fl, n, seed=11, memory=args.memory, kinds=kinds)
    try:
        results.update(_playbook(fl, base, "playbook", args.forks, args.extra_vars))
        results.update(_playbook(fl, base, "rerun", args.forks, args.extra_vars))
        with contextlib.suppress(OSError, ValueError, KeyError):
            report = json.loads((base / "playbook-report.json").read_text())["hosts"]
            results["collected"] = sum(1 for r in report.values() if r["status"] == "collected")
    finally:
        fleet_down(fl)
    for name in ("playbook", "rerun"):
        own = float(results[f"{name}_tree_cpu_s"]) - float(results[f"{name}_module_cpu_s"])
        results[f"{name}_controller_cpu_per_host_s"] = round(own / n, 3)
        results[f"{name}_module_cpu_per_host_s"] = round(
            float(results[f"{name}_module_cpu_s"]) / n, 3
        )
    if "bare_wall_s" in results:
        results["wall_ratio"] = round(
            float(results["playbook_wall_s"]) / float(results["bare_wall_s"]), 3
        )
    results["targets"] = "wall_ratio <= 1.3, controller <= 1.0 CPU-s/host, rerun <= 0.3"
    results["log"] = str(base / "playbook.log")
    print(json.dumps(results, indent=1))
    return 0 if results["playbook_rc"] == 0 and results["rerun_rc"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
