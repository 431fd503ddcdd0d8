"""The manifest of a dump directory (``manifest.json``): one typed, versioned record.

``hvdump collect`` and ``hvdump convert`` build a :class:`Manifest` and save it
with :func:`save_manifest`, its one writer; ``hvdump verify``, the collector's
rerun, the public API and the drgn plugin read it with :func:`read_manifest`
(or :func:`parse_manifest` on bytes already read from a trusted directory),
its one reader. The reader checks every value before anything uses it and
that the chunks account for the whole dump, so one :class:`FormatError`
naming the key stands for any malformed or incomplete manifest:

* every key has its type and a sane value; chunk indices run from 0 with
  none missing or repeated, checksums are 16 hex digits;
* the memory chunks (``rmo``, ``mem``) cover ``dump.segments`` exactly, with
  no gap and no overlap, and the metadata chunks (``cpu``, ``hpte``) cover
  their files from 0 to the size ``metadata`` gives (a manifest of
  ``hvdump collect`` must have both).

The JSON layout is version 1, as every earlier release wrote it.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from drgn_hvdump.dumpdir.names import JOURNAL, MANIFEST
from drgn_hvdump.errors import FormatError, HvdumpError
from drgn_hvdump.fsutil import disk_error, write_atomic
from drgn_hvdump.model.pages import MAX_PAGE_SIZE, MIN_PAGE_SIZE, kernel_page_size

__all__ = [
    "CHUNK_KINDS",
    "MANIFEST_VERSION",
    "MAX_CHUNK",
    "MEMORY_KINDS",
    "METADATA_KEYS",
    "VMCOREINFO_KEPT",
    "CaptureSource",
    "ChunkRecord",
    "ConvertedSource",
    "DumpFileInfo",
    "Manifest",
    "MetaFile",
    "ReleaseRecord",
    "ReleaseWriteRecord",
    "Source",
    "first_difference",
    "merge_ranges",
    "parse_manifest",
    "read_manifest",
    "save_manifest",
]

MANIFEST_VERSION = 1
"""The layout this module reads and writes."""
MAX_CHUNK = 1 << 30
"""The largest chunk a manifest may list (``hvdump verify`` hashes a chunk whole)."""
MEMORY_KINDS = ("rmo", "mem")
"""Chunks of the crashed kernel's memory, stored in the dump file."""
METADATA_KEYS = {"cpu": "regsave", "hpte": "hpte"}
"""Chunks stored in a file of their own, by kind: the ``metadata`` key naming the file."""
CHUNK_KINDS = ("cpu", "hpte", *MEMORY_KINDS)
VMCOREINFO_KEPT = ("OSRELEASE", "PAGESIZE", "CRASHTIME")
"""The VMCOREINFO values a manifest repeats (the dump's note must agree with them)."""

_U64 = 1 << 64
_XXH64 = re.compile(r"[0-9a-fA-F]{16}")
_DAMAGED = "the manifest is damaged: take it again from where the dump was collected or converted"
_JSON_NAMES = {"dict": "object", "list": "array", "int": "integer", "str": "string"}


@dataclass(frozen=True)
class ChunkRecord:
    """One chunk: ``size`` bytes at ``dst`` (a physical address, or an offset in a
    metadata file), its XXH64, and where the dump file stores it."""

    index: int
    kind: str
    dst: int
    size: int
    xxh64: str
    """16 lowercase hex digits."""
    src: int | None = None
    """Where it was read (the capture kernel's view of the old memory)."""
    stored_offset: int | None = None
    stored_bytes: int | None = None
    zero_pages: int | None = None

    def label(self) -> str:
        return f"chunk {self.index} ({self.kind} {self.dst:#x}+{self.size:#x})"

    def to_json(self) -> dict[str, Any]:
        return _without_none(
            index=self.index,
            kind=self.kind,
            src=self.src,
            dst=self.dst,
            size=self.size,
            xxh64=self.xxh64,
            stored_offset=self.stored_offset,
            stored_bytes=self.stored_bytes,
            zero_pages=self.zero_pages,
        )


@dataclass(frozen=True)
class MetaFile:
    """A file of the directory holding one metadata area (register save area, HPTEs)."""

    file: str
    size: int
    src: int | None = None

    def to_json(self) -> dict[str, Any]:
        return _without_none(file=self.file, src=self.src, size=self.size)


@dataclass(frozen=True)
class CaptureSource:
    """Where ``hvdump collect`` took the dump: the capture root and its interface."""

    root: str
    interface: str
    dump_header: str
    """The hypervisor's dump header as the capture kernel showed it (hex)."""
    valid: bool
    reason: str | None
    identity: str | None = None
    """The dump's identity (:mod:`drgn_hvdump.dumpdir.identity`)."""


@dataclass(frozen=True)
class ConvertedSource:
    """How ``hvdump convert`` read its vmcore."""

    machine: str
    elf_byteorder: str
    read_as: str


@dataclass(frozen=True)
class Source:
    """The crashed kernel the dump is of."""

    byteorder: str
    page_size: int
    vmcoreinfo: dict[str, str]
    """``OSRELEASE``, ``PAGESIZE`` and ``CRASHTIME``, which the dump's note must repeat."""
    cpus: int | None = None
    memory: int | None = None
    vmcore: str | None = None
    capture: CaptureSource | None = None
    converted: ConvertedSource | None = None

    def to_json(self) -> dict[str, Any]:
        out = _without_none(
            vmcore=self.vmcore,
            byteorder=self.byteorder,
            page_size=self.page_size,
            memory=self.memory,
            vmcoreinfo=dict(self.vmcoreinfo),
            cpus=self.cpus,
        )
        if self.capture is not None:
            c = self.capture
            out.update(
                root=c.root,
                interface=c.interface,
                dump_header=c.dump_header,
                valid=c.valid,
                reason=c.reason,
            )
            if c.identity is not None:
                out["identity"] = c.identity
        if self.converted is not None:
            v = self.converted
            out.update(machine=v.machine, elf_byteorder=v.elf_byteorder, read_as=v.read_as)
        return out


@dataclass(frozen=True)
class DumpFileInfo:
    """The dump file: its name, format and the memory it holds."""

    file: str
    format: str
    size: int
    segments: tuple[tuple[int, int], ...]
    """(address, size) of each range of memory, in address order."""
    compression: str | None = None
    level: int | None = None
    allocated: int | None = None
    zero_pages: int | None = None
    dump_level: int | None = None
    """makedumpfile's ``-d`` bits this dump was taken with (None: 1, zero pages only)."""
    excluded: dict[str, int] | None = None
    """Pages the dump level left out, per type (``cache``, ``user``, ``free`` ...)."""

    def ranges(self) -> list[tuple[int, int]]:
        """The segments as (start, end)."""
        return [(a, a + n) for a, n in self.segments]

    def to_json(self) -> dict[str, Any]:
        out = _without_none(
            file=self.file,
            format=self.format,
            size=self.size,
            allocated=self.allocated,
            segments=[[a, n] for a, n in self.segments],
            zero_pages=self.zero_pages,
            dump_level=self.dump_level,
            excluded=self.excluded,
        )
        # null means "stored raw" (ELF, or kdump without compression): always written
        out.update(compression=self.compression, level=self.level)
        return out


@dataclass(frozen=True)
class ReleaseWriteRecord:
    """One write to the release interface of the collector's plan, and whether it was made."""

    addr: int
    size: int
    scratch: bool
    new_pages: tuple[int, int]
    done: bool
    final: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "addr": self.addr,
            "size": self.size,
            "scratch": self.scratch,
            "new_pages": list(self.new_pages),
            "done": self.done,
        }
        if self.final:
            out["final"] = True
        return out


@dataclass(frozen=True)
class ReleaseRecord:
    """What a collection gave back to production, and when."""

    policy: str
    reserved_start: int
    reserved_bytes: int
    scratch: tuple[int, int]
    writes: tuple[ReleaseWriteRecord, ...]
    order: tuple[int, ...]
    reserved_over_time: tuple[tuple[float, int], ...] = ()
    events: tuple[dict[str, Any], ...] = ()

    def pending(self) -> list[tuple[int, int]]:
        """(address, size) of the writes not made yet."""
        return [(w.addr, w.size) for w in self.writes if not w.done]

    def released_bytes(self) -> int:
        return sum(w.size for w in self.writes if w.done)

    def after_last_release(self, note: str) -> ReleaseRecord:
        """This record once the final write is known to be made (``note`` says how)."""
        return replace(
            self,
            writes=tuple(replace(w, done=True) if w.final else w for w in self.writes),
            events=(*self.events, {"t": None, "note": note}),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "reserved_start": self.reserved_start,
            "reserved_bytes": self.reserved_bytes,
            "scratch": list(self.scratch),
            "writes": [w.to_json() for w in self.writes],
            "order": list(self.order),
            "reserved_over_time": [list(s) for s in self.reserved_over_time],
            "events": [dict(e) for e in self.events],
        }


@dataclass(frozen=True)
class Manifest:
    """What a dump directory holds, with a checksum per chunk."""

    tool: str
    """``hvdump collect`` or ``hvdump convert``."""
    source: Source
    dump: DumpFileInfo
    chunks: tuple[ChunkRecord, ...]
    metadata: dict[str, MetaFile] = field(default_factory=dict)
    """Metadata files by chunk kind (``cpu``, ``hpte``)."""
    dump_header_note: str | None = None
    release: ReleaseRecord | None = None
    scrub: tuple[dict[str, Any], ...] | None = None
    timings: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    version: int = MANIFEST_VERSION

    def read_bytes(self) -> int:
        """Bytes the chunks hold (memory and metadata)."""
        return sum(ch.size for ch in self.chunks)

    def summary(self) -> dict[str, Any]:
        """What a report shows of a collection: ``dump_size``, ``bytes_read``,
        ``elapsed_s``, ``released_bytes`` (release writes made) and the collector's
        ``warnings``, as plain data."""
        return {
            "dump_size": self.dump.size,
            "bytes_read": self.read_bytes(),
            "elapsed_s": self.timings.get("elapsed_s"),
            "released_bytes": self.release.released_bytes() if self.release else 0,
            "warnings": list(self.warnings),
        }

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "tool": self.tool,
            "source": self.source.to_json(),
            "dump": self.dump.to_json(),
        }
        if self.metadata:
            meta: dict[str, Any] = {
                METADATA_KEYS[kind]: f.to_json() for kind, f in self.metadata.items()
            }
            if self.dump_header_note is not None:
                meta["dump_header_note"] = self.dump_header_note
            out["metadata"] = meta
        if self.release is not None:
            out["release"] = self.release.to_json()
        out["chunks"] = [ch.to_json() for ch in self.chunks]
        if self.scrub is not None:
            out["scrub"] = [dict(r) for r in self.scrub]
        out["timings"] = dict(self.timings)
        out["warnings"] = list(self.warnings)
        return out

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n").encode()


class _Writer(Protocol):
    @property
    def path(self) -> Path: ...

    def write_atomic(self, name: str, data: bytes) -> None: ...


def save_manifest(where: Path | _Writer, m: Manifest) -> None:
    """Write ``m`` as ``MANIFEST`` in a directory (a path, or an opened output
    directory): atomically, fsynced, mode 0600; one line on a disk error."""
    path = (where if isinstance(where, Path) else where.path) / MANIFEST
    try:
        if isinstance(where, Path):
            write_atomic(path, m.to_bytes())
        else:
            where.write_atomic(MANIFEST, m.to_bytes())
    except OSError as exc:
        raise disk_error(str(path), exc, "cannot write the manifest") from None


def read_manifest(directory: Path) -> Manifest:
    """The manifest of the dump directory ``directory``, every value checked."""
    where = directory / MANIFEST
    try:
        raw = where.read_bytes()
    except FileNotFoundError:
        if not directory.is_dir():
            raise HvdumpError(
                f"{directory}: no such directory (give the directory hvdump collect or "
                "convert wrote)"
            ) from None
        if not (directory / JOURNAL).exists():
            raise HvdumpError(
                f"{directory}: not a dump directory (no {MANIFEST}, no {JOURNAL}): give the "
                "directory hvdump collect or convert wrote"
            ) from None
        raise HvdumpError(
            f"{where}: missing: the collection in {directory} has not finished (its "
            f"{JOURNAL} is there); run the same hvdump collect again to finish it"
        ) from None
    except OSError as exc:
        raise HvdumpError(f"{where}: cannot read: {exc.strerror}") from None
    return parse_manifest(raw, str(where))


def parse_manifest(raw: bytes, where: str) -> Manifest:
    """A manifest from the bytes of ``where``, every value checked (module docstring)."""
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
    if version != MANIFEST_VERSION or isinstance(version, bool):
        raise FormatError(
            f"key version: {version!r}, expected {MANIFEST_VERSION}",
            path=where,
            hint="written by another hvdump version (verify it with that one), or damaged",
        )
    return _Parser(where).manifest(data)


# -- the reader ------------------------------------------------------------------------


def _without_none(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _show(value: Any) -> str:
    if isinstance(value, dict | list):
        return "an object" if isinstance(value, dict) else "an array"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Parser:
    """Reads a manifest's keys, with one clear error for the first bad one."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, what: str, hint: str = _DAMAGED) -> FormatError:
        return FormatError(f"key {key}: {what}", path=self.where, hint=hint)

    def get(self, obj: dict[str, Any], key: str, name: str, typ: type | tuple[type, ...]) -> Any:
        if key not in obj:
            raise self.fail(name, "missing")
        value = obj[key]
        if typ is bool:
            if not isinstance(value, bool):
                raise self.fail(name, f"{_show(value)} is not true or false")
            return value
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

    def optional_int(self, obj: dict[str, Any], key: str, name: str) -> int | None:
        return self.integer(obj, key, name) if obj.get(key) is not None else None

    def counts(self, obj: dict[str, Any], key: str, name: str) -> dict[str, int] | None:
        """An optional object of non-negative counts by name."""
        if obj.get(key) is None:
            return None
        value: dict[str, Any] = self.get(obj, key, name, dict)
        return {str(k): self.integer(value, k, f"{name}.{k}") for k in value}

    def string(
        self, obj: dict[str, Any], key: str, name: str, choices: tuple[str, ...] = ()
    ) -> str:
        value: str = self.get(obj, key, name, str)
        if choices and value not in choices:
            raise self.fail(name, f"{_show(value)} is not one of {', '.join(choices)}")
        return value

    def optional_str(self, obj: dict[str, Any], key: str, name: str) -> str | None:
        return self.string(obj, key, name) if obj.get(key) is not None else None

    def file_name(self, obj: dict[str, Any], key: str, name: str) -> str:
        value = self.string(obj, key, name)
        if not value or value in (".", "..") or "/" in value or "\0" in value:
            raise self.fail(name, f"{_show(value)} is not a file name in the dump directory")
        return value

    def pair(self, value: Any, name: str, what: str) -> tuple[int, int]:
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise self.fail(name, f"{_show(value)} is not {what}")
        return value[0], value[1]

    # -- the parts ---------------------------------------------------------------------

    def manifest(self, m: dict[str, Any]) -> Manifest:
        tool = m["tool"] if isinstance(m.get("tool"), str) else ""
        source = self.source(self.obj(m, "source", "source"))
        dump = self.dump(self.obj(m, "dump", "dump"), source.page_size)
        meta = self.obj(m, "metadata", "metadata") if "metadata" in m else {}
        # phyp dump's register save area and HPTEs are files of their own; fadump's
        # capture kernel offers neither (its notes carry the registers).
        phyp = source.capture is None or source.capture.interface != "fadump"
        metadata = self.metadata(meta, tool == "hvdump collect" and phyp)
        chunks = self.chunks(self.get(m, "chunks", "chunks", list), source.page_size, metadata)
        self.check_cover(chunks, dump.ranges(), metadata)
        note = meta.get("dump_header_note")
        return Manifest(
            tool=tool,
            source=source,
            dump=dump,
            chunks=tuple(chunks),
            metadata=metadata,
            dump_header_note=note if isinstance(note, str) else None,
            release=self.release(self.obj(m, "release", "release")) if "release" in m else None,
            scrub=self.objects(m, "scrub") if "scrub" in m else None,
            timings=self.obj(m, "timings", "timings") if "timings" in m else {},
            warnings=tuple(
                self.string({"w": w}, "w", f"warnings[{i}]")
                for i, w in enumerate(self.get(m, "warnings", "warnings", list))
            )
            if "warnings" in m
            else (),
        )

    def source(self, s: dict[str, Any]) -> Source:
        ps = self.integer(s, "page_size", "source.page_size", MIN_PAGE_SIZE, MAX_PAGE_SIZE)
        if kernel_page_size(ps) is None:
            raise self.fail("source.page_size", f"{ps} is not a power of two")
        info: dict[str, str] = {}
        if "vmcoreinfo" in s:
            given = self.obj(s, "vmcoreinfo", "source.vmcoreinfo")
            for key in given:
                info[key] = self.string(given, key, f"source.vmcoreinfo.{key}")
        if info.get("PAGESIZE", str(ps)) != str(ps):
            raise self.fail(
                "source.page_size", f"{ps}, but source.vmcoreinfo.PAGESIZE is {info['PAGESIZE']}"
            )
        capture = None
        if "interface" in s:
            capture = CaptureSource(
                self.string(s, "root", "source.root"),
                self.string(s, "interface", "source.interface"),
                self.string(s, "dump_header", "source.dump_header"),
                bool(self.get(s, "valid", "source.valid", bool)),
                self.optional_str(s, "reason", "source.reason"),
                self.optional_str(s, "identity", "source.identity"),
            )
        converted = None
        if "read_as" in s:
            converted = ConvertedSource(
                self.string(s, "machine", "source.machine"),
                self.string(s, "elf_byteorder", "source.elf_byteorder"),
                self.string(s, "read_as", "source.read_as"),
            )
        return Source(
            byteorder=self.string(s, "byteorder", "source.byteorder", ("big", "little")),
            page_size=ps,
            vmcoreinfo=info,
            cpus=self.integer(s, "cpus", "source.cpus", 0, 1 << 20) if "cpus" in s else None,
            memory=self.optional_int(s, "memory", "source.memory"),
            vmcore=self.optional_str(s, "vmcore", "source.vmcore"),
            capture=capture,
            converted=converted,
        )

    def dump(self, d: dict[str, Any], ps: int) -> DumpFileInfo:
        segments: list[tuple[int, int]] = []
        for i, seg in enumerate(self.get(d, "segments", "dump.segments", list)):
            name = f"dump.segments[{i}]"
            a, n = self.pair(seg, name, "an [address, size] pair")
            if a < 0 or n <= 0 or a + n > _U64 or a % ps or n % ps:
                raise self.fail(name, f"[{a:#x}, {n:#x}] is not a range of whole {ps}-byte pages")
            if segments and a < sum(segments[-1]):
                raise self.fail(name, f"{a:#x} overlaps or precedes the segment before it")
            segments.append((a, n))
        if not segments:
            raise self.fail("dump.segments", "no memory: the dump holds nothing to verify")
        level = d.get("level")
        return DumpFileInfo(
            file=self.file_name(d, "file", "dump.file"),
            format=self.string(d, "format", "dump.format", ("kdump", "elf")),
            size=self.integer(d, "size", "dump.size"),
            segments=tuple(segments),
            compression=self.optional_str(d, "compression", "dump.compression"),
            level=self.integer(d, "level", "dump.level", -(1 << 31), 1 << 31)
            if level is not None
            else None,
            allocated=self.optional_int(d, "allocated", "dump.allocated"),
            zero_pages=self.optional_int(d, "zero_pages", "dump.zero_pages"),
            dump_level=self.optional_int(d, "dump_level", "dump.dump_level"),
            excluded=self.counts(d, "excluded", "dump.excluded"),
        )

    def metadata(self, meta: dict[str, Any], required: bool) -> dict[str, MetaFile]:
        out: dict[str, MetaFile] = {}
        for kind, key in METADATA_KEYS.items():
            if key in meta or required:
                entry = self.obj(meta, key, f"metadata.{key}")
                out[kind] = MetaFile(
                    self.file_name(entry, "file", f"metadata.{key}.file"),
                    self.integer(entry, "size", f"metadata.{key}.size", 0, MAX_CHUNK << 10),
                    self.optional_int(entry, "src", f"metadata.{key}.src"),
                )
        return out

    def chunks(self, given: list[Any], ps: int, metadata: dict[str, MetaFile]) -> list[ChunkRecord]:
        chunks: list[ChunkRecord] = []
        for i, ch in enumerate(given):
            name = f"chunks[{i}]"
            if not isinstance(ch, dict):
                raise self.fail(name, f"{_show(ch)} is not an object")
            kind = self.string(ch, "kind", f"{name}.kind", CHUNK_KINDS)
            xxh = self.string(ch, "xxh64", f"{name}.xxh64")
            if not _XXH64.fullmatch(xxh):
                raise self.fail(f"{name}.xxh64", f"{_show(xxh)} is not 16 hex digits")
            chunk = ChunkRecord(
                self.integer(ch, "index", f"{name}.index", 0, 1 << 40),
                kind,
                self.integer(ch, "dst", f"{name}.dst"),
                self.integer(ch, "size", f"{name}.size", 1, MAX_CHUNK),
                xxh.lower(),
                self.optional_int(ch, "src", f"{name}.src"),
                self.optional_int(ch, "stored_offset", f"{name}.stored_offset"),
                self.optional_int(ch, "stored_bytes", f"{name}.stored_bytes"),
                self.optional_int(ch, "zero_pages", f"{name}.zero_pages"),
            )
            if chunk.dst + chunk.size > _U64:
                raise self.fail(name, f"{chunk.label()} runs past the 64-bit address space")
            if kind in MEMORY_KINDS and (chunk.dst % ps or chunk.size % ps):
                raise self.fail(name, f"{chunk.label()} is not whole {ps}-byte pages")
            if kind in METADATA_KEYS and kind not in metadata:
                raise self.fail(name, f"a {kind} chunk but no metadata.{METADATA_KEYS[kind]} file")
            chunks.append(chunk)
        self.check_indices(chunks)
        return chunks

    def release(self, r: dict[str, Any]) -> ReleaseRecord:
        writes = []
        for i, w in enumerate(self.get(r, "writes", "release.writes", list)):
            name = f"release.writes[{i}]"
            if not isinstance(w, dict):
                raise self.fail(name, f"{_show(w)} is not an object")
            writes.append(
                ReleaseWriteRecord(
                    self.integer(w, "addr", f"{name}.addr"),
                    self.integer(w, "size", f"{name}.size"),
                    bool(self.get(w, "scratch", f"{name}.scratch", bool)),
                    self.pair(w.get("new_pages"), f"{name}.new_pages", "a [first, end] pair"),
                    bool(self.get(w, "done", f"{name}.done", bool)),
                    w.get("final") is True,
                )
            )
        order = [
            self.integer({"o": o}, "o", f"release.order[{i}]", 0, max(len(writes) - 1, 0))
            for i, o in enumerate(self.get(r, "order", "release.order", list))
        ]
        samples = self.get(r, "reserved_over_time", "release.reserved_over_time", list)
        return ReleaseRecord(
            policy=self.string(r, "policy", "release.policy"),
            reserved_start=self.integer(r, "reserved_start", "release.reserved_start"),
            reserved_bytes=self.integer(r, "reserved_bytes", "release.reserved_bytes"),
            scratch=self.pair(r.get("scratch"), "release.scratch", "an [address, size] pair"),
            writes=tuple(writes),
            order=tuple(order),
            reserved_over_time=tuple(
                (float(s[0]), int(s[1])) for s in samples if isinstance(s, list) and len(s) == 2
            ),
            events=self.objects(r, "events", "release.events"),
        )

    def objects(
        self, obj: dict[str, Any], key: str, name: str | None = None
    ) -> tuple[dict[str, Any], ...]:
        name = name or key
        out = []
        for i, item in enumerate(self.get(obj, key, name, list)):
            if not isinstance(item, dict):
                raise self.fail(f"{name}[{i}]", f"{_show(item)} is not an object")
            out.append(item)
        return tuple(out)

    def check_indices(self, chunks: list[ChunkRecord]) -> None:
        seen: dict[int, int] = {}
        for pos, ch in enumerate(chunks):
            if ch.index in seen:
                raise self.fail(
                    f"chunks[{pos}].index",
                    f"chunk {ch.index} is listed twice (chunks[{seen[ch.index]}] and chunks[{pos}])",
                )
            seen[ch.index] = pos
        for expected, index in enumerate(sorted(seen)):
            if index != expected:
                raise self.fail(
                    "chunks",
                    f"chunk {expected} is missing (indices run to {max(seen)}, "
                    f"{len(chunks)} chunks listed)",
                )

    def check_cover(
        self,
        chunks: list[ChunkRecord],
        segments: list[tuple[int, int]],
        metadata: dict[str, MetaFile],
    ) -> None:
        """Memory chunks tile the segments, metadata chunks their files: nothing left out."""
        areas: dict[str, list[tuple[int, int]]] = {"memory": segments}
        for kind, f in metadata.items():
            areas[kind] = [(0, f.size)] if f.size else []
        for area, want in areas.items():
            mine = sorted(
                (
                    ch
                    for ch in chunks
                    if (ch.kind in MEMORY_KINDS) == (area == "memory")
                    and (area == "memory" or ch.kind == area)
                ),
                key=lambda ch: ch.dst,
            )
            for a, b in itertools.pairwise(mine):
                if a.dst + a.size > b.dst:
                    raise self.fail("chunks", f"{a.label()} and {b.label()} overlap")
            have = merge_ranges([(ch.dst, ch.dst + ch.size) for ch in mine])
            diff = first_difference(merge_ranges(want), have)
            if diff is None:
                continue
            lo, hi, missing = diff
            what = "dump.segments" if area == "memory" else f"the {metadata[area].file} file"
            covered = sum(b - a for a, b in have)
            total = sum(b - a for a, b in want)
            if missing:
                raise self.fail(
                    "chunks",
                    f"{lo:#x}-{hi:#x} of {what} is in no chunk: the chunks cover {covered:#x} of "
                    f"{total:#x} bytes ({len(mine)} chunks)",
                    hint="the manifest does not account for the whole dump: do not trust this "
                    "copy; take the manifest again, or collect again",
                )
            raise self.fail("chunks", f"{lo:#x}-{hi:#x} is in a chunk but not in {what}")


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(start, end)`` ranges sorted and merged where they touch."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def first_difference(
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
