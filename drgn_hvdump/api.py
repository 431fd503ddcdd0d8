"""What the Ansible modules (and other programs) call: one entry per operator action.

Every release of a waiting dump goes through the collector
(:func:`drgn_hvdump.collect.collector.collect`): under the dump's lock, in
the plan's order, journaled, each confirmed from ``MemTotal``, the last one
only after the whole dump verifies. There is no second release loop: giving
back the memory of a dump collected with ``--release never`` is a resumed
collection that has nothing left to read (:func:`release_saved`), and giving
up a dump that cannot be saved (:func:`abandon`) takes the same lock.

The reads are plain data (dicts of JSON types) so that callers need no other
part of hvdump: :func:`facts` (the dump state under a capture root, with the
collector holding it), :func:`owner`, :func:`collection` (what a dump
directory holds: journal progress and the manifest's summary) and
:func:`verify` (a dump directory against its manifest's checksums).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drgn_hvdump.capture import CaptureInterface, DumpState, open_capture
from drgn_hvdump.capture.base import DT_DIRS
from drgn_hvdump.capture.vmcore import Vmcore
from drgn_hvdump.collect.ownership import DumpLock, dump_owner
from drgn_hvdump.dumpdir.journal import Journal
from drgn_hvdump.dumpdir.manifest import Manifest, parse_manifest, read_manifest
from drgn_hvdump.dumpdir.names import JOURNAL, MANIFEST
from drgn_hvdump.dumpdir.outdir import OutputDir
from drgn_hvdump.errors import HvdumpError

if TYPE_CHECKING:
    from drgn_hvdump.collect.collector import CollectOptions, CollectResult

# The collector, the remote transport and the verifier are imported where they are used:
# hvdump_facts, which runs on every host of every fleet run, needs none of them, and their
# imports were a third of its module's CPU (bench/bench_ansible.py).

__all__ = [
    "Released",
    "abandon",
    "check_target",
    "collection",
    "dump_id",
    "facts",
    "owner",
    "pending_releases",
    "release_saved",
    "resume_options",
    "verify",
]


@dataclass
class Released:
    """What a release action gave back."""

    released: list[tuple[int, int]]
    dump_waiting: bool
    result: CollectResult | None = None

    @property
    def released_bytes(self) -> int:
        return sum(size for _, size in self.released)


def resume_options(root: Path, output: Path, **overrides: object) -> CollectOptions:
    """Options that resume the collection in ``output`` as it was started (format,
    compression, chunk size, scrub filter come from its journal)."""
    from drgn_hvdump.collect.collector import CollectOptions

    out = OutputDir.open(output, create=False)
    try:
        journal = Journal.load(out)
    finally:
        out.close()
    if journal is None or not journal.records:
        raise HvdumpError(f"{output}: holds no collection (no journal)")
    fp = journal.start.get("fingerprint") or {}
    opts = CollectOptions(
        root=root,
        output=output,
        format=str(fp.get("format") or "kdump"),
        compress=str(fp.get("compress") or "none"),
        level=fp.get("level"),
        chunk_size=int(fp.get("chunk_size") or 16 << 20),
        scrub=Path(fp["scrub"]) if fp.get("scrub") else None,
    )
    for key, value in overrides.items():
        setattr(opts, key, value)
    return opts


def pending_releases(output: Path) -> list[tuple[int, int]]:
    """The release writes a finished collection in ``output`` has not made yet."""
    out = OutputDir.open(output, create=False)
    try:
        manifest = parse_manifest(out.read_bytes(MANIFEST), str(out.path / MANIFEST))
    except (OSError, HvdumpError) as exc:
        raise HvdumpError(f"{output}/{MANIFEST}: no complete collection here ({exc})") from None
    finally:
        out.close()
    if manifest.release is None:
        raise HvdumpError(f"{output}/{MANIFEST}: not a collection (written by {manifest.tool})")
    return manifest.release.pending()


def release_saved(
    root: Path, output: Path, *, wait: bool = True, wait_timeout: float | None = None
) -> Released:
    """Give back the memory of the dump saved in ``output`` (collected with
    ``--release never``): every release confirmed, the last after a full verify."""
    from drgn_hvdump.collect.collector import collect

    before = set(pending_releases(output))
    res = collect(
        resume_options(
            root,
            output,
            release="progressive",
            wait=wait,
            wait_timeout=wait_timeout,
            progress=False,
        )
    )
    after = set(res.manifest.release.pending()) if res.manifest and res.manifest.release else set()
    state = open_capture(root).state()
    return Released(sorted(before - after), state.dump_waiting, res)


def abandon(root: Path, *, dry_run: bool = False) -> Released:
    """Give up the waiting dump without saving it (its data is lost): make every
    release write of the plan, under the dump's lock, so the LPAR re-registers."""
    capture = open_capture(root)
    state = capture.state()
    if not state.dump_waiting:
        return Released([], False)
    lock = DumpLock(root, capture.lock_path)
    lock.acquire()
    try:
        if not state.readable:
            # A damaged header: no plan, but the kernel knows what it holds.
            if dry_run:
                return Released([], True)
            given = capture.give_up(state)
            if given and not capture.state().dump_waiting:
                capture.protect()
            return Released(given, capture.state().dump_waiting)
        vm = Vmcore(capture.vmcore_path)
        try:
            from drgn_hvdump.collect.collector import CollectOptions

            plan = capture.plan(state, vm, CollectOptions(root=root, output=Path("/")).chunk_size)
        finally:
            vm.close()
        writes = [plan.writes[i] for i in plan.order]
        if dry_run:
            return Released([(w.addr, w.size) for w in writes], True)
        done: list[tuple[int, int]] = []
        for w in writes:
            if not capture.state().dump_waiting:
                break
            capture.release(w)
            done.append((w.addr, w.size))
        if done and not capture.state().dump_waiting:
            capture.protect(plan.page_size)
        return Released(done, capture.state().dump_waiting)
    finally:
        lock.release()


def owner(root: Path) -> dict[str, Any] | None:
    """The collector holding the dump under ``root`` now, as ``{pid, output, since}``
    (``since`` in seconds since the epoch; unknown parts are None), or None when
    no collector holds it."""
    found = dump_owner(root, open_capture(root).lock_path)
    return None if found is None else found.to_json()


def facts(root: Path) -> dict[str, Any]:
    """The dump state under the capture root ``root`` as plain data.

    Keys: ``root``, ``interface``, ``firmware_supported``, ``dump_enabled``,
    ``registered`` (a dump is registered, so the LPAR is protected),
    ``dump_waiting``, ``dump_valid``, ``reason``, ``warnings``,
    ``reserved_bytes``, ``header`` and ``release_map`` (as dicts, or None),
    ``sections`` (name -> lengths, error flags, destination), ``dump_bytes``,
    ``osrelease`` and ``crash_time`` (from the waiting dump's VMCOREINFO, or
    None) and ``owner`` (:func:`owner` of a waiting dump; None when nobody
    holds it or it cannot be told). Reads only; raises :class:`HvdumpError` or
    :class:`OSError` when the dump state cannot be read at all.
    """
    capture = open_capture(root)
    state = capture.state()
    info = _vmcoreinfo(capture.vmcore_path) if state.dump_waiting else {}
    crash = info.get("CRASHTIME", "")
    sections = {name: dataclasses.asdict(sec) for name, sec in state.sections.items()}
    dump_bytes = state.dump_bytes
    reserved = state.reserved_bytes
    if state.dump_waiting and not reserved:
        # The header could not be read: what the capture kernel holds back is RAM minus MemTotal.
        reserved = _held_by_meminfo(capture)
    held = None
    if state.dump_waiting:
        try:
            held = owner(root)
        except (HvdumpError, OSError, ValueError):
            held = None
    return {
        "root": str(root),
        "interface": state.interface,
        "firmware_supported": state.firmware_supported,
        "dump_enabled": state.dump_enabled,
        "registered": _registered(state),
        "dump_waiting": state.dump_waiting,
        "dump_valid": state.valid,
        "reason": state.reason,
        "warnings": list(state.warnings),
        "reserved_bytes": reserved,
        "header": state.details.get("header"),
        "release_map": state.details.get("release_map"),
        "sections": sections,
        "dump_bytes": dump_bytes,
        "osrelease": info.get("OSRELEASE"),
        "crash_time": int(crash) if str(crash).isdigit() else None,
        "owner": held,
    }


def dump_id(hostname: str, facts: dict[str, Any]) -> str:
    """The name of one dump, stable across reruns: ``HOST-YYYYmmdd-HHMMSS`` of the
    crash (UTC, from VMCOREINFO's CRASHTIME), else ``HOST-`` and a hash of the dump
    header (or of why it cannot be read). ``facts`` is :func:`facts`' result. A
    capture kernel without a hostname (``(none)``) is ``lpar``; characters that do
    not belong in a directory name are dropped. The service, the Ansible modules
    and their reruns find a dump's directory by it."""
    host = re.sub(r"[^A-Za-z0-9_-]", "", hostname.split(".")[0])
    if not host or hostname.strip() == "(none)":
        host = "lpar"
    crash = facts.get("crash_time")
    if crash is not None:
        return f"{host}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(crash))}"
    blob = json.dumps(facts.get("header") or facts.get("reason"), sort_keys=True, default=str)
    return f"{host}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _registered(state: DumpState) -> bool:
    """Whether the LPAR is protected: what the kernel says (fadump's ``registered``),
    else what a kernel with dump support enabled does when no dump waits (registers)."""
    said = state.details.get("registered")
    if isinstance(said, bool):
        return said
    return bool(state.firmware_supported and state.dump_enabled and not state.dump_waiting)


def collection(output: Path) -> dict[str, Any]:
    """What the dump directory ``output`` holds, as plain data; never raises.

    ``started`` (it has a journal), ``complete`` (the journal says done),
    ``chunks_saved`` (chunks journaled as durable), and from its manifest (None,
    0 or empty before the collection completes): ``dump_file`` (path),
    ``dump_size``, ``bytes_read``, ``elapsed_s``, ``released_bytes`` (release
    writes made) and ``warnings`` (the collector's).
    """
    started, complete, chunks = _journal_state(output)
    man: Manifest | None = None
    if (output / MANIFEST).exists():
        with contextlib.suppress(HvdumpError):
            man = read_manifest(output)
    empty = {"dump_size": None, "bytes_read": 0, "elapsed_s": None, "released_bytes": 0}
    return {
        "started": started,
        "complete": complete,
        "chunks_saved": chunks,
        "dump_file": str(output / man.dump.file) if man else None,
        **(man.summary() if man else {**empty, "warnings": []}),
    }


def check_target(
    url: str,
    *,
    ssh: tuple[str, ...] = ("ssh",),
    identity: str | None = None,
    remote_hvdump: str = "hvdump",
) -> dict[str, Any]:
    """Whether a collection could go to the archive host of ``ssh://[user@]host[:port]/path``:
    log in (``ssh`` is the command and its options), start ``hvdump receive`` there (same
    protocol) and check the directory could be written, creating nothing. Returns
    ``{version, path, exists, free_bytes}``; raises :class:`HvdumpError` with one line."""
    from drgn_hvdump.dumpdir.remote import RemoteDir, SshTarget

    return RemoteDir.probe(
        SshTarget.parse(url, ssh=ssh, identity=identity, remote_hvdump=remote_hvdump)
    )


def verify(output: Path) -> tuple[bool, list[str]]:
    """Check the dump directory ``output`` against its manifest's checksums, as
    ``hvdump verify`` does: (every chunk matched, the report lines). Raises
    :class:`HvdumpError` for a malformed or partial manifest."""
    from drgn_hvdump.collect.verify import verify_dir

    return verify_dir(output)


def _vmcoreinfo(vmcore: Path) -> dict[str, str]:
    """VMCOREINFO of the waiting dump (CRASHTIME, OSRELEASE...): cheap; empty when unreadable."""
    from drgn_hvdump.formats.elfcore import ElfCore

    try:
        with ElfCore.open(vmcore) as core:
            return dict(core.vmcoreinfo or {})
    except Exception:
        return {}


def _held_by_meminfo(capture: CaptureInterface) -> int:
    """RAM (device tree ``memory@0``) minus ``MemTotal``: 0 when either is unknown."""
    try:
        ram = 0
        for d in DT_DIRS:
            reg_path = capture.root / d / "memory@0/reg"
            if reg_path.exists():
                ram = int.from_bytes(reg_path.read_bytes()[8:16], "big")
                break
        total = capture.memtotal_kb()
    except (OSError, ValueError, HvdumpError):
        return 0
    return max(0, ram - total * 1024) if ram and total is not None else 0


def _journal_state(output: Path) -> tuple[bool, bool, int]:
    """(started, done, chunks journaled) of the collection in ``output``."""
    if not (output / JOURNAL).exists():
        return False, False, 0
    try:
        out = OutputDir.open(output, create=False)
        try:
            journal = Journal.load(out)
        finally:
            out.close()
    except (HvdumpError, OSError):
        return True, False, 0  # there, but not readable as ours
    if journal is None:
        return False, False, 0
    chunks = sum(1 for r in journal.records if r.get("t") == "chunk")
    return True, journal.done, chunks
