"""A running (or finished) collection seen from outside: what is saved, what is released.

The collector writes two things for other tools, the drgn plugin first:

* ``DIR/plan.json`` (0600, atomic, before the first chunk): the dump it
  collects (root, the hypervisor's dump header), the output file and format,
  every chunk (kind, source address in ``/proc/vmcore``, destination address
  in the crashed kernel's memory, size) and every release write with the
  pages it may free;
* a registration in the runtime directory (:func:`runtime_dir`), one small
  JSON file per capture root naming its output directory, so a tool given
  only ``ROOT/proc/vmcore`` finds the collection.

:class:`CollectionView` reads the plan once and then follows the journal as
it grows (one ``fstat`` per :meth:`CollectionView.refresh` when nothing
changed): which chunks are durable, which release writes were started (an
``intent`` counts: the kernel may already have reused those pages).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drgn_hvdump.errors import FormatError
from drgn_hvdump.fsutil import write_atomic
from drgn_hvdump.intervals import IntervalSet

__all__ = [
    "JOURNAL_FILE",
    "PLAN_FILE",
    "PLAN_VERSION",
    "CollectionView",
    "PlanChunk",
    "find_collection",
    "read_registration",
    "register_collection",
    "registration_path",
    "runtime_dir",
    "trusted_runtime_dir",
    "unregister_collection",
    "write_plan_file",
]

PLAN_FILE = "plan.json"
JOURNAL_FILE = "journal.jsonl"
PLAN_VERSION = 1


def runtime_dir() -> Path:
    """Where collections register: ``$HVDUMP_RUNTIME_DIR``, else ``/run/hvdump`` for root,
    else ``$XDG_RUNTIME_DIR/hvdump``, else ``/tmp/hvdump-UID``."""
    env = os.environ.get("HVDUMP_RUNTIME_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/hvdump")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "hvdump"
    return Path(f"/tmp/hvdump-{os.geteuid()}")


def _root_key(root: str | os.PathLike[str]) -> str:
    real = os.path.realpath(root)
    return hashlib.sha256(real.encode()).hexdigest()[:24]


def _untrusted(st: os.stat_result, what: str, path: Path, *, directory: bool) -> str:
    """Why a runtime-directory object is not ours (empty when it is)."""
    kind_ok = stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)
    if not kind_ok:
        return f"{path}: the {what} is not a {'directory' if directory else 'regular file'}"
    if st.st_uid != os.geteuid():
        return f"{path}: the {what} belongs to uid {st.st_uid}, not to this user"
    if st.st_mode & (0o077 if directory else 0o022):
        return f"{path}: the {what} is open to other users (mode {st.st_mode & 0o777:o})"
    return ""


def trusted_runtime_dir(create: bool = False) -> tuple[Path | None, str]:
    """:func:`runtime_dir` if it is this user's own (a directory, not a link, mode
    0700), creating it when asked; else None and why it is not trusted."""
    d = runtime_dir()
    if create:
        try:
            d.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            return None, f"{d}: cannot create the runtime directory: {exc.strerror}"
    try:
        st = os.lstat(d)
    except OSError:
        return None, f"{d}: no runtime directory"
    why = _untrusted(st, "runtime directory", d, directory=True)
    return (None, why) if why else (d, "")


def register_collection(
    root: str | os.PathLike[str],
    output: str | os.PathLike[str],
    identity: str,
    since: float,
    **facts: Any,
) -> str:
    """Record that ``output`` collects the dump ``identity`` under ``root``.

    Best effort: an untrusted or read-only runtime directory only costs other
    tools the automatic lookup; the reason is returned (empty on success).
    """
    d, why = trusted_runtime_dir(create=True)
    if d is None:
        return why
    entry = {
        "root": os.path.realpath(root),
        "output": os.path.realpath(output),
        "identity": identity,
        "pid": os.getpid(),
        "uid": os.geteuid(),
        "since": since,
        **facts,
    }
    try:
        write_atomic(registration_path(root), json.dumps(entry).encode())
    except OSError as exc:
        return f"{registration_path(root)}: cannot register the collection: {exc.strerror}"
    return ""


def unregister_collection(root: str | os.PathLike[str], identity: str) -> None:
    """Remove this process's entry for ``root`` (only if it names ``identity``)."""
    entry, _ = read_registration(root)
    if entry is None or entry.get("identity") != identity:
        return
    with contextlib.suppress(OSError):
        os.unlink(registration_path(root))


def registration_path(root: str | os.PathLike[str]) -> Path:
    """The runtime-directory file a collection of ``root`` registers in."""
    return runtime_dir() / f"collect-{_root_key(root)}.json"


def read_registration(root: str | os.PathLike[str]) -> tuple[dict[str, Any] | None, str]:
    """The registry entry for ``root`` if it can be trusted, else None and why not
    (empty when there is simply none).

    Trusted means: in this user's own runtime directory, a regular file of this
    user's that nobody else may write, opened without following links, valid
    JSON naming ``root``.
    """
    d, why = trusted_runtime_dir()
    if d is None:
        return None, "" if why.endswith("no runtime directory") else why
    path = registration_path(root)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, f"{path}: ignored: {exc.strerror}"
    try:
        st = os.fstat(fd)
        why = _untrusted(st, "registry entry", path, directory=False)
        if why:
            return None, why + "; ignored"
        data = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    try:
        entry = json.loads(data)
    except ValueError:
        return None, f"{path}: not JSON; ignored"
    if not isinstance(entry, dict) or entry.get("root") != os.path.realpath(root):
        return None, f"{path}: names another root; ignored"
    return entry, ""


def find_collection(
    root: str | os.PathLike[str],
    identity: str | None = None,
    warnings: list[str] | None = None,
) -> Path | None:
    """The output directory registered for ``root`` (``$HVDUMP_OUTPUT`` wins), or None.

    With ``identity``, an entry (or a plan) of another dump is ignored, with a
    warning appended to ``warnings``: a stale entry of an LPAR once mounted at
    the same path must not serve another dump's bytes.
    """
    env = os.environ.get("HVDUMP_OUTPUT")
    if env:
        return Path(env)
    entry, why = read_registration(root)
    if entry is None:
        if why and warnings is not None:
            warnings.append(why)
        return None
    out = Path(str(entry.get("output", "")))
    if identity is not None and entry.get("identity") != identity:
        if warnings is not None:
            warnings.append(
                f"{registration_path(root)}: registers {out} for another dump than the one "
                f"under {root} (a stale entry?); ignored"
            )
        return None
    return out if (out / PLAN_FILE).exists() else None


@dataclass(frozen=True)
class PlanChunk:
    """One chunk of the plan: ``src`` in ``/proc/vmcore``, ``dst`` in the crashed memory
    (``cpu``/``hpte``: offset in ``regsave.bin``/``hpte.bin``)."""

    index: int
    kind: str
    src: int
    dst: int
    size: int


def write_plan_file(
    out: Path,
    *,
    root: Path,
    identity: str,
    header_hex: str,
    scrubbed: bool = False,
    dump_file: str,
    fmt: str,
    page_size: int,
    memory: int,
    chunks: list[tuple[int, str, int, int, int]],
    writes: list[tuple[int, int, int, int]],
    dir_fd: int | None = None,
) -> None:
    """Write ``DIR/plan.json``: chunks as ``[index, kind, src, dst, size]``, writes as
    ``[addr, size, span_start, span_end]`` in plan index order."""
    plan = {
        "version": PLAN_VERSION,
        "root": os.path.realpath(root),
        "identity": identity,
        "scrubbed": scrubbed,
        "header": header_hex,
        "dump_file": dump_file,
        "format": fmt,
        "page_size": page_size,
        "memory": memory,
        "chunks": [list(c) for c in chunks],
        "writes": [list(w) for w in writes],
    }
    data = json.dumps(plan, separators=(",", ":")).encode()
    if dir_fd is not None:
        write_atomic(PLAN_FILE, data, dir_fd=dir_fd)
    else:
        write_atomic(out / PLAN_FILE, data)


class CollectionView:
    """A collection's plan plus its journal, followed as it grows."""

    def __init__(self, out: Path) -> None:
        self.out = out
        path = out / PLAN_FILE
        try:
            plan: dict[str, Any] = json.loads(path.read_text())
        except OSError as exc:
            raise FormatError(
                f"cannot read the collection plan: {exc.strerror}", path=str(path)
            ) from None
        except ValueError:
            raise FormatError("the collection plan is not JSON", path=str(path)) from None
        if plan.get("version") != PLAN_VERSION:
            raise FormatError(
                f"plan version {plan.get('version')!r}, this hvdump reads {PLAN_VERSION}",
                path=str(path),
            )
        self.root = str(plan["root"])
        self.header_hex = str(plan["header"])
        self.identity = str(plan.get("identity") or "")
        self.scrubbed = bool(plan.get("scrubbed"))
        self.chunk_hash: dict[int, int] = {}  # XXH64 of each durable chunk as read
        self.dump_path = out / str(plan["dump_file"])
        self.format = str(plan["format"])
        self.page_size = int(plan["page_size"])
        self.memory = int(plan["memory"])
        self.chunks = [PlanChunk(*c) for c in plan["chunks"]]
        memory = [ch for ch in self.chunks if ch.kind in ("rmo", "mem")]
        self._by_src = sorted((ch.src, ch.index) for ch in memory)
        self._by_dst = sorted((ch.dst, ch.index) for ch in memory)
        self.writes = [tuple(int(x) for x in w) for w in plan["writes"]]
        self.durable = IntervalSet()  # source (vmcore) addresses of durable chunks
        self.durable_chunks: set[int] = set()
        self.released = IntervalSet()  # source pages a started release write may free
        self.done = False
        self._journal = out / JOURNAL_FILE
        self._pos = 0
        self._stamp: tuple[int, int] | None = None
        self._tail = b""
        self.refresh()

    def refresh(self) -> bool:
        """Read journal lines added since the last call; whether anything changed."""
        try:
            st = os.stat(self._journal)
        except OSError:
            return False
        stamp = (st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        if st.st_size < self._pos:  # rewritten: start again
            self._pos, self._tail = 0, b""
            self.durable, self.released = IntervalSet(), IntervalSet()
            self.durable_chunks = set()
        with open(self._journal, "rb") as f:
            f.seek(self._pos)
            data = f.read()
        self._pos += len(data)
        lines = (self._tail + data).split(b"\n")
        self._tail = lines.pop()  # an unfinished last line waits for its newline
        changed = False
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            changed |= self._apply(rec)
        return changed

    def _apply(self, rec: dict[str, Any]) -> bool:
        t = rec.get("t")
        if t == "chunk":
            i = int(rec["i"])
            if 0 <= i < len(self.chunks):
                ch = self.chunks[i]
                self.durable_chunks.add(i)
                if isinstance(rec.get("xxh64"), int):
                    self.chunk_hash[i] = rec["xxh64"]
                if ch.kind in ("rmo", "mem"):
                    self.durable.add(ch.src, ch.src + ch.size)
                return True
        elif t == "rel" and rec.get("s") == "intent":
            w = int(rec["w"])
            if 0 <= w < len(self.writes):
                _, _, lo, hi = self.writes[w]
                self.released.add(lo, hi)
                return True
        elif t == "done":
            self.done = True
            return True
        return False

    def chunks_at_dst(self, start: int, end: int) -> list[PlanChunk]:
        """The memory chunks whose destination (crashed-memory) range meets ``[start, end)``."""
        at = max(0, bisect.bisect_right(self._by_dst, (start, len(self.chunks))) - 1)
        out = []
        for dst, i in self._by_dst[at:]:
            if dst >= end:
                break
            ch = self.chunks[i]
            if ch.dst + ch.size > start:
                out.append(ch)
        return out

    def chunk_for_src(self, src: int) -> PlanChunk | None:
        """The memory chunk whose source range holds ``src``."""
        at = bisect.bisect_right(self._by_src, (src, len(self.chunks))) - 1
        if at < 0:
            return None
        ch = self.chunks[self._by_src[at][1]]
        return ch if src < ch.src + ch.size else None
