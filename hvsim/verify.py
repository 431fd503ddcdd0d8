"""Check dumps against an LPAR's ground truth (``hvsim verify``).

Two checks:

:func:`verify_sections` (``hvsim verify LPAR``)
    the hypervisor's saved sections, in the LPAR's memory where the dump
    header says they are: the register save area parses and holds every
    CPU's registers at the crash, the HPTE region holds exactly the crashed
    kernel's hash page table, and the low-memory copy equals the crashed
    kernel's ``[0, 256 MiB)``.

:func:`verify_dump` (``hvsim verify LPAR DUMPFILE``)
    a dump file, page by page, against the crashed kernel's memory. Two kinds
    of ELF file are understood: a *collected* dump (the crashed kernel's
    memory at its physical addresses, low memory restored at 0) and a *raw*
    copy of ``/proc/vmcore`` (its low region is the capture kernel's, so
    ``[0, 256 MiB)`` is taken from the low-memory copy inside the scratch
    area). The kind is recognised from the content; ``kind=`` forces it.

Page categories in the report: *wrong* (present, different), *missing*
(absent and not all zero in the crashed kernel), *excluded zero* (absent,
all zero: what dump filters leave out), *left out by the dump level*
(absent, and of a type the dump's level leaves out: page cache, user, free,
by the crashed kernel's own record of each page's type, not by reading its
``struct page``; a page of such a type the dump holds fails as *not left
out*), *lost* (in a range the LPAR itself
lost: released and reused before a capture kernel crashed, memory above the
copied 256 MiB that the capture kernel overwrote, an incomplete hypervisor
copy), *scratch* (the hypervisor's save area, whose earlier contents no dump
can hold; not compared). Verification fails on any wrong or missing page, on
lost pages a collected dump claims to hold, and on wrong notes.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from drgn_hvdump import native
from drgn_hvdump.errors import FormatError
from drgn_hvdump.formats.elfcore import (
    NT_PRSTATUS,
    ElfCore,
    ElfPrstatus,
    parse_notes,
    parse_prstatus,
)
from drgn_hvdump.formats.kdump import KdumpFile
from drgn_hvdump.formats.regsave import parse_regsave
from drgn_hvdump.formats.vmcoreinfo import parse_vmcoreinfo

from .lpar import Lpar
from .machine import HvsimError
from .memmodel import expected_exclusions
from .memory import IntervalSet
from .state import DumpInfo

__all__ = ["DumpKind", "VerifyReport", "detect_format", "verify_dump", "verify_sections"]

DumpKind = Literal["auto", "collected", "vmcore"]
_CHUNK = 4 << 20
_SHOW = 5  # addresses listed per problem
_RMO = 256 << 20
_HPTE_BLOCK = 512  # zero-scan granule of the HPTE region: four 128-byte groups


@dataclass
class VerifyReport:
    """The outcome of a verification: ``ok``, detail lines and one summary line."""

    ok: bool = True
    lines: list[str] = field(default_factory=list)
    summary: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    def fail(self, line: str) -> None:
        self.ok = False
        self.lines.append(line)

    def note(self, line: str) -> None:
        self.lines.append(line)

    def text(self) -> str:
        """Detail lines then the summary, newline-terminated."""
        return "".join(f"{line}\n" for line in [*self.lines, self.summary])


def _hexlist(addrs: list[int], total: int) -> str:
    shown = ", ".join(f"{a:#x}" for a in addrs[:_SHOW])
    return shown + (f" and {total - _SHOW} more" if total > _SHOW else "")


def _need_dump(lpar: Lpar) -> DumpInfo:
    info = lpar.last_dump()
    if info is None:
        raise HvsimError(f"{lpar.path}: no dump was ever taken (crash a protected LPAR first)")
    return info


# ----------------------------------------------------------------- in place


def verify_sections(lpar: Lpar) -> VerifyReport:
    """Check the hypervisor's saved sections in the LPAR's memory against ground truth."""
    info = _need_dump(lpar)
    if not info.waiting:
        raise HvsimError(
            f"{lpar.path}: the last dump is no longer waiting ({info.status}); its saved "
            "sections are gone from memory"
        )
    report = VerifyReport()
    released = IntervalSet(lpar.released_ranges())
    for name, (dest, length, copied) in info.sections.items():
        if name == "param":
            continue  # registered in place: nothing was copied
        label = {"cpu": "CPU state", "hpte": "HPTEs", "rmo": "low memory copy"}.get(
            name, f"{name} copy"
        )
        if released.overlaps(dest, dest + length):
            report.note(f"{label}: partly released already, reused memory not compared")
        if copied < length:
            report.note(f"{label}: firmware copied {copied:#x} of {length:#x} bytes")
        if name == "cpu":
            _check_cpu(lpar, info, dest, copied, released, report)
        elif name == "hpte":
            _check_hpte(lpar, info, dest, copied, released, report)
        else:
            _check_copy(lpar, label, info.sources.get(name, 0), dest, copied, released, report)
    report.summary = (
        f"{'OK' if report.ok else 'FAILED'}: saved sections of the dump of generation "
        f"{info.generation} ({lpar.path}) "
        + ("match the crashed kernel" if report.ok else "differ from the crashed kernel")
    )
    return report


def _check_cpu(
    lpar: Lpar, info: DumpInfo, dest: int, copied: int, released: IntervalSet, report: VerifyReport
) -> None:
    if not copied or released.overlaps(dest, dest + copied):
        return
    data = lpar.read_phys(dest, copied)
    expected = lpar.expected_cpu_states()
    if copied < info.sections["cpu"][1]:
        return  # a truncated save area cannot parse; the note above says so
    try:
        states = parse_regsave(data, f"register save area at {dest:#x}")
    except FormatError as exc:
        report.fail(f"CPU state: {exc}")
        return
    if len(states) != len(expected):
        report.fail(f"CPU state: {len(states)} CPUs saved, the LPAR has {len(expected)}")
    by_cpu = {s.cpu: s for s in states}
    bad = []
    for want in expected:
        got = by_cpu.get(want.cpu)
        if got is None or dict(got.regs) != dict(want.regs):
            bad.append(want.cpu)
    if bad:
        report.fail(f"CPU state: registers differ for CPU {', '.join(map(str, bad[:_SHOW]))}")
    else:
        report.note(f"CPU state: {len(states)} CPUs match (crashing CPU {info.crash_cpu})")


def _check_hpte(
    lpar: Lpar, info: DumpInfo, dest: int, copied: int, released: IntervalSet, report: VerifyReport
) -> None:
    if not copied:
        return

    def kept(slot: int) -> bool:
        # Entries in released (reused) memory cannot be checked.
        return not released.overlaps(dest + 16 * slot, dest + 16 * slot + 16)

    want = {(s, v, r) for s, v, r in lpar.expected_hptes() if 16 * s + 16 <= copied and kept(s)}
    got: set[tuple[int, int, int]] = set()
    buf = bytearray(_CHUNK)
    for off in range(0, copied, _CHUNK):
        n = min(_CHUNK, copied - off)
        if released.contains(dest + off, dest + off + n):
            continue
        if len(buf) != n:
            buf = bytearray(n)
        lpar.read_phys_into(dest + off, memoryview(buf))
        got.update(e for e in _hptes_in(buf, off) if kept(e[0]))
    missing = want - got
    extra = got - want
    if missing or extra:
        report.fail(
            f"HPTEs: {len(missing)} expected entries missing, {len(extra)} unexpected"
            + (f" (first missing slot {min(missing)[0]:#x})" if missing else "")
        )
    else:
        report.note(f"HPTEs: {len(got)} valid entries match")


def _hptes_in(data: bytes | bytearray, offset: int) -> Iterator[tuple[int, int, int]]:
    """(slot, v, r) of the non-zero entries of an HPTE region chunk at ``offset``."""
    whole = len(data) - len(data) % _HPTE_BLOCK
    flags = native.zero_pages(memoryview(data)[:whole], _HPTE_BLOCK) if whole else b""
    # Only the few non-zero blocks matter: find them without a Python loop over all.
    blocks = []
    pos = flags.find(0)
    while pos >= 0:
        blocks.append(pos)
        pos = flags.find(0, pos + 1)
    if whole < len(data):
        blocks.append(whole // _HPTE_BLOCK)
    for b in blocks:
        for pos in range(b * _HPTE_BLOCK, min(len(data), (b + 1) * _HPTE_BLOCK) - 15, 16):
            v = int.from_bytes(data[pos : pos + 8], "big")
            r = int.from_bytes(data[pos + 8 : pos + 16], "big")
            if v or r:
                yield (offset + pos) // 16, v, r


def _check_copy(
    lpar: Lpar,
    label: str,
    source: int,
    dest: int,
    copied: int,
    released: IntervalSet,
    report: VerifyReport,
) -> None:
    ps = lpar.config.page_size
    wrong: list[int] = []
    compared = 0
    got, want = bytearray(_CHUNK), bytearray(_CHUNK)
    for off in range(0, copied, _CHUNK):
        n = min(_CHUNK, copied - off)
        if released.contains(dest + off, dest + off + n):
            continue
        if len(got) != n:
            got, want = bytearray(n), bytearray(n)
        lpar.read_phys_into(dest + off, memoryview(got))
        lpar.expected_into(source + off, memoryview(want))
        compared += n
        if got == want:
            continue
        for p in range(0, n, ps):
            if released.overlaps(dest + off + p, dest + off + p + ps):
                continue
            if got[p : p + ps] != want[p : p + ps]:
                wrong.append(source + off + p)
    if wrong:
        report.fail(
            f"{label}: {len(wrong)} pages differ from the crashed kernel's "
            f"(source addresses {_hexlist(wrong, len(wrong))})"
        )
    else:
        report.note(f"{label}: {compared:#x} bytes match")


# ---------------------------------------------------------------- dump files


def detect_format(path: str | os.PathLike[str]) -> str:
    """``elf`` or ``kdump``; or raise :class:`HvsimError` naming what the file is."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise HvsimError(f"{os.fspath(path)}: cannot read: {exc.strerror}") from None
    if head.startswith(b"\x7fELF"):
        return "elf"
    if head.startswith(b"KDUMP   "):
        return "kdump"
    if head.startswith(b"makedumpfile"):
        raise HvsimError(
            f"{os.fspath(path)}: a flattened makedumpfile stream; rebuild it with "
            "'makedumpfile -R' and convert to ELF ('makedumpfile -E') to verify it"
        )
    raise HvsimError(f"{os.fspath(path)}: not an ELF core or a known dump format")


@dataclass
class _Counts:
    ok: int = 0
    wrong: list[int] = field(default_factory=list)
    wrong_released: int = 0
    missing: list[int] = field(default_factory=list)
    zero_excluded: int = 0
    lost_absent: int = 0
    lost_other: list[int] = field(default_factory=list)
    scratch: int = 0
    level_excluded: dict[str, int] = field(default_factory=dict)
    not_excluded: list[int] = field(default_factory=list)


class _FileMemory:
    """Physical memory of a dump file: which ranges it holds, reading them, and its notes."""

    dump_level: int = 1
    byteorder: str
    vmcoreinfo: dict[str, str] | None
    prstatus: list[ElfPrstatus]
    present: IntervalSet

    def read(self, paddr: int, size: int) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _ElfMemory(_FileMemory):
    def __init__(self, core: ElfCore) -> None:
        self.core = core
        self.byteorder = core.byteorder
        self.vmcoreinfo = core.vmcoreinfo
        self.prstatus = list(core.prstatus)
        self.present = IntervalSet()
        for ph in core.segments:
            self.present.add(ph.p_paddr, ph.p_paddr + ph.p_memsz)

    def read(self, paddr: int, size: int) -> bytes:
        return self.core.read_phys(paddr, size)

    def close(self) -> None:
        self.core.close()


class _KdumpMemory(_FileMemory):
    """A kdump-compressed dump: pages present per its second bitmap, decoded on demand."""

    def __init__(self, dump: KdumpFile) -> None:
        self.dump = dump
        self.byteorder = dump.byteorder
        ps = dump.page_size
        notes = parse_notes(dump.notes, dump.byteorder, dump.path, dump.sub_header.offset_note)
        self.prstatus = [
            parse_prstatus(n.desc, dump.byteorder, dump.path)
            for n in notes
            if n.type == NT_PRSTATUS and n.name == "CORE"
        ]
        self.vmcoreinfo = None
        for n in notes:
            if n.name == "VMCOREINFO":
                self.vmcoreinfo = parse_vmcoreinfo(n.desc, dump.path)
        self.dump_level = dump.sub_header.dump_level
        self.present = IntervalSet()
        for first, end in dump.present_runs():
            self.present.add(first * ps, min(end, dump.max_mapnr) * ps)

    def read(self, paddr: int, size: int) -> bytes:
        ps = self.dump.page_size
        first, last = paddr // ps, (paddr + size - 1) // ps
        data = b"".join(self.dump.read_page(pfn) for pfn in range(first, last + 1))
        skip = paddr - first * ps
        return data[skip : skip + size]

    def close(self) -> None:
        self.dump.close()


def _open_dump(path: str | os.PathLike[str]) -> _FileMemory:
    try:
        if detect_format(path) == "kdump":
            from drgn_hvdump.codecs import decompress_page

            return _KdumpMemory(KdumpFile.open(path, decompress_page))
        elf = _ElfMemory(ElfCore.open(path))
        elf.dump_level = _manifest_level(path)
        return elf
    except FormatError as exc:
        raise HvsimError(str(exc)) from None


def _manifest_level(path: str | os.PathLike[str]) -> int:
    """An ELF dump's level, from the manifest beside it (1 without a readable one)."""
    from pathlib import Path

    from drgn_hvdump.dumpdir.manifest import read_manifest
    from drgn_hvdump.errors import HvdumpError

    try:
        level = read_manifest(Path(os.fspath(path)).parent).dump.dump_level
    except HvdumpError:
        return 1
    return 1 if level is None else level


def _level_exclusions(lpar: Lpar, level: int, report: VerifyReport) -> list[tuple[int, int, str]]:
    """The crashed kernel's pages ``level`` leaves out, by type (its own record)."""
    if level & ~1 == 0:
        return []
    image = lpar.crashed_kernel()
    model = image.memory_model() if image is not None else None
    if model is None:
        report.note(
            f"dump level {level}: the crashed kernel has no simulated memory model "
            "(adopted image or small LPAR); pages it left out are counted as missing"
        )
        return []
    return list(expected_exclusions(model, level, IntervalSet([(0, lpar.config.memory)])))


def verify_dump(
    lpar: Lpar, path: str | os.PathLike[str], *, kind: DumpKind = "auto"
) -> VerifyReport:
    """Compare a dump file with the crashed kernel's memory, page by page."""
    info = _need_dump(lpar)
    cfg = lpar.config
    fname = os.fspath(path)
    report = VerifyReport()
    mem = _open_dump(path)
    try:
        if mem.byteorder != cfg.endian:
            report.fail(
                f"{fname}: {mem.byteorder}-endian dump, but the LPAR's kernel is {cfg.endian}-endian"
            )
            report.summary = f"FAILED: {fname} is not a dump of {lpar.path}"
            return report
        if kind == "auto":
            kind = _detect_kind(lpar, info, mem)
        report.note(
            f"{fname}: "
            + (
                "raw /proc/vmcore copy: low memory taken from the hypervisor's copy"
                if kind == "vmcore"
                else "collected dump: crashed memory at physical addresses"
            )
        )
        _check_notes(lpar, info, mem, report)
        excluded = _level_exclusions(lpar, mem.dump_level, report)
        try:
            counts = _compare_pages(lpar, info, mem, kind, excluded)
        except FormatError as exc:
            # A page the dump holds but cannot give back is a broken dump, not a crash of ours.
            report.fail(str(exc))
            report.summary = f"FAILED: {fname} is damaged"
            return report
    finally:
        mem.close()
    ps = cfg.page_size
    c = counts
    if c.wrong:
        extra = (
            f" ({c.wrong_released} released before they were saved?)" if c.wrong_released else ""
        )
        report.fail(f"wrong pages: {len(c.wrong)}{extra}: {_hexlist(c.wrong, len(c.wrong))}")
    if c.missing:
        report.fail(f"missing pages: {len(c.missing)}: {_hexlist(c.missing, len(c.missing))}")
    if c.not_excluded:
        report.fail(
            f"pages dump level {mem.dump_level} leaves out, held by the dump: "
            f"{len(c.not_excluded)}: {_hexlist(c.not_excluded, len(c.not_excluded))}"
        )
    if c.level_excluded:
        per = ", ".join(f"{n} {k}" for k, n in sorted(c.level_excluded.items()))
        report.note(f"pages left out by dump level {mem.dump_level}: {per}")
    if c.lost_other:
        line = (
            f"pages in lost ranges holding other data: {len(c.lost_other)}: "
            f"{_hexlist(c.lost_other, len(c.lost_other))}"
        )
        if kind == "collected":
            report.fail(line + " (a dump must leave lost pages out, not fill them)")
        else:
            report.note(line + " (expected in a raw vmcore)")
    if c.lost_absent:
        report.note(f"pages in lost ranges, absent as they should be: {c.lost_absent}")
    for start, end, why in info.lost:
        report.note(f"lost range {start:#x}-{end:#x}: {why}")
    if c.zero_excluded:
        report.note(f"zero pages left out: {c.zero_excluded}")
    if c.scratch:
        report.note(f"scratch area pages not compared (hypervisor's save area): {c.scratch}")
    report.counts = {
        "ok": c.ok,
        "wrong": len(c.wrong),
        "missing": len(c.missing),
        "zero_excluded": c.zero_excluded,
        "lost_absent": c.lost_absent,
        "lost_other": len(c.lost_other),
        "scratch": c.scratch,
        "level_excluded": sum(c.level_excluded.values()),
        "not_excluded": len(c.not_excluded),
        "page_size": ps,
    }
    total = cfg.memory // ps
    report.summary = (
        f"{'OK' if report.ok else 'FAILED'}: {fname} vs {lpar.path} (dump of generation "
        f"{info.generation}): {c.ok} of {total} pages match, {len(c.wrong)} wrong, "
        f"{len(c.missing)} missing, {c.zero_excluded} zero excluded, "
        + (
            f"{sum(c.level_excluded.values())} left out by level {mem.dump_level}, "
            if excluded
            else ""
        )
        + f"{c.lost_absent + len(c.lost_other)} lost, {c.scratch} scratch"
    )
    return report


def _sample_pages(lpar: Lpar, count: int) -> list[int]:
    """Addresses of up to ``count`` non-zero crashed pages spread over low memory."""
    ps = lpar.config.page_size
    out = []
    step = _RMO // 64
    for addr in range(0, _RMO, step):
        page = lpar.expected(addr, ps)
        if any(page):
            out.append(addr)
        if len(out) >= count:
            break
    return out


def _detect_kind(lpar: Lpar, info: DumpInfo, mem: _FileMemory) -> DumpKind:
    if info.fadump:
        return "collected"  # fadump's vmcore maps boot memory back at its own addresses
    ps = lpar.config.page_size
    rmo_dest, _, rmo_copied = info.sections["rmo"]
    samples = [a for a in _sample_pages(lpar, 16) if a + ps <= rmo_copied]
    if not samples:
        return "collected"
    at_zero = at_copy = 0
    for a in samples:
        want = lpar.expected(a, ps)
        if mem.present.contains(a, a + ps) and mem.read(a, ps) == want:
            at_zero += 1
        if (
            mem.present.contains(rmo_dest + a, rmo_dest + a + ps)
            and mem.read(rmo_dest + a, ps) == want
        ):
            at_copy += 1
    return "vmcore" if at_copy > at_zero else "collected"


def _check_notes(lpar: Lpar, info: DumpInfo, core: _FileMemory, report: VerifyReport) -> None:
    image = lpar.crashed_kernel()
    assert image is not None
    if core.vmcoreinfo is None:
        report.note("no VMCOREINFO note in the dump (drgn and crash need it)")
    else:
        # The crashed kernel's own text is the reference: an adopted real
        # kernel that never reached crash_save_vmcoreinfo() has no CRASHTIME.
        own = parse_vmcoreinfo(image.vmcoreinfo())
        want = {k: own[k] for k in ("OSRELEASE", "PAGESIZE", "CRASHTIME") if k in own}
        bad = [k for k, v in want.items() if core.vmcoreinfo.get(k) != v]
        if bad:
            report.fail(
                "VMCOREINFO differs from the crashed kernel's: "
                + ", ".join(f"{k}={core.vmcoreinfo.get(k)!r} (expected {want[k]!r})" for k in bad)
            )
    if core.prstatus:
        expected = {(s.regs["NIA"], s.regs["GPR01"]) for s in lpar.expected_cpu_states()}
        got = {(p.pr_reg.nip, p.pr_reg.gpr[1]) for p in core.prstatus}
        if got != expected:
            report.fail(
                f"NT_PRSTATUS notes: {len(got - expected)} CPUs' registers (NIA, R1) do not "
                f"match the crashed CPUs' ({len(core.prstatus)} notes, {len(expected)} CPUs)"
            )
        else:
            report.note(f"NT_PRSTATUS notes: {len(got)} CPUs match")


def _compare_pages(
    lpar: Lpar,
    info: DumpInfo,
    mem: _FileMemory,
    kind: DumpKind,
    excluded: list[tuple[int, int, str]],
) -> _Counts:
    cfg = lpar.config
    ps = cfg.page_size
    counts = _Counts()
    left_out = _TypedRanges(excluded)
    lost = IntervalSet((a, b) for a, b, _ in info.lost)
    if kind == "vmcore":
        # The capture kernel's own memory above the copied 256 MiB is lost too.
        lost.add(_RMO, cfg.reserve_size)
    scratch_start, scratch_end = info.scratch
    scratch = IntervalSet([(scratch_start - scratch_start % ps, -(-scratch_end // ps) * ps)])
    released = IntervalSet(lpar.released_ranges())
    rmo_dest = info.sections["rmo"][0] if "rmo" in info.sections else 0
    want = bytearray(_CHUNK)
    for base in range(0, cfg.memory, _CHUNK):
        n = min(_CHUNK, cfg.memory - base)
        if len(want) != n:
            want = bytearray(n)
        # Into a reused bytearray: comparing bytes with a bytearray is a memcmp,
        # with a memoryview it is element by element.
        lpar.expected_into(base, memoryview(want))
        # Where in the file each page of this chunk comes from.
        src = base
        if kind == "vmcore" and base < _RMO:
            src = rmo_dest + base
        if (
            mem.present.contains(src, src + n)
            and not lost.overlaps(base, base + n)
            and not (scratch.overlaps(base, base + n))
            and not left_out.ranges.overlaps(base, base + n)
        ):
            got = mem.read(src, n)
            if got == want:
                counts.ok += n // ps
                continue
        _compare_chunk(lpar, counts, want, base, src, mem, lost, scratch, released, left_out)
    return counts


class _TypedRanges:
    """Byte ranges with a type each, looked up by address."""

    def __init__(self, ranges: list[tuple[int, int, str]]) -> None:
        self.items = sorted(ranges)
        self.starts = [a for a, _, _ in self.items]
        self.ranges = IntervalSet((a, b) for a, b, _ in self.items)

    def type_at(self, addr: int) -> str | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0 and addr < self.items[i][1]:
            return self.items[i][2]
        return None


def _compare_chunk(
    lpar: Lpar,
    counts: _Counts,
    want: bytearray,
    base: int,
    src: int,
    mem: _FileMemory,
    lost: IntervalSet,
    scratch: IntervalSet,
    released: IntervalSet,
    left_out: _TypedRanges,
) -> None:
    ps = lpar.config.page_size
    zero = native.zero_pages(want, ps)
    for i in range(len(want) // ps):
        addr = base + i * ps
        at = src + i * ps
        if scratch.overlaps(addr, addr + ps):
            counts.scratch += 1
            continue
        page = want[i * ps : (i + 1) * ps]
        present = mem.present.contains(at, at + ps)
        if lost.overlaps(addr, addr + ps):
            if not present:
                counts.lost_absent += 1
            elif mem.read(at, ps) == page:
                counts.ok += 1
            else:
                counts.lost_other.append(addr)
            continue
        level_type = left_out.type_at(addr)
        if level_type is not None:
            if present:
                counts.not_excluded.append(addr)
            else:
                counts.level_excluded[level_type] = counts.level_excluded.get(level_type, 0) + 1
            continue
        if not present:
            if zero[i]:
                counts.zero_excluded += 1
            else:
                counts.missing.append(addr)
            continue
        if mem.read(at, ps) == page:
            counts.ok += 1
        else:
            counts.wrong.append(addr)
            if released.overlaps(at, at + ps):
                counts.wrong_released += 1
