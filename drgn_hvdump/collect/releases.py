"""The releases of one collection: in the plan's order, each confirmed, none unsaved.

:class:`Releases` makes the plan's release writes as chunks become durable
(always a prefix of ``Plan.order``), journals each one's intent before it
and its result after it, confirms it from ``MemTotal`` (which grows by
exactly the pages a write frees), and stops the collection when anything it
did not do changes what it relies on: memory released by someone else, or
its files removed or replaced. A rerun decides an interrupted write from
``MemTotal`` (:meth:`Releases.resolve_releases`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, InitVar, dataclass, field
from pathlib import Path
from typing import Any

from drgn_hvdump.capture import CaptureInterface
from drgn_hvdump.capture.base import NotProtectedError, memtotal_after
from drgn_hvdump.capture.plan import Plan, ReleaseWrite
from drgn_hvdump.collect.progress import Progress
from drgn_hvdump.dumpdir.filewrite import DumpFile
from drgn_hvdump.dumpdir.journal import Journal
from drgn_hvdump.dumpdir.remote import DumpDir, RemoteDir
from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.intervals import IntervalSet

__all__ = ["ReleaseLog", "Releases", "RunRecord"]


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
            elif t == "start":
                log.last_mt = rec.get("mt")
                log.boot = rec.get("boot")
            elif t == "boot":
                log.done = []
                log.pending = None
                log.last_mt = rec.get("mt")
                log.boot = rec.get("boot")
        return log


class RunRecord:
    """What one run has freed and when: the release curve of the manifest, its events,
    and the test hook."""

    def __init__(self, progress: Progress, hook: Callable[[str, int], None] | None) -> None:
        self.progress = progress
        self._hook = hook
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
        if self._hook is not None:
            self._hook(event, n)


@dataclass(eq=False)
class Releases:
    """The release bookkeeping of one collection run (see the module docstring).

    ``files``: what must still be on disk at each release; ``durable``: source
    ranges of durable chunks (the pipeline adds); ``done``: the writes already
    made in this boot of the capture kernel (``plan.order[:pos]``);
    ``mt_expected``: MemTotal as this collection's own releases leave it
    (None: unknown).
    """

    c: RunRecord
    _: KW_ONLY
    root: Path
    policy: str
    plan: Plan
    capture: CaptureInterface
    journal: Journal
    out_dir: DumpDir | None
    files: dict[str, DumpFile]
    durable: IntervalSet
    done: InitVar[list[int]]
    warnings: list[str]
    timings: dict[str, float]
    pos: int = field(init=False)
    mt_expected: int | None = field(default=None, init=False)

    def __post_init__(self, done: list[int]) -> None:
        self.pos = len(done)

    @property
    def writes_done(self) -> set[int]:
        """The plan's writes made in this boot of the capture kernel."""
        return set(self.plan.order[: self.pos])

    def _made(self, w: ReleaseWrite) -> None:
        """``w``, the next write of the plan's order, was made."""
        self.pos += 1
        self.c.freed.add(*w.span)
        self.c.events.append({"t": self.c.now(), "release": [w.addr, w.size]})

    def release_ready(self, final: bool = False) -> None:
        """Make the writes that are safe now, in plan order, all but the last.

        The order is fixed (``Plan.order``) so the writes made are always a
        prefix of it, and each one frees pages no earlier write freed: a rerun
        can tell from ``MemTotal`` whether an interrupted write was made.
        """
        if self.policy == "never":
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
        try:
            note = self.capture.protect(self.plan.page_size)
        except NotProtectedError as exc:
            self.warnings.append(str(exc))
            self.c.events.append({"t": self.c.now(), "warning": str(exc)})
            self.c.progress.message(str(exc))
        else:
            if note:
                self.c.progress.message(note)
        state = self.capture.state()
        if state.dump_waiting:
            msg = (
                f"the last release ({w.extent}) did not re-register the dump: the LPAR is "
                "not protected against the next crash; check the kernel's release counters "
                "(hvsim status) and the release writes in the manifest"
            )
            self.warnings.append(msg)
            self.c.events.append({"t": self.c.now(), "warning": msg})

    def _reserved_text(self) -> str:
        left = [self.plan.writes[i] for i in self.plan.order[self.pos :]]
        total = self.c.reserved_now(self.plan)
        spans = ", ".join(f"{w.addr:#x}+{w.size:#x}" for w in left[:3])
        more = f" and {len(left) - 3} more" if len(left) > 3 else ""
        return f"{total / (1 << 20):.0f} MiB still reserved ({spans}{more})" if left else ""

    def _stop(self, why: str, before: str) -> HvdumpError:
        """Journal why the collection stops, and the one line that says so."""
        msg = f"{why}; stopped {before}"
        with contextlib.suppress(OSError):
            self.journal.append({"t": "stop", "why": msg, "time": time.time()})
        reserved = self._reserved_text()
        return HvdumpError(
            f"{self.root}: {msg}; nothing this collection had not saved was released"
            + (f"; {reserved}" if reserved else "")
        )

    def check_outside(self, before: str, now: int | None = None) -> None:
        """Memory released by someone else holds other data now: stop before trusting
        what was just read, or before the next release (``now``: MemTotal if just read)."""
        if self.mt_expected is None:
            return
        if now is None:
            now = self.capture.memtotal_kb()
        if now != self.mt_expected:
            raise self._stop(
                f"MemTotal is {now} kB where this collection's own releases leave "
                f"{self.mt_expected} kB: memory was released outside this collection (by hand "
                "or by another tool) or the memory size changed",
                before,
            )

    def _check_kept(self, before: str) -> None:
        """Bytes are durable only while they are still linked where they were written."""
        if self.out_dir is None:
            return
        why = self.out_dir.changed(self.files)
        if why:
            raise self._stop(f"{why} during the collection: what was written there is lost", before)

    def final_check(self) -> None:
        """Before the release that re-registers the dump: everything verifies."""
        from drgn_hvdump.collect.verify import verify_dir

        w = self.plan.writes[self.plan.order[-1]]
        t = time.monotonic()
        self._check_kept(f"before the last release {w.extent}")
        assert self.out_dir is not None
        if isinstance(self.out_dir, RemoteDir):
            ok, lines = self.out_dir.verify()  # by the receiver, on the archive host's disk
        else:
            ok, lines = verify_dir(self.out_dir.path)
        self.timings["final_check"] = time.monotonic() - t
        if not ok:
            bad = next((ln for ln in lines if "OK" not in ln), "")
            raise self._stop(
                f"the dump does not verify against its manifest ({bad})",
                f"before the last release {w.extent} (the LPAR stays unprotected until it is "
                "made; collect again into a new --output directory)",
            )

    def _release(self, w: ReleaseWrite, final: bool = False) -> None:
        t = time.monotonic()
        root = self.root
        where = f"before releasing {w.extent}"
        self._check_kept(where)
        before = self.capture.memtotal_kb()
        if before is None:
            raise self._stop(
                f"{root / 'proc/meminfo'} has no MemTotal, so no release can be confirmed "
                "(use --release never to collect without releasing)",
                where,
            )
        self.check_outside(where, before)
        self.journal.append(
            {
                "t": "rel",
                "w": w.index,
                "s": "intent",
                "addr": w.addr,
                "size": w.size,
                "mt": before,
                "pages": list(w.new_pages),
                "boot": self.capture.boot_id(),
                **({"final": True} if final else {}),
            }
        )
        self.c.hook("release-intent", w.index)
        self.capture.release(w)
        self.c.hook("release", w.index)
        after = None if final else self.capture.memtotal_kb()
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
        self._made(w)
        self.timings["release"] += time.monotonic() - t
        self.c.sample(self.plan)
        self.mt_expected = after
        if not final and (
            after is None or after not in memtotal_after(before, w.new_pages, self.plan.page_size)
        ):
            raise self._stop(
                f"release {w.extent}: MemTotal went from {before} to {after} kB, not by the "
                f"{'/'.join(map(str, w.new_pages))} pages it frees: the kernel's state is not "
                "what this collection's releases make it (another release at the same time, "
                "or a kernel that does not count released memory)",
                "after it",
            )

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
        root = self.root
        now, boot = self.capture.memtotal_kb(), self.capture.boot_id()
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
                self._made(w)
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
        elif log.last_mt is not None and now is not None and now != log.last_mt:
            if now < log.last_mt:
                reboot = f"MemTotal fell from {log.last_mt} to {now} kB"
            else:
                stopped = [r["why"] for r in self.journal.records if r.get("t") == "stop"]
                raise HvdumpError(
                    f"{root}: MemTotal grew from {log.last_mt} to {now} kB since this "
                    f"collection's last {'release' if log.done else 'start'}: memory was "
                    "released outside it (by hand or by another tool) or its size changed, so "
                    "the memory not yet saved may hold other data; nothing was read or released"
                    + (f" (this collection stopped earlier: {stopped[-1]})" if stopped else "")
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
            self.c.freed = IntervalSet()
            self.c.sample(self.plan)
        self.mt_expected = now
