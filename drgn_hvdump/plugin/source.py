"""What a dump file is, and the crashed kernel's memory as it can be read from it.

Pure Python (no drgn): the plugin's hook asks :func:`identify` about the file
drgn opened and gets ``None`` for anything that is not a hypervisor-assisted
dump. Three kinds are recognised:

``live``
    ``ROOT/proc/vmcore`` of a capture kernel with a dump waiting. The dump
    header comes from ``ROOT``'s device tree, the map from
    ``release_region``; a collection registered for ``ROOT``
    (:mod:`drgn_hvdump.dumpdir.view`) says what was released and
    where those bytes are saved.
``raw``
    a copy of such a ``/proc/vmcore`` (a PT_LOAD below and one above the
    capture region, VMCOREINFO, no PRSTATUS notes). The scratch area is
    found by its register save area's magic at the top of memory; the
    section sizes follow from the firmware's rules.
``collected``
    a file ``hvdump collect`` wrote (ELF or kdump-compressed, with the
    ``HVDUMP`` notes): memory is already where it belongs; the notes give the
    dump header and the register save area, ``hpte.bin`` beside it the HPTEs.

``fadump``
    a firmware-assisted dump: its capture kernel's ``/proc/vmcore`` (live, on a
    root showing ``/sys/kernel/fadump``), a copy of one (``NT_PRSTATUS`` notes
    all with ``pr_pid`` 0), or a file ``hvdump collect`` wrote of one (the
    ``HVDUMP`` note holds the firmware's memory structure). Memory is where it
    belongs in every one of them: drgn reads the file itself. What the kernel
    did not leave is the CPUs' registers in ``crash_notes`` (a kernel that
    crashes into the firmware never saves them): they come from the file's
    ``NT_PRSTATUS`` notes, in CPU order.

For ``live`` and ``raw`` the crashed kernel's physical memory is a list of
:class:`~drgn_hvdump.model.physmap.Region`\\ s: the hypervisor's copy of low memory (read from the
scratch area), the reserved memory (read in place), memory the capture kernel
overwrote, and the scratch area itself, which holds saved sections rather
than kernel memory. :meth:`DumpSource.read` raises :class:`Unreadable` with
the reason for any byte it must not return.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from drgn_hvdump.capture import detect_capture, open_capture
from drgn_hvdump.dumpdir.names import (
    HVDUMP_NOTE_NAME,
    NOTE_DUMP_HEADER,
    NOTE_FADUMP_MEM,
    NOTE_REGSAVE,
    PLAN_FILE,
)
from drgn_hvdump.dumpdir.registry import find_collection, registration_path
from drgn_hvdump.dumpdir.view import CollectionView
from drgn_hvdump.errors import FormatError, HvdumpError
from drgn_hvdump.formats.dump_header import (
    DumpHeader,
    build_dump_header,
    parse_dump_header,
)
from drgn_hvdump.formats.elfcore import (
    NT_PRSTATUS,
    Elf64Phdr,
    ElfCore,
    numbered_by_cpu,
    parse_notes,
    parse_prstatus,
    unnumbered,
)
from drgn_hvdump.formats.fadump_mem import FadumpMem, parse_fadump_mem, section_names
from drgn_hvdump.formats.kdump import KDUMP_SIGNATURE, KdumpFile
from drgn_hvdump.formats.layout import ByteOrder
from drgn_hvdump.formats.regsave import (
    REGSAVE_ENTRY,
    REGSAVE_HEADER,
    REGSAVE_MAGIC,
    CpuState,
    build_regsave,
    parse_regsave,
    pt_regs_to_cpu_state,
)
from drgn_hvdump.formats.vmcoreinfo import VMCOREINFO_NOTE_NAME, parse_vmcoreinfo
from drgn_hvdump.intervals import IntervalSet
from drgn_hvdump.model.pages import kernel_page_size
from drgn_hvdump.model.physmap import Region, saved_low_map
from drgn_hvdump.model.scratch import sections_from_base, top_scratch_base

__all__ = [
    "NOTE_DUMP_HEADER",
    "NOTE_REGSAVE",
    "DumpSource",
    "Unreadable",
    "identify",
    "split_ranges",
]


Kind = Literal["live", "raw", "collected", "fadump"]
_MAGIC = REGSAVE_MAGIC.to_bytes(8, "big")
_VIEW_MIN = 4096
_WINDOW_SHIFT = 21
_MADV_POPULATE_READ = 22  # not in Python 3.11's mmap module
Data = bytes | memoryview


class Unreadable(HvdumpError):
    """Bytes of the crashed kernel's memory that this dump cannot give back, and why."""

    def __init__(self, message: str, address: int) -> None:
        super().__init__(message)
        self.address = address


@dataclass
class DumpSource:
    """A hypervisor-assisted dump as the plugin sees it (see the module docstring)."""

    kind: Kind
    path: Path
    byteorder: ByteOrder
    page_size: int
    memory: int
    vmcoreinfo: dict[str, str]
    header: DumpHeader | None
    regions: list[Region]
    cpu_raw: bytes | None
    root: Path | None = None
    collection: CollectionView | None = None
    warnings: list[str] = field(default_factory=list)
    sections: dict[str, tuple[int, int]] = field(default_factory=dict)
    _fd: int = -1
    _segments: list[tuple[int, int, int]] = field(default_factory=list)
    _saved: Callable[[int, int], bytes] | None = None
    _reg_stamp: tuple[int, int] | None = None
    _map: mmap.mmap | None = None
    _view: memoryview | None = None
    _populated: set[int] = field(default_factory=set)
    # Readable regions a copy serves straight from its map: (start, end, file offset).
    _direct: list[tuple[int, int, int]] = field(default_factory=list)
    _reg_path: Path | None = None
    #: fadump: the firmware's memory structure (None when the file does not hold it).
    fadump: FadumpMem | None = None

    # -- what it holds ----------------------------------------------------------

    def cpu_states(self) -> list[CpuState]:
        """The hypervisor's register save area, one entry per CPU (empty if not saved)."""
        if not self.cpu_raw:
            return []
        return parse_regsave(self.cpu_raw, f"{self.path}: register save area")

    def hpte_bytes(self) -> bytes | None:
        """The saved HPTE section, or None when it cannot be read."""
        if self.kind == "collected":
            side = self.path.parent / "hpte.bin"
            try:
                return side.read_bytes()
            except OSError:
                return None
        where = self.sections.get("hpte")
        if where is None or not where[1]:
            return None
        try:
            return bytes(self._read_src(where[0], where[1], None))
        except Unreadable:
            saved = self.collection.out / "hpte.bin" if self.collection else None
            if saved is not None and saved.exists():
                return saved.read_bytes()
            return None

    def region_at(self, pa: int) -> Region | None:
        for r in self.regions:
            if r.start <= pa < r.end:
                return r
        return None

    def released(self) -> IntervalSet:
        """Source (``/proc/vmcore``) ranges a started release may have given back."""
        if self.collection is None:
            return IntervalSet()
        self.collection.refresh()
        return self.collection.released.copy()

    # -- reading ------------------------------------------------------------------

    def read(self, pa: int, size: int) -> Data:
        """``size`` bytes of the crashed kernel's physical memory at ``pa`` (a raw
        copy may answer with a read-only view of its map)."""
        parts: list[Data] = []
        end = pa + size
        addr = pa
        while addr < end:
            r = self.region_at(addr)
            if r is None:
                raise Unreadable(
                    f"physical address {addr:#x} is beyond the crashed kernel's memory "
                    f"({self.memory:#x} bytes)",
                    addr,
                )
            n = min(end, r.end) - addr
            if r.src is None:
                raise Unreadable(f"physical address {addr:#x}: {r.why}", addr)
            parts.append(self._read_src(r.src + addr - r.start, n, addr))
            addr += n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _pread_src(self, src: int, size: int) -> Data:
        for start, end, offset in self._segments:
            if start <= src and src + size <= end:
                o = offset + src - start
                if self._view is not None and o + size <= len(self._view):
                    return self.map_read(o, size)
                try:
                    data = os.pread(self._fd, size, offset + src - start)
                except OSError as exc:
                    raise Unreadable(
                        f"{self.path}: cannot read {src:#x}+{size:#x}: {exc.strerror} (the dump "
                        "is gone once the last range is released)",
                        src,
                    ) from None
                if len(data) != size:
                    raise Unreadable(
                        f"{self.path}: short read at {src:#x} (the file is truncated)", src
                    )
                return data
        raise Unreadable(f"{self.path}: {src:#x}+{size:#x} is in no PT_LOAD", src)

    def direct_regions(self) -> list[tuple[int, int, int]]:
        """``(start, end, file offset)`` of the regions a copy serves straight from its
        map (:meth:`map_read`); empty for other kinds."""
        return list(self._direct)

    def map_read(self, offset: int, size: int) -> Data:
        """``size`` bytes at file ``offset`` from the map of a copy (see :func:`_map_copy`)."""
        view = self._view
        assert view is not None
        window = offset >> _WINDOW_SHIFT
        last = (offset + size - 1) >> _WINDOW_SHIFT
        if window not in self._populated or last not in self._populated:
            self._populate(window, last)
        # A copy never changes under a reader: hand drgn a view (no copy); small
        # reads are cheaper as bytes.
        if size > _VIEW_MIN:
            return view[offset : offset + size]
        return view[offset : offset + size].tobytes()

    def _populate(self, first: int, last: int) -> None:
        # Fault a 2 MiB window's pages in with one madvise (MADV_POPULATE_READ,
        # Linux 5.14) instead of one page fault per page on first touch.
        assert self._map is not None
        for w in range(first, last + 1):
            if w in self._populated:
                continue
            self._populated.add(w)
            start = w << _WINDOW_SHIFT
            length = min(1 << _WINDOW_SHIFT, len(self._map) - start)
            if length > 0:
                # An older kernel refuses: pages then fault in one by one.
                with contextlib.suppress(OSError):
                    self._map.madvise(_MADV_POPULATE_READ, start, length)

    def current_collection(self) -> CollectionView | None:
        """The collection of this live dump, looked for again while there is none: one
        ``stat`` of its registration file per read until ``hvdump collect`` starts."""
        if self.collection is not None or self.kind != "live" or self.root is None:
            return self.collection
        if self._reg_path is None:
            self._reg_path = registration_path(self.root)  # realpath + hash: once
        try:
            st = os.stat(self._reg_path)
            # the entry is replaced (a new inode) when the collection's plan is written
            stamp: tuple[int, int] | None = (st.st_ino, st.st_mtime_ns)
        except OSError:
            stamp = None
        if stamp is None or stamp == self._reg_stamp:
            return None
        self._reg_stamp = stamp
        self._attach_collection()
        return self.collection

    def _attach_collection(self) -> None:
        assert self.root is not None and self.header is not None
        found: list[str] = []
        out = find_collection(self.root, self._identity(), found)
        for w in found:
            if w not in self.warnings:
                self.warnings.append(w)
        if out is None:
            return
        try:
            cv = CollectionView(out)
        except FormatError as exc:
            self.warnings.append(f"ignoring the collection in {out}: {exc}")
            return
        if (
            cv.header_hex != build_dump_header(self.header).hex()
            or (cv.identity and cv.identity != self._identity())
            or not self._same_memory(cv)
        ):
            self.warnings.append(f"{out} collects another dump; ignoring it")
            return
        self.collection = cv

    def _same_memory(self, cv: CollectionView) -> bool:
        """Whether memory the collection saved, still reserved, reads the same live:
        two crashes of one kernel in the same second share their identity but not
        their memory. True when nothing can be compared (nothing saved yet, or
        everything saved released)."""
        from drgn_hvdump import native

        if cv.scrubbed:
            return True
        cv.refresh()
        for i in sorted(cv.chunk_hash, reverse=True):
            ch = cv.chunks[i]
            if ch.kind in ("rmo", "mem") and not cv.released.overlaps(ch.src, ch.src + ch.size):
                try:
                    data = bytes(self._pread_src(ch.src, ch.size))
                except Unreadable:
                    return True
                cv.refresh()
                if cv.released.overlaps(ch.src, ch.src + ch.size):
                    return True  # released meanwhile: the bytes prove nothing
                return native.hash64(data) == cv.chunk_hash[i]
        return True

    def _identity(self) -> str | None:
        """The live dump's identity, as the collector computes it (None: unknown)."""
        from drgn_hvdump.dumpdir.identity import dump_identity

        if self.header is None:
            return None
        try:
            core = ElfCore.open(self.path)
        except (FormatError, OSError):
            return None
        try:
            vmci = next(
                (n.desc for n in core.notes if n.name == VMCOREINFO_NOTE_NAME),
                None,
            )
        finally:
            core.close()
        if self.root is None:
            return None
        machine = open_capture(self.root).machine_identity()
        return dump_identity(build_dump_header(self.header), vmci, machine)

    def _read_src(self, src: int, size: int, pa: int | None) -> Data:
        cv = self.current_collection()
        if cv is None:
            data = self._pread_src(src, size)
            # A collection that started meanwhile journals its first release intent
            # only after registering: look again before trusting the bytes.
            cv = self.current_collection()
            if cv is None:
                return data
            cv.refresh()
            if not cv.released.overlaps(src, src + size):
                return data
        cv.refresh()
        if not cv.released.overlaps(src, src + size):
            try:
                data = self._pread_src(src, size)
            except Unreadable:
                # The last release removes /proc/vmcore: everything is saved by then.
                cv.refresh()
                if cv.durable.contains(src, src + size):
                    return self._saved_copy(src, size, pa)
                raise
            # A release journals its intent before it is made: if none covers these
            # bytes now, they were read before the kernel could reuse them.
            if not cv.refresh() or not cv.released.overlaps(src, src + size):
                return data
        out = bytearray()
        for lo, hi, released in split_ranges(cv.released, src, src + size):
            if not released:
                out += self._pread_src(lo, hi - lo)
            else:
                out += self._saved_copy(lo, hi - lo, pa if pa is None else pa + lo - src)
        return bytes(out)

    def _saved_copy(self, src: int, size: int, pa: int | None) -> bytes:
        cv = self.collection
        assert cv is not None
        where = f"{pa:#x}" if pa is not None else f"{src:#x} of /proc/vmcore"
        if not cv.durable.contains(src, src + size):
            raise Unreadable(
                f"{where}: this range was released to the running kernel and its contents "
                f"are not saved in {cv.out} (the collection had not saved it)",
                pa if pa is not None else src,
            )
        if self._saved is None:
            self._saved = _saved_reader(cv)
        out = bytearray()
        addr = src
        while addr < src + size:
            ch = cv.chunk_for_src(addr)
            assert ch is not None
            n = min(src + size, ch.src + ch.size) - addr
            out += self._saved(ch.dst + addr - ch.src, n)
            addr += n
        return bytes(out)

    def pending(self) -> list[tuple[int, int]]:
        """Crashed-memory ranges an unfinished collection into this file has not saved."""
        cv = self.collection
        if self.kind != "collected" or cv is None:
            return []
        cv.refresh()
        todo = IntervalSet()
        for ch in cv.chunks:
            if ch.kind in ("rmo", "mem") and ch.index not in cv.durable_chunks:
                todo.add(ch.dst, ch.dst + ch.size)
        return list(todo)

    def read_collected(self, pa: int, size: int) -> Data:
        """``[pa, pa + size)`` of a file an unfinished collection writes, if it is saved."""
        cv = self.collection
        assert cv is not None
        cv.refresh()
        for ch in cv.chunks_at_dst(pa, pa + size):
            if ch.index not in cv.durable_chunks:
                raise Unreadable(
                    f"physical address {max(pa, ch.dst):#x}: not collected yet (the collection "
                    f"into {cv.out} has not saved chunk {ch.index}; rerun hvdump collect to "
                    "finish it)",
                    max(pa, ch.dst),
                )
        if self._saved is None:
            self._saved = _saved_reader(cv)
        return self._saved(pa, size)

    def close(self) -> None:
        if self._view is not None:
            try:
                self._view.release()
                if self._map is not None:
                    self._map.close()
            except BufferError:
                pass  # drgn still holds a view; the map goes with the last one
            self._view = self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        # drgn drops the program (and its cache holding this) without telling
        # plugins: an open /proc/vmcore would keep a FUSE root busy.
        self.close()


def split_ranges(s: IntervalSet, lo: int, hi: int) -> list[tuple[int, int, bool]]:
    """``[lo, hi)`` cut into pieces in ``s`` (True) and not in it (False), in order."""
    pieces: list[tuple[int, int, bool]] = []
    at = lo
    for a, b in s.intersect(lo, hi):
        if a > at:
            pieces.append((at, a, False))
        pieces.append((a, b, True))
        at = b
    if at < hi:
        pieces.append((at, hi, False))
    return pieces


def _saved_reader(cv: CollectionView) -> Callable[[int, int], bytes]:
    """Reads ``(pa, size)`` of the crashed memory from the collection's dump file."""
    if cv.format == "elf":
        core = ElfCore.open(cv.dump_path)
        return core.read_phys
    from drgn_hvdump.codecs import decompress_page

    kd = KdumpFile.open(cv.dump_path, decompress_page)
    ps = kd.page_size

    def read(pa: int, size: int) -> bytes:
        kd.file_size = os.fstat(kd.fileno()).st_size  # the file grows while collection runs
        out = bytearray()
        first = pa // ps
        last = (pa + size - 1) // ps
        for pfn in range(first, last + 1):
            out += kd.read_page(pfn)
        skip = pa - first * ps
        return bytes(out[skip : skip + size])

    return read


# -- identifying a file ----------------------------------------------------------


def identify(path: str | os.PathLike[str]) -> DumpSource | None:
    """What ``path`` is, or None when it is not a hypervisor-assisted dump.

    Cheap for other files: one read of the file's first bytes, the ELF notes,
    and (only for a ppc64 kernel core whose PRSTATUS notes, if any, are
    numbered as a capture kernel's) a scan for the register save area's magic
    at page starts near the top of memory.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    if head == KDUMP_SIGNATURE:
        return _identify_kdump(p)
    if head[:4] != b"\x7fELF":
        return None
    try:
        core = ElfCore.open(p)
    except (FormatError, OSError):
        return None
    try:
        return _identify_elf(p, core)
    finally:
        core.close()


def _hvdump_notes(notes: list[tuple[str, int, bytes]]) -> tuple[bytes | None, bytes | None]:
    header = next((d for n, t, d in notes if n == HVDUMP_NOTE_NAME and t == NOTE_DUMP_HEADER), None)
    cpu = next((d for n, t, d in notes if n == HVDUMP_NOTE_NAME and t == NOTE_REGSAVE), None)
    return header, cpu


def _collected_page_size(p: Path, info: dict[str, str]) -> int:
    # The collector refuses a kernel without PAGESIZE, so a file without one is not ours.
    size = kernel_page_size(info.get("PAGESIZE"))
    if size is None:
        raise FormatError(
            f"VMCOREINFO PAGESIZE {info.get('PAGESIZE')!r} is not a kernel's page size",
            path=str(p),
            hint="hvdump writes it from the crashed kernel's VMCOREINFO: the file is damaged",
        )
    return size


def _collected(
    p: Path,
    byteorder: ByteOrder,
    info: dict[str, str],
    header_raw: bytes,
    cpu_raw: bytes | None,
    memory: int,
) -> DumpSource:
    header = parse_dump_header(header_raw, path=f"{p}: HVDUMP note")
    src = DumpSource(
        kind="collected",
        path=p,
        byteorder=byteorder,
        page_size=_collected_page_size(p, info),
        memory=memory,
        vmcoreinfo=info,
        header=header,
        regions=[],
        cpu_raw=cpu_raw,
    )
    # A collection still running (or stopped) into this file: its journal says
    # which chunks are durable; the others are not in the file yet.
    if (p.parent / PLAN_FILE).exists():
        try:
            cv = CollectionView(p.parent)
        except FormatError as exc:
            src.warnings.append(f"ignoring {p.parent / PLAN_FILE}: {exc}")
        else:
            if cv.dump_path.resolve() == p.resolve() and not cv.done:
                src.collection = cv
                src.warnings.append(
                    f"the collection into {p.parent} has not finished: memory it has not "
                    "saved yet cannot be read (rerun hvdump collect to finish it)"
                )
    return src


def _identify_kdump(p: Path) -> DumpSource | None:
    from drgn_hvdump.codecs import decompress_page

    try:
        kd = KdumpFile.open(p, decompress_page)
    except (FormatError, OSError):
        return None
    try:
        notes = [(n.name, n.type, n.desc) for n in parse_notes(kd.notes, kd.byteorder, str(p))]
        header_raw, cpu_raw = _hvdump_notes(notes)
        vmci = next((d for n, _, d in notes if n == VMCOREINFO_NOTE_NAME), b"")
        info = parse_vmcoreinfo(vmci, str(p)) if vmci else {}
        memory = kd.max_mapnr * kd.page_size
        is_fadump, fadump = _fadump_note(notes)
        if is_fadump:
            ps = kd.page_size
            held = _in_place([(a * ps, b * ps) for a, b in kd.present_runs()])
            return _fadump(p, kd.byteorder, info, memory, notes, fadump, held)
        if header_raw is None:
            return None
        return _collected(p, kd.byteorder, info, header_raw, cpu_raw, memory)
    except FormatError:
        return None
    finally:
        kd.close()


class _Vmcore(NamedTuple):
    """What :func:`_identify_elf` learnt of a vmcore-shaped ELF core."""

    path: Path
    byteorder: ByteOrder
    info: dict[str, str]
    page_size: int
    memory: int
    segments: list[Elf64Phdr]
    notes: list[tuple[str, int, bytes]]


def _identify_elf(p: Path, core: ElfCore) -> DumpSource | None:
    notes = [(n.name, n.type, n.desc) for n in core.notes]
    info = core.vmcoreinfo or {}
    memory = max((ph.p_paddr + ph.p_memsz for ph in core.segments), default=0)
    header_raw, cpu_raw = _hvdump_notes(notes)
    loads = _in_place([(ph.p_paddr, ph.p_paddr + ph.p_memsz) for ph in core.segments])
    is_fadump, fadump = _fadump_note(notes)
    if is_fadump:
        return _fadump(p, core.byteorder, info, memory, notes, fadump, loads)
    if header_raw is not None:
        return _collected(p, core.byteorder, info, header_raw, cpu_raw, memory)
    if not info:
        return None
    page_size = kernel_page_size(info.get("PAGESIZE"))
    if page_size is None:
        return None
    segments = sorted(core.segments, key=lambda ph: ph.p_paddr)
    if len(segments) < 2 or segments[0].p_paddr != 0:
        return None
    v = _Vmcore(p, core.byteorder, info, page_size, memory, segments, notes)
    if p.name == "vmcore" and p.parent.name == "proc":
        # A capture root is known by its device tree, whatever the notes: a capture
        # kernel may build PRSTATUS notes from the save area, as fadump's does.
        live = _identify_live(v)
        if live is not None:
            return live
    if unnumbered(core.prstatus):
        # fadump's capture kernel numbers none of its notes (an all-idle kdump core's
        # crash_notes are filled: the registers are kept where the kernel saved them).
        return _fadump(p, core.byteorder, info, memory, notes, None, loads)
    if not numbered_by_cpu(core.prstatus):
        return None  # a kdump core: registers in its notes, memory in place
    return _identify_raw(v)


def _open_source(kind: Kind, v: _Vmcore) -> DumpSource:
    src = DumpSource(
        kind=kind,
        path=v.path,
        byteorder=v.byteorder,
        page_size=v.page_size,
        memory=v.memory,
        vmcoreinfo=v.info,
        header=None,
        regions=[],
        cpu_raw=None,
    )
    src._fd = os.open(v.path, os.O_RDONLY | os.O_CLOEXEC)
    if kind == "raw":
        # A copy is read through a map: no system call, and no copy for large reads.
        # (Not a live /proc/vmcore: it vanishes after the last release, and a mapped
        # page of a vanished file is a SIGBUS, not an error.)
        try:
            src._map = mmap.mmap(src._fd, 0, prot=mmap.PROT_READ)
            src._view = memoryview(src._map)
        except (OSError, ValueError):
            src._map = src._view = None
    src._segments = [
        (ph.p_paddr, ph.p_paddr + ph.p_filesz, ph.p_offset) for ph in v.segments if ph.p_filesz
    ]
    return src


def _identify_live(v: _Vmcore) -> DumpSource | None:
    root = v.path.parent.parent
    capture = detect_capture(root)
    if capture is None:
        return None
    state = capture.state()
    if not state.readable:
        return None
    if isinstance(state.native, FadumpMem):
        # fadump's capture kernel maps the crashed memory back itself: drgn reads
        # its vmcore as it is; the registers come from its notes.
        src = _fadump(
            v.path, v.byteorder, v.info, v.memory, v.notes, state.native,
            capture.physical_map(state, v.memory),
        )  # fmt: skip
        src.root = root
        src.warnings += state.warnings
        return src
    src = _open_source("live", v)
    src.root = root
    src.header = parse_dump_header(state.header_raw, path=f"{root}: dump header")
    if not state.valid:
        src.warnings.append(state.reason)
    src.warnings += state.warnings
    src.regions = capture.physical_map(state, v.memory)
    src.sections = {
        name: (s.destination_address, s.length_copied) for name, s in state.sections.items()
    }
    # No collection registered yet is the usual first look (triage before
    # collecting): the `hvdump` command says so on its collection line, not as
    # a warning.
    src.current_collection()
    cpu = src.sections["cpu"]
    try:
        src.cpu_raw = bytes(src._read_src(cpu[0], cpu[1], None))
    except Unreadable:
        side = src.collection.out / "regsave.bin" if src.collection else None
        src.cpu_raw = side.read_bytes() if side is not None and side.exists() else None
    return src


def _identify_raw(v: _Vmcore) -> DumpSource | None:
    p, page_size, memory = v.path, v.page_size, v.memory
    reserved = v.segments[1].p_paddr
    last = v.segments[-1]
    top = last.p_paddr + last.p_filesz
    # Only the last segment's bytes in the file are searched: one read per page of
    # them at most, however far the segment claims memory runs.
    lowest = max(reserved, last.p_paddr)
    fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    try:
        base = None
        # The scratch area holds the save area, the HPTEs (at least 256 KiB) and the
        # 256 MiB copy: its start is at least that far below the top.
        addr = top_scratch_base(top, page_size)
        while addr >= lowest:
            if os.pread(fd, 8, last.p_offset + addr - last.p_paddr) == _MAGIC:
                base = addr
                break
            addr -= page_size
        if base is None:
            return None
        window = os.pread(fd, min(top - base, 1 << 20), last.p_offset + base - last.p_paddr)
    finally:
        os.close(fd)
    try:
        states = parse_regsave(window, f"{p}: register save area at {base:#x}")
    except FormatError:
        return None
    cpu_size = _regsave_end(window, states)
    layout = sections_from_base(base, cpu_size, memory)
    if layout is None:
        return None
    rmo_dest, rmo_size = layout.rmo
    src = _open_source("raw", v)
    src.cpu_raw = window[:cpu_size]
    src.regions = saved_low_map(rmo_dest, rmo_size, rmo_size, reserved, base, memory)
    if src._view is not None:
        for r in src.regions:
            for start, end, offset in src._segments:
                at = offset + (r.src or 0) - start
                if (
                    r.src is not None
                    and start <= r.src
                    and r.src + r.end - r.start <= end
                    and at + r.end - r.start <= len(src._view)
                ):
                    src._direct.append((r.start, r.end, at))
    src.sections = {"cpu": layout.cpu, "hpte": layout.hpte, "rmo": layout.rmo}
    src.warnings.append(
        "a copy of /proc/vmcore: the scratch area was found at "
        f"{base:#x} by its register save area; a copy cannot say which ranges were "
        "released before it was taken (take it before any release)"
    )
    return src


def _fadump_note(notes: list[tuple[str, int, bytes]]) -> tuple[bool, FadumpMem | None]:
    """Whether the file is a fadump dump hvdump wrote, and the firmware's structure if
    its note holds one (``hvdump convert`` of a vmcore copy leaves the note empty)."""
    raw = next((d for n, t, d in notes if n == HVDUMP_NOTE_NAME and t == NOTE_FADUMP_MEM), None)
    if raw is None:
        return False, None
    try:
        return True, parse_fadump_mem(raw) if raw else None
    except FormatError:
        return True, None


def _in_place(ranges: list[tuple[int, int]]) -> list[Region]:
    """``[start, end)`` ranges a file holds, each read at its own address."""
    return [Region(a, b, "memory", a) for a, b in sorted(ranges)]


def _fadump(
    p: Path,
    byteorder: ByteOrder,
    info: dict[str, str],
    memory: int,
    notes: list[tuple[str, int, bytes]],
    mem: FadumpMem | None,
    regions: list[Region],
) -> DumpSource:
    """A fadump dump: memory as the file holds it, registers from its PRSTATUS notes
    (one per CPU in the CPU state data's order, which is CPU order)."""
    prstatus = [
        parse_prstatus(d, byteorder, str(p))
        for n, t, d in notes
        if n == "CORE" and t == NT_PRSTATUS
    ]
    states = [pt_regs_to_cpu_state(cpu, ps.pr_reg) for cpu, ps in enumerate(prstatus)]
    return DumpSource(
        kind="fadump",
        path=p,
        byteorder=byteorder,
        page_size=kernel_page_size(info.get("PAGESIZE")) or 65536,
        memory=memory,
        vmcoreinfo=info,
        header=None,
        regions=regions,
        cpu_raw=build_regsave(states) if states else None,
        fadump=mem,
        sections={
            name: (s.destination_address, s.length_copied)
            for name, s in zip(section_names(mem), mem.sections, strict=True)
        }
        if mem is not None
        else {},
    )


def _regsave_end(buf: bytes, states: list[CpuState]) -> int:
    """Bytes of the save area up to the last CPU's ``CPUEND`` (entries are contiguous)."""
    hdr = REGSAVE_HEADER.unpack_from(buf, 0, "big")
    return int(hdr.num_cpu_offset + 4 + sum((len(s.regs) + 2) * REGSAVE_ENTRY.size for s in states))
