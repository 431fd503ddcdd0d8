"""What the Ansible modules (and other programs) call: one entry per operator action.

Every release of a waiting dump goes through the collector
(:func:`drgn_hvdump.collect.collector.collect`): under the dump's lock, in
the plan's order, journaled, each confirmed from ``MemTotal``, the last one
only after the whole dump verifies. There is no second release loop: giving
back the memory of a dump collected with ``--release never`` is a resumed
collection that has nothing left to read (:func:`release_saved`), and giving
up a dump that cannot be saved (:func:`abandon`) takes the same lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from drgn_hvdump.capture import open_capture
from drgn_hvdump.collect.collector import CollectOptions, CollectResult, collect
from drgn_hvdump.collect.ownership import DumpLock
from drgn_hvdump.dumpdir.journal import Journal
from drgn_hvdump.dumpdir.outdir import OutputDir
from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.formats.release_region import Extent

__all__ = ["Released", "abandon", "pending_releases", "release_saved", "resume_options"]


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
    import json

    out = OutputDir.open(output, create=False)
    try:
        manifest = json.loads(out.read_bytes("manifest.json"))
    except (OSError, ValueError) as exc:
        raise HvdumpError(f"{output}/manifest.json: no complete collection here ({exc})") from None
    finally:
        out.close()
    return [
        (int(w["addr"]), int(w["size"])) for w in manifest["release"]["writes"] if not w["done"]
    ]


def release_saved(
    root: Path, output: Path, *, wait: bool = True, wait_timeout: float | None = None
) -> Released:
    """Give back the memory of the dump saved in ``output`` (collected with
    ``--release never``): every release confirmed, the last after a full verify."""
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
    after = {
        (int(w["addr"]), int(w["size"])) for w in res.manifest["release"]["writes"] if not w["done"]
    }
    state = open_capture(root).state()
    return Released(sorted(before - after), state.dump_waiting, res)


def abandon(root: Path, *, dry_run: bool = False) -> Released:
    """Give up the waiting dump without saving it (its data is lost): make every
    release write of the plan, under the dump's lock, so the LPAR re-registers."""
    from drgn_hvdump.collect.collector import _make_plan, _Vmcore

    capture = open_capture(root)
    state = capture.state()
    if not state.dump_waiting:
        return Released([], False)
    if state.header is None or state.release_map is None:
        raise HvdumpError(f"{root}: cannot plan the release: {state.reason}")
    lock = DumpLock(root, capture.lock_path)
    lock.acquire()
    try:
        vm = _Vmcore(capture.vmcore_path)
        try:
            plan = _make_plan(CollectOptions(root=root, output=Path("/")), state, vm)
        finally:
            vm.close()
        writes = [plan.writes[i] for i in plan.order]
        if dry_run:
            return Released([(w.addr, w.size) for w in writes], True)
        done: list[tuple[int, int]] = []
        for w in writes:
            if not capture.state().dump_waiting:
                break
            capture.release(Extent(w.addr, w.size))
            done.append((w.addr, w.size))
        return Released(done, capture.state().dump_waiting)
    finally:
        lock.release()
