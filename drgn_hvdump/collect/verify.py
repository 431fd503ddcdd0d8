r"""``hvdump verify DIR``: check a collected dump against its manifest (anywhere it was copied).

A manifest is checked before anything it names is read, and a dump verifies
only if the manifest accounts for all of it:

* every key either writer (``hvdump collect``, ``hvdump convert``) puts there
  that verify uses has its type and a sane value; chunk indices run from 0
  with none missing or repeated, checksums are 16 hex digits;
* the memory chunks (``rmo``, ``mem``) cover ``dump.segments`` exactly, with
  no gap and no overlap, and the metadata chunks (``cpu``, ``hpte``) cover
  their files from 0 to the size ``metadata`` gives: together, every chunk of
  the collector's plan (a manifest of ``hvdump collect`` must have both);
* the dump file holds exactly those segments: an ELF file's ``PT_LOAD``\ s
  (every byte in the file), a kdump file's bitmap;
* its notes are readable as drgn, crash and libkdumpfile read them: every
  note, each ``NT_PRSTATUS`` (one per CPU the manifest counts), the
  ``VMCOREINFO`` note and, in a kdump file, the sub-header's copy of it,
  which agree with the manifest's ``OSRELEASE``/``PAGESIZE``/``CRASHTIME``.

A malformed manifest, or a dump file whose structure disagrees with it, is
one :class:`FormatError` line naming the file, the key or offset, and what to
do; wrong chunk contents are report lines. Work is bounded by the files' sizes:
chunks are read one at a time (at most :data:`MAX_CHUNK` bytes), only inside
what the dump file holds.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drgn_hvdump import native
from drgn_hvdump.codecs import decompress_page
from drgn_hvdump.dumpdir.names import MANIFEST
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

__all__ = ["MAX_CHUNK", "verify_dir"]

MAX_CHUNK = 1 << 30
"""The largest chunk verify reads (a chunk is hashed whole)."""
_MEMORY_KINDS = ("rmo", "mem")
_METADATA = {"cpu": "regsave", "hpte": "hpte"}
_XXH64 = re.compile(r"[0-9a-fA-F]{16}")
_PRSTATUS_SIZE = {
    "ppc64": ELF_PRSTATUS_PPC64.size,
    "ppc64le": ELF_PRSTATUS_PPC64.size,
    "x86_64": 336,
}
_DAMAGED = "the manifest is damaged: take it again from where the dump was collected or converted"
_U64 = 1 << 64
_NOT_THIS_DUMP = "this dump file is not the one the manifest describes, or it was damaged"


@dataclass(frozen=True)
class _Chunk:
    index: int
    kind: str
    dst: int
    size: int
    xxh64: str

    def label(self) -> str:
        return f"chunk {self.index} ({self.kind} {self.dst:#x}+{self.size:#x})"


@dataclass(frozen=True)
class _Manifest:
    """What verify uses of a manifest, every value checked."""

    path: str
    tool: str
    page_size: int
    byteorder: str
    dump_file: str
    format: str
    size: int
    segments: list[tuple[int, int]]
    chunks: list[_Chunk]
    metadata: dict[str, tuple[str, int]]
    cpus: int | None
    vmcoreinfo: dict[str, str]


def _load(path: Path) -> dict[str, Any]:
    where = str(path / MANIFEST)
    try:
        raw = (path / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise HvdumpError(
            f"{where}: missing (is the collection finished? rerun hvdump collect)"
        ) from None
    except OSError as exc:
        raise HvdumpError(f"{where}: cannot read: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        # exc.pos counts characters; the manifest is ASCII as both writers make it.
        raise FormatError(
            f"manifest is not JSON ({exc.msg})", path=where, offset=exc.pos, hint=_DAMAGED
        ) from None
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"manifest is not JSON ({exc})", path=where, hint=_DAMAGED) from None
    if not isinstance(data, dict):
        raise FormatError(
            f"manifest is a JSON {type(data).__name__}, not an object", path=where, hint=_DAMAGED
        )
    version = data.get("version")
    if version != 1 or isinstance(version, bool):
        raise FormatError(
            f"key version: {version!r}, expected 1",
            path=where,
            hint="written by another hvdump version (verify it with that one), or damaged",
        )
    return data


class _Checker:
    """Reads a manifest's keys, with one clear error for the first bad one."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, what: str, hint: str = _DAMAGED) -> FormatError:
        return FormatError(f"key {key}: {what}", path=self.where, hint=hint)

    def get(self, obj: dict[str, Any], key: str, name: str, typ: type | tuple[type, ...]) -> Any:
        if key not in obj:
            raise self.fail(name, "missing")
        value = obj[key]
        if not isinstance(value, typ) or isinstance(value, bool):
            want = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            raise self.fail(name, f"{_show(value)} is not a JSON {_JSON_NAMES.get(want, want)}")
        return value

    def obj(self, obj: dict[str, Any], key: str, name: str) -> dict[str, Any]:
        value: dict[str, Any] = self.get(obj, key, name, dict)
        return value

    def integer(self, obj: dict[str, Any], key: str, name: str, lo: int = 0, hi: int = _U64) -> int:
        value: int = self.get(obj, key, name, int)
        if not lo <= value <= hi:
            raise self.fail(name, f"{value} is out of range ({lo:#x} to {hi:#x})")
        return value

    def string(
        self, obj: dict[str, Any], key: str, name: str, choices: tuple[str, ...] = ()
    ) -> str:
        value: str = self.get(obj, key, name, str)
        if choices and value not in choices:
            raise self.fail(name, f"{_show(value)} is not one of {', '.join(choices)}")
        return value

    def file_name(self, obj: dict[str, Any], key: str, name: str) -> str:
        value = self.string(obj, key, name)
        if not value or value in (".", "..") or "/" in value or "\0" in value:
            raise self.fail(name, f"{_show(value)} is not a file name in the dump directory")
        return value


_JSON_NAMES = {"dict": "object", "list": "array", "int": "integer", "str": "string"}


def _show(value: Any) -> str:
    if isinstance(value, dict | list):
        return "an object" if isinstance(value, dict) else "an array"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(start, end)`` ranges sorted and merged where they touch."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _first_difference(
    want: list[tuple[int, int]], have: list[tuple[int, int]]
) -> tuple[int, int, bool] | None:
    """The first ``(start, end, missing)`` piece in ``want`` and not ``have`` (missing) or
    the reverse, both merged range lists; None when they are equal."""
    points = sorted({p for r in want + have for p in r})
    wi = hi = 0
    for a, b in itertools.pairwise(points):
        while wi < len(want) and want[wi][1] <= a:
            wi += 1
        while hi < len(have) and have[hi][1] <= a:
            hi += 1
        in_want = wi < len(want) and want[wi][0] <= a
        in_have = hi < len(have) and have[hi][0] <= a
        if in_want != in_have:
            return a, b, in_want
    return None


def _check_manifest(path: Path, m: dict[str, Any]) -> _Manifest:
    """Every key verify relies on, and that the chunks cover the whole dump."""
    c = _Checker(str(path / MANIFEST))
    tool = m["tool"] if isinstance(m.get("tool"), str) else ""
    source = c.obj(m, "source", "source")
    ps = c.integer(source, "page_size", "source.page_size", 4096, 1 << 20)
    if ps & (ps - 1):
        raise c.fail("source.page_size", f"{ps} is not a power of two")
    byteorder = c.string(source, "byteorder", "source.byteorder", ("big", "little"))
    cpus = c.integer(source, "cpus", "source.cpus", 0, 1 << 20) if "cpus" in source else None
    info: dict[str, str] = {}
    if "vmcoreinfo" in source:
        given = c.obj(source, "vmcoreinfo", "source.vmcoreinfo")
        for key in given:
            info[key] = c.string(given, key, f"source.vmcoreinfo.{key}")
    if info.get("PAGESIZE", str(ps)) != str(ps):
        raise c.fail(
            "source.page_size", f"{ps}, but source.vmcoreinfo.PAGESIZE is {info['PAGESIZE']}"
        )
    dump = c.obj(m, "dump", "dump")
    dump_file = c.file_name(dump, "file", "dump.file")
    fmt = c.string(dump, "format", "dump.format", ("kdump", "elf"))
    size = c.integer(dump, "size", "dump.size")
    segments: list[tuple[int, int]] = []
    for i, seg in enumerate(c.get(dump, "segments", "dump.segments", list)):
        name = f"dump.segments[{i}]"
        if (
            not isinstance(seg, list)
            or len(seg) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in seg)
        ):
            raise c.fail(name, f"{_show(seg)} is not an [address, size] pair")
        a, n = seg
        if a < 0 or n <= 0 or a + n > _U64 or a % ps or n % ps:
            raise c.fail(name, f"[{a:#x}, {n:#x}] is not a range of whole {ps}-byte pages")
        if segments and a < segments[-1][1]:
            raise c.fail(name, f"{a:#x} overlaps or precedes the segment before it")
        segments.append((a, a + n))
    if not segments:
        raise c.fail("dump.segments", "no memory: the dump holds nothing to verify")
    metadata: dict[str, tuple[str, int]] = {}
    meta = c.obj(m, "metadata", "metadata") if "metadata" in m else {}
    for kind, key in _METADATA.items():
        if key in meta or tool == "hvdump collect":
            entry = c.obj(meta, key, f"metadata.{key}")
            metadata[kind] = (
                c.file_name(entry, "file", f"metadata.{key}.file"),
                c.integer(entry, "size", f"metadata.{key}.size", 0, MAX_CHUNK << 10),
            )
    chunks: list[_Chunk] = []
    for i, ch in enumerate(c.get(m, "chunks", "chunks", list)):
        name = f"chunks[{i}]"
        if not isinstance(ch, dict):
            raise c.fail(name, f"{_show(ch)} is not an object")
        kind = c.string(ch, "kind", f"{name}.kind", ("cpu", "hpte", "rmo", "mem"))
        xxh = c.string(ch, "xxh64", f"{name}.xxh64")
        if not _XXH64.fullmatch(xxh):
            raise c.fail(f"{name}.xxh64", f"{_show(xxh)} is not 16 hex digits")
        chunk = _Chunk(
            c.integer(ch, "index", f"{name}.index", 0, 1 << 40),
            kind,
            c.integer(ch, "dst", f"{name}.dst"),
            c.integer(ch, "size", f"{name}.size", 1, MAX_CHUNK),
            xxh.lower(),
        )
        if chunk.dst + chunk.size > _U64:
            raise c.fail(name, f"{chunk.label()} runs past the 64-bit address space")
        if kind in _MEMORY_KINDS and (chunk.dst % ps or chunk.size % ps):
            raise c.fail(name, f"{chunk.label()} is not whole {ps}-byte pages")
        if kind in _METADATA and kind not in metadata:
            raise c.fail(name, f"a {kind} chunk but no metadata.{_METADATA[kind]} file")
        chunks.append(chunk)
    _check_indices(c, chunks)
    _check_cover(c, chunks, segments, metadata)
    return _Manifest(
        str(path / MANIFEST),
        tool,
        ps,
        byteorder,
        dump_file,
        fmt,
        size,
        segments,
        chunks,
        metadata,
        cpus,
        info,
    )


def _check_indices(c: _Checker, chunks: list[_Chunk]) -> None:
    seen: dict[int, int] = {}
    for pos, ch in enumerate(chunks):
        if ch.index in seen:
            raise c.fail(
                f"chunks[{pos}].index",
                f"chunk {ch.index} is listed twice (chunks[{seen[ch.index]}] and chunks[{pos}])",
            )
        seen[ch.index] = pos
    for expected, index in enumerate(sorted(seen)):
        if index != expected:
            raise c.fail(
                "chunks",
                f"chunk {expected} is missing (indices run to {max(seen)}, "
                f"{len(chunks)} chunks listed)",
            )


def _check_cover(
    c: _Checker,
    chunks: list[_Chunk],
    segments: list[tuple[int, int]],
    metadata: dict[str, tuple[str, int]],
) -> None:
    """Memory chunks tile the segments, metadata chunks their files: nothing left out."""
    areas: dict[str, list[tuple[int, int]]] = {"memory": segments}
    for kind, (_, size) in metadata.items():
        areas[kind] = [(0, size)] if size else []
    for area, want in areas.items():
        mine = sorted(
            (
                ch
                for ch in chunks
                if (ch.kind in _MEMORY_KINDS) == (area == "memory")
                and (area == "memory" or ch.kind == area)
            ),
            key=lambda ch: ch.dst,
        )
        for a, b in itertools.pairwise(mine):
            if a.dst + a.size > b.dst:
                raise c.fail("chunks", f"{a.label()} and {b.label()} overlap")
        have = _merge([(ch.dst, ch.dst + ch.size) for ch in mine])
        diff = _first_difference(_merge(want), have)
        if diff is None:
            continue
        lo, hi, missing = diff
        what = "dump.segments" if area == "memory" else f"the {metadata[area][0]} file"
        covered = sum(b - a for a, b in have)
        total = sum(b - a for a, b in want)
        if missing:
            raise c.fail(
                "chunks",
                f"{lo:#x}-{hi:#x} of {what} is in no chunk: the chunks cover {covered:#x} of "
                f"{total:#x} bytes ({len(mine)} chunks)",
                hint="the manifest does not account for the whole dump: do not trust this "
                "copy; take the manifest again, or collect again",
            )
        raise c.fail("chunks", f"{lo:#x}-{hi:#x} is in a chunk but not in {what}")


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
    man: _Manifest, notes: list[Note], machine: str | None, dump: Path, offset: int | None
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
    if man.cpus is not None and len(prstatus) != man.cpus:
        raise FormatError(
            f"{len(prstatus)} NT_PRSTATUS notes, the manifest counts {man.cpus} CPUs",
            path=str(dump),
            offset=offset,
            hint=_NOT_THIS_DUMP,
        )
    found = [n for n in notes if n.name == VMCOREINFO_NOTE_NAME and n.type == VMCOREINFO_NOTE_TYPE]
    info = parse_vmcoreinfo(found[0].desc, str(dump), offset or 0) if found else {}
    if man.vmcoreinfo and not found:
        raise FormatError(
            "no VMCOREINFO note: drgn cannot open it as a kernel dump",
            path=str(dump),
            offset=offset,
            hint=_NOT_THIS_DUMP,
        )
    for key, value in man.vmcoreinfo.items():
        if info.get(key) != value:
            raise FormatError(
                f"VMCOREINFO {key}={info.get(key)!r}, the manifest says {value!r}",
                path=str(dump),
                offset=offset,
                hint=_NOT_THIS_DUMP,
            )
    return info


def _open_kdump(man: _Manifest, dump: Path) -> KdumpFile:
    """The kdump file, checked against the manifest's structure before a page is read."""
    kd = KdumpFile.open(dump, decompress_page)
    try:
        if kd.page_size != man.page_size or kd.byteorder != man.byteorder:
            raise FormatError(
                f"{kd.byteorder}-endian with {kd.page_size}-byte pages, the manifest says "
                f"{man.byteorder}-endian with {man.page_size}-byte pages",
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
        elif man.vmcoreinfo:
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
    man: _Manifest, held: list[tuple[int, int]], where: str, dump: Path, offset: int
) -> None:
    """The memory ``held`` by the dump file (``where``) is exactly the manifest's segments."""
    diff = _first_difference(_merge(man.segments), _merge(held))
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


def _open_elf(man: _Manifest, dump: Path) -> ElfCore:
    core = ElfCore.open(dump, machine=None)
    try:
        if core.byteorder != man.byteorder:
            raise FormatError(
                f"{core.byteorder}-endian, the manifest says {man.byteorder}-endian",
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
    man = _check_manifest(path, _load(path))
    dump = path / man.dump_file
    lines: list[str] = []
    bad = 0
    ps = man.page_size
    try:
        if man.format == "kdump":
            kd = _open_kdump(man, dump)
        else:
            core = _open_elf(man, dump)
    except OSError as exc:
        raise HvdumpError(
            f"{dump}: cannot open the dump file: {exc.strerror} (copy the whole directory "
            "the dump was written to)"
        ) from None
    if man.format == "kdump":
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

    def check(ch: _Chunk) -> str:
        data: bytes | bytearray
        try:
            if ch.kind in _METADATA:
                data = _read_sidecar(path / man.metadata[ch.kind][0], ch.dst, ch.size)
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
    if size != man.size:
        bad += 1
        lines.append(f"{dump}: {size} bytes, manifest says {man.size}")
    total = sum(ch.size for ch in man.chunks)
    if bad:
        lines.append(f"FAILED: {path}: {bad} problems in {len(man.chunks)} chunks")
    else:
        lines.append(
            f"OK: {path}: {len(man.chunks)} chunks, {total / (1 << 30):.3f} GiB match the manifest"
        )
    return not bad, lines
