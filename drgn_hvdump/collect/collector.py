"""``hvdump collect``: copy a waiting dump out, durably, and give memory back as it goes.

One pass over the plan's chunks (:mod:`drgn_hvdump.capture.plan`): read a
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

import mmap
import os
import time
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field, replace
from pathlib import Path
from typing import Any

from drgn_hvdump import native
from drgn_hvdump.capture import CaptureInterface, DumpState, open_capture
from drgn_hvdump.capture.base import NotProtectedError
from drgn_hvdump.capture.plan import Chunk, Plan
from drgn_hvdump.capture.vmcore import Vmcore
from drgn_hvdump.codecs import Codec, get_codec
from drgn_hvdump.collect.engine import Job, PageEngine
from drgn_hvdump.collect.levels import (
    decide_exclusions,
    exclusions_from_record,
    exclusions_record,
    reader_for,
)
from drgn_hvdump.collect.output import (
    ElfOutput,
    KdumpOutput,
    SidecarOutput,
)
from drgn_hvdump.collect.ownership import DumpBusyError, DumpLock, Owner
from drgn_hvdump.collect.progress import Progress
from drgn_hvdump.collect.releases import ReleaseLog, Releases, RunRecord
from drgn_hvdump.collect.scrub import ScrubRange, apply_scrub, load_filter
from drgn_hvdump.dumpdir.filewrite import DumpFile
from drgn_hvdump.dumpdir.identity import dump_identity
from drgn_hvdump.dumpdir.journal import Journal
from drgn_hvdump.dumpdir.manifest import (
    MAX_CHUNK,
    MEMORY_KINDS,
    VMCOREINFO_KEPT,
    CaptureSource,
    ChunkRecord,
    DumpFileInfo,
    Manifest,
    MetaFile,
    ReleaseRecord,
    ReleaseWriteRecord,
    Source,
    parse_manifest,
    save_manifest,
)
from drgn_hvdump.dumpdir.names import (
    DUMP_NAMES,
    HPTE_FILE,
    HVDUMP_NOTE_NAME,
    JOURNAL,
    MANIFEST,
    NOTE_DUMP_HEADER,
    NOTE_FADUMP_MEM,
    NOTE_REGSAVE,
    PLAN_FILE,
    REGSAVE_FILE,
)
from drgn_hvdump.dumpdir.registry import (
    read_registration,
    register_collection,
    unregister_collection,
)
from drgn_hvdump.dumpdir.remote import DumpDir, RemoteDir, SshTarget, open_dump_dir
from drgn_hvdump.dumpdir.view import write_plan_file
from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.formats.elfcore import (
    NT_PRSTATUS,
    ElfCore,
    LoadSegment,
    Note,
    build_core_header,
    build_notes,
    note_desc_offset,
    numbered_notes,
)
from drgn_hvdump.formats.kdump import plan_kdump
from drgn_hvdump.formats.regsave import cpu_state_to_pt_regs, parse_regsave, prstatus_notes
from drgn_hvdump.formats.utsname import read_utsname
from drgn_hvdump.formats.vmcoreinfo import VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE
from drgn_hvdump.fsutil import disk_error, flock_holders, take_flock
from drgn_hvdump.intervals import IntervalSet
from drgn_hvdump.model.mem_sections import Exclusions
from drgn_hvdump.model.page_types import DL_ZERO

__all__ = [
    "CollectOptions",
    "CollectResult",
    "collect",
]


@dataclass
class CollectOptions:
    """Everything ``hvdump collect`` takes."""

    root: Path
    # A directory here, or on an archive host (hvdump receive writes it there).
    output: Path | SshTarget
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
    # makedumpfile's -d bits: above 1, page cache, user and free pages are left
    # out (decided from each page's struct page) and released without saving.
    dump_level: int = 1
    # Another collector holds the dump or the directory: wait for it (at most
    # wait_timeout seconds, None for no limit) instead of refusing.
    wait: bool = False
    wait_timeout: float | None = None
    # Test and benchmark hook: called with an event name ("chunk", "release").
    hook: Callable[[str, int], None] | None = None


@dataclass
class CollectResult:
    output: Path | str
    """The output directory (``ssh://host/path`` on an archive host)."""
    dump_file: Path
    manifest: Manifest | None
    """None for a dry run."""
    resumed: bool
    already_done: bool = False
    plan_text: list[str] = field(default_factory=list)


def _dump_state(capture: CaptureInterface, accept_partial: bool) -> tuple[DumpState, list[str]]:
    state = capture.state()
    warnings = list(state.warnings)
    if not state.dump_waiting:
        raise HvdumpError(f"{capture.root}: no dump to collect: {state.reason}")
    if not state.readable:
        raise HvdumpError(f"{capture.root}: the waiting dump cannot be read: {state.reason}")
    if not state.valid:
        if not (state.partial and accept_partial):
            hint = " (collect what was copied with --accept-partial)" if state.partial else ""
            raise HvdumpError(f"{capture.root}: {state.reason}{hint}")
        warnings.append(f"the hypervisor reported a partial copy: {state.reason}")
    return state, warnings


def _notes(
    cpu_raw: bytes | None, core: ElfCore, header_raw: bytes, interface: str
) -> tuple[list[Note], int]:
    """The dump's notes: one ``NT_PRSTATUS`` per CPU numbered ``pr_pid`` = CPU + 1, the
    crashed kernel's VMCOREINFO, and hvdump's own (the firmware's header or structure,
    the register save area whole).

    phyp dump: the CPUs' registers come from the register save area ``cpu_raw``.
    fadump: from the capture kernel's notes (``pr_pid`` 0, in the CPU state
    data's order, which is CPU order), numbered here so that drgn finds them.
    """
    order = core.byteorder
    if cpu_raw is not None:
        states = parse_regsave(cpu_raw, "register save area")
        notes = prstatus_notes(((s.cpu, cpu_state_to_pt_regs(s)) for s in states), order)
    else:
        notes = numbered_notes(core.prstatus, order)
    ncpus = len(notes)
    vmcoreinfo_desc = _vmcoreinfo_raw(core)
    if vmcoreinfo_desc is not None:
        notes.append(Note(VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE, vmcoreinfo_desc))
    header_type = NOTE_FADUMP_MEM if interface == "fadump" else NOTE_DUMP_HEADER
    notes.append(Note(HVDUMP_NOTE_NAME, header_type, header_raw))
    if cpu_raw is not None:
        notes.append(Note(HVDUMP_NOTE_NAME, NOTE_REGSAVE, cpu_raw))
    return notes, ncpus


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
        + (
            f" (low memory from the copy at {plan.copied['rmo'].addr:#x})"
            if "rmo" in plan.copied
            else ""
        ),
        f"release ({opts.release}): {len(plan.writes)} writes, "
        f"{plan.reserved_bytes / gib:.2f} GiB reserved now",
    ]
    if opts.release != "never":
        for w in plan.writes:
            lines.append(f"  release {w.addr:#x} {w.size:#x}{' (scratch)' if w.scratch else ''}")
    lines.extend(f"warning: {w}" for w in plan.warnings)
    return lines


def collect(opts: CollectOptions) -> CollectResult:
    """Collect the dump under ``opts.root`` into ``opts.output`` (resuming if it holds a journal).

    The collection owns the dump (:class:`~drgn_hvdump.collect.ownership.DumpLock`)
    and its output directory (a ``flock`` on it) from start to end; a second
    collector is refused with who holds them, or waits with ``opts.wait``.
    """
    if opts.format not in DUMP_NAMES:
        raise HvdumpError(f"unknown format {opts.format!r}: choose kdump or elf")
    if opts.release not in ("progressive", "at-end", "never"):
        raise HvdumpError(f"unknown release policy {opts.release!r}")
    if not 0 < opts.chunk_size <= MAX_CHUNK:
        raise HvdumpError(
            f"--chunk-size {opts.chunk_size}: must be more than 0 and at most 1 GiB "
            "(a chunk is read, hashed and verified in one piece)"
        )
    codec = get_codec(opts.compress, opts.level) if opts.format == "kdump" else None
    threads = max(1, opts.threads)
    c = RunRecord(Progress(json_lines=opts.json, tty=opts.progress), opts.hook)
    capture = open_capture(opts.root)
    from drgn_hvdump.collect.analysable import collect_format

    fmt, why = collect_format(opts.format, capture.vmcore_path)
    if why:  # a kernel drgn cannot read in kdump files: ELF, and say so
        opts, codec = replace(opts, format=fmt), None
        c.progress.message(why)
    if opts.dry_run:
        _say_release_policy(c, opts, capture)
        return _dry_run(opts, capture)
    first = capture.state()
    waiting = first.dump_waiting
    local = opts.output if not isinstance(opts.output, SshTarget) else None
    if not (waiting and first.readable) and local is not None and not os.path.lexists(local):
        _dump_state(capture, opts.accept_partial)  # says why; nothing is created
    lock = DumpLock(opts.root, capture.lock_path)
    out: DumpDir | None = None
    try:
        if waiting:
            # Before the output directory exists: a refused collector leaves nothing.
            lock.acquire(
                wait=opts.wait,
                timeout=opts.wait_timeout,
                on_wait=lambda o: c.progress.message(f"waiting for {o.describe()} to finish"),
            )
        out = _open_output(opts, capture, waiting)
        _lock_output(out, opts, c)
        _say_release_policy(c, opts, capture)
        return _collect_owned(c, opts, codec, threads, capture, out)
    finally:
        c.progress.close()
        lock.release()
        if out is not None:
            out.close()


def _say_release_policy(c: RunRecord, opts: CollectOptions, capture: CaptureInterface) -> None:
    if opts.release == "progressive" and not capture.RELEASES_PROGRESSIVELY:
        c.progress.message(
            f"{capture.name} gives memory back in one write: --release progressive "
            "releases it once the whole dump is saved and verified"
        )


def _open_output(opts: CollectOptions, capture: CaptureInterface, waiting: bool) -> DumpDir:
    """The output directory, opened (created 0700 when a dump waits to fill it)."""
    remote = isinstance(opts.output, SshTarget)
    try:
        return open_dump_dir(opts.output, create=waiting or not remote)
    except HvdumpError as exc:
        if not waiting and str(exc).endswith("no such directory"):
            _dump_state(capture, opts.accept_partial)  # says why; nothing was created
        raise


def _lock_output(out: DumpDir, opts: CollectOptions, c: RunRecord) -> None:
    """The output directory's own ``flock``: one collection writes it at a time."""
    if isinstance(out, RemoteDir):
        pid = out.lock(wait=opts.wait, timeout=opts.wait_timeout)
        if pid is not None:
            raise DumpBusyError(
                opts.root,
                Owner(pid or None, out.location),
                what=f"{out.location}: the output directory is in use on {out.target.host} by",
            )
        return

    def holder() -> Owner | None:
        pids = flock_holders(out.path)
        return Owner(pids[0], str(out.path)) if pids else None

    owner = take_flock(
        out.fd,
        wait=opts.wait,
        timeout=opts.wait_timeout,
        holder=holder,
        unknown=Owner(None, str(out.path)),
        on_wait=lambda o: c.progress.message(f"waiting for {o.describe()} to finish"),
    )
    if owner is not None:
        raise DumpBusyError(opts.root, owner, what=f"{out.path}: the output directory is in use by")


def _dry_run(opts: CollectOptions, capture: CaptureInterface) -> CollectResult:
    state, _ = _dump_state(capture, opts.accept_partial)
    vm = Vmcore(capture.vmcore_path)
    try:
        plan = capture.plan(state, vm, opts.chunk_size)
    finally:
        vm.close()
    target: list[str] = []
    if isinstance(opts.output, SshTarget):
        where: Path | str = opts.output.url
        dump_file = Path(opts.output.path) / DUMP_NAMES[opts.format]
        # A dry run checks the archive host too: login, receiver, directory (nothing made there).
        found = RemoteDir.probe(opts.output)
        target = [
            f"archive host: {opts.output.destination}, hvdump {found['version']}; "
            + f"{found['path']} {'exists and takes files' if found['exists'] else 'can be created'}"
            + f", {found['free_bytes'] / (1 << 30):.1f} GiB free"
        ]
    else:
        where = opts.output
        dump_file = Path(os.path.abspath(opts.output)) / DUMP_NAMES[opts.format]
    return CollectResult(
        where, dump_file, None, False, plan_text=_plan_lines(plan, opts, dump_file) + target
    )


def _identity(capture: CaptureInterface, state: DumpState, vm: Vmcore) -> str:
    return dump_identity(state.header_raw, _vmcoreinfo_raw(vm.core), capture.machine_identity())


def _waiting_identity(capture: CaptureInterface, state: DumpState) -> str | None:
    """The identity of the dump waiting under the root, or None when none (or unreadable)."""
    if not state.dump_waiting or not state.readable:
        return None
    try:
        vm = Vmcore(capture.vmcore_path)
    except HvdumpError:
        return None
    try:
        return _identity(capture, state, vm)
    finally:
        vm.close()


def _collect_owned(
    c: RunRecord,
    opts: CollectOptions,
    codec: Codec | None,
    threads: int,
    capture: CaptureInterface,
    out: DumpDir,
) -> CollectResult:
    journal = Journal.load(out)
    if journal is not None and journal.records and journal.identity is None:
        raise HvdumpError(
            f"{journal.path}: names no dump identity (written by another tool or an older "
            "hvdump); not resumed: use another --output directory"
        )
    if journal is not None and journal.done:
        done = _already_done(opts, out, journal, capture)
        if done is not None:
            return done
        # collected with --release never, the dump still waits: release what is
        # saved, through the same confirmed, journaled releases as a collection
    if journal is not None and journal.records and opts.release != "never":
        finished = _finish_after_last_release(opts, out, journal, capture)
        if finished is not None:
            return finished
    state, warnings = _dump_state(capture, opts.accept_partial)
    vm = Vmcore(capture.vmcore_path)
    try:
        identity = _identity(capture, state, vm)
        if journal is not None and journal.records and journal.identity != identity:
            raise HvdumpError(
                f"{journal.path}: is the journal of another dump (identity {journal.identity}, "
                f"the dump under {opts.root} is {identity}); nothing was read or released: "
                "use another --output directory"
            )
        if journal is None or not journal.records:
            _check_no_other_collection(opts, capture, out, identity)
            facts: dict[str, Any] = {
                "mt": capture.memtotal_kb(),
                "boot": capture.boot_id(),
                "time": time.time(),
            }
        else:
            facts = {k: journal.start.get(k) for k in ("mt", "boot", "time")}
        # At once, so a collector refused meanwhile can say where this one writes.
        why = _register(opts, out.location, identity, facts)
        if why:
            warnings.append(f"{why}: drgn on the live /proc/vmcore will not find this collection")
        return _collect(
            c, opts, codec, threads, capture, state, warnings, vm, out, journal, identity, facts
        )
    finally:
        vm.close()


def _differs_from_saved(
    vm: Vmcore, saved: list[tuple[int, int, int, int]], scrub: list[ScrubRange]
) -> bool:
    """Whether the last chunk the collection saved that is still reserved
    (``(src, dst, size, xxh64)``) reads differently now: the dump waiting is
    then another one.

    The identity cannot tell apart two crashes of one kernel build and memory
    size in the same second on machines whose device trees name no partition;
    their memory does.
    """
    if not saved:
        return False
    src, dst, size, want = saved[-1]
    buf = bytearray(size)
    vm.read_into(src, buf)
    if scrub:
        apply_scrub(buf, dst, scrub)
    return native.hash64(buf) != want


def _register(opts: CollectOptions, out: str, identity: str, facts: dict[str, Any]) -> str:
    """The runtime registry entry of this collection (why not, when it cannot be made)."""
    since = float(facts["time"] or time.time())
    return register_collection(
        opts.root, out, identity, since, mt=facts["mt"], boot=facts["boot"], release=opts.release
    )


def _check_no_other_collection(
    opts: CollectOptions, capture: CaptureInterface, out: DumpDir, identity: str
) -> None:
    """A new collection of a dump that another collection already released part of
    would read reused memory as the dump: refuse, naming the other collection."""
    entry, _ = read_registration(opts.root)
    if entry is None or entry.get("identity") != identity:
        return
    other = str(entry.get("output", ""))
    if other == out.location:
        msg = (
            f"{out.location}: an earlier collection of this dump wrote here and its journal is "
            "gone (removed, or the directory replaced)"
        )
    else:
        msg = f"{opts.root}: this dump is being collected into {other} (pid {entry.get('pid')})"
    mt0, boot0 = entry.get("mt"), entry.get("boot")
    if entry.get("release") == "never" or not isinstance(mt0, int):
        return  # it never releases (without MemTotal no release can be made)
    now, boot = capture.memtotal_kb(), capture.boot_id()
    if now is not None and (boot != boot0 or now == mt0):
        return  # nothing was released since it started (or the capture kernel rebooted)
    raise HvdumpError(
        msg + f"; memory was released since it started (MemTotal {mt0} -> {now} kB): "
        "released memory now holds other data, so a new collection would save it as the "
        f"dump; resume that collection (hvdump collect -o {other})"
        + (" if its directory survives" if other == out.location else "")
    )


def _check_saved_memory(
    manifest: Manifest | None, journal: Journal, capture: CaptureInterface
) -> str | None:
    """For a finished collection whose dump still waits and was never released:
    "another dump" when its saved memory reads differently now, else None."""
    if manifest is None or any(r.get("t") == "rel" for r in journal.records):
        return None
    try:
        chunks = [
            (ch.src, ch.dst, ch.size, int(ch.xxh64, 16))
            for ch in manifest.chunks
            if ch.kind in MEMORY_KINDS and ch.src is not None
        ]
        scrub = [ScrubRange(**r) for r in manifest.scrub or ()]
    except (ValueError, TypeError):
        return None  # hvdump verify says what is wrong with it
    vm = Vmcore(capture.vmcore_path)
    try:
        if _differs_from_saved(vm, chunks, scrub):
            return "another dump: its memory differs from what was saved"
    finally:
        vm.close()
    return None


def _already_done(
    opts: CollectOptions, out: DumpDir, journal: Journal, capture: CaptureInterface
) -> CollectResult | None:
    """A finished collection in ``out``: the dump it holds, if it is still all there.

    None when its memory is still to be released (it was collected with
    ``--release never`` and this run may release).
    """
    try:
        manifest: Manifest | None = parse_manifest(
            out.read_bytes(MANIFEST), str(out.path / MANIFEST)
        )
    except (OSError, HvdumpError):
        manifest = None
    waiting = _waiting_identity(capture, capture.state())
    if waiting is not None and waiting == journal.identity:
        # nothing of it was released yet (collected with --release never): its
        # memory tells two crashes of one kernel in the same second apart
        waiting = _check_saved_memory(manifest, journal, capture) or waiting
    if waiting is not None and waiting != journal.identity:
        raise HvdumpError(
            f"{out.path}: holds a finished collection of another dump (identity "
            f"{journal.identity}); the dump waiting under {opts.root} ({waiting}) is not "
            "collected: use another --output directory"
        )
    for name, want in journal.file_ids().items():
        st = out.lstat(name)
        if st is None or (st.st_dev, st.st_ino) != want:
            how = "removed" if st is None else "replaced by another file"
            raise HvdumpError(
                f"{out.path / name}: was {how} after the collection finished: the data it "
                "held is not in the directory any more"
                + (
                    "; the dump still waits: collect it into a new --output directory"
                    if waiting is not None
                    else "; its memory was released (the LPAR re-registered): it is lost"
                )
            )
    if manifest is None:
        raise HvdumpError(
            f"{out.path / MANIFEST}: missing or unreadable although the journal says the "
            "collection finished; run hvdump verify on the directory"
        )
    dump = out.path / manifest.dump.file
    if waiting is not None and opts.release != "never":
        return None
    return CollectResult(out.location, dump, manifest, True, already_done=True)


def _finish_after_last_release(
    opts: CollectOptions, out: DumpDir, journal: Journal, capture: CaptureInterface
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
    try:
        manifest = parse_manifest(out.read_bytes(MANIFEST), str(out.path / MANIFEST))
        if manifest.release is None:
            raise HvdumpError("no release record")
    except (OSError, HvdumpError):
        raise HvdumpError(
            f"{out.path / MANIFEST}: missing or unreadable, but the journal says the last "
            "release was made; the dump data is saved: run hvdump verify on the directory"
        ) from None
    manifest = replace(
        manifest,
        release=manifest.release.after_last_release(
            "at the rerun the dump no longer waited: the last release re-registered it"
        ),
    )
    try:
        protected = capture.protect(manifest.source.page_size)
    except NotProtectedError as exc:
        protected = str(exc)
    if protected:
        manifest = replace(manifest, warnings=(*manifest.warnings, f"at the rerun: {protected}"))
    try:
        journal.open(new=False)
        if log.pending is not None:
            journal.append({"t": "rel", "w": last["w"], "s": "done", "final": True, "gone": True})
        save_manifest(out, manifest)
        journal.append({"t": "done", "time": time.time()})
    except OSError as exc:
        raise disk_error(str(out.path / JOURNAL), exc, "cannot write the journal") from None
    finally:
        journal.close()
    unregister_collection(opts.root, journal.identity or "")
    return CollectResult(out.location, out.path / manifest.dump.file, manifest, True)


def _collect(
    c: RunRecord,
    opts: CollectOptions,
    codec: Codec | None,
    threads: int,
    capture: CaptureInterface,
    state: DumpState,
    warnings: list[str],
    vm: Vmcore,
    out_dir: DumpDir,
    journal: Journal | None,
    identity: str,
    facts: dict[str, Any],
) -> CollectResult:
    core = vm.core
    info = core.vmcoreinfo or {}
    # Planned once to learn where the crashed memory is, then, with a dump level,
    # again without the pages it leaves out.
    plan = capture.plan(state, vm, opts.chunk_size)
    excl = _exclusions(c, opts, vm, plan, journal, warnings)
    if excl is not None:
        plan = capture.plan(state, vm, opts.chunk_size, excl.byte_ranges(plan.page_size))
    warnings += plan.warnings
    out = out_dir.path
    dump_file = out / DUMP_NAMES[opts.format]

    header_raw = state.header_raw
    fingerprint = _fingerprint(opts, codec, plan, header_raw)
    resumed = journal is not None and bool(journal.records)
    start_extra = {"exclusions": exclusions_record(excl)} if excl is not None else {}
    journal, uts = _start_journal(
        opts, vm, plan, out_dir, journal, identity, facts, fingerprint, start_extra
    )
    scrub: list[ScrubRange] = load_filter(opts.scrub, info, plan.memory) if opts.scrub else []
    durable, done_chunks, rel_log = _replay_journal(opts, c, vm, plan, out_dir, journal, scrub)

    # Metadata first: the register save area makes phyp's PRSTATUS notes.
    cpu_chunk = next((ch for ch in plan.chunks if ch.kind == "cpu"), None)
    if cpu_chunk is None and "cpu" in plan.copied:
        raise HvdumpError(f"{opts.root}: the hypervisor saved no CPU state")
    known = journal.file_ids()
    files: dict[str, DumpFile] = {}

    def open_file(name: str) -> DumpFile:
        # Files this collection created are opened, never created again: a
        # missing one was caught by _check_files_kept.
        file = out_dir.open_file(name, create=not known, exclusive=not resumed)
        files[name] = file
        return file

    sidecars = _sidecars(out, plan, open_file, files)
    output: ElfOutput | KdumpOutput | None = None
    try:
        cpu_raw = None
        if cpu_chunk is not None:
            journaled = done_chunks.get(cpu_chunk.index)
            cpu_raw = _cpu_state(vm, cpu_chunk, sidecars["cpu"], journaled)
        notes, ncpus = _notes(cpu_raw, core, header_raw, state.interface)
        eraseinfo = "".join(r.eraseinfo_line() for r in scrub).encode()

        try:
            output = _dump_output(
                opts, codec, vm, plan, notes, uts, eraseinfo, done_chunks, resumed,
                dump_file, open_file(dump_file.name),
                excl.level if excl is not None else opts.dump_level & DL_ZERO,
            )  # fmt: skip
            if not known:
                ids = {name: list(fid) for name, fid in out_dir.file_ids(list(files)) if fid}
                journal.append({"t": "files", "ids": ids})
        except OSError as exc:
            raise disk_error(str(dump_file), exc, "cannot create the dump file") from None

        _write_plan(opts, out_dir, plan, identity, header_raw, bool(scrub))
        # Registered again now that the plan is there: the drgn plugin, which
        # looked when the entry first appeared, looks again and finds it.
        _register(opts, out_dir.location, identity, facts)

        runner = _Runner(
            c, opts, plan, vm, capture, journal, output, sidecars, codec, threads, scrub
        )
        runner.exclusions = excl
        runner.durable = durable
        runner.done_chunks = done_chunks
        runner.rel = Releases(
            c, root=opts.root, policy=opts.release, plan=plan, capture=capture,
            journal=journal, out_dir=out_dir, files={**files, JOURNAL: journal.file},
            durable=durable, done=rel_log.done, warnings=warnings, timings=runner.timings,
        )  # fmt: skip

        def write_manifest() -> Manifest:
            m = runner.manifest(state, warnings, dump_file, ncpus, scrub, resumed, identity)
            save_manifest(out_dir, m)
            return m

        manifest = _run_and_release(runner, runner.rel, rel_log, eraseinfo, write_manifest)
    finally:
        if output is not None:
            output.close()
        for side in sidecars.values():
            side.close()
        journal.close()
    if opts.release != "never":
        unregister_collection(opts.root, identity)
    return CollectResult(out_dir.location, dump_file, manifest, resumed)


def _fingerprint(
    opts: CollectOptions, codec: Codec | None, plan: Plan, header_raw: bytes
) -> dict[str, Any]:
    """What a resumed run must share with the run that started the journal."""
    return {
        "header": header_raw.hex(),
        "format": opts.format,
        "compress": codec.name if codec else None,
        "level": opts.level,
        "chunk_size": opts.chunk_size,
        "page_size": plan.page_size,
        "memory": plan.memory,
        "reserved": [plan.reserved.addr, plan.reserved.size],
        "scrub": str(opts.scrub) if opts.scrub else None,
        "dump_level": opts.dump_level,
    }


#: The metadata file of each kind of metadata chunk a plan may have.
_META_FILES = {"cpu": REGSAVE_FILE, "hpte": HPTE_FILE}


def _sidecars(
    out: Path, plan: Plan, open_file: Callable[[str], DumpFile], files: dict[str, DumpFile]
) -> dict[str, SidecarOutput]:
    """The metadata files the plan copies into (phyp: the register save area and the
    HPTEs, as the hypervisor saved them; fadump: none), by chunk kind."""
    sidecars: dict[str, SidecarOutput] = {}
    try:
        for kind, name in _META_FILES.items():
            if kind in plan.copied:
                sidecars[kind] = SidecarOutput(
                    open_file(name), plan.copied[kind].size, plan.page_size
                )
    except OSError as exc:
        for file in files.values():
            file.close()
        raise disk_error(str(out), exc, "cannot create the metadata files") from None
    return sidecars


def _cpu_state(
    vm: Vmcore, cpu: Chunk, regsave: SidecarOutput, journaled: dict[str, Any] | None
) -> bytes:
    """The register save area: read back from ``regsave.bin`` when it is journaled
    (its memory may be released), else from ``/proc/vmcore``."""
    if journaled is not None:
        raw = regsave.read_back(0, cpu.size)
        if native.hash64(raw) != journaled["xxh64"]:
            raise HvdumpError(f"{regsave.path}: does not match its journaled checksum")
        return raw
    buf = bytearray(cpu.size)
    vm.read_into(cpu.src, buf)
    return bytes(buf)


def _dump_output(
    opts: CollectOptions,
    codec: Codec | None,
    vm: Vmcore,
    plan: Plan,
    notes: list[Note],
    uts: list[str],
    eraseinfo: bytes,
    done_chunks: dict[int, dict[str, Any]],
    resumed: bool,
    dump_file: Path,
    file: DumpFile,
    dump_level: int,
) -> ElfOutput | KdumpOutput:
    """The dump file's writer, its headers in place (resumed: where the journal says)."""
    byteorder, ps = vm.core.byteorder, plan.page_size
    kept = plan.kept_segments()
    if opts.format == "elf":
        layout = build_core_header(
            notes, [LoadSegment(a, s) for a, s in kept], byteorder, page_size=ps
        )
        return ElfOutput(file, layout, ps, resumed)
    assert codec is not None
    machine = "ppc64" if byteorder == "big" else "ppc64le"
    klayout = plan_kdump(
        byteorder=byteorder,
        page_size=ps,
        max_mapnr=plan.memory // ps,
        ranges=[(a // ps, (a + s) // ps) for a, s in plan.segments],
        notes=build_notes(notes, byteorder),
        vmcoreinfo=note_desc_offset(notes, VMCOREINFO_NOTE_NAME, byteorder),
        nr_cpus=sum(1 for n in notes if n.type == NT_PRSTATUS and n.name == "CORE"),
        utsname=[*uts[:4], machine, *uts[5:]],
        timestamp=int((vm.core.vmcoreinfo or {}).get("CRASHTIME", "0") or 0),
        codec_flag=codec.flag,
        eraseinfo_size=len(eraseinfo),
        kept=[(a // ps, (a + s) // ps) for a, s in kept],
        dump_level=dump_level,
    )
    output = KdumpOutput(file, klayout, codec, resumed)
    ends = [r["off"] + r["len"] for r in done_chunks.values() if r["kind"] in ("rmo", "mem")]
    output.set_data_end(max(ends, default=klayout.data_start))
    return output


def _write_plan(
    opts: CollectOptions,
    out_dir: DumpDir,
    plan: Plan,
    identity: str,
    header_raw: bytes,
    scrubbed: bool,
) -> None:
    try:
        write_plan_file(
            out_dir.path,
            root=opts.root,
            identity=identity,
            scrubbed=scrubbed,
            header_hex=header_raw.hex(),
            dump_file=DUMP_NAMES[opts.format],
            fmt=opts.format,
            page_size=plan.page_size,
            memory=plan.memory,
            chunks=[(ch.index, ch.kind, ch.src, ch.dst, ch.size) for ch in plan.chunks],
            writes=[(w.addr, w.size, *w.span) for w in plan.writes],
            write=out_dir.write_atomic,
        )
    except OSError as exc:
        raise disk_error(str(out_dir.path / PLAN_FILE), exc, "cannot write the plan") from None


def _start_journal(
    opts: CollectOptions,
    vm: Vmcore,
    plan: Plan,
    out_dir: DumpDir,
    journal: Journal | None,
    identity: str,
    facts: dict[str, Any],
    fingerprint: dict[str, Any],
    extra: dict[str, Any],
) -> tuple[Journal, list[str]]:
    """The journal opened for appending (a new one starts with its ``start`` record,
    bound to the dump's identity) and the crashed kernel's utsname."""
    out = out_dir.path
    resumed = journal is not None and bool(journal.records)
    if journal is None or not journal.records:
        for name in (DUMP_NAMES[opts.format], REGSAVE_FILE, HPTE_FILE, MANIFEST, PLAN_FILE):
            if out_dir.exists(name):
                raise HvdumpError(
                    f"{out / name}: exists, but this directory has no journal of a collection "
                    "that wrote it; use an empty --output directory"
                )
    if journal is None:
        journal = Journal(out_dir)
    if resumed and journal.start.get("fingerprint") != fingerprint:
        raise HvdumpError(
            f"{out}: holds a journal of this dump collected with other options (format, "
            "compression, chunk size, scrub filter or dump level); use the same options or another "
            "--output directory"
        )
    uts = (
        list(journal.start.get("utsname") or [])
        if resumed
        else _utsname(vm, plan, vm.core.vmcoreinfo or {})
    )
    try:
        journal.open(new=not out_dir.exists(JOURNAL))
        if not resumed:
            journal.append(
                {
                    "t": "start",
                    "identity": identity,
                    "fingerprint": fingerprint,
                    "utsname": uts,
                    **facts,
                    **extra,
                }
            )
    except OSError as exc:
        raise disk_error(str(out / JOURNAL), exc, "cannot write the journal") from None
    return journal, uts


def _replay_journal(
    opts: CollectOptions,
    c: RunRecord,
    vm: Vmcore,
    plan: Plan,
    out_dir: DumpDir,
    journal: Journal,
    scrub: list[ScrubRange],
) -> tuple[IntervalSet, dict[int, dict[str, Any]], ReleaseLog]:
    """What the journal says is durable and released, checked against the dump and
    the files before anything is read or released again."""
    out = out_dir.path
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
    if rel_log.pending is not None:
        c.freed.add(*plan.writes[rel_log.pending["w"]].span)
    saved = [
        (ch.src, ch.dst, ch.size, int(done_chunks[ch.index]["xxh64"]))
        for ch in plan.chunks
        if ch.index in done_chunks
        and ch.kind in ("rmo", "mem")
        and not c.freed.overlaps(ch.src, ch.src_end)
    ]
    if _differs_from_saved(vm, saved, scrub):
        raise HvdumpError(
            f"{journal.path}: is the journal of another dump (memory it saved reads "
            f"differently under {opts.root}: another crash of the same kernel in the same "
            "second?); nothing was read or released: use another --output directory"
        )
    _check_files_kept(out_dir, journal, plan, done_chunks, c.freed, DUMP_NAMES[opts.format])
    c.freed = IntervalSet()
    for i in rel_log.done:
        c.freed.add(*plan.writes[i].span)
    c.sample(plan)
    return durable, done_chunks, rel_log


def _run_and_release(
    runner: _Runner,
    rel: Releases,
    rel_log: ReleaseLog,
    eraseinfo: bytes,
    write_manifest: Callable[[], Manifest],
) -> Manifest:
    """Read, store and release everything; the manifest, written before the last
    release (which re-registers the dump: vmcore and release_region go) and after."""
    opts, output = runner.opts, runner.output
    try:
        if opts.release != "never":
            rel.resolve_releases(rel_log)
        else:
            rel.mt_expected = runner.capture.memtotal_kb()
        if opts.release == "progressive":
            rel.release_ready()
        runner.run()
        if opts.release != "never":
            rel.release_ready(final=True)
        if isinstance(output, KdumpOutput):
            output.finish(eraseinfo)
        else:
            output.finish()
    except OSError as exc:
        need = runner.space_needed()
        raise disk_error(output.path, exc, "write failed", need) from None
    try:
        manifest = write_manifest()
        if opts.release != "never" and rel.pos < len(runner.plan.order):
            rel.final_check()
            rel.release_last()
            manifest = write_manifest()
        rel.journal.append({"t": "done", "time": time.time()})
    except OSError as exc:
        raise disk_error(str(rel.journal.path), exc, "cannot write the journal") from None
    return manifest


def _check_files_kept(
    out: DumpDir,
    journal: Journal,
    plan: Plan,
    done: dict[int, dict[str, Any]],
    released: IntervalSet,
    dump_name: str,
) -> None:
    """Before resuming: the files the journal says this collection wrote are still
    there; otherwise say which of the memory they held was already released."""
    known = journal.file_ids()
    if not known:
        return
    gone = {}
    for name, want in known.items():
        st = out.lstat(name)
        if st is None or (st.st_dev, st.st_ino) != want:
            gone[name] = "removed" if st is None else "replaced by another file"
    if not gone:
        return
    kind_file = {**_META_FILES, "rmo": dump_name, "mem": dump_name}
    lost: list[tuple[int, int]] = []
    for i in done:
        ch = plan.chunks[i]
        if kind_file[ch.kind] not in gone:
            continue
        for lo, hi in released.intersect(ch.src, ch.src_end):
            lost.append(
                (ch.dst + lo - ch.src, hi - lo) if ch.kind in ("rmo", "mem") else (lo, hi - lo)
            )
    what = ", ".join(f"{out.path / n} was {how}" for n, how in sorted(gone.items()))
    if not lost:
        raise HvdumpError(
            f"{what} since this collection wrote it; nothing it held was released yet, so "
            f"nothing is lost: remove {out.path} (or use another --output) and run again"
        )
    total = sum(s for _, s in lost)
    ranges = ", ".join(f"{a:#x}+{s:#x}" for a, s in lost[:4]) + (" ..." if len(lost) > 4 else "")
    raise HvdumpError(
        f"{what} after its memory was released: {total / (1 << 20):.0f} MiB of the dump is "
        f"lost ({len(lost)} ranges: {ranges}); the journal and the files left are kept as "
        "they are; the dump cannot be collected whole any more"
    )


def _utsname(vm: Vmcore, plan: Plan, info: dict[str, str]) -> list[str]:
    """The crashed kernel's ``init_uts_ns.name``, read as makedumpfile reads it.

    Called before anything is released (the journal keeps it for a rerun).
    """
    fallback = ["Linux", "unknown", info.get("OSRELEASE", ""), "unknown", "", "(none)"]
    return read_utsname(info, _crashed_reader(vm, plan)) or fallback


def _crashed_reader(vm: Vmcore, plan: Plan) -> Callable[[int, int], bytes | None]:
    """Reads the crashed kernel's memory by its physical address, before any release
    (None: the dump does not hold that range)."""
    rmo = plan.copied.get("rmo")
    has_rmo = rmo is not None and any(ch.kind == "rmo" for ch in plan.chunks)
    # phyp: the kernel's memory above the capture region, where it is; fadump: the
    # vmcore holds all of it at its own addresses (boot memory mapped to its copy).
    in_place = (
        [(plan.reserved.addr, plan.scratch.addr - plan.reserved.addr)]
        if rmo is not None
        else list(plan.segments)
    )

    def read(paddr: int, size: int) -> bytes | None:
        # The low memory the hypervisor copied is read at its copy.
        if has_rmo and rmo is not None and paddr + size <= rmo.size:
            src = rmo.addr + paddr
        elif any(a <= paddr and paddr + size <= a + n for a, n in in_place):
            src = paddr
        else:
            return None
        buf = bytearray(size)
        vm.read_into(src, buf)
        return bytes(buf)

    return read


def _exclusions(
    c: RunRecord,
    opts: CollectOptions,
    vm: Vmcore,
    plan: Plan,
    journal: Journal | None,
    warnings: list[str],
) -> Exclusions | None:
    """What the dump level leaves out: from the journal on a rerun (the memory the
    decision was read from may be released), else decided now, before any release."""
    if journal is not None and journal.records:
        rec = journal.start.get("exclusions")
        return None if rec is None else exclusions_from_record(rec, str(journal.path))
    if opts.dump_level & ~DL_ZERO == 0:
        return None
    ps = plan.page_size
    return decide_exclusions(
        opts.dump_level,
        vm.core.vmcoreinfo or {},
        vm.core.byteorder,
        ps,
        [(a // ps, (a + n) // ps) for a, n in plan.segments],
        reader_for(_crashed_reader(vm, plan)),
        c.progress,
        warnings,
    )


def _vmcoreinfo_raw(core: ElfCore) -> bytes | None:
    for note in core.notes:
        if note.name == VMCOREINFO_NOTE_NAME and note.type == VMCOREINFO_NOTE_TYPE:
            return note.desc
    return None


@dataclass(eq=False)
class _Runner:
    """The release bookkeeping of one collection run around the page engine."""

    c: RunRecord
    opts: CollectOptions
    plan: Plan
    vm: Vmcore
    capture: CaptureInterface
    journal: Journal
    output: ElfOutput | KdumpOutput
    sidecars: InitVar[dict[str, SidecarOutput]]
    codec: Codec | None
    threads: int
    scrub: list[ScrubRange]
    durable: IntervalSet = field(default_factory=IntervalSet, init=False)
    done_chunks: dict[int, dict[str, Any]] = field(default_factory=dict, init=False)
    rel: Releases | None = field(default=None, init=False)
    exclusions: Exclusions | None = field(default=None, init=False)
    _total: int | None = field(default=None, init=False)
    _done_bytes: int = field(default=0, init=False)
    timings: dict[str, float] = field(init=False)
    engine: PageEngine = field(init=False)
    start: float = field(default_factory=time.monotonic, init=False)

    def __post_init__(self, sidecars: dict[str, SidecarOutput]) -> None:
        steps = ("read", "compress_wait", "write", "verify_wait", "release", "final_check")
        self.timings = dict.fromkeys(steps, 0.0)
        output = self.output
        self.engine = PageEngine(
            page_size=self.plan.page_size,
            codec=self.codec,
            threads=self.threads,
            output=output,
            sidecars=sidecars,
            load=self._load,
            done=self._done,
            fail=self._fail,
            # Fixed for the run, so that writes never run on two threads at
            # once (even if the file system turns O_DIRECT down part-way).
            write_on_io=isinstance(output, KdumpOutput) and output.data.direct,
            timings=self.timings,
        )

    def space_needed(self) -> int:
        """About how much more the output needs, from the ratio stored so far."""
        left = sum(ch.size for ch in self.plan.chunks if ch.index not in self.done_chunks)
        e = self.engine
        ratio = e.stored_bytes / e.read_bytes if e.read_bytes else 1.0
        return int(left * min(1.0, ratio + 0.05))

    def run(self) -> None:
        self.engine.run(ch for ch in self.plan.chunks if ch.index not in self.done_chunks)

    def _load(self, ch: Chunk, engine: PageEngine) -> tuple[mmap.mmap, memoryview]:
        buf = engine.buffer(ch.size)
        assert self.rel is not None
        where = f"reading chunk {ch.index} ({ch.kind} {ch.src:#x}+{ch.size:#x})"
        try:
            self.vm.read_into(ch.src, buf)
        except HvdumpError:
            self.rel.check_outside(where)  # a release someone else made explains it
            raise
        self.rel.check_outside(where)
        if self.scrub and ch.kind in MEMORY_KINDS:
            apply_scrub(buf, ch.dst, self.scrub)
        return buf, memoryview(buf)

    def _fail(self, job: Job, problem: str) -> Exception:
        ch = job.chunk
        return HvdumpError(
            f"{self.output.path}: chunk {ch.index} ({ch.kind} {ch.src:#x}+{ch.size:#x}) "
            f"{problem}; nothing of it was released"
        )

    def _done(self, job: Job) -> None:
        """A chunk written, checked and durable: journal it, release what it frees."""
        ch = job.chunk
        assert job.written is not None
        rec = {
            "t": "chunk",
            "i": ch.index,
            "kind": ch.kind,
            "xxh64": job.xxh64,
            "off": job.written.offset,
            "len": job.written.length,
            "zero": sum(job.zero),
        }
        self.journal.append(rec)
        self.done_chunks[ch.index] = rec
        self._done_bytes += ch.size
        self.durable.add(ch.src, ch.src_end)
        self.c.hook("chunk", ch.index)
        if self.opts.release == "progressive":
            assert self.rel is not None
            self.rel.release_ready()
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
            done, total, released, self.c.reserved_now(self.plan), self.engine.stored_bytes
        )

    # -- the manifest --------------------------------------------------------------

    def manifest(
        self,
        state: DumpState,
        warnings: list[str],
        dump_file: Path,
        ncpus: int,
        scrub: list[ScrubRange],
        resumed: bool,
        identity: str,
    ) -> Manifest:
        plan = self.plan
        rel = self.rel
        assert rel is not None
        writes_done = rel.writes_done
        size, allocated = self.output.file.size(), self.output.file.allocated()
        info = self.vm.core.vmcoreinfo or {}
        return Manifest(
            tool="hvdump collect",
            source=Source(
                byteorder=self.vm.core.byteorder,
                page_size=plan.page_size,
                vmcoreinfo={k: info[k] for k in VMCOREINFO_KEPT if k in info},
                cpus=ncpus,
                memory=plan.memory,
                vmcore=str(self.vm.path),
                capture=CaptureSource(
                    str(self.opts.root),
                    state.interface,
                    state.header_raw.hex(),
                    state.valid,
                    state.reason,
                    identity,
                ),
            ),
            dump=DumpFileInfo(
                file=dump_file.name,
                format=self.opts.format,
                size=size,
                segments=tuple(plan.kept_segments()),
                compression=self.codec.name if self.codec else None,
                level=self.opts.level,
                allocated=allocated,
                dump_level=self.exclusions.level if self.exclusions else None,
                excluded=dict(self.exclusions.counts) if self.exclusions else None,
            ),
            chunks=tuple(self._manifest_chunks()),
            metadata={
                kind: MetaFile(name, plan.copied[kind].size, plan.copied[kind].addr)
                for kind, name in _META_FILES.items()
                if kind in plan.copied
            },
            dump_header_note=HVDUMP_NOTE_NAME,
            release=ReleaseRecord(
                policy=self.opts.release,
                reserved_start=plan.reserved.addr,
                reserved_bytes=plan.reserved_bytes,
                scratch=(plan.scratch.addr, plan.scratch.size),
                writes=tuple(
                    ReleaseWriteRecord(
                        w.addr,
                        w.size,
                        w.scratch,
                        w.new_pages,
                        w.index in writes_done,
                        w.index == plan.order[-1],
                    )
                    for w in plan.writes
                ),
                order=tuple(plan.order),
                reserved_over_time=tuple(self.c.samples),
                events=tuple(self.c.events),
            ),
            scrub=tuple(r.to_json() for r in scrub),
            timings={
                "elapsed_s": round(time.monotonic() - self.start, 4),
                "threads": self.threads,
                "resumed": resumed,
                **{k: round(v, 4) for k, v in self.timings.items()},
            },
            warnings=tuple(warnings),
        )

    def _manifest_chunks(self) -> list[ChunkRecord]:
        out = []
        for ch in self.plan.chunks:
            rec = self.done_chunks[ch.index]
            out.append(
                ChunkRecord(
                    ch.index,
                    ch.kind,
                    ch.dst,
                    ch.size,
                    f"{rec['xxh64']:016x}",
                    src=ch.src,
                    stored_offset=rec["off"],
                    stored_bytes=rec["len"],
                    zero_pages=rec["zero"],
                )
            )
        return out
