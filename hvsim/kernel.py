"""The crashed kernel's image: what a simulated ppc64 kernel leaves in memory at a crash.

A minimal stand-in for a real compiled kernel (a later version replaces this
module with a real ppc64 vmlinux laid into memory); the interface the rest
of hvsim uses is :class:`KernelImage`:

- :meth:`KernelImage.overlays`: ``(physical address, bytes)`` pieces written
  into memory at the crash: the ``VMCOREINFO`` ELF note (with
  ``CRASHTIME``), ``linux_banner``, ``init_uts_ns``, and each CPU's ``paca``
  with the registers it saved;
- :meth:`KernelImage.cpu_states`: every CPU's registers at the crash, by the
  names of the register save area (:data:`REGISTERS`);
- :meth:`KernelImage.hash_page_table`: the hashed page table the kernel had
  built (bolted 16 MiB linear-map entries for all of RAM plus some 64 KiB
  vmalloc entries), as sparse ``(slot, v, r)`` records;
- :meth:`KernelImage.vmcoreinfo_note` and :meth:`KernelImage.banner`.

The kernel is linked at ``KERNELBASE`` (0xc000000000000000) and loaded at
physical 0, so a symbol's physical address is its address minus KERNELBASE.
Everything is a pure function of the configuration, the boot generation, the
crash time and the scenario.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from drgn_hvdump import native
from drgn_hvdump.formats.elfcore import PT_REGS_PPC64, Note, PtRegs, build_notes
from drgn_hvdump.formats.hpte import (
    HPTE_R_C,
    HPTE_R_M,
    HPTE_R_R,
    HPTE_V_BOLTED,
    HPTE_V_LARGE,
    HPTE_V_SECONDARY,
    HPTE_V_VALID,
    HPTES_PER_GROUP,
    encode_hpte,
    htab_hash_mask,
    kernel_vsid,
    va_of,
)
from drgn_hvdump.formats.regsave import POWER6_REGISTERS, CpuState
from drgn_hvdump.formats.vmcoreinfo import (
    VMCOREINFO_NOTE_NAME,
    VMCOREINFO_NOTE_TYPE,
    build_vmcoreinfo,
)

from .config import LparConfig
from .memory import derive_seed

__all__ = [
    "KERNELBASE",
    "LINEAR_PAGE_SHIFT",
    "PACA_SIZE",
    "REGISTERS",
    "SCENARIOS",
    "SYMBOLS",
    "KernelImage",
    "Scenario",
    "kernel_symbol",
]

KERNELBASE = 0xC000000000000000
LINEAR_PAGE_SHIFT = 24
"""The linear map uses 16 MiB pages on POWER5+ and POWER6."""
VMALLOC_BASE = 0xD000000000000000
REGISTERS: tuple[str, ...] = POWER6_REGISTERS
"""Registers saved per CPU, in save-area order."""

# Physical addresses of the simulated kernel's objects (the image starts at 0).
# Offsets are in the range a 2.6.32 ppc64 vmlinux uses: text up to ~8 MiB,
# then read-only data, data and bss.
SYMBOLS: dict[str, int] = {
    "_stext": 0x0,
    "panic": 0x0007A3D0,
    "sysrq_handle_crash": 0x003C4A10,
    "do_page_fault": 0x0003B8E0,
    "machine_check_exception": 0x0001F2C0,
    "softlockup_tick": 0x000E5B40,
    "cpu_idle": 0x00011C80,
    "smp_call_function_single": 0x000C2E30,
    "_etext": 0x00800000,
    "linux_banner": 0x00810000,
    "init_uts_ns": 0x00A00000,
    "node_online_map": 0x00A01000,
    "vmlist": 0x00A01100,
    "swapper_pg_dir": 0x00B00000,
    "vmcoreinfo_note": 0x00C00000,
    "paca": 0x00D00000,
    "__toc_start": 0x00E08000,
}
PACA_SIZE = 0x400
"""Bytes per CPU of the simulated ``paca`` array (R13 points at the CPU's own)."""
_PACA_REGS = 0x100  # where each paca holds the pt_regs the CPU saved at the crash
_VMCOREINFO_BYTES = 4096
_STACK_SIZE = 0x4000  # THREAD_SIZE on ppc64

_MSR_SF = 1 << 63
_MSR_EE = 1 << 15
_MSR_PR = 1 << 14
_MSR_ME = 1 << 12
_MSR_IR = 1 << 5
_MSR_DR = 1 << 4
_MSR_RI = 1 << 1
_MSR_LE = 1
_PVR_POWER6 = 0x003E0301


def kernel_symbol(name: str) -> int:
    """A symbol's kernel virtual address."""
    return KERNELBASE + SYMBOLS[name]


@dataclass(frozen=True)
class Scenario:
    """How a crash happens: where the crashing CPU stopped, and what the hypervisor does.

    ``rmo_fraction`` < 1 makes the hypervisor copy only that share of low
    memory; ``hv_error`` makes it set the dump header's error flag.
    """

    name: str
    description: str
    function: str
    trap: int
    dar: int = 0
    dsisr: int = 0
    rmo_fraction: float = 1.0
    hv_error: bool = False


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("panic", "panic() after an oops (the default)", "panic", 0x700),
        Scenario(
            "oops",
            "NULL pointer dereference in kernel mode (data storage interrupt)",
            "do_page_fault",
            0x300,
            dar=0x0,
            dsisr=0x40000000,
        ),
        Scenario(
            "sysrq",
            "echo c > /proc/sysrq-trigger (a deliberate NULL store)",
            "sysrq_handle_crash",
            0x300,
            dar=0x0,
            dsisr=0x42000000,
        ),
        Scenario("machine-check", "uncorrectable memory error", "machine_check_exception", 0x200),
        Scenario("hang", "soft lockup detected, panic on lockup", "softlockup_tick", 0x900),
        Scenario(
            "partial-copy",
            "panic; the hypervisor copies only half of low memory",
            "panic",
            0x700,
            rmo_fraction=0.5,
        ),
        Scenario(
            "hv-error",
            "panic; the hypervisor fails to save and flags the dump in error",
            "panic",
            0x700,
            hv_error=True,
        ),
    )
}


@dataclass(frozen=True)
class KernelImage:
    """The kernel of one boot generation at its crash."""

    config: LparConfig
    generation: int
    crash_time: int
    scenario: Scenario = field(default_factory=lambda: SCENARIOS["panic"])

    @property
    def _seed(self) -> int:
        return derive_seed(self.config.seed, "kernel-image", self.generation)

    @property
    def crash_cpu(self) -> int:
        """The CPU that panicked (the others were stopped where they were)."""
        return derive_seed(self._seed, "crash-cpu") % self.config.cpus

    # ------------------------------------------------------------- text

    def banner(self) -> str:
        """``linux_banner``, also ``/proc/version``."""
        return (
            f"Linux version {self.config.osrelease} (hvsim@build.hvdump) "
            "(gcc version 4.4.4 20100726 (Red Hat 4.4.4-13) (GCC) ) "
            "#1 SMP Tue Jun 15 10:19:54 EDT 2010\n"
        )

    def vmcoreinfo(self) -> bytes:
        """The VMCOREINFO text as the kernel left it at the crash."""
        sym = {name: f"{kernel_symbol(name):x}" for name in SYMBOLS}
        return build_vmcoreinfo(
            [
                ("OSRELEASE", self.config.osrelease),
                ("PAGESIZE", str(self.config.page_size)),
                ("SYMBOL(init_uts_ns)", sym["init_uts_ns"]),
                ("SYMBOL(node_online_map)", sym["node_online_map"]),
                ("SYMBOL(swapper_pg_dir)", sym["swapper_pg_dir"]),
                ("SYMBOL(_stext)", sym["_stext"]),
                ("SYMBOL(vmlist)", sym["vmlist"]),
                ("KERNELOFFSET", "0"),
                ("NUMBER(RADIX_MMU)", "0"),
                ("CRASHTIME", str(self.crash_time)),
            ]
        )

    def vmcoreinfo_note(self) -> bytes:
        """The VMCOREINFO ELF note in the kernel's byte order (what /proc/vmcore's PT_NOTE holds)."""
        return build_notes(
            [Note(VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE, self.vmcoreinfo())],
            self.config.endian,
        )

    def _uts_ns(self) -> bytes:
        # struct uts_namespace { struct kref kref; struct new_utsname name; }:
        # a 4-byte count, then six 65-byte NUL-padded strings.
        fields = (
            "Linux",
            self.config.name,
            self.config.osrelease,
            "#1 SMP Tue Jun 15 10:19:54 EDT 2010",
            "ppc64",
            "(none)",
        )
        count = (1).to_bytes(4, self.config.endian)
        return count + b"".join(f.encode().ljust(65, b"\0") for f in fields)

    # -------------------------------------------------------- registers

    def _draws(self, *labels: str | int) -> int:
        return derive_seed(self._seed, *labels)

    def cpu_states(self) -> list[CpuState]:
        """Each CPU's registers at the crash, in :data:`REGISTERS` order."""
        return [CpuState(cpu, self._registers(cpu)) for cpu in range(self.config.cpus)]

    def _registers(self, cpu: int) -> dict[str, int]:
        cfg = self.config
        crashing = cpu == self.crash_cpu
        regs: dict[str, int] = {}
        for n in range(32):
            regs[f"GPR{n:02d}"] = self._draws("gpr", cpu, n)
        # A kernel stack in the linear map: 16 KiB aligned, below the top of RAM.
        stack_page = self._draws("stack", cpu) % (cfg.memory // _STACK_SIZE - 1) + 1
        sp = KERNELBASE + stack_page * _STACK_SIZE + 0x3D00 - 0x70 * (1 + (cpu & 3))
        regs["GPR01"] = sp
        regs["GPR02"] = kernel_symbol("__toc_start") + 0x8000
        regs["GPR13"] = kernel_symbol("paca") + cpu * PACA_SIZE
        msr = _MSR_SF | _MSR_ME | _MSR_IR | _MSR_DR | _MSR_RI
        if cfg.endian == "little":
            msr |= _MSR_LE
        if crashing:
            s = self.scenario
            nia = kernel_symbol(s.function) + 4 * (self._draws("nia", cpu) % 64)
            lr = kernel_symbol(s.function) + 4 * (64 + self._draws("lr", cpu) % 64)
            dar, dsisr = s.dar, s.dsisr
        else:
            # Stopped by the hypervisor in the idle loop or waiting for an IPI.
            where = "cpu_idle" if self._draws("idle", cpu) % 4 else "smp_call_function_single"
            nia = kernel_symbol(where) + 4 * (self._draws("nia", cpu) % 32)
            lr = kernel_symbol(where) + 4 * (32 + self._draws("lr", cpu) % 32)
            msr |= _MSR_EE
            dar = KERNELBASE + (self._draws("dar", cpu) % cfg.memory & ~7)
            dsisr = 0
        regs.update(
            NIA=nia,
            MSR=msr,
            CTR=kernel_symbol("_stext") + 4 * (self._draws("ctr", cpu) % 0x200000),
            LR=lr,
            XER=self._draws("xer", cpu) & 0xE000007F,
            CR=self._draws("cr", cpu) & 0xFFFFFFFF,
            DAR=dar,
            DSISR=dsisr,
            SRR0=nia,
            SRR1=msr,
            PVR=_PVR_POWER6,
            PIR=cpu,
            DABR=0,
            DABRX=0,
            DSCR=0,
            SPRG0=0,
            SPRG1=self._draws("sprg1", cpu),
            SPRG2=0,
            SPRG3=regs["GPR13"],
            FPSCR=0,
            VRSAVE=0,
            VSCR=0x10000,
        )
        missing = set(REGISTERS) - set(regs)
        if missing:  # pragma: no cover - guards a change to the register list
            raise AssertionError(f"no value for registers {sorted(missing)}")
        return {name: regs[name] & ((1 << 64) - 1) for name in REGISTERS}

    def pt_regs(self, cpu: int) -> PtRegs:
        """The ``pt_regs`` CPU ``cpu`` saved in its paca at the crash."""
        regs = self._registers(cpu)
        crashing = cpu == self.crash_cpu
        return PtRegs(
            gpr=tuple(regs[f"GPR{n:02d}"] for n in range(32)),
            nip=regs["NIA"],
            msr=regs["MSR"],
            orig_gpr3=regs["GPR03"],
            ctr=regs["CTR"],
            link=regs["LR"],
            xer=regs["XER"],
            ccr=regs["CR"],
            softe=0 if crashing else 1,
            trap=self.scenario.trap if crashing else 0x500,
            dar=regs["DAR"],
            dsisr=regs["DSISR"],
        )

    # ---------------------------------------------------------- overlays

    def overlays(self) -> list[tuple[int, bytes]]:
        """What the kernel writes into its memory at the crash, by physical address."""
        order = self.config.endian
        pieces = [
            (SYMBOLS["linux_banner"], self.banner().encode() + b"\0"),
            (SYMBOLS["init_uts_ns"], self._uts_ns()),
            (SYMBOLS["vmcoreinfo_note"], self.vmcoreinfo_note().ljust(_VMCOREINFO_BYTES, b"\0")),
        ]
        for cpu in range(self.config.cpus):
            paca = SYMBOLS["paca"] + cpu * PACA_SIZE
            # lock_token 0x8000 and paca_index, as in struct paca_struct's head.
            head = struct.pack(("<" if order == "little" else ">") + "HxxxxxxH", 0x8000, cpu)
            pieces.append((paca, head))
            pieces.append((paca + _PACA_REGS, PT_REGS_PPC64.pack(self.pt_regs(cpu), order)))
        return pieces

    # ------------------------------------------------------- page table

    def hash_page_table(self, table_size: int) -> list[tuple[int, int, int]]:
        """The kernel's hashed page table: ``(slot, v, r)`` of every valid entry.

        Bolted 16 MiB linear-map entries for all of RAM (placed as
        :func:`drgn_hvdump.formats.hpte.linear_map_hptes` places them, computed
        here in bulk with the C hash), then a seeded set of 64 KiB (or 4 KiB)
        vmalloc entries, which skip full groups as a non-bolted insert that
        finds both groups full gives up in this model.
        """
        mask = htab_hash_mask(table_size)
        used: dict[int, int] = {}
        table: list[tuple[int, int, int]] = []
        table.extend(self._linear_map(mask, used))
        table.extend(self._vmalloc_entries(mask, used))
        return table

    def _linear_map(self, mask: int, used: dict[int, int]) -> Iterable[tuple[int, int, int]]:
        shift = LINEAR_PAGE_SHIFT
        npages = self.config.memory >> shift
        eas = [KERNELBASE + (i << shift) for i in range(npages)]
        per_segment = 1 << (28 - shift)
        seg_vsids = [kernel_vsid(ea) for ea in eas[::per_segment]]
        vsids = [seg_vsids[i // per_segment] for i in range(npages)]
        hashes = native.hpte_hashes(vsids, eas, shift, 0)
        # encode_hpte for 16 MiB pages, inlined: AVPN with its lowest bit masked
        # (avpnm), L, V and bolted; R/C set, WIMG = M, PP = 0, LP encoding 0.
        v_flags = HPTE_V_LARGE | HPTE_V_VALID | HPTE_V_BOLTED
        r_flags = HPTE_R_R | HPTE_R_C | HPTE_R_M
        for i, h in enumerate(hashes):
            ea = eas[i]
            va = (vsids[i] << 28) | (ea & 0x0FFFFFFF)
            group = h & mask
            n = used.get(group, 0)
            secondary = 0
            if n >= HPTES_PER_GROUP:
                group = ~h & mask
                n = used.get(group, 0)
                secondary = HPTE_V_SECONDARY
                if n >= HPTES_PER_GROUP:
                    raise ValueError(f"hash table full at physical {ea - KERNELBASE:#x}")
            used[group] = n + 1
            v = ((((va >> 23) & ~1) << 7) & 0x3FFFFFFFFFFFFF80) | v_flags | secondary
            yield group * HPTES_PER_GROUP + n, v, (ea - KERNELBASE) | r_flags

    def _vmalloc_entries(self, mask: int, used: dict[int, int]) -> Iterable[tuple[int, int, int]]:
        cfg = self.config
        shift = cfg.page_shift
        count = 64 + 16 * cfg.cpus
        penc = 1 if shift == 16 else 0  # POWER6's LP encoding of 64 KiB pages
        seen: set[int] = set()
        for i in range(count):
            ea = VMALLOC_BASE + (self._draws("vmalloc-ea", i) % (1 << 32) >> shift << shift)
            if ea in seen:
                continue
            seen.add(ea)
            pa = (self._draws("vmalloc-pa", i) % cfg.memory) >> shift << shift
            vsid = kernel_vsid(ea)
            h = native.hpte_hash(vsid, ea, shift, 0)
            for secondary in (False, True):
                group = (~h if secondary else h) & mask
                n = used.get(group, 0)
                if n < HPTES_PER_GROUP:
                    used[group] = n + 1
                    e = encode_hpte(
                        va_of(ea),
                        pa,
                        shift,
                        penc=penc,
                        secondary=secondary,
                        referenced=True,
                        changed=bool(i & 1),
                    )
                    yield group * HPTES_PER_GROUP + n, e.v, e.r
                    break
