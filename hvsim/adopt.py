"""Adopt a real memory image (an ELF core of a whole guest) as a simulated LPAR's RAM.

A simulator earns trust when the same pipeline works on memory a real kernel
wrote. ``hvsim adopt CORE DIR`` makes an LPAR whose first kernel's memory is
the image: QEMU's ``dump-guest-memory`` of a ``pseries`` guest, a raw
``/proc/vmcore`` copy, or any ppc64 ELF core of a whole machine. The rest of
the life cycle (boot, crash, capture boot, release, collect) runs unchanged
on top of it: the image is read in place (a layer of kind ``image``), never
copied.

What is taken from the image, and how its quirks are handled (the reading
is :mod:`drgn_hvdump.formats.guestcore`'s, which ``hvdump convert`` shares):

* **Memory.** Each ``PT_LOAD`` at its ``p_paddr``. QEMU writes ``p_paddr``
  and ``p_vaddr`` 0 for a single RAM block, which is right for a guest whose
  RAM starts at 0; several segments all at 0 are placed by ``p_vaddr`` when
  that is in the kernel's linear map, and refused otherwise.
* **Byte orders.** QEMU 7.2 writes the ELF header and notes big-endian even
  for a little-endian guest. The notes are read in the order in which the
  registers make sense (64-bit mode set in some CPU's MSR: a CPU stopped in
  RTAS runs 32-bit real mode). The *kernel's* order is that of its
  VMCOREINFO note when found in memory, else the ``LE`` bit of a CPU in
  64-bit mode, unless the user says otherwise.
* **VMCOREINFO.** From the core's note if it has one (QEMU's pseries has no
  vmcoreinfo device, so usually not); else at a physical address the user
  gives (the guest's ``/sys/kernel/vmcoreinfo``); else found in memory by
  the kernel's own note header (``VMCOREINFO`` name, then ``OSRELEASE=``).
* **Registers.** One ``NT_PRSTATUS`` note per CPU, in CPU order; they go
  into the hypervisor's register save area at the crash.
* **MMU.** ``NUMBER(RADIX_MMU)`` where VMCOREINFO has it (newer kernels),
  else what the user says (``--mmu``), else hash: QEMU boots POWER8 guests
  with the hash MMU and POWER9 ones with radix.
* **HPTEs.** A guest's hashed page table is the hypervisor's, not in guest
  RAM, so no dump of guest memory has it. A hash-MMU kernel bolts its linear
  map into the table at boot; the HPTE section holds those entries (16 MiB
  pages, as Linux places them). A radix kernel has no hashed page table:
  the section is empty.

The LPAR gets more RAM than the image (the image rounded up to 256 MiB, plus
room for the scratch area above it), so the hypervisor's save area never
lands on the image's data: that memory is what a kernel booted with
``phyp_dump=1`` would have kept reserved, and reads as zero.
"""

from __future__ import annotations

import os
from typing import Any

from drgn_hvdump.formats.elfcore import PtRegs, build_prstatus
from drgn_hvdump.formats.guestcore import GuestCoreError as ImageError
from drgn_hvdump.formats.guestcore import GuestImage, read_guest_core
from drgn_hvdump.formats.hpte import linear_map_hptes
from drgn_hvdump.formats.layout import ByteOrder
from drgn_hvdump.formats.regsave import CpuState, pt_regs_to_cpu_state

from .config import MEMORY_GRANULE, LparConfig
from .hypervisor import scratch_layout

__all__ = [
    "AdoptedKernel",
    "ImageError",
    "adopted_memory_size",
    "adoption_config",
    "inspect_image",
    "open_adopted",
]

_LINEAR_PAGE_SHIFT = 24


def adopted_memory_size(ram_end: int, cpus: int, page_size: int, dump: str = "phyp") -> int:
    """RAM for an LPAR adopting an image that ends at ``ram_end``: phyp's scratch area, or
    fadump's reserved and parameter areas, fit above it."""
    from .fadump import reservation

    memory = max(2 * MEMORY_GRANULE, -(-ram_end // MEMORY_GRANULE) * MEMORY_GRANULE)
    while True:
        memory += MEMORY_GRANULE
        if dump == "fadump":
            cfg = LparConfig(
                memory=memory, cpus=cpus, page_size=page_size, dump="fadump", image="/adopted"
            )
            res = reservation(cfg)
            if res.ra_start >= ram_end and res.problem() is None:
                return memory
            continue
        cfg = LparConfig(memory=memory, cpus=cpus, page_size=page_size)
        if scratch_layout(cfg).base >= ram_end:
            return memory


_images: dict[tuple[str, int, int, int | None, ByteOrder | None], GuestImage] = {}


def inspect_image(
    path: str | os.PathLike[str],
    *,
    vmcoreinfo_at: int | None = None,
    endian: ByteOrder | None = None,
) -> GuestImage:
    """:func:`drgn_hvdump.formats.guestcore.read_guest_core`, and a page size hvsim models.

    Read once per process and file version (finding VMCOREINFO scans memory;
    ``Lpar.adopt`` and the boot after it, and the FUSE server at every state
    change, ask again). A result found without ``endian`` is also kept under
    the byte order it found, which is what the LPAR's configuration says.
    """
    full = os.path.abspath(os.fspath(path))
    st = os.stat(full)
    key = (full, st.st_size, st.st_mtime_ns, vmcoreinfo_at)
    image = _images.get((*key, endian))
    if image is None:
        image = read_guest_core(full, vmcoreinfo_at=vmcoreinfo_at, endian=endian)
        if image.page_size not in (4096, 65536):
            raise ImageError(
                f"{image.path}: VMCOREINFO PAGESIZE={image.page_size}: hvsim models 4K or 64K pages"
            )
        if len(_images) >= 16:
            _images.clear()
        _images[(*key, endian)] = _images[(*key, image.byteorder)] = image
    return image


def open_adopted(config: LparConfig) -> GuestImage:
    """The image an LPAR adopted, checked to be the same file it was adopted from."""
    try:
        size = os.stat(config.image).st_size
    except OSError as exc:
        raise ImageError(
            f"{config.image}: the adopted image cannot be read: {exc.strerror}; the LPAR "
            "reads it in place, so it must stay where it was adopted from"
        ) from None
    if size != config.image_size:
        raise ImageError(
            f"{config.image}: the adopted image is now {size} bytes, it was "
            f"{config.image_size} when adopted; adopt it again into a new LPAR"
        )
    at = config.image_vmcoreinfo if config.image_vmcoreinfo >= 0 else None
    return inspect_image(config.image, vmcoreinfo_at=at, endian=config.endian)


# ------------------------------------------------------------ the kernel


class AdoptedKernel:
    """The crashed kernel of an adopted image: what :class:`hvsim.kernel.KernelImage` offers.

    Its memory is the image's own; what the hypervisor saves (registers,
    HPTEs) and what the capture kernel shows (VMCOREINFO) come from it.
    """

    def __init__(self, config: LparConfig) -> None:
        self.config = config
        self._image: GuestImage | None = None

    @property
    def image(self) -> GuestImage:
        if self._image is None:
            self._image = open_adopted(self.config)
        return self._image

    @property
    def crash_cpu(self) -> int:
        """The CPU that panicked, as given at adoption (drgn reads ``panic_cpu`` itself)."""
        return self.config.image_crash_cpu

    def banner(self) -> str:
        return f"Linux version {self.config.osrelease} (adopted image {self.config.image})\n"

    def vmcoreinfo(self) -> bytes:
        """The kernel's own VMCOREINFO text, as found in the image."""
        return self.image.vmcoreinfo

    def pt_regs(self, cpu: int) -> PtRegs:
        return self.image.registers[cpu]

    def cpu_states(self) -> list[CpuState]:
        return [pt_regs_to_cpu_state(cpu, r) for cpu, r in enumerate(self.image.registers)]

    def prstatus(self, cpu: int, pid: int | None = None) -> bytes:
        return build_prstatus(
            self.pt_regs(cpu), self.config.endian, pid=cpu + 1 if pid is None else pid
        )

    def overlays(self) -> list[tuple[int, bytes]]:
        """Nothing: the dying kernel's memory is the image as it is."""
        return []

    def memory_model(self) -> None:
        """None: the image holds its kernel's own ``struct page`` arrays."""
        return None

    def hash_page_table(self, table_size: int) -> list[tuple[int, int, int]]:
        """The bolted linear map of a hash-MMU kernel (none for radix)."""
        if self.config.image_mmu == "radix":
            return []
        span = -(-self.image.ram_end >> _LINEAR_PAGE_SHIFT) << _LINEAR_PAGE_SHIFT
        table = linear_map_hptes(span, table_size, _LINEAR_PAGE_SHIFT)
        return [(slot, h.v, h.r) for slot, h in sorted(table.items())]


def adoption_config(
    image: GuestImage,
    *,
    crash_cpu: int = 0,
    vmcoreinfo_at: int | None = None,
    quirks: str = "faithful",
    name: str = "hvsim-lpar",
    mmu: str | None = None,
    dump: str = "phyp",
) -> dict[str, Any]:
    """The :meth:`hvsim.lpar.Lpar.create` arguments of an LPAR adopting ``image``.

    ``mmu`` defaults to what VMCOREINFO says, else ``"hash"`` (a kernel's
    VMCOREINFO before 6.x does not say; give it for a radix guest).
    """
    cpus = len(image.registers)
    if not 0 <= crash_cpu < cpus:
        raise ImageError(f"{image.path}: --crash-cpu {crash_cpu}: the image has {cpus} CPUs")
    return {
        "memory": adopted_memory_size(image.ram_end, cpus, image.page_size, dump),
        "dump": dump,
        "cpus": cpus,
        "endian": image.byteorder,
        "page_size": image.page_size,
        "osrelease": image.osrelease,
        "quirks": quirks,
        "name": name,
        "adopted": {
            "image": image.path,
            "image_size": image.file_size,
            "image_vmcoreinfo": -1 if vmcoreinfo_at is None else vmcoreinfo_at,
            "image_crash_cpu": crash_cpu,
            "image_mmu": mmu or image.mmu or "hash",
        },
    }
