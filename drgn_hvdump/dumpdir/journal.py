"""The journal of a collection: append-only JSON lines, each fsynced before it counts.

The first record (``start``) binds the journal to the dump it collects (its
identity, the options, ``MemTotal`` and boot id at the start); ``files``
records the identity (device, inode) of each file it created; then ``chunk``
(durable), ``rel`` (a release's intent and its confirmation), ``boot`` (the
capture kernel rebooted), ``stop`` (why it stopped itself) and ``done``. A
torn last line (killed mid-write) is ignored and cut before the next append.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from drgn_hvdump.dumpdir.filewrite import DumpFile
from drgn_hvdump.dumpdir.names import JOURNAL
from drgn_hvdump.errors import FormatError, HvdumpError

if TYPE_CHECKING:  # the transport's module is not needed to read a journal
    from drgn_hvdump.dumpdir.remote import DumpDir

__all__ = ["Journal"]


class Journal:
    """Append-only, fsynced JSON lines; a torn last line (killed mid-write) is ignored."""

    def __init__(self, out: DumpDir, records: list[dict[str, Any]] | None = None) -> None:
        self.out = out
        self.path = out.path / JOURNAL
        self.records: list[dict[str, Any]] = records or []
        self._file: DumpFile | None = None
        self._end = 0

    @classmethod
    def load(cls, out: DumpDir) -> Journal | None:
        """The journal in ``out``, or None when there is none."""
        if not out.exists(JOURNAL):
            return None
        path = out.path / JOURNAL
        try:
            data = out.read_bytes(JOURNAL, limit=1 << 30)
        except OSError as exc:
            raise HvdumpError(f"{path}: cannot read the journal: {exc.strerror or exc}") from None
        records: list[dict[str, Any]] = []
        lines = data.split(b"\n")
        offset = 0
        for n, line in enumerate(lines):
            if line.strip():
                try:
                    rec = json.loads(line)
                except ValueError:
                    rec = None
                if not isinstance(rec, dict):
                    if n < len(lines) - 2 or line.endswith(b"}"):
                        raise FormatError(
                            "journal line is not a JSON object",
                            path=str(path),
                            offset=offset,
                            hint="not a journal this hvdump wrote; use another --output",
                        )
                else:
                    records.append(rec)
            offset += len(line) + 1
        return cls(out, records)

    @property
    def start(self) -> dict[str, Any]:
        return self.records[0] if self.records else {}

    @property
    def identity(self) -> str | None:
        ident = self.start.get("identity")
        return ident if isinstance(ident, str) else None

    @property
    def done(self) -> bool:
        return any(r.get("t") == "done" for r in self.records)

    def file_ids(self) -> dict[str, tuple[int, int]]:
        """The files this collection created, as journaled when it created them."""
        for rec in self.records:
            if rec.get("t") == "files" and isinstance(rec.get("ids"), dict):
                return {str(k): (int(v[0]), int(v[1])) for k, v in rec["ids"].items()}
        return {}

    def open(self, *, new: bool) -> None:
        file = self._file = self.out.open_file(JOURNAL, create=True, exclusive=new)
        size = file.size()
        if size and file.read(1, size - 1) != b"\n":
            # A torn line: cut it so the next record starts on its own line.
            size = file.read(size, 0).rfind(b"\n") + 1
            file.truncate(size)
        self._end = size

    @property
    def file(self) -> DumpFile:
        assert self._file is not None, "journal not open"
        return self._file

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        self.file.pwrite(line, self._end)
        self.file.sync()
        self._end += len(line)
        self.records.append(record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
