"""One definition of every format hvdump reads or writes, in both byte orders.

Modules:

- :mod:`~drgn_hvdump.formats.layout`: binary layouts declared once as frozen
  dataclasses; readers and writers generated from them.
- :mod:`~drgn_hvdump.formats.release_region`: the text of
  ``/sys/kernel/release_region`` (the map it shows, the requests it takes).
- :mod:`~drgn_hvdump.formats.dump_header`: the 160-byte header registered
  with the hypervisor and filled in by it.
- :mod:`~drgn_hvdump.formats.regsave`: the register save area (CPU state).
- :mod:`~drgn_hvdump.formats.hpte`: hashed page table entries and hashing.
- :mod:`~drgn_hvdump.formats.vmcoreinfo`: the kernel's VMCOREINFO text.
- :mod:`~drgn_hvdump.formats.elfcore`: ELF64 core files (kdump/fadump style).

Hypervisor structures are always big-endian; kernel memory and ELF cores are
in the kernel's byte order. Parsers raise :class:`drgn_hvdump.errors.FormatError`
naming the file and offset of the first problem, and nothing else for bad input.
"""
