"""The ``%hvdump`` command (registered when drgn imports the plugin).

Only drgn's command framework is imported here: the plugin's import must stay
cheap for programs that are not hypervisor-assisted dumps. The work is in
:mod:`drgn_hvdump.plugin.helpers`.
"""

from __future__ import annotations

import argparse
from typing import Any

import drgn
from drgn.commands import CommandError, argument, command

__all__: list[str] = []

_SOURCE_KEY = "hvdump.source"  # drgn_hvdump.plugin.attach.SOURCE_KEY, without importing it


def _is_hvdump(prog: drgn.Program) -> bool:
    return prog.cache.get(_SOURCE_KEY) is not None


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


def _print_info(prog: drgn.Program) -> None:
    from drgn_hvdump.plugin.helpers import hvdump_info

    info = hvdump_info(prog)
    kinds = {
        "live": f"live /proc/vmcore of a capture kernel (root {info.root})",
        "raw": "a copy of a capture kernel's /proc/vmcore",
        "collected": "a dump written by hvdump collect",
        "fadump": "a firmware-assisted dump (fadump): registers from its PRSTATUS notes"
        + (f", live on root {info.root}" if info.root else ""),
    }
    print(f"dump:        {info.path}")
    print(f"kind:        {kinds[info.kind]}")
    print(f"kernel:      ppc64, {info.byteorder}-endian, {info.page_size // 1024} KiB pages")
    print(f"memory:      {_size(info.memory)} ({info.memory:#x} bytes), {info.cpus} CPUs saved")
    if info.header:
        print("fadump memory structure:" if info.kind == "fadump" else "dump header (hypervisor):")
        for line in info.header:
            print(f"  {line}")
    else:
        print("dump header: not available (sections found by the register save area's magic)")
    c = info.collection
    if c is not None:
        state = "finished" if c["done"] else "in progress"
        print(f"collection:  {state} into {c['output']} ({c['format']})")
        print(
            f"  saved {_size(c['bytes_saved'])} of {_size(c['bytes_to_save'])}, "
            f"{c['chunks_saved']}/{c['chunks']} chunks; released {_size(c['bytes_released'])}"
        )
    elif info.kind == "live":
        print("collection:  none yet (hvdump collect registers one; until then all memory reads")
        print("             as the dump, so release nothing by other means meanwhile)")
    for w in info.warnings:
        print(f"warning: {w}")


def _print_regions(prog: drgn.Program) -> None:
    from drgn_hvdump.plugin.helpers import hvdump_regions

    print(f"{'START':>18} {'END':>18} {'SIZE':>10}  STATE           DETAIL")
    for r in hvdump_regions(prog):
        print(f"{r.start:#18x} {r.end:#18x} {_size(r.end - r.start):>10}  {r.state:<15} {r.detail}")


def _print_regs(prog: drgn.Program, cpu: int | None) -> None:
    from drgn_hvdump.plugin.helpers import hvdump_registers

    try:
        states = hvdump_registers(prog, cpu)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    for state in states:
        print(f"CPU {state.cpu}:")
        names = list(state.regs)
        for i in range(0, len(names), 4):
            row = names[i : i + 4]
            print("  " + "  ".join(f"{n:>6} {state.regs[n]:016x}" for n in row))


def _print_hpte(prog: drgn.Program, address: int) -> None:
    from drgn_hvdump.plugin.helpers import hvdump_hpte_lines

    for line in hvdump_hpte_lines(prog, address):
        print(line)


def _number(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        try:
            return int(text, 16)
        except ValueError:
            raise CommandError(f"{text!r} is not a number") from None


@command(
    description="describe a hypervisor-assisted dump (POWER phyp dump)",
    long_description="""
    Without arguments: what this dump is (live /proc/vmcore, a copy of one, or a
    collected file), the kernel's byte order and page size, the hypervisor's
    dump header with each section's flags and error flags, and the state of a
    running collection.

    ``%hvdump regions``: the crashed kernel's memory range by range: saved low
    memory, reserved memory, released ranges (saved by the collection or lost),
    memory the capture kernel overwrote, the hypervisor's scratch area.

    ``%hvdump regs [CPU]``: the registers the hypervisor saved, for every CPU or
    one.

    ``%hvdump hpte ADDR``: the hashed page table entries that map an effective
    address, and what the kernel's page tables say about it.

    The same data as Python: ``drgn_hvdump.plugin.helpers`` (``hvdump_info``,
    ``hvdump_regions``, ``hvdump_registers``, ``hvdump_pt_regs``).
    """,
    arguments=(
        argument(
            "what",
            nargs="?",
            choices=("info", "regions", "regs", "hpte"),
            default="info",
            help="what to show (default: info)",
        ),
        argument("value", nargs="?", help="CPU number for regs, address for hpte"),
    ),
    enabled=_is_hvdump,
)
def _cmd_hvdump(prog: drgn.Program, name: str, args: argparse.Namespace, **kwargs: Any) -> None:
    if args.what == "info":
        _print_info(prog)
    elif args.what == "regions":
        _print_regions(prog)
    elif args.what == "regs":
        _print_regs(prog, None if args.value is None else _number(args.value))
    else:
        if args.value is None:
            raise CommandError("hpte needs an address: %hvdump hpte ADDR")
        _print_hpte(prog, _number(args.value))
