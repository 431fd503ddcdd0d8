"""The crashed kernel's image: a real ppc64 vmlinux laid into memory, and its state at the crash.

hvsim's kernel is a small image compiled from C with debug info
(:mod:`hvsim.kernel_image`: ``vmlinux-be``, ELFv1, and ``vmlinux-le``,
ELFv2, with the same addresses). :class:`KernelImage` lays its loadable
sections at their physical addresses (the kernel is linked at ``KERNELBASE``
and loaded at 0) and fills in what the kernel held when it crashed, so that
``drgn -c DUMP -s VMLINUX`` gives the usual first look:

- ``init_uts_ns`` and ``linux_banner`` with the LPAR's release and host name;
- the task list (``init_task.tasks``), each task with its ``struct pid`` in
  ``pid_hash``, its kernel stack, and for tasks that sleep a switch frame
  (``thread.ksp``) from which drgn unwinds them;
- per-CPU areas (``__per_cpu_offset``) with ``runqueues`` (``curr``,
  ``idle``) and ``crash_notes`` (an ``NT_PRSTATUS`` note per CPU, as
  ``crash_save_cpu`` leaves it);
- the printk ring buffer (``prb``) with boot lines and the scenario's lines,
  ending with the panic message; ``panic_cpu``;
- the VMCOREINFO note (with ``BUILD-ID`` of the vmlinux and ``CRASHTIME``).

Every CPU's stack holds frames that agree with the image's call frame
information (``.debug_frame``): each return address is a real ``bl`` call
site in the caller, each frame as big as the CFI says, so an unwinder walks
``panic`` ← handler ← … ← system call. The registers the hypervisor saves
(:meth:`KernelImage.cpu_states`) and the ``crash_notes`` agree with them.

Interface used by the rest of hvsim: :meth:`KernelImage.overlays`,
:meth:`KernelImage.cpu_states`, :meth:`KernelImage.hash_page_table`,
:meth:`KernelImage.vmcoreinfo_note`, :meth:`KernelImage.banner`, and
:data:`SCENARIOS`. Everything is a pure function of the configuration, the
boot generation, the crash time and the scenario.
"""

from __future__ import annotations

import bisect
import functools
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from drgn_hvdump import native
from drgn_hvdump.formats.elfcore import (
    NT_PRSTATUS,
    Note,
    PtRegs,
    build_notes,
    build_prstatus,
)
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
from drgn_hvdump.model.scratch import hpt_size

from .config import LparConfig, parse_tasks
from .hypervisor import scratch_layout
from .kernel_image import KERNELBASE, Vmlinux, image_path, load_vmlinux
from .memmodel import GROUP_PAGES, MemModel, vmcoreinfo_entries
from .memory import derive_seed

__all__ = [
    "HVDEMO_STATS_MAGIC",
    "KERNELBASE",
    "LINEAR_PAGE_SHIFT",
    "PACA_SIZE",
    "REGISTERS",
    "SCENARIOS",
    "SYMBOLS",
    "VMALLOC_BASE",
    "CrashedKernel",
    "Frame",
    "KernelImage",
    "Scenario",
    "TaskInfo",
    "VmallocMapping",
    "kernel_symbol",
    "vmlinux_path",
]

LINEAR_PAGE_SHIFT = 24
"""The linear map uses 16 MiB pages on POWER5+ and POWER6."""
VMALLOC_BASE = 0xD000000000000000
"""``VMALLOC_START`` of ppc64 hash kernels of the 2.6 era (``KERN_VIRT_START``)."""
REGISTERS: tuple[str, ...] = POWER6_REGISTERS
"""Registers saved per CPU, in save-area order."""
PACA_SIZE = 0x400
"""Bytes per CPU of the ``paca`` array (R13 points at the CPU's own)."""

_U64 = (1 << 64) - 1
_THREAD_SIZE = 0x4000
_STACK_FRAME_OVERHEAD = 112
_PT_REGS_SIZE = 352
# Where the kernel's run-time allocations live (physical; all in the low 256 MiB).
_PERCPU_BASE = 0x0100_0000
_PIDHASH_BASE = 0x0180_0000
_PIDHASH_SHIFT = 10
_TASK_BASE = 0x0200_0000
_TASK_SLOT = 0x1000
_STACK_BASE = 0x0400_0000
# Page-table pages (PUD/PMD tables, PTE pages) of swapper_pg_dir: 8 to 16 MiB.
_PGTABLE_BASE = 0x0080_0000
_PGTABLE_END = _PERCPU_BASE
# Pages vmalloc() handed out come from here up to the scratch area: above
# everything the image's static layout uses (stacks end below 192 MiB).
_VMALLOC_PA_BASE = 0x0C00_0000
_MAX_TASKS = (_STACK_BASE - _TASK_BASE) // _TASK_SLOT
# Each CPU's interrupt stacks (softirq_ctx[cpu], then hardirq_ctx[cpu] below it),
# THREAD_SIZE each, allocated top-down from the end of the stack area as
# 2.6.32's irqstack_early_init() takes them top-down below 256 MiB; task
# stacks grow up from _STACK_BASE towards them.
_IRQ_STACK_TOP = _VMALLOC_PA_BASE
_HARDIRQ_OFFSET = 1 << 16
_SOFTIRQ_OFFSET = 1 << 8
_STACK_END_MAGIC = 0x57AC6E9D
_GOLDEN_RATIO_PRIME_64 = 0x9E37FFFFFFFC0001

_MSR_SF = 1 << 63
_MSR_EE = 1 << 15
_MSR_PR = 1 << 14
_MSR_ME = 1 << 12
_MSR_IR = 1 << 5
_MSR_DR = 1 << 4
_MSR_RI = 1 << 1
_MSR_LE = 1
_PVR_POWER6 = 0x003E0301


def vmlinux_path(endian: str) -> str:
    """The debug-info image matching an LPAR of byte order ``endian`` (give it to ``drgn -s``)."""
    return str(image_path(endian))


class _Symbols(Mapping[str, int]):
    """Physical addresses of the image's symbols (the same in both images), read on first use."""

    @functools.cached_property
    def _table(self) -> dict[str, int]:
        return {
            n: a - KERNELBASE for n, a in load_vmlinux("big").symbols.items() if a >= KERNELBASE
        }

    def __getitem__(self, name: str) -> int:
        return self._table[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


SYMBOLS: Mapping[str, int] = _Symbols()
"""Physical address of each symbol of the kernel image (``panic``, ``init_uts_ns``, ...)."""


def kernel_symbol(name: str) -> int:
    """A symbol's kernel virtual address."""
    return KERNELBASE + SYMBOLS[name]


@dataclass(frozen=True)
class Scenario:
    """How a crash happens: what the crashing CPU ran into, and what the hypervisor does.

    ``kind`` chooses the panic path and its log lines: ``sysrq`` (``echo c >
    /proc/sysrq-trigger``), ``oops`` (a NULL pointer dereference in a named
    task, then ``panic("Fatal exception")``), ``hung-task`` (khungtaskd
    panics over a task blocked in D state), ``machine-check``, or ``random``
    (one of the first three, chosen by the LPAR's seed and generation).
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
    kind: str = "oops"

    def copied(self, partial: Mapping[str, int], low: str, length: int) -> dict[str, int]:
        """Bytes the firmware copies per section: ``partial``'s, and for the low-memory
        section ``low`` (``length`` bytes) this scenario's share of it, if it says one."""
        out = dict(partial)
        if self.rmo_fraction < 1.0 and low not in out:
            out[low] = int(length * self.rmo_fraction) // 4096 * 4096
        return out


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("panic", "panic() after an oops (the default)", "panic", 0x300, dsisr=0x40000000),
        Scenario(
            "oops",
            "NULL pointer dereference in a named task, then panic (data storage interrupt)",
            "panic",
            0x300,
            dar=0x0,
            dsisr=0x40000000,
        ),
        Scenario(
            "sysrq",
            'echo c > /proc/sysrq-trigger: panic("sysrq triggered crash")',
            "panic",
            0x700,
            kind="sysrq",
        ),
        Scenario(
            "hung-task",
            "khungtaskd finds a task blocked for 120 s and panics (hung_task_panic=1)",
            "panic",
            0x700,
            kind="hung-task",
        ),
        Scenario(
            "machine-check",
            "uncorrectable memory error",
            "panic",
            0x200,
            kind="machine-check",
        ),
        Scenario("hang", "the same as hung-task (older name)", "panic", 0x700, kind="hung-task"),
        Scenario(
            "random",
            "sysrq, oops or hung-task, chosen by the LPAR's seed (a fleet shows different crashes)",
            "panic",
            0x700,
            kind="random",
        ),
        Scenario(
            "partial-copy",
            "panic; the hypervisor copies only half of low memory",
            "panic",
            0x300,
            dsisr=0x40000000,
            rmo_fraction=0.5,
        ),
        Scenario(
            "hv-error",
            "panic; the hypervisor fails to save and flags the dump in error",
            "panic",
            0x300,
            dsisr=0x40000000,
            hv_error=True,
        ),
    )
}

# Call chains, innermost first. A running CPU's top frame has just returned
# from a call to the "callee" (so NIA == LR == the return address); a
# sleeping task's top frame is __switch_to, just back from _switch.
_SYSCALL = ["system_call_exception", "system_call_common"]
_KTHREAD = ["kthread", "ret_from_kernel_thread"]
_SLEEP_HEAD = ["__switch_to", "__schedule", "schedule"]
_SLEEPS: dict[str, list[str]] = {
    "smpboot": [*_SLEEP_HEAD, "smpboot_thread_fn", *_KTHREAD],
    "worker": [*_SLEEP_HEAD, "worker_thread", *_KTHREAD],
    "rcu": [*_SLEEP_HEAD, "schedule_timeout", "rcu_gp_kthread", *_KTHREAD],
    "kswapd": [*_SLEEP_HEAD, "kswapd", *_KTHREAD],
    "khungtaskd": [*_SLEEP_HEAD, "schedule_timeout", "watchdog", *_KTHREAD],
    "jbd2": [*_SLEEP_HEAD, "kjournald2", *_KTHREAD],
    "jbd2-blocked": [
        *_SLEEP_HEAD,
        "io_schedule",
        "__wait_on_buffer",
        "jbd2_journal_commit_transaction",
        "kjournald2",
        *_KTHREAD,
    ],
    "kthreadd": [*_SLEEP_HEAD, "kthreadd", "ret_from_kernel_thread"],
    "epoll": [
        *_SLEEP_HEAD,
        "schedule_hrtimeout_range",
        "do_epoll_wait",
        "sys_epoll_wait",
        *_SYSCALL,
    ],
    "poll": [*_SLEEP_HEAD, "schedule_hrtimeout_range", "do_sys_poll", "sys_poll", *_SYSCALL],
    "nanosleep": [*_SLEEP_HEAD, "do_nanosleep", "sys_nanosleep", *_SYSCALL],
    "futex": [*_SLEEP_HEAD, "futex_wait_queue", "futex_wait", "do_futex", "sys_futex", *_SYSCALL],
    "wait4": [*_SLEEP_HEAD, "kernel_wait4", "sys_wait4", *_SYSCALL],
    "tty": [
        *_SLEEP_HEAD,
        "schedule_timeout",
        "n_tty_read",
        "vfs_read",
        "ksys_read",
        "sys_read",
        *_SYSCALL,
    ],
    "pipe": [*_SLEEP_HEAD, "pipe_read", "vfs_read", "ksys_read", "sys_read", *_SYSCALL],
}
_IDLE = ["cede_processor", "pseries_lpar_idle", "arch_cpu_idle", "do_idle", "cpu_startup_entry"]
_IDLE_BOOT = [*_IDLE, "rest_init", "arch_call_rest_init", "start_kernel", "start_here_common"]
_IDLE_SECONDARY = [*_IDLE, "start_secondary", "start_secondary_prolog"]
_PANIC_PATHS: dict[str, list[str]] = {
    "sysrq": [
        "panic",
        "sysrq_handle_crash",
        "__handle_sysrq",
        "write_sysrq_trigger",
        "proc_reg_write",
        "vfs_write",
        "ksys_write",
        "sys_write",
        *_SYSCALL,
    ],
    # After data_access_common comes the interrupted function, at the fault.
    "oops": [
        "panic",
        "oops_end",
        "die",
        "bad_page_fault",
        "do_page_fault",
        "data_access_common",
        "hvdemo_read_stats",
        "proc_reg_read",
        "vfs_read",
        "ksys_read",
        "sys_read",
        *_SYSCALL,
    ],
    "hung-task": [
        "panic",
        "check_hung_task",
        "check_hung_uninterruptible_tasks",
        "watchdog",
        *_KTHREAD,
    ],
    "machine-check": [
        "panic",
        "oops_end",
        "die",
        "machine_check_exception",
        "machine_check_common",
    ],
}
_PANIC_CALLEE = "__crash_kexec"
_OOPS_TASKS = ("dbwriter", "java", "postgres", "httpd", "collectd", "ntpd")
_USER_DEFAULT = (
    ("udevd", "epoll"),
    ("rsyslogd", "poll"),
    ("irqbalance", "nanosleep"),
    ("sshd", "poll"),
    ("crond", "nanosleep"),
    ("nscd", "futex"),
    ("agetty", "tty"),
    ("sshd", "poll"),
    ("bash", "wait4"),
)


@dataclass(frozen=True)
class Frame:
    """One stack frame: the function, its PC (a return address except at the top) and SP."""

    function: str
    pc: int
    sp: int


@dataclass
class TaskInfo:
    """One simulated task and where it lives."""

    comm: str
    pid: int
    tgid: int
    ppid: int
    user: bool
    chain: list[str]
    state: int = 1  # TASK_INTERRUPTIBLE
    cpu: int = 0
    running: bool = False
    idle: bool = False
    slot: int = -1  # -1: init_task (static)
    frames: list[Frame] = field(default_factory=list)
    address: int = 0
    stack: int = 0
    pid_struct: int = 0
    signal: int = 0
    mm: int = 0

    @property
    def is_kthread(self) -> bool:
        return not self.user


class _Mem:
    """Zeroed blocks of kernel memory, written through the image's types."""

    def __init__(self, vm: Vmlinux, order: Literal["big", "little"]) -> None:
        self.vm = vm
        self.order = order
        self.blocks: dict[int, bytearray] = {}
        self._starts: list[int] = []

    def alloc(self, paddr: int, size: int, fill: bytes | None = None) -> None:
        if paddr not in self.blocks:
            bisect.insort(self._starts, paddr)
        self.blocks[paddr] = bytearray(fill if fill is not None else bytes(size))

    def _find(self, paddr: int, size: int) -> tuple[bytearray, int]:
        starts = self._starts
        i = bisect.bisect_right(starts, paddr) - 1
        if i >= 0:
            start = starts[i]
            buf = self.blocks[start]
            if paddr + size <= start + len(buf):
                return buf, paddr - start
        raise KeyError(f"no block holds {paddr:#x}+{size:#x}")

    def write(self, vaddr: int, data: bytes) -> None:
        buf, off = self._find(vaddr - KERNELBASE, len(data))
        buf[off : off + len(data)] = data

    def put_int(self, vaddr: int, size: int, value: int) -> None:
        self.write(vaddr, (value & ((1 << (8 * size)) - 1)).to_bytes(size, self.order))

    def put(self, base: int, struct_name: str, path: str, value: int | bytes) -> None:
        off, size = self.vm.field(struct_name, path)
        if isinstance(value, bytes):
            self.write(base + off, value[:size].ljust(size, b"\0"))
        else:
            self.put_int(base + off, size, value)

    def list_init(self, addr: int) -> None:
        self.put_int(addr, 8, addr)
        self.put_int(addr + 8, 8, addr)

    def list_add_tail(self, node: int, head: int) -> None:
        prev = self.get_u64(head + 8)
        self.put_int(node, 8, head)
        self.put_int(node + 8, 8, prev)
        self.put_int(prev, 8, node)
        self.put_int(head + 8, 8, node)

    def get_u64(self, vaddr: int) -> int:
        buf, off = self._find(vaddr - KERNELBASE, 8)
        return int.from_bytes(buf[off : off + 8], self.order)

    def pieces(self) -> list[tuple[int, bytes]]:
        return [(p, bytes(b)) for p, b in sorted(self.blocks.items())]


@dataclass
class _State:
    """Everything the kernel held at the crash (computed once per image)."""

    tasks: list[TaskInfo]
    running: list[TaskInfo]  # per CPU
    regs: list[dict[str, int]]  # per CPU, by register name
    pieces: list[tuple[int, bytes]]
    log: list[tuple[int, int, str, int]]  # (ts_nsec, level, text, caller_id)
    uptime_ns: int


def _fn_offset(vm: Vmlinux, pc: int) -> str:
    name = vm.function_at(pc) or vm.function_at(pc - 4)
    if name is None:
        return f"{pc:#x}"
    low, high = vm.functions[name]
    return f"{name}+{pc - low:#x}/{high - low:#x}"


class CrashedKernel(Protocol):
    """What the LPAR needs of the kernel that crashed: :class:`KernelImage` (hvsim's own
    kernel) or :class:`hvsim.adopt.AdoptedKernel` (a real memory image)."""

    @property
    def config(self) -> LparConfig: ...

    @property
    def crash_cpu(self) -> int: ...

    def banner(self) -> str: ...

    def vmcoreinfo(self) -> bytes: ...

    def cpu_states(self) -> list[CpuState]: ...

    def prstatus(self, cpu: int, pid: int | None = None) -> bytes: ...

    def overlays(self) -> list[tuple[int, bytes]]: ...

    def hash_page_table(self, table_size: int) -> list[tuple[int, int, int]]: ...

    def memory_model(self) -> MemModel | None: ...


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

    @property
    def kind(self) -> str:
        """The panic path: ``sysrq``, ``oops``, ``hung-task`` or ``machine-check``."""
        if self.scenario.kind == "random":
            return ("sysrq", "oops", "hung-task")[self._draws("kind") % 3]
        return self.scenario.kind

    @property
    def vmlinux(self) -> Vmlinux:
        """The debug-info image this kernel runs (by the LPAR's byte order)."""
        return load_vmlinux(self.config.endian)

    def _draws(self, *labels: str | int) -> int:
        return derive_seed(self._seed, *labels)

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
        vm = self.vmlinux
        entries: list[tuple[str, str]] = [
            ("OSRELEASE", self.config.osrelease),
            ("BUILD-ID", vm.build_id),
            ("PAGESIZE", str(self.config.page_size)),
            ("SYMBOL(init_uts_ns)", f"{kernel_symbol('init_uts_ns'):x}"),
            ("OFFSET(uts_namespace.name)", str(vm.offsetof("uts_namespace", "name"))),
            ("SYMBOL(swapper_pg_dir)", f"{kernel_symbol('swapper_pg_dir'):x}"),
            ("SYMBOL(_stext)", f"{kernel_symbol('_stext'):x}"),
            ("SYMBOL(prb)", f"{kernel_symbol('prb'):x}"),
            ("SYMBOL(printk_rb_static)", f"{kernel_symbol('printk_rb_static'):x}"),
        ]
        for struct_name, members in (
            ("printk_ringbuffer", ("desc_ring", "text_data_ring", "fail")),
            ("prb_desc_ring", ("count_bits", "descs", "infos", "head_id", "tail_id")),
            ("prb_desc", ("state_var", "text_blk_lpos")),
            ("prb_data_blk_lpos", ("begin", "next")),
            ("printk_info", ("seq", "ts_nsec", "text_len", "caller_id", "dev_info")),
            ("dev_printk_info", ("subsystem", "device")),
            ("prb_data_ring", ("size_bits", "data", "head_lpos", "tail_lpos")),
            ("list_head", ("next", "prev")),
        ):
            entries.append((f"SIZE({struct_name})", str(vm.sizeof(struct_name))))
            entries.extend(
                (f"OFFSET({struct_name}.{m})", str(vm.offsetof(struct_name, m))) for m in members
            )
        entries += [
            ("LENGTH(printk_info_subsystem)", "16"),
            ("LENGTH(printk_info_device)", "48"),
            ("SIZE(atomic_long_t)", "8"),
            ("OFFSET(atomic_long_t.counter)", "0"),
            ("SYMBOL(paca)", f"{kernel_symbol('paca'):x}"),
            ("KERNELOFFSET", "0"),
            ("NUMBER(RADIX_MMU)", "0"),
        ]
        model = self.memory_model()
        if model is not None:
            entries += vmcoreinfo_entries(model)
        entries.append(("CRASHTIME", str(self.crash_time)))
        return build_vmcoreinfo(entries)

    def memory_model(self) -> MemModel | None:
        """Where its ``struct page`` array and ``mem_section`` are, and each page's type
        (:mod:`hvsim.memmodel`); None when RAM is too small to hold them above 256 MiB."""
        cfg = self.config
        if cfg.dump == "fadump":
            from .fadump import reservation

            top, low = cfg.memory, max(256 << 20, reservation(cfg).ra_end)
        else:
            top, low = scratch_layout(cfg).base, 256 << 20
        group = GROUP_PAGES * cfg.page_size
        low = -(-low // group) * group
        seed = self._draws("page-types")
        model = MemModel(cfg.memory, cfg.page_size, cfg.endian == "big", seed, top, low)
        return model if model.fits else None

    def vmcoreinfo_note(self) -> bytes:
        """The VMCOREINFO ELF note in the kernel's byte order (what /proc/vmcore's PT_NOTE holds)."""
        return build_notes(
            [Note(VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE, self.vmcoreinfo())],
            self.config.endian,
        )

    def _uts_fields(self) -> tuple[str, ...]:
        return (
            "Linux",
            self.config.name,
            self.config.osrelease,
            "#1 SMP Tue Jun 15 10:19:54 EDT 2010",
            "ppc64",
            "(none)",
        )

    def _uts_ns(self) -> bytes:
        # struct uts_namespace { struct kref kref; struct new_utsname name; ... }:
        # a 4-byte count, then six 65-byte NUL-padded strings.
        count = (2).to_bytes(4, self.config.endian)
        return count + b"".join(f.encode().ljust(65, b"\0") for f in self._uts_fields())

    # ------------------------------------------------------------ state

    @property
    def _state(self) -> _State:
        return _build_state(self)

    def tasks(self) -> list[TaskInfo]:
        """The simulated tasks: init_task, the other CPUs' idle tasks, kernel threads, processes."""
        return self._state.tasks

    def crashed_task(self) -> TaskInfo:
        """The task running on the crashing CPU."""
        return self._state.running[self.crash_cpu]

    def running_task(self, cpu: int) -> TaskInfo:
        """The task running on ``cpu`` at the crash (``runqueues.curr``)."""
        return self._state.running[cpu]

    def backtrace(self, cpu: int | None = None) -> list[str]:
        """Function names of a CPU's stack at the crash, innermost first (default: the crashing CPU)."""
        task = self.running_task(self.crash_cpu if cpu is None else cpu)
        return [f.function for f in task.frames]

    def log_lines(self) -> list[str]:
        """The kernel log's lines, oldest first (the panic message is last)."""
        return [text for _, _, text, _ in self._state.log]

    def panic_message(self) -> str:
        """The last log line: ``Kernel panic - not syncing: ...``."""
        return self._state.log[-1][2]

    # -------------------------------------------------------- registers

    def cpu_states(self) -> list[CpuState]:
        """Each CPU's registers at the crash, in :data:`REGISTERS` order."""
        return [CpuState(cpu, dict(self._state.regs[cpu])) for cpu in range(self.config.cpus)]

    def pt_regs(self, cpu: int) -> PtRegs:
        """CPU ``cpu``'s registers as a ``struct pt_regs`` (what ``crash_notes`` holds)."""
        return _pt_regs_of(self._state.regs[cpu], cpu == self.crash_cpu, self.scenario.trap)

    def prstatus(self, cpu: int, pid: int | None = None) -> bytes:
        """CPU ``cpu``'s ``NT_PRSTATUS`` descriptor (``pr_pid`` defaults to its task's pid)."""
        if pid is None:
            pid = self.running_task(cpu).pid
        sig = 11 if cpu == self.crash_cpu and self.kind == "oops" else 0
        return build_prstatus(self.pt_regs(cpu), self.config.endian, pid=pid, cursig=sig)

    # ---------------------------------------------------------- overlays

    def overlays(self) -> list[tuple[int, bytes]]:
        """What the kernel holds in memory at the crash, by physical address.

        The image's sections (``.bss`` without the unused part of ``paca``),
        the per-CPU areas, ``pid_hash``, the tasks and the used part of their
        stacks; then, repeated as small pieces with the same bytes, the
        banner, ``init_uts_ns``, the VMCOREINFO note and each CPU's ``paca``
        head; last the kernel page tables (``swapper_pg_dir`` and the tables
        under it, at 8 MiB), ``init_mm.pgd``, and the vmalloc()ed
        ``*hvdemo_stats`` buffer with the global pointing at it.
        """
        pieces = list(self._state.pieces)
        order = self.config.endian
        plan = _vmalloc_plan(self)
        pieces.extend(plan.pieces)
        pieces.append((SYMBOLS["hvdemo_stats"], plan.hvdemo_stats.to_bytes(8, order)))
        pgd_off, _ = self.vmlinux.field("mm_struct", "pgd")
        pieces.append(
            (SYMBOLS["init_mm"] + pgd_off, kernel_symbol("swapper_pg_dir").to_bytes(8, order))
        )
        pieces.append((SYMBOLS["linux_banner"], self.banner().encode() + b"\0"))
        pieces.append((SYMBOLS["init_uts_ns"], self._uts_ns()))
        pieces.append((SYMBOLS["vmcoreinfo_note"], self.vmcoreinfo_note()))
        head = ("<" if order == "little" else ">") + "HxxxxxxH"
        for cpu in range(self.config.cpus):
            pieces.append((SYMBOLS["paca"] + cpu * PACA_SIZE, struct.pack(head, 0x8000, cpu)))
        return pieces

    # --------------------------------------------------------- planning

    def _plan_tasks(self) -> list[TaskInfo]:
        cfg = self.config
        tl = _TaskList(self)
        hung, jbd2 = tl.kernel_threads()
        if cfg.tasks:
            chains = [c for _, c in _USER_DEFAULT]
            for i, (comm, want) in enumerate(parse_tasks(cfg.tasks)):
                tl.user(comm, chains[i % len(chains)], want)
        else:
            for comm, chain in _USER_DEFAULT:
                tl.user(comm, chain)
        tasks = tl.tasks
        crasher = self._crasher(tl, hung, jbd2)
        _check_tasks(tasks, cfg.cpus)
        _set_running(tasks, crasher, self.kind, self.crash_cpu)
        slot = 0
        for t in tasks:
            if t.pid == 0 and t.cpu == 0:
                continue  # init_task is static
            t.slot = slot
            slot += 1
        return tasks

    def _crasher(self, tl: _TaskList, hung: TaskInfo, jbd2: TaskInfo) -> TaskInfo:
        """The task on the crashing CPU, and what the scenario adds."""
        kind, tasks = self.kind, tl.tasks
        if kind == "sysrq":
            return tl.user("bash", "wait4")
        if kind == "oops":
            names = [t.comm for t in tasks if t.user and t.comm not in ("init", "bash", "agetty")]
            comm = _OOPS_TASKS[self._draws("oops-task") % len(_OOPS_TASKS)]
            if comm not in names:
                return tl.user(comm, "futex")
            return next(t for t in tasks if t.comm == comm)
        if kind == "hung-task":
            jbd2.chain = _SLEEPS["jbd2-blocked"]
            jbd2.state = 2  # TASK_UNINTERRUPTIBLE
            return hung
        return tasks[self.crash_cpu]  # machine check: the CPU's idle task

    # ------------------------------------------------------- page table

    def hash_page_table(self, table_size: int) -> list[tuple[int, int, int]]:
        """The kernel's hashed page table: ``(slot, v, r)`` of every valid entry.

        Bolted 16 MiB linear-map entries for all of RAM (placed as
        :func:`drgn_hvdump.formats.hpte.linear_map_hptes` places them, computed
        here in bulk with the C hash), then 64 KiB (or 4 KiB) entries for the
        vmalloc pages that were faulted in (:meth:`vmalloc_mappings` with
        ``in_hpt``, stale entries of vfree()d pages included), each in the
        first free slot of its primary, else its secondary group.
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
        """The hash entries of vmalloc pages (:meth:`vmalloc_mappings` with ``in_hpt``)."""
        cfg = self.config
        shift = cfg.page_shift
        penc = 1 if shift == 16 else 0  # POWER6's LP encoding of 64 KiB pages
        plan = _vmalloc_plan(self)
        canonical = mask == htab_hash_mask(hpt_size(cfg.memory))
        for i, (ea, (pa, secondary, slot)) in enumerate(plan.hpt_slots.items()):
            if not canonical:
                # Another table size: place the entries afresh as hash_page would.
                h = native.hpte_hash(kernel_vsid(ea), ea, shift, 0)
                for secondary in (False, True):
                    group = (~h if secondary else h) & mask
                    n = used.get(group, 0)
                    if n < HPTES_PER_GROUP:
                        used[group] = n + 1
                        slot = group * HPTES_PER_GROUP + n
                        break
                else:
                    continue
            e = encode_hpte(
                va_of(ea),
                pa,
                shift,
                penc=penc,
                secondary=secondary,
                referenced=True,
                changed=bool(i & 1),
            )
            yield slot, e.v, e.r

    def vmalloc_mappings(self) -> list[VmallocMapping]:
        """Ground truth of the vmalloc range: every page either translation source maps.

        Sorted by effective address. Pages with ``in_page_tables`` are what
        ``swapper_pg_dir`` maps; pages with ``in_hpt`` have a valid entry in
        :meth:`hash_page_table` (for the LPAR's table size). The seeded
        disagreements are the mappings that are not :attr:`VmallocMapping.agrees`.
        """
        return sorted(_vmalloc_plan(self).mappings, key=lambda m: (m.ea, m.in_hpt))

    def hvdemo_stats_address(self) -> int:
        """Where the kernel global ``hvdemo_stats`` points (a vmalloc address)."""
        return _vmalloc_plan(self).hvdemo_stats

    def hvdemo_stats_values(self) -> dict[str, int]:
        """``*hvdemo_stats`` as laid into memory: ``reads``, ``counters``, ``magic``, ``nr_counters``."""
        base = self.hvdemo_stats_address()
        order = self.config.endian
        data = _hvdemo_stats_bytes(self, base, order)
        vm = self.vmlinux
        out = {}
        for name in ("reads", "counters", "magic", "nr_counters"):
            off, n = vm.field("hvdemo_stats", name)
            out[name] = int.from_bytes(data[off : off + n], order)
        return out

    def hvdemo_counters(self) -> list[int]:
        """The values of ``hvdemo_stats->counters[0 .. nr_counters)``."""
        return [self._draws("hvdemo-counter", i) % 10**9 for i in range(_HVDEMO_COUNTERS)]


# ------------------------------------------------------------ vmalloc
#
# Linux 2.6.32 ppc64 hash-MMU page tables (pgtable-ppc64-64k.h / -4k.h,
# pte-hash64-64k.h / -4k.h, pte-hash64.h): index sizes PTE/PMD/PUD/PGD of
# 12/12/0/4 with 64 KiB pages and 9/7/7/9 with 4 KiB pages; upper-level
# entries hold the kernel virtual address of the next table; a PTE holds the
# page frame number at PTE_RPN_SHIFT (32 with 64 KiB pages, 17 with 4 KiB)
# and the software bits below. Entries are in the kernel's byte order.

_PAGE_PRESENT = 0x0001
_PAGE_EXEC = 0x0004
_PAGE_COHERENT = 0x0010
_PAGE_DIRTY = 0x0080
_PAGE_ACCESSED = 0x0100
_PAGE_RW = 0x0200
_PAGE_HASHPTE = 0x0400
_PAGE_F_GIX_SHIFT = 12  # _PAGE_F_GIX / _PAGE_GROUP_IX = 0x7000: slot in the group
_PAGE_F_SECOND = 0x8000  # _PAGE_F_SECOND / _PAGE_SECONDARY: in the secondary group
_PAGE_KERNEL = _PAGE_PRESENT | _PAGE_ACCESSED | _PAGE_COHERENT | _PAGE_RW | _PAGE_DIRTY

HVDEMO_STATS_MAGIC = 0x4856444D53544154
"""``struct hvdemo_stats.magic`` (``"HVDMSTAT"``) in the vmalloc()ed buffer ``hvdemo_stats`` points at."""


@dataclass(frozen=True)
class _Geometry:
    page_shift: int
    index_sizes: tuple[int, int, int, int]  # PTE, PMD, PUD, PGD
    rpn_shift: int

    def indexes(self, ea: int) -> tuple[int, int, int, int]:
        """(pgd, pud, pmd, pte) indexes of ``ea``; the PUD index is 0 without a PUD level."""
        pte, pmd, pud, pgd = self.index_sizes
        shift = self.page_shift
        i_pte = (ea >> shift) & ((1 << pte) - 1)
        shift += pte
        i_pmd = (ea >> shift) & ((1 << pmd) - 1)
        shift += pmd
        i_pud = (ea >> shift) & ((1 << pud) - 1)
        shift += pud
        return (ea >> shift) & ((1 << pgd) - 1), i_pud, i_pmd, i_pte


_GEOMETRIES = {
    16: _Geometry(16, (12, 12, 0, 4), 32),
    12: _Geometry(12, (9, 7, 7, 9), 17),
}

# What the kernel had vmalloc()ed at the crash: (what, bytes). Modules are
# vmalloc()ed on ppc64 (module_alloc), in the order they were loaded.
_VMALLOC_AREAS: tuple[tuple[str, int], ...] = (
    ("module ibmvscsi", 112 << 10),
    ("module sd_mod", 96 << 10),
    ("module mbcache", 40 << 10),
    ("module jbd2", 224 << 10),
    ("module ext4", 1216 << 10),
    ("module sg", 80 << 10),
    ("module ibmveth", 72 << 10),
    ("module hvdemo", 48 << 10),
    ("hvdemo stats", 2 << 16),
    ("vmalloc: pidmap", 64 << 10),
    ("vmalloc: swap_map", 320 << 10),
    ("vmalloc: ipc", 128 << 10),
    ("vmalloc: bpf", 64 << 10),
)
# vfree()d areas whose hash entries were never flushed (stale HPTEs), and
# the area allocated over a freed one's addresses before its first access.
_VFREED_AREAS: tuple[tuple[str, int], ...] = (
    ("vfree'd: module xfs (unloaded)", 192 << 10),
    ("vfree'd: vmalloc buffer", 64 << 10),
)
_HVDEMO_COUNTERS = 48


@dataclass(frozen=True)
class VmallocMapping:
    """One page of the vmalloc range as the crashed kernel's two translation sources saw it.

    ``in_page_tables``: ``swapper_pg_dir`` maps ``ea`` to ``pa``;
    ``in_hpt``: a valid hashed page table entry maps ``ea`` to ``pa``. A
    page in only one source is a disagreement an analyst sees (stale hash
    entry of a vfree()d page, or a page never faulted into the hash table);
    an address reused after vfree() appears twice, with two physical pages.
    """

    ea: int
    pa: int
    page_size: int
    in_page_tables: bool
    in_hpt: bool
    what: str

    @property
    def agrees(self) -> bool:
        """Both sources map ``ea`` to ``pa``."""
        return self.in_page_tables and self.in_hpt


@dataclass(frozen=True)
class _VmallocPlan:
    mappings: list[VmallocMapping]
    hpt_slots: dict[int, tuple[int, bool, int]]  # ea -> (pa, secondary, slot) of its HPTE
    pieces: list[tuple[int, bytes]]
    hvdemo_stats: int


def _hvdemo_stats_bytes(image: KernelImage, base: int, order: Literal["big", "little"]) -> bytes:
    """``struct hvdemo_stats`` followed by its counters, as laid at ``base``."""
    vm = image.vmlinux
    size = vm.sizeof("hvdemo_stats")
    buf = bytearray(size)

    def put(path: str, value: int) -> None:
        off, n = vm.field("hvdemo_stats", path)
        buf[off : off + n] = value.to_bytes(n, order)

    # The counters straddle the buffer's two pages, 128 bytes before the boundary.
    counters_off = image.config.page_size - 0x100 - 0x80
    put("reads", image._draws("hvdemo-reads") % 10**6)
    put("counters", base + counters_off)
    put("magic", HVDEMO_STATS_MAGIC)
    put("nr_counters", _HVDEMO_COUNTERS)
    out = bytearray(counters_off + 8 * _HVDEMO_COUNTERS)
    out[:size] = buf
    for i in range(_HVDEMO_COUNTERS):
        value = image._draws("hvdemo-counter", i) % 10**9
        out[counters_off + 8 * i : counters_off + 8 * i + 8] = value.to_bytes(8, order)
    return bytes(out)


@functools.lru_cache(maxsize=8)
def _vmalloc_plan(image: KernelImage) -> _VmallocPlan:
    """The vmalloc range at the crash: pages, their page tables and their hash entries."""
    cfg = image.config
    order = cfg.endian
    mask = htab_hash_mask(hpt_size(cfg.memory))
    used: dict[int, int] = {}
    for _ in image._linear_map(mask, used):
        pass
    lay = _VmallocLayout(image, mask, used)
    lay.lay_areas()
    tables = _page_tables(_GEOMETRIES[cfg.page_shift], order, lay.ptes)
    pieces = [(pa, bytes(buf)) for pa, buf in sorted(tables.items())]
    ps = cfg.page_size
    stats_page = next(m for m in lay.mappings if m.what == "hvdemo stats")
    data = _hvdemo_stats_bytes(image, lay.stats_va, order)
    first = ps - 0x100
    pieces.append((stats_page.pa + 0x100, data[:first]))
    second = next(m for m in lay.mappings if m.ea == stats_page.ea + ps)
    pieces.append((second.pa, data[first:]))
    return _VmallocPlan(lay.mappings, lay.hpt_slots, pieces, lay.stats_va)


class _VmallocLayout:
    """The vmalloc areas laid out: their pages, PTEs and hash entries (see :func:`_vmalloc_plan`)."""

    def __init__(self, image: KernelImage, mask: int, used: dict[int, int]) -> None:
        self.image = image
        self.geo = _GEOMETRIES[image.config.page_shift]
        self.ps = image.config.page_size
        self.mask = mask
        self.used = used  # hash groups' filled slots, the linear map's already counted
        # Physical pages: distinct, drawn from what the kernel owned.
        self.pa_top = scratch_layout(image.config).base
        self.taken: set[int] = set()
        self.mappings: list[VmallocMapping] = []
        self.hpt_slots: dict[int, tuple[int, bool, int]] = {}
        self.ptes: dict[int, int] = {}  # ea -> PTE value (0: cleared)
        self.stats_va = 0

    def page(self, label: str, i: int, low: bool = False) -> int:
        """A physical page not used yet (``low``: below 256 MiB, which every dump saves)."""
        ps = self.ps
        top = min(self.pa_top, 256 << 20) if low else self.pa_top
        span = (top - _VMALLOC_PA_BASE) // ps
        n = 0
        while True:
            pa = _VMALLOC_PA_BASE + (self.image._draws("vmalloc-pa", label, i, n) % span) * ps
            if pa not in self.taken:
                self.taken.add(pa)
                return pa
            n += 1

    def place(self, ea: int) -> tuple[bool, int] | None:
        """Insert a hash entry as hash_page does: first free slot, primary then secondary."""
        h = native.hpte_hash(kernel_vsid(ea), ea, self.geo.page_shift, 0)
        for secondary in (False, True):
            group = (~h if secondary else h) & self.mask
            n = self.used.get(group, 0)
            if n < HPTES_PER_GROUP:
                self.used[group] = n + 1
                return secondary, group * HPTES_PER_GROUP + n
        return None  # both groups full: this model leaves the page unhashed

    def lay_areas(self) -> None:
        ps = self.ps
        cursor = VMALLOC_BASE
        areas = [(what, size, "live") for what, size in _VMALLOC_AREAS]
        # The freed areas sit between the live ones, where vmalloc had put them.
        areas.insert(3, (*_VFREED_AREAS[0], "freed"))
        areas.insert(10, (*_VFREED_AREAS[1], "freed"))
        reused_done = False
        for a, (what, size, kind) in enumerate(areas):
            pages = -(-size // ps)
            start = cursor
            cursor += (pages + 1) * ps  # a guard page after every area
            # The hvdemo buffer comes from low memory (the 256 MiB every dump saves).
            low = what == "hvdemo stats"
            if low:
                self.stats_va = start + 0x100
            for i in range(pages):
                self.lay_page(a, i, start + i * ps, what, kind, low)
            if kind == "freed" and not reused_done:
                # vmalloc() reused the freed area's first page for a new buffer
                # not yet touched: the page tables map a new page, the stale hash
                # entry still maps the old one.
                reused_done = True
                pa = self.page("reused", 0)
                geo = self.geo
                self.ptes[start] = ((pa >> geo.page_shift) << geo.rpn_shift) | _PAGE_KERNEL
                self.mappings.append(
                    VmallocMapping(start, pa, ps, True, False, "vmalloc: reused address")
                )

    def lay_page(self, a: int, i: int, ea: int, what: str, kind: str, low: bool) -> None:
        ps, geo = self.ps, self.geo
        pa = self.page(what, i, low)
        if kind == "freed":
            # vfree() cleared the PTE; the hash entry was never flushed.
            slot = self.place(ea)
            self.ptes[ea] = 0
            if slot is not None:
                self.hpt_slots[ea] = (pa, *slot)
                self.mappings.append(VmallocMapping(ea, pa, ps, False, True, what))
            return
        # Most pages were touched since vmalloc() and so faulted into the
        # hash table; a seeded few never were (the hvdemo buffer always was).
        faulted = low or self.image._draws("vmalloc-faulted", a, i) % 10 != 0
        slot = self.place(ea) if faulted else None
        exec_ = _PAGE_EXEC if what.startswith("module") else 0
        pte = ((pa >> geo.page_shift) << geo.rpn_shift) | _PAGE_KERNEL | exec_
        if slot is not None:
            secondary, s = slot
            pte |= _PAGE_HASHPTE | (s % HPTES_PER_GROUP) << _PAGE_F_GIX_SHIFT
            pte |= _PAGE_F_SECOND if secondary else 0
            self.hpt_slots[ea] = (pa, secondary, s)
        self.ptes[ea] = pte
        self.mappings.append(VmallocMapping(ea, pa, ps, True, slot is not None, what))


def _page_tables(
    geo: _Geometry, order: Literal["big", "little"], ptes: Mapping[int, int]
) -> dict[int, bytearray]:
    """swapper_pg_dir, then PUD/PMD tables and PTE pages from the page-table area, each
    aligned to its size as the kernel's caches align them, mapping ``ptes``."""
    pte_size, pmd_size, pud_size, pgd_size = (8 << n if n else 0 for n in geo.index_sizes)
    if geo.page_shift == 16:
        pte_size *= 2  # real_pte_t: the PTEs, then as many hidx words (2.6.32 64K)
    pgd_pa = SYMBOLS["swapper_pg_dir"]
    tables: dict[int, bytearray] = {pgd_pa: bytearray(pgd_size)}
    free = _PGTABLE_BASE

    def entry(table: int, index: int, size: int) -> int:
        """The next-level table an entry points at, allocated on first use."""
        nonlocal free
        buf = tables[table]
        value = int.from_bytes(buf[8 * index : 8 * index + 8], order)
        if value:
            return value - KERNELBASE
        free = -(-free // size) * size
        pa = free
        free += size
        if free > _PGTABLE_END:  # pragma: no cover - guards the area's size
            raise AssertionError("page-table area full")
        tables[pa] = bytearray(size)
        buf[8 * index : 8 * index + 8] = (KERNELBASE + pa).to_bytes(8, order)
        return pa

    for ea, pte in sorted(ptes.items()):
        i_pgd, i_pud, i_pmd, i_pte = geo.indexes(ea)
        if pud_size:
            pud = entry(pgd_pa, i_pgd, pud_size)
            pmd = entry(pud, i_pud, pmd_size)
        else:
            pmd = entry(pgd_pa, i_pgd, pmd_size)
        pte_page = entry(pmd, i_pmd, pte_size)
        tables[pte_page][8 * i_pte : 8 * i_pte + 8] = pte.to_bytes(8, order)
    return tables


def _frames(
    vm: Vmlinux, chain: list[str], top_pc: int, base_sp: int, interrupted: dict[int, int]
) -> tuple[list[Frame], list[int]]:
    """Frames for a call chain; the outermost (an assembly entry point) has its SP at ``base_sp``.

    Returns the frames, innermost first, and for each but the outermost the
    offset from its CFA (its caller's SP) where it saved its return address.
    """
    pcs = [top_pc]
    for i in range(1, len(chain)):
        pcs.append(interrupted[i] if i in interrupted else vm.call_site(chain[i], chain[i - 1]))
    if vm.has_cfi(pcs[-1]):
        raise ValueError(f"{chain[-1]} has CFI: the outermost frame must be an assembly entry")
    sizes: list[int] = []
    lr_offs: list[int] = []
    for i, pc in enumerate(pcs[:-1]):
        row = vm.cfi_row(pc if i == 0 or i in interrupted else pc - 4)
        if row.lr_offset is None:
            raise ValueError(f"{chain[i]} at {pc:#x} has not saved LR: not a frame hvsim can lay")
        sizes.append(row.cfa_offset)
        lr_offs.append(row.lr_offset)
    sps = [0] * len(chain)
    sps[-1] = base_sp
    for i in reversed(range(len(chain) - 1)):
        sps[i] = sps[i + 1] - sizes[i]
    return [Frame(chain[i], pcs[i], sps[i]) for i in range(len(chain))], lr_offs


def _irq_stack(cpu: int, hard: int) -> int:
    """Physical start of CPU ``cpu``'s softirq (``hard=0``) or hardirq (``hard=1``) stack."""
    return _IRQ_STACK_TOP - (2 * cpu + hard + 1) * _THREAD_SIZE


class _TaskList:
    """The tasks of a kernel image as they are planned: pids handed out as Linux would."""

    def __init__(self, image: KernelImage) -> None:
        self.image = image
        cpus = image.config.cpus
        self.tasks: list[TaskInfo] = [
            TaskInfo(f"swapper/{cpu}", 0, 0, 0, False, [], state=0, cpu=cpu, idle=True)
            for cpu in range(cpus)
        ]
        self.pid = 1
        self.user_pid_next = 0

    def kthread(self, comm: str, chain: str, cpu: int = 0) -> TaskInfo:
        self.pid += 1
        t = TaskInfo(comm, self.pid, self.pid, 2, False, _SLEEPS[chain], cpu=cpu)
        self.tasks.append(t)
        return t

    def kernel_threads(self) -> tuple[TaskInfo, TaskInfo]:
        """init and the kernel threads; returns khungtaskd and the jbd2 thread."""
        cpus = self.image.config.cpus
        self.tasks.append(TaskInfo("init", 1, 1, 0, True, _SLEEPS["epoll"], cpu=0))
        self.kthread("kthreadd", "kthreadd").ppid = 0
        for cpu in range(cpus):
            self.kthread(f"migration/{cpu}", "smpboot", cpu)
            self.kthread(f"ksoftirqd/{cpu}", "smpboot", cpu)
            self.kthread(f"kworker/{cpu}:0", "worker", cpu)
        self.kthread("rcu_sched", "rcu")
        hung = self.kthread("khungtaskd", "khungtaskd")
        self.kthread("kswapd0", "kswapd")
        jbd2 = self.kthread("jbd2/sda2-8", "jbd2")
        self.kthread(f"kworker/u{2 * cpus}:1", "worker")
        self.user_pid_next = self.pid + 260 + self.image._draws("pid-base") % 200
        return hung, jbd2

    def user(self, comm: str, chain: str, want: int | None = None) -> TaskInfo:
        draws = self.image._draws
        if want is None:
            want = self.user_pid_next
            self.user_pid_next += 1 + draws("pid-gap", comm, self.user_pid_next) % 40
        cpu = draws("cpu", comm, want) % self.image.config.cpus
        t = TaskInfo(comm, want, want, 1, True, _SLEEPS[chain], cpu=cpu)
        self.tasks.append(t)
        return t


def _check_tasks(tasks: list[TaskInfo], cpus: int) -> None:
    used = {t.pid for t in tasks if t.pid}
    if len(used) != len([t for t in tasks if t.pid]):
        raise ValueError("two tasks have the same pid (check --tasks)")
    if len(tasks) > _MAX_TASKS:
        raise ValueError(f"too many tasks ({len(tasks)}); hvsim lays out at most {_MAX_TASKS}")
    room = (_IRQ_STACK_TOP - _STACK_BASE) // _THREAD_SIZE - 2 * cpus
    if len(tasks) - 1 > room:  # init_task's stack is in the image
        raise ValueError(
            f"too many tasks ({len(tasks)}); with {cpus} CPUs' interrupt stacks"
            f" hvsim lays out at most {room + 1}"
        )


def _set_running(tasks: list[TaskInfo], crasher: TaskInfo, kind: str, crash: int) -> None:
    """The crashing task runs on the crashing CPU; every other CPU runs its idle task."""
    crasher.cpu = crash
    crasher.running = True
    crasher.state = 0
    if kind in _PANIC_PATHS:
        path = list(_PANIC_PATHS[kind])
        if kind == "machine-check":
            path += _IDLE_BOOT if crash == 0 else _IDLE_SECONDARY
        crasher.chain = path
    for t in tasks:
        if t.idle:
            if t.cpu != crash:
                t.running = True
                t.chain = _IDLE_BOOT if t.cpu == 0 else _IDLE_SECONDARY
            elif not t.running:
                t.state = 0
                tail = _IDLE_BOOT if t.cpu == 0 else _IDLE_SECONDARY
                t.chain = [*_SLEEP_HEAD, *tail[tail.index("do_idle") :]]


@dataclass
class _Build:
    """What the steps of :func:`_build_state` share: the image, its memory, its tasks."""

    image: KernelImage
    mem: _Mem
    tasks: list[TaskInfo]
    offsets: list[int] = field(default_factory=list)  # per-CPU area offsets
    uptime_ns: int = 0

    @property
    def vm(self) -> Vmlinux:
        return self.image.vmlinux

    @property
    def cpus(self) -> int:
        return self.image.config.cpus

    def sym(self, name: str) -> int:
        return self.vm.symbol(name)

    @property
    def cfa_top_off(self) -> int:
        """Where a task's outermost frame's CFA is, from its stack's base."""
        return _THREAD_SIZE - _STACK_FRAME_OVERHEAD - _PT_REGS_SIZE - 16


@functools.lru_cache(maxsize=8)
def _build_state(image: KernelImage) -> _State:
    b = _Build(image, _Mem(image.vmlinux, image.config.endian), image._plan_tasks())
    _lay_sections(b)
    _lay_percpu(b)
    _lay_irq_stacks(b)
    _lay_globals(b)
    by_pid = _place_tasks(b)
    for t in b.tasks:
        _lay_task_stack(b, t)
        _fill_task_struct(b, t)
        if t.pid:
            _hash_pid(b, t)
    _link_tasks(b, by_pid)
    running, regs_all = _lay_cpus(b)
    _lay_crash_notes(b, running, regs_all)
    log = _log(image, b.tasks, running, b.uptime_ns)
    _write_printk(b.mem, b.vm, log)
    _lay_vmcoreinfo(b)
    return _State(b.tasks, running, regs_all, b.mem.pieces(), log, b.uptime_ns)


def _lay_sections(b: _Build) -> None:
    """The image's sections at their physical addresses; .bss without unused pacas."""
    vm, mem = b.vm, b.mem
    paca0 = b.sym("paca")
    paca_end = paca0 + b.cpus * PACA_SIZE
    full_paca_end = paca0 + vm.variable_size("paca")
    for s in vm.sections:
        if s.data is not None:
            mem.alloc(s.paddr, s.size, s.data)
        elif s.addr <= paca0 < s.addr + s.size:
            mem.alloc(s.paddr, paca_end - s.addr)
            if s.addr + s.size > full_paca_end:
                mem.alloc(full_paca_end - KERNELBASE, s.addr + s.size - full_paca_end)
        else:
            mem.alloc(s.paddr, s.size)


def _lay_percpu(b: _Build) -> None:
    """Per-CPU areas, one unit per CPU, each a copy of .data..percpu; the CPU masks."""
    vm, mem, cpus = b.vm, b.mem, b.cpus
    pcpu = next(s for s in vm.sections if s.name == ".data..percpu")
    assert pcpu.data is not None
    for cpu in range(cpus):
        area = _PERCPU_BASE + cpu * pcpu.size
        mem.alloc(area, pcpu.size, pcpu.data)
        b.offsets.append(KERNELBASE + area - pcpu.addr)
    for cpu, off in enumerate(b.offsets):
        mem.put_int(b.sym("__per_cpu_offset") + 8 * cpu, 8, off)
    words = (cpus + 63) // 64
    for mask in (
        "__cpu_possible_mask",
        "__cpu_online_mask",
        "__cpu_present_mask",
        "__cpu_active_mask",
    ):
        for w in range(words):
            n = min(64, cpus - 64 * w)
            mem.put_int(b.sym(mask) + 8 * w, 8, (1 << n) - 1)
    mem.put_int(b.sym("nr_cpu_ids"), 4, cpus)


def _lay_irq_stacks(b: _Build) -> None:
    """Interrupt stacks (CONFIG_IRQSTACKS): hardirq_ctx[cpu] and softirq_ctx[cpu]
    point at their bottoms, where irq_ctx_init() left a thread_info with the
    matching preempt_count."""
    for cpu in range(b.cpus):
        for i, (ctx, count) in enumerate(
            (("softirq_ctx", _SOFTIRQ_OFFSET), ("hardirq_ctx", _HARDIRQ_OFFSET))
        ):
            base = _irq_stack(cpu, i)
            b.mem.alloc(base, b.vm.sizeof("thread_info"))
            b.mem.put(KERNELBASE + base, "thread_info", "preempt_count", count)
            b.mem.put_int(b.sym(ctx) + 8 * cpu, 8, KERNELBASE + base)


def _lay_globals(b: _Build) -> None:
    """Uptime and jiffies, panic_cpu, the banner, utsname, command line and pid_hash."""
    image, mem, vm, sym = b.image, b.mem, b.vm, b.sym
    b.uptime_ns = (2 * 3600 + image._draws("uptime") % (200 * 86400)) * 10**9 + image._draws(
        "uptime-ns"
    ) % 10**9
    hz = 250
    mem.put_int(sym("jiffies"), 8, (b.uptime_ns // (10**9 // hz) + 0xFFFB6C20) & _U64)
    mem.put_int(sym("panic_cpu"), 4, image.crash_cpu)
    mem.write(
        sym("linux_banner"),
        image.banner().encode().ljust(vm.variable_size("linux_banner"), b"\0")[:256],
    )
    mem.write(sym("init_uts_ns"), image._uts_ns())
    cmdline_pa = _PIDHASH_BASE + 0x10000
    cmdline = b"root=/dev/sda2 ro phyp_dump=1 console=hvc0\0"
    mem.alloc(cmdline_pa, len(cmdline), cmdline)
    mem.put_int(sym("saved_command_line"), 8, KERNELBASE + cmdline_pa)
    # pid_hash (2.6.32's struct upid hash), sized at boot.
    buckets = 1 << _PIDHASH_SHIFT
    mem.alloc(_PIDHASH_BASE, 8 * buckets)
    mem.put_int(sym("pid_hash"), 8, KERNELBASE + _PIDHASH_BASE)
    mem.put_int(sym("pidhash_shift"), 4, _PIDHASH_SHIFT)


def _place_tasks(b: _Build) -> dict[int, TaskInfo]:
    """Each task's slot: its task_struct, struct pid, signal_struct and mm_struct, its stack."""
    vm, sym = b.vm, b.sym
    pid_off = (vm.sizeof("task_struct") + 63) & ~63
    sig_off = pid_off + ((vm.sizeof("pid") + 63) & ~63)
    mm_off = sig_off + ((vm.sizeof("signal_struct") + 63) & ~63)
    if mm_off + vm.sizeof("mm_struct") > _TASK_SLOT:  # pragma: no cover - guards a struct change
        raise AssertionError("task slot too small")
    by_pid: dict[int, TaskInfo] = {}
    for t in b.tasks:
        if t.slot < 0:
            t.address = sym("init_task")
            t.stack = sym("init_thread_union")
            t.signal = sym("init_signals")
        else:
            base = _TASK_BASE + t.slot * _TASK_SLOT
            b.mem.alloc(base, _TASK_SLOT)
            t.address = KERNELBASE + base
            t.stack = KERNELBASE + _STACK_BASE + t.slot * _THREAD_SIZE
            t.pid_struct = t.address + pid_off
            t.signal = t.address + sig_off
            if t.user:
                t.mm = t.address + mm_off
        if t.pid:
            by_pid[t.pid] = t
    return by_pid


def _lay_task_stack(b: _Build, t: TaskInfo) -> None:
    """A task's frames (a running task's top frame just returned from a call), the
    user registers above them, and a sleeping task's switch frame."""
    vm, mem, image = b.vm, b.mem, b.image
    chain = t.chain
    if t.running:
        top_callee = _PANIC_CALLEE if chain[0] == "panic" else "plpar_hcall_norets"
    else:
        top_callee = "_switch"
    interrupted: dict[int, int] = {}
    if "data_access_common" in chain:
        interrupted[chain.index("data_access_common") + 1] = vm.fault_sites()[0]
    if "machine_check_common" in chain:
        i = chain.index("machine_check_common") + 1
        interrupted[i] = vm.call_site(chain[i], "plpar_hcall_norets")
    top_pc = vm.call_site(chain[0], top_callee)
    cfa = t.stack + b.cfa_top_off
    frames, lr_offs = _frames(vm, chain, top_pc, cfa, interrupted)
    t.frames = frames
    switch_frame = _STACK_FRAME_OVERHEAD + vm.sizeof("pt_regs")
    if t.slot >= 0:  # init_task's stack is in .data
        low = frames[0].sp - switch_frame - 288
        mem.alloc(low - KERNELBASE, t.stack + _THREAD_SIZE - low)
        mem.alloc(t.stack - KERNELBASE, 8)
    mem.put_int(t.stack, 8, _STACK_END_MAGIC)
    for i, f in enumerate(frames[:-1]):
        caller_sp = frames[i + 1].sp
        mem.put_int(f.sp, 8, caller_sp)
        mem.put_int(caller_sp + lr_offs[i], 8, frames[i + 1].pc)
    mem.put_int(cfa, 8, 0)  # the entry frame: a zero back chain ends the stack
    if t.user:
        _lay_user_regs(b, t, cfa + _STACK_FRAME_OVERHEAD)
    if not t.running:
        ksp = frames[0].sp - switch_frame
        mem.put_int(ksp, 8, frames[0].sp)
        regs_at = frames[0].sp - vm.sizeof("pt_regs")
        for n in range(14, 32):
            mem.put_int(regs_at + 8 * n, 8, image._draws("nvgpr", t.pid, t.slot + 1, n))
        mem.put_int(regs_at + 8 * 32, 8, frames[0].pc)  # nip
        mem.put_int(regs_at + 8 * 36, 8, frames[0].pc)  # link
        mem.put_int(regs_at + 8 * 38, 8, image._draws("ccr", t.slot + 1) & 0xFFFFFFFF)


def _lay_user_regs(b: _Build, t: TaskInfo, uregs: int) -> None:
    """The user's registers above the outermost frame, as the system call saved them."""
    image, mem = b.image, b.mem
    user_sp = 0x7FFFF0000000 + (image._draws("usp", t.pid) % 0x10000000 & ~0xF)
    user_pc = 0x10000000 + (image._draws("upc", t.pid) % 0x100000 & ~3)
    mem.put_int(uregs + 8, 8, user_sp)
    mem.put_int(uregs + 8 * 32, 8, user_pc)
    msr = _MSR_SF | _MSR_EE | _MSR_PR | _MSR_ME | _MSR_IR | _MSR_DR | _MSR_RI
    mem.put_int(uregs + 8 * 33, 8, msr | (_MSR_LE if image.config.endian == "little" else 0))
    mem.put_int(uregs + 8 * 40, 8, 0xC00)


def _task_prio(comm: str) -> int:
    if comm.startswith("migration/"):
        return 0
    return 100 if comm.startswith("kworker") else 120


def _fill_task_struct(b: _Build, t: TaskInfo) -> None:
    """struct task_struct, and the task's signal_struct and mm_struct."""
    vm, mem, image, ts = b.vm, b.mem, b.image, "task_struct"
    a = t.address
    put = mem.put
    switch_frame = _STACK_FRAME_OVERHEAD + vm.sizeof("pt_regs")
    ksp = t.frames[0].sp - switch_frame
    uregs = t.stack + b.cfa_top_off + _STACK_FRAME_OVERHEAD
    flags = (0x00200000 if not t.user else 0x00400100) | (0x2 if t.idle else 0)
    prio = _task_prio(t.comm)
    draw = image._draws
    for field_name, value in (
        ("state", t.state),
        ("stack", t.stack),
        ("usage", 2),
        ("flags", flags),
        ("on_cpu", 1 if t.running else 0),
        ("cpu", t.cpu),
        ("on_rq", 1 if t.running else 0),
        ("prio", prio),
        ("static_prio", 120),
        ("normal_prio", prio),
        ("policy", 1 if prio == 0 else 0),
        ("mm", t.mm),
        ("active_mm", t.mm or b.sym("init_mm")),
        ("exit_signal", 17 if t.user else -1 if t.idle else 17),
        ("pid", t.pid),
        ("tgid", t.tgid),
        ("group_leader", a),
        ("comm", t.comm.encode()),
        ("signal", t.signal),
        ("thread.ksp", ksp if not t.running else ksp - 0x400),
        ("thread.regs", uregs if t.user else 0),
        (
            "start_time",
            b.uptime_ns // 1000 * (t.pid % 97 + 1) // 4000 if t.pid > 30 else t.pid * 10**7,
        ),
        ("utime", draw("utime", t.pid, t.slot + 1) % 10**12 if t.user else 0),
        ("stime", draw("stime", t.pid, t.slot + 1) % 10**11),
        ("nvcsw", draw("nvcsw", t.pid, t.slot + 1) % 10**6),
        ("nivcsw", draw("nivcsw", t.pid, t.slot + 1) % 10**4),
        ("last_switch_time", 0),
    ):
        put(a, ts, field_name, value)
    for lst in ("children", "sibling", "thread_group"):
        mem.list_init(a + vm.offsetof(ts, lst))
    if t.slot >= 0:
        sig = t.signal
        for name in ("sigcnt", "live", "nr_threads", "leader"):
            put(sig, "signal_struct", name, 1)
        head = sig + vm.offsetof("signal_struct", "thread_head")
        mem.list_init(head)
        mem.list_add_tail(a + vm.offsetof(ts, "thread_node"), head)
    if t.mm:
        for name, value in (
            ("mm_users", 1),
            ("mm_count", 1),
            ("map_count", 20 + t.pid % 40),
            ("total_vm", 1000 + draw("vm", t.pid) % 100000),
            ("start_stack", 0x7FFFFFFF0000),
            ("mmap_base", 0x7FFF80000000),
            ("task_size", 0x400000000000),
            ("owner", a),
        ):
            put(t.mm, "mm_struct", name, value)


def _hash_pid(b: _Build, t: TaskInfo) -> None:
    """The task's struct pid, hashed into pid_hash, and the task's pid link."""
    vm, mem, ts = b.vm, b.mem, "task_struct"
    put = mem.put
    a, p = t.address, t.pid_struct
    init_ns = b.sym("init_pid_ns")
    put(p, "pid", "count", 1)
    put(p, "pid", "level", 0)
    put(p, "pid", "numbers[0].nr", t.pid)
    put(p, "pid", "numbers[0].ns", init_ns)
    node = a + vm.offsetof(ts, "pids[0].node")
    first = p + vm.offsetof("pid", "tasks[0]")
    mem.put_int(first, 8, node)
    mem.put_int(node, 8, 0)
    mem.put_int(node + 8, 8, first)
    put(a, ts, "pids[0].pid", p)
    chain_node = p + vm.offsetof("pid", "numbers[0].pid_chain")
    h = ((t.pid + init_ns) * _GOLDEN_RATIO_PRIME_64 & _U64) >> (64 - _PIDHASH_SHIFT)
    bucket = KERNELBASE + _PIDHASH_BASE + 8 * h
    old = mem.get_u64(bucket)
    mem.put_int(chain_node, 8, old)
    mem.put_int(chain_node + 8, 8, bucket)
    if old:
        mem.put_int(old + 8, 8, chain_node)
    mem.put_int(bucket, 8, chain_node)


def _link_tasks(b: _Build, by_pid: dict[int, TaskInfo]) -> None:
    """The task list (init_task is its head) and the family tree."""
    vm, mem, ts = b.vm, b.mem, "task_struct"
    init_task = b.sym("init_task")
    head = init_task + vm.offsetof(ts, "tasks")
    mem.list_init(head)
    mem.list_init(init_task + vm.offsetof(ts, "children"))
    swapper = b.tasks[0]
    for t in b.tasks:
        parent = swapper if t.pid == 0 else by_pid.get(t.ppid, swapper)
        mem.put(t.address, ts, "real_parent", parent.address)
        mem.put(t.address, ts, "parent", parent.address)
        if t.pid:
            mem.list_add_tail(t.address + vm.offsetof(ts, "tasks"), head)
            mem.list_add_tail(
                t.address + vm.offsetof(ts, "sibling"), parent.address + vm.offsetof(ts, "children")
            )


def _lay_cpus(b: _Build) -> tuple[list[TaskInfo], list[dict[str, int]]]:
    """Per CPU: its runqueue and paca; returns each CPU's running task and registers."""
    vm, mem, image = b.vm, b.mem, b.image
    put = mem.put
    running: list[TaskInfo] = []
    regs_all: list[dict[str, int]] = []
    rq_sym = b.sym("runqueues")
    paca0 = b.sym("paca")
    toc = vm.symbols.get("__toc_start", KERNELBASE + 0x10000) + 0x8000
    for cpu in range(b.cpus):
        run = next(t for t in b.tasks if t.running and t.cpu == cpu)
        idle = next(t for t in b.tasks if t.idle and t.cpu == cpu)
        running.append(run)
        rq = rq_sym + b.offsets[cpu]
        for name, value in (
            ("curr", run.address),
            ("idle", idle.address),
            ("cpu", cpu),
            ("online", 1),
            ("nr_running", 0 if run.idle else 1),
            ("clock", b.uptime_ns),
            ("clock_task", b.uptime_ns - image._draws("irqtime", cpu) % 10**9),
            ("nr_switches", image._draws("switches", cpu) % 10**9),
        ):
            put(rq, "rq", name, value)
        pa = paca0 + cpu * PACA_SIZE
        for name, value in (
            ("lock_token", 0x8000),
            ("paca_index", cpu),
            ("kernel_toc", toc),
            ("kernelbase", KERNELBASE),
            ("hw_cpu_id", cpu),
            ("cpu_start", 1),
            ("kexec_state", 2 if cpu == image.crash_cpu else 1),
            ("__current", run.address),
            ("kstack", run.stack + b.cfa_top_off),
        ):
            put(pa, "paca_struct", name, value)
        regs_all.append(_registers(image, cpu, run, toc))
    return running, regs_all


def _lay_crash_notes(b: _Build, running: list[TaskInfo], regs_all: list[dict[str, int]]) -> None:
    """crash_notes: each CPU's ``NT_PRSTATUS`` as crash_save_cpu() leaves it.

    A fadump kernel crashes into the firmware (``crash_fadump()``), which never
    runs crash_save_cpu(): its buffers stay empty, and drgn then finds no
    registers for any CPU (as on a real fadump vmcore) unless told.
    """
    order = b.image.config.endian
    notes_sym = b.sym("crash_notes_percpu")
    b.mem.put_int(b.sym("crash_notes"), 8, notes_sym)
    if b.image.config.dump == "fadump":
        return
    for cpu in range(b.cpus):
        desc = build_prstatus(
            _pt_regs_of(regs_all[cpu], cpu == b.image.crash_cpu, b.image.scenario.trap),
            order,
            pid=running[cpu].pid,
        )
        note = build_notes([Note("CORE", NT_PRSTATUS, desc)], order) + bytes(12)  # final_note
        b.mem.write(notes_sym + b.offsets[cpu], note)


def _lay_vmcoreinfo(b: _Build) -> None:
    """The VMCOREINFO note and text, as crash_save_vmcoreinfo() left them."""
    mem, sym = b.mem, b.sym
    mem.write(sym("vmcoreinfo_note"), b.image.vmcoreinfo_note())
    text = b.image.vmcoreinfo()
    mem.write(sym("vmcoreinfo_data"), text[: b.vm.variable_size("vmcoreinfo_data")])
    mem.put_int(sym("vmcoreinfo_size"), 8, len(text))


def _pt_regs_of(regs: Mapping[str, int], crashing: bool, trap: int) -> PtRegs:
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
        trap=trap if crashing else 0x500,
        dar=regs["DAR"],
        dsisr=regs["DSISR"],
    )


def _registers(image: KernelImage, cpu: int, task: TaskInfo, toc: int) -> dict[str, int]:
    """CPU ``cpu``'s registers: stopped in its top frame, just back from a call (NIA == LR)."""
    cfg = image.config
    d = image._draws
    crashing = cpu == image.crash_cpu
    top = task.frames[0]
    regs: dict[str, int] = {f"GPR{n:02d}": d("gpr", cpu, n) for n in range(32)}
    regs["GPR01"] = top.sp
    regs["GPR02"] = toc
    regs["GPR13"] = kernel_symbol("paca") + cpu * PACA_SIZE
    msr = _MSR_SF | _MSR_ME | _MSR_IR | _MSR_DR | _MSR_RI
    if cfg.endian == "little":
        msr |= _MSR_LE
    if crashing:
        dar, dsisr = image.scenario.dar, image.scenario.dsisr
    else:
        msr |= _MSR_EE
        dar = KERNELBASE + (d("dar", cpu) % cfg.memory & ~7)
        dsisr = 0
    nia = top.pc
    regs.update(
        NIA=nia,
        MSR=msr,
        CTR=kernel_symbol("_stext") + 4 * (d("ctr", cpu) % 0x2000),
        LR=nia,
        XER=d("xer", cpu) & 0xE000007F,
        CR=d("cr", cpu) & 0xFFFFFFFF,
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
        SPRG1=d("sprg1", cpu),
        SPRG2=0,
        SPRG3=regs["GPR13"],
        FPSCR=0,
        VRSAVE=0,
        VSCR=0x10000,
    )
    missing = set(REGISTERS) - set(regs)
    if missing:  # pragma: no cover - guards a change to the register list
        raise AssertionError(f"no value for registers {sorted(missing)}")
    return {name: regs[name] & _U64 for name in REGISTERS}


# ------------------------------------------------------------------ the log

_BOOT_LOG = (
    "Using pSeries machine description",
    "Page sizes from device-tree:",
    "base_shift=12: shift=12, sllp=0x0000, avpnm=0x00000000, tlbiel=1, penc=0",
    "base_shift=16: shift=16, sllp=0x0110, avpnm=0x00000000, tlbiel=1, penc=1",
    "base_shift=24: shift=24, sllp=0x0100, avpnm=0x00000001, tlbiel=0, penc=0",
    "Using 1TB segments",
    "Found initrd at 0xc000000002a00000:0xc000000003263000",
    "Partition configured for {cpus} cpus.",
    "CPU maps initialized for 2 threads per core",
    "Starting Linux PPC64 {version}",
    "-----------------------------------------------------",
    "ppc64_pft_size                = 0x{pft:x}",
    "physicalMemorySize            = 0x{memory:x}",
    "htab_hash_mask                = 0x{hmask:x}",
    "-----------------------------------------------------",
    "Initializing cgroup subsys cpuset",
    "Initializing cgroup subsys cpu",
    "Linux version {release} (hvsim@build.hvdump) (gcc version 4.4.4 20100726 (Red Hat 4.4.4-13) (GCC) ) {version}",
    "[boot]0012 Setup Arch",
    "Phyp-dump: {dump}",
    "Zone PFN ranges:",
    "  DMA      0x00000000 -> 0x{pfns:08x}",
    "  Normal   0x{pfns:08x} -> 0x{pfns:08x}",
    "[boot]0015 Setup Done",
    "Built 1 zonelists in Node order, mobility grouping on.  Total pages: {pages}",
    "Kernel command line: root=/dev/sda2 ro phyp_dump=1 console=hvc0",
    "PID hash table entries: 4096 (order: -1, 32768 bytes)",
    "freeing bootmem node 0",
    "Memory: {kb}k/{kb}k available (9472k kernel code, 0k reserved, 1408k data, 1271k bss, 2240k init)",
    "SLUB: Genslabs=19, HWalign=128, Order=0-3, MinObjects=0, CPUs={cpus}, Nodes=256",
    "Hierarchical RCU implementation.",
    "NR_IRQS:512",
    "clocksource: timebase mult[7d0000] shift[22] registered",
    "Console: colour dummy device 80x25",
    "console [hvc0] enabled",
    "Security Framework initialized",
    "Mount-cache hash table entries: 4096",
    "Brought up {cpus} CPUs",
    "NET: Registered protocol family 16",
    "IBM eBus Device Driver",
    "PCI: Probing PCI hardware",
    "bio: create slab <bio-0> at 0",
    "vgaarb: loaded",
    "SCSI subsystem initialized",
    "NET: Registered protocol family 2",
    "IP route cache hash table entries: 32768 (order: 2, 262144 bytes)",
    "TCP established hash table entries: 131072 (order: 4, 1048576 bytes)",
    "Unpacking initramfs...",
    "Freeing initrd memory: 8612k freed",
    "IOMMU table initialized, virtual merging enabled",
    "audit: initializing netlink socket (disabled)",
    "HugeTLB registered 16 MB page size, pre-allocated 0 pages",
    "ibmvscsi 30000002: SRP_VERSION: 16.a",
    "scsi0 : IBM POWER Virtual SCSI Adapter 1.5.8",
    "sd 0:0:1:0: [sda] 146800640 512-byte logical blocks: (75.1 GB/70.0 GiB)",
    " sda: sda1 sda2 sda3",
    "sd 0:0:1:0: [sda] Attached SCSI disk",
    "Freeing unused kernel memory: 2240k freed",
    "EXT4-fs (sda2): mounted filesystem with ordered data mode. Opts: (null)",
    "udev: starting version 147",
    "ibmveth: IBM i/pSeries Virtual Ethernet Driver 1.03",
    "Adding 4194240k swap on /dev/sda3.  Priority:-1 extents:1 across:4194240k",
    "NET: Registered protocol family 10",
    "hvdemo: module loaded, /proc/hvdemo/stats ready",
)


def _log(
    image: KernelImage, tasks: list[TaskInfo], running: list[TaskInfo], uptime_ns: int
) -> list[tuple[int, int, str, int]]:
    cfg = image.config
    vm = image.vmlinux
    d = image._draws
    values = {
        "cpus": cfg.cpus,
        "version": "#1 SMP Tue Jun 15 10:19:54 EDT 2010",
        "release": cfg.osrelease,
        "pft": 18 + (cfg.memory.bit_length() - 31),
        "memory": cfg.memory,
        "hmask": (1 << (cfg.memory.bit_length() - 12)) - 1,
        "dump": f"{256} MiB boot memory will be saved, scratch area at 0x{cfg.memory - cfg.reserve_size:x}",
        "pfns": cfg.memory >> cfg.page_shift,
        "pages": cfg.memory >> cfg.page_shift,
        "kb": cfg.memory >> 10,
    }
    out: list[tuple[int, int, str, int]] = []
    ts = 0
    for i, line in enumerate(_BOOT_LOG):
        ts += 1000 + d("boot-ts", i) % (120_000_000 if i > 45 else 8_000_000)
        level = 4 if line.startswith("Phyp") else 6
        out.append((ts, level, line.format(**values), 0x80000000))
    crash = image.crash_cpu
    task = running[crash]
    caller = task.pid if task.pid else 0x80000000 | crash
    t = uptime_ns - 5_000_000_000
    kind = image.kind
    tail: list[tuple[int, str]] = []
    tainted = f"CPU: {crash} PID: {task.pid} Comm: {task.comm} Not tainted {cfg.osrelease} #1"
    bo = "BE" if cfg.endian == "big" else "LE"
    platform = f"{bo} PAGE_SIZE={cfg.page_size >> 10}K MMU=Hash SMP NR_CPUS=1024 NUMA pSeries"
    frames = task.frames

    def call_trace(fr: list[Frame]) -> list[tuple[int, str]]:
        lines = [(4, "Call Trace:")]
        lines += [(4, f"[{f.sp:016x}] [{f.pc:016x}] {_fn_offset(vm, f.pc)}") for f in fr[1:]]
        return lines

    if kind == "sysrq":
        tail.append((6, "sysrq: Trigger a crash"))
        tail.append((0, "Kernel panic - not syncing: sysrq triggered crash"))
    elif kind == "oops":
        site = next(f for f in frames if f.function == "hvdemo_read_stats")
        link = frames[frames.index(site) + 1].pc
        tail += [
            (1, f"BUG: Kernel NULL pointer dereference on read at 0x{image.scenario.dar:08x}"),
            (1, f"Faulting instruction address: 0x{site.pc:016x}"),
            (0, "Oops: Kernel access of bad area, sig: 11 [#1]"),
            (0, platform),
            (4, "Modules linked in: hvdemo(O) ibmveth sg ext4 jbd2 mbcache sd_mod ibmvscsi"),
            (4, tainted),
            (4, f"NIP:  {site.pc:016x} LR: {link:016x} CTR: 0000000000000000"),
            (4, f"REGS: {site.sp - 0x200:016x} TRAP: 0300   Not tainted  ({cfg.osrelease})"),
            (4, f"DAR: {image.scenario.dar:016x} DSISR: {image.scenario.dsisr:08x}"),
            (4, f"NIP [{site.pc:016x}] {_fn_offset(vm, site.pc)}"),
            (4, f"LR [{link:016x}] {_fn_offset(vm, link)}"),
            *call_trace(frames[frames.index(site) :]),
            (4, f"---[ end trace {d('trace-id'):016x} ]---"),
            (0, "Kernel panic - not syncing: Fatal exception"),
        ]
    elif kind == "hung-task":
        blocked = next(x for x in tasks if x.state == 2)
        tail += [
            (3, f"INFO: task {blocked.comm}:{blocked.pid} blocked for more than 120 seconds."),
            (3, f"      Not tainted {cfg.osrelease} #1"),
            (3, '"echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.'),
            (
                6,
                f"task:{blocked.comm:<15} state:D stack:0     pid:{blocked.pid:<5} ppid:{blocked.ppid:<6} flags:0x00000800",
            ),
            (4, "Call Trace:"),
            *[(4, f"[{f.sp:016x}] [{f.pc:016x}] {_fn_offset(vm, f.pc)}") for f in blocked.frames],
            (0, "Kernel panic - not syncing: hung_task: blocked tasks"),
        ]
    else:
        site = frames[5]
        tail += [
            (0, "Severe Machine check interrupt [Not recovered]"),
            (0, f"  NIP [{site.pc:016x}]: {_fn_offset(vm, site.pc)}"),
            (0, "  Initiator: CPU"),
            (0, "  Error type: UE [Load/Store]"),
            (0, f"    Effective address: {KERNELBASE + (d('mce-ea') % cfg.memory & ~0xFFF):016x}"),
            (0, "Oops: Machine check, sig: 7 [#1]"),
            (0, platform),
            (4, tainted),
            *call_trace(frames[5:]),
            (0, "Kernel panic - not syncing: Fatal exception"),
        ]
    step = 5_000_000_000 // (len(tail) + 1)
    for i, (level, line) in enumerate(tail):
        out.append((t + step * (i + 1), level, line, caller))
    return out


def _write_printk(mem: _Mem, vm: Vmlinux, log: list[tuple[int, int, str, int]]) -> None:
    """Records in the lockless ring buffer (kernel/printk/printk_ringbuffer.c's layout)."""
    rb = vm.symbol("printk_rb_static")
    count_bits = mem_int = 0
    del mem_int
    R = "printk_ringbuffer"
    count_bits = int.from_bytes(vm.read(rb + vm.offsetof(R, "desc_ring.count_bits"), 4), mem.order)
    size_bits = int.from_bytes(
        vm.read(rb + vm.offsetof(R, "text_data_ring.size_bits"), 4), mem.order
    )
    descs = vm.symbol("_printk_rb_static_descs")
    infos = vm.symbol("_printk_rb_static_infos")
    data = vm.symbol("__log_buf")
    count = 1 << count_bits
    size = 1 << size_bits
    flags_shift = 62
    id_mask = _U64 ^ (3 << flags_shift)
    finalized = vm.enum("desc_finalized")
    newline = vm.enum("LOG_NEWLINE")
    # Keep the newest records that fit both rings, without wrapping the text.
    blocks = [(8 + len(text.encode()) + 7) & ~7 for _, _, text, _ in log]
    first = len(log)
    used = 0
    while first > 0 and first > len(log) - count + 1 and used + blocks[first - 1] <= size:
        first -= 1
        used += blocks[first]
    desc0 = (-(count + 1)) & id_mask
    lpos = (-size) & _U64
    did = desc0
    info_size = vm.sizeof("printk_info")
    desc_size = vm.sizeof("prb_desc")
    for seq in range(first, len(log)):
        ts, level, text, caller = log[seq]
        raw = text.encode()
        did = (did + 1) & id_mask
        idx = did & (count - 1)
        begin = lpos
        nxt = (lpos + blocks[seq]) & _U64
        off = begin & (size - 1)
        mem.put_int(data + off, 8, did)
        mem.write(data + off + 8, raw)
        d = descs + idx * desc_size
        mem.put(d, "prb_desc", "state_var.counter", did | (finalized << flags_shift))
        mem.put(d, "prb_desc", "text_blk_lpos.begin", begin)
        mem.put(d, "prb_desc", "text_blk_lpos.next", nxt)
        i = infos + idx * info_size
        mem.put(i, "printk_info", "seq", seq)
        mem.put(i, "printk_info", "ts_nsec", ts)
        mem.put(i, "printk_info", "text_len", len(raw))
        mem.put(i, "printk_info", "caller_id", caller)
        # flags:5 and level:3 share a byte after facility; bit order follows the byte order.
        fl_off = vm.offsetof("printk_info", "facility") + 1
        byte = (newline | level << 5) if mem.order == "little" else (newline << 3 | level)
        mem.put_int(i + fl_off, 1, byte)
        lpos = nxt
    mem.put(rb, R, "desc_ring.head_id.counter", did)
    mem.put(rb, R, "desc_ring.tail_id.counter", (desc0 + 1) & id_mask)
    mem.put(rb, R, "desc_ring.last_finalized_seq.counter", len(log) - 1)
    mem.put(rb, R, "text_data_ring.head_lpos.counter", lpos)
    mem.put(rb, R, "text_data_ring.tail_lpos.counter", (-size) & _U64)
