"""ELFv1 function symbols: the pure table (:mod:`drgn_hvdump.elfv1`) and the drgn finder.

Ground truth is hvsim's reading of its own images: DWARF gives each C
function's code range (``Vmlinux.functions``), and ``hvsim.kernel.SYMBOLS``
the code addresses. The drgn tests open a real crashed kernel's ground-truth
core with real drgn, as ``tests/test_drgn_crashed_kernel.py`` does.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import drgn
import pytest
from drgn import Program
from elftools.elf.elffile import ELFFile

from drgn_hvdump.elfv1 import (
    Binding,
    ElfV1Function,
    ElfV1SymbolTable,
    OpdSymbol,
    is_elfv1,
    read_elfv1_symbols,
    resolve_functions,
)
from drgn_hvdump.plugin.symbols import FINDER_NAME, install_elfv1_symbols
from hvsim.kernel import SYMBOLS, KernelImage, kernel_symbol, vmlinux_path
from hvsim.kernel_image import Vmlinux, load_vmlinux
from tests.drgn_support import crash_to_truth_core

SCENARIO = {"big": "sysrq", "little": "oops"}


def _elf_functions(path: str) -> dict[str, tuple[str, int, str]]:
    """Every named STT_FUNC symbol: (section, st_value, binding), read the slow way."""
    out = {}
    with open(path, "rb") as f:
        elf = ELFFile(f)
        for sym in elf.get_section_by_name(".symtab").iter_symbols():  # type: ignore[union-attr]
            if sym.name and sym["st_info"]["type"] == "STT_FUNC":
                section = elf.get_section(sym["st_shndx"]).name
                binding = sym["st_info"]["bind"].removeprefix("STB_").lower()
                out[sym.name] = (section, sym["st_value"], binding)
    return out


def _c_functions(endian: str) -> dict[str, tuple[str, int, str]]:
    """The functions whose ELF symbol is a descriptor (C code), per the ELF file."""
    return {n: v for n, v in _elf_functions(vmlinux_path(endian)).items() if v[0] == ".opd"}


def _assembly_functions(endian: str) -> list[str]:
    return [n for n, v in _elf_functions(vmlinux_path(endian)).items() if v[0] == ".text"]


# ------------------------------------------------------------------ pure tests


def test_is_elfv1_tells_the_committed_images_apart() -> None:
    assert is_elfv1(vmlinux_path("big"))
    assert not is_elfv1(vmlinux_path("little"))


def _patched(
    tmp_path: Path, endian: str, flags: int | None = None, machine: int | None = None
) -> Path:
    data = bytearray(Path(vmlinux_path(endian)).read_bytes())
    order = ">" if endian == "big" else "<"
    if flags is not None:
        struct.pack_into(order + "I", data, 48, flags)
    if machine is not None:
        struct.pack_into(order + "H", data, 18, machine)
    out = tmp_path / f"{endian}-{flags}-{machine}"
    out.write_bytes(data)
    return out


def test_is_elfv1_follows_the_abi_version_rules(tmp_path: Path) -> None:
    # e_flags & 3: 1 is ELFv1, 2 ELFv2; 0 (not recorded, old toolchains) is
    # ELFv1 only with an .opd section.
    assert is_elfv1(_patched(tmp_path, "big", flags=0))
    assert not is_elfv1(_patched(tmp_path, "big", flags=2))
    assert not is_elfv1(_patched(tmp_path, "big", flags=3))
    assert not is_elfv1(_patched(tmp_path, "little", flags=0))  # no .opd
    assert is_elfv1(_patched(tmp_path, "little", flags=1))
    assert not is_elfv1(_patched(tmp_path, "big", machine=62))  # EM_X86_64
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x7fELF\x01\x02" + bytes(100))  # ELFCLASS32
    assert not is_elfv1(junk)
    junk.write_bytes(b"not an ELF file")
    assert not is_elfv1(junk)
    junk.write_bytes(b"")
    assert not is_elfv1(junk)


def test_every_big_endian_function_resolves_to_its_code() -> None:
    vm: Vmlinux = load_vmlinux("big")
    table = read_elfv1_symbols(vmlinux_path("big"))
    truth = _c_functions("big")
    assert len(truth) > 50
    assert sorted(fn.name for fn in table) == sorted(truth)
    assert [fn.address for fn in table] == sorted(fn.address for fn in table)
    for fn in table:
        _, descriptor, binding = truth[fn.name]
        assert fn.descriptor == descriptor
        assert fn.binding == binding
        # The code range is DWARF's; the entry is the one hvsim lays out.
        assert (fn.address, fn.end) == vm.functions[fn.name], fn.name
        assert fn.address == vm.symbol(fn.name) == kernel_symbol(fn.name)
        assert fn.address - (1 << 63) - (1 << 62) == SYMBOLS[fn.name]
        assert int.from_bytes(vm.read(fn.descriptor, 8), "big") == fn.address
        for address in (fn.address, fn.address + fn.size // 2, fn.end - 1):
            assert table.lookup(address) == fn
            assert table.containing(address) == [fn]
        # Functions start on 512-byte boundaries: just past the end is padding.
        assert table.lookup(fn.end) is None
        assert table.lookup(fn.address - 1) is None
        assert table.find(fn.name) == fn
        assert table.named(fn.name) == [fn]
    assert {fn.binding for fn in table} == {"global", "local"}  # static prb_reserve_and_store


def test_big_endian_table_leaves_data_and_assembly_alone() -> None:
    vm = load_vmlinux("big")
    table = read_elfv1_symbols(vmlinux_path("big"))
    asm = _assembly_functions("big")
    assert "system_call_common" in asm
    for name in asm:
        assert table.lookup(vm.symbol(name)) is None
        assert table.find(name) is None
    for name in ("init_task", "linux_banner", "panic_cpu"):
        assert table.lookup(vm.symbol(name)) is None
        assert table.find(name) is None
    panic = table.find("panic")
    assert panic is not None
    assert table.lookup(panic.descriptor) is None  # a descriptor is not code
    assert table.lookup(0) is None and table.lookup(2**64 - 1) is None


def test_little_endian_image_has_no_descriptors() -> None:
    assert len(read_elfv1_symbols(vmlinux_path("little"))) == 0


def test_table_builds_well_under_100_ms() -> None:
    best = min(_timed(read_elfv1_symbols, vmlinux_path("big")) for _ in range(5))
    assert best < 0.02, f"{best * 1e3:.1f} ms"


def _timed(fn: Callable[[str], object], arg: str) -> float:
    start = time.perf_counter()
    fn(arg)
    return time.perf_counter() - start


def _opd(*entries: int, order: str = ">") -> bytes:
    return b"".join(struct.pack(order + "QQQ", e, 0x8000, 0) for e in entries)


def _sym(name: str, index: int, size: int, binding: Binding = "global") -> OpdSymbol:
    return OpdSymbol(name, 0x1000 + 24 * index, size, binding)


def test_resolve_functions_sizes_each_function_by_its_code() -> None:
    opd = _opd(0x100, 0x180, 0x200, 0x300, 0x340, 0x400, 0x5000)
    functions = resolve_functions(
        [
            _sym("dotted", 0, 24),  # descriptor-sized: the dot-symbol's size wins
            _sym("sized", 1, 0x30),  # GCC without dot-symbols: st_size is the code's
            _sym("unsized", 2, 0),  # no .size: up to the next entry point
            _sym("too_big", 3, 0x100),  # runs into the next function: up to it
            _sym("last", 4, 0),  # last of its section: up to the section's end
            _sym("second_section", 5, 0),
            _sym("nowhere", 6, 8),  # entry point in no code section: skipped
            OpdSymbol("outside", 0x1000 + 24 * 7, 24, "global"),  # past .opd: skipped
        ],
        {0x100: 0x44, 0x999: 4},  # code symbols' sizes by address: .dotted's, and one elsewhere
        0x1000,
        opd,
        [(0x400, 0x500), (0x100, 0x380)],
        "big",
    )
    got = {fn.name: (fn.address, fn.size, fn.descriptor) for fn in functions}
    assert got == {
        "dotted": (0x100, 0x44, 0x1000),
        "sized": (0x180, 0x30, 0x1018),
        "unsized": (0x200, 0x100, 0x1030),
        "too_big": (0x300, 0x40, 0x1048),
        "last": (0x340, 0x40, 0x1060),
        "second_section": (0x400, 0x100, 0x1078),
    }
    assert [fn.address for fn in functions] == sorted(fn.address for fn in functions)
    # A descriptor that is not doubleword-aligned is still read.
    unaligned = resolve_functions(
        [OpdSymbol("odd", 0x1004, 8, "local")],
        {},
        0x1000,
        bytes(4) + struct.pack(">QQQ", 0x120, 0, 0),
        [(0x100, 0x200)],
        "big",
    )
    assert unaligned == [ElfV1Function("odd", 0x120, 8, "local", 0x1004)]


def test_resolve_functions_reads_the_files_byte_order_and_keeps_aliases() -> None:
    opd = _opd(0x100, 0x100, order="<")
    functions = resolve_functions(
        [_sym("sys_read", 0, 0x20), _sym("SyS_read", 1, 0x20, "weak")],
        {},
        0x1000,
        opd,
        [(0x100, 0x200)],
        "little",
    )
    assert [(fn.name, fn.address, fn.size) for fn in functions] == [
        ("SyS_read", 0x100, 0x20),
        ("sys_read", 0x100, 0x20),
    ]
    table = ElfV1SymbolTable(functions)
    best = table.lookup(0x110)
    assert best is not None and best.name == "sys_read"  # global over weak
    assert sorted(fn.name for fn in table.containing(0x110)) == ["SyS_read", "sys_read"]
    only = table.lookup(0x110, "SyS_read")
    assert only is not None and only.binding == "weak"


def test_table_finds_overlapping_and_same_named_functions() -> None:
    outer = ElfV1Function("outer", 0x1000, 0x100, "global", 0x9000)
    inner = ElfV1Function("inner", 0x1010, 0x10, "local", 0x9018)
    after = ElfV1Function("after", 0x1020, 0x10, "local", 0x9030)
    twin = ElfV1Function("after", 0x2000, 0x10, "local", 0x9048)
    strong = ElfV1Function("after", 0x3000, 0x10, "global", 0x9060)
    table = ElfV1SymbolTable([strong, twin, after, inner, outer])
    assert [fn.address for fn in table] == [0x1000, 0x1010, 0x1020, 0x2000, 0x3000]
    assert table.lookup(0x1018) == inner  # the closest start
    assert table.containing(0x1018) == [inner, outer]
    # Past two short functions, still inside the long one.
    assert table.lookup(0x1080) == outer
    assert table.lookup(0x1100) is None
    assert table.find("after") == strong  # global first
    assert table.named("after") == [after, twin, strong]
    assert table.find("nothing") is None and table.named("nothing") == []
    assert len(ElfV1SymbolTable([])) == 0 and ElfV1SymbolTable([]).lookup(0) is None


# ------------------------------------------------------------------ real drgn


@dataclass
class Crashed:
    endian: str
    core: Path
    image: KernelImage
    prog: Program


def _open(core: Path, endian: str) -> Program:
    prog = Program()
    prog.set_core_dump(str(core))
    install_elfv1_symbols(prog)
    prog.load_debug_info([vmlinux_path(endian)])
    return prog


@pytest.fixture(scope="module", params=["big", "little"])
def crashed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Crashed]:
    endian = request.param
    d = tmp_path_factory.mktemp(f"elfv1-{endian}")
    t = crash_to_truth_core(d, endian, SCENARIO[endian], cpus=2)
    core, image = t.core, t.image
    yield Crashed(endian, core, image, _open(core, endian))


def test_finder_comes_first_and_installs_once(crashed: Crashed) -> None:
    prog = crashed.prog
    assert prog.enabled_symbol_finders()[0] == FINDER_NAME
    install_elfv1_symbols(prog)
    assert prog.enabled_symbol_finders().count(FINDER_NAME) == 1
    assert "elf" in prog.enabled_symbol_finders()


def test_every_function_by_code_address_and_by_name(crashed: Crashed) -> None:
    prog = crashed.prog
    vm = crashed.image.vmlinux
    for name, (_, _, binding) in _c_functions("big").items():
        low, high = vm.functions[name]
        for address in (low, low + (high - low) // 2, high - 1):
            sym = prog.symbol(address)
            assert (sym.name, sym.address, sym.size) == (name, low, high - low), hex(address)
            assert sym.kind == drgn.SymbolKind.FUNC
        by_name = prog.symbol(name)
        assert by_name.address == low == prog[name].address_
        assert by_name.binding == getattr(drgn.SymbolBinding, binding.upper())
        assert any(s.address == low for s in prog.symbols(name))
        assert [s.name for s in prog.symbols(low + 4)] == [name]


def test_frame_symbols_of_the_crashed_thread(crashed: Crashed) -> None:
    trace = crashed.prog.crashed_thread().stack_trace()
    assert [frame.name for frame in trace] == crashed.image.backtrace()
    for frame in trace:
        sym = frame.symbol()
        assert sym.name == frame.name
        pc = frame.pc if frame.interrupted else frame.pc - 1  # what frame.symbol() looks up
        assert sym.address <= pc < sym.address + sym.size


def test_panic_symbol_is_the_code_entry(crashed: Crashed) -> None:
    prog = crashed.prog
    panic = crashed.image.vmlinux.symbol("panic")
    assert prog.symbol("panic").address == panic == prog["panic"].address_
    assert prog.symbol(panic + 8).name == "panic"
    assert prog.crashed_thread().stack_trace()[0].symbol().name == "panic"
    addresses = sorted(s.address for s in prog.symbols("panic"))
    if crashed.endian == "big":
        # drgn's own symbol, the descriptor, is still listed after ours.
        descriptor = _c_functions("big")["panic"][1]
        assert addresses == [panic, descriptor]
        assert prog.symbol(descriptor).name == "panic"
    else:
        assert addresses == [panic]


def test_symbols_lists_every_function_at_its_code(crashed: Crashed) -> None:
    prog = crashed.prog
    vm = crashed.image.vmlinux
    listed = {(s.name, s.address, s.size) for s in prog.symbols() if s.kind == drgn.SymbolKind.FUNC}
    for name in _c_functions("big"):
        low, high = vm.functions[name]
        assert (name, low, high - low) in listed
    names = {s.name for s in prog.symbols()}
    assert {"init_task", "linux_banner", "system_call_common"} <= names


def test_data_and_assembly_symbols_are_drgns_own(crashed: Crashed) -> None:
    prog = crashed.prog
    vm = crashed.image.vmlinux
    asked = [vm.symbol(n) + 4 for n in _assembly_functions(crashed.endian)]
    asked += [vm.symbol("init_task") + 8, vm.symbol("linux_banner")]
    ours = [prog.symbol(a) for a in asked] + [prog.symbol("init_task")]
    enabled = prog.enabled_symbol_finders()
    prog.set_enabled_symbol_finders(["elf"])
    try:
        stock = [prog.symbol(a) for a in asked] + [prog.symbol("init_task")]
    finally:
        prog.set_enabled_symbol_finders(enabled)
    assert ours == stock
    assert "system_call_common" in [s.name for s in ours]


def test_finder_answers_only_for_elfv1(crashed: Crashed) -> None:
    prog = crashed.prog
    enabled = prog.enabled_symbol_finders()
    prog.set_enabled_symbol_finders([FINDER_NAME])
    try:
        ours = prog.symbols()
        panic = crashed.image.vmlinux.symbol("panic")
        ours_at_panic = prog.symbols(panic + 8)
    finally:
        prog.set_enabled_symbol_finders(enabled)
    if crashed.endian == "big":
        assert sorted(s.name for s in ours) == sorted(_c_functions("big"))
        assert [s.name for s in ours_at_panic] == ["panic"]
    else:
        assert ours == [] and ours_at_panic == []  # ELFv2: drgn's answers, unchanged


def test_finder_waits_for_the_vmlinux(crashed: Crashed) -> None:
    prog = Program()
    prog.set_core_dump(str(crashed.core))
    install_elfv1_symbols(prog)
    prog.set_enabled_symbol_finders([FINDER_NAME])
    assert prog.symbols() == []  # no kernel module yet: nothing read, asked again later
    prog.load_debug_info([vmlinux_path(crashed.endian)])
    panic = crashed.image.vmlinux.symbol("panic")
    if crashed.endian == "big":
        assert prog.symbol(panic + 8).address == panic
    else:
        assert prog.symbols(panic + 8) == []


def test_other_architectures_are_left_alone() -> None:
    prog = Program(drgn.Platform(drgn.Architecture.X86_64))
    install_elfv1_symbols(prog)
    assert FINDER_NAME not in prog.registered_symbol_finders()
    assert FINDER_NAME not in prog.enabled_symbol_finders()
