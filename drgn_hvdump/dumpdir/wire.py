"""The wire protocol between a collector and ``hvdump receive`` on an archive host.

It carries the operations of a dump directory (:class:`~drgn_hvdump.dumpdir.outdir.OutputDir`)
and of its files (:class:`~drgn_hvdump.dumpdir.filewrite.DumpFile`) over one
byte stream, which OpenSSH's client provides: the receiver is the remote
command of an ``ssh`` session and speaks on its stdin and stdout. Each
request is a fixed header (:data:`REQUEST`), JSON arguments and raw data;
each reply a fixed header (:data:`REPLY`), a JSON value and raw data.
Writes (:attr:`Op.PWRITE`) and closes have no reply: the receiver keeps the
first failure and answers the next request with it, so a write is known to
be durable only from the reply to a later :attr:`Op.SYNC` of its file.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import struct
from typing import Any

__all__ = [
    "NO_REPLY",
    "PROTOCOL",
    "REPLY",
    "REQUEST",
    "Op",
    "decode_json",
    "encode_json",
    "enlarge_pipe",
]

PROTOCOL = 1
"""The protocol's version: the collector and the receiver must speak the same one."""

REQUEST = struct.Struct(">B3xIQQII")
"""op, file handle, a, b, JSON length, data length (big-endian, 32 bytes)."""

REPLY = struct.Struct(">B3xQII")
"""status (0 ok, 1 failed: the JSON says why), value, JSON length, data length (20 bytes)."""

MAX_JSON = 64 << 20
"""Longest JSON part accepted (the largest is a journal or manifest read back)."""


class Op(enum.IntEnum):
    """The requests; ``a`` and ``b`` are offsets and sizes where the operation has them."""

    HELLO = 1  # JSON {protocol, version, path, create} -> {protocol, version, path, host}
    LOCK = 2  # JSON {wait, timeout} -> {owner: pid or null}
    LSTAT = 3  # JSON {name} -> {st: [mode, ino, dev, nlink, uid, gid, size] or null}
    OPEN = 4  # JSON {name, create, exclusive} -> value: handle; JSON {id: [dev, ino]}
    READ_FILE = 5  # JSON {name, limit} -> data
    WRITE_ATOMIC = 6  # JSON {name}, data
    UNLINK = 7  # JSON {name}
    CHANGED = 8  # JSON {files: {name: handle}} -> {why: phrase or ""}
    PWRITE = 9  # handle, a=offset, data (no reply)
    ZERO = 10  # handle, a=offset, b=size: write zeros
    READ = 11  # handle, a=offset, b=size -> data (page cache dropped)
    HASH = 12  # handle, a=offset, b=size -> value: XXH64 (page cache dropped)
    SYNC = 13  # handle, a=1 for metadata too
    TRUNCATE = 14  # handle, a=size
    SIZE = 15  # handle -> value: size; JSON {allocated: bytes of disk}
    CLOSE = 16  # handle (no reply)
    VERIFY = 17  # -> {ok, lines}: hvdump verify of the directory
    BYE = 18  # -> {cpu: seconds}; the receiver exits
    PWRITE_RUNS = 19  # handle, a=offset, b=page size, JSON {n}: data = n zero flags, then
    # the non-zero pages one after another, each run written at its place (no reply)


NO_REPLY = frozenset({Op.PWRITE, Op.PWRITE_RUNS, Op.CLOSE})


def encode_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() if value is not None else b""


def decode_json(raw: bytes) -> Any:
    return json.loads(raw) if raw else None


def enlarge_pipe(fd: int) -> None:
    """Give a pipe 1 MiB (not 64 KiB): a chunk crosses it in fewer wake-ups."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ; not a pipe, or over the limit: as is
