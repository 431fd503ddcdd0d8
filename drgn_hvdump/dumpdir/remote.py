"""A dump directory on an archive host, reached over SSH: ``--output ssh://[user@]host[:port]/path``.

The collector starts ``hvdump receive`` on the archive host through
OpenSSH's client (the user's keys, ``known_hosts`` and ``ssh_config``; no
transport or crypto of our own) and speaks :mod:`~drgn_hvdump.dumpdir.wire`
with it. :class:`RemoteDir` and :class:`RemoteFile` offer what
:class:`~drgn_hvdump.dumpdir.outdir.OutputDir` and
:class:`~drgn_hvdump.dumpdir.filewrite.LocalFile` offer, so the collector,
its journal and its writers run unchanged: the receiver opens the directory
with the same trust checks, creates files without following links, syncs
them and reads them back from its disk (``hash``: XXH64 of what the disk
holds, compared here with the hash of what was sent). A chunk is durable,
and its memory may be released, only once the receiver's reply says so.
The journal lives in the remote directory too: its records count once the
receiver has synced them, and a rerun reads it back to resume.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from drgn_hvdump import __version__, native
from drgn_hvdump.dumpdir.filewrite import DumpFile, page_runs, writev_all
from drgn_hvdump.dumpdir.outdir import OutputDir
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

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "DumpDir",
    "RemoteDir",
    "RemoteError",
    "RemoteFile",
    "SshTarget",
    "is_ssh_url",
    "open_dump_dir",
]

_SCHEME = "ssh://"
_CIPHERS = (
    "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,"
    "aes128-ctr,aes192-ctr,aes256-ctr"
)


def is_ssh_url(text: str | os.PathLike[str]) -> bool:
    """Whether an ``--output`` names an archive host (``ssh://...``)."""
    return isinstance(text, str) and text.startswith(_SCHEME)


class RemoteError(HvdumpError):
    """The archive host could not be reached, or its receiver stopped answering."""


@dataclass(frozen=True)
class SshTarget:
    """Where a dump goes over SSH, and how ``ssh`` is run to get there."""

    host: str
    path: str
    user: str | None = None
    port: int | None = None
    ssh: tuple[str, ...] = ("ssh",)
    options: tuple[str, ...] = ()
    identity: str | None = None
    remote_hvdump: str = "hvdump"

    @classmethod
    def parse(cls, url: str, **how: Any) -> SshTarget:
        """``ssh://[user@]host[:port]/path``: the path is absolute, or, as ``/~/dir``,
        under the remote user's home directory."""
        bad = (
            f"{url}: not an SSH output; write ssh://[user@]host[:port]/absolute/path "
            "(or ssh://host/~/dir for a directory under the remote home)"
        )
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise HvdumpError(bad) from None
        if parts.scheme != "ssh" or not parts.hostname or parts.query or parts.fragment:
            raise HvdumpError(bad)
        path = unquote(parts.path)
        if path.startswith("/~/"):
            path = path[3:]
        if not path.strip("/") or parts.password is not None:
            raise HvdumpError(bad)
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        user = unquote(parts.username) if parts.username else None
        return cls(host=host, path=path, user=user, port=port, **how)

    @property
    def destination(self) -> str:
        host = self.host.strip("[]")
        return f"{self.user}@{host}" if self.user else host

    @property
    def known_hosts_name(self) -> str:
        """The host as known_hosts names it (``[host]:port`` off port 22)."""
        bare = self.host.strip("[]")
        return f"[{bare}]:{self.port}" if self.port and self.port != 22 else bare

    @property
    def url(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        path = self.path if self.path.startswith("/") else f"/~/{self.path}"
        return f"{_SCHEME}{user}{self.host}{port}{path}"

    def argv(self) -> list[str]:
        """The ``ssh`` command that starts the receiver."""
        cmd = [*self.ssh, "-T", "-x", "-a", "-e", "none"]
        # Never a prompt (a capture boot has nobody to answer it); a dead
        # network ends the session in about 45 s instead of never.
        cmd += ["-o", "BatchMode=yes", "-o", "ServerAliveInterval=15"]
        cmd += ["-o", "ServerAliveCountMax=3"]
        if self.port:
            cmd += ["-p", str(self.port)]
        if self.identity:
            cmd += ["-i", self.identity, "-o", "IdentitiesOnly=yes"]
        for opt in self.options:
            cmd += ["-o", opt]
        # OpenSSH's own ciphers, AES-GCM first: hardware-accelerated on POWER8 and
        # later and on x86 (loopback, 2 vCPUs: 0.84x a local collection's throughput
        # against 0.71x with chacha20-poly1305, bench/bench_ssh.py). ssh takes the
        # first value given, so a Ciphers from --ssh-option wins.
        cmd += ["-o", f"Ciphers={_CIPHERS}"]
        return [*cmd, "--", self.destination, f"{self.remote_hvdump} receive"]


def _ssh_problem(target: SshTarget, stderr: str, rc: int | None) -> str:
    """One line for why ssh or the remote command ended before the receiver answered."""
    text = stderr.strip()
    last = text.splitlines()[-1].strip() if text else ""
    host = target.destination
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or "Host key verification failed" in text:
        return (
            f"{host}: its host key is not the one known_hosts holds (changed, or unknown): "
            "ssh refused to connect; check the host, then update known_hosts "
            f"(ssh-keygen -R '{target.known_hosts_name}')"
        )
    if "Permission denied" in text:
        return f"{host}: cannot log in ({last}); check the user, the key (--ssh-identity) and authorized_keys"
    if "invalid choice: 'receive'" in text:
        return (
            f"{host}: its hvdump has no receive command (an older version); "
            f"install hvdump {__version__} there"
        )
    if rc == 127 or "command not found" in text or "No such file or directory" in text:
        return (
            f"{host}: hvdump is not installed there or not on the PATH of an ssh session "
            f"({target.remote_hvdump!r}: {last or 'not found'}); install hvdump {__version__} "
            "there or give its path with --remote-hvdump"
        )
    if rc is not None and rc < 0:
        return (
            f"{host}: ssh was killed (signal {-rc}) before the receiver answered; nothing was "
            "written or released: run the same command again"
        )
    if last.startswith("ssh:") or (rc == 255 and text):
        return (
            f"{host}: ssh cannot connect ({last or 'exit status 255'}); nothing was written "
            "or released: run the same command again once the host answers"
        )
    if rc == 255:
        # No word from ssh: the session closed under it (the receiver or sshd killed).
        return (
            f"{host}: the connection closed before the receiver answered (ssh exit status "
            "255); nothing was written or released: run the same command again"
        )
    return (
        f"{host}: the receiver stopped before it answered ({last or f'exit status {rc}'}); "
        "nothing was released: run the same command again"
    )


class _Connection:
    """One ``ssh`` session running ``hvdump receive``.

    Requests are sent in order under one lock; replies come back in the order
    of the requests that have one and are read by a thread of their own, so a
    thread waiting for a reply (the I/O thread's sync and read-back of one
    chunk) does not stop another from sending (the next chunk's pages).
    """

    def __init__(self, target: SshTarget) -> None:
        self.target = target
        self.lock = threading.Lock()
        self.stderr: collections.deque[str] = collections.deque(maxlen=40)
        self.lost: str | None = None
        self.connected = False  # the receiver answered HELLO
        self._waiting: collections.deque[Future[tuple[int, int, Any, bytes]]] = collections.deque()
        try:
            self.proc = subprocess.Popen(
                target.argv(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                close_fds=True,
            )
        except OSError as exc:
            raise RemoteError(f"cannot run {target.ssh[0]!r}: {exc.strerror}") from None
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout
        for fd in (self._in, self._out.fileno()):
            enlarge_pipe(fd)
        self._errors = threading.Thread(target=self._drain, daemon=True, name="hvdump-ssh-err")
        self._errors.start()
        self._replies = threading.Thread(target=self._read_replies, daemon=True, name="hvdump-ssh")
        self._replies.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self.stderr.append(line)

    def _gone(self) -> RemoteError:
        """The session ended: say why, from ssh's stderr and exit status."""
        if self.lost is None:
            try:
                rc = self.proc.wait(5)
            except subprocess.TimeoutExpired:
                rc = None
            self._errors.join(2)
            stderr = "\n".join(self.stderr)
            if self.connected:
                last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
                if not last:
                    last = (
                        f"ssh killed by signal {-rc}" if rc and rc < 0 else f"ssh exit status {rc}"
                    )
                self.lost = (
                    f"{self.target.url}: the connection to the receiver was lost ({last}); "
                    "nothing it had not acknowledged was released: run the same command again "
                    "to resume"
                )
            else:
                self.lost = _ssh_problem(self.target, stderr, rc)
        return RemoteError(self.lost)

    def _send(self, parts: Sequence[Buffer]) -> None:
        try:
            writev_all(self._in, [memoryview(p).cast("B") for p in parts])
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.EBADF):
                raise self._gone() from None
            raise

    def _recv(self, size: int) -> bytes | None:
        """Exactly ``size`` bytes of the reply stream, or None at its end (a pipe's
        reads may be short)."""
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = self._out.readinto(view[got:])  # type: ignore[attr-defined]
            if not n:
                return None
            got += n
        return bytes(buf)

    def _read_replies(self) -> None:
        """Hand each reply to the request waiting longest; at the end, fail the rest."""
        while True:
            head = self._recv(REPLY.size)
            if head is None:
                break
            status, value, jlen, dlen = REPLY.unpack(head)
            js = self._recv(jlen) if jlen <= MAX_JSON else None
            payload = self._recv(dlen) if js is not None else None
            if payload is None or not self._waiting:
                break
            assert js is not None
            self._waiting.popleft().set_result((status, value, decode_json(js), payload))
        with self.lock:
            err = self._gone()
            while self._waiting:
                self._waiting.popleft().set_exception(err)

    def request(
        self,
        op: Op,
        handle: int = 0,
        a: int = 0,
        b: int = 0,
        args: Any = None,
        data: Sequence[Buffer] = (),
    ) -> tuple[int, Any, bytes]:
        """Send a request; for one with a reply: (value, JSON, data), raising its failure."""
        js = encode_json(args)
        size = sum(memoryview(d).nbytes for d in data)
        head = REQUEST.pack(op, handle, a, b, len(js), size)
        waiter: Future[tuple[int, int, Any, bytes]] | None = None
        with self.lock:
            if self.lost is not None:
                raise RemoteError(self.lost)
            if op not in NO_REPLY:
                waiter = Future()
                self._waiting.append(waiter)
            self._send([head, js, *data])
        if waiter is None:
            return 0, None, b""
        status, value, reply, payload = waiter.result()
        if status:
            raise _failure(self.target, reply if isinstance(reply, dict) else {})
        return value, reply, payload

    def close(self) -> float | None:
        """End the session (the receiver exits); its CPU seconds when it said."""
        cpu = None
        if self.lost is None and self.proc.poll() is None:
            try:
                _, reply, _ = self.request(Op.BYE)
                cpu = float(reply["cpu"]) if isinstance(reply, dict) else None
            except (RemoteError, OSError, KeyError, TypeError, ValueError):
                pass
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._replies.join(5)
        return cpu


def _failure(target: SshTarget, reply: dict[str, Any]) -> Exception:
    """A failed request's error: OSError for the archive host's disk (so the collector
    says it as for a local disk), HvdumpError otherwise; paths named with the host."""
    message = str(reply.get("message") or "the receiver failed")
    where = f"{target.host}:"
    if message.startswith("/"):
        message = where + message
    code = reply.get("errno")
    if reply.get("kind") == "os" and isinstance(code, int):
        name = reply.get("file")
        return OSError(code, message, f"{where}{name}" if name else None)
    return HvdumpError(message)


@dataclass
class RemoteFile:
    """A :class:`~drgn_hvdump.dumpdir.filewrite.DumpFile` held open by the receiver."""

    conn: _Connection
    handle: int
    path: str
    ident: tuple[int, int]

    def pwrite(self, data: Buffer, offset: int) -> None:
        self.conn.request(Op.PWRITE, self.handle, offset, data=[data])

    def pwritev(self, parts: Sequence[Buffer], offset: int) -> None:
        self.conn.request(Op.PWRITE, self.handle, offset, data=parts)

    def write_runs(self, view: memoryview, zero: bytes, page_size: int, offset: int) -> int:
        # One request for the chunk, not one per run: a sparse chunk has hundreds.
        runs = [run for _, run in page_runs(view, zero, page_size)]
        self.conn.request(
            Op.PWRITE_RUNS, self.handle, offset, page_size, {"n": len(zero)}, [zero, *runs]
        )
        return sum(r.nbytes for r in runs)

    def write_zeros(self, offset: int, size: int) -> None:
        self.conn.request(Op.ZERO, self.handle, offset, size)

    def read(self, size: int, offset: int) -> bytes:
        _, _, data = self.conn.request(Op.READ, self.handle, offset, size)
        return data

    def hash(self, offset: int, size: int) -> int:
        value, _, _ = self.conn.request(Op.HASH, self.handle, offset, size)
        return value

    def same(self, offset: int, parts: Sequence[Buffer]) -> bool:
        """Whether the archive host's disk holds ``parts`` at ``offset``: their XXH64
        against the XXH64 the receiver takes of what it reads back."""
        size = sum(memoryview(p).nbytes for p in parts)
        want = native.hash64(b"".join(parts) if len(parts) != 1 else parts[0])
        return self.hash(offset, size) == want

    def sync(self, *, metadata: bool = False) -> None:
        self.conn.request(Op.SYNC, self.handle, int(metadata))

    def truncate(self, size: int) -> None:
        self.conn.request(Op.TRUNCATE, self.handle, size)

    def size(self) -> int:
        value, _, _ = self.conn.request(Op.SIZE, self.handle)
        return value

    def allocated(self) -> int:
        _, reply, _ = self.conn.request(Op.SIZE, self.handle)
        return int(reply["allocated"])

    def file_id(self) -> tuple[int, int]:
        return self.ident

    def close(self) -> None:
        if self.handle and self.conn.lost is None:
            with contextlib.suppress(RemoteError):
                self.conn.request(Op.CLOSE, self.handle)
        self.handle = 0


def _hello(target: SshTarget, **args: Any) -> tuple[_Connection, dict[str, Any]]:
    """Connect and greet the receiver (the same protocol on both ends), or raise one line."""
    conn = _Connection(target)
    try:
        _, hello, _ = conn.request(
            Op.HELLO,
            args={"protocol": PROTOCOL, "version": __version__, "path": target.path, **args},
        )
    except BaseException:
        conn.close()
        raise
    conn.connected = True
    if not isinstance(hello, dict) or hello.get("protocol") != PROTOCOL:
        conn.close()
        theirs = hello.get("version") if isinstance(hello, dict) else None
        raise RemoteError(
            f"{target.destination}: hvdump {theirs or '(unknown version)'} there speaks "
            f"another protocol than hvdump {__version__} here; install hvdump "
            f"{__version__} on both"
        )
    return conn, hello


@dataclass
class RemoteDir:
    """A dump directory on an archive host, as :class:`~drgn_hvdump.dumpdir.outdir.OutputDir`
    offers one (paths are the archive host's)."""

    target: SshTarget
    conn: _Connection
    remote_path: str
    """The directory's absolute path on the archive host."""
    created: bool
    receiver_version: str = ""
    receiver_cpu: float | None = None
    _open: dict[int, RemoteFile] = field(default_factory=dict)

    @classmethod
    def open(cls, target: SshTarget, *, create: bool = True) -> RemoteDir:
        """Connect and open (creating 0700 if asked) the directory, or raise one line."""
        conn, hello = _hello(target, create=create)
        return cls(
            target,
            conn,
            str(hello["path"]),
            bool(hello.get("created")),
            str(hello.get("version", "")),
        )

    @staticmethod
    def probe(target: SshTarget) -> dict[str, Any]:
        """Log in, start the receiver and ask whether it could write the directory, changing
        nothing there; raise one line if not. Returns ``{version, path, exists, free_bytes}``."""
        conn, hello = _hello(target, probe=True)
        try:
            found = hello.get("probe")
            if not isinstance(found, dict):
                raise RemoteError(
                    f"{target.destination}: hvdump {hello.get('version')} there cannot check a "
                    f"directory before collecting; install hvdump {__version__} there"
                )
            return {"version": hello.get("version"), **found}
        finally:
            conn.close()

    @property
    def path(self) -> Path:
        """``host:/path``, as scp writes it: every message names the archive host."""
        return Path(f"{self.target.host}:{self.remote_path}")

    @property
    def location(self) -> str:
        """Where the dump is, for people and for the runtime registry."""
        return replace(self.target, path=self.remote_path).url

    def close(self) -> None:
        for f in list(self._open.values()):
            f.close()
        self._open.clear()
        self.receiver_cpu = self.conn.close()

    def lock(self, *, wait: bool, timeout: float | None) -> int | None:
        """Take the directory's ``flock`` on the archive host: None, or the holder's pid
        (0 when unknown). A receiver whose collector died exits when its session
        closes; it is waited for a few seconds even without ``wait``."""
        _, reply, _ = self.conn.request(Op.LOCK, args={"wait": wait, "timeout": timeout})
        owner = reply.get("owner") if isinstance(reply, dict) else None
        return None if owner is None else int(owner)

    def lstat(self, name: str) -> os.stat_result | None:
        _, reply, _ = self.conn.request(Op.LSTAT, args={"name": name})
        st = reply.get("st") if isinstance(reply, dict) else None
        if st is None:
            return None
        return os.stat_result((*st[:7], 0, 0, 0))

    def exists(self, name: str) -> bool:
        return self.lstat(name) is not None

    def open_file(self, name: str, *, create: bool, exclusive: bool = False) -> RemoteFile:
        handle, reply, _ = self.conn.request(
            Op.OPEN, args={"name": name, "create": create, "exclusive": exclusive}
        )
        dev, ino = reply["id"]
        f = RemoteFile(self.conn, handle, str(self.path / name), (dev, ino))
        self._open[handle] = f
        return f

    def read_bytes(self, name: str, limit: int = 64 << 20) -> bytes:
        _, _, data = self.conn.request(Op.READ_FILE, args={"name": name, "limit": limit})
        return data

    def write_atomic(self, name: str, data: bytes) -> None:
        self.conn.request(Op.WRITE_ATOMIC, args={"name": name}, data=[data])

    def unlink(self, name: str) -> None:
        self.conn.request(Op.UNLINK, args={"name": name})

    def changed(self, files: Mapping[str, DumpFile]) -> str:
        handles = {}
        for name, f in files.items():
            assert isinstance(f, RemoteFile)
            handles[name] = f.handle
        _, reply, _ = self.conn.request(Op.CHANGED, args={"files": handles})
        why = str(reply.get("why", "")) if isinstance(reply, dict) else ""
        return why.replace(self.remote_path, str(self.path), 1) if why else ""

    def file_ids(self, names: list[str]) -> Iterator[tuple[str, tuple[int, int] | None]]:
        for name in names:
            st = self.lstat(name)
            yield name, None if st is None else (st.st_dev, st.st_ino)

    def verify(self) -> tuple[bool, list[str]]:
        """``hvdump verify`` of the directory, run by the receiver on the archive host."""
        _, reply, _ = self.conn.request(Op.VERIFY)
        return bool(reply.get("ok")), [str(x) for x in reply.get("lines", [])]


def parse_st(st: os.stat_result) -> list[int]:
    """The part of a stat result :attr:`Op.LSTAT` carries (mode first, as ``os.stat_result``)."""
    return [st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, st.st_size]


DumpDir = OutputDir | RemoteDir
"""An opened output directory, here or on an archive host."""


def open_dump_dir(where: Path | SshTarget, *, create: bool = True) -> DumpDir:
    """An output directory here or on an archive host, opened (created 0700 if asked)."""
    if isinstance(where, SshTarget):
        return RemoteDir.open(where, create=create)
    return OutputDir.open(where, create=create)
