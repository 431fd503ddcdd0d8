"""ELFv1 function symbols for drgn: code addresses of big-endian ppc64 kernels.

drgn 0.3's ELF symbol table takes a function's ``st_value`` as its code, but
on ELFv1 (big-endian ppc64 kernels) a C function's symbol is its function
descriptor in ``.opd``: ``prog.symbol(pc)`` finds nothing for a code address
and ``frame.symbol()`` fails. :func:`install_elfv1_symbols` registers a
symbol finder, ahead of drgn's ``elf`` finder, that answers from the kernel's
descriptors (:mod:`drgn_hvdump.elfv1`):

- by address: the function whose code contains it;
- by name: the function with ``address`` at its **code entry**, as on ELFv2
  (``prog.symbol("panic").address == prog["panic"].address_``), because
  that is what symbolizing, disassembling and breakpoint-style uses want.
  drgn's own descriptor symbol is still listed by ``prog.symbols("panic")``
  and found by a lookup of a descriptor address;
- neither: every function.

It returns nothing for what it does not know (data symbols, assembly entry
points with plain ``.text`` symbols, kernel modules), so drgn's ``elf`` finder
answers those as before. It reads nothing until the first lookup, then reads
the kernel's vmlinux once; for an ELFv2 (little-endian) kernel it reads the
64-byte ELF header, and every later lookup costs one Python call returning
an empty list.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import drgn

if TYPE_CHECKING:
    from drgn_hvdump.elfv1 import ElfV1Function, ElfV1SymbolTable

__all__ = ["FINDER_NAME", "install_elfv1_symbols"]

FINDER_NAME = "hvdump-elfv1"
"""Name of the symbol finder (see :meth:`drgn.Program.enabled_symbol_finders`)."""

_CACHE_KEY = "hvdump.elfv1_symbols"
_BINDINGS: dict[str, Any] = {
    "local": drgn.SymbolBinding.LOCAL,
    "global": drgn.SymbolBinding.GLOBAL,
    "weak": drgn.SymbolBinding.WEAK,
    "unique": drgn.SymbolBinding.UNIQUE,
}


class _ElfV1SymbolFinder:
    """The finder: loads the kernel's table at its first call, then answers from it."""

    __slots__ = ("_all", "_bias", "_done", "_symbols", "_table")

    def __init__(self) -> None:
        self._done = False
        self._table: ElfV1SymbolTable | None = None
        self._bias = 0
        self._symbols: dict[ElfV1Function, Any] = {}
        self._all: list[Any] | None = None

    def _load(self, prog: drgn.Program) -> ElfV1SymbolTable | None:
        if self._done:
            return self._table
        try:
            module = prog.main_module()
        except LookupError:
            return None  # no kernel module yet: ask again at the next lookup
        candidates = [
            (path, bias or 0)
            for path, bias in (
                (module.debug_file_path, module.debug_file_bias),
                (module.loaded_file_path, module.loaded_file_bias),
            )
            if path
        ]
        if not candidates:
            return None  # vmlinux not loaded yet: ask again at the next lookup
        self._done = True
        # pyelftools costs tens of milliseconds to import: only once a lookup needs it.
        from elftools.common.exceptions import ELFError

        from drgn_hvdump.elfv1 import is_elfv1, read_elfv1_symbols

        for path, bias in candidates:
            try:
                if not is_elfv1(path):
                    break  # the same kernel in both files: ELFv2, nothing to add
                table = read_elfv1_symbols(path)
            except (OSError, ValueError, struct.error, ELFError):
                continue  # unreadable or malformed: leave lookups to drgn
            # A separate debug file's .opd is SHT_NOBITS (an empty table):
            # then the loaded file, if drgn has one, holds the descriptors.
            if len(table):
                self._table = table
                self._bias = bias
                break
        return self._table

    def _symbol(self, fn: ElfV1Function) -> Any:
        sym = self._symbols.get(fn)
        if sym is None:
            sym = self._symbols[fn] = drgn.Symbol(
                fn.name,
                fn.address + self._bias,
                fn.size,
                _BINDINGS[fn.binding],
                drgn.SymbolKind.FUNC,
            )
        return sym

    def _symbols_of(self, functions: Iterable[ElfV1Function]) -> list[Any]:
        return [self._symbol(fn) for fn in functions]

    def __call__(
        self, prog: drgn.Program, name: str | None, address: int | None, one: bool
    ) -> Sequence[Any]:
        table = self._load(prog)
        if table is None:
            return []
        if address is not None:
            file_address = address - self._bias
            if one:
                best = table.lookup(file_address, name)
                return [] if best is None else [self._symbol(best)]
            return self._symbols_of(table.containing(file_address, name))
        if name is not None:
            if one:
                found = table.find(name)
                return [] if found is None else [self._symbol(found)]
            return self._symbols_of(table.named(name))
        if self._all is None:
            self._all = self._symbols_of(table)
        return self._all[:1] if one else list(self._all)


def install_elfv1_symbols(prog: drgn.Program) -> None:
    """
    Add ELFv1 function symbols to a ppc64 kernel program (idempotent).

    Registers the ``hvdump-elfv1`` symbol finder ahead of drgn's own. It finds
    the vmlinux at its first lookup (the main module's debug file, else its
    loaded file; until drgn has one, it answers nothing and tries again) and
    answers only for an ELFv1 file. Programs of other architectures are left
    alone.
    """
    if _CACHE_KEY in prog.cache or FINDER_NAME in prog.registered_symbol_finders():
        return
    platform = prog.platform
    if platform is None or platform.arch != drgn.Architecture.PPC64:
        return
    finder = _ElfV1SymbolFinder()
    prog.register_symbol_finder(FINDER_NAME, finder, enable_index=0)
    prog.cache[_CACHE_KEY] = finder
