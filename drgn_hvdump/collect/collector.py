"""``hvdump collect``: copy a waiting dump out, durably, and give memory back as it goes.

One pass over the plan's chunks (:mod:`drgn_hvdump.collect.plan`): read a
chunk from ``/proc/vmcore``, scan zero pages and take its XXH64 (native code),
compress its pages in worker threads, decompress each compressed page again in
checker threads and compare it with the page read, write the chunk where the
plan puts it; an I/O thread waits for the checks, syncs, drops the chunk from
the page cache and reads it back, comparing the stored bytes byte for byte
with the ones written. Only then is the chunk
journaled as durable and are the release writes whose pages are now all
durable made (``--release progressive``), always in the plan's order.
The journal (``DIR/journal.jsonl``, one fsynced JSON line per event) makes a
killed collection resumable: chunks it lists are never read again, and a
release that was started but not confirmed is decided from ``MemTotal`` (which
grows by exactly the pages a write frees) before anything is written again.
"""

from __future__ import annotations

import json
import mmap
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drgn_hvdump import native
from drgn_hvdump.capture import CaptureInterface, DumpState, open_capture
from drgn_hvdump.collect.codecs import Codec, PageBatch, check_batch, compress_batch, get_codec
from drgn_hvdump.collect.filewrite import WriteGate
from drgn_hvdump.collect.output import (
    ElfOutput,
    KdumpOutput,
    SidecarOutput,
    create_file,
    disk_error,
)
from drgn_hvdump.collect.plan import Chunk, Plan, ReleaseWrite, make_plan
from drgn_hvdump.collect.progress import Progress
from drgn_hvdump.collect.progress_view import PLAN_FILE, register_collection, write_plan_file
from drgn_hvdump.collect.scrub import ScrubRange, apply_scrub, load_filter
from drgn_hvdump.errors import FormatError, HvdumpError
from drgn_hvdump.formats.dump_header import build_dump_header
from drgn_hvdump.formats.elfcore import (
    NT_PRSTATUS,
    PAGE_OFFSET_PPC64,
    ElfCore,
    LoadSegment,
    Note,
    build_core_header,
    build_notes,
    build_prstatus,
    note_desc_offset,
)
from drgn_hvdump.formats.kdump import plan_kdump
from drgn_hvdump.formats.regsave import cpu_state_to_pt_regs, parse_regsave
from drgn_hvdump.formats.vmcoreinfo import VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE
from drgn_hvdump.fsutil import write_atomic
from drgn_hvdump.intervals import IntervalSet

__all__ = [
    "DUMP_NAMES",
    "HVDUMP_NOTE_NAME",
    "CollectOptions",
    "CollectResult",
    "collect",
]

HVDUMP_NOTE_NAME = "HVDUMP"
NOTE_DUMP_HEADER = 1
NOTE_REGSAVE = 2
DUMP_NAMES = {"kdump": "dump.kdump", "elf": "dump.elf"}
JOURNAL = "journal.jsonl"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
# Pages per compression call: 4 MiB (64 pages of 64 KiB, 1024 of 4 KiB), so
# a C call is long next to its Python overhead and a chunk still splits
# into several batches for the worker threads.
_BATCH_BYTES = 4 << 20


@dataclass
class CollectOptions:
    """Everything ``hvdump collect`` takes."""

    root: Path
    output: Path
    format: str = "kdump"
    compress: str = "zstd"
    level: int | None = None
    release: str = "progressive"
    threads: int = 1
    chunk_size: int = 16 << 20
    dry_run: bool = False
    json: bool = False
    progress: bool | None = None
    scrub: Path | None = None
    accept_partial: bool = False
    # Test and benchmark hook: called with an event name ("chunk", "release").
    hook: Callable[[str, int], None] | None = None


@dataclass
class CollectResult:
    output: Path
    dump_file: Path
    manifest: dict[str, Any]
    resumed: bool
    already_done: bool = False
    plan_text: list[str] = field(default_factory=list)


class Journal:
    """Append-only, fsynced JSON lines; a torn last line (killed mid-write) is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        if path.exists():
            lines = path.read_bytes().split(b"\n")
            for n, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    self.records.append(json.loads(line))
                except ValueError:
                    if n < len(lines) - 2:
                        raise FormatError("journal line is not JSON", path=str(path)) from None
        self._fd = -1

    def open(self) -> None:
        self._fd = create_file(str(self.path))
        size = os.fstat(self._fd).st_size
        if size:
            data = os.pread(self._fd, 1, size - 1)
            if data != b"\n":
                # A torn line: cut it so the next record starts on its own line.
                text = os.pread(self._fd, size, 0)
                os.ftruncate(self._fd, text.rfind(b"\n") + 1)
        os.lseek(self._fd, 0, os.SEEK_END)

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        os.write(self._fd, line)
        os.fdatasync(self._fd)
        self.records.append(record)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def write_json_atomic(path: Path, value: Any) -> None:
    write_atomic(path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode())


def read_memtotal(root: Path) -> int | None:
    """``MemTotal`` of ``ROOT/proc/meminfo`` in kB (None when the file is not there)."""
    try:
        text = (root / "proc/meminfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1])
    raise FormatError("no MemTotal line", path=str(root / "proc/meminfo"))


def read_boot_id(root: Path) -> str | None:
    """``ROOT/proc/sys/kernel/random/boot_id``: changes at every boot (None when absent)."""
    try:
        return (root / "proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


# hvsim's /proc/meminfo keeps 1/64 of the memory it has for "kernel overhead":
# MemTotal = (avail - avail // 64) // 1024 kB, avail = RAM minus reserved pages.
_HVSIM_OVERHEAD_SHIFT = 6


def memtotal_after(before_kb: int, new_pages: tuple[int, ...], page_size: int) -> set[int]:
    """Every ``MemTotal`` (kB) a release that frees ``n`` new pages can leave, ``n`` in ``new_pages``.

    Linux adds each freed page to ``totalram_pages``, so MemTotal grows by
    exactly ``n * page_size / 1024`` kB. hvsim's MemTotal also takes 1/64 of the
    available memory away (rounded down to whole kB); its exact value is found
    by solving for the available bytes, a whole number of pages.
    """
    out = set()
    for n in new_pages:
        if n <= 0:
            continue
        out.add(before_kb + n * page_size // 1024)
        guess = before_kb * 1024 * 64 // 63 // page_size
        for pages in range(max(0, guess - 2), guess + 3):
            avail = pages * page_size
            if (avail - (avail >> _HVSIM_OVERHEAD_SHIFT)) // 1024 == before_kb:
                after = avail + n * page_size
                out.add((after - (after >> _HVSIM_OVERHEAD_SHIFT)) // 1024)
    return out


@dataclass
class ReleaseLog:
    """What the journal says about release writes: made (in plan order) and pending."""

    done: list[int] = field(default_factory=list)
    pending: dict[str, Any] | None = None
    last_mt: int | None = None
    boot: str | None = None
    final_seen: bool = False

    @classmethod
    def replay(cls, records: list[dict[str, Any]]) -> ReleaseLog:
        log = cls()
        for rec in records:
            t = rec.get("t")
            if t == "rel" and rec.get("s") == "intent":
                log.pending = rec
                log.boot = rec.get("boot", log.boot)
                log.final_seen = log.final_seen or bool(rec.get("final"))
            elif t == "rel" and rec.get("s") == "done":
                log.done.append(int(rec["w"]))
                log.pending = None
                log.last_mt = rec.get("mt", log.last_mt)
            elif t == "boot":
                log.done = []
                log.pending = None
                log.last_mt = rec.get("mt")
                log.boot = rec.get("boot")
        return log


class _Vmcore:
    """``/proc/vmcore``: physical reads through its PT_LOADs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.core = ElfCore.open(path)
        except OSError as exc:
            raise HvdumpError(f"{path}: cannot open: {exc.strerror}") from None
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def file_offset(self, paddr: int, size: int) -> int:
        for ph in self.core.segments:
            if ph.p_paddr <= paddr and paddr + size <= ph.p_paddr + ph.p_filesz:
                return int(ph.p_offset + paddr - ph.p_paddr)
        raise FormatError(
            f"physical range {paddr:#x}+{size:#x} is in no PT_LOAD with file data",
            path=str(self.path),
            hint="the vmcore does not match the dump header",
        )

    def read_into(self, paddr: int, buf: bytearray | mmap.mmap) -> None:
        offset = self.file_offset(paddr, len(buf))
        view = memoryview(buf)
        done = 0
        while done < len(buf):
            n = os.preadv(self.fd, [view[done:]], offset + done)
            if n <= 0:
                raise FormatError(
                    f"short read: {done} of {len(buf)} bytes",
                    path=str(self.path),
                    offset=offset + done,
                )
            done += n

    def close(self) -> None:
        os.close(self.fd)
        self.core.close()


def _dump_state(capture: CaptureInterface, accept_partial: bool) -> tuple[DumpState, list[str]]:
    state = capture.state()
    warnings = list(state.warnings)
    if not state.dump_waiting:
        raise HvdumpError(f"{capture.root}: no dump to collect: {state.reason}")
    if state.header is None or state.release_map is None:
        raise HvdumpError(f"{capture.root}: the waiting dump cannot be read: {state.reason}")
    if not state.valid:
        partial = "incomplete" in state.reason and state.header.cpu.length_copied
        if not (partial and accept_partial):
            hint = " (collect what was copied with --accept-partial)" if partial else ""
            raise HvdumpError(f"{capture.root}: {state.reason}{hint}")
        warnings.append(f"the hypervisor reported a partial copy: {state.reason}")
    return state, warnings


def _notes(
    cpu_raw: bytes, header_raw: bytes, vmcoreinfo_desc: bytes | None, byteorder: Any
) -> tuple[list[Note], int]:
    states = parse_regsave(cpu_raw, "register save area")
    notes = [
        Note("CORE", NT_PRSTATUS, build_prstatus(cpu_state_to_pt_regs(s), byteorder, pid=s.cpu + 1))
        for s in states
    ]
    if vmcoreinfo_desc is not None:
        notes.append(Note(VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE, vmcoreinfo_desc))
    notes.append(Note(HVDUMP_NOTE_NAME, NOTE_DUMP_HEADER, header_raw))
    notes.append(Note(HVDUMP_NOTE_NAME, NOTE_REGSAVE, cpu_raw))
    return notes, len(states)


class _Collection:
    def __init__(self, opts: CollectOptions) -> None:
        self.opts = opts
        self.out_dir = opts.output
        self.progress = Progress(json_lines=opts.json, tty=opts.progress)
        self.t0 = time.monotonic()
        self.samples: list[tuple[float, int]] = []
        self.events: list[dict[str, Any]] = []
        self.freed = IntervalSet()

    # -- small helpers ---------------------------------------------------------

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 4)

    def reserved_now(self, plan: Plan) -> int:
        span = self.freed.intersect(plan.reserved.addr, plan.memory)
        return plan.reserved_bytes - sum(b - a for a, b in span)

    def sample(self, plan: Plan) -> None:
        self.samples.append((self.now(), self.reserved_now(plan)))

    def hook(self, event: str, n: int) -> None:
        if self.opts.hook is not None:
            self.opts.hook(event, n)


def _plan_lines(plan: Plan, opts: CollectOptions, dump_file: Path) -> list[str]:
    gib = 1 << 30
    kinds: dict[str, int] = {}
    for c in plan.chunks:
        kinds[c.kind] = kinds.get(c.kind, 0) + c.size
    lines = [
        f"output: {dump_file} ({opts.format}"
        + (f", {opts.compress} pages" if opts.format == "kdump" else ", sparse")
        + f"), metadata and manifest in {opts.output}",
        f"read: {plan.read_bytes() / gib:.2f} GiB in {len(plan.chunks)} chunks of up to "
        f"{opts.chunk_size >> 20} MiB: "
        + ", ".join(f"{k} {v / gib:.3f} GiB" for k, v in kinds.items()),
        "memory: "
        + ", ".join(f"{a:#x}+{s:#x}" for a, s in plan.segments)
        + f" (low memory from the copy at {plan.copied['rmo'].addr:#x})",
        f"release ({opts.release}): {len(plan.writes)} writes, "
        f"{plan.reserved_bytes / gib:.2f} GiB reserved now",
    ]
    if opts.release != "never":
        for w in plan.writes:
            lines.append(f"  release {w.addr:#x} {w.size:#x}{' (scratch)' if w.scratch else ''}")
    lines.extend(f"warning: {w}" for w in plan.warnings)
    return lines


def collect(opts: CollectOptions) -> CollectResult:
    """Collect the dump under ``opts.root`` into ``opts.output`` (resuming if it holds a journal)."""
    if opts.format not in DUMP_NAMES:
        raise HvdumpError(f"unknown format {opts.format!r}: choose kdump or elf")
    if opts.release not in ("progressive", "at-end", "never"):
        raise HvdumpError(f"unknown release policy {opts.release!r}")
    codec = get_codec(opts.compress, opts.level) if opts.format == "kdump" else None
    threads = max(1, opts.threads)
    c = _Collection(opts)
    out = opts.output
    journal_path = out / JOURNAL
    journal = Journal(journal_path) if journal_path.exists() else None
    if journal is not None and any(r.get("t") == "done" for r in journal.records):
        manifest = json.loads((out / MANIFEST).read_text())
        return CollectResult(out, out / manifest["dump"]["file"], manifest, True, already_done=True)

    capture = open_capture(opts.root)
    if journal is not None and opts.release != "never" and not opts.dry_run:
        finished = _finish_after_last_release(opts, journal, capture)
        if finished is not None:
            return finished
    state, warnings = _dump_state(capture, opts.accept_partial)
    assert state.header is not None
    vm = _Vmcore(capture.vmcore_path)
    try:
        return _collect(c, opts, codec, threads, capture, state, warnings, vm, journal)
    finally:
        vm.close()
        c.progress.close()


def _finish_after_last_release(
    opts: CollectOptions, journal: Journal, capture: CaptureInterface
) -> CollectResult | None:
    """A run killed during or after the last release: the dump is gone, the data is saved.

    The manifest was written (with the last write not yet made) before that
    write; the kernel re-registers with it, so the dump no longer waiting
    means it was made (or the dump was invalidated some other way): either
    way nothing is left to release.
    """
    log = ReleaseLog.replay(journal.records)
    last = log.pending if log.pending is not None else None
    if last is None or not last.get("final"):
        finals = [r for r in journal.records if r.get("t") == "rel" and r.get("final")]
        if not finals or finals[-1].get("s") != "done":
            return None
        last = finals[-1]
    if capture.state().dump_waiting:
        return None
    out = opts.output
    try:
        manifest: dict[str, Any] = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        raise HvdumpError(
            f"{out / MANIFEST}: missing or unreadable, but the journal says the last release "
            "was made; the dump data is saved: run hvdump verify on the directory"
        ) from None
    rel = manifest["release"]
    for w in rel["writes"]:
        if w.get("final"):
            w["done"] = True
    rel["events"].append(
        {
            "t": None,
            "note": "at the rerun the dump no longer waited: the last release re-registered it",
        }
    )
    try:
        journal.open()
        if log.pending is not None:
            journal.append({"t": "rel", "w": last["w"], "s": "done", "final": True, "gone": True})
        write_json_atomic(out / MANIFEST, manifest)
        journal.append({"t": "done", "time": time.time()})
    except OSError as exc:
        raise disk_error(str(out / MANIFEST), exc, "cannot write the manifest") from None
    finally:
        journal.close()
    return CollectResult(out, out / manifest["dump"]["file"], manifest, True)


def _collect(
    c: _Collection,
    opts: CollectOptions,
    codec: Codec | None,
    threads: int,
    capture: CaptureInterface,
    state: DumpState,
    warnings: list[str],
    vm: _Vmcore,
    journal: Journal | None,
) -> CollectResult:
    assert state.header is not None
    core = vm.core
    byteorder = core.byteorder
    info = core.vmcoreinfo or {}
    try:
        ps = int(info["PAGESIZE"])
    except (KeyError, ValueError):
        raise FormatError(
            "VMCOREINFO has no PAGESIZE", path=str(vm.path), hint="cannot tell the page size"
        ) from None
    memory = max((ph.p_paddr + ph.p_memsz for ph in core.segments), default=0)
    plan = make_plan(state, page_size=ps, memory=memory, chunk_size=opts.chunk_size)
    for ch in plan.chunks:
        vm.file_offset(ch.src, ch.size)
    warnings += plan.warnings
    out = opts.output
    dump_file = out / DUMP_NAMES[opts.format]
    if opts.dry_run:
        return CollectResult(
            out, dump_file, {}, False, plan_text=_plan_lines(plan, opts, dump_file)
        )

    header_raw = build_dump_header(state.header)
    fingerprint = {
        "header": header_raw.hex(),
        "format": opts.format,
        "compress": codec.name if codec else None,
        "level": opts.level,
        "chunk_size": opts.chunk_size,
        "page_size": ps,
        "memory": memory,
        "reserved": [plan.reserved.addr, plan.reserved.size],
        "scrub": str(opts.scrub) if opts.scrub else None,
    }
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(out, 0o700)
    except OSError as exc:
        raise disk_error(str(out), exc, "cannot create the output directory") from None
    resumed = journal is not None and bool(journal.records)
    if journal is None:
        journal = Journal(out / JOURNAL)
    if resumed and journal.records[0].get("fingerprint") != fingerprint:
        raise HvdumpError(
            f"{out}: holds a journal of another collection (different dump or options); "
            "use another --output directory"
        )
    uts = list(journal.records[0].get("utsname") or []) if resumed else _utsname(vm, plan, info)
    try:
        journal.open()
        if not resumed:
            journal.append(
                {"t": "start", "fingerprint": fingerprint, "utsname": uts, "time": time.time()}
            )
    except OSError as exc:
        raise disk_error(str(out / JOURNAL), exc, "cannot write the journal") from None

    durable = IntervalSet()
    done_chunks: dict[int, dict[str, Any]] = {}
    for rec in journal.records:
        if rec.get("t") == "chunk":
            done_chunks[rec["i"]] = rec
            ch = plan.chunks[rec["i"]]
            durable.add(ch.src, ch.src_end)
    rel_log = ReleaseLog.replay(journal.records)
    if rel_log.done != plan.order[: len(rel_log.done)] or (
        rel_log.pending is not None and rel_log.pending["w"] != plan.order[len(rel_log.done)]
    ):
        raise HvdumpError(
            f"{out / JOURNAL}: its release writes are not in this version's plan order; "
            "use another --output directory"
        )
    for i in rel_log.done:
        c.freed.add(*plan.writes[i].span)
    c.sample(plan)

    # Metadata first: the register save area makes the PRSTATUS notes.
    cpu_chunk = next((ch for ch in plan.chunks if ch.kind == "cpu"), None)
    regsave = SidecarOutput(str(out / "regsave.bin"), plan.copied["cpu"].size, ps)
    hpte = SidecarOutput(str(out / "hpte.bin"), plan.copied["hpte"].size, ps)
    if cpu_chunk is None:
        raise HvdumpError(f"{opts.root}: the hypervisor saved no CPU state")
    if cpu_chunk.index in done_chunks:
        cpu_raw = regsave.read_back(0, cpu_chunk.size)
        if native.hash64(cpu_raw) != done_chunks[cpu_chunk.index]["xxh64"]:
            raise HvdumpError(f"{out}/regsave.bin: does not match its journaled checksum")
    else:
        buf = bytearray(cpu_chunk.size)
        vm.read_into(cpu_chunk.src, buf)
        cpu_raw = bytes(buf)
    notes, ncpus = _notes(cpu_raw, header_raw, _vmcoreinfo_raw(core), byteorder)
    scrub: list[ScrubRange] = load_filter(opts.scrub, info, memory) if opts.scrub else []
    eraseinfo = "".join(r.eraseinfo_line() for r in scrub).encode()

    output: ElfOutput | KdumpOutput
    try:
        if opts.format == "elf":
            layout = build_core_header(
                notes, [LoadSegment(a, s) for a, s in plan.segments], byteorder, page_size=ps
            )
            output = ElfOutput(str(dump_file), layout, ps, resumed)
        else:
            assert codec is not None
            machine = "ppc64" if byteorder == "big" else "ppc64le"
            klayout = plan_kdump(
                byteorder=byteorder,
                page_size=ps,
                max_mapnr=memory // ps,
                ranges=[(a // ps, (a + s) // ps) for a, s in plan.segments],
                notes=build_notes(notes, byteorder),
                vmcoreinfo=note_desc_offset(notes, VMCOREINFO_NOTE_NAME, byteorder),
                nr_cpus=ncpus,
                utsname=[*uts[:4], machine, *uts[5:]],
                timestamp=int(info.get("CRASHTIME", "0") or 0),
                codec_flag=codec.flag,
                eraseinfo_size=len(eraseinfo),
            )
            output = KdumpOutput(str(dump_file), klayout, codec, resumed)
            ends = [
                r["off"] + r["len"] for r in done_chunks.values() if r["kind"] in ("rmo", "mem")
            ]
            output.set_data_end(max(ends, default=klayout.data_start))
    except OSError as exc:
        raise disk_error(str(dump_file), exc, "cannot create the dump file") from None

    try:
        write_plan_file(
            out,
            root=opts.root,
            header_hex=header_raw.hex(),
            dump_file=dump_file.name,
            fmt=opts.format,
            page_size=ps,
            memory=memory,
            chunks=[(ch.index, ch.kind, ch.src, ch.dst, ch.size) for ch in plan.chunks],
            writes=[(w.addr, w.size, *w.span) for w in plan.writes],
        )
    except OSError as exc:
        raise disk_error(str(out / PLAN_FILE), exc, "cannot write the plan") from None
    register_collection(opts.root, out)

    runner = _Runner(
        c, opts, plan, vm, capture, journal, output, regsave, hpte, codec, threads, scrub
    )
    runner.durable = durable
    runner.done_chunks = done_chunks
    runner.writes_done = set(rel_log.done)
    runner.pos = len(rel_log.done)
    runner.warnings = warnings
    try:
        if opts.release != "never":
            runner.resolve_releases(rel_log)
        if opts.release == "progressive":
            runner.release_ready()
        runner.run()
        if opts.release != "never":
            runner.release_ready(final=True)
        if isinstance(output, KdumpOutput):
            output.finish(eraseinfo)
        else:
            output.finish()
    except OSError as exc:
        need = runner.space_needed()
        raise disk_error(str(dump_file), exc, "write failed", need) from None
    finally:
        output.close()
        regsave.close()
        hpte.close()

    # The last release re-registers the dump (vmcore and release_region go):
    # everything, the manifest too, is durable before it is made.
    def write_manifest() -> dict[str, Any]:
        m = runner.manifest(state, warnings, dump_file, notes, ncpus, scrub, resumed)
        try:
            write_json_atomic(out / MANIFEST, m)
        except OSError as exc:
            raise disk_error(str(out / MANIFEST), exc, "cannot write the manifest") from None
        return m

    try:
        manifest = write_manifest()
        if opts.release != "never" and runner.pos < len(plan.order):
            runner.release_last()
            manifest = write_manifest()
        journal.append({"t": "done", "time": time.time()})
    except OSError as exc:
        raise disk_error(str(out / JOURNAL), exc, "cannot write the journal") from None
    finally:
        journal.close()
    return CollectResult(out, dump_file, manifest, resumed)


def _utsname(vm: _Vmcore, plan: Plan, info: dict[str, str]) -> list[str]:
    """The crashed kernel's ``init_uts_ns.name``, read as makedumpfile reads it.

    Called before anything is released (the journal keeps it for a rerun).
    """
    fallback = ["Linux", "unknown", info.get("OSRELEASE", ""), "unknown", "", "(none)"]
    try:
        vaddr = int(info["SYMBOL(init_uts_ns)"], 16)
    except (KeyError, ValueError):
        return fallback
    paddr = vaddr - PAGE_OFFSET_PPC64 + 4  # struct uts_namespace: a 4-byte kref first
    size = 6 * 65
    rmo = plan.copied["rmo"]
    has_rmo = any(ch.kind == "rmo" for ch in plan.chunks)
    if has_rmo and paddr >= 0 and paddr + size <= rmo.size:
        src = rmo.addr + paddr
    elif plan.reserved.addr <= paddr and paddr + size <= plan.scratch.addr:
        src = paddr
    else:
        return fallback
    buf = bytearray(size)
    vm.read_into(src, buf)
    fields = [bytes(buf[i * 65 : (i + 1) * 65]).split(b"\0", 1)[0] for i in range(6)]
    if fields[0] != b"Linux" or not all(f.isascii() for f in fields):
        return fallback
    return [f.decode("ascii") for f in fields]


def _vmcoreinfo_raw(core: ElfCore) -> bytes | None:
    for note in core.notes:
        if note.name == VMCOREINFO_NOTE_NAME and note.type == VMCOREINFO_NOTE_TYPE:
            return note.desc
    return None


@dataclass
class _InFlight:
    chunk: Chunk
    buf: bytearray | mmap.mmap
    zero: bytes
    xxh64: int
    prepared: list[Future[tuple[PageBatch, Future[str]]]]
    read_s: float
    written: Any = None
    verify: Future[str] | None = None
    # The page checks of a kdump chunk (decompress and compare with ``buf``,
    # which is kept until they are done); the I/O thread waits for them.
    checks: list[Future[str]] = field(default_factory=list)


class _Runner:
    """The chunk pipeline and the release bookkeeping of one collection run."""

    def __init__(
        self,
        c: _Collection,
        opts: CollectOptions,
        plan: Plan,
        vm: _Vmcore,
        capture: CaptureInterface,
        journal: Journal,
        output: ElfOutput | KdumpOutput,
        regsave: SidecarOutput,
        hpte: SidecarOutput,
        codec: Codec | None,
        threads: int,
        scrub: list[ScrubRange],
    ) -> None:
        self.c = c
        self.opts = opts
        self.plan = plan
        self.vm = vm
        self.capture = capture
        self.journal = journal
        self.output = output
        self.regsave = regsave
        self.hpte = hpte
        self.codec = codec
        self.threads = threads
        self.scrub = scrub
        self.durable = IntervalSet()
        self.done_chunks: dict[int, dict[str, Any]] = {}
        self.writes_done: set[int] = set()
        self.io: ThreadPoolExecutor | None = None
        self._gate = WriteGate()
        # Fixed for the run, so that writes never run on two threads at once
        # (even if the file system turns O_DIRECT down part-way).
        self._write_on_io = isinstance(output, KdumpOutput) and output.data.direct
        self.checkers: ThreadPoolExecutor | None = None
        self._total: int | None = None
        self._done_bytes = 0
        self._free_bufs: dict[int, list[bytearray | mmap.mmap]] = {}
        self.pos = 0  # plan.order[:pos] are made (in this boot of the capture kernel)
        self.warnings: list[str] = []
        self.stored_bytes = 0
        self.read_bytes = 0
        self.timings = {
            "read": 0.0,
            "compress_wait": 0.0,
            "write": 0.0,
            "verify_wait": 0.0,
            "release": 0.0,
        }
        self.start = time.monotonic()

    # -- space estimate for a full disk ----------------------------------------

    def space_needed(self) -> int:
        left = sum(ch.size for ch in self.plan.chunks if ch.index not in self.done_chunks)
        ratio = self.stored_bytes / self.read_bytes if self.read_bytes else 1.0
        return int(left * min(1.0, ratio + 0.05))

    # -- the pipeline -----------------------------------------------------------

    def _prepare(self, view: memoryview, zero: bytes) -> tuple[PageBatch, Future[str]]:
        """In a worker: compress a batch of pages and hand them to a checker thread
        (or, with one thread in all, check them here)."""
        assert self.codec is not None
        ps = self.plan.page_size
        batch = compress_batch(self.codec, view, zero, ps)
        if self.checkers is not None:
            return batch, self.checkers.submit(check_batch, self.codec, view, zero, batch, ps)
        done: Future[str] = Future()
        done.set_result(check_batch(self.codec, view, zero, batch, ps))
        return batch, done

    def _write(self, item: _InFlight) -> None:
        ch = item.chunk
        view = memoryview(item.buf)
        t = time.monotonic()
        if ch.kind == "cpu":
            item.written = self.regsave.write(ch.dst, view, b"")
            self.regsave.sync()
        elif ch.kind == "hpte":
            item.written = self.hpte.write(ch.dst, view, item.zero)
            self.hpte.sync()
        elif isinstance(self.output, KdumpOutput) and not item.prepared:
            item.written = self.output.write_raw(ch.dst, view, item.zero)
        elif isinstance(self.output, KdumpOutput):
            batches: list[PageBatch] = []
            for fut in item.prepared:
                t1 = time.monotonic()
                batch, check = fut.result()
                self.timings["compress_wait"] += time.monotonic() - t1
                batches.append(batch)
                item.checks.append(check)
            item.written = self.output.write(ch.dst, batches)
        else:
            item.written = self.output.write(ch.dst, view, item.zero)
        self.timings["write"] += time.monotonic() - t
        self.stored_bytes += item.written.length
        self.read_bytes += ch.size

    def _write_verify(self, item: _InFlight) -> str:
        """In the I/O thread: write the chunk, then verify it (see :meth:`_verify`).

        O_DIRECT writes are here, not on the reading thread, because they wait
        for the disk.
        """
        self._write(item)
        item.prepared = []
        return self._verify(item)

    def read_back(self, ch: Chunk) -> bytes:
        if ch.kind == "cpu":
            return self.regsave.read_back(ch.dst, ch.size)
        if ch.kind == "hpte":
            return self.hpte.read_back(ch.dst, ch.size)
        return self.output.read_back(ch.dst, ch.size)

    def _verify(self, item: _InFlight) -> str:
        """In the I/O thread: sync, then read back (page cache dropped) and compare.

        A kdump chunk's pages are decompressed and compared with the pages read
        (whose XXH64 the journal keeps) by the checker threads; this waits for
        them, then syncs and compares the stored bytes and the descriptors read
        back byte for byte with what was written. Other chunks are read back
        whole and hashed.
        """
        ch = item.chunk
        if isinstance(self.output, KdumpOutput) and ch.kind in ("rmo", "mem"):
            for check in item.checks:
                problem = check.result()
                if problem:
                    return problem
            self.output.sync()
            return self.output.check_back(ch.dst, item.written)
        if ch.kind not in ("cpu", "hpte"):
            self.output.sync()
        got = native.hash64(self.read_back(ch))
        if got != item.xxh64:
            return f"reads back with checksum {got:#018x}, expected {item.xxh64:#018x}"
        return ""

    def _finish(self, item: _InFlight) -> None:
        ch = item.chunk
        assert item.verify is not None
        t = time.monotonic()
        problem = item.verify.result()
        self.timings["verify_wait"] += time.monotonic() - t
        if problem:
            raise HvdumpError(
                f"{self.output.path}: chunk {ch.index} ({ch.kind} {ch.src:#x}+{ch.size:#x}) "
                f"{problem}; nothing of it was released"
            )
        rec = {
            "t": "chunk",
            "i": ch.index,
            "kind": ch.kind,
            "xxh64": item.xxh64,
            "off": item.written.offset,
            "len": item.written.length,
            "zero": sum(item.zero),
        }
        self.journal.append(rec)
        self.done_chunks[ch.index] = rec
        self._done_bytes += ch.size
        # Checked and durable: the read buffer is filled again by a later chunk
        # (fresh 16 MiB buffers cost page faults and zeroing).
        free = self._free_bufs.setdefault(len(item.buf), [])
        if len(free) < self.threads + 1:
            free.append(item.buf)
        item.buf = bytearray()
        self.durable.add(ch.src, ch.src_end)
        self.c.hook("chunk", ch.index)
        if self.opts.release == "progressive":
            self.release_ready()
        self.c.sample(self.plan)
        self._report()

    def _report(self) -> None:
        # Running totals: summing over every chunk after each one is quadratic
        # (65536 chunks of 16 MiB in a 1 TiB dump).
        if self._total is None:
            self._total = self.plan.read_bytes()
            self._done_bytes = sum(self.plan.chunks[i].size for i in self.done_chunks)
        total, done = self._total, self._done_bytes
        released = self.plan.reserved_bytes - self.c.reserved_now(self.plan)
        self.c.progress.update(
            done, total, released, self.c.reserved_now(self.plan), self.stored_bytes
        )

    def run(self) -> None:
        todo = [ch for ch in self.plan.chunks if ch.index not in self.done_chunks]
        checkers = 0 if self.threads == 1 else max(1, self.threads // 4)
        # Chunks in flight (read, compressing, checking, syncing): two more
        # than the compressors. With one compressor and one checker, 3 against
        # 4 was faster in 3 of 3 same-run pairs (2.62-3.27 s against
        # 3.10-3.63 s for 1 GiB) and kept 20 MiB less.
        depth = self.threads - checkers + 2
        ps = self.plan.page_size
        # ``threads`` threads compress and check. With one, it does both; with
        # more, a quarter of them (at least one) only check (decompress and
        # compare, about a third of the cost of compressing) and the others
        # only compress: on 2 vCPUs one compressor and one checker took 2.66 s
        # for 1 GiB where two threads doing both took 3.07 s (same run; 3.17
        # against 3.00 s in another, with 4 chunks in flight), and two
        # compressors and a checker 3.12 s. Checkers shut down last: a worker
        # still running hands its pages to them.
        with (
            ThreadPoolExecutor(
                max_workers=max(1, checkers), thread_name_prefix="hvdump-check"
            ) as check_pool,
            ThreadPoolExecutor(
                max_workers=self.threads - checkers, thread_name_prefix="hvdump"
            ) as pool,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="hvdump-io") as io,
        ):
            self.io = io
            self.checkers = check_pool if checkers else None
            waiting: deque[_InFlight] = deque()
            written: deque[_InFlight] = deque()
            for ch in todo:
                t = time.monotonic()
                free = self._free_bufs.get(ch.size)
                # Page-aligned (an anonymous mapping), so O_DIRECT can write
                # whole pages straight from it (drgn_hvdump/collect/filewrite.py).
                buf = free.pop() if free else mmap.mmap(-1, ch.size)
                self.vm.read_into(ch.src, buf)
                if self.scrub and ch.kind in ("rmo", "mem"):
                    apply_scrub(buf, ch.dst, self.scrub)
                whole = ch.size // ps * ps
                zero = native.zero_pages(memoryview(buf)[:whole], ps) if ch.kind != "cpu" else b""
                item = _InFlight(ch, buf, zero, native.hash64(buf), [], time.monotonic() - t)
                self.timings["read"] += item.read_s
                if self.codec is not None and self.codec.flag and ch.kind in ("rmo", "mem"):
                    view = memoryview(buf)
                    step = max(1, _BATCH_BYTES // ps)
                    for i in range(0, len(zero), step):
                        sub = zero[i : i + step]
                        item.prepared.append(
                            pool.submit(self._prepare, view[i * ps : (i + len(sub)) * ps], sub)
                        )
                waiting.append(item)
                while len(waiting) + len(written) >= depth:
                    self._advance(pool, waiting, written)
            while waiting or written:
                self._advance(pool, waiting, written)

    def _advance(
        self, pool: ThreadPoolExecutor, waiting: deque[_InFlight], written: deque[_InFlight]
    ) -> None:
        if written and (
            (written[0].verify is not None and written[0].verify.done()) or not waiting
        ):
            self._finish(written.popleft())
            return
        if waiting:
            item = waiting.popleft()
            assert self.io is not None
            if self._write_on_io:
                item.verify = self.io.submit(
                    self._gate.run,
                    "not written: an earlier chunk's write failed",
                    self._write_verify,
                    item,
                )
            else:
                # through the page cache a write returns at once: the I/O
                # thread's sync of this chunk overlaps the next chunk's write
                self._write(item)
                item.prepared = []
                item.verify = self.io.submit(self._verify, item)
            written.append(item)
            return
        self._finish(written.popleft())

    # -- releases ----------------------------------------------------------------

    def release_ready(self, final: bool = False) -> None:
        """Make the writes that are safe now, in plan order, all but the last.

        The order is fixed (``Plan.order``) so the writes made are always a
        prefix of it, and each one frees pages no earlier write freed: a rerun
        can tell from ``MemTotal`` whether an interrupted write was made.
        """
        if self.opts.release == "never":
            return
        order = self.plan.order
        while self.pos < len(order) - 1:
            w = self.plan.writes[order[self.pos]]
            if not self.plan.write_is_safe(w, self.durable):
                if final:
                    raise HvdumpError(f"internal error: release {w.extent} is not safe at the end")
                return
            self._release(w)

    def release_last(self) -> None:
        """The last write: the counters reach their targets and the kernel re-registers."""
        w = self.plan.writes[self.plan.order[-1]]
        if not self.plan.write_is_safe(w, self.durable):
            raise HvdumpError(f"internal error: release {w.extent} is not safe at the end")
        self._release(w, final=True)
        state = self.capture.state()
        if state.dump_waiting:
            msg = (
                f"the last release ({w.extent}) did not re-register the dump: the LPAR is "
                "not protected against the next crash; check the kernel's release counters "
                "(hvsim status) and the release writes in the manifest"
            )
            self.warnings.append(msg)
            self.c.events.append({"t": self.c.now(), "warning": msg})

    def _release(self, w: ReleaseWrite, final: bool = False) -> None:
        t = time.monotonic()
        root = self.opts.root
        before = read_memtotal(root)
        self.journal.append(
            {
                "t": "rel",
                "w": w.index,
                "s": "intent",
                "addr": w.addr,
                "size": w.size,
                "mt": before,
                "pages": list(w.new_pages),
                "boot": read_boot_id(root),
                **({"final": True} if final else {}),
            }
        )
        self.c.hook("release-intent", w.index)
        self.capture.release(w.extent)
        self.c.hook("release", w.index)
        after = None if final else read_memtotal(root)
        if (
            before is not None
            and after is not None
            and after not in memtotal_after(before, w.new_pages, self.plan.page_size)
        ):
            msg = (
                f"release {w.extent}: MemTotal went from {before} to {after} kB, not by the "
                f"{'/'.join(map(str, w.new_pages))} pages it frees: a rerun after a kill "
                "could not tell whether a write was made"
            )
            if msg not in self.warnings:
                self.warnings.append(msg)
        self.journal.append(
            {
                "t": "rel",
                "w": w.index,
                "s": "done",
                "mt": after,
                "time": self.c.now(),
                **({"final": True} if final else {}),
            }
        )
        self.pos += 1
        self.writes_done.add(w.index)
        self.c.freed.add(*w.span)
        self.c.events.append({"t": self.c.now(), "release": [w.addr, w.size]})
        self.timings["release"] += time.monotonic() - t
        self.c.sample(self.plan)

    def resolve_releases(self, log: ReleaseLog) -> None:
        """Check the kernel against the journal before any write is made again.

        A write started but not confirmed (killed in between) is decided from
        ``MemTotal``, which grows by exactly the pages a write frees (each
        planned write frees at least one): unchanged, it was not made;
        grown as planned, it was; anything else stops the run. A capture kernel
        that rebooted since (its boot id changed, or MemTotal fell: reserved
        memory is reserved again and the counters start at zero) undoes every
        release: they are made again, in order (their data is already saved).
        """
        root = self.opts.root
        now, boot = read_memtotal(root), read_boot_id(root)
        pending = log.pending
        reboot = ""
        if boot is not None and log.boot is not None and boot != log.boot:
            reboot = f"boot id {log.boot} -> {boot}"
        elif pending is not None:
            w = self.plan.writes[pending["w"]]
            before = pending.get("mt")
            if now is None or before is None:
                raise HvdumpError(
                    f"{root}: cannot tell whether the interrupted release {w.extent} was made: "
                    f"{root / 'proc/meminfo'} has no MemTotal; check the kernel's release "
                    "counters before collecting again"
                )
            expect = memtotal_after(before, w.new_pages, self.plan.page_size)
            if now == before:
                pass  # not made: it is made again, in order
            elif now in expect:
                self.journal.append(
                    {"t": "rel", "w": w.index, "s": "done", "mt": now, "resolved": "MemTotal"}
                )
                self.pos += 1
                self.writes_done.add(w.index)
                self.c.freed.add(*w.span)
                self.c.events.append({"t": self.c.now(), "release": [w.addr, w.size]})
            elif now < before:
                reboot = f"MemTotal fell from {before} to {now} kB"
            else:
                raise HvdumpError(
                    f"{root}: cannot tell whether the interrupted release {w.extent} was made: "
                    f"MemTotal is {now} kB, was {before} kB before it, and the write frees "
                    f"{'/'.join(map(str, w.new_pages))} pages of {self.plan.page_size} bytes "
                    f"(MemTotal {' or '.join(map(str, sorted(expect)))} kB); something else "
                    "changed the memory size (memory hotplug, a balloon, another release "
                    "tool?): check the kernel's release counters; nothing was released"
                )
        elif log.done and log.last_mt is not None and now is not None and now != log.last_mt:
            if now < log.last_mt:
                reboot = f"MemTotal fell from {log.last_mt} to {now} kB"
            else:
                raise HvdumpError(
                    f"{root}: MemTotal grew from {log.last_mt} to {now} kB since this "
                    "collection's last release: something else released memory or changed "
                    "its size; check the kernel's release counters; nothing was released"
                )
        if reboot:
            msg = (
                f"the capture kernel rebooted since the last run ({reboot}): the "
                f"{self.pos} releases made before were undone (their memory was reused, "
                "its data was already saved); releasing again from the start"
            )
            self.journal.append({"t": "boot", "mt": now, "boot": boot, "why": reboot})
            self.warnings.append(msg)
            self.c.events.append({"t": self.c.now(), "warning": msg})
            self.pos = 0
            self.writes_done.clear()
            self.c.freed = IntervalSet()
            self.c.sample(self.plan)

    # -- the manifest --------------------------------------------------------------

    def manifest(
        self,
        state: DumpState,
        warnings: list[str],
        dump_file: Path,
        notes: list[Note],
        ncpus: int,
        scrub: list[ScrubRange],
        resumed: bool,
    ) -> dict[str, Any]:
        plan = self.plan
        assert state.header is not None
        elapsed = time.monotonic() - self.start
        chunks = []
        for ch in plan.chunks:
            rec = self.done_chunks[ch.index]
            chunks.append(
                {
                    "index": ch.index,
                    "kind": ch.kind,
                    "src": ch.src,
                    "dst": ch.dst,
                    "size": ch.size,
                    "xxh64": f"{rec['xxh64']:016x}",
                    "stored_offset": rec["off"],
                    "stored_bytes": rec["len"],
                    "zero_pages": rec["zero"],
                }
            )
        st = os.stat(dump_file)
        return {
            "version": MANIFEST_VERSION,
            "tool": "hvdump collect",
            "source": {
                "root": str(self.opts.root),
                "interface": state.interface,
                "vmcore": str(self.vm.path),
                "byteorder": self.vm.core.byteorder,
                "page_size": plan.page_size,
                "memory": plan.memory,
                "dump_header": build_dump_header(state.header).hex(),
                "valid": state.valid,
                "reason": state.reason,
                "vmcoreinfo": {
                    k: v
                    for k, v in (self.vm.core.vmcoreinfo or {}).items()
                    if k in ("OSRELEASE", "PAGESIZE", "CRASHTIME")
                },
                "cpus": ncpus,
            },
            "dump": {
                "file": dump_file.name,
                "format": self.opts.format,
                "compression": self.codec.name if self.codec else None,
                "level": self.opts.level,
                "size": st.st_size,
                "allocated": st.st_blocks * 512,
                "segments": [[a, s] for a, s in plan.segments],
            },
            "metadata": {
                "regsave": {
                    "file": "regsave.bin",
                    "src": plan.copied["cpu"].addr,
                    "size": plan.copied["cpu"].size,
                },
                "hpte": {
                    "file": "hpte.bin",
                    "src": plan.copied["hpte"].addr,
                    "size": plan.copied["hpte"].size,
                },
                "dump_header_note": HVDUMP_NOTE_NAME,
            },
            "release": {
                "policy": self.opts.release,
                "reserved_start": plan.reserved.addr,
                "reserved_bytes": plan.reserved_bytes,
                "scratch": [plan.scratch.addr, plan.scratch.size],
                "writes": [
                    {
                        "addr": w.addr,
                        "size": w.size,
                        "scratch": w.scratch,
                        "new_pages": list(w.new_pages),
                        "done": w.index in self.writes_done,
                        **({"final": True} if w.index == plan.order[-1] else {}),
                    }
                    for w in plan.writes
                ],
                "order": plan.order,
                "reserved_over_time": self.c.samples,
                "events": self.c.events,
            },
            "chunks": chunks,
            "scrub": [r.to_json() for r in scrub],
            "timings": {
                "elapsed_s": round(elapsed, 4),
                "threads": self.threads,
                "resumed": resumed,
                **{k: round(v, 4) for k, v in self.timings.items()},
            },
            "warnings": warnings,
        }
