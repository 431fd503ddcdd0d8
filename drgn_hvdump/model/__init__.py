"""The pure rules of a hypervisor-assisted dump: no I/O, one definition each.

The capture interfaces (e.g. phyp's planner, :mod:`drgn_hvdump.capture.phyp_plan`), the drgn plugin
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
- :mod:`~drgn_hvdump.model.physmap`: the crashed kernel's physical memory
  after a capture boot: what is where (the saved low-memory copy, memory in
  place, the scratch area), or why it is gone.

The model sits above :mod:`drgn_hvdump.formats` and below everything else.
"""

from __future__ import annotations

__all__: list[str] = []
