"""Bounded work on any input (issue 14, item 7): a hostile-input corpus, built here.

Every file of the corpus is given to what reads dumps: the drgn plugin's dump
recognition (:func:`drgn_hvdump.plugin.source.identify` and drgn's own
``Program.set_core_dump`` with the plugin loaded), ``hvdump inspect``,
``hvdump convert`` and ``hvdump verify`` (malformed manifests, and hostile
dump files under a good manifest). Each runs as a subprocess under a time
limit and an address-space limit; it must finish, succeed or refuse with one
error line (no traceback), and write no large file.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drgn_hvdump.collect.convert import ConvertOptions, convert
from drgn_hvdump.collect.verify import verify_dir
from drgn_hvdump.formats.dump_header import build_dump_header, registration_header
from drgn_hvdump.formats.elfcore import (
    ELF64_EHDR,
    ELF64_PHDR,
    ELF64_SHDR,
    ELFMAG,
    EM_PPC64,
    ET_CORE,
    NT_PRSTATUS,
    PN_XNUM,
    PT_LOAD,
    PT_NOTE,
    Elf64Ehdr,
    Elf64Phdr,
    Elf64Shdr,
    LoadSegment,
    Note,
    build_notes,
    write_core,
)
from drgn_hvdump.formats.kdump import (
    DISK_DUMP_HEADER,
    DUMP_DH_COMPRESSED_SNAPPY,
    DUMP_DH_COMPRESSED_ZLIB,
    KDUMP_SUB_HEADER,
    PAGE_DESC,
    KdumpFile,
    PageDesc,
    plan_kdump,
)
from drgn_hvdump.formats.layout import ByteOrder
from drgn_hvdump.formats.regsave import CpuState, build_regsave
from hvsim.pages import BUSY_MIX, gen_pages_into

PROJECT = Path(__file__).resolve().parent.parent
TIME_LIMIT = 20.0
MEM_LIMIT = 1 << 30
BIG_OUTPUT = 64 << 20
"""No run may leave a file this large (RLIMIT_FSIZE stops one at 4 times it)."""
PS = 65536
U64 = 1 << 64
ORDER: ByteOrder = "big"
VMCI = (
    b"OSRELEASE=6.1.0-hostile\nPAGESIZE=65536\nSYMBOL(swapper_pg_dir)=c000000001230000\n"
    b"CRASHTIME=1700000000\n"
)


# ---------------------------------------------------------------- building ELF files


def _ident(order: ByteOrder) -> bytes:
    return (ELFMAG + bytes([2, 2 if order == "big" else 1, 1])).ljust(16, b"\0")


def raw_elf(
    phdrs: list[tuple[int, int, int, int, int]],
    data: bytes = b"",
    *,
    notes: bytes = b"",
    note_headers: int = 1,
    xnum: int | None = None,
    phnum: int | None = None,
    order: ByteOrder = ORDER,
) -> bytes:
    """An ELF core as a hostile writer makes one: no check on anything.

    ``phdrs`` are PT_LOADs ``(paddr, memsz, filesz, offset, type)`` whose
    ``offset`` counts from the start of ``data`` (placed after the headers and
    notes) unless it is at least 2**32 (taken as it is). ``note_headers``
    PT_NOTE headers all describe ``notes``. ``xnum`` puts that count in section
    header 0 and ``PN_XNUM`` in ``e_phnum``.
    """
    n = len(phdrs) + (note_headers if notes else 0)
    sh = ELF64_SHDR.size if xnum is not None else 0
    notes_at = ELF64_EHDR.size + n * ELF64_PHDR.size + sh
    data_at = notes_at + len(notes)
    out = bytearray(
        ELF64_EHDR.pack(
            Elf64Ehdr(
                e_ident=_ident(order),
                e_type=ET_CORE,
                e_machine=EM_PPC64,
                e_version=1,
                e_phoff=ELF64_EHDR.size,
                e_shoff=ELF64_EHDR.size + n * ELF64_PHDR.size if xnum is not None else 0,
                e_flags=1,
                e_ehsize=ELF64_EHDR.size,
                e_phentsize=ELF64_PHDR.size,
                e_phnum=PN_XNUM if xnum is not None else (n if phnum is None else phnum),
                e_shentsize=ELF64_SHDR.size if xnum is not None else 0,
                e_shnum=1 if xnum is not None else 0,
            ),
            order,
        )
    )
    if notes:
        note = ELF64_PHDR.pack(
            Elf64Phdr(PT_NOTE, 0, notes_at, 0, 0, len(notes), len(notes), 0), order
        )
        out += note * note_headers
    pack = ELF64_PHDR.pack
    for paddr, memsz, filesz, offset, ptype in phdrs:
        where = offset if offset >= 1 << 32 else data_at + offset
        vaddr = (0xC000000000000000 + paddr) % U64
        out += pack(Elf64Phdr(ptype, 7, where, vaddr, paddr, filesz, memsz, 0), order)
    if xnum is not None:
        out += ELF64_SHDR.pack(Elf64Shdr(sh_size=1, sh_info=xnum), order)
    out += notes
    out += data
    return bytes(out)


def _notes(*extra: Note, vmcoreinfo: bytes = VMCI, prstatus: int = 0) -> bytes:
    ns = [Note("CORE", NT_PRSTATUS, bytes(504)) for _ in range(prstatus)]
    ns.append(Note("VMCOREINFO", 0, vmcoreinfo))
    return build_notes([*ns, *extra], ORDER)


def _pages(n: int, seed: int = 3, first: int = 0) -> bytes:
    buf = bytearray(n * PS)
    gen_pages_into(buf, seed, first, n, PS, BUSY_MIX, True)
    return bytes(buf)


def _load(paddr: int, memsz: int, filesz: int, offset: int) -> tuple[int, int, int, int, int]:
    return (paddr, memsz, filesz, offset, PT_LOAD)


def _note_header(namesz: int, descsz: int, ntype: int = 0) -> bytes:
    return struct.pack(">III", namesz, descsz, ntype)


def _far_last_load() -> bytes:
    # The issue's 2 KiB file: a /proc/vmcore copy's shape (no PRSTATUS, VMCOREINFO),
    # the last PT_LOAD with nothing in the file, at 2**48, its offset far away.
    return raw_elf(
        [
            _load(0, 4096, 1024, 0),
            _load(1 << 20, 4096, 512, 1024),
            _load(1 << 48, 1 << 30, 0, 1 << 62),
        ],
        bytes(range(256)) * 6,
        notes=_notes(),
    )


def _far_after_data() -> bytes:
    # The issue's 2 MiB file: real data, then a segment at 2**48 with nothing in the file.
    data = _pages(32)
    return raw_elf(
        [_load(0, len(data), len(data), 0), _load(1 << 48, PS, 0, 0)], data, notes=_notes()
    )


@dataclass(frozen=True)
class Sparse:
    """A file of ``head`` then ``size`` bytes of hole with ``pokes`` (offset: bytes) in it."""

    head: bytes
    size: int
    pokes: dict[int, bytes]


def _regsave() -> bytes:
    return build_regsave([CpuState(0, {"NIA": 0xC000000000001234, "GPR01": 0xC000000001FF0000})])


def _raw_vmcore_far_memory() -> Sparse:
    # Shaped so the plugin takes it for a raw /proc/vmcore copy (the register save area
    # just where the scan starts in the last segment's 256.5 MiB of file bytes, sparse
    # here), with that segment's memory claimed up to 2**64.
    size = (256 << 20) + (512 << 10)
    head = raw_elf(
        [_load(0, 4096, 4096, 0), _load(1 << 30, U64 - (1 << 30), size, 4096)],
        bytes(4096),
        notes=_notes(),
    )
    return Sparse(head, size, {256 << 10: _regsave()})


def _zero_size_segments() -> bytes:
    # 2000 segments of no size, at 2**64-1, 2**63, ..., their data "at" 2**62.
    loads = [_load(0, PS, PS, 0)]
    for i in range(2000):
        paddr = [U64 - 1, 1 << 63, i << 40, 0][i % 4]
        loads.append(_load(paddr, 0, 0, (1 << 62) + i))
    return raw_elf(loads, _pages(1), notes=_notes())


def _pn_xnum(filesz: int) -> bytes:
    # 65535 program headers (PN_XNUM, the count in section 0's sh_info), all sharing
    # the same file bytes when filesz is not zero.
    loads = [_load(i * 2 * PS, PS, filesz, 0) for i in range(65535 - 1)]
    return raw_elf(loads, bytes(4096), notes=_notes(), xnum=65535)


def _many_notes() -> bytes:
    # 1 MiB of empty notes: each is 12 bytes (no name, no descriptor).
    tiny = _note_header(0, 0, 7) * ((1 << 20) // 12)
    return raw_elf([_load(0, PS, PS, 0)], _pages(1), notes=_notes() + tiny)


def _shared_notes() -> bytes:
    # 60000 PT_NOTE headers over one 32 KiB note area.
    big = build_notes([Note("FILLER", 9, bytes(32 << 10))], ORDER)
    return raw_elf([_load(0, PS, PS, 0)], _pages(1), notes=_notes() + big, note_headers=60000)


def _truncated(cut: int) -> Callable[[], bytes]:
    def make() -> bytes:
        data = _pages(8)
        whole = raw_elf([_load(0, len(data), len(data), 0)], data, notes=_notes())
        return whole[:cut] if cut > 0 else whole[: len(whole) + cut]

    return make


def _vmcore_shape(pagesize: bytes) -> Callable[[], bytes]:
    def make() -> bytes:
        info = VMCI.replace(b"PAGESIZE=65536", b"PAGESIZE=" + pagesize)
        return raw_elf(
            [_load(0, PS, PS, 0), _load(1 << 30, 1 << 40, PS, PS)],
            _pages(2),
            notes=_notes(vmcoreinfo=info),
        )

    return make


ELF_CASES: dict[str, Callable[[], bytes | Sparse]] = {
    "far-last-load-2^48": _far_last_load,
    "far-load-after-2MiB-of-data": _far_after_data,
    "raw-vmcore-memory-to-2^64": _raw_vmcore_far_memory,
    "load-ending-at-2^64": lambda: raw_elf(
        [_load(0, PS, PS, 0), _load(U64 - PS, PS, PS, PS)], _pages(2), notes=_notes()
    ),
    "load-past-2^64": lambda: raw_elf(
        [_load(0, PS, PS, 0), _load(U64 - 4096, 2 * 4096, 0, 0)], _pages(1), notes=_notes()
    ),
    "load-at-2^64-1-no-data": lambda: raw_elf(
        [_load(0, PS, PS, 0), _load(U64 - 1, 1, 0, 1 << 63)], _pages(1), notes=_notes()
    ),
    "huge-memsz-no-filesz": lambda: raw_elf(
        [_load(0, PS, PS, 0), _load(1 << 20, 1 << 62, 0, 0)], _pages(1), notes=_notes()
    ),
    "4GiB-memsz-no-filesz": lambda: raw_elf(
        [_load(0, PS, PS, 0), _load(1 << 32, 4 << 30, 0, 0)], _pages(1), notes=_notes()
    ),
    "zero-size-segments": _zero_size_segments,
    "overlapping-segments": lambda: raw_elf(
        [_load(0, 2 * PS, PS, 0), _load(PS, 2 * PS, PS, PS)], _pages(2), notes=_notes()
    ),
    "filesz-over-memsz": lambda: raw_elf([_load(0, 4096, PS, 0)], _pages(1), notes=_notes()),
    "segment-data-past-eof": lambda: raw_elf(
        [_load(0, 1 << 40, 1 << 40, 0)], _pages(1), notes=_notes()
    ),
    "pn-xnum-65535-no-data": lambda: _pn_xnum(0),
    "pn-xnum-65535-sharing-bytes": lambda: _pn_xnum(4096),
    "pn-xnum-count-2^32-1": lambda: raw_elf(
        [_load(0, PS, PS, 0)], _pages(1), notes=_notes(), xnum=(1 << 32) - 1
    ),
    "phnum-past-eof": lambda: raw_elf(
        [_load(0, PS, PS, 0)], _pages(1), notes=_notes(), phnum=65000
    ),
    "note-namesz-2^32-1": lambda: raw_elf(
        [_load(0, PS, PS, 0)], _pages(1), notes=_notes() + _note_header(0xFFFFFFFF, 4) + bytes(64)
    ),
    "note-descsz-2^32-4": lambda: raw_elf(
        [_load(0, PS, PS, 0)],
        _pages(1),
        notes=_notes() + _note_header(5, 0xFFFFFFFC) + b"CORE\0\0\0\0" + bytes(64),
    ),
    "many-tiny-notes": _many_notes,
    "60000-headers-one-note": _shared_notes,
    "prstatus-wrong-size": lambda: raw_elf(
        [_load(0, PS, PS, 0)], _pages(1), notes=_notes(Note("CORE", NT_PRSTATUS, bytes(100)))
    ),
    "vmcoreinfo-garbage": lambda: raw_elf(
        [_load(0, PS, PS, 0)], _pages(1), notes=_notes(vmcoreinfo=b"\xff\xfe=\x00junk\n" * 100)
    ),
    "pagesize-0": _vmcore_shape(b"0"),
    "pagesize-negative": _vmcore_shape(b"-4096"),
    "pagesize-3": _vmcore_shape(b"3"),
    "pagesize-huge": _vmcore_shape(b"9" * 5000),
    "truncated-in-headers": _truncated(100),
    "truncated-in-data": _truncated(-PS * 3),
    "empty-file": lambda: b"",
    "elf-magic-only": lambda: ELFMAG,
}


# ---------------------------------------------------------------- building kdump files


@dataclass
class Kdump:
    """A small kdump file's bytes and where its parts are."""

    data: bytearray
    desc_offset: int
    npages: int
    page_size: int


def _hvdump_notes() -> list[Note]:
    # What makes the plugin take a kdump file for one hvdump collect wrote.
    header = registration_header(4096, 256 << 10, 256 << 20, 1 << 30)
    return [Note("HVDUMP", 1, build_dump_header(header)), Note("HVDUMP", 2, _regsave())]


def build_kdump(npages: int = 8, notes: bytes | None = None) -> Kdump:
    """A kdump-compressed file of ``npages`` raw pages from PFN 0 (plan_kdump's layout)."""
    ps = PS
    pages = _pages(npages, seed=21)
    blob = _notes(*_hvdump_notes(), prstatus=1) if notes is None else notes
    lay = plan_kdump(
        byteorder=ORDER,
        page_size=ps,
        max_mapnr=npages,
        ranges=[(0, npages)],
        notes=blob,
        vmcoreinfo=None,
        nr_cpus=1,
        utsname=["Linux", "h", "6.1.0-hostile", "#1", "ppc64", ""],
        timestamp=0,
        codec_flag=0,
    )
    out = bytearray(lay.first_blocks())
    for off, piece in lay.bitmap_pieces():
        out[len(out) :] = bytes(max(0, off + len(piece) - len(out)))
        out[off : off + len(piece)] = piece
    out[len(out) :] = bytes(lay.data_start + npages * ps - len(out))
    for i in range(npages):
        at = lay.data_start + i * ps
        out[at : at + ps] = pages[i * ps : (i + 1) * ps]
        desc = PAGE_DESC.pack(PageDesc(at, ps, 0, 0), ORDER)
        out[lay.desc_offset + i * 24 : lay.desc_offset + (i + 1) * 24] = desc
    return Kdump(out, lay.desc_offset, npages, ps)


def _kdump_desc(index: int, **fields: int) -> Callable[[], bytes]:
    def make() -> bytes:
        kd = build_kdump()
        at = kd.desc_offset + index * PAGE_DESC.size
        old = PAGE_DESC.unpack_from(kd.data, at, ORDER)
        kd.data[at : at + PAGE_DESC.size] = PAGE_DESC.pack(
            PageDesc(**{**old.__dict__, **fields}), ORDER
        )
        return bytes(kd.data)

    return make


def _kdump_header(**fields: int) -> Callable[[], bytes]:
    def make() -> bytes:
        kd = build_kdump()
        h = DISK_DUMP_HEADER.unpack_from(kd.data, 0, ORDER)
        kd.data[: DISK_DUMP_HEADER.size] = DISK_DUMP_HEADER.pack(
            type(h)(**{**h.__dict__, **fields}), ORDER
        )
        return bytes(kd.data)

    return make


def _kdump_sub(**fields: int) -> Callable[[], bytes]:
    def make() -> bytes:
        kd = build_kdump()
        sub = KDUMP_SUB_HEADER.unpack_from(kd.data, PS, ORDER)
        kd.data[PS : PS + KDUMP_SUB_HEADER.size] = KDUMP_SUB_HEADER.pack(
            type(sub)(**{**sub.__dict__, **fields}), ORDER
        )
        return bytes(kd.data)

    return make


def _kdump_page(index: int, stored: bytes, flag: int) -> Callable[[], bytes]:
    """Page ``index`` stored as ``stored`` with codec ``flag`` (a bomb, or garbage)."""

    def make() -> bytes:
        kd = build_kdump()
        at = len(kd.data)
        kd.data += stored
        d = kd.desc_offset + index * PAGE_DESC.size
        kd.data[d : d + PAGE_DESC.size] = PAGE_DESC.pack(PageDesc(at, len(stored), flag, 0), ORDER)
        return bytes(kd.data)

    return make


def _zlib_bomb() -> bytes:
    import zlib

    return zlib.compress(bytes(256 << 20), 9)[: PS - 1]


def _snappy_claiming(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            break
    return bytes(out) + bytes(64)


KDUMP_CASES: dict[str, Callable[[], bytes]] = {
    "kdump-desc-offset-past-eof": _kdump_desc(3, offset=1 << 62),
    "kdump-desc-offset-negative": _kdump_desc(2, offset=-1),
    "kdump-desc-size-2^32-1": _kdump_desc(1, size=0xFFFFFFFF, flags=DUMP_DH_COMPRESSED_ZLIB),
    "kdump-desc-size-huge-raw": _kdump_desc(0, size=0xFFFFFFFF),
    "kdump-zlib-bomb": _kdump_page(4, _zlib_bomb(), DUMP_DH_COMPRESSED_ZLIB),
    "kdump-snappy-claims-4GiB": _kdump_page(
        5, _snappy_claiming((1 << 32) - 1), DUMP_DH_COMPRESSED_SNAPPY
    ),
    "kdump-max-mapnr-2^60": _kdump_sub(max_mapnr_64=1 << 60),
    "kdump-bitmap-blocks-2^32-1": _kdump_header(bitmap_blocks=(1 << 32) - 1, max_mapnr=1 << 31),
    "kdump-sub-hdr-size-negative": _kdump_header(sub_hdr_size=-5),
    "kdump-note-size-2^63": _kdump_sub(size_note=1 << 63),
    "kdump-note-namesz-huge": lambda: bytes(
        build_kdump(notes=_notes(*_hvdump_notes()) + _note_header(0xFFFFFFF0, 0) + bytes(16)).data
    ),
    "kdump-truncated-in-bitmap": lambda: bytes(build_kdump().data[: 2 * PS + 100]),
    "kdump-truncated-in-pages": lambda: bytes(build_kdump().data[: -3 * PS]),
    "kdump-block-size-0": _kdump_header(block_size=0),
}


# ---------------------------------------------------------------- running under limits


@dataclass
class Run:
    args: list[str]
    rc: int
    out: str
    err: str
    seconds: float
    maxrss: int
    killed: bool


STATS: list[tuple[str, str, float, int]] = []


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 * BIG_OUTPUT, 4 * BIG_OUTPUT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_limited(args: list[str], case: str, tool: str) -> Run:
    """``args`` under the limits; its exit, output, wall time and peak RSS."""
    env = {k: v for k, v in os.environ.items() if k != "DRGN_DISABLE_PLUGINS"}
    env["PYTHONPATH"] = str(PROJECT)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        p = subprocess.Popen(
            args, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, preexec_fn=_limits
        )
        killed = False
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - t0 > TIME_LIMIT:
                os.kill(p.pid, signal.SIGKILL)
                killed = True
                pid, status, usage = os.wait4(p.pid, 0)
                break
            time.sleep(0.005)
        seconds = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        run = Run(
            args,
            p.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            seconds,
            usage.ru_maxrss * 1024,
            killed,
        )
    STATS.append((case, tool, seconds, run.maxrss))
    return run


def hvdump_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "drgn_hvdump.cli", *args]


def assert_bounded(run: Run, what: str, *, may_succeed: bool = True) -> None:
    """Finished in time and memory; exit 0, or non-zero with exactly one error line."""
    assert not run.killed, f"{what}: still running after {TIME_LIMIT:.0f} s"
    assert "Traceback" not in run.err, f"{what}:\n{run.err[-3000:]}"
    assert run.maxrss < MEM_LIMIT, f"{what}: {run.maxrss >> 20} MiB"
    assert run.rc >= 0, f"{what}: killed by signal {-run.rc}\n{run.err[-2000:]}"
    lines = run.err.strip().splitlines()
    if run.rc == 0:
        assert may_succeed, f"{what}: accepted\n{run.out[-2000:]}"
        return
    assert run.rc == 1, f"{what}: exit {run.rc}\n{run.err[-2000:]}"
    if not lines and run.out.strip().splitlines()[-1:][0].startswith("FAILED"):
        return  # verify: chunks that do not match are report lines, then FAILED
    assert len(lines) == 1, f"{what}: {len(lines)} lines on stderr:\n{run.err[-3000:]}"
    assert lines[0].startswith("hvdump: error: "), f"{what}: {lines[0]}"


def assert_no_big_files(d: Path, what: str) -> None:
    if not d.exists():
        return
    for f in d.rglob("*"):
        if f.is_file():
            st = f.stat()
            assert st.st_size <= BIG_OUTPUT and st.st_blocks * 512 <= BIG_OUTPUT, (
                f"{what}: {f} is {st.st_size} bytes"
            )


# ---------------------------------------------------------------- the corpus on disk


def _write(path: Path, data: bytes | Sparse) -> None:
    if isinstance(data, bytes):
        path.write_bytes(data)
        return
    with open(path, "wb") as f:
        f.write(data.head)
        f.truncate(len(data.head) + data.size)
        for off, poke in data.pokes.items():
            f.seek(len(data.head) + off)
            f.write(poke)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("corpus")
    files = {}
    for name, make in {**ELF_CASES, **KDUMP_CASES}.items():
        path = d / name.replace("^", "pow")
        _write(path, make())
        files[name] = path
    return files


# ---------------------------------------------------------------- files: plugin, inspect, convert

_PLUGIN = r"""
import sys
path, use_drgn = sys.argv[1], sys.argv[2] == "drgn"
from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.plugin.source import identify
try:
    src = identify(path)
    if src is not None:
        src.cpu_states()
        src.hpte_bytes()
        for r in src.regions:
            try:
                src.read(r.start, min(4096, r.end - r.start))
            except HvdumpError:
                pass
        src.close()
except HvdumpError as exc:
    print(f"hvdump: error: {exc}", file=sys.stderr)
    sys.exit(1)
print(src.kind if src is not None else "not a hypervisor-assisted dump")
if use_drgn:
    import logging
    import drgn
    logging.basicConfig(format="hvdump: error: %(message)s", level=logging.WARNING)
    prog = drgn.Program()
    try:
        prog.set_core_dump(path)
    except Exception as exc:  # drgn's own refusal of the file, one line
        print(f"hvdump: error: drgn: {type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        sys.exit(1)
    # The plugin's hook looks at every ppc64 kernel drgn opens.
    kernel = bool(prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL)
    ran = "hvdump.source" in prog.cache
    print("drgn opened it, " + ("not a kernel" if not kernel else "plugin ran" if ran else "plugin did not run"))
"""

FILE_CASES = sorted({**ELF_CASES, **KDUMP_CASES})


@pytest.mark.parametrize("case", FILE_CASES)
def test_plugin_recognition_is_bounded(corpus: dict[str, Path], case: str) -> None:
    run = run_limited(
        [sys.executable, "-c", _PLUGIN, str(corpus[case]), "drgn"], case, "plugin+drgn"
    )
    assert_bounded(run, f"plugin on {case}")
    assert "plugin did not run" not in run.out, run.out


@pytest.mark.parametrize("case", FILE_CASES)
def test_inspect_is_bounded(corpus: dict[str, Path], case: str) -> None:
    run = run_limited(hvdump_args("inspect", str(corpus[case])), case, "inspect")
    assert_bounded(run, f"inspect {case}")


# What convert must refuse (not merely survive), and a word its line must hold.
CONVERT_REFUSES = {
    "far-last-load-2^48": "claim",
    "far-load-after-2MiB-of-data": "bitmaps",
    "raw-vmcore-memory-to-2^64": "claim",
    "huge-memsz-no-filesz": "claim",
    "4GiB-memsz-no-filesz": "claim",
    "pn-xnum-65535-no-data": "claim",
    "pn-xnum-65535-sharing-bytes": "share file bytes",
    "60000-headers-one-note": "share file bytes",
    "load-past-2^64": "past the end of the physical address space",
    "overlapping-segments": "overlap",
    "note-namesz-2^32-1": "runs past the end",
    "note-descsz-2^32-4": "runs past the end",
    "pn-xnum-count-2^32-1": "truncated",
    "truncated-in-headers": "truncated",
    "truncated-in-data": "truncated",
}


@pytest.mark.parametrize("case", FILE_CASES)
def test_convert_is_bounded(corpus: dict[str, Path], tmp_path: Path, case: str) -> None:
    out = tmp_path / "out"
    run = run_limited(
        hvdump_args("convert", "--no-progress", "--no-sync", str(corpus[case]), str(out)),
        case,
        "convert",
    )
    assert_bounded(run, f"convert {case}")
    assert_no_big_files(out, f"convert {case}")
    if case in CONVERT_REFUSES:
        assert run.rc == 1 and CONVERT_REFUSES[case] in run.err, (case, run.err)
        assert not (out / "manifest.json").exists()


def test_the_issues_far_load_files_are_refused_in_one_line(corpus: dict[str, Path]) -> None:
    """The two files of the issue: the plugin answers at once, convert refuses at once."""
    from drgn_hvdump.plugin.source import identify

    for case in ("far-last-load-2^48", "far-load-after-2MiB-of-data"):
        t0 = time.monotonic()
        assert identify(corpus[case]) is None
        assert time.monotonic() - t0 < 2
    run = run_limited(
        hvdump_args("convert", str(corpus["far-load-after-2MiB-of-data"]), "/nonexistent/out"),
        "far-load-after-2MiB-of-data",
        "convert",
    )
    line = run.err.strip()
    assert run.rc == 1 and "offset 0x" in line and "far-load" in line, line
    assert "--format elf" in line
    # The same file as sparse ELF holds only what it has: fine.
    with tempfile.TemporaryDirectory() as d:
        ok = run_limited(
            hvdump_args(
                "convert",
                "--no-progress",
                "--format",
                "elf",
                str(corpus["far-load-after-2MiB-of-data"]),
                d + "/o",
            ),
            "far-load-after-2MiB-of-data",
            "convert --format elf",
        )
        assert ok.rc == 0, ok.err
        assert verify_dir(Path(d) / "o")[0]


# ---------------------------------------------------------------- manifests: verify


def _source_core(path: Path) -> None:
    data = _pages(50, seed=8)
    write_core(
        path,
        [Note("CORE", NT_PRSTATUS, bytes(504)), Note("VMCOREINFO", 0, VMCI)],
        [(LoadSegment(0, len(data)), data)],
        ORDER,
        machine=EM_PPC64,
    )


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 50-chunk convert output, kdump and ELF, that verifies."""
    d = tmp_path_factory.mktemp("good")
    core = d / "vmcore"
    _source_core(core)
    dirs = {}
    for fmt in ("kdump", "elf"):
        res = convert(
            ConvertOptions(core, d / fmt, format=fmt, chunk_size=PS, progress=False, sync=False)
        )
        assert len(res.manifest.to_json()["chunks"]) == 50
        ok, lines = verify_dir(d / fmt)
        assert ok, lines
        dirs[fmt] = d / fmt
    return dirs


def _manifest(good: dict[str, Path], fmt: str = "kdump") -> dict[str, Any]:
    m: dict[str, Any] = json.loads((good[fmt] / "manifest.json").read_text())
    return m


Mutation = Callable[[dict[str, Any]], "dict[str, Any] | list[Any] | str"]


def _set(path: str, value: Any) -> Mutation:
    def mutate(m: dict[str, Any]) -> dict[str, Any]:
        *keys, last = path.split(".")
        obj: Any = m
        for k in keys:
            obj = obj[int(k)] if isinstance(obj, list) else obj[k]
        if value is _DELETE:
            del obj[last]
        elif isinstance(obj, list):
            obj[int(last)] = value
        else:
            obj[last] = value
        return m

    return mutate


_DELETE = object()


def _chunks(f: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> Mutation:
    def mutate(m: dict[str, Any]) -> dict[str, Any]:
        m["chunks"] = f(m["chunks"])
        return m

    return mutate


def _overlap(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    chunks[1]["dst"] = chunks[0]["dst"]
    return chunks


MANIFESTS: dict[str, tuple[Mutation, str]] = {
    # name: (mutation, a word the one error line must hold)
    "not-json": (lambda m: "{ this is not json", "not JSON"),
    "empty-file": (lambda m: "", "not JSON"),
    "not-an-object": (lambda m: [1, 2, 3], "not an object"),
    "wrong-version": (_set("version", 2), "version"),
    "version-a-string": (_set("version", "1"), "version"),
    "no-source": (_set("source", _DELETE), "key source: missing"),
    "no-segments": (_set("dump.segments", _DELETE), "key dump.segments: missing"),
    "no-chunks-key": (_set("chunks", _DELETE), "key chunks: missing"),
    "chunks-an-object": (_set("chunks", {}), "key chunks"),
    "page-size-a-string": (_set("source.page_size", "65536"), "source.page_size"),
    "page-size-not-power-of-2": (_set("source.page_size", 65537), "power of two"),
    "size-a-bool": (_set("chunks.3.size", True), "chunks[3].size"),
    "size-negative": (_set("chunks.4.size", -PS), "chunks[4].size"),
    "size-2^80": (_set("chunks.5.size", 1 << 80), "chunks[5].size"),
    "dst-2^70": (_set("chunks.6.dst", 1 << 70), "chunks[6].dst"),
    "size-float-nan": (
        lambda m: json.dumps(m).replace('"page_size": 65536', '"page_size": NaN'),
        "page_size",
    ),
    "index-negative": (_set("chunks.7.index", -1), "chunks[7].index"),
    "chunks-empty": (_chunks(lambda c: []), "in no chunk"),
    "5-of-50-chunks": (_chunks(lambda c: c[:5]), "in no chunk"),
    "one-chunk-missing": (_chunks(lambda c: c[:20] + c[21:]), "missing"),
    "duplicate-chunk": (_chunks(lambda c: [*c, dict(c[10])]), "listed twice"),
    "overlapping-chunks": (_chunks(_overlap), "overlap"),
    "chunk-past-the-dump": (
        _chunks(lambda c: [*c, {**c[-1], "index": 50, "dst": 1 << 40}]),
        "not in dump.segments",
    ),
    "segment-past-the-file": (
        lambda m: {
            **m,
            "dump": {**m["dump"], "segments": [*m["dump"]["segments"], [1 << 40, PS]]},
            "chunks": [*m["chunks"], {**m["chunks"][0], "index": 50, "dst": 1 << 40}],
        },
        "in the manifest's segments but",
    ),
    "unaligned-segment": (_set("dump.segments", [[100, 50 * PS]]), "whole"),
    "bad-hex-checksum": (_set("chunks.2.xxh64", "not-hex-at-all!!"), "16 hex digits"),
    "short-checksum": (_set("chunks.2.xxh64", "abc"), "16 hex digits"),
    "kind-unknown": (_set("chunks.9.kind", "weird"), "chunks[9].kind"),
    "chunk-not-an-object": (_set("chunks.9", "chunk"), "chunks[9]"),
    "dump-file-escapes": (_set("dump.file", "../../../../etc/passwd"), "dump.file"),
    "dump-file-missing": (_set("dump.file", "nothere.kdump"), "nothere.kdump"),
    "format-unknown": (_set("dump.format", "zip"), "dump.format"),
    "byteorder-wrong": (_set("source.byteorder", "little"), "endian"),
    "page-size-differs": (_set("source.page_size", 4096), "4096"),
    "cpus-differ": (_set("source.cpus", 7), "7 CPUs"),
    "osrelease-differs": (_set("source.vmcoreinfo.OSRELEASE", "5.0"), "OSRELEASE"),
    "collect-without-metadata": (_set("tool", "hvdump collect"), "metadata"),
    "metadata-chunk-without-file": (_set("chunks.0.kind", "hpte"), "metadata.hpte"),
    "deeply-nested": (lambda m: "[" * 200_000 + "]" * 200_000, "not"),
    "huge-integer-text": (
        lambda m: json.dumps(m).replace('"size": 65536', '"size": ' + "9" * 5000, 1),
        "not JSON",
    ),
}


@pytest.mark.parametrize("name", sorted(MANIFESTS))
@pytest.mark.parametrize("fmt", ["kdump", "elf"])
def test_verify_refuses_every_malformed_manifest_in_one_line(
    good: dict[str, Path], tmp_path: Path, name: str, fmt: str
) -> None:
    mutate, word = MANIFESTS[name]
    d = tmp_path / "copy"
    shutil.copytree(good[fmt], d)
    got = mutate(_manifest(good, fmt))
    (d / "manifest.json").write_text(got if isinstance(got, str) else json.dumps(got))
    run = run_limited(hvdump_args("verify", str(d)), f"manifest {name} ({fmt})", "verify")
    assert_bounded(run, f"verify {name} ({fmt})", may_succeed=False)
    assert "OK" not in run.out
    line = run.err.strip()
    assert word in line, (name, line)
    assert "manifest.json" in line or str(d / "dump") in line or "nothere" in line, line
    # The library gives the same answer (no exception other than a one-line error).
    from drgn_hvdump.errors import HvdumpError

    with pytest.raises(HvdumpError):
        verify_dir(d)


def test_a_good_copy_verifies(good: dict[str, Path]) -> None:
    for fmt in good:
        run = run_limited(hvdump_args("verify", str(good[fmt])), f"good {fmt}", "verify")
        assert run.rc == 0 and run.out.strip().splitlines()[-1].startswith("OK"), run.out + run.err


def _kdump_notes_patched(data: bytearray, old: bytes, new: bytes) -> bytearray:
    at = data.index(old)
    data[at : at + len(new)] = new
    return data


DUMPS: dict[str, Callable[[bytearray], bytearray]] = {
    # a kdump whose notes drgn cannot read
    "kdump-prstatus-cut": lambda b: _kdump_notes_patched(
        b, struct.pack(">III", 5, 504, NT_PRSTATUS), struct.pack(">III", 5, 500, NT_PRSTATUS)
    ),
    "kdump-vmcoreinfo-renamed": lambda b: _kdump_notes_patched(b, b"VMCOREINFO\0", b"VMCOREINFX\0"),
    "kdump-vmcoreinfo-garbled": lambda b: _kdump_notes_patched(b, b"OSRELEASE=", b"OSRELEASE\x01"),
    "kdump-note-size-huge": lambda b: _kdump_notes_patched(
        b, struct.pack(">III", 5, 504, NT_PRSTATUS), struct.pack(">III", 5, 0xFFFFFFF0, NT_PRSTATUS)
    ),
}


@pytest.mark.parametrize("name", sorted(DUMPS))
def test_verify_refuses_a_kdump_whose_notes_drgn_cannot_read(
    good: dict[str, Path], tmp_path: Path, name: str
) -> None:
    d = tmp_path / "copy"
    shutil.copytree(good["kdump"], d)
    dump = d / "dump.kdump"
    dump.write_bytes(bytes(DUMPS[name](bytearray(dump.read_bytes()))))
    run = run_limited(hvdump_args("verify", str(d)), name, "verify")
    assert_bounded(run, f"verify {name}", may_succeed=False)
    assert str(dump) in run.err and "offset 0x" in run.err, run.err


@pytest.mark.parametrize("case", FILE_CASES)
def test_verify_of_hostile_dump_files_under_a_good_manifest(
    good: dict[str, Path], corpus: dict[str, Path], tmp_path: Path, case: str
) -> None:
    fmt = "kdump" if case.startswith("kdump") else "elf"
    d = tmp_path / "copy"
    shutil.copytree(good[fmt], d)
    shutil.copyfile(corpus[case], d / f"dump.{fmt}")
    run = run_limited(hvdump_args("verify", str(d)), case, "verify")
    assert_bounded(run, f"verify {case}", may_succeed=False)


def test_kdump_reader_sizes_come_from_the_file(corpus: dict[str, Path]) -> None:
    """Direct checks of the readers' refusals (one FormatError naming the offset)."""
    from drgn_hvdump.codecs import decompress_page
    from drgn_hvdump.errors import FormatError

    with pytest.raises(FormatError, match="bitmaps"):
        KdumpFile.open(corpus["kdump-bitmap-blocks-2^32-1"], decompress_page)
    with (
        KdumpFile.open(corpus["kdump-snappy-claims-4GiB"], decompress_page) as kd,
        pytest.raises(FormatError, match="claims"),
    ):
        kd.read_page(5)
    with (
        KdumpFile.open(corpus["kdump-desc-size-2^32-1"], decompress_page) as kd,
        pytest.raises(FormatError, match="more than a page"),
    ):
        kd.read_page(1)


def test_worst_case_report() -> None:
    """Print the slowest and largest runs (``pytest -s``); all are under the limits."""
    if not STATS:
        pytest.skip("run with the corpus tests")
    slow = max(STATS, key=lambda s: s[2])
    big = max(STATS, key=lambda s: s[3])
    print(
        f"\n{len(STATS)} runs; slowest {slow[2]:.2f} s ({slow[1]} {slow[0]}); "
        f"largest {big[3] >> 20} MiB ({big[1]} {big[0]})"
    )
    assert slow[2] < TIME_LIMIT and big[3] < MEM_LIMIT
