"""The crashed kernel's memory as a capture kernel offers it: ``/proc/vmcore``.

An ELF core whose ``PT_LOAD`` segments map physical memory; the collector and
the public API read chunks of it by physical address, straight into their
buffers.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from drgn_hvdump.errors import FormatError, HvdumpError
from drgn_hvdump.formats.elfcore import ElfCore, file_offset
from drgn_hvdump.model.pages import kernel_page_size

__all__ = ["Vmcore"]


class Vmcore:
    """``/proc/vmcore``: physical reads through its PT_LOADs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.core = ElfCore.open(path)
        except OSError as exc:
            raise HvdumpError(f"{path}: cannot open: {exc.strerror}") from None
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    @property
    def memory(self) -> int:
        """The end of the highest physical address it maps."""
        return max((ph.p_paddr + ph.p_memsz for ph in self.core.segments), default=0)

    def page_size(self) -> int:
        """The crashed kernel's page size, from its VMCOREINFO."""
        text = (self.core.vmcoreinfo or {}).get("PAGESIZE")
        size = kernel_page_size(text)
        if size is None:
            raise FormatError(
                "VMCOREINFO has no PAGESIZE"
                if text is None
                else f"VMCOREINFO PAGESIZE {text!r} is not a kernel's page size",
                path=str(self.path),
                hint="cannot tell the page size",
            )
        return size

    def file_offset(self, paddr: int, size: int) -> int:
        """Where the file holds ``paddr``+``size``, or one line saying it does not."""
        offset = file_offset(self.core.segments, paddr, size)
        if offset is None:
            raise FormatError(
                f"physical range {paddr:#x}+{size:#x} is in no PT_LOAD with file data",
                path=str(self.path),
                hint="the vmcore does not match the dump header",
            )
        return offset

    def read_into(self, paddr: int, buf: bytearray | mmap.mmap) -> None:
        """Fill ``buf`` with the memory at ``paddr``."""
        offset = self.file_offset(paddr, len(buf))
        view = memoryview(buf)
        done = 0
        while done < len(buf):
            try:
                n = os.preadv(self.fd, [view[done:]], offset + done)
            except OSError as exc:
                # procfs answers EIO once the kernel removed the vmcore (the dump
                # was released or invalidated under the reader).
                raise HvdumpError(
                    f"{self.path}: read of {paddr:#x}+{len(buf):#x} failed at offset "
                    f"{offset + done:#x}: {exc.strerror}"
                    + ("; the dump is gone (released?)" if not self.path.exists() else "")
                ) from None
            if n <= 0:
                raise FormatError(
                    f"short read: {done} of {len(buf)} bytes",
                    path=str(self.path),
                    offset=offset + done,
                )
            done += n

    def close(self) -> None:
        os.close(self.fd)
        self.core.close()
