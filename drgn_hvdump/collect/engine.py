"""The page engine of ``hvdump collect`` and ``hvdump convert``: one pipeline for both.

Chunks go through it in order: read (the caller's ``load``), zero-page scan
and XXH64 (native code) on the calling thread; compression in worker
threads, in batches of :data:`BATCH_BYTES`; optionally each compressed page
decompressed again and compared with the page read (``check``), by the
compressors themselves or by checker threads of their own; the write, in
chunk order, on the calling thread or on an I/O thread; then, on the I/O
thread, the wait for the checks and (``durable_each``) a sync and a read-back
compared byte for byte with what was written. Only after all that does the
caller's ``done`` see the chunk, in order, on the calling thread: the
collector journals it as durable and releases what it frees, convert counts
it. At most a few chunks more than the compressors are in flight, so memory
stays bounded by the chunk size.
"""

from __future__ import annotations

import mmap
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from drgn_hvdump import native
from drgn_hvdump.codecs import Codec, PageBatch, check_batch, compress_batch
from drgn_hvdump.collect.output import ChunkWrite, ElfOutput, KdumpOutput, SidecarOutput
from drgn_hvdump.dumpdir.filewrite import WriteGate
from drgn_hvdump.dumpdir.manifest import MEMORY_KINDS

__all__ = ["BATCH_BYTES", "EngineChunk", "Job", "PageEngine"]

BATCH_BYTES = 4 << 20
"""Pages per compression call: 4 MiB (64 pages of 64 KiB, 1024 of 4 KiB), so a C
call is long next to its Python overhead and a chunk still splits into several
batches for the worker threads."""


class EngineChunk(Protocol):
    """What the engine needs of a chunk: where it is read and where it is stored."""

    @property
    def index(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def dst(self) -> int: ...
    @property
    def size(self) -> int: ...


@dataclass
class Job:
    """One chunk in flight."""

    chunk: Any
    buf: mmap.mmap | None
    """The engine's buffer the chunk was read into (None: ``view`` is the caller's)."""
    view: memoryview
    zero: bytes
    """One byte per page: 1 where the page is all zeros."""
    xxh64: int
    read_s: float = 0.0
    prepared: list[Future[tuple[PageBatch, Future[str] | None]]] = field(default_factory=list)
    written: ChunkWrite | None = None
    # The page checks of a compressed chunk (decompress, compare with the
    # pages read, which are kept until they are done); the I/O thread waits.
    checks: list[Future[str]] = field(default_factory=list)
    verify: Future[str] | None = None


class PageEngine:
    """Read → zero scan → hash → compress → check → write → (sync, read back) → done."""

    def __init__(
        self,
        *,
        page_size: int,
        codec: Codec | None,
        threads: int,
        output: ElfOutput | KdumpOutput,
        load: Callable[[Any, PageEngine], tuple[mmap.mmap | None, memoryview]],
        done: Callable[[Job], None],
        fail: Callable[[Job, str], Exception],
        sidecars: dict[str, SidecarOutput] | None = None,
        check: bool = True,
        separate_checks: bool = True,
        write_on_io: bool = False,
        durable_each: bool = True,
        timings: dict[str, float] | None = None,
    ) -> None:
        self.ps = page_size
        # A codec without a kdump flag ("none") stores pages raw.
        self.codec = codec if codec is not None and codec.flag else None
        self.threads = max(1, threads)
        self.output = output
        self.sidecars = sidecars or {}
        self.load = load
        self.done = done
        self.fail = fail
        self.check = check
        self.separate_checks = separate_checks
        self.write_on_io = write_on_io
        self.durable_each = durable_each
        self.timings = timings if timings is not None else {}
        for key in ("read", "compress_wait", "write", "verify_wait"):
            self.timings.setdefault(key, 0.0)
        self.stored_bytes = 0
        self.read_bytes = 0
        self._free: dict[int, list[mmap.mmap]] = {}
        self._gate = WriteGate()
        self._io: ThreadPoolExecutor | None = None
        self._checkers: ThreadPoolExecutor | None = None

    def buffer(self, size: int) -> mmap.mmap:
        """A buffer for one chunk: page-aligned (an anonymous mapping), so O_DIRECT
        can write whole pages straight from it; filled again chunk after chunk
        (fresh 16 MiB buffers cost page faults and zeroing)."""
        free = self._free.get(size)
        return free.pop() if free else mmap.mmap(-1, size)

    def hash_back(self, ch: EngineChunk) -> int:
        """The XXH64 of the chunk as stored, read from its file with the page cache dropped."""
        side = self.sidecars.get(ch.kind)
        if side is not None:
            return side.hash_back(ch.dst, ch.size)
        assert isinstance(self.output, ElfOutput)
        return self.output.hash_back(ch.dst, ch.size)

    def run(self, chunks: Iterable[Any]) -> None:
        # With checks on more than one thread, a quarter of them (at least one)
        # only check (decompress and compare, about a third of the cost of
        # compressing) and the others only compress: on 2 vCPUs one compressor
        # and one checker took 2.66 s for 1 GiB where two threads doing both
        # took 3.07 s (same run). Checkers shut down last: a compressor still
        # running hands its pages to them.
        checkers = 0
        if self.check and self.separate_checks and self.threads > 1:
            checkers = max(1, self.threads // 4)
        # Chunks in flight (read, compressing, checking, syncing): two more than
        # the compressors. With one compressor and one checker, 3 against 4 was
        # faster in 3 of 3 same-run pairs (2.62-3.27 s against 3.10-3.63 s for
        # 1 GiB) and kept 20 MiB less.
        depth = self.threads - checkers + 2
        with (
            ThreadPoolExecutor(max(1, checkers), thread_name_prefix="hvdump-check") as check_pool,
            ThreadPoolExecutor(self.threads - checkers, thread_name_prefix="hvdump") as pool,
            ThreadPoolExecutor(1, thread_name_prefix="hvdump-io") as io,
        ):
            self._io = io
            self._checkers = check_pool if checkers else None
            waiting: deque[Job] = deque()
            written: deque[Job] = deque()
            for ch in chunks:
                job = self._read(ch)
                if self.codec is not None and ch.kind in MEMORY_KINDS:
                    step = max(1, BATCH_BYTES // self.ps)
                    for i in range(0, len(job.zero), step):
                        sub = job.zero[i : i + step]
                        pages = job.view[i * self.ps : (i + len(sub)) * self.ps]
                        job.prepared.append(pool.submit(self._prepare, pages, sub))
                waiting.append(job)
                while len(waiting) + len(written) >= depth:
                    self._advance(waiting, written)
            while waiting or written:
                self._advance(waiting, written)

    # -- the stages -------------------------------------------------------------------

    def _read(self, ch: EngineChunk) -> Job:
        t = time.monotonic()
        buf, view = self.load(ch, self)
        whole = ch.size // self.ps * self.ps
        # The register save area is not pages: no scan.
        zero = native.zero_pages(view[:whole], self.ps) if ch.kind != "cpu" else b""
        job = Job(ch, buf, view, zero, native.hash64(view))
        job.read_s = time.monotonic() - t
        self.timings["read"] += job.read_s
        return job

    def _prepare(self, view: memoryview, zero: bytes) -> tuple[PageBatch, Future[str] | None]:
        """In a compressor: compress a batch of pages and have them checked (by a
        checker thread, or here)."""
        assert self.codec is not None
        batch = compress_batch(self.codec, view, zero, self.ps)
        if not self.check:
            return batch, None
        if self._checkers is not None:
            return batch, self._checkers.submit(check_batch, self.codec, view, zero, batch, self.ps)
        done: Future[str] = Future()
        done.set_result(check_batch(self.codec, view, zero, batch, self.ps))
        return batch, done

    def _write(self, job: Job) -> None:
        ch = job.chunk
        out = self.output
        t = time.monotonic()
        side = self.sidecars.get(ch.kind)
        if side is not None:
            job.written = side.write(ch.dst, job.view, job.zero)
            side.sync()
        elif isinstance(out, KdumpOutput) and not job.prepared:
            job.written = out.write_raw(ch.dst, job.view, job.zero)
        elif isinstance(out, KdumpOutput):
            batches: list[PageBatch] = []
            for fut in job.prepared:
                t1 = time.monotonic()
                batch, check = fut.result()
                self.timings["compress_wait"] += time.monotonic() - t1
                batches.append(batch)
                if check is not None:
                    job.checks.append(check)
            job.written = out.write(ch.dst, batches)
        else:
            job.written = out.write(ch.dst, job.view, job.zero)
        job.prepared = []
        self.timings["write"] += time.monotonic() - t
        self.stored_bytes += job.written.length
        self.read_bytes += ch.size

    def _write_verify(self, job: Job) -> str:
        """In the I/O thread: write the chunk, then verify it. O_DIRECT writes are
        here, not on the reading thread, because they wait for the disk."""
        self._write(job)
        return self._verify(job)

    def _verify(self, job: Job) -> str:
        """In the I/O thread: wait for the page checks; with ``durable_each``, sync
        and read back (page cache dropped) and compare: a compressed chunk's stored
        bytes and descriptors byte for byte, any other chunk by its XXH64."""
        for check in job.checks:
            problem = check.result()
            if problem:
                return problem
        if not self.durable_each:
            return ""
        ch = job.chunk
        if isinstance(self.output, KdumpOutput) and ch.kind in MEMORY_KINDS:
            assert job.written is not None
            self.output.sync()
            return self.output.check_back(ch.dst, job.written)
        if ch.kind not in self.sidecars:
            self.output.sync()
        got = self.hash_back(ch)
        if got != job.xxh64:
            return f"reads back with checksum {got:#018x}, expected {job.xxh64:#018x}"
        return ""

    def _advance(self, waiting: deque[Job], written: deque[Job]) -> None:
        if written and (
            (written[0].verify is not None and written[0].verify.done()) or not waiting
        ):
            self._finish(written.popleft())
            return
        if waiting:
            job = waiting.popleft()
            assert self._io is not None
            if self.write_on_io:
                job.verify = self._io.submit(
                    self._gate.run,
                    "not written: an earlier chunk's write failed",
                    self._write_verify,
                    job,
                )
            else:
                # Through the page cache a write returns at once: the I/O
                # thread's sync of this chunk overlaps the next chunk's write.
                self._write(job)
                job.verify = self._io.submit(self._verify, job)
            written.append(job)
            return
        self._finish(written.popleft())

    def _finish(self, job: Job) -> None:
        assert job.verify is not None
        t = time.monotonic()
        problem = job.verify.result()
        self.timings["verify_wait"] += time.monotonic() - t
        if problem:
            raise self.fail(job, problem)
        self.done(job)
        job.view.release()
        if job.buf is not None:
            free = self._free.setdefault(len(job.buf), [])
            if len(free) < self.threads + 2:
                free.append(job.buf)
            job.buf = None
