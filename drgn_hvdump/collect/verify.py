r"""``hvdump verify DIR``: check a collected dump against its manifest (anywhere it was copied).

A manifest is checked before anything it names is read, and a dump verifies
only if the manifest accounts for all of it (the manifest's own checks, its
values and its chunks' cover of the dump, are :mod:`drgn_hvdump.dumpdir.manifest`'s):

* the dump file holds exactly those segments: an ELF file's ``PT_LOAD``\ s
  (every byte in the file), a kdump file's bitmap;
* its notes are readable as drgn, crash and libkdumpfile read them: every
  note, each ``NT_PRSTATUS`` (one per CPU the manifest counts), the
  ``VMCOREINFO`` note and, in a kdump file, the sub-header's copy of it,
  which agree with the manifest's ``OSRELEASE``/``PAGESIZE``/``CRASHTIME``.

A malformed manifest, or a dump file whose structure disagrees with it, is
one :class:`FormatError` line naming the file, the key or offset, and what to
do; wrong chunk contents are report lines. Work is bounded by the files' sizes:
chunks are read one at a time (at most 1 GiB each), only inside
what the dump file holds.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from drgn_hvdump import native
from drgn_hvdump.codecs import decompress_page
from drgn_hvdump.dumpdir.manifest import (
    METADATA_KEYS,
    ChunkRecord,
    Manifest,
    first_difference,
    merge_ranges,
    read_manifest,
)
from drgn_hvdump.errors import FormatError, HvdumpError
from drgn_hvdump.formats.elfcore import (
    ELF_PRSTATUS_PPC64,
    NT_PRSTATUS,
    PT_NOTE,
    ElfCore,
    Note,
    parse_notes,
)
from drgn_hvdump.formats.kdump import DUMP_DH_COMPRESSED_INCOMPLETE, KDUMP_SUB_HEADER, KdumpFile
from drgn_hvdump.formats.vmcoreinfo import (
    VMCOREINFO_NOTE_NAME,
    VMCOREINFO_NOTE_TYPE,
    parse_vmcoreinfo,
)

__all__ = ["verify_dir"]

_PRSTATUS_SIZE = {
    "ppc64": ELF_PRSTATUS_PPC64.size,
    "ppc64le": ELF_PRSTATUS_PPC64.size,
    "x86_64": 336,
}
_NOT_THIS_DUMP = "this dump file is not the one the manifest describes, or it was damaged"


def _read_sidecar(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        have = os.fstat(f.fileno()).st_size
        if offset + size > have:
            raise FormatError(
                f"the file ends at {have:#x}, before {offset + size:#x}",
                path=str(path),
                offset=offset,
            )
        data = os.pread(f.fileno(), size, offset)
    if len(data) != size:
        raise FormatError(f"short: {len(data)} of {size} bytes", path=str(path), offset=offset)
    return data


def _check_notes(
    man: Manifest, notes: list[Note], machine: str | None, dump: Path, offset: int | None
) -> dict[str, str]:
    """The notes as drgn reads them: each PRSTATUS whole, VMCOREINFO parsed; its values."""
    size = _PRSTATUS_SIZE.get(machine or "")
    prstatus = [n for n in notes if n.name == "CORE" and n.type == NT_PRSTATUS]
    for i, note in enumerate(prstatus):
        if size is not None and len(note.desc) != size:
            raise FormatError(
                f"NT_PRSTATUS note {i} is {len(note.desc)} bytes, not {size} as {machine} has "
                "it: drgn cannot read the CPUs' registers",
                path=str(dump),
                offset=offset,
                hint=_NOT_THIS_DUMP,
            )
    if man.source.cpus is not None and len(prstatus) != man.source.cpus:
        raise FormatError(
            f"{len(prstatus)} NT_PRSTATUS notes, the manifest counts {man.source.cpus} CPUs",
            path=str(dump),
            offset=offset,
            hint=_NOT_THIS_DUMP,
        )
    found = [n for n in notes if n.name == VMCOREINFO_NOTE_NAME and n.type == VMCOREINFO_NOTE_TYPE]
    info = parse_vmcoreinfo(found[0].desc, str(dump), offset or 0) if found else {}
    if man.source.vmcoreinfo and not found:
        raise FormatError(
            "no VMCOREINFO note: drgn cannot open it as a kernel dump",
            path=str(dump),
            offset=offset,
            hint=_NOT_THIS_DUMP,
        )
    for key, value in man.source.vmcoreinfo.items():
        if info.get(key) != value:
            raise FormatError(
                f"VMCOREINFO {key}={info.get(key)!r}, the manifest says {value!r}",
                path=str(dump),
                offset=offset,
                hint=_NOT_THIS_DUMP,
            )
    return info


def _open_kdump(man: Manifest, dump: Path) -> KdumpFile:
    """The kdump file, checked against the manifest's structure before a page is read."""
    kd = KdumpFile.open(dump, decompress_page)
    try:
        if kd.page_size != man.source.page_size or kd.byteorder != man.source.byteorder:
            raise FormatError(
                f"{kd.byteorder}-endian with {kd.page_size}-byte pages, the manifest says "
                f"{man.source.byteorder}-endian with {man.source.page_size}-byte pages",
                path=str(dump),
                offset=0,
            )
        sub = kd.sub_header
        notes = parse_notes(kd.notes, kd.byteorder, str(dump), sub.offset_note)
        machine = kd.header.utsname[4 * 65 : 5 * 65].split(b"\0", 1)[0].decode("ascii", "replace")
        info = _check_notes(man, notes, machine, dump, sub.offset_note)
        raw = kd.vmcoreinfo_raw()  # what libkdumpfile (so drgn and crash) reads
        if raw is not None:
            if parse_vmcoreinfo(raw, str(dump), sub.offset_vmcoreinfo) != info:
                raise FormatError(
                    "the sub-header's VMCOREINFO differs from the VMCOREINFO note",
                    path=str(dump),
                    offset=kd.page_size + KDUMP_SUB_HEADER.offset_of("offset_vmcoreinfo"),
                )
        elif man.source.vmcoreinfo:
            raise FormatError(
                "the sub-header points at no VMCOREINFO: drgn cannot open it as a kernel dump",
                path=str(dump),
                offset=kd.page_size + KDUMP_SUB_HEADER.offset_of("offset_vmcoreinfo"),
            )
        ps = kd.page_size
        held = [(a * ps, b * ps) for a, b in kd.present_runs()]
        _check_held(man, held, "the dump's bitmap", dump, kd.bitmap_offset)
    except BaseException:
        kd.close()
        raise
    return kd


def _check_held(
    man: Manifest, held: list[tuple[int, int]], where: str, dump: Path, offset: int
) -> None:
    """The memory ``held`` by the dump file (``where``) is exactly the manifest's segments."""
    diff = first_difference(merge_ranges(man.dump.ranges()), merge_ranges(held))
    if diff is not None:
        lo, hi, missing = diff
        raise FormatError(
            f"{lo:#x}-{hi:#x} is "
            + (
                f"in the manifest's segments but not in {where}"
                if missing
                else f"in {where} but not in the manifest's segments"
            ),
            path=str(dump),
            offset=offset,
            hint=_NOT_THIS_DUMP,
        )


def _open_elf(man: Manifest, dump: Path) -> ElfCore:
    core = ElfCore.open(dump, machine=None)
    try:
        if core.byteorder != man.source.byteorder:
            raise FormatError(
                f"{core.byteorder}-endian, the manifest says {man.source.byteorder}-endian",
                path=str(dump),
                offset=5,
            )
        for index, ph in enumerate(core.segments):
            if ph.p_filesz != ph.p_memsz:
                # Both writers store every byte; zero-filled memory would be unbounded work.
                raise FormatError(
                    f"load segment {index} holds {ph.p_filesz:#x} of its {ph.p_memsz:#x} bytes: "
                    "hvdump writes every byte of a segment",
                    path=str(dump),
                    offset=core.header.e_phoff,
                    hint=_NOT_THIS_DUMP,
                )
        held = [(ph.p_paddr, ph.p_paddr + ph.p_memsz) for ph in core.segments if ph.p_memsz]
        _check_held(man, held, "the PT_LOADs", dump, core.header.e_phoff)
        machine = {21: "ppc64", 62: "x86_64"}.get(core.machine)
        at = next((ph.p_offset for ph in core.program_headers if ph.p_type == PT_NOTE), None)
        _check_notes(man, list(core.notes), machine, dump, at)
    except BaseException:
        core.close()
        raise
    return core


def verify_dir(path: Path, workers: int | None = None) -> tuple[bool, list[str]]:
    """Recompute every chunk's checksum from the files in ``path``; (ok, report lines).

    ``workers`` threads (default: one per CPU, at most 4) decode and hash chunks
    at once (the decoders release the GIL; reports keep the chunks' order).

    A malformed manifest, one that does not cover the whole dump, or a dump
    file that does not match it raises :class:`FormatError` (see the module
    docstring); chunks whose bytes differ are report lines and ``ok`` false.
    """
    man = read_manifest(path)
    dump = path / man.dump.file
    lines: list[str] = []
    bad = 0
    ps = man.source.page_size
    try:
        if man.dump.format == "kdump":
            kd = _open_kdump(man, dump)
        else:
            core = _open_elf(man, dump)
    except OSError as exc:
        raise HvdumpError(
            f"{dump}: cannot open the dump file: {exc.strerror} (copy the whole directory "
            "the dump was written to)"
        ) from None
    if man.dump.format == "kdump":
        if kd.header.status & DUMP_DH_COMPRESSED_INCOMPLETE:
            lines.append(f"{dump}: marked incomplete")
            bad += 1

        local = threading.local()

        def read_mem(paddr: int, size: int) -> bytes | bytearray:
            pfn = paddr // ps
            n = size // ps
            # One buffer per thread, filled again for each chunk: fresh 16 MiB
            # buffers cost a page fault per page (hvdump fixes glibc's mmap
            # threshold, so each would be a new mapping), which doubled the time.
            out = getattr(local, "buf", None)
            if out is None or len(out) != size:
                out = local.buf = bytearray(size)
            for i, d in enumerate(kd.descriptors(pfn, n)):
                out[i * ps : (i + 1) * ps] = kd.decode(d, pfn + i)
            return out

        closer = kd.close
    else:

        def read_mem(paddr: int, size: int) -> bytes | bytearray:
            return core.read_phys(paddr, size)

        closer = core.close

    def check(ch: ChunkRecord) -> str:
        data: bytes | bytearray
        try:
            if ch.kind in METADATA_KEYS:
                data = _read_sidecar(path / man.metadata[ch.kind].file, ch.dst, ch.size)
            else:
                data = read_mem(ch.dst, ch.size)
        except (OSError, FormatError) as exc:
            return f"{ch.label()}: {exc}"
        got = f"{native.hash64(data):016x}"
        return f"{ch.label()}: checksum {got}, manifest says {ch.xxh64}" if got != ch.xxh64 else ""

    n = workers or min(4, os.cpu_count() or 1)
    try:
        with ThreadPoolExecutor(max_workers=max(1, n), thread_name_prefix="hvdump-verify") as pool:
            # At most 2n chunks in flight: memory stays bounded by the chunk size.
            todo = iter(sorted(man.chunks, key=lambda ch: ch.index))
            pending = deque(pool.submit(check, ch) for ch in itertools.islice(todo, 2 * n))
            while pending:
                problem = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(check, nxt))
                if problem:
                    bad += 1
                    lines.append(problem)
    finally:
        closer()
    size = os.stat(dump).st_size
    if size != man.dump.size:
        bad += 1
        lines.append(f"{dump}: {size} bytes, manifest says {man.dump.size}")
    from drgn_hvdump.collect.analysable import analysable_problems

    unusable = analysable_problems(dump, man.dump.format)
    bad, lines = bad + len(unusable), lines + unusable
    total = sum(ch.size for ch in man.chunks)
    if bad:
        lines.append(f"FAILED: {path}: {bad} problems in {len(man.chunks)} chunks")
    else:
        lines.append(
            f"OK: {path}: {len(man.chunks)} chunks, {total / (1 << 30):.3f} GiB match the manifest"
        )
    return not bad, lines
