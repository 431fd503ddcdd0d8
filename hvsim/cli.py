"""The ``hvsim`` command: create, boot, crash and inspect simulated POWER6 LPARs.

Every subcommand takes the LPAR's directory; state lives there, so commands
in different shells (and a FUSE root mounted with ``hvsim mount``) see one
machine. User errors print one line ``hvsim: error: ...`` and exit 2 for
bad usage, 1 otherwise; a verification that finds differences exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn, cast

from drgn_hvdump import __version__
from drgn_hvdump.capture import RootTable
from drgn_hvdump.clitools import ArgumentParser, run_main
from drgn_hvdump.formats.dump_header import section_error_names, status_names

from .config import QUIRKS, auto_reserve_size, format_size, parse_size
from .fleet import add_subcommands as add_fleet_subcommands
from .fuse_root import ROOT_FILES, add_subcommands, root_table, text_providers
from .kernel import SCENARIOS
from .lpar import Lpar
from .verify import verify_dump, verify_sections

__all__ = ["build_parser", "main"]

_TOP_HELP = """\
hvsim simulates a POWER6 LPAR with hypervisor-assisted dump ("phyp dump"),
the way Linux 2.6.26-3.3 implemented it, so dump tools can be developed and
tested without POWER hardware. An LPAR is a small directory; its memory is
generated from a seed on demand, so even a 4 TiB LPAR costs a few MiB.

The model:
  boot     The kernel (booted with phyp_dump=1 on firmware that offers
           ibm,configure-kernel-dump) reserves a *scratch area* at the top of
           RAM: CPU state size + HPTE region size + reserve size (256 MiB by
           default, phyp_dump_reserve_size=). It registers a dump header
           naming three destinations in it: the register save area, the
           hashed page table, and a copy of the low 256 MiB. The LPAR is
           "protected".
  crash    The hypervisor saves the CPU registers, the HPTEs and the low
           256 MiB into the scratch area, fills in the dump header, resets I/O
           and boots the LPAR again without clearing RAM.
  capture  The capture kernel sees rtas/ibm,dump-kernel, runs in the low
           reserve size (overwriting it: that is why it was saved), keeps
           everything above reserved, and offers /proc/vmcore and
           /sys/kernel/release_region. Userspace copies the dump and writes
           "ADDR SIZE" (hex) to release_region for each range it has stored;
           released memory is reused at once.
  release  When the released bytes add up, the kernel invalidates the dump
           and registers a new one: running and protected again.

Release quirks: by default (--quirks faithful) hvsim reproduces the real
kernel: a release frees one page past its end; the start is clamped up to
the reserved area without shortening the length; released bytes are counted
unclamped into two counters compared for exact equality, so a range
released twice means the LPAR is never re-registered, and hitting the sum
early re-registers it before everything was released. --quirks corrected
gives what the code should have done.

Typical session:
  hvsim create /tmp/lpar --memory 4G --cpus 8 --seed 7
  hvsim boot /tmp/lpar
  hvsim crash /tmp/lpar          # ... capture kernel is running
  hvsim status /tmp/lpar
  hvsim mount /tmp/lpar /tmp/root   # /tmp/root/proc/vmcore, .../release_region
  hvsim verify /tmp/lpar
"""

_CREATE_HELP = """\
Create a new LPAR directory (mode 0700), powered off unless --boot.

Memory is a multiple of 256 MiB from 512M to 16T; its content is a function
of --seed and --mix (shares of zero, text, pointer and random pages), so
size costs no disk. The kernel's byte order (--endian) and page size
(--page-size) shape memory and the ELF core; the hypervisor's structures are
big-endian either way. The scratch area needs room above the capture region:
with the default 256 MiB reserve an LPAR needs at least 768M to be protected.

--dump fadump makes today's POWER LPAR instead: firmware-assisted dump
(fadump=on). --reserve-size is then the boot memory (default 5% of RAM, at
least 256M), registered as --boot-regions sections; the capture kernel shows
/sys/kernel/fadump/{enabled,registered,release_mem,mem_reserved,hotplug_ready}
and builds /proc/vmcore itself; one write of 1 to release_mem gives all
memory back, and 1 to registered protects the LPAR again (docs/fadump.md):

  hvsim create /tmp/fa --memory 4G --dump fadump --boot-regions 3 --boot
"""

_ADOPT_HELP = """\
Create an LPAR whose first kernel's memory is a real memory image: an ELF
core of a whole ppc64 guest, such as QEMU's dump-guest-memory of a pseries
guest (QMP: {"execute": "dump-guest-memory", "arguments": {"paging": false,
"protocol": "file:/tmp/guest.core"}}). The image is read in place, never
copied; keep it where it is while the LPAR lives.

From the image: RAM (each PT_LOAD at its physical address; QEMU's single
segment at 0), each CPU's registers (its NT_PRSTATUS notes, in CPU order:
they go into the hypervisor's register save area at the crash), the
kernel's byte order, page size and release (its VMCOREINFO). QEMU writes no
VMCOREINFO note for pseries guests: hvsim finds the kernel's own note in
memory, or takes its physical address from --vmcoreinfo (what the guest's
/sys/kernel/vmcoreinfo shows). The LPAR gets more RAM than the image, so the
scratch area sits above it. Then boot, crash and collect as with any LPAR:

  hvsim adopt /tmp/guest.core /tmp/real --boot
  hvsim crash /tmp/real
  hvsim mount /tmp/real /tmp/root
  hvdump collect --root /tmp/root --output /tmp/dump
  hvsim verify /tmp/real /tmp/dump/dump.kdump
  drgn -c /tmp/dump/dump.kdump -s VMLINUX-WITH-DEBUG-INFO
"""

_BOOT_HELP = """\
Boot an LPAR that is off or crashed. With a dump waiting in the firmware this
is a capture boot: the capture kernel runs in [0, reserve size) and reserves
the rest (state "capture"); if the hypervisor flagged the dump in error, the
kernel invalidates it and registers again instead. Otherwise an ordinary boot
that reserves the scratch area and registers a dump header if it can.
"""

_CRASH_HELP = """\
Crash the running kernel. If it registered a dump, the hypervisor saves the
register save area, the HPTEs and the low 256 MiB into the scratch area and
fills in the dump header; then (unless --no-reboot) the LPAR boots the
capture kernel. Crashing the capture kernel before the dump is collected
keeps the dump waiting, but memory released so far was reused and is lost.

Scenarios:
"""

_REBOOT_HELP = """\
Reboot without a crash. A running ordinary kernel reboots and registers
again; no dump is taken. A capture kernel reboots into capture again, since
the firmware still holds the dump: released ranges were reused and are lost.
"""

_INVALIDATE_HELP = """\
Give up the waiting dump. In a capture kernel: invalidate it, register a new
dump at the scratch area and free all other reserved memory (the LPAR is
protected again; uncollected data is gone). In a crashed LPAR: the firmware
forgets the dump and the next boot is ordinary.
"""

_STATUS_HELP = """\
Show the LPAR's state: the life-cycle state, whether it is protected, the
dump header's flags, destinations and lengths, what is still reserved, what
was released or lost, the release counters, and the recent events.
"""

_RELEASE_HELP = """\
Release a range as writing "ADDR SIZE" to /sys/kernel/release_region does
(ADDR and SIZE in hex, "0x" optional). Faithful quirks: the start is clamped
up to the reserved area (the length is kept), the size clamped to its end,
page frame numbers rounded down, and one page past the end is freed too; the
counters add the unclamped size. Corrected: a page is freed once all of its
bytes have been released, and out-of-range writes fail with EINVAL.
"""

_VERIFY_HELP = """\
Without DUMPFILE: check the hypervisor's saved sections in the LPAR against
ground truth (low-memory copy, register save area, HPTEs).

With DUMPFILE (ELF): compare it page by page with the crashed kernel's
memory. A collected dump holds the crashed memory at physical addresses; a
raw copy of /proc/vmcore is recognised and its low 256 MiB taken from the
hypervisor's copy in the scratch area. Reports wrong, missing, lost and
excluded zero pages; exits 1 on any mismatch.
"""

_CAT_HELP = (
    "Print a file of the capture kernel's root without mounting it:\n"
    + "".join(f"  /{f.path}\n" for f in ROOT_FILES.files if f.is_text)
    + "".join(f"  /{d}/PATH\n" for d in ROOT_FILES.device_tree.dirs)
    + "(binary device-tree properties are shown in hex).\n"
    + "Without PATH, list the device tree's properties.\n"
)

_VMCORE_HELP = """\
Copy /proc/vmcore to OUTPUT (mode 0600), as 'dd if=ROOT/proc/vmcore' would.
"""

_TRUTH_CORE_HELP = """\
Write the memory of the last crashed kernel (ground truth, whatever happened
since) as an ELF core in the kernel's byte order: PT_LOADs of the low 256 MiB
(--full: all of RAM), the VMCOREINFO note and one NT_PRSTATUS per CPU. Open it
with stock drgn and the kernel's debug info:

    drgn -c OUTPUT -s "$(hvsim vmlinux LPAR)"
"""

_VMLINUX_HELP = """\
Print the path of the vmlinux (with debug info) the LPAR's kernel runs: the
big- or little-endian image hvsim ships. Give it to drgn -s or crash.
"""


class _Parser(ArgumentParser):
    """argparse with one-line errors: ``hvsim: error: ...`` and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"hvsim: error: {message} (see '{self.prog} --help')\n")


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _page_size_arg(text: str) -> int:
    value = _size_arg(text)
    if value not in (4096, 65536):
        raise argparse.ArgumentTypeError(f"page size must be 4K or 64K, got {text!r}")
    return value


def _hex_arg(text: str) -> int:
    try:
        return int(text, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a hex number") from None


def _section_value(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or name not in ("cpu", "hpte", "rmo"):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected SECTION=VALUE with SECTION cpu, hpte or rmo (e.g. rmo=64M)"
        )
    try:
        return name, parse_size(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


_RAW = argparse.RawDescriptionHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    """The ``hvsim`` argument parser (subcommands set ``func``)."""
    parser = _Parser(prog="hvsim", description=_TOP_HELP, formatter_class=_RAW)
    parser.add_argument("--version", action="version", version=f"hvsim {__version__}")
    # Subparsers are _Parser too (argparse uses the parent's class), typed as the base.
    sub = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", metavar="COMMAND"),
    )
    sub.required = True
    _add_create(sub)
    _add_adopt(sub)
    _add(sub, "boot", "boot an LPAR that is off or crashed", _BOOT_HELP).set_defaults(
        func=_cmd_boot
    )
    _add_crash(sub)
    _add(sub, "reboot", "reboot without a crash", _REBOOT_HELP).set_defaults(func=_cmd_reboot)
    _add(sub, "invalidate", "give up the waiting dump", _INVALIDATE_HELP).set_defaults(
        func=_cmd_invalidate
    )
    _add_views(sub)
    add_subcommands(sub)
    add_fleet_subcommands(sub)
    return parser


def _add(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_: str,
    description: str,
) -> argparse.ArgumentParser:
    """A subcommand whose first argument is the LPAR directory."""
    p = sub.add_parser(name, help=help_, description=description, formatter_class=_RAW)
    p.add_argument("lpar", metavar="LPAR", help="the LPAR directory")
    return p


def _add_create(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _add(sub, "create", "create a new LPAR", _CREATE_HELP)
    p.add_argument("--memory", type=_size_arg, required=True, help="RAM, e.g. 4G or 1T")
    p.add_argument("--cpus", type=int, default=4, help="logical CPUs (default 4)")
    p.add_argument("--endian", choices=("big", "little"), default="big", help="kernel byte order")
    p.add_argument("--page-size", type=_page_size_arg, default=65536, help="4K or 64K (default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the memory content")
    p.add_argument("--mix", help="page mix, e.g. zero=0.3,text=0.3,pointer=0.3,random=0.1")
    p.add_argument("--no-firmware", action="store_true", help="firmware without dump support")
    p.add_argument(
        "--no-dump",
        action="store_true",
        help="kernel booted with phyp_dump=0 (fadump: fadump=off): never registers",
    )
    p.add_argument(
        "--dump",
        choices=("phyp", "fadump"),
        default="phyp",
        help="the kernel's dump interface: phyp (hypervisor-assisted dump, phyp_dump=1, the "
        "default) or fadump (firmware-assisted dump, fadump=on, today's POWER8-10 LPARs)",
    )
    p.add_argument(
        "--boot-regions",
        type=int,
        default=1,
        metavar="N",
        help="fadump: register boot memory as N sections (1-7, as newer kernels do)",
    )
    p.add_argument(
        "--reserve-size",
        default=None,
        help="phyp: phyp_dump_reserve_size=, the capture region and third part of the scratch "
        "area (default 256M); fadump: the boot memory size, crashkernel= (default 'auto'); "
        "'auto' for 5%% of RAM rounded down to 256M, at least 256M",
    )
    p.add_argument("--quirks", choices=QUIRKS, default="faithful", help="release semantics")
    p.add_argument(
        "--literal-release-map",
        action="store_true",
        help="release_region prints the kernel's literal unrelocated header (quirk)",
    )
    p.add_argument("--osrelease", default="2.6.32-hvsim", help="kernel release string")
    p.add_argument(
        "--tasks",
        default="",
        metavar="COMM[:PID],...",
        help="the crashed kernel's user processes (default: a plausible set), e.g. sshd,db:2000",
    )
    p.add_argument("--boot", action="store_true", help="boot it right away")
    p.set_defaults(func=_cmd_create)


def _add_adopt(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "adopt",
        help="create an LPAR from a real memory image (an ELF core)",
        description=_ADOPT_HELP,
        formatter_class=_RAW,
    )
    p.add_argument("image", metavar="CORE", help="ELF core of the whole guest")
    p.add_argument("lpar", metavar="LPAR", help="the LPAR directory to create")
    p.add_argument(
        "--vmcoreinfo",
        type=_hex_arg,
        metavar="ADDR",
        help="physical address of the kernel's VMCOREINFO note (default: find it)",
    )
    p.add_argument(
        "--endian", choices=("big", "little"), help="kernel byte order (default: from the image)"
    )
    p.add_argument(
        "--crash-cpu",
        type=int,
        default=0,
        help="the CPU that panicked (default 0; drgn reads panic_cpu from memory itself)",
    )
    p.add_argument(
        "--mmu",
        choices=("hash", "radix"),
        help="the kernel's MMU (default: VMCOREINFO's NUMBER(RADIX_MMU), else hash)",
    )
    p.add_argument("--quirks", choices=QUIRKS, default="faithful", help="release semantics")
    p.add_argument(
        "--dump",
        choices=("phyp", "fadump"),
        default="phyp",
        help="the dump interface of the LPAR (fadump: its reserved area above the image; "
        "a fadump vmcore's own hole is kept as it is)",
    )
    p.add_argument("--boot", action="store_true", help="boot it right away")
    p.set_defaults(func=_cmd_adopt)


def _add_crash(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    scen = "".join(f"  {s.name:<14} {s.description}\n" for s in SCENARIOS.values())
    p = _add(sub, "crash", "crash the running kernel", _CRASH_HELP + scen)
    p.add_argument("--scenario", choices=tuple(SCENARIOS), help="how it crashes (default panic)")
    p.add_argument("--no-reboot", action="store_true", help="stay crashed; boot later")
    p.add_argument(
        "--partial",
        type=_section_value,
        action="append",
        default=[],
        metavar="SECTION=SIZE",
        help="the hypervisor copies only SIZE bytes of a section (cpu, hpte, rmo); repeatable",
    )
    p.add_argument(
        "--error",
        type=_section_value,
        action="append",
        default=[],
        metavar="SECTION=FLAGS",
        help="set a section's error flags, e.g. rmo=0x1000 (that section copies nothing "
        "unless --partial says otherwise)",
    )
    p.set_defaults(func=_cmd_crash)


def _add_views(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The subcommands that show or copy what the LPAR holds, or release a range."""
    p = _add(sub, "status", "show state, dump header, reserved and released memory", _STATUS_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_status)

    p = _add(sub, "release", "release a range (like a write to release_region)", _RELEASE_HELP)
    p.add_argument("addr", metavar="ADDR", help="start address (hex)")
    p.add_argument("size", metavar="SIZE", help="size in bytes (hex)")
    p.set_defaults(func=_cmd_release)

    p = _add(
        sub, "verify", "check saved sections or a dump file against ground truth", _VERIFY_HELP
    )
    p.add_argument("dumpfile", metavar="DUMPFILE", nargs="?", help="an ELF dump to check")
    p.add_argument(
        "--as",
        dest="kind",
        choices=("auto", "collected", "vmcore"),
        default="auto",
        help="what DUMPFILE is (default: recognise it)",
    )
    p.set_defaults(func=_cmd_verify)

    p = _add(sub, "cat", "print a file of the capture kernel's root", _CAT_HELP)
    p.add_argument("file", metavar="PATH", nargs="?", help="e.g. /sys/kernel/release_region")
    p.set_defaults(func=_cmd_cat)

    p = _add(sub, "vmcore", "copy /proc/vmcore to a file", _VMCORE_HELP)
    p.add_argument("output", metavar="OUTPUT", help="file to write (created 0600)")
    p.set_defaults(func=_cmd_vmcore)

    p = _add(
        sub, "truth-core", "write the crashed kernel's memory as an ELF core", _TRUTH_CORE_HELP
    )
    p.add_argument("output", metavar="OUTPUT", help="file to write (created 0600)")
    p.add_argument("--full", action="store_true", help="all of RAM, not just the low 256 MiB")
    p.set_defaults(func=_cmd_truth_core)

    p = _add(sub, "vmlinux", "print the path of the LPAR kernel's debug-info image", _VMLINUX_HELP)
    p.set_defaults(func=_cmd_vmlinux)


def _fail(message: str) -> int:
    print(f"hvsim: error: {message}", file=sys.stderr)
    return 1


# ----------------------------------------------------------------- commands


def _cmd_create(args: argparse.Namespace) -> int:
    reserve = args.reserve_size or ("auto" if args.dump == "fadump" else "256M")
    if reserve == "auto":
        reserve = auto_reserve_size(args.memory)
    lpar = Lpar.create(
        args.lpar,
        memory=args.memory,
        cpus=args.cpus,
        endian=args.endian,
        page_size=args.page_size,
        seed=args.seed,
        mix=args.mix,
        firmware_dump=not args.no_firmware,
        dump_enabled=not args.no_dump,
        reserve_size=reserve,
        quirks=args.quirks,
        literal_release_map=args.literal_release_map,
        osrelease=args.osrelease,
        tasks=args.tasks,
        boot=args.boot,
        dump=args.dump,
        boot_regions=args.boot_regions,
    )
    cfg = lpar.config
    fadump = (
        f", fadump with {format_size(cfg.reserve_size)} boot memory" if cfg.dump == "fadump" else ""
    )
    print(
        f"created {lpar.path}: {format_size(cfg.memory)} RAM, {cfg.cpus} CPUs, {cfg.endian}-endian, "
        f"{format_size(cfg.page_size)} pages, seed {cfg.seed}{fadump}; state {lpar.state}"
    )
    return 0


def _cmd_adopt(args: argparse.Namespace) -> int:
    lpar = Lpar.adopt(
        args.lpar,
        args.image,
        vmcoreinfo_at=args.vmcoreinfo,
        endian=args.endian,
        crash_cpu=args.crash_cpu,
        quirks=args.quirks,
        mmu=args.mmu,
        boot=args.boot,
        dump=args.dump,
    )
    cfg = lpar.config
    print(
        f"created {lpar.path} from {cfg.image}: {format_size(cfg.memory)} RAM, {cfg.cpus} CPUs, "
        f"{cfg.endian}-endian {cfg.osrelease}, {format_size(cfg.page_size)} pages; "
        f"state {lpar.state}"
    )
    return 0


def _last_event(lpar: Lpar) -> str:
    events = lpar.status()["events"]
    return str(events[-1][1]) if events else ""


def _cmd_boot(args: argparse.Namespace) -> int:
    lpar = Lpar.open(args.lpar)
    state = lpar.boot()
    print(f"{lpar.path}: {state}: {_last_event(lpar)}")
    return 0


def _cmd_crash(args: argparse.Namespace) -> int:
    lpar = Lpar.open(args.lpar)
    before = len(lpar.status()["events"])
    state = lpar.crash(
        args.scenario,
        reboot=not args.no_reboot,
        partial=dict(args.partial),
        errors=dict(args.error),
    )
    for _, text in lpar.status()["events"][before:]:
        print(f"{lpar.path}: {text}")
    print(f"{lpar.path}: now {state}")
    return 0


def _cmd_reboot(args: argparse.Namespace) -> int:
    lpar = Lpar.open(args.lpar)
    state = lpar.reboot()
    print(f"{lpar.path}: {state}: {_last_event(lpar)}")
    return 0


def _cmd_invalidate(args: argparse.Namespace) -> int:
    lpar = Lpar.open(args.lpar)
    state = lpar.invalidate()
    print(f"{lpar.path}: {state}: {_last_event(lpar)}")
    return 0


def _cmd_release(args: argparse.Namespace) -> int:
    lpar = Lpar.open(args.lpar)
    result = lpar.release_text(f"{args.addr} {args.size}".encode())
    line = f"released {result.freed_bytes:#x} bytes"
    if result.freed:
        line += f" ({', '.join(f'{s:#x}-{e:#x}' for s, e in result.freed)})"
    if result.clamped:
        line += "; the range was clamped to the reserved area"
    if result.note:
        line += f"; {result.note}"
    if result.reregistered:
        line += "; dump invalidated and registered again: the LPAR is protected"
    print(line)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    lpar = Lpar.open(args.lpar)
    if args.dumpfile is None:
        report = verify_sections(lpar)
    else:
        report = verify_dump(lpar, args.dumpfile, kind=args.kind)
    sys.stdout.write(report.text())
    return 0 if report.ok else 1


def _cmd_cat(args: argparse.Namespace) -> int:
    lpar = Lpar.open(args.lpar)
    path = (args.file or "").strip()
    texts = text_providers(lpar)
    table = root_table(lpar.config.dump)
    file = table.at(path) or table.at(_link_target(table, path))
    if file is not None and file.name in texts:
        sys.stdout.write(texts[file.name]())
        return 0
    tree = lpar.device_tree()
    for prefix in (*(f"/{d}/" for d in table.device_tree.dirs), ""):
        if path.startswith(prefix) and path[len(prefix) :] in tree:
            value = tree[path[len(prefix) :]]
            printable = value.rstrip(b"\0")
            if printable and all(32 <= b < 127 or b == 0 for b in printable):
                print(printable.replace(b"\0", b" ").decode())
            else:
                print(value.hex())
            return 0
    if not path:
        for name, value in sorted(tree.items()):
            print(f"{name} ({len(value)} bytes)")
        return 0
    return _fail(f"{path}: no such file in the capture root (try without PATH for a list)")


def _link_target(table: RootTable, path: str) -> str:
    """``path`` with an older name (``/sys/kernel/fadump_registered``) resolved."""
    target = table.link_at(path)
    if target is None:
        return path
    return posixpath.normpath(posixpath.join(posixpath.dirname(path.strip("/")), target))


def _cmd_truth_core(args: argparse.Namespace) -> int:
    from .groundcore import write_truth_core

    lpar = Lpar.open(args.lpar)
    try:
        size = write_truth_core(lpar, args.output, full=args.full)
    except ValueError as e:
        return _fail(str(e))
    print(f"wrote {size} bytes (ground truth of the last crash) to {args.output}")
    return 0


def _cmd_vmlinux(args: argparse.Namespace) -> int:
    from .kernel import vmlinux_path

    cfg = Lpar.open(args.lpar).config
    if cfg.adopted:
        return _fail(
            f"{args.lpar} adopted a real image ({cfg.image}): use the vmlinux with debug info "
            f"of its kernel, {cfg.osrelease} (hvsim's own images are for generated LPARs)"
        )
    print(vmlinux_path(cfg.endian))
    return 0


def _cmd_vmcore(args: argparse.Namespace) -> int:
    lpar = Lpar.open(args.lpar)
    size = lpar.vmcore_size()
    fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        offset = 0
        chunk = 4 << 20
        while offset < size:
            data = lpar.read_vmcore(offset, chunk)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            offset += len(data)
        os.fsync(fd)
    finally:
        os.close(fd)
    print(f"wrote {size} bytes of /proc/vmcore to {args.output}")
    return 0


# ------------------------------------------------------------------- status


def _cmd_status(args: argparse.Namespace) -> int:
    lpar = Lpar.open(args.lpar)
    st = lpar.status()
    if args.json:
        json.dump(st, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_status(st))
    return 0


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _ranges(ranges: Sequence[Sequence[Any]]) -> str:
    if not ranges:
        return "none"
    return ", ".join(f"{r[0]:#x}-{r[1]:#x}" for r in ranges)


def format_status(st: dict[str, Any]) -> str:
    """The text ``hvsim status`` prints for :meth:`Lpar.status` data."""
    cfg = st["config"]
    out = [
        f"LPAR {st['path']}: {st['state']} (boot generation {st['generation']})",
        f"  machine: {format_size(cfg['memory'])} RAM, {cfg['cpus']} CPUs, {cfg['endian']}-endian, "
        f"{format_size(cfg['page_size'])} pages, seed {cfg['seed']}, quirks {cfg['quirks']}, "
        f"reserve size {format_size(cfg['reserve_size'])}",
        "  firmware: "
        + (
            "dump support (ibm,configure-kernel-dump)"
            if cfg["firmware_dump"]
            else "no dump support"
        )
        + (
            ""
            if cfg["dump_enabled"]
            else "; kernel booted with "
            + ("fadump=off" if cfg.get("dump") == "fadump" else "phyp_dump=0")
        )
        + ("; kernel: fadump" if cfg.get("dump") == "fadump" else ""),
    ]
    kernel = st.get("kernel")
    if st["protected"]:
        prot = "protected: a dump header is registered"
    elif st["state"] == "capture":
        prot = "not protected: the capture kernel holds the dump (release it all to re-register)"
    else:
        prot = "NOT protected"
        if kernel and kernel.get("not_registered_reason"):
            prot += f": {kernel['not_registered_reason']}"
    out.append(f"  protection: {prot}")
    for key, title in (("registered_header", "registered header"), ("dump_header", "dump header")):
        h = st.get(key)
        if not h:
            continue
        flags = ", ".join(status_names(h["status"])) or "none"
        out.append(f"  {title}: status {h['status']:#06x} ({flags})")
        for name, s in h["sections"].items():
            errs = ", ".join(section_error_names(s["error_flags"])) or "none"
            out.append(
                f"    {name.upper():<5} dest {s['destination_address']:#x} "
                f"length {s['source_length']:#x} copied {s['length_copied']:#x} "
                f"flags {s['dump_flags']:#x} errors {errs}"
            )
    if kernel:
        out.append(
            f"  kernel: {kernel['kind']} (generation {kernel['generation']}), reserved "
            f"{_ranges(kernel['reserved'])} ({kernel['reserved_bytes']:#x} bytes)"
        )
        rel = kernel.get("release")
        if rel:
            out.append(
                f"  released: {_ranges(rel['released'])} ({rel['released_bytes']:#x} bytes in "
                f"{rel['writes']} writes); dump data still reserved: "
                f"{rel['unreleased_dump_bytes']:#x} bytes"
            )
        # fadump releases in one write: it has no counters.
        if rel and cfg.get("dump") != "fadump":
            out.append(
                f"  release counters: reserved {rel['reserved_counter']:#x} of "
                f"{rel['reserved_target']:#x}, scratch {rel['scratch_counter']:#x} of "
                f"{rel['scratch_target']:#x} (re-registers when both are equal)"
            )
    dump = st.get("dump")
    if dump:
        out.append(
            f"  last dump: generation {dump['generation']}, crashed {_when(dump['crash_time'])} "
            f"on CPU {dump['crash_cpu']} ({dump['scenario']}); {dump['status']}; "
            f"capture boots {dump['capture_boots']}"
        )
        for start, end, why in dump["lost"]:
            out.append(f"    lost {start:#x}-{end:#x} ({end - start:#x} bytes): {why}")
    c = st["counters"]
    out.append("  counters: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    out.append("  events:")
    for t, text in st["events"][-12:]:
        out.append(f"    {_when(t)}  {text}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hvsim``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # The simulator's API reports bad values (sizes, names, ranges) as ValueError.
    return run_main(
        "hvsim",
        lambda _: int(args.func(args)),
        None,
        user_errors=(ValueError,),
        process=argv is None,
    )
