"""``hvdump receive``: the archive host's end of ``hvdump collect --output ssh://...``.

Started by the collector as the remote command of an ``ssh`` session, it
reads :mod:`~drgn_hvdump.dumpdir.wire` requests on stdin and answers on
stdout. It opens the dump directory as a local collection does
(:class:`~drgn_hvdump.dumpdir.outdir.OutputDir`: created 0700 or owned by
this user and writable by nobody else, files 0600 created without following
links) and does what each request asks of it; ``SYNC`` syncs to its disk and
``HASH`` reads back from it with the page cache dropped, so the collector
releases memory only for bytes this host proved durable. A failed write is
kept and answers the next request, which the collector always makes before
it counts the write. The directory's ``flock`` is held while the session
lasts; end of input (the collector died, the connection dropped) closes
everything and exits.
"""

from __future__ import annotations

import os
import queue
import resource
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from drgn_hvdump import __version__
from drgn_hvdump.dumpdir.filewrite import LocalFile, nonzero_runs
from drgn_hvdump.dumpdir.outdir import OutputDir, probe_dir
from drgn_hvdump.dumpdir.remote import parse_st
from drgn_hvdump.dumpdir.wire import (
    MAX_JSON,
    NO_REPLY,
    PROTOCOL,
    REPLY,
    REQUEST,
    Op,
    decode_json,
    encode_json,
    enlarge_pipe,
)
from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.formats.flattened import records
from drgn_hvdump.fsutil import disk_error, flock_holders, take_flock

__all__ = ["Receiver", "serve", "unflatten"]

#: How long a new receiver waits for the directory's lock even without
#: ``--wait``: the receiver of a collector that was killed exits as soon as
#: its session's end reaches it, which takes a moment.
LOCK_GRACE = 10.0


class _Reply(Exception):
    """A failed request: its JSON reason."""

    def __init__(self, reason: dict[str, Any]) -> None:
        super().__init__(reason.get("message"))
        self.reason = reason


def _os_reason(exc: OSError, path: str | None = None) -> dict[str, Any]:
    return {
        "kind": "os",
        "errno": exc.errno,
        "message": f"{path or exc.filename or ''}: {exc.strerror or exc}".lstrip(": "),
        "file": path,
    }


class Receiver:
    """The state of one session: the directory, its open files, the first failed write."""

    def __init__(self) -> None:
        self.out: OutputDir | None = None
        self.files: dict[int, LocalFile] = {}
        self.next_handle = 1
        self.failed: dict[str, Any] | None = None
        self.handlers: dict[Op, Callable[[int, int, int, Any, memoryview], Any]] = {
            Op.HELLO: self._hello,
            Op.LOCK: self._lock,
            Op.LSTAT: self._lstat,
            Op.OPEN: self._open,
            Op.READ_FILE: self._read_file,
            Op.WRITE_ATOMIC: self._write_atomic,
            Op.UNLINK: self._unlink,
            Op.CHANGED: self._changed,
            Op.PWRITE: self._pwrite,
            Op.PWRITE_RUNS: self._pwrite_runs,
            Op.ZERO: lambda h, a, b, _j, _d: self._file(h).write_zeros(a, b),
            Op.READ: lambda h, a, b, _j, _d: (0, None, self._file(h).read(b, a)),
            Op.HASH: lambda h, a, b, _j, _d: (self._file(h).hash(a, b), None, b""),
            Op.SYNC: lambda h, a, _b, _j, _d: self._file(h).sync(metadata=bool(a)),
            Op.TRUNCATE: lambda h, a, _b, _j, _d: self._file(h).truncate(a),
            Op.SIZE: lambda h, _a, _b, _j, _d: (
                self._file(h).size(),
                {"allocated": self._file(h).allocated()},
                b"",
            ),
            Op.CLOSE: self._close,
            Op.VERIFY: self._verify,
            Op.BYE: self._bye,
        }

    # -- the requests ---------------------------------------------------------------

    def _dir(self) -> OutputDir:
        if self.out is None:
            raise _Reply({"message": "no directory opened (HELLO first)"})
        return self.out

    def _file(self, handle: int) -> LocalFile:
        f = self.files.get(handle)
        if f is None:
            raise _Reply({"message": f"no open file with handle {handle}"})
        return f

    def _hello(self, _h: int, _a: int, _b: int, args: Any, _d: memoryview) -> Any:
        if not isinstance(args, dict) or args.get("protocol") != PROTOCOL:
            # Answered, not refused: the collector names both versions.
            return 0, {"protocol": PROTOCOL, "version": __version__}, b""
        path = os.path.expanduser(str(args.get("path") or ""))
        if not os.path.isabs(path):
            path = os.path.join(os.path.expanduser("~"), path)
        if args.get("probe"):
            # A check before collecting: say whether the directory could be written; open nothing.
            return (
                0,
                {"protocol": PROTOCOL, "version": __version__, "probe": probe_dir(Path(path))},
                b"",
            )
        self.out = OutputDir.open(Path(path), create=bool(args.get("create", True)))
        return (
            0,
            {
                "protocol": PROTOCOL,
                "version": __version__,
                "path": str(self.out.path),
                "created": self.out.created,
            },
            b"",
        )

    def _lock(self, _h: int, _a: int, _b: int, args: Any, _d: memoryview) -> Any:
        out = self._dir()
        wait = bool(args.get("wait"))
        timeout = args.get("timeout")
        limit = LOCK_GRACE if not wait else (None if timeout is None else max(timeout, LOCK_GRACE))
        owner = take_flock(
            out.fd,
            wait=True,
            timeout=limit,
            holder=lambda: next(iter(flock_holders(out.path)), None),
            unknown=0,
        )
        return 0, {"owner": owner}, b""

    def _lstat(self, _h: int, _a: int, _b: int, args: Any, _d: memoryview) -> Any:
        st = self._dir().lstat(str(args["name"]))
        return 0, {"st": None if st is None else parse_st(st)}, b""

    def _open(self, _h: int, _a: int, _b: int, args: Any, _d: memoryview) -> Any:
        f = self._dir().open_file(
            str(args["name"]), create=bool(args["create"]), exclusive=bool(args["exclusive"])
        )
        handle = self.next_handle
        self.next_handle += 1
        self.files[handle] = f
        return handle, {"id": list(f.file_id())}, b""

    def _read_file(self, _h: int, _a: int, _b: int, args: Any, _d: memoryview) -> Any:
        out = self._dir()
        name = str(args["name"])
        try:
            return 0, None, out.read_bytes(name, int(args.get("limit", 64 << 20)))
        except OSError as exc:
            raise _Reply(_os_reason(exc, str(out.path / name))) from None

    def _write_atomic(self, _h: int, _a: int, _b: int, args: Any, data: memoryview) -> None:
        out = self._dir()
        name = str(args["name"])
        try:
            out.write_atomic(name, bytes(data))
        except OSError as exc:
            raise _Reply(_os_reason(exc, str(out.path / name))) from None

    def _unlink(self, _h: int, _a: int, _b: int, args: Any, _d: memoryview) -> None:
        self._dir().unlink(str(args["name"]))

    def _changed(self, _h: int, _a: int, _b: int, args: Any, _d: memoryview) -> Any:
        files = {str(n): self._file(int(h)) for n, h in dict(args["files"]).items()}
        return 0, {"why": self._dir().changed(files)}, b""

    def _pwrite(self, handle: int, offset: int, _b: int, _j: Any, data: memoryview) -> None:
        if self.failed is not None:
            return  # after a failed write, nothing more: the failure answers first
        f = self._file(handle)
        try:
            f.pwrite(data, offset)
        except OSError as exc:
            self.failed = _os_reason(exc, f.path)

    def _pwrite_runs(self, handle: int, offset: int, ps: int, args: Any, data: memoryview) -> None:
        if self.failed is not None:
            return
        f = self._file(handle)
        n = int(args["n"])
        zero, pages = bytes(data[:n]), data[n:]
        at = 0
        try:
            for i, j in nonzero_runs(zero):
                size = (j - i) * ps
                f.pwrite(pages[at : at + size], offset + i * ps)
                at += size
        except OSError as exc:
            self.failed = _os_reason(exc, f.path)

    def _close(self, handle: int, _a: int, _b: int, _j: Any, _d: memoryview) -> None:
        f = self.files.pop(handle, None)
        if f is not None:
            f.close()

    def _verify(self, _h: int, _a: int, _b: int, _j: Any, _d: memoryview) -> Any:
        from drgn_hvdump.collect.verify import verify_dir

        ok, lines = verify_dir(self._dir().path)
        return 0, {"ok": ok, "lines": lines}, b""

    def _bye(self, _h: int, _a: int, _b: int, _j: Any, _d: memoryview) -> Any:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return 0, {"cpu": ru.ru_utime + ru.ru_stime}, b""

    # -- the loop -------------------------------------------------------------------

    def handle(self, op: int, h: int, a: int, b: int, args: Any, data: memoryview) -> Any:
        """Carry out one request: (value, JSON, data) for its reply (None: no reply)."""
        try:
            kind = Op(op)
        except ValueError:
            raise _Reply({"message": f"unknown request {op} (another hvdump version?)"}) from None
        if self.failed is not None and kind not in NO_REPLY and kind != Op.BYE:
            raise _Reply(self.failed)
        try:
            result = self.handlers[kind](h, a, b, args, data)
        except HvdumpError as exc:
            raise _Reply({"kind": "hvdump", "message": str(exc)}) from None
        except OSError as exc:
            path = self.files[h].path if h in self.files else None
            raise _Reply(_os_reason(exc, path)) from None
        if kind in NO_REPLY:
            return None
        return result if isinstance(result, tuple) else (0, None, b"")

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()
        if self.out is not None:
            self.out.close()  # and with it the directory's flock
            self.out = None


def _read_exact(inp: IO[bytes], view: memoryview) -> bool:
    """Fill ``view`` from ``inp``; False on end of input before it is full."""
    got = 0
    while got < view.nbytes:
        n = inp.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            return False
        got += n
    return True


#: Requests that only read or sync: the pages sent after them may be written
#: while they run (a chunk's sync and read-back overlaps the next chunk's arrival).
_READ_ONLY = frozenset(
    {Op.SYNC, Op.HASH, Op.READ, Op.SIZE, Op.LSTAT, Op.READ_FILE, Op.CHANGED, Op.VERIFY, Op.BYE}
)
_WRITES = frozenset({Op.PWRITE, Op.PWRITE_RUNS})

_Item = tuple[int, int, int, int, Any, bytes]


class _Answerer(threading.Thread):
    """Carries out every request but the writes, in order, and writes the replies.

    Writes are made by the reading thread as they arrive; one waits while a
    request that changes files (open, truncate, close...) is still queued, so
    every request sees the writes sent before it and none sent after it that
    could matter to it.
    """

    def __init__(self, rx: Receiver, out: IO[bytes]) -> None:
        super().__init__(name="hvdump-receive", daemon=True)
        self.rx = rx
        self.out = out
        self.queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self.changing = 0
        self.cond = threading.Condition()

    def put(self, item: _Item) -> None:
        if item[0] not in _READ_ONLY:
            with self.cond:
                self.changing += 1
        self.queue.put(item)

    def wait_changes(self) -> None:
        with self.cond:
            while self.changing:
                self.cond.wait()

    def run(self) -> None:
        broken = False
        while (item := self.queue.get()) is not None:
            op, h, a, b, args, data = item
            try:
                reply = self._answer(op, h, a, b, args, data)
                if reply and not broken:
                    self.out.write(reply)
                    self.out.flush()
            except (BrokenPipeError, ValueError):
                broken = True  # the collector is gone: carry on until the end of input
            finally:
                if op not in _READ_ONLY:
                    with self.cond:
                        self.changing -= 1
                        self.cond.notify_all()

    def _answer(self, op: int, h: int, a: int, b: int, args: Any, data: bytes) -> bytes:
        try:
            result = self.rx.handle(op, h, a, b, args, memoryview(data))
        except _Reply as exc:
            if op in NO_REPLY:
                self.rx.failed = self.rx.failed or exc.reason  # the next reply says it
                return b""
            reason = encode_json(exc.reason)
            return REPLY.pack(1, 0, len(reason), 0) + reason
        if result is None:
            return b""
        value, reply_js, payload = result
        rj = encode_json(reply_js)
        return bytes(REPLY.pack(0, value, len(rj), len(payload)) + rj + payload)


def serve(inp: IO[bytes] | None = None, out: IO[bytes] | None = None) -> int:
    """Answer requests until the end of input or ``BYE``; the exit status."""
    inp = inp or open(sys.stdin.fileno(), "rb", buffering=1 << 20, closefd=False)  # noqa: SIM115
    out = out or open(sys.stdout.fileno(), "wb", closefd=False)  # noqa: SIM115
    for fd in (inp.fileno(), out.fileno()):
        enlarge_pipe(fd)
    rx = Receiver()
    answerer = _Answerer(rx, out)
    answerer.start()
    head = memoryview(bytearray(REQUEST.size))
    buf = bytearray(1 << 20)
    status = 0
    try:
        while _read_exact(inp, head):
            op, h, a, b, jlen, dlen = REQUEST.unpack(head)
            if jlen > MAX_JSON:
                status = 2
                break
            js = bytearray(jlen)
            if dlen > len(buf):
                buf = bytearray(dlen)
            data = memoryview(buf)[:dlen]
            if not (_read_exact(inp, memoryview(js)) and _read_exact(inp, data)):
                break
            args = decode_json(bytes(js))
            if op in _WRITES:
                answerer.wait_changes()
                try:
                    rx.handle(op, h, a, b, args, data)
                except _Reply as exc:
                    rx.failed = rx.failed or exc.reason  # no reply expected: the next one says it
            else:
                answerer.put((op, h, a, b, args, bytes(data)))
            data.release()
            if op == Op.BYE:
                break
    finally:
        answerer.queue.put(None)
        answerer.join()
        rx.close()
    return status


def unflatten(inp: IO[bytes], path: Path, *, force: bool = False) -> int:
    """Rebuild ``path`` from makedumpfile's flattened stream on ``inp`` (as
    ``makedumpfile -R``): created 0600 without following links (an existing file
    only with ``force``), written record by record, synced; its size. A stream
    cut short raises one line and leaves what was written (named ``.partial``)."""
    partial = path.with_name(path.name + ".partial")
    if path.exists() and not force:
        raise HvdumpError(f"{path}: exists; give --force to replace it")
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(partial, flags, 0o600)
    except OSError as exc:
        raise HvdumpError(f"{partial}: cannot create: {exc.strerror}") from None
    f = LocalFile(fd, str(partial))
    size = 0
    try:
        for offset, data in records(inp.read, "stdin"):
            f.pwrite(data, offset)
            size = max(size, offset + len(data))
        f.sync(metadata=True)
        os.replace(partial, path)
    except OSError as exc:
        raise disk_error(str(partial), exc, "write failed") from None
    finally:
        f.close()
    return size
