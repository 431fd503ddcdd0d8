"""A fleet of simulated LPARs for the Ansible collection: ``hvsim fleet up|down|status``.

``fleet up`` creates N LPARs under ``DIR/lpars``, gives each a role drawn
from a seeded mix (crashed with one of several scenarios, healthy, firmware
without dump support), mounts each capture root with FUSE under ``DIR/mnt``
and writes ``DIR/inventory.yml``: every host is local
(``ansible_connection: local``) and names its root (``hvdump_root``) and its
own dump directory (``hvdump_dump_dir``, under ``DIR/crash``), since local
"hosts" share one filesystem. ``DIR/fleet.json`` records the fleet for
``status`` and ``down``.

Kinds (``--kinds`` gives them in order, cycled; otherwise the seeded mix):

* ``crashed`` or ``crashed:SCENARIO``: crashed and booted into capture;
* ``healthy``: running and protected (registered);
* ``no-firmware``: firmware without ``ibm,configure-kernel-dump``;
* ``corrupt-header``: crashed, but its root is a plain directory whose
  ``ibm,kernel-dump`` is damaged (the rest links to the FUSE root), which
  is what a tool sees when firmware hands over a bad header. Its files are
  those the capture interface's table shows with a dump waiting.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from drgn_hvdump.capture import PHYP_ROOT_FILES, RootTable
from drgn_hvdump.capture.rootfiles import CAPTURE
from drgn_hvdump.errors import HvdumpError

from .config import DUMP_KINDS, format_size, parse_size
from .fuse_root import is_mounted, mount, root_table, umount
from .kernel import SCENARIOS
from .lpar import Lpar

__all__ = ["FleetHost", "add_subcommands", "fleet_down", "fleet_status", "fleet_up"]

FLEET_FILE = "fleet.json"
INVENTORY = "inventory.yml"
GROUP = "lpars"
#: Scenarios a crashed host of the seeded mix draws from (each leaves a usable dump).
MIX_SCENARIOS = ("panic", "oops", "sysrq", "machine-check", "hang")
#: One round of the seeded mix: 5 crashed, 2 healthy, 1 without firmware support.
MIX_ROUND = ("crashed",) * 5 + ("healthy",) * 2 + ("no-firmware",)
KINDS = ("crashed", "healthy", "no-firmware", "corrupt-header")


@dataclass
class FleetHost:
    """One LPAR of the fleet."""

    name: str
    kind: str
    scenario: str | None
    lpar: str
    mount: str
    root: str
    dump_dir: str
    memory: int
    seed: int
    endian: str
    dump: str = "phyp"

    @classmethod
    def laid_out(
        cls,
        directory: Path,
        name: str,
        kind: str,
        scenario: str | None,
        memory: int,
        seed: int,
        endian: str,
        dump: str = "phyp",
    ) -> FleetHost:
        """A host of the fleet in ``directory``: its LPAR, mount point (also its root)
        and dump directory are ``lpars/NAME``, ``mnt/NAME`` and ``crash/NAME`` there."""
        mnt = str(directory / "mnt" / name)
        lpar, dump_dir = (str(directory / sub / name) for sub in ("lpars", "crash"))
        # Positional, in the order of the fields above.
        return cls(name, kind, scenario, lpar, mnt, mnt, dump_dir, memory, seed, endian, dump)


def _kinds(count: int, seed: int, kinds: list[str] | None) -> list[tuple[str, str | None]]:
    rng = random.Random(seed)
    out: list[tuple[str, str | None]] = []
    if kinds:
        for i in range(count):
            kind, _, scenario = kinds[i % len(kinds)].partition(":")
            if kind not in KINDS:
                raise ValueError(f"unknown fleet kind {kind!r}; known: {', '.join(KINDS)}")
            if scenario and scenario not in SCENARIOS:
                raise ValueError(
                    f"unknown crash scenario {scenario!r}; known: {', '.join(SCENARIOS)}"
                )
            if kind in ("crashed", "corrupt-header"):
                out.append((kind, scenario or MIX_SCENARIOS[i % len(MIX_SCENARIOS)]))
            else:
                out.append((kind, None))
        return out
    pool: list[str] = []
    while len(pool) < count:
        round_ = list(MIX_ROUND)
        rng.shuffle(round_)
        pool.extend(round_)
    crashed = 0
    for kind in pool[:count]:
        if kind == "crashed":
            out.append((kind, MIX_SCENARIOS[(crashed + seed) % len(MIX_SCENARIOS)]))
            crashed += 1
        else:
            out.append((kind, None))
    return out


def _corrupt_root(mnt: Path, root: Path, table: RootTable = PHYP_ROOT_FILES) -> None:
    """A plain-directory capture root: the FUSE root's files, but a damaged dump header.

    The kernel's files under ``sys/`` are bind-mounted, not linked: a collector opens
    them without following links (the dump's lock is taken on ``release_region``), as on a
    real capture kernel; the rest are links."""
    dt = table.device_tree
    for file in table.shown(CAPTURE):
        (root / file.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if file.path.startswith("sys/"):
            (root / file.path).touch(mode=0o600)
            subprocess.run(
                ["mount", "--bind", str(mnt / file.path), str(root / file.path)],
                check=True,
                capture_output=True,
            )
        else:
            os.symlink(mnt / file.path, root / file.path)
    for link in dt.links:
        (root / link).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.symlink(dt.link_target(link), root / link)
    damaged = Path(table["ibm,kernel-dump"].path)
    src = mnt / dt.base
    for dirpath, _dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (root / dt.base / rel).mkdir(parents=True, exist_ok=True, mode=0o700)
        for f in filenames:
            data = (Path(dirpath) / f).read_bytes()
            if rel / f == damaged:
                data = b"\xde\xad" + data[2:]  # a version the format does not know
            (root / dt.base / rel / f).write_bytes(data)


def unbind_root(root: str | os.PathLike[str]) -> None:
    """Undo the bind mounts of a corrupt-header root (before its FUSE root is unmounted)."""
    for bind in _mounts_under(str(root)):
        subprocess.run(["umount", "-l", bind], check=False, capture_output=True)


def _mounts_under(path: str) -> list[str]:
    """Mount points at or below ``path`` (the bind mounts of a corrupt-header root)."""
    prefix = os.path.abspath(path).rstrip("/") + "/"
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            point = line.split()[1].replace("\\040", " ")
            if point.startswith(prefix):
                found.append(point)
    return sorted(found, reverse=True)


def _inventory(directory: Path, hosts: list[FleetHost]) -> dict[str, Any]:
    host_vars: dict[str, Any] = {}
    for h in hosts:
        host_vars[h.name] = {
            "hvdump_root": h.root,
            "hvdump_dump_dir": h.dump_dir,
            "hvsim_lpar": h.lpar,
            "hvsim_kind": h.kind if h.scenario is None else f"{h.kind}:{h.scenario}",
            "hvsim_dump": h.dump,
        }
    return {
        "all": {
            "children": {
                GROUP: {
                    "hosts": host_vars,
                    "vars": {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                    },
                }
            }
        }
    }


def load_fleet(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], list[FleetHost]]:
    """The fleet recorded in ``DIR/fleet.json``."""
    path = Path(directory) / FLEET_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise HvdumpError(f"{path}: no fleet here (hvsim fleet up --dir {directory})") from None
    except ValueError as exc:
        raise HvdumpError(f"{path}: not JSON ({exc})") from None
    return data, [FleetHost(**h) for h in data["hosts"]]


def fleet_up(
    directory: str | os.PathLike[str],
    count: int,
    *,
    seed: int = 0,
    memory: int | str = "1G",
    kinds: list[str] | None = None,
    endian_mix: bool = True,
    prefix: str = "lpar",
    dumps: list[str] | None = None,
) -> list[FleetHost]:
    """Create, crash as drawn, and mount ``count`` LPARs; write the inventory.

    ``dumps`` is the dump interface of each LPAR, cycled (``phyp``, ``fadump``;
    default all ``phyp``): ``["phyp", "fadump"]`` makes a mixed fleet.
    """
    if count < 1:
        raise ValueError("a fleet has at least one LPAR")
    dumps = dumps or ["phyp"]
    for dump in dumps:
        if dump not in DUMP_KINDS:
            raise ValueError(f"unknown dump interface {dump!r}; known: {', '.join(DUMP_KINDS)}")
    d = Path(directory).absolute()
    if (d / FLEET_FILE).exists():
        raise HvdumpError(f"{d}: a fleet is already up here (hvsim fleet down --dir {d})")
    mem = parse_size(memory)
    drawn = _kinds(count, seed, kinds)
    rng = random.Random(seed ^ 0x5EED)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    for sub in ("lpars", "mnt", "roots", "crash"):
        (d / sub).mkdir(exist_ok=True, mode=0o700)
    width = max(2, len(str(count)))
    hosts: list[FleetHost] = []
    record: dict[str, Any] = {"count": count, "seed": seed, "memory": mem, "hosts": []}
    try:
        for i, (kind, scenario) in enumerate(drawn, 1):
            endian = rng.choice(("big", "little")) if endian_mix else "big"
            name = f"{prefix}{i:0{width}d}"
            dump = dumps[(i - 1) % len(dumps)]
            host = FleetHost.laid_out(d, name, kind, scenario, mem, seed * 1000 + i, endian, dump)
            lpar = Lpar.create(
                host.lpar,
                memory=mem,
                seed=host.seed,
                endian=endian,
                firmware_dump=kind != "no-firmware",
                name=name,
                boot=True,
                dump=dump,
            )
            if kind in ("crashed", "corrupt-header"):
                lpar.crash(scenario)
                st = lpar.status()
                if not st["dump_waiting"]:
                    # A fleet that says "crashed" must hold dumps (512M LPARs cannot register).
                    lpar.close()
                    why = st["kernel"].get("not_registered_reason") or f"state {st['state']}"
                    raise HvdumpError(f"{name}: crashed, but no dump was taken ({why})")
            lpar.close()
            hosts.append(host)
            record["hosts"] = [asdict(h) for h in hosts]
            _write_json(d / FLEET_FILE, record)
            mount(host.lpar, host.mount)
            if kind == "corrupt-header":
                root = d / "roots" / name
                # Recorded first: fleet down finds the root's bind mounts even if this fails.
                host.root = str(root)
                record["hosts"] = [asdict(h) for h in hosts]
                _write_json(d / FLEET_FILE, record)
                _corrupt_root(Path(host.mount), root, root_table(dump))
    except BaseException:
        with contextlib.suppress(Exception):
            fleet_down(d, remove=False)
        raise
    inv = _inventory(d, hosts)
    text = "# Written by hvsim fleet up: simulated LPARs, each a local host with its own capture root.\n"
    (d / INVENTORY).write_text(
        text + yaml.safe_dump(inv, sort_keys=False, default_flow_style=False)
    )
    return hosts


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(tmp, path)


def fleet_down(directory: str | os.PathLike[str], *, remove: bool = True) -> list[str]:
    """Unmount every root of the fleet (and delete ``DIR`` when ``remove``); returns problems."""
    d = Path(directory).absolute()
    _, hosts = load_fleet(d)
    problems: list[str] = []
    for h in hosts:
        if h.root != h.mount:
            unbind_root(h.root)
        if is_mounted(h.mount):
            try:
                umount(h.mount)
            except HvdumpError as exc:
                problems.append(str(exc))
    if remove and not problems:
        shutil.rmtree(d)
    elif not problems:
        (d / FLEET_FILE).unlink(missing_ok=True)
    return problems


def fleet_status(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Per host: kind, LPAR state, protection, dump waiting, reserved bytes, mounted."""
    _, hosts = load_fleet(directory)
    rows = []
    for h in hosts:
        with Lpar.open(h.lpar) as lpar:
            st = lpar.status()
        rows.append(
            {
                "name": h.name,
                "kind": h.kind if h.scenario is None else f"{h.kind}:{h.scenario}",
                "dump": h.dump,
                "state": st["state"],
                "protected": st["protected"],
                "dump_waiting": st["dump_waiting"],
                "reserved_bytes": (st.get("kernel") or {}).get("reserved_bytes", 0),
                "mounted": is_mounted(h.mount),
                "root": h.root,
            }
        )
    return rows


# ------------------------------------------------------------------ command line

_UP_HELP = """\
Create N simulated LPARs under DIR, crash some of them (a seeded mix:
crashed with different scenarios, healthy and protected, firmware without
dump support), mount each capture root with FUSE under DIR/mnt, and write
DIR/inventory.yml for Ansible (local connection, hvdump_root and
hvdump_dump_dir per host). Try:
  hvsim fleet up --count 8 --dir /tmp/fleet
  ansible-playbook playbooks/collect-dumps.yml -i /tmp/fleet/inventory.yml
  hvsim fleet down --dir /tmp/fleet
"""


def _cmd_up(args: argparse.Namespace) -> int:
    kinds = [k.strip() for k in args.kinds.split(",")] if args.kinds else None
    hosts = fleet_up(
        args.dir,
        args.count,
        seed=args.seed,
        memory=args.memory,
        kinds=kinds,
        endian_mix=not args.big_endian_only,
        dumps=["phyp", "fadump"] if args.dump == "mixed" else args.dump.split(","),
    )
    for h in hosts:
        kind = h.kind if h.scenario is None else f"{h.kind} ({h.scenario})"
        print(
            f"{h.name}: {format_size(h.memory)} {h.endian}-endian {h.dump}, {kind}, root {h.root}"
        )
    print(f"inventory: {Path(args.dir).absolute() / INVENTORY}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    problems = fleet_down(args.dir, remove=not args.keep)
    for p in problems:
        print(f"hvsim: error: {p}", file=sys.stderr)
    return 1 if problems else 0


def _cmd_status(args: argparse.Namespace) -> int:
    rows = fleet_status(args.dir)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        flags = "protected" if r["protected"] else ("dump waiting" if r["dump_waiting"] else "-")
        print(
            f"{r['name']:<10} {r['dump']:<6} {r['kind']:<22} {r['state']:<8} {flags:<13} "
            f"reserved {r['reserved_bytes'] / (1 << 30):6.2f} GiB "
            f"{'mounted' if r['mounted'] else 'NOT mounted'}"
        )
    return 0


def add_subcommands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``hvsim fleet up|down|status``."""
    raw = argparse.RawDescriptionHelpFormatter
    fleet = sub.add_parser(
        "fleet",
        help="a fleet of simulated LPARs and its Ansible inventory",
        description=__doc__,
        formatter_class=raw,
    )
    fsub = fleet.add_subparsers(dest="fleet_command", metavar="COMMAND")
    fsub.required = True
    p = fsub.add_parser(
        "up", help="create, crash and mount a fleet", description=_UP_HELP, formatter_class=raw
    )
    p.add_argument("--count", type=int, required=True, help="number of LPARs")
    p.add_argument("--dir", required=True, help="fleet directory (created 0700)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mix and of memory (default 0)")
    p.add_argument("--memory", default="1G", help="RAM per LPAR (default 1G)")
    p.add_argument(
        "--kinds",
        help="comma list of kinds, cycled: crashed[:SCENARIO], healthy, "
        "no-firmware, corrupt-header (default: the seeded mix)",
    )
    p.add_argument("--big-endian-only", action="store_true", help="no little-endian LPARs")
    p.add_argument(
        "--dump",
        default="phyp",
        metavar="INTERFACES",
        help="dump interface of the LPARs, a comma list cycled: phyp, fadump; 'mixed' for "
        "phyp,fadump (default phyp)",
    )
    p.set_defaults(func=_cmd_up)
    p = fsub.add_parser("down", help="unmount the roots and delete the fleet directory")
    p.add_argument("--dir", required=True)
    p.add_argument("--keep", action="store_true", help="unmount only; keep the directory")
    p.set_defaults(func=_cmd_down)
    p = fsub.add_parser("status", help="each LPAR's state, protection and reserved memory")
    p.add_argument("--dir", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_status)
