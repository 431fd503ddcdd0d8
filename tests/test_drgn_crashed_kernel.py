"""Stock drgn on hvsim's crashed kernel: no mocks, both byte orders.

A crashed 1 GiB LPAR (64 KiB pages) is written as a ground-truth ELF core
(:mod:`hvsim.groundcore`) and opened with drgn plus the image's debug info.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import drgn
import pytest
from drgn import Object, Program
from drgn.helpers.linux.pid import find_task, for_each_task
from drgn.helpers.linux.printk import get_printk_records

from drgn_hvdump.formats.elfcore import PT_REGS_PPC64
from hvsim import Lpar
from hvsim.groundcore import write_truth_core
from hvsim.kernel import KernelImage, vmlinux_path
from tests.drgn_support import crash_to_truth_core, open_core


@dataclass
class Crashed:
    endian: str
    core: Path
    vmlinux: str
    image: KernelImage
    prog: Program


SCENARIO = {"big": "sysrq", "little": "oops"}


@pytest.fixture(scope="module", params=["big", "little"])
def crashed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Crashed]:
    endian = request.param
    t = crash_to_truth_core(tmp_path_factory.mktemp(f"drgn-{endian}"), endian, SCENARIO[endian])
    yield Crashed(endian, t.core, t.vmlinux, t.image, open_core(t.core, t.vmlinux))


def test_release_and_banner(crashed: Crashed) -> None:
    prog = crashed.prog
    assert prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL
    assert prog["UTS_RELEASE"].string_() == b"2.6.32-hvsim"
    assert prog["init_uts_ns"].name.release.string_() == b"2.6.32-hvsim"
    assert prog["init_uts_ns"].name.nodename.string_() == b"lpar"
    assert prog["linux_banner"].string_().startswith(b"Linux version 2.6.32-hvsim ")
    assert prog.main_module().build_id.hex() == crashed.image.vmlinux.build_id


def test_every_task_with_its_comm_and_pid(crashed: Crashed) -> None:
    prog = crashed.prog
    want = sorted((t.comm, t.pid) for t in crashed.image.tasks() if t.pid)
    got = sorted((t.comm.string_().decode(), t.pid.value_()) for t in for_each_task(prog))
    assert got == want
    assert prog["init_task"].comm.string_() == b"swapper/0"
    threads = sorted(th.tid for th in prog.threads())
    assert threads == sorted(p for _, p in want)  # the task list, without init_task (its head)
    init = find_task(prog, 1)
    assert init.comm.string_() == b"init"


def test_printk_records_end_with_the_panic(crashed: Crashed) -> None:
    records = get_printk_records(crashed.prog)
    texts = [r.text.decode() for r in records]
    assert texts == crashed.image.log_lines()
    assert texts[-1].startswith("Kernel panic - not syncing: ")
    assert texts[-1] == crashed.image.panic_message()
    assert records[-1].level == 0
    assert [r.seq for r in records] == list(range(len(records)))
    assert all(a.timestamp <= b.timestamp for a, b in itertools.pairwise(records))


def test_crashed_thread_unwinds_to_the_system_call(crashed: Crashed) -> None:
    prog = crashed.prog
    image = crashed.image
    thread = prog.crashed_thread()
    assert thread.tid == image.crashed_task().pid
    names = [frame.name for frame in thread.stack_trace()]
    assert names == image.backtrace()
    assert names[0] == "panic" and names[-1] == "system_call_common"
    if SCENARIO[crashed.endian] == "sysrq":
        assert names[1:3] == ["sysrq_handle_crash", "__handle_sysrq"]
    else:
        assert "hvdemo_read_stats" in names
    assert prog["panic_cpu"].counter.value_() == image.crash_cpu


def test_register_save_area_unwinds_like_crash_notes(crashed: Crashed) -> None:
    # What the drgn plugin will do with the hypervisor's registers.
    prog = crashed.prog
    image = crashed.image
    for cpu in range(image.config.cpus):
        raw = PT_REGS_PPC64.pack(image.pt_regs(cpu), image.config.endian)  # type: ignore[arg-type]
        regs = Object.from_bytes_(prog, "struct pt_regs", raw)
        names = [f.name for f in prog.stack_trace(regs)]
        assert names == image.backtrace(cpu)
        if cpu != image.crash_cpu:
            assert names[0] == "cede_processor"


def test_sleeping_tasks_unwind_from_their_switch_frame(crashed: Crashed) -> None:
    prog = crashed.prog
    for task in crashed.image.tasks():
        if (
            task.pid
            and not task.running
            and task.comm in ("init", "kthreadd", "khungtaskd", "bash")
        ):
            names = [f.name for f in prog.stack_trace(find_task(prog, task.pid))]
            assert names == task.chain, task.comm


def test_symbol_lookup_by_pc_is_the_elfv1_limit(crashed: Crashed) -> None:
    import json

    from drgn_hvdump.plugin.symbols import install_elfv1_symbols

    panic = crashed.image.vmlinux.symbol("panic")
    entry = crashed.image.vmlinux.symbol("system_call_common")
    # Stock drgn, in a process of its own: once hvdump's plugin is installed,
    # drgn loads it in set_core_dump and this process would see its finder.
    script = (
        "import json, sys, drgn\n"
        "core, vmlinux, panic, entry = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])\n"
        "prog = drgn.Program()\n"
        "prog.set_core_dump(core)\n"
        "prog.load_debug_info([vmlinux])\n"
        "def attempt(lookup):\n"
        "    try:\n"
        "        return lookup().name\n"
        "    except LookupError as e:\n"
        "        return 'LookupError: ' + str(e)\n"
        "print(json.dumps({\n"
        "    'finders': prog.enabled_symbol_finders(),\n"
        "    'by_pc': attempt(lambda: prog.symbol(panic + 8)),\n"
        "    'frame': attempt(lambda: prog.crashed_thread().stack_trace()[0].symbol()),\n"
        "    'by_name': prog.symbol('panic').address,\n"
        "    'asm': attempt(lambda: prog.symbol(entry + 4)),\n"
        "}))\n"
    )
    stock = json.loads(
        subprocess.run(
            [
                sys.executable,
                "-c",
                script,
                str(crashed.core),
                crashed.vmlinux,
                str(panic),
                str(entry),
            ],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ, DRGN_DISABLE_PLUGINS="hvdump"),
            timeout=120,
        ).stdout
    )
    assert stock["finders"] == ["elf"]
    if crashed.endian == "little":
        assert stock["by_pc"] == stock["frame"] == "panic"
        assert stock["by_name"] == panic
    else:
        # drgn 0.3 does not read ELFv1 function descriptors: the ELF symbol of a C
        # function is its .opd entry, so looking up a code address fails.
        missing = f"LookupError: could not find symbol containing {panic + 8:#x}"
        assert stock["by_pc"] == missing
        assert stock["frame"].startswith("LookupError: could not find symbol containing")
        assert stock["by_name"] != panic  # the descriptor, not the code
    # Assembly entry points have plain symbols in .text: fine in both byte orders.
    assert stock["asm"] == "system_call_common"

    # With hvdump's ELFv1 symbols, both byte orders answer as ELFv2 does.
    prog = Program()
    prog.set_core_dump(str(crashed.core))
    install_elfv1_symbols(prog)
    prog.load_debug_info([crashed.vmlinux])
    assert prog.symbol(panic + 8).name == "panic"
    assert prog.crashed_thread().stack_trace()[0].symbol().name == "panic"
    assert prog.symbol("panic").address == panic
    assert prog.symbol(entry + 4).name == "system_call_common"


@pytest.mark.skipif(
    shutil.which("drgn") is None and not Path(sys.executable).with_name("drgn").exists(),
    reason="no drgn CLI",
)
def test_drgn_cli_prints_release_panic_and_backtrace(crashed: Crashed) -> None:
    exe = shutil.which("drgn") or str(Path(sys.executable).with_name("drgn"))
    script = (
        "from drgn.helpers.linux.printk import get_printk_records\n"
        "print(prog['init_uts_ns'].name.release.string_().decode())\n"
        "print(get_printk_records()[-1].text.decode())\n"
        "print(' '.join(f.name for f in prog.crashed_thread().stack_trace()))\n"
    )
    out = subprocess.run(
        [
            exe,
            "-q",
            "-c",
            str(crashed.core),
            "-s",
            crashed.vmlinux,
            "--no-default-symbols",
            "-e",
            script,
        ],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, DRGN_DISABLE_PLUGINS="*"),
        timeout=120,
    ).stdout.splitlines()
    assert out[0] == "2.6.32-hvsim"
    assert out[1] == crashed.image.panic_message()
    assert out[2].split() == crashed.image.backtrace()


@pytest.mark.parametrize("scenario", ["hung-task", "machine-check"])
def test_other_scenarios_unwind(tmp_path: Path, scenario: str) -> None:
    lpar = Lpar.create(tmp_path / "l", memory="1G", cpus=2, endian="big", seed=5, boot=True)
    lpar.crash(scenario)
    image = lpar.crashed_kernel()
    assert image is not None
    core = tmp_path / "core"
    write_truth_core(lpar, core)
    prog = Program()
    prog.set_core_dump(str(core))
    prog.load_debug_info([vmlinux_path("big")])
    names = [f.name for f in prog.crashed_thread().stack_trace()]
    assert names == image.backtrace() and names[0] == "panic"
    last = get_printk_records(prog)[-1].text.decode()
    assert last == image.panic_message()
    if scenario == "hung-task":
        assert names[1] == "check_hung_task" and last.endswith("hung_task: blocked tasks")
        blocked = next(t for t in image.tasks() if t.state == 2)
        trace = [f.name for f in prog.stack_trace(find_task(prog, blocked.pid))]
        assert "io_schedule" in trace
