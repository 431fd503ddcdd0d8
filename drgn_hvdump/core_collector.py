"""``hvdump-makedumpfile``: hvdump as the core collector of a distribution's kdump service.

kdump-utils (Fedora, RHEL: ``core_collector`` in ``/etc/kdump.conf``),
Debian's kdump-tools (``makedumpfile $MAKEDUMP_ARGS /proc/vmcore``, always
with ``-F``) and openSUSE's kdump call makedumpfile with its own options.
This entry point takes those options, writes the same kdump-compressed file
(or makedumpfile's flattened stream on stdout with ``-F``) through
``hvdump convert``, and refuses, in one line and before reading anything,
what it does not do (ELF output, ``--split``, ``--dump-dmesg``, ...): the
services then fall back to what they do on a failed makedumpfile.

Accepted: ``-c`` (zlib), ``-l`` (LZO), ``-p`` (snappy), ``-z`` (zstd), none
of them (pages stored uncompressed, as makedumpfile), ``-d LEVEL``, ``-F``,
``-f``, ``--message-level N``, ``--num-threads N``, ``VMCORE [DUMPFILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from drgn_hvdump.clitools import ArgumentParser, fix_mmap_threshold, run_main
from drgn_hvdump.errors import HvdumpError

__all__ = ["CODEC_OPTIONS", "CollectorArgs", "main", "parse_args"]

PROG = "hvdump-makedumpfile"
CODEC_OPTIONS = {"-c": "zlib", "-l": "lzo", "-p": "snappy", "-z": "zstd"}
"""makedumpfile's page codec options, as ``hvdump convert --compress`` names them."""

MSG_PROGRESS = 1
MSG_COMMON = 2
"""makedumpfile's ``--message-level`` bits hvdump honours (errors are always shown)."""

_REFUSED = {
    "-E": "ELF output: hvdump writes kdump-compressed files; hvdump convert --format elf",
    "--split": "split output: give one DUMPFILE",
    "--reassemble": "reassembling split files: use makedumpfile",
    "-R": "rearranging a flattened stream: use hvdump receive --flattened FILE",
    "--dump-dmesg": "extracting the log buffer: use makedumpfile, or KDUMP_DUMP_DMESG=0",
    "-x": "reading page types from a vmlinux: hvdump reads them from VMCOREINFO",
    "-i": "a separate VMCOREINFO file: hvdump reads the vmcore's own",
    "-g": "generating VMCOREINFO: use makedumpfile",
    "--mem-usage": "memory usage reports: use makedumpfile",
}
_SUPPORTED = "-c -l -p -z -d LEVEL -F -f --message-level N --num-threads N VMCORE [DUMPFILE]"

_EPILOG = f"""\
examples:
  {PROG} -l -d 31 /proc/vmcore /var/crash/vmcore      # as makedumpfile -l -d 31
  {PROG} -F -c -d 31 /proc/vmcore | ssh HOST hvdump receive --flattened /srv/vmcore

as a distribution's core collector (docs/kdump.md):
  kdump-utils  /etc/kdump.conf:       core_collector {PROG} -l --message-level 7 -d 31
  kdump-tools  mkdir -p /usr/local/lib/hvdump-kdump
               ln -s "$(command -v {PROG})" /usr/local/lib/hvdump-kdump/makedumpfile
               /etc/default/kdump-tools:  PATH=/usr/local/lib/hvdump-kdump:$PATH
"""


class CollectorArgs(argparse.Namespace):
    vmcore: str
    dumpfile: str | None
    compress: str
    dump_level: int
    flattened: bool
    force: bool
    message_level: int
    threads: int


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description="makedumpfile's command line over hvdump convert: the core collector "
        "for kdump-utils, kdump-tools and openSUSE's kdump. Writes the kdump-compressed "
        "format makedumpfile writes (crash, drgn and libkdumpfile open it).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for opt, codec in CODEC_OPTIONS.items():
        p.add_argument(
            opt,
            dest="codecs",
            action="append_const",
            const=codec,
            help=f"compress each page with {codec}",
        )
    p.add_argument(
        "-d",
        dest="dump_level",
        type=int,
        default=0,
        metavar="LEVEL",
        help="leave out pages: 1 zero, 2 cache, 4 private cache, 8 user, 16 free; "
        "31 all (default 0: zero pages are left out all the same)",
    )
    p.add_argument("-F", dest="flattened", action="store_true", help="flattened format to stdout")
    p.add_argument("-f", dest="force", action="store_true", help="overwrite DUMPFILE")
    p.add_argument(
        "--message-level",
        type=int,
        default=MSG_PROGRESS | MSG_COMMON | 4,
        metavar="N",
        help="1 progress, 2 common messages, 4 errors (always shown); default 7",
    )
    p.add_argument(
        "--num-threads", dest="threads", type=int, default=1, metavar="N",
        help="compression threads (default 1)",
    )  # fmt: skip
    p.add_argument("vmcore", metavar="VMCORE", help="the ELF vmcore (/proc/vmcore)")
    p.add_argument("dumpfile", metavar="DUMPFILE", nargs="?", help="the dump file (none with -F)")
    return p


def _refusal(extra: list[str]) -> str:
    opt = extra[0].split("=", 1)[0]
    why = _REFUSED.get(opt, "not a makedumpfile option hvdump knows")
    return f"{opt} is not supported ({why}); {PROG} takes {_SUPPORTED}"


def parse_args(argv: Sequence[str]) -> CollectorArgs:
    """The command line, checked; HvdumpError (one line) for what hvdump does not do."""
    p = _parser()
    ns, extra = p.parse_known_args(list(argv), namespace=CollectorArgs())
    if extra:
        raise HvdumpError(_refusal(extra))
    codecs = sorted(set(getattr(ns, "codecs", None) or []))
    if len(codecs) > 1:
        raise HvdumpError(f"give one of -c -l -p -z, not {len(codecs)}")
    ns.compress = codecs[0] if codecs else "none"
    if not 0 <= ns.dump_level <= 31:
        raise HvdumpError(f"-d {ns.dump_level}: the dump level is 0 to 31")
    if ns.flattened == (ns.dumpfile is not None):
        raise HvdumpError(
            "-F writes the dump to stdout: give VMCORE only"
            if ns.flattened
            else "give VMCORE and DUMPFILE (or -F to write to stdout)"
        )
    if ns.threads < 1:
        raise HvdumpError(f"--num-threads {ns.threads}: give 1 or more")
    return ns


def _collect(args: CollectorArgs) -> int:
    from drgn_hvdump.collect.convert import ConvertOptions, convert

    fix_mmap_threshold()
    say = args.message_level & MSG_COMMON
    opts = ConvertOptions(
        vmcore=Path(args.vmcore),
        output=None,
        compress=args.compress,
        threads=args.threads,
        dump_level=max(args.dump_level, 1),
        progress=None if args.message_level & MSG_PROGRESS else False,
        flattened=args.flattened,
    )
    if args.flattened:
        result = convert(opts)
        if say:
            read = result.manifest.read_bytes() / (1 << 30)
            print(f"{PROG}: {read:.2f} GiB read, flattened dump on stdout",
                  file=sys.stderr)  # fmt: skip
        return 0
    dumpfile = Path(args.dumpfile or "")
    if dumpfile.exists() and not args.force:
        raise HvdumpError(f"{dumpfile}: already exists; give -f to overwrite it")
    # convert writes a directory (dump file and manifest): one of our own beside
    # DUMPFILE, 0700, so the file is complete and synced before it takes its name.
    work = Path(tempfile.mkdtemp(prefix=f".{dumpfile.name}.", dir=dumpfile.parent or "."))
    try:
        opts.output = work
        opts.force = True
        result = convert(opts)
        if args.force:
            os.replace(result.dump_file, dumpfile)
        else:
            os.link(result.dump_file, dumpfile)  # never over a file that appeared meanwhile
        with contextlib.suppress(OSError):
            fd = os.open(dumpfile.parent or ".", os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(fd)
            os.close(fd)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if say:
        m = result.manifest
        print(
            f"{PROG}: the dumpfile is saved to {dumpfile} ({m.dump.size} bytes, dump level "
            f"{opts.dump_level}, {m.dump.zero_pages} zero pages left out)",
            file=sys.stderr,
        )
    return 0


def _main(argv: Sequence[str] | None) -> int:
    return _collect(parse_args(sys.argv[1:] if argv is None else argv))


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, _main, argv, process=argv is None)


if __name__ == "__main__":
    sys.exit(main())
