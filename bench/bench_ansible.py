"""Ansible's overhead over a bare ``hvdump collect``: 16 LPARs of 2 GiB, forks 8.

Two identical fleets (same seed, every LPAR crashed): one collected by
``hvdump collect`` processes run 8 at a time, one by ``collect-dumps.yml``
with forks 8. Per-host overhead = (T_ansible - T_bare) * forks / count: the
extra time each host occupies one of the 8 slots. Target: at most 3 s.

    python bench/bench_ansible.py [--count 16] [--memory 2G] [--forks 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hvsim.fleet import fleet_down, fleet_up  # noqa: E402

BIN = Path(sys.executable).parent


def _bare(bare: Path, count: int, memory: str, forks: int, kinds: list[str]) -> dict[str, float]:
    hosts = fleet_up(bare, count, seed=11, memory=memory, kinds=kinds)
    try:
        def one(h: object) -> float:
            t = time.monotonic()
            subprocess.run([str(BIN / "hvdump"), "collect", "--root", h.root, "--output",  # type: ignore[attr-defined]
                            str(Path(h.dump_dir) / "dump"), "--no-progress"], check=True,  # type: ignore[attr-defined]
                           stdout=subprocess.DEVNULL)
            return time.monotonic() - t

        t0 = time.monotonic()
        with ThreadPoolExecutor(forks) as pool:
            per_host = list(pool.map(one, hosts))
        return {"bare_wall_s": round(time.monotonic() - t0, 2),
                "bare_host_mean_s": round(sum(per_host) / len(per_host), 2)}
    finally:
        fleet_down(bare)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--memory", default="2G")
    ap.add_argument("--forks", type=int, default=8)
    ap.add_argument("--dir", type=Path)
    ap.add_argument("-e", "--extra-vars", action="append", default=[], help="passed to ansible-playbook")
    ap.add_argument("--bare-wall", type=float, help="reuse a measured bare wall time (s) instead of measuring")
    args = ap.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="hvdump-bench-ansible-"))
    kinds = ["crashed"]
    results: dict[str, float | int | str] = {"count": args.count, "memory": args.memory, "forks": args.forks}

    if args.bare_wall:
        results["bare_wall_s"] = args.bare_wall
    else:
        results.update(_bare(base / "bare", args.count, args.memory, args.forks, kinds))

    fl = base / "ansible"
    fleet_up(fl, args.count, seed=11, memory=args.memory, kinds=kinds)
    try:
        home = base / "ansible-home"
        for sub in ("tmp", "async"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, ANSIBLE_HOME=str(home), ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
                   ANSIBLE_ASYNC_DIR=str(home / "async"), ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
                   PATH=f"{BIN}:{os.environ.get('PATH', '')}")
        t0 = time.monotonic()
        res = subprocess.run([str(BIN / "ansible-playbook"), "playbooks/collect-dumps.yml", "-i",
                              str(fl / "inventory.yml"), "-f", str(args.forks),
                              "-e", f"hvdump_collect_concurrency={args.forks}",
                              *[a for e in args.extra_vars for a in ("-e", e)]],
                             cwd=REPO, env=env, capture_output=True, text=True, check=False)
        results["ansible_wall_s"] = round(time.monotonic() - t0, 2)
        results["ansible_rc"] = res.returncode
        results["extra_vars"] = " ".join(args.extra_vars)
    finally:
        fleet_down(fl)
    over = (float(results["ansible_wall_s"]) - float(results["bare_wall_s"])) * args.forks / args.count
    results["overhead_per_host_s"] = round(over, 2)
    results["target_per_host_s"] = 3.0
    print(json.dumps(results, indent=1))
    return 0 if res.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
