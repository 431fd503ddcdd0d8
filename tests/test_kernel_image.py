"""hvsim's kernel image: the committed vmlinux files, their structure, and a reproducible rebuild."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from hvsim.config import LparConfig
from hvsim.kernel import SCENARIOS, KernelImage
from hvsim.kernel_image import KERNELBASE, image_path, load_vmlinux
from hvsim.kernel_image.build import SOURCES, build_all, missing_toolchains

ENDIANS = ("big", "little")


@pytest.mark.parametrize("endian", ENDIANS)
def test_image_has_what_drgn_needs(endian: str) -> None:
    with open(image_path(endian), "rb") as f:
        elf = ELFFile(f)
        assert elf["e_machine"] == "EM_PPC64"
        assert elf.little_endian == (endian == "little")
        assert elf["e_flags"] & 3 == (1 if endian == "big" else 2)  # ELFv1 / ELFv2
        names = {s.name for s in elf.iter_sections()}
        # .init.text + linux_banner (drgn's vmlinux test), .debug_frame (its only kernel CFI)
        assert {".init.text", ".debug_frame", ".debug_info", ".notes", ".symtab"} <= names
        assert ".eh_frame" not in names
        text = elf.get_section_by_name(".text")
        assert text["sh_addr"] == KERNELBASE
        load = next(s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD")
        assert load["p_vaddr"] - load["p_paddr"] == KERNELBASE
    vm = load_vmlinux(endian)
    assert len(vm.build_id) == 40
    assert vm.read(vm.symbol("linux_banner"), 14) == b"Linux version "
    for name in (
        "init_task",
        "init_uts_ns",
        "prb",
        "panic_cpu",
        "__per_cpu_offset",
        "runqueues",
        "crash_notes",
        "vmcoreinfo_note",
        "swapper_pg_dir",
        "init_pid_ns",
        "pid_hash",
        "paca",
    ):
        assert vm.symbol(name) >= KERNELBASE, name
    # Field names drgn's helpers read.
    for struct, path in (
        ("task_struct", "comm"),
        ("task_struct", "tasks"),
        ("task_struct", "pids[0].node"),
        ("task_struct", "thread.ksp"),
        ("task_struct", "on_cpu"),
        ("task_struct", "signal"),
        ("rq", "curr"),
        ("printk_ringbuffer", "desc_ring.infos"),
        ("printk_info", "caller_id"),
        ("upid", "pid_chain"),
        ("uts_namespace", "name.release"),
    ):
        vm.field(struct, path)
    assert (
        vm.enum("PIDTYPE_PID") == 0 and vm.enum("desc_finalized") == 2 and vm.enum("LOG_CONT") == 8
    )
    assert vm.sizeof("pt_regs") >= 312
    assert vm.offsetof("uts_namespace", "name") == 4


def test_both_images_share_their_addresses() -> None:
    be, le = load_vmlinux("big"), load_vmlinux("little")
    differ = {n for n in be.symbols if n in le.symbols and be.symbols[n] != le.symbols[n]}
    assert differ <= {"__toc_start", "_edata", "_einittext"}
    assert be.functions.keys() == le.functions.keys()


@pytest.mark.parametrize("endian", ENDIANS)
def test_panic_paths_have_real_call_sites_and_cfi(endian: str) -> None:
    vm = load_vmlinux(endian)
    chain = [
        "panic",
        "sysrq_handle_crash",
        "__handle_sysrq",
        "write_sysrq_trigger",
        "proc_reg_write",
    ]
    for callee, caller in itertools.pairwise(chain):
        site = vm.call_site(caller, callee)
        row = vm.cfi_row(site - 4)
        assert row.lr_offset == 16 and row.cfa_offset > 0 and row.cfa_offset % 16 == 0
    assert not vm.has_cfi(vm.symbol("system_call_common"))  # an assembly entry point
    (fault,) = vm.fault_sites()
    assert vm.function_at(fault) == "hvdemo_read_stats"


@pytest.mark.slow
def test_rebuild_reproduces_the_committed_images(tmp_path: Path) -> None:
    missing = missing_toolchains()
    if missing:
        pytest.skip(
            f"cross compilers missing ({', '.join(missing)}): "
            "apt-get install gcc-powerpc64-linux-gnu gcc-powerpc64le-linux-gnu"
        )
    # Build from a copy of the sources in another directory: paths must not leak in.
    src = Path(image_path("big")).parent
    copy = tmp_path / "elsewhere" / "kernel_image"
    copy.mkdir(parents=True)
    for name in (*SOURCES, "kernel.h", "vmlinux.lds", "build.py", "__init__.py"):
        shutil.copy(src / name, copy / name)
    import importlib.util

    spec = importlib.util.spec_from_file_location("kbuild_copy", copy / "build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "out"
    built = module.build_all(out)
    for path in built:
        committed = src / path.name
        assert path.read_bytes() == committed.read_bytes(), (
            f"{path.name} differs from the committed image: run "
            "python -m hvsim.kernel_image.build and commit the result"
        )
    assert build_all  # the package's own entry point exists too


def _image(
    seed: int, scenario: str = "random", tasks: str = "", endian: str = "big"
) -> KernelImage:
    cfg = LparConfig(memory=1 << 30, cpus=4, endian=endian, seed=seed, tasks=tasks)  # type: ignore[arg-type]
    return KernelImage(cfg, 1, 1_700_000_000, SCENARIOS[scenario])


def test_a_fleet_shows_different_crashes() -> None:
    images = [_image(seed) for seed in range(12)]
    assert {i.kind for i in images} == {"sysrq", "oops", "hung-task"}
    assert len({(i.kind, i.crash_cpu, i.crashed_task().comm) for i in images}) >= 6
    for i in images:
        assert i.panic_message().startswith("Kernel panic - not syncing: ")
        assert i.backtrace()[0] == "panic"


def test_tasks_option_sets_the_user_processes() -> None:
    image = _image(3, "sysrq", tasks="postgres:4000,backup,sshd:22")
    users = {(t.comm, t.pid) for t in image.tasks() if t.user}
    assert {("postgres", 4000), ("sshd", 22)} <= users
    assert any(c == "backup" for c, _ in users)
    with pytest.raises(ValueError, match="pid must be"):
        LparConfig(memory=1 << 30, tasks="x:1")
    with pytest.raises(ValueError, match="1 to 15"):
        LparConfig(memory=1 << 30, tasks="a-name-much-too-long")


@pytest.mark.parametrize("endian", ENDIANS)
def test_registers_agree_with_stacks_and_crash_notes(endian: str) -> None:
    image = _image(5, "oops", endian=endian)
    for state in image.cpu_states():
        task = image.running_task(state.cpu)
        top = task.frames[0]
        assert state.regs["NIA"] == state.regs["LR"] == top.pc
        assert state.regs["GPR01"] == top.sp
        assert image.pt_regs(state.cpu).nip == top.pc
