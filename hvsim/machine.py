"""What the LPAR's operations share: its parts (:class:`Machine`) and the simulator's errors.

:mod:`hvsim.lifecycle`, :mod:`hvsim.releasing` and :mod:`hvsim.views` work
on a :class:`Machine` and a typed :class:`hvsim.state.LparState`;
:class:`hvsim.lpar.Lpar` holds the locks and the loaded state around them.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.intervals import IntervalSet

from .adopt import AdoptedKernel
from .config import LparConfig
from .hypervisor import Firmware, Hypervisor
from .kernel import SCENARIOS, CrashedKernel, KernelImage, Scenario
from .memory import derive_seed
from .state import DumpRecord, KernelState, LparState
from .store import LparStore

if TYPE_CHECKING:
    from .fadump import FadumpFirmware

__all__ = [
    "HvsimError",
    "LparStateError",
    "Machine",
    "ReleaseError",
    "ViewUnavailable",
]


class HvsimError(HvdumpError):
    """A simulator operation failed; ``errno`` says how a file system would report it."""

    def __init__(self, message: str, err: int = errno.EIO) -> None:
        super().__init__(message)
        self.errno = err


class LparStateError(HvsimError):
    """The operation does not fit the LPAR's life-cycle state (e.g. crash when off)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, errno.EBUSY)


class ViewUnavailable(HvsimError):
    """The capture-kernel file asked for does not exist in the LPAR's state."""

    def __init__(self, message: str) -> None:
        super().__init__(message, errno.ENOENT)


class ReleaseError(HvsimError):
    """A write to release_region failed: ``errno`` is EINVAL (junk) or ENOENT (no dump)."""


@dataclass(frozen=True)
class Machine:
    """One LPAR's fixed parts: its configuration, its directory, and where it lives."""

    config: LparConfig
    store: LparStore

    @property
    def path(self) -> str:
        return str(self.store.path)

    def hv(self, st: LparState) -> Hypervisor:
        """The firmware's dump state, over ``st`` (changes made through it land in ``st``)."""
        return Hypervisor(self.config, st.hv)

    def fadump(self, st: LparState) -> FadumpFirmware:
        """The firmware's fadump state, over ``st``."""
        from .fadump import FadumpFirmware

        return FadumpFirmware(self.config, st.hv)

    def firmware(self, st: LparState) -> Firmware[Any]:
        """The firmware's dump state for the LPAR's interface (phyp or fadump)."""
        return self.fadump(st) if self.config.dump == "fadump" else self.hv(st)

    def kernel_seed(self, gen: int) -> int:
        # The first kernel's memory is exactly what the LPAR's seed generates.
        return self.config.seed if gen == 1 else derive_seed(self.config.seed, "kernel", gen)

    def kernel_of(self, gen: int, crash_time: int, sc: Scenario) -> CrashedKernel:
        """The kernel that ran as boot generation ``gen`` (the adopted image for an adopter's first)."""
        if self.config.adopted and gen == 1:
            return AdoptedKernel(self.config)
        return KernelImage(self.config, gen, crash_time, sc)

    def dump_image(self, st: LparState) -> CrashedKernel | None:
        """The crashed kernel of the last dump, or None."""
        dump = st.dump
        if dump is None:
            return None
        return self.kernel_of(dump.generation, dump.crash_time, SCENARIOS[dump.scenario])

    def need_running(self, st: LparState, what: str) -> KernelState:
        """The running kernel, or :class:`ViewUnavailable` for ``what``."""
        if st.state not in ("running", "capture") or st.kernel is None:
            raise ViewUnavailable(f"{self.path}: {what}: the LPAR is {st.state}, no kernel runs")
        return st.kernel

    def need_capture(self, st: LparState, what: str) -> tuple[KernelState, DumpRecord | None]:
        """The capture kernel while a dump waits, or :class:`ViewUnavailable` for ``what``."""
        if st.state != "capture" or st.kernel is None or st.kernel.capture is None:
            raise ViewUnavailable(
                f"{self.path}: {what} does not exist: no dump is waiting (LPAR {st.state})"
            )
        return st.kernel, st.dump

    def register_at_boot(
        self,
        st: LparState,
        kernel: KernelState,
        *,
        unsupported: str,
        disabled: str,
        problem: str | None,
        registration: Any,
        reserved: Sequence[tuple[int, int]],
        where: str,
    ) -> str:
        """An ordinary boot registers a dump if the firmware supports it, the kernel was
        told to and the layout fits: returns ``where``, or sets ``kernel.reason``."""
        fw = self.firmware(st)
        why = (
            unsupported
            if not fw.supported
            else disabled
            if not self.config.dump_enabled
            else problem
        )
        if why:
            kernel.reason = why
            return ""
        fw.register(registration)
        st.counters.registrations += 1
        kernel.reserved = IntervalSet(reserved)
        return where

    def no_dump_message(self, st: LparState) -> str:
        where = (
            "/sys/kernel/fadump/release_mem"
            if self.config.dump == "fadump"
            else "/sys/kernel/release_region"
        )
        return f"{self.path}: no dump is waiting (LPAR {st.state}): {where} does not exist"
