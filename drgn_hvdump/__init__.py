"""hvdump: collect, convert and analyse POWER hypervisor-assisted dumps.

The package holds the dump formats (:mod:`drgn_hvdump.formats`), the native
hot loops (:mod:`drgn_hvdump.native`), and the user-facing tools built on them.
It never imports :mod:`hvsim`.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
