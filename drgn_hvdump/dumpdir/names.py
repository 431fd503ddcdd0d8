"""The names of a dump directory's files and of the notes hvdump adds to a dump.

One definition for the collector, ``hvdump convert``, ``hvdump verify``, the
drgn plugin and the Ansible modules.
"""

from __future__ import annotations

__all__ = [
    "DUMP_NAMES",
    "HPTE_FILE",
    "HVDUMP_NOTE_NAME",
    "JOURNAL",
    "MANIFEST",
    "NOTE_DUMP_HEADER",
    "NOTE_FADUMP_MEM",
    "NOTE_REGSAVE",
    "PLAN_FILE",
    "REGSAVE_FILE",
]

DUMP_NAMES = {"kdump": "dump.kdump", "elf": "dump.elf"}
"""The dump file of each output format."""
JOURNAL = "journal.jsonl"
"""One fsynced JSON line per event of a collection: what is durable, what is released."""
MANIFEST = "manifest.json"
"""What the directory holds, with a checksum per chunk (``hvdump verify``)."""
PLAN_FILE = "plan.json"
"""The collection's chunks and release writes, for tools that follow it."""
REGSAVE_FILE = "regsave.bin"
"""The hypervisor's register save area, as saved."""
HPTE_FILE = "hpte.bin"
"""The hashed page table entries the hypervisor saved."""

HVDUMP_NOTE_NAME = "HVDUMP"
"""Owner of the ELF notes hvdump adds to a dump (kdump and ELF)."""
NOTE_DUMP_HEADER = 1
"""Note type: the hypervisor's dump header, as the capture kernel showed it."""
NOTE_REGSAVE = 2
"""Note type: the register save area, whole."""
NOTE_FADUMP_MEM = 3
"""Note type: fadump's memory structure (``rtas/ibm,kernel-dump``), as the capture
kernel showed it (a type of its own: readers of the phyp header skip it)."""
