"""drgn's crash-compatible ``bt`` on hvsim's crashed kernel: no mocks, both byte orders.

``crash bt`` classifies each stack segment by the CPU's interrupt stacks
(``hardirq_ctx``/``softirq_ctx``, 2.6.32 ppc64) and ``paca``; a crashed 1 GiB
LPAR's ground-truth core is opened with the image's debug info.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from drgn import Program
from drgn.commands import run_command
from drgn.helpers.linux.pid import find_task
from drgn.helpers.linux.stack import StackKind, kernel_stack_trace

from hvsim.kernel import KernelImage, TaskInfo
from tests.drgn_support import crash_to_truth_core, open_core

SCENARIO = {"big": "sysrq", "little": "oops"}
THREAD_SIZE = 0x4000
HEADER = re.compile(r'PID: (\d+)\s+TASK: ([0-9a-f]+)\s+CPU: (\d+)\s+COMMAND: "(.*)"')
FRAME = re.compile(r"\s*#(\d+) \[([0-9a-f]+)\] (\S+) at ([0-9a-f]+)")


@dataclass
class Crashed:
    endian: str
    core: Path
    image: KernelImage
    prog: Program


@dataclass
class Block:
    pid: int
    task: int
    cpu: int
    comm: str
    frames: list[tuple[int, int, str, int]]  # index, sp, function, pc


@pytest.fixture(scope="module", params=["big", "little"])
def crashed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Crashed]:
    endian = request.param
    t = crash_to_truth_core(tmp_path_factory.mktemp(f"crash-bt-{endian}"), endian, SCENARIO[endian])
    core, image, prog = t.core, t.image, open_core(t.core, t.vmlinux)
    yield Crashed(endian, core, image, prog)


def crash(prog: Program, command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run_command(prog, f"crash {command}")
    return out.getvalue()


def blocks(output: str) -> list[Block]:
    """Parse ``bt`` output: one block per task, every line a header or a frame."""
    result: list[Block] = []
    for line in output.splitlines():
        if not line.strip():
            continue
        if m := HEADER.fullmatch(line):
            result.append(Block(int(m[1]), int(m[2], 16), int(m[3]), m[4], []))
            continue
        m = FRAME.fullmatch(line)
        assert m, f"unexpected line in bt output: {line!r}"
        assert result, "frame before any task header"
        result[-1].frames.append((int(m[1]), int(m[2], 16), m[3], int(m[4], 16)))
    return result


def check_block(block: Block, task: TaskInfo, cpu: int) -> None:
    assert (block.pid, block.task, block.cpu, block.comm) == (
        task.pid,
        task.address,
        cpu,
        task.comm,
    )
    assert [i for i, _, _, _ in block.frames] == list(range(len(block.frames)))
    for _, sp, _, _ in block.frames:
        assert task.stack <= sp < task.stack + THREAD_SIZE, hex(sp)


def test_bt_shows_the_crashed_task(crashed: Crashed) -> None:
    image = crashed.image
    task = image.crashed_task()
    (block,) = blocks(crash(crashed.prog, "bt"))
    check_block(block, task, image.crash_cpu)
    assert [name for _, _, name, _ in block.frames] == image.backtrace()
    assert [(pc, sp) for _, sp, _, pc in block.frames] == [(f.pc, f.sp) for f in task.frames]
    assert block.frames[0][2] == "panic"
    assert block.frames[-1][2] == "system_call_common"


def test_bt_panic_and_cpu_select_the_crashed_task(crashed: Crashed) -> None:
    out = crash(crashed.prog, "bt")
    assert crash(crashed.prog, "bt -p") == out
    assert crash(crashed.prog, f"bt -c {crashed.image.crash_cpu}") == out


def test_bt_all_shows_each_cpus_active_task(crashed: Crashed) -> None:
    image = crashed.image
    got = blocks(crash(crashed.prog, "bt -a"))
    assert [b.cpu for b in got] == list(range(image.config.cpus))
    for cpu, block in enumerate(got):
        task = image.running_task(cpu)
        check_block(block, task, cpu)
        assert [name for _, _, name, _ in block.frames] == image.backtrace(cpu)
        if cpu != image.crash_cpu:
            assert block.comm == f"swapper/{cpu}"
            assert block.frames[0][2] == "cede_processor"


def test_bt_pid_of_sleeping_tasks_follows_their_chain(crashed: Crashed) -> None:
    image = crashed.image
    checked = 0
    for task in image.tasks():
        if (
            task.pid
            and not task.running
            and task.comm in ("init", "kthreadd", "khungtaskd", "bash")
        ):
            (block,) = blocks(crash(crashed.prog, f"bt {task.pid}"))
            check_block(block, task, task.cpu)
            names = [name for _, _, name, _ in block.frames]
            assert names == task.chain, task.comm
            assert names[0] == "__switch_to"
            checked += 1
    assert checked >= 3


def test_every_segment_is_on_the_task_stack(crashed: Crashed) -> None:
    prog = crashed.prog
    for task in crashed.image.tasks():
        if not task.pid:
            continue
        trace = kernel_stack_trace(find_task(prog, task.pid))
        assert [s.kind for s in trace.segments] == [StackKind.TASK], task.comm
        assert [f.name for f in trace] == (
            [f.function for f in task.frames] if task.running else task.chain
        )


def test_irq_stacks_are_per_cpu_and_apart_from_task_stacks(crashed: Crashed) -> None:
    prog = crashed.prog
    image = crashed.image
    assert prog["THREAD_SIZE"].value_() == THREAD_SIZE
    hard = [prog["hardirq_ctx"][c].value_() for c in range(image.config.cpus)]
    soft = [prog["softirq_ctx"][c].value_() for c in range(image.config.cpus)]
    assert prog["hardirq_ctx"][0].type_.type_name() == "struct thread_info *"
    ranges = sorted([(a, a + THREAD_SIZE) for a in hard + soft])
    ranges += [(t.stack, t.stack + THREAD_SIZE) for t in image.tasks()]
    ranges.sort()
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert end <= start
    for addr in hard + soft:
        assert addr % THREAD_SIZE == 0
        assert 0xC000000000000000 < addr < 0xC000000010000000  # below 256 MiB, as 2.6.32
    # irq_ctx_init(): HARDIRQ_OFFSET / SOFTIRQ_OFFSET in each stack's thread_info
    assert prog["hardirq_ctx"][1].preempt_count.value_() == 1 << 16
    assert prog["softirq_ctx"][1].preempt_count.value_() == 1 << 8
    assert prog["hardirq_ctx"][image.config.cpus].value_() == 0
    # paca[] is a typed array (drgn reads its emergency stack pointers by name).
    assert prog["paca"][0].paca_index.value_() == 0
    assert prog["paca"][2].paca_index.value_() == 2
