"""What the plugin's hook does for a ppc64 kernel program (see :mod:`drgn_hvdump.plugin`)."""

from __future__ import annotations

import drgn

from drgn_hvdump.plugin.memory import install_memory
from drgn_hvdump.plugin.registers import install_registers
from drgn_hvdump.plugin.source import DumpSource, identify

__all__ = ["SOURCE_KEY", "attach", "dump_source"]

SOURCE_KEY = "hvdump.source"


def dump_source(prog: drgn.Program) -> DumpSource | None:
    """The hypervisor-assisted dump behind ``prog``, or None for any other program."""
    source = prog.cache.get(SOURCE_KEY)
    return source if isinstance(source, DumpSource) else None


def _hash_mmu(prog: drgn.Program, source: DumpSource | None) -> bool:
    # POWER6, the only machine with this dump interface, has no radix MMU.
    if source is not None:
        return True
    try:
        text = prog["VMCOREINFO"].string_().decode(errors="replace")
    except (LookupError, drgn.FaultError):
        return False
    return "NUMBER(RADIX_MMU)=0" in text.splitlines()


def attach(prog: drgn.Program) -> None:
    """Recognise the dump and install memory, registers, symbols and translation."""
    path = prog.core_dump_path
    source = identify(path) if path else None
    prog.cache[SOURCE_KEY] = source
    if source is not None:
        if source.kind in ("live", "raw"):
            install_memory(prog, source)
        install_registers(prog, source.cpu_states(), source.byteorder)
    try:
        from drgn_hvdump.plugin.symbols import install_elfv1_symbols
    except ImportError:
        pass
    else:
        install_elfv1_symbols(prog)
    if _hash_mmu(prog, source):
        try:
            from drgn_hvdump.plugin.translate import install_hash_translation
        except ImportError:
            pass
        else:
            install_hash_translation(prog, source.hpte_bytes if source else lambda: None)
