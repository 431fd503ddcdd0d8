"""The dump directory: its files' names, the trusted directory, the journal, the plan
that other tools follow and the runtime registry, with one reader and writer each.

The collector, ``hvdump convert``, ``hvdump verify``, the drgn plugin and the
Ansible modules (through :mod:`drgn_hvdump.api`) use this package; none of
them spells a file name or parses a journal line itself.
"""

from drgn_hvdump.dumpdir.journal import Journal
from drgn_hvdump.dumpdir.names import (
    DUMP_NAMES,
    HPTE_FILE,
    HVDUMP_NOTE_NAME,
    JOURNAL,
    MANIFEST,
    NOTE_DUMP_HEADER,
    NOTE_REGSAVE,
    PLAN_FILE,
    REGSAVE_FILE,
)
from drgn_hvdump.dumpdir.outdir import OutputDir

__all__ = [
    "DUMP_NAMES",
    "HPTE_FILE",
    "HVDUMP_NOTE_NAME",
    "JOURNAL",
    "MANIFEST",
    "NOTE_DUMP_HEADER",
    "NOTE_REGSAVE",
    "PLAN_FILE",
    "REGSAVE_FILE",
    "Journal",
    "OutputDir",
]
