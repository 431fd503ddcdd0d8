"""The pure rules of a hypervisor-assisted dump: no I/O, one definition each.

The collector (:mod:`drgn_hvdump.collect.plan`), the drgn plugin
(:mod:`drgn_hvdump.plugin.source`) and the simulator (:mod:`hvsim`) all ask
these modules rather than writing a rule again:

- :mod:`~drgn_hvdump.model.pages`: rounding addresses to pages.
- :mod:`~drgn_hvdump.model.scratch`: where the kernel puts its scratch area
  and the sections in it (forward, from the machine's sizes) and where the
  sections are, given where the scratch area starts (inverse).
- :mod:`~drgn_hvdump.model.release`: what a write to
  ``/sys/kernel/release_region`` does, under the faithful (Linux 2.6) kernel
  and a corrected one: the pages it frees, the naive released-bytes counters
  and the exact-equality test that re-registers the dump.

The model sits above :mod:`drgn_hvdump.formats` and below everything else.
"""

from __future__ import annotations

from drgn_hvdump.model.pages import page_down, page_span, page_up
from drgn_hvdump.model.release import (
    U64_MASK,
    CorrectedRelease,
    FaithfulRelease,
    ReleaseArea,
    ReleaseCounters,
    corrected_free_pages,
    corrected_release,
    counts_in_reserved,
    counts_in_scratch,
    dump_data,
    faithful_release,
    release_span,
    reregisters,
    simulate_frees,
)
from drgn_hvdump.model.scratch import (
    MIN_HPT_SIZE,
    ScratchLayout,
    ScratchSections,
    hpt_size,
    sections_from_base,
    top_scratch_base,
)

__all__ = [
    "MIN_HPT_SIZE",
    "U64_MASK",
    "CorrectedRelease",
    "FaithfulRelease",
    "ReleaseArea",
    "ReleaseCounters",
    "ScratchLayout",
    "ScratchSections",
    "corrected_free_pages",
    "corrected_release",
    "counts_in_reserved",
    "counts_in_scratch",
    "dump_data",
    "faithful_release",
    "hpt_size",
    "page_down",
    "page_span",
    "page_up",
    "release_span",
    "reregisters",
    "sections_from_base",
    "simulate_frees",
    "top_scratch_base",
]
