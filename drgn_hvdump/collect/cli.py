"""The ``hvdump collect`` and ``hvdump verify`` subcommands (registered by :mod:`drgn_hvdump.cli`)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from drgn_hvdump.clitools import fix_mmap_threshold, parse_size
from drgn_hvdump.errors import HvdumpError

if TYPE_CHECKING:
    from drgn_hvdump.dumpdir.remote import SshTarget

__all__ = ["add_subcommands"]

_COLLECT = """\
Copy the waiting dump under --root into DIR: the crashed kernel's memory (the
saved low 256 MiB back at physical address 0), its CPUs' registers as
PRSTATUS notes, VMCOREINFO, the HPTE section (DIR/hpte.bin) and the register
save area (DIR/regsave.bin), a manifest with per-chunk checksums, and a
journal. Memory is released only after its bytes are written, synced and
read back with the right checksum. Run the same command again after any
interruption (SIGINT, SIGTERM, kill -9, a full disk): it resumes where it
stopped. A collection made with --release never gives the memory back when run
again without it (every release confirmed, the last after a full verify).

One collector owns a dump at a time, whatever its output directory: a second
one exits with status 75 naming the owner (pid, directory, since when), or
waits for it with --wait. The collector stops before its next release when
anything it did not do changes what it relies on: memory released by hand or
by another tool (MemTotal no longer what its own releases leave), or its
output directory or files removed or replaced. DIR must be new, or owned by
you and writable by nobody else; links in it are never followed.

DIR may be on an archive host, ssh://[user@]host[:port]/path, for a capture
kernel without a local disk as large as the dump: hvdump receive writes it
there (started by ssh; hvdump must be installed there), and memory is released
only once that host has synced, read back and acknowledged every page.

--dump-level (-d) takes makedumpfile's bits: 1 zero pages, 2 page cache, 4
page cache with private data, 8 user data, 16 free pages; 31 (what kdump
services use, `makedumpfile -d 31`) leaves all of them out, deciding each
page from its struct page as makedumpfile does. The pages left out are not
read, and are given back before the first chunk is (runs of 1 MiB or more;
shorter ones with the chunk after them). drgn and crash report them as
excluded, not as zeros. A kernel whose VMCOREINFO cannot tell a kind of page
gets the highest level it can, with a warning. The default, 1, reads no
struct page.
"""


def _cmd_collect(args: argparse.Namespace) -> int:
    from drgn_hvdump.collect.collector import CollectOptions, collect
    from drgn_hvdump.collect.ownership import DumpBusyError

    fix_mmap_threshold()
    output = output_target(args)
    if output is None:
        raise HvdumpError(
            "-o -: a collection cannot go to stdout (a pipe acknowledges nothing, so no memory "
            "could be released safely); give a directory or ssh://host/path"
        )
    opts = CollectOptions(
        root=args.root,
        output=output,
        format=args.format,
        compress=args.compress,
        level=args.level,
        release=args.release,
        threads=args.threads,
        chunk_size=args.chunk_size,
        dry_run=args.dry_run,
        json=args.json,
        progress=False if args.no_progress else None,
        scrub=args.scrub,
        accept_partial=args.accept_partial,
        dump_level=args.dump_level,
        wait=args.wait or args.wait_timeout is not None,
        wait_timeout=args.wait_timeout,
    )
    try:
        result = collect(opts)
    except DumpBusyError as busy:
        if args.json:
            print(json.dumps({"event": "busy", **busy.owner.to_json()}), flush=True)
        raise
    if args.dry_run:
        for line in result.plan_text:
            print(line)
        return 0
    m = result.manifest
    if args.json:
        print(
            json.dumps(
                {
                    "event": "done",
                    "output": str(result.output),
                    "dump": str(result.dump_file),
                    "already_done": result.already_done,
                    "resumed": result.resumed,
                    # What the manifest says, for a caller that cannot read it (the
                    # directory may be on an archive host).
                    **({} if m is None else {"dump_file": str(result.dump_file), **m.summary()}),
                }
            )
        )
        return 0
    if result.already_done:
        print(f"{result.output}: already collected ({result.dump_file})")
        return 0
    assert m is not None and m.release is not None
    t = m.timings["elapsed_s"]
    print(
        f"collected {m.read_bytes() / (1 << 30):.2f} GiB into {result.dump_file} "
        f"({(m.dump.allocated or 0) / (1 << 30):.2f} GiB on disk) in {t:.1f} s"
        + (" (resumed)" if result.resumed else "")
    )
    print(f"released {m.release.released_bytes() / (1 << 30):.2f} GiB ({m.release.policy})")
    if m.dump.excluded is not None:
        left = ", ".join(f"{n} {kind}" for kind, n in m.dump.excluded.items() if n)
        print(f"dump level {m.dump.dump_level}: left out {left or 'nothing'} (pages)")
    for w in m.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


_CONVERT = """\
Convert an ELF vmcore (ppc64 of either byte order, or x86-64: a copy of
/proc/vmcore taken by another tool, QEMU's dump-guest-memory, an hvdump ELF
dump) into DIR as hvdump collect writes it: a kdump-compressed file (or a
sparse ELF core) with zero pages excluded, opened by drgn, crash and
libkdumpfile, and a manifest with an XXH64 per chunk (check it later with
hvdump verify DIR). Nothing is released, so chunks are not synced one by one:
the file is synced once at the end.

QEMU's dump-guest-memory of a ppc64 pseries guest has no VMCOREINFO note and
(QEMU 7.2) a big-endian header and notes for a little-endian guest: when the
CPUs' registers say the kernel's byte order is not the header's, hvdump
finds the kernel's own VMCOREINFO note in memory and writes the dump in the
kernel's order, with the registers as PRSTATUS notes, so drgn and crash open
it like any kdump file. --find-vmcoreinfo asks for that search on any ppc64
core, --vmcoreinfo ADDR gives the note's physical address.

--dump-level (-d) leaves out page cache, user and free pages of a ppc64
kernel as makedumpfile -d does (see hvdump collect --help).

examples:
  hvdump convert vmcore.elf out                    # zstd level 1, one thread
  hvdump convert -d 31 --compress lzo vmcore out   # as makedumpfile -l -d 31
  hvdump convert --compress lzo --threads 2 vmcore out
  hvdump convert --compress none vmcore out        # only drop zero pages
  hvdump convert guest.core out                    # QEMU's dump of a ppc64le guest
  hvdump convert --vmcoreinfo 0x36c0000 guest.core out   # the note's address, given
  hvdump convert --page-size 65536 ppc64.core out  # no VMCOREINFO anywhere
"""


def _cmd_convert(args: argparse.Namespace) -> int:
    from drgn_hvdump.collect.convert import ConvertOptions, convert

    fix_mmap_threshold()
    result = convert(
        ConvertOptions(
            vmcore=args.vmcore,
            output=output_target(args),
            format=args.format,
            compress=args.compress,
            level=args.level,
            threads=args.threads,
            chunk_size=args.chunk_size,
            page_size=args.page_size,
            check=args.check,
            sync=not args.no_sync,
            force=args.force,
            json=args.json,
            progress=False if args.no_progress else None,
            vmcoreinfo_at=args.vmcoreinfo,
            find_vmcoreinfo=args.find_vmcoreinfo,
            dump_level=args.dump_level,
            flattened=args.flattened,
        )
    )
    m = result.manifest
    # A flattened dump is stdout: the report goes to stderr.
    report = sys.stderr if args.flattened else sys.stdout
    read = m.read_bytes()
    t = m.timings["elapsed_s"]
    if args.json:
        print(
            json.dumps(
                {"event": "done", "output": str(result.output), "dump": str(result.dump_file)}
            )
        )
        return 0
    into = "stdout (flattened)" if args.flattened else result.dump_file
    print(
        f"converted {read / (1 << 30):.2f} GiB into {into} "
        f"({m.dump.size / (1 << 30):.2f} GiB, {m.dump.zero_pages} zero pages left out) "
        f"in {t:.1f} s ({read / max(t, 1e-9) / 1e9:.2f} GB/s)",
        file=report,
    )
    if m.dump.excluded is not None:
        left = ", ".join(f"{n} {kind}" for kind, n in m.dump.excluded.items() if n)
        print(f"dump level {m.dump.dump_level}: left out {left or 'nothing'} (pages)", file=report)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from drgn_hvdump.collect.verify import verify_dir

    ok, lines = verify_dir(args.dir)
    for line in lines:
        print(line)
    return 0 if ok else 1


def _add_output_args(p: argparse.ArgumentParser) -> None:
    """The dump-writing options ``collect`` and ``convert`` share."""
    p.add_argument(
        "--format",
        choices=["kdump", "elf"],
        default="kdump",
        help="dump file format (default kdump)",
    )
    p.add_argument(
        "--compress",
        default="zstd",
        help="kdump page codec: zstd (default), zlib, lzo, snappy, none (as makedumpfile's -z, "
        "-c, -l, -p, or no option)",
    )
    p.add_argument("--level", type=int, help="compression level (zstd default 1, zlib default 1)")
    p.add_argument("--threads", type=int, default=1, help="compression threads (default 1)")
    p.add_argument("--json", action="store_true", help="JSON progress lines on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on a terminal")


def _add_ssh_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "output on an archive host (DIR as ssh://[user@]host[:port]/path)",
        "hvdump receive runs there through OpenSSH's ssh (your keys, known_hosts and "
        "ssh_config; never a password prompt): it writes DIR as a local collection would, "
        "syncs and checks each chunk; memory is released only once it has acknowledged every "
        "page. The journal is in DIR there, so the same command resumes.",
    )
    g.add_argument(
        "--ssh-option",
        action="append",
        default=[],
        metavar="OPT",
        help="an ssh -o option, e.g. UserKnownHostsFile=/etc/hvdump/known_hosts (repeatable)",
    )
    g.add_argument("--ssh-identity", metavar="KEY", help="the private key to log in with (ssh -i)")
    g.add_argument(
        "--remote-hvdump",
        default="hvdump",
        metavar="CMD",
        help="the hvdump command on the archive host (default: hvdump on its PATH)",
    )


def output_target(args: argparse.Namespace) -> Path | SshTarget | None:
    """``--output`` as a local directory or an archive host's, with the ssh options
    (None: ``-``, stdout)."""
    from drgn_hvdump.dumpdir.remote import SshTarget, is_ssh_url

    text = str(args.output)
    if text == "-":
        return None
    if text.startswith("ssh:") and not is_ssh_url(text):
        raise HvdumpError(f"{text}: an archive host is written ssh://[user@]host[:port]/path")
    if not is_ssh_url(text):
        if args.ssh_option or args.ssh_identity or args.remote_hvdump != "hvdump":
            raise HvdumpError(
                f"{text}: --ssh-option, --ssh-identity and --remote-hvdump apply to an "
                "ssh://host/path output only"
            )
        return Path(text)
    ssh = tuple(shlex.split(os.environ.get("HVDUMP_SSH", "ssh")))
    return SshTarget.parse(
        text,
        ssh=ssh,
        options=tuple(args.ssh_option),
        identity=args.ssh_identity,
        remote_hvdump=args.remote_hvdump,
    )


def _dump_level(text: str) -> int:
    from drgn_hvdump.model.page_types import DumpLevelError, parse_dump_level

    try:
        return parse_dump_level(text)
    except DumpLevelError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_dump_level(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dump-level",
        "-d",
        type=_dump_level,
        default=1,
        metavar="N",
        help="makedumpfile's -d: 1 zero (default), 2 cache, 4 private cache, 8 user, "
        "16 free pages; 31 all of them",
    )


def add_subcommands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``collect``, ``convert``, ``verify`` and ``receive``."""
    _add_collect(sub)
    _add_convert(sub)
    _add_verify(sub)
    _add_receive(sub)


def _add_collect(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "collect",
        help="copy the waiting dump out and release memory as it is saved",
        description=_COLLECT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="root of the capture kernel's filesystem (default /)",
    )
    p.add_argument(
        "--output",
        "-o",
        required=True,
        metavar="DIR",
        help="output directory (created 0700), here or on an archive host as "
        "ssh://[user@]host[:port]/path",
    )
    _add_output_args(p)
    _add_ssh_args(p)
    _add_dump_level(p)
    p.add_argument(
        "--release",
        choices=["progressive", "at-end", "never"],
        default="progressive",
        help="when to give memory back (default progressive)",
    )
    p.add_argument(
        "--chunk-size",
        type=parse_size,
        default=16 << 20,
        help="unit of read, sync and release (default 16M)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="show the plan and the releases; change nothing"
    )
    p.add_argument(
        "--scrub",
        type=Path,
        metavar="FILTER",
        help="zero the data named in FILTER (erase SYMBOL size N)",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="if another collector holds the dump or DIR, wait for it instead of exiting 75",
    )
    p.add_argument(
        "--wait-timeout",
        type=float,
        metavar="SECONDS",
        help="wait at most SECONDS for another collector (implies --wait), then exit 75",
    )
    p.add_argument(
        "--accept-partial",
        action="store_true",
        help="collect a dump the hypervisor copied only in part",
    )
    p.set_defaults(func=_cmd_collect)


def _add_convert(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser(
        "convert",
        help="convert an ELF vmcore into a kdump-compressed (or ELF) dump and manifest",
        description=_CONVERT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("vmcore", type=Path, metavar="VMCORE", help="the ELF vmcore to read")
    c.add_argument(
        "output",
        metavar="DIR",
        help="output directory (created 0700), here or on an archive host as "
        "ssh://[user@]host[:port]/path",
    )
    _add_output_args(c)
    _add_ssh_args(c)
    _add_dump_level(c)
    c.add_argument(
        "--chunk-size", type=parse_size, default=16 << 20, help="unit of reading (default 16M)"
    )
    c.add_argument(
        "--page-size",
        type=parse_size,
        help="the crashed kernel's page size when the vmcore has no VMCOREINFO PAGESIZE",
    )
    c.add_argument(
        "-F",
        "--flattened",
        action="store_true",
        help="write makedumpfile's flattened format (makedumpfile -F) to stdout, DIR being -: "
        "no manifest; rebuild the file with hvdump receive --flattened FILE or makedumpfile -R",
    )
    c.add_argument(
        "--check",
        action="store_true",
        help="decompress every stored page and compare it with the page read (as collect does)",
    )
    c.add_argument(
        "--no-sync",
        action="store_true",
        help="do not fsync the dump at the end: leave it to the kernel, as makedumpfile does",
    )
    c.add_argument(
        "--vmcoreinfo",
        type=lambda t: int(t, 16),
        metavar="ADDR",
        help="ppc64: physical address (hex) of the kernel's VMCOREINFO note in memory, for a core "
        "that has none (a QEMU dump; the guest's /sys/kernel/vmcoreinfo shows it)",
    )
    c.add_argument(
        "--find-vmcoreinfo",
        action="store_true",
        help="ppc64: look for the kernel's VMCOREINFO note in memory (done by itself when the "
        "CPUs' MSR says the kernel's byte order is not the ELF header's, as in QEMU's dumps)",
    )
    c.add_argument("--force", action="store_true", help="replace a dump already in DIR")
    c.set_defaults(func=_cmd_convert)


def _add_verify(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    v = sub.add_parser(
        "verify",
        help="check a collected dump against its manifest",
        description="Recompute every chunk's XXH64 from DIR's dump and metadata files and compare "
        "with the manifest; works on a copy of DIR anywhere.",
    )
    v.add_argument("dir", type=Path)
    v.set_defaults(func=_cmd_verify)


_RECEIVE = """\
The archive host's end of `hvdump collect --output ssh://host/path`: the
collector starts it through ssh and speaks to it on stdin and stdout; it is
not run by hand. It writes the dump directory as a local collection would
(created 0700, or owned by this user and writable by nobody else; files 0600,
links never followed), syncs each chunk, reads it back from its disk and
answers with its checksum. It holds the directory's lock while the session
lasts and exits when the session ends.

To let a key do nothing else, prefix it in ~/.ssh/authorized_keys with
  restrict,command="hvdump receive"

With --flattened FILE it is instead the receiving end of a kdump pipeline:
it rebuilds FILE from makedumpfile's flattened format on stdin, as
`makedumpfile -R FILE` does (created 0600, never through a link, synced;
a stream cut short is an error, not a dump):
  makedumpfile -F -l -d 31 /proc/vmcore | ssh HOST hvdump receive --flattened /srv/vmcore
  hvdump convert -F -d 31 /proc/vmcore - | ssh HOST hvdump receive --flattened /srv/vmcore
"""


def _cmd_receive(args: argparse.Namespace) -> int:
    from drgn_hvdump.collect.receive import serve, unflatten

    if args.flattened is not None:
        if sys.stdin.isatty():
            raise HvdumpError("hvdump receive --flattened FILE reads the flattened dump on stdin")
        size = unflatten(sys.stdin.buffer, args.flattened, force=args.force)
        print(f"{args.flattened}: {size} bytes rebuilt from the flattened stream", file=sys.stderr)
        return 0
    if sys.stdin.isatty():
        raise HvdumpError(
            "hvdump receive speaks to a collector on stdin and stdout, not to a terminal: "
            "run hvdump collect --output ssh://THIS_HOST/path on the capture side"
        )
    return serve()


def _add_receive(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser(
        "receive",
        help="the archive host's end of collect --output ssh://... (started by ssh)",
        description=_RECEIVE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument(
        "--flattened",
        metavar="FILE",
        type=Path,
        help="instead: rebuild FILE from makedumpfile's flattened format on stdin (as "
        "makedumpfile -R FILE), e.g. the end of makedumpfile -F ... | ssh HOST",
    )
    r.add_argument("--force", action="store_true", help="with --flattened: replace FILE")
    r.set_defaults(func=_cmd_receive)
