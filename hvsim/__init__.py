"""hvsim: a simulated POWER6 LPAR with hypervisor-assisted dump.

:class:`Lpar` is the machine (life cycle, capture-kernel views, ground
truth), :class:`LparConfig` what it is made of. See ``hvsim --help`` and
:mod:`hvsim.lpar` for the model.
"""

from .config import LparConfig, parse_size
from .lpar import Lpar
from .machine import HvsimError, LparStateError, ReleaseError, ViewUnavailable
from .releasing import ReleaseResult
from .state import DumpInfo
from .store import StoreError

__all__ = [
    "DumpInfo",
    "HvsimError",
    "Lpar",
    "LparConfig",
    "LparStateError",
    "ReleaseError",
    "ReleaseResult",
    "StoreError",
    "ViewUnavailable",
    "parse_size",
]
