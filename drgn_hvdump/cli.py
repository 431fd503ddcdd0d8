"""The ``hvdump`` command: look at a capture kernel's waiting dump and at dump files.

``hvdump status`` reads what the capture kernel under ``--root`` offers (firmware
support, whether a dump waits, the hypervisor's header, the release map) and
``hvdump inspect`` decodes one file of any format hvdump knows. Collection
(``hvdump collect``) builds on the same pieces.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from drgn_hvdump import __version__
from drgn_hvdump.capture import open_capture
from drgn_hvdump.clitools import ArgumentParser, existing_root, print_json, run_main
from drgn_hvdump.errors import FormatError, HvdumpError
from drgn_hvdump.formats.dump_header import HEADER_SIZE, describe_dump_header, parse_dump_header
from drgn_hvdump.formats.elfcore import ElfCore
from drgn_hvdump.formats.hpte import Hpte, parse_hpte_table
from drgn_hvdump.formats.kdump import KDUMP_SIGNATURE, KdumpFile
from drgn_hvdump.formats.regsave import REGSAVE_MAGIC, parse_regsave
from drgn_hvdump.formats.release_region import format_release_map, parse_release_map

__all__ = ["main"]

_DESCRIPTION = """\
Tools for POWER hypervisor-assisted dump.

After a crash the hypervisor saves the low 256 MiB of RAM, every CPU's registers
and the hashed page table into a scratch area, and reboots the LPAR into a
capture kernel that keeps the rest of memory reserved. That kernel offers the
old memory as /proc/vmcore and takes ranges back through
/sys/kernel/release_region. --root points every command at another root (a
FUSE-mounted simulated LPAR from `hvsim mount`, for example).
"""


def _cmd_status(args: argparse.Namespace) -> int:
    from drgn_hvdump.collect.ownership import dump_owner
    from drgn_hvdump.dumpdir.registry import read_registration

    capture = open_capture(existing_root(args.root))
    state = capture.state()
    owner = dump_owner(args.root, capture.lock_path) if state.dump_waiting else None
    entry, _ = read_registration(args.root)
    stopped = _stopped_reason(entry)
    if args.json:
        print_json(
            {
                **state.to_json(),
                "owner": owner.to_json() if owner is not None else None,
                "collection": entry.get("output") if entry else None,
                "stopped": stopped,
            }
        )
        return 0
    print(f"root:                {state.root}")
    print(f"interface:           {state.interface}")
    print(f"firmware support:    {'yes' if state.firmware_supported else 'no'}")
    if state.dump_enabled is not None:
        print(f"dump enabled:        {'yes' if state.dump_enabled else 'no'}")
    print(f"dump waiting:        {'yes' if state.dump_waiting else 'no'}")
    for line in state.description:
        print(line)
    if state.readable:
        print(f"reserved:            {state.reserved_bytes / (1 << 30):.2f} GiB")
    if state.dump_waiting:
        print(f"dump usable:         {'yes' if state.valid else 'no'} ({state.reason})")
        print(f"collector:           {owner.describe() if owner else 'none running'}")
    if entry is not None and owner is None:
        print(f"last collection:     {entry.get('output')}")
    if stopped:
        print(f"collection stopped:  {stopped}")
    else:
        print(f"reason:              {state.reason}")
    for warning in state.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _stopped_reason(entry: dict[str, object] | None) -> str | None:
    """Why the registered collection last stopped on its own (its journal's ``stop``)."""
    import json

    if not entry or not isinstance(entry.get("output"), str):
        return None
    path = Path(str(entry["output"])) / "journal.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - (1 << 16)))
            tail = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(tail):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("t") == "stop":
            return str(rec.get("why"))
        if isinstance(rec, dict) and rec.get("t") in ("done", "rel", "chunk", "start"):
            return None
    return None


_HEAD = 1 << 16
_SMALL_MAX = 64 << 20
"""The largest dump header, register save area or release map ``inspect`` reads."""


def _inspect_kind(data: bytes, size: int | None = None) -> str:
    """The kind of a file from its first bytes (``data``) and its ``size``."""
    size = len(data) if size is None else size
    if data[:4] == b"\x7fELF":
        return "elf"
    if data[:8] == KDUMP_SIGNATURE:
        return "kdump"
    if data[:8] == REGSAVE_MAGIC.to_bytes(8, "big") or data[:8] == REGSAVE_MAGIC.to_bytes(
        8, "little"
    ):
        return "regsave"
    if data[:4] == b"CPU:":
        return "release-map"
    if size == HEADER_SIZE:
        return "header"
    if size % 16 == 0:
        return "hpte"
    raise FormatError(
        "cannot tell the format of this file",
        offset=0,
        hint="give --kind elf|kdump|header|regsave|hpte|release-map",
    )


def _inspect_kdump(path: Path) -> None:
    from drgn_hvdump.codecs import decompress_page
    from drgn_hvdump.formats.elfcore import parse_notes
    from drgn_hvdump.formats.vmcoreinfo import parse_vmcoreinfo

    with KdumpFile.open(path, decompress_page) as kd:
        h, sub, ps = kd.header, kd.sub_header, kd.page_size
        uts = [
            h.utsname[i * 65 : (i + 1) * 65].split(b"\0", 1)[0].decode("ascii", "replace")
            for i in range(6)
        ]
        print(
            f"kdump-compressed, {kd.byteorder}-endian, header version {h.header_version}, "
            f"{ps}-byte pages, max_mapnr {kd.max_mapnr:#x}, status {h.status:#x}, "
            f"{h.nr_cpus} CPUs, {uts[4]} {uts[2]}"
        )
        notes = parse_notes(kd.notes, kd.byteorder, str(path), sub.offset_note)
        for note in notes:
            print(f"  note {note.name!r} type {note.type} {len(note.desc)} bytes")
        raw = kd.vmcoreinfo_raw()
        if raw is not None:
            info = parse_vmcoreinfo(raw, str(path), sub.offset_vmcoreinfo)
            for key in ("OSRELEASE", "PAGESIZE", "CRASHTIME"):
                if key in info:
                    print(f"  VMCOREINFO {key}={info[key]}")
        runs = pages = 0
        for first, end in kd.present_runs():
            runs += 1
            pages += end - first
        print(f"  {pages} pages present in {runs} runs")
        # Every descriptor must point at bytes in the file and hold at most a page.
        for at, desc in kd.descriptor_table(pages):
            if desc.offset < 0 or desc.offset + desc.size > kd.file_size or desc.size > ps:
                raise FormatError(
                    f"page descriptor points at {desc.offset:#x}+{desc.size:#x}, outside the "
                    f"file ({kd.file_size:#x} bytes) or more than a page",
                    path=str(path),
                    offset=at,
                )
        print(f"  {pages} page descriptors point inside the file")


def _inspect_hpte(path: Path, size: int, limit: int, piece: int = 1 << 20) -> None:
    """An HPTE table read ``piece`` at a time: memory stays flat whatever its size."""
    if size % 16:
        raise FormatError(
            f"HPTE table of {size} bytes ends with a partial {size % 16}-byte entry",
            offset=size - size % 16,
            hint="HPTEs are 16 bytes",
        )
    total = valid = 0
    shown: list[Hpte] = []
    with open(path, "rb") as f:
        for at in range(0, size, piece):
            data = os.pread(f.fileno(), min(piece, size - at), at)
            try:
                entries = parse_hpte_table(data, path=str(path))
            except FormatError as error:
                raise error.at(base=at) from None
            total += len(entries)
            for e in entries:
                if e.valid:
                    valid += 1
                    if len(shown) < limit:
                        shown.append(e)
    print(f"{total} HPTEs in {total // 8} groups, {valid} valid")
    for hpte in shown:
        print(f"  v {hpte.v:#018x} r {hpte.r:#018x} bolted={hpte.bolted} large={hpte.large}")


def _inspect_elf(path: Path) -> None:
    with ElfCore.open(path, machine=None) as core:
        print(
            f"ELF core, {core.byteorder}-endian, machine {core.machine}, {len(core.segments)} PT_LOAD"
        )
        for seg in core.segments:
            print(
                f"  PT_LOAD paddr {seg.p_paddr:#018x} memsz {seg.p_memsz:#14x} "
                f"filesz {seg.p_filesz:#14x} offset {seg.p_offset:#x}"
            )
        for note in core.notes:
            print(f"  note {note.name!r} type {note.type} {len(note.desc)} bytes")
        for index, status in enumerate(core.prstatus):
            regs = status.pr_reg
            print(
                f"  CPU note {index}: pid {status.pr_pid} nip {regs.nip:#018x} "
                f"lr {regs.link:#018x} r1 {regs.gpr[1]:#018x}"
            )
        if core.vmcoreinfo is not None:
            for key in ("OSRELEASE", "PAGESIZE", "CRASHTIME"):
                if key in core.vmcoreinfo:
                    print(f"  VMCOREINFO {key}={core.vmcoreinfo[key]}")


def _cmd_inspect(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(_HEAD)
    except OSError as error:
        raise HvdumpError(f"{path}: cannot read: {error.strerror}") from None
    try:
        kind = args.kind or _inspect_kind(data, size)
        if kind not in ("elf", "kdump", "hpte"):
            if size > _SMALL_MAX:
                raise FormatError(
                    f"{size} bytes is far more than a {kind} holds", offset=_SMALL_MAX
                )
            try:
                data = path.read_bytes()
            except OSError as error:
                raise HvdumpError(f"{path}: cannot read: {error.strerror}") from None
        if kind == "elf":
            _inspect_elf(path)
        elif kind == "kdump":
            _inspect_kdump(path)
        elif kind == "header":
            for line in describe_dump_header(parse_dump_header(data, path=str(path))):
                print(line)
        elif kind == "regsave":
            for cpu in parse_regsave(data, path=str(path)):
                regs = " ".join(
                    f"{k}={v:#x}" for k, v in cpu.regs.items() if k in ("NIA", "LR", "MSR", "GPR01")
                )
                print(f"CPU {cpu.cpu}: {len(cpu.regs)} registers {regs}")
        elif kind == "hpte":
            _inspect_hpte(path, size, args.limit)
        else:
            print(
                format_release_map(
                    parse_release_map(data.decode("ascii", "replace"), path=str(path))
                ),
                end="",
            )
    except FormatError as error:
        raise error.at(path=str(path)) from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="hvdump",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hvdump {__version__}")
    # Subparsers are ArgumentParser too (argparse uses the parent's class), typed as the base.
    sub = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", required=True, metavar="COMMAND"),
    )
    status = sub.add_parser(
        "status",
        help="is a dump waiting? its sections, flags and release map",
        description="Show what the capture kernel under --root says about dumps: firmware "
        "support, whether a dump waits, the hypervisor's dump header (status and per-section "
        "flags), the release map cross-checked against the header, and reserved memory.",
    )
    status.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="root of the capture kernel's filesystem (default /)",
    )
    status.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    status.set_defaults(func=_cmd_status)
    inspect = sub.add_parser(
        "inspect",
        help="decode a dump header, register save area, HPTE table, release map, ELF core "
        "or kdump file",
        description="Decode one file in any format hvdump knows; the kind is guessed from "
        "the content unless --kind is given. Errors name the offset of the first bad byte.",
    )
    inspect.add_argument("file", type=Path)
    inspect.add_argument(
        "--kind", choices=["elf", "kdump", "header", "regsave", "hpte", "release-map"]
    )
    inspect.add_argument("--limit", type=int, default=16, help="HPTEs to list (default 16)")
    inspect.set_defaults(func=_cmd_inspect)
    from drgn_hvdump.collect.cli import add_subcommands as add_collect

    add_collect(sub)
    from drgn_hvdump.service import add_subcommand as add_service

    add_service(sub)
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(
        "hvdump",
        _main,
        argv,
        interrupted="nothing unsaved was released; run the same command again to resume",
        process=argv is None,
    )


if __name__ == "__main__":
    sys.exit(main())
