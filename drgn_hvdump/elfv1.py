"""
ELFv1 Function Symbols
----------------------

The ``drgn_hvdump.elfv1`` module reads the function symbols of a 64-bit
PowerPC ELFv1 file (a big-endian Linux kernel) as code addresses.

In the ELFv1 ABI, a function's ELF symbol (``panic``) does not point at its
code: it points at its *function descriptor* in the ``.opd`` section, three
doublewords ``{entry point, TOC base, environment}``. Tools that map a code
address to a function name (drgn 0.3's ELF symbol table among them) must
follow the descriptor. :func:`read_elfv1_symbols` does that and returns an
:class:`ElfV1SymbolTable` with lookups by address (the function containing
it) and by name. It reads only the ELF header, the section headers,
``.symtab``, ``.strtab`` and ``.opd``, so it stays cheap on a 40 MB vmlinux
with full debug info. The module is pure: no drgn.
"""

from __future__ import annotations

import bisect
import os
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import compress
from operator import attrgetter
from typing import BinaryIO, Literal, NamedTuple

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import Section

__all__ = (
    "DESCRIPTOR_SIZE",
    "Binding",
    "ElfV1Function",
    "ElfV1SymbolTable",
    "OpdSymbol",
    "is_elfv1",
    "read_elfv1_symbols",
    "resolve_functions",
)

Binding = Literal["local", "global", "weak", "unique"]
"""A symbol's ELF binding (``STB_LOCAL``, ``STB_GLOBAL``, ``STB_WEAK``, ``STB_GNU_UNIQUE``)."""

DESCRIPTOR_SIZE = 24
"""Bytes of an ELFv1 function descriptor: entry point, TOC base, environment pointer."""

_EM_PPC64 = 21
_EF_PPC64_ABI = 3  # e_flags bits holding the ABI version (1: ELFv1, 2: ELFv2)
_STT_FUNC = 2
_SHF_ALLOC = 0x2
_SHF_EXECINSTR = 0x4
_BINDINGS: Mapping[int, Binding] = {0: "local", 1: "global", 2: "weak", 10: "unique"}
# Elf64_Sym: st_name, st_info, st_other, st_shndx, st_value, st_size.
_SYM = "IBBHQQ"
_SYM_SIZE = struct.calcsize("<" + _SYM)
_ST_INFO = 4  # offset of st_info in Elf64_Sym
# 1 for each st_info value of type STT_FUNC: picks the function symbols out of
# .symtab at C speed (most of a vmlinux's symbols are data, labels, sections).
_IS_FUNC = bytes(int(info & 0xF == _STT_FUNC) for info in range(256))
_BY_ADDRESS = attrgetter("address", "name")
# The part of Elf64_Ehdr that says whether a file can be ELFv1: e_ident's class
# and data bytes, then (after e_type) e_machine, and e_flags.
_EHDR_SIZE = 64


class ElfV1Function(NamedTuple):
    """A function resolved through its descriptor: ``[address, address + size)`` is its code."""

    name: str
    address: int
    """Code entry point (the descriptor's first doubleword), as linked."""
    size: int
    binding: Binding
    descriptor: int
    """Address of the function descriptor in ``.opd`` (the ELF symbol's ``st_value``)."""

    @property
    def end(self) -> int:
        return self.address + self.size


class OpdSymbol(NamedTuple):
    """An ``STT_FUNC`` symbol defined in ``.opd``, as read from ``.symtab``."""

    name: str
    value: int
    size: int
    binding: Binding


def is_elfv1(path: str | os.PathLike[str]) -> bool:
    """
    Return whether *path* is a 64-bit PowerPC ELF file of the ELFv1 ABI.

    The rule is Linux's (``module_elf_check_arch()`` in
    ``arch/powerpc/kernel/module_64.c``): ``e_flags & 3`` below 2 is ELFv1.
    Version 1 is explicit. Version 0 means "not recorded", which is what
    toolchains from before ELFv2 existed wrote, so old big-endian kernels
    have it; there we also require an ``.opd`` section, since a file without
    descriptors has nothing to follow (and is not what an ELFv1 linker
    makes). Version 3 is undefined.
    Byte order is not part of the rule: the descriptors are read in the
    file's byte order (Linux only builds ELFv1 kernels big-endian).

    Only the ELF header is read, plus the section headers for version 0.
    Files that are not ELF, or not ELFCLASS64 ``EM_PPC64``, give ``False``.
    """
    with open(path, "rb") as f:
        header = f.read(_EHDR_SIZE)
        if len(header) < _EHDR_SIZE or header[:4] != b"\x7fELF" or header[4] != 2:
            return False
        order = {1: "<", 2: ">"}.get(header[5])
        if order is None:
            return False
        (machine,) = struct.unpack_from(order + "H", header, 18)
        (flags,) = struct.unpack_from(order + "I", header, 48)
        if machine != _EM_PPC64:
            return False
        abi = flags & _EF_PPC64_ABI
        if abi != 0:
            return bool(abi == 1)
        return _has_opd(f)


def _has_opd(f: BinaryIO) -> bool:
    f.seek(0)
    try:
        return ELFFile(f).get_section_by_name(".opd") is not None
    except ELFError:
        return False


def resolve_functions(
    symbols: Iterable[OpdSymbol],
    code_sizes: Mapping[int, int],
    opd_addr: int,
    opd: bytes,
    code_sections: Sequence[tuple[int, int]],
    byteorder: Literal["big", "little"],
) -> list[ElfV1Function]:
    """
    Resolve descriptor symbols to functions, sorted by address then name.

    :param symbols: ``STT_FUNC`` symbols defined in ``.opd``.
    :param code_sizes: ``st_size`` of the code symbols (``STT_FUNC`` outside
        ``.opd``: the dot-symbols), by address.
    :param opd_addr: ``.opd``'s address; *opd* is its contents.
    :param code_sections: ``[start, end)`` of each executable section.
    :param byteorder: The file's byte order, which the entry points are in.

    A symbol whose descriptor lies outside *opd*, or whose entry point lies
    in no code section, is skipped: there is no code to attribute to it.

    The size of the code is the first of:

    1. the size of the code symbol at the entry point. GCC with
       ``-mcall-aixdesc`` (how Linux builds ELFv1 kernels) and Linux's
       ``_GLOBAL()`` assembly emit a dot-symbol ``.panic`` on the code next
       to the descriptor ``panic``; then the descriptor's own ``st_size`` is
       24, the descriptor's, and only the dot-symbol's is the code's. It is
       matched by address, not name, so aliases share it;
    2. the descriptor's ``st_size`` if it is non-zero and fits before the next
       entry point (or the section's end). Without dot-symbols (GCC's
       default, as in hvsim's image; clang; glibc's assembly) the toolchain
       sizes the descriptor symbol by its code (``.size panic, .-.L.panic``),
       so ``st_size`` *is* the code size, and padding is not counted;
    3. otherwise (no ``.size`` at all, or a size that runs into the next
       function) the distance to the next entry point in the same section,
       capped at the section's end: the most the function can span.
    """
    code = sorted(code_sections)
    code_starts = [lo for lo, _ in code]
    # Descriptors are doubleword-aligned: decode all of .opd in one call.
    words = struct.unpack(
        f"{'>' if byteorder == 'big' else '<'}{len(opd) // 8}Q", opd[: len(opd) & ~7]
    )
    placed: list[tuple[int, int, OpdSymbol]] = []  # (entry, end of its section, symbol)
    for sym in symbols:
        off = sym.value - opd_addr
        if off < 0 or off + 8 > len(opd):
            continue
        if off & 7:
            (entry,) = struct.unpack_from(">Q" if byteorder == "big" else "<Q", opd, off)
        else:
            entry = words[off >> 3]
        i = bisect.bisect_right(code_starts, entry) - 1
        if i < 0 or entry >= code[i][1]:
            continue
        placed.append((entry, code[i][1], sym))
    placed.sort(key=lambda p: p[0])
    out: list[ElfV1Function] = []
    following = 0  # the next distinct entry point after the current one (0: none)
    for k in range(len(placed) - 1, -1, -1):
        entry, section_end, sym = placed[k]
        if k + 1 < len(placed) and placed[k + 1][0] != entry:
            following = placed[k + 1][0]
        limit = following if entry < following < section_end else section_end
        room = limit - entry
        size = code_sizes.get(entry)
        if not size:
            size = sym.size if 0 < sym.size <= room else room
        out.append(ElfV1Function(sym.name, entry, size, sym.binding, sym.value))
    out.sort(key=_BY_ADDRESS)
    return out


def _scan_symtab(
    symtab: bytes, strtab: bytes, order: str, opd_index: int
) -> tuple[list[OpdSymbol], dict[int, int]]:
    """The ``.opd`` function symbols, and the sizes of the other function symbols by address."""
    descriptors: list[OpdSymbol] = []
    code_sizes: dict[int, int] = {}
    unpack = struct.Struct(order + _SYM).unpack_from
    functions = symtab[_ST_INFO::_SYM_SIZE].translate(_IS_FUNC)
    for i in compress(range(len(functions)), functions):
        st_name, st_info, _, st_shndx, st_value, st_size = unpack(symtab, i * _SYM_SIZE)
        if st_shndx == opd_index:
            binding = _BINDINGS.get(st_info >> 4)
            if binding is not None and st_name:
                descriptors.append(OpdSymbol(_cstr(strtab, st_name), st_value, st_size, binding))
        elif st_size > code_sizes.get(st_value, 0):
            code_sizes[st_value] = st_size
    return descriptors, code_sizes


def _cstr(strtab: bytes, offset: int) -> str:
    return strtab[offset : strtab.index(b"\0", offset)].decode(errors="replace")


def read_elfv1_symbols(path: str | os.PathLike[str]) -> ElfV1SymbolTable:
    """
    Read the function symbols of an ELFv1 file as an :class:`ElfV1SymbolTable`.

    The table is empty if the file has no ``.opd`` with contents (an ELFv2
    file, or a separate debug file whose ``.opd`` is ``SHT_NOBITS``) or no
    ``.symtab``. Call :func:`is_elfv1` first to tell an ELFv2 file apart.
    """
    with open(path, "rb") as f:
        elf = ELFFile(f)
        order = "<" if elf.little_endian else ">"
        byteorder: Literal["big", "little"] = "little" if elf.little_endian else "big"
        opd: Section | None = None
        opd_index = 0
        symtab: Section | None = None
        code: list[tuple[int, int]] = []
        for index, section in enumerate(elf.iter_sections()):
            if section.name == ".opd" and section["sh_type"] == "SHT_PROGBITS":
                opd, opd_index = section, index
            elif section["sh_type"] == "SHT_SYMTAB":
                symtab = section
            flags = section["sh_flags"]
            if flags & _SHF_ALLOC and flags & _SHF_EXECINSTR and section["sh_size"]:
                code.append((section["sh_addr"], section["sh_addr"] + section["sh_size"]))
        if opd is None or symtab is None or symtab["sh_entsize"] != _SYM_SIZE:
            return ElfV1SymbolTable(())
        # Section indexes of SHN_LORESERVE and above (SHN_XINDEX) never name
        # .opd: a vmlinux has far fewer than 0xff00 sections.
        strtab = elf.get_section(symtab["sh_link"]).data()
        descriptors, code_sizes = _scan_symtab(symtab.data(), strtab, order, opd_index)
        functions = resolve_functions(
            descriptors, code_sizes, opd["sh_addr"], opd.data(), code, byteorder
        )
    return ElfV1SymbolTable(functions)


_BINDING_RANK: Mapping[Binding, int] = {"global": 0, "unique": 0, "weak": 1, "local": 2}


def _closest(functions: Iterable[ElfV1Function]) -> ElfV1Function | None:
    # Among functions containing an address, the one starting closest to it
    # (only aliases share code in practice); then drgn's rule for ties:
    # global (or unique) over weak over anything else.
    return min(
        functions,
        key=lambda fn: (-fn.address, _BINDING_RANK[fn.binding], fn.name),
        default=None,
    )


def _preferred(functions: Iterable[ElfV1Function]) -> ElfV1Function | None:
    # drgn's rule for a name: global (or unique) over weak over anything else.
    return min(
        functions,
        key=lambda fn: (_BINDING_RANK[fn.binding], fn.address),
        default=None,
    )


class ElfV1SymbolTable:
    """Functions sorted by code address, with lookups by address and by name."""

    __slots__ = ("_by_name", "_functions", "_max_end", "_starts")

    def __init__(self, functions: Iterable[ElfV1Function]) -> None:
        self._functions = sorted(functions, key=_BY_ADDRESS)
        self._starts = [fn.address for fn in self._functions]
        # _max_end[i]: the furthest end of functions[0..i]. Scanning back from
        # an address stops where no earlier function can reach it, so a lookup
        # is a bisection plus the few functions that really contain it.
        self._max_end: list[int] = []
        self._by_name: dict[str, list[ElfV1Function]] = {}
        reach = 0
        for fn in self._functions:
            reach = max(reach, fn.address + fn.size)
            self._max_end.append(reach)
            self._by_name.setdefault(fn.name, []).append(fn)

    def __len__(self) -> int:
        return len(self._functions)

    @property
    def functions(self) -> Sequence[ElfV1Function]:
        """Every function, sorted by address, then name."""
        return tuple(self._functions)

    def __iter__(self) -> Iterator[ElfV1Function]:
        return iter(self._functions)

    def containing(self, address: int, name: str | None = None) -> list[ElfV1Function]:
        """All functions (called *name*, if given) whose code contains *address*, closest first."""
        out = []
        i = bisect.bisect_right(self._starts, address) - 1
        while i >= 0 and self._max_end[i] > address:
            fn = self._functions[i]
            if address < fn.end and (name is None or fn.name == name):
                out.append(fn)
            i -= 1
        return out

    def lookup(self, address: int, name: str | None = None) -> ElfV1Function | None:
        """
        The function containing *address*, or ``None``.

        Of several (aliases), the one starting closest to *address*, then
        global over weak over local, as drgn picks among ELF symbols.
        """
        return _closest(self.containing(address, name))

    def named(self, name: str) -> list[ElfV1Function]:
        """All functions called *name* (a local name may be defined more than once)."""
        return list(self._by_name.get(name, ()))

    def find(self, name: str) -> ElfV1Function | None:
        """The function called *name*, global over weak over local, or ``None``."""
        return _preferred(self._by_name.get(name, ()))
