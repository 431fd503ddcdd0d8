"""makedumpfile's flattened format (``makedumpfile -F``): a dump file as a stream.

A dump written to a pipe cannot seek, so makedumpfile ``-F`` writes a 4096-byte
header (the signature ``makedumpfile``, type 1, version 1) and then each write
as a record: its file offset and size (two signed 64-bit big-endian values,
whatever the machine) and its bytes; a record of offset -1 and size -1 ends the
stream. ``makedumpfile -R FILE`` rebuilds the file by making the writes in
order (a later write over an earlier one wins). kdump services use it to send
a dump over ssh (kdump-utils' ssh target, kdump-tools' ``SSH=``).

The layouts are described once here; the writer
(:class:`~drgn_hvdump.dumpdir.filewrite.FlatFile`) and the reader
(:func:`records`) use them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

from drgn_hvdump.errors import FormatError

__all__ = [
    "END",
    "FLAT_HEADER",
    "FLAT_HEADER_SIZE",
    "FLAT_RECORD",
    "MAX_RECORD",
    "flat_header",
    "records",
]

FLAT_SIGNATURE = b"makedumpfile"
FLAT_TYPE = 1
FLAT_VERSION = 1
FLAT_HEADER = struct.Struct(">16sqq")
"""signature (NUL-padded), type, version; the header block is :data:`FLAT_HEADER_SIZE` bytes."""
FLAT_HEADER_SIZE = 4096
FLAT_RECORD = struct.Struct(">qq")
"""A record's offset in the dump file and the size of the bytes that follow."""
END = FLAT_RECORD.pack(-1, -1)
MAX_RECORD = 1 << 30
"""Largest record read (makedumpfile's are at most its write buffer, a few MiB)."""


def flat_header() -> bytes:
    """The stream's first 4096 bytes."""
    return FLAT_HEADER.pack(FLAT_SIGNATURE, FLAT_TYPE, FLAT_VERSION).ljust(FLAT_HEADER_SIZE, b"\0")


def records(read: Callable[[int], bytes], where: str) -> Iterator[tuple[int, bytes]]:
    """The writes of a flattened stream read with ``read(n)`` (fewer bytes only at its
    end), in order: ``(file offset, bytes)``. Raises :class:`FormatError` naming the
    stream offset of what is wrong."""
    head = read(FLAT_HEADER_SIZE)
    if len(head) < FLAT_HEADER.size or not head.startswith(FLAT_SIGNATURE + b"\0"):
        raise FormatError(
            "not a flattened dump (no makedumpfile signature)",
            path=where,
            offset=0,
            hint="give the output of makedumpfile -F or hvdump convert --flattened",
        )
    _, kind, _version = FLAT_HEADER.unpack_from(head)
    if kind != FLAT_TYPE or len(head) < FLAT_HEADER_SIZE:
        raise FormatError(
            f"flattened header of type {kind}, expected {FLAT_TYPE}"
            if kind != FLAT_TYPE
            else "the stream ends inside its header",
            path=where,
            offset=FLAT_HEADER.size - 16 if kind != FLAT_TYPE else len(head),
        )
    at = FLAT_HEADER_SIZE
    while True:
        raw = read(FLAT_RECORD.size)
        if len(raw) < FLAT_RECORD.size:
            raise FormatError(
                "the stream ends without its end record (cut short?)",
                path=where,
                offset=at,
                hint="the sender stopped before the dump was complete; send it again",
            )
        offset, size = FLAT_RECORD.unpack(raw)
        if (offset, size) == (-1, -1):
            return
        if offset < 0 or not 0 < size <= MAX_RECORD:
            raise FormatError(
                f"record of offset {offset} and size {size} (not a flattened dump record)",
                path=where,
                offset=at,
            )
        at += FLAT_RECORD.size
        data = read(size)
        if len(data) < size:
            raise FormatError(
                f"the stream ends inside a record of {size} bytes (cut short?)",
                path=where,
                offset=at + len(data),
                hint="the sender stopped before the dump was complete; send it again",
            )
        yield offset, data
        at += size
