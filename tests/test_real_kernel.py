"""The whole pipeline on a real kernel's memory (``make test-real``; marker ``real``).

Debian 12's 6.1 (64 KiB pages) and Debian 13's 6.12 (4 KiB pages) ppc64el
kernels boot under ``qemu-system-ppc64`` (TCG, pseries, 2 CPUs), each once
with the hash MMU (POWER8, like POWER6) and once with radix (POWER9), start
named processes, panic through sysrq on CPU 1 and are dumped over QMP (see
:mod:`tests.real_kernel`). hvsim adopts each image; then the same life cycle
as for a simulated kernel: boot, crash, a FUSE capture root, ``hvdump
collect`` with progressive release, ``hvdump verify``, ``hvsim verify``.

The proof is drgn's analysis through our pipeline (the live capture root and
the collected dump, with the plugin; also ``hvdump convert``'s kdump of the
QEMU image itself) against drgn's analysis of the original
image read directly (:func:`tests.real_analysis.open_original`): release,
tasks, printk records with the panic, the panicking CPU's backtrace, every
CPU's and each named process's. For 6.12, whose kdump files drgn cannot read,
hvdump writes ELF and says why; for 6.1 ``hvdump convert --format elf`` is
compared too. On the hash guest, where stock drgn cannot read vmalloc
memory at all, the module list and a module's constant table are checked
against the guest's own ``/proc/modules`` and the ``.ko`` file.

The suite skips only when Debian's archive cannot be reached (it says so);
anything else that goes wrong fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile

from tests.collect_support import FUSE_MISSING, manifest
from tests.real_analysis import Analysis
from tests.real_kernel import (
    CPU_MODELS,
    KERNELS,
    MODULES,
    PANIC_CPU,
    PROCESSES,
    RODATA_MODULE,
    Parts,
    RegistryUnreachable,
    build_initramfs,
    fetch_parts,
)
from tests.real_pipeline import Run, run_pipeline

pytestmark = [
    pytest.mark.real,
    pytest.mark.slow,
    pytest.mark.fuse,
    pytest.mark.skipif(bool(FUSE_MISSING), reason=FUSE_MISSING),
]


RUNS = [(kernel, mmu) for kernel in KERNELS for mmu in CPU_MODELS]
_PARTS: dict[str, Parts | str] = {}


def _parts(kernel: str) -> Parts:
    """The kernel's parts, fetched once per session (the reason, when unreachable)."""
    if kernel not in _PARTS:
        try:
            _PARTS[kernel] = fetch_parts(kernel=kernel)
        except RegistryUnreachable as exc:
            _PARTS[kernel] = f"real-kernel suite skipped: {exc}"
    got = _PARTS[kernel]
    if isinstance(got, str):
        pytest.skip(got)
    return got


@pytest.fixture(scope="module", params=RUNS, ids=[f"{k}-{m}" for k, m in RUNS])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Run:
    kernel, mmu = request.param
    parts = _parts(kernel)
    d = tmp_path_factory.mktemp(f"real-{kernel}-{mmu}")
    initrd = build_initramfs(parts, d / "initrd.cpio")
    return run_pipeline(parts, initrd, d, mmu)


@pytest.fixture
def parts(run: Run) -> Parts:
    return _parts(run.kernel)


def test_adoption_reads_the_guest(run: Run) -> None:
    image, info, cfg = run.image, run.guest.info, run.lpar.config
    assert image.elf_byteorder == "big"  # QEMU 7.2's header, for a little-endian guest
    assert image.byteorder == "little" and cfg.endian == "little"
    assert image.vmcoreinfo_where == f"{info.vmcoreinfo_addr:#x}"
    assert image.osrelease == info.release == cfg.osrelease
    assert cfg.cpus == len(image.registers) == 2
    assert cfg.page_size == KERNELS[run.kernel].page_size
    assert info.panic_cpu == PANIC_CPU  # the crash is not on CPU 0
    assert len(image.segments) == 1 and image.segments[0].paddr == 0
    dump = run.lpar.last_dump()
    assert dump is not None
    assert dump.sections["cpu"][0] >= image.ram_end  # the save area is above the image


def test_hypervisor_saved_and_collector_verified(run: Run) -> None:
    assert "OK: saved sections" in run.verify_sections
    assert run.verify_dump.rstrip().splitlines()[-1].startswith("OK:"), run.verify_dump
    assert " 0 wrong, 0 missing" in run.verify_dump
    assert "OK" in run.hvdump_verify, run.hvdump_verify
    # kdump where drgn reads it; else ELF, and one line that says why.
    why = "writing an ELF dump, not kdump: drgn's kdump reader (libkdumpfile) cannot read"
    four_k = KERNELS[run.kernel].page_size == 4096
    assert manifest(run.out)["dump"]["format"] == ("elf" if four_k else "kdump")
    assert run.collect.stderr.count(why) == run.convert_stderr.count(why) == int(four_k)
    m = manifest(run.out)
    writes = [r for r in m["release"]["writes"] if r.get("done")]
    assert len(writes) > 1  # progressive: memory went back range by range
    assert run.lpar.protected and not run.lpar.dump_waiting


def _as_prstatus(got: list[str], direct: list[str]) -> bool:
    """Whether ``got`` (drgn unwinding a PRSTATUS note) is ``direct`` (the same registers
    as a ``pt_regs``) as drgn reads a note: it never takes LR from a Linux kernel's
    PRSTATUS on ppc64 (only from a pt_regs), so a CPU stopped in a function that has
    not saved LR yet (``__delay``) loses the caller only LR named."""
    return got == direct or got == direct[:1] + direct[2:]


VIEWS = ["live", "collected", "collected_elf", "converted", "converted_elf"]


def _view(run: Run, view: str) -> Analysis:
    """A view's analysis; the ``_elf`` views of a 4 KiB kernel are its default ones (ELF)."""
    got: Analysis | None = getattr(run, view)
    if got is None:
        assert view.endswith("_elf") and KERNELS[run.kernel].page_size == 4096
        got = getattr(run, view.removesuffix("_elf"))
        assert got is not None
    return got


@pytest.mark.parametrize("view", VIEWS)
def test_drgn_through_the_pipeline_equals_the_original(run: Run, view: str) -> None:
    got = _view(run, view)
    want = run.direct
    assert got.release == want.release
    assert got.tasks == want.tasks
    assert {name for name, _ in got.tasks} >= set(PROCESSES)
    assert got.printk == want.printk
    assert any("Kernel panic - not syncing: sysrq triggered crash" in r for r in got.printk)
    assert got.panic_cpu == want.panic_cpu == run.guest.info.panic_cpu
    assert got.process_traces == want.process_traces
    # Stock drgn found the panicking CPU's registers itself, in every view (the live
    # root's PRSTATUS notes come from the save area as the dump's do), and read them
    # with its rule for a note of this release.
    assert got.panic_trace_from == "crashed_thread"
    assert _as_prstatus(got.panic_trace, run.direct_prstatus.panic_trace)
    # Wherever the CPU was stopped (panic()'s delay loop, or an interrupt in
    # it), its stack holds the way there.
    assert "sysrq_handle_crash+" in " ".join(got.panic_trace), got.panic_trace
    for name in PROCESSES:
        assert got.process_traces[name][-1].startswith("system_call"), got.process_traces[name]
    # Every CPU's backtrace (stack_trace of the task on it), from the notes as above.
    assert sorted(got.cpu_traces) == sorted(want.cpu_traces) == ["0", "1"]
    for cpu, trace in got.cpu_traces.items():
        assert got.cpu_traces_from[cpu] == "core"
        assert _as_prstatus(trace, run.direct_prstatus.cpu_traces[cpu]), (cpu, trace)
        assert trace, cpu


@pytest.mark.parametrize("view", ["live_regs", "collected_regs"])
def test_registers_survive_the_save_area(run: Run, view: str) -> None:
    states = getattr(run, view)
    assert len(states) == len(run.image.registers)
    for state, qemu in zip(states, run.image.registers, strict=True):
        regs = state.regs
        assert regs["NIA"] == qemu.nip and regs["LR"] == qemu.link and regs["MSR"] == qemu.msr
        assert [regs[f"GPR{n:02d}"] for n in range(32)] == list(qemu.gpr)


def test_modules_and_vmalloc(run: Run, parts: Parts) -> None:
    info = run.guest.info
    names = sorted(name for name, _ in info.modules)
    assert names == sorted(MODULES)
    with open(parts.modules[RODATA_MODULE], "rb") as f:
        section = ELFFile(f).get_section_by_name(".rodata")
        want = section.data()[:256]
    for view in (_view(run, name) for name in VIEWS):
        assert view.modules == names
        assert view.rodata == want
    if run.guest.mmu == "hash":
        # What the plugin adds: stock drgn reads no vmalloc address of a hash kernel.
        assert "only supported for Radix MMU" in run.stock_vmalloc_error
    else:
        assert run.direct.modules == names and run.direct.rodata == want


def test_hvdump_commands_on_the_live_root(run: Run) -> None:
    out = run.live_commands
    assert "kind:        live /proc/vmcore of a capture kernel" in out
    page_kib = KERNELS[run.kernel].page_size >> 10
    assert f"little-endian, {page_kib} KiB pages" in out and "2 CPUs saved" in out
    assert "saved-low" in out and "scratch" in out
    # A module address, through the kernel's own page tables.
    assert f"{run.guest.info.rodata:#x} -> " in out and "from page tables" in out
    # drgn's own crash-style bt of the panicking task, from the live root's notes.
    bt = out[out.index("PID:") :]
    assert f"CPU: {run.guest.info.panic_cpu}" in bt and "sysrq_handle_crash" in bt, bt


def _same_analysis(run: Run, parts: Parts, dump_file: Path) -> None:
    """drgn's analysis of ``dump_file`` is the pipeline's collected dump's: release,
    tasks, printk, every backtrace, modules and vmalloc."""
    from tests.real_analysis import analyse
    from tests.real_pipeline import _open

    info = run.guest.info
    got = analyse(_open(dump_file, parts.debug_vmlinux), info.pids, rodata=info.rodata)
    want = run.collected
    assert got.release == want.release and got.tasks == want.tasks
    assert got.printk == want.printk and got.panic_cpu == want.panic_cpu
    assert got.panic_trace == want.panic_trace, got.panic_trace
    assert got.process_traces == want.process_traces
    assert got.cpu_traces == want.cpu_traces
    assert got.modules == want.modules and got.rodata == want.rodata


def test_the_same_kernel_as_a_fadump_lpar(run: Run, parts: Parts, tmp_path: Path) -> None:
    """The real kernel's memory as a fadump LPAR, collected through its capture root
    (notes with pr_pid 0, numbered by the collector), gives the same analysis as the
    phyp pipeline: release, tasks, printk, every backtrace, modules and vmalloc.

    (The live fadump vmcore of an adopted image is not compared: QEMU's image has no
    CRASHTIME, which a real fadump kernel writes in crash_fadump(), so drgn looks for
    the file's numbered notes there, not for crash_notes, which the plugin supplies.)"""
    from hvsim import Lpar
    from tests.collect_support import hvdump, mounted

    info = run.guest.info
    lpar = Lpar.adopt(
        tmp_path / "fadump", run.guest.core, crash_cpu=info.panic_cpu,
        mmu=run.lpar.config.image_mmu, boot=True, dump="fadump",
    )  # fmt: skip
    assert lpar.protected and lpar.crash() == "capture"
    out = tmp_path / "dump"
    with mounted(lpar, tmp_path / "root") as root:
        res = hvdump("collect", "--root", str(root), "--output", str(out), "--no-progress")
        assert res.returncode == 0, res.stderr
    assert lpar.protected and not lpar.dump_waiting
    dump_file = out / manifest(out)["dump"]["file"]
    _same_analysis(run, parts, dump_file)


def _as_makedumpfile_reads_radix_4k(vmcore: Path, pfns: Any, level: int) -> Any:
    """The pages makedumpfile keeps on a 4 KiB-page radix kernel: its page-table walk
    reads only the first page of the 64 KiB top-level table (``readmem(PAGEBASE(pgd),
    PAGESIZE())``, then the entry at ``PAGEOFFSET``), so the vmemmap resolves through
    entry 0, the linear map, and the "struct page" of PFN p is the 64 bytes at
    physical p * 64: the kernel's own code and data."""
    from drgn_hvdump import native
    from drgn_hvdump.formats.elfcore import ElfCore
    from drgn_hvdump.intervals import IntervalSet
    from drgn_hvdump.model.page_types import struct_page_from_vmcoreinfo

    kept = IntervalSet()
    with ElfCore.open(vmcore) as core:
        sp = struct_page_from_vmcoreinfo(core.vmcoreinfo or {}, core.byteorder)
        assert sp is not None
        for a, b in pfns:
            for first in range(a, b, 1 << 14):
                n = min(1 << 14, b - first)
                raw = core.read_phys(first * sp.size, n * sp.size)
                gone = IntervalSet(
                    (x, y) for x, y, _ in native.decide_pages(sp, raw, first, n, level)
                )
                for x, y in IntervalSet([(first, first + n)]).without(gone):
                    kept.add(x, y)
    return kept


def test_dump_level_31_is_makedumpfiles_and_keeps_the_analysis(
    run: Run, parts: Parts, tmp_path: Path
) -> None:
    """``-d 15`` and ``-d 31`` on the real kernel's memory, as a fadump LPAR (its
    /proc/vmcore holds the crashed kernel's memory at its own addresses), against
    Debian 13's makedumpfile 1.7.6 on the same vmcore; then drgn's analysis of the
    ``-d 31`` dump is the full dump's: release, tasks, printk, every backtrace,
    modules and vmalloc.

    The pages left out are makedumpfile's, where makedumpfile reads the kernel
    right (docs/dump-levels.md says why it does not): 6.1, both MMUs, both
    levels; 6.12 hash at -d 15, and at -d 31 but for exactly the free pages (1.7.6
    reads 6.12's page_type values as flag bits; fixed upstream after 1.7.6);
    6.12 radix (4 KiB pages): makedumpfile reads its struct pages from the wrong
    addresses, and keeps exactly what that misreading says
    (:func:`_as_makedumpfile_reads_radix_4k`)."""
    from drgn_hvdump.formats.elfcore import ElfCore
    from drgn_hvdump.intervals import IntervalSet
    from drgn_hvdump.model.mem_sections import MemoryModel
    from hvsim import Lpar
    from tests.collect_support import hvdump, kdump_pages, mounted
    from tests.makedumpfile_ppc64 import run_makedumpfile

    info = run.guest.info
    lpar = Lpar.adopt(
        tmp_path / "fadump", run.guest.core, crash_cpu=info.panic_cpu,
        mmu=run.lpar.config.image_mmu, boot=True, dump="fadump",
    )  # fmt: skip
    assert lpar.crash() == "capture"
    ps = lpar.config.page_size
    radix_4k = ps == 4096 and run.lpar.config.image_mmu == "radix"
    kept: dict[int, IntervalSet] = {}
    counts: dict[int, dict[str, int]] = {}
    with mounted(lpar, tmp_path / "root") as root:
        vmcore = root / "proc" / "vmcore"
        with ElfCore.open(vmcore) as core:
            ram = IntervalSet(
                (-(-ph.p_paddr // ps), (ph.p_paddr + ph.p_filesz) // ps) for ph in core.segments
            )
        for level in (15, 16, 31):
            out = tmp_path / f"d{level}"
            args = ["collect", "--root", str(root), "-o", str(out), "-d", str(level)]
            res = hvdump(*args, "--release", "never", "--no-progress")
            assert res.returncode == 0, res.stderr
            m = manifest(out)
            assert m["dump"]["dump_level"] == level, res.stderr
            kept[level] = IntervalSet((a // ps, (a + n) // ps) for a, n in m["dump"]["segments"])
            counts[level] = m["dump"]["excluded"]
            if level == 16 or (radix_4k and level == 31):
                continue
            ref = tmp_path / f"mdf{level}.kdump"
            mdf = run_makedumpfile(["-d", str(level), "-l", str(vmcore), str(ref)])
            assert mdf.returncode == 0, mdf.stdout[-1500:] + mdf.stderr[-1500:]
            present, _ = kdump_pages(ref)
            theirs = IntervalSet(x for a, b in ram for x in present.intersect(a, b))
            if radix_4k:
                # Up to the last section with struct pages (makedumpfile's max_mapnr).
                with ElfCore.open(vmcore) as core:
                    model = MemoryModel(core.vmcoreinfo or {}, core.byteorder, core.read_phys, ps)
                    end = model.end_pfn()
                scope = IntervalSet(
                    x for a, b in ram for x in IntervalSet([(0, end)]).intersect(a, b)
                )
                wrong = _as_makedumpfile_reads_radix_4k(vmcore, scope, level)
                assert IntervalSet(x for a, b in scope for x in theirs.intersect(a, b)) == wrong
                assert kept[level].without(theirs).total() > 0  # what the misreading excluded
                continue
            only_ours, only_theirs = kept[level].without(theirs), theirs.without(kept[level])
            assert only_ours.total() == 0, f"-d {level}: kept by hvdump only: {list(only_ours)[:8]}"
            if level == 15 or run.kernel == "6.1":
                assert only_theirs.total() == 0, f"-d {level}: {list(only_theirs)[:8]}"
            else:
                # Exactly the free pages: what -d 16 alone leaves out, of what 1.7.6 keeps.
                free = IntervalSet(
                    x for a, b in ram.without(kept[16]) for x in theirs.intersect(a, b)
                )
                assert only_theirs == free, (list(only_theirs)[:8], list(free)[:8])
        assert counts[31]["free"] > 0 and counts[31]["user"] + counts[31]["cache"] > 0
    dump_file = tmp_path / "d31" / manifest(tmp_path / "d31")["dump"]["file"]
    _same_analysis(run, parts, dump_file)
