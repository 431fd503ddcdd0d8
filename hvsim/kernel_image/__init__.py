"""hvsim's ppc64 kernel images and what hvsim reads from them.

``vmlinux-be`` (ELFv1) and ``vmlinux-le`` (ELFv2) are built from the C sources
in this directory by :mod:`hvsim.kernel_image.build` and committed as package
data. :class:`Vmlinux` reads one with pyelftools: its loadable sections,
symbols, function ranges and struct layouts from DWARF, call frame information
from ``.debug_frame``, and the call sites (``bl`` instructions) that give each
simulated stack frame a real return address.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from elftools.dwarf.callframe import FDE, RegisterRule
from elftools.elf.elffile import ELFFile

__all__ = [
    "IMAGE_DIR",
    "KERNELBASE",
    "CfiRow",
    "Section",
    "Vmlinux",
    "image_path",
    "load_vmlinux",
]

IMAGE_DIR = Path(__file__).resolve().parent
KERNELBASE = 0xC000000000000000
_REG_R1 = 1
_REG_LR = 65


def image_path(endian: str) -> Path:
    """The committed image for ``"big"`` or ``"little"``."""
    return IMAGE_DIR / ("vmlinux-be" if endian == "big" else "vmlinux-le")


@dataclass(frozen=True)
class Section:
    """An allocated section: where it is linked and loaded, and its bytes (None: NOBITS)."""

    name: str
    addr: int
    size: int
    data: bytes | None

    @property
    def paddr(self) -> int:
        return self.addr - KERNELBASE


@dataclass(frozen=True)
class CfiRow:
    """The unwinding rule at one PC: ``CFA = r1 + cfa_offset``; LR at ``CFA + lr_offset``.

    ``lr_offset`` is None while the return address is still in LR (before the
    prologue saved it, or in a leaf); ``lr_undefined`` marks an outermost frame.
    """

    cfa_offset: int
    lr_offset: int | None
    lr_undefined: bool


@dataclass(frozen=True)
class _Member:
    offset: int
    type: Any  # the member's DIE


class Vmlinux:
    """One built kernel image, read with pyelftools."""

    def __init__(self, path: Path, endian: str) -> None:
        self.path = path
        self.endian = endian
        self._field_cache: dict[tuple[str, str], tuple[int, int]] = {}
        self.byteorder: Literal["big", "little"] = "big" if endian == "big" else "little"
        with open(path, "rb") as f:
            elf = ELFFile(f)
            self.sections = [
                Section(
                    s.name,
                    s["sh_addr"],
                    s["sh_size"],
                    None if s["sh_type"] == "SHT_NOBITS" else s.data(),
                )
                for s in elf.iter_sections()
                if s["sh_flags"] & 2 and s["sh_size"]  # SHF_ALLOC
            ]
            self.build_id = ""
            for s in elf.iter_sections():
                if s["sh_type"] == "SHT_NOTE":
                    for note in s.iter_notes():  # type: ignore[attr-defined]
                        if note["n_type"] == "NT_GNU_BUILD_ID":
                            self.build_id = note["n_desc"]
            self.symbols: dict[str, int] = {}
            self.symbol_sizes: dict[str, int] = {}
            asm_functions: dict[str, tuple[int, int]] = {}
            text = [(s.addr, s.addr + s.size) for s in self.sections if s.name.endswith(".text")]
            symtab = elf.get_section_by_name(".symtab")
            for sym in symtab.iter_symbols():  # type: ignore[union-attr]
                kind = sym["st_info"]["type"]
                if sym.name and kind in ("STT_OBJECT", "STT_NOTYPE", "STT_FUNC"):
                    self.symbols.setdefault(sym.name, sym["st_value"])
                    self.symbol_sizes.setdefault(sym.name, sym["st_size"])
                    value = sym["st_value"]
                    if kind == "STT_FUNC" and any(lo <= value < hi for lo, hi in text):
                        asm_functions[sym.name] = (value, value + sym["st_size"])
            dwarf = elf.get_dwarf_info()
            self.functions: dict[str, tuple[int, int]] = {}
            self._structs: dict[str, Any] = {}
            self._enums: dict[str, int] = {}
            self._variables: dict[str, Any] = {}
            for cu in dwarf.iter_CUs():
                for die in cu.iter_DIEs():
                    self._index_die(die)
            self._fdes: list[tuple[int, int, list[dict[Any, Any]]]] = []
            for entry in dwarf.CFI_entries():
                if isinstance(entry, FDE):
                    start = entry["initial_location"]
                    self._fdes.append(
                        (start, start + entry["address_range"], entry.get_decoded().table)
                    )
            self._fdes.sort(key=lambda t: t[0])
        # Functions without debug info (assembly entry points) from the symbol table.
        for name, rng in asm_functions.items():
            self.functions.setdefault(name, rng)
        # Function entry points: DWARF's, which on ELFv1 is the code, not the .opd descriptor.
        for name, (low, _) in self.functions.items():
            self.symbols[name] = low

    # ----------------------------------------------------------------- DWARF

    def _index_die(self, die: Any) -> None:
        attrs = die.attributes
        name = attrs["DW_AT_name"].value.decode() if "DW_AT_name" in attrs else None
        if die.tag == "DW_TAG_subprogram" and name and "DW_AT_low_pc" in attrs:
            low = attrs["DW_AT_low_pc"].value
            high = attrs["DW_AT_high_pc"]
            end = high.value if high.form == "DW_FORM_addr" else low + high.value
            self.functions.setdefault(name, (low, end))
        elif die.tag == "DW_TAG_structure_type" and name and "DW_AT_declaration" not in attrs:
            self._structs.setdefault(name, die)
        elif die.tag == "DW_TAG_enumerator" and name:
            self._enums.setdefault(name, attrs["DW_AT_const_value"].value)
        elif die.tag == "DW_TAG_variable" and name and "DW_AT_type" in attrs:
            self._variables.setdefault(name, die)

    @staticmethod
    def _strip(die: Any) -> Any:
        while die.tag in ("DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type"):
            die = die.get_DIE_from_attribute("DW_AT_type")
        return die

    def _sizeof_die(self, die: Any) -> int:
        die = self._strip(die)
        if die.tag == "DW_TAG_array_type":
            elem = die.get_DIE_from_attribute("DW_AT_type")
            count = 1
            for sub in die.iter_children():
                if sub.tag == "DW_TAG_subrange_type":
                    if "DW_AT_count" in sub.attributes:
                        count *= sub.attributes["DW_AT_count"].value
                    else:
                        count *= sub.attributes["DW_AT_upper_bound"].value + 1
            return count * self._sizeof_die(elem)
        if "DW_AT_declaration" in die.attributes:
            die = self._structs[die.attributes["DW_AT_name"].value.decode()]
        return int(die.attributes["DW_AT_byte_size"].value)

    def _members(self, die: Any) -> dict[str, _Member]:
        out: dict[str, _Member] = {}
        for m in die.iter_children():
            if m.tag != "DW_TAG_member":
                continue
            off = (
                m.attributes["DW_AT_data_member_location"].value
                if "DW_AT_data_member_location" in m.attributes
                else 0
            )
            mtype = m.get_DIE_from_attribute("DW_AT_type")
            if "DW_AT_name" in m.attributes:
                out[m.attributes["DW_AT_name"].value.decode()] = _Member(off, mtype)
            else:  # an anonymous union or struct: its members are the parent's
                for k, v in self._members(self._strip(mtype)).items():
                    out[k] = _Member(off + v.offset, v.type)
        return out

    def sizeof(self, struct: str) -> int:
        """``sizeof(struct NAME)``."""
        key = (struct, "")
        if key not in self._field_cache:
            self._field_cache[key] = (0, self._sizeof_die(self._structs[struct]))
        return self._field_cache[key][1]

    def field(self, struct: str, path: str) -> tuple[int, int]:
        """``(offsetof, sizeof)`` of a member path like ``"pids[0].node.next"`` in ``struct NAME``."""
        key = (struct, path)
        hit = self._field_cache.get(key)
        if hit is None:
            hit = self._field_cache[key] = self._field(struct, path)
        return hit

    def _field(self, struct: str, path: str) -> tuple[int, int]:
        die = self._structs[struct]
        offset = 0
        for part in re.findall(r"[A-Za-z_][A-Za-z0-9_]*|\[\d+\]", path):
            die = self._strip(die)
            if part.startswith("["):
                if die.tag != "DW_TAG_array_type":
                    raise KeyError(f"{struct}.{path}: not an array at {part}")
                elem = die.get_DIE_from_attribute("DW_AT_type")
                offset += int(part[1:-1]) * self._sizeof_die(elem)
                die = elem
                continue
            if die.tag == "DW_TAG_structure_type" and "DW_AT_declaration" in die.attributes:
                die = self._structs[die.attributes["DW_AT_name"].value.decode()]
            member = self._members(die).get(part)
            if member is None:
                raise KeyError(f"struct {struct} has no member {path}")
            offset += member.offset
            die = member.type
        return offset, self._sizeof_die(die)

    def offsetof(self, struct: str, path: str) -> int:
        return self.field(struct, path)[0]

    def enum(self, name: str) -> int:
        """An enumerator's value (``PIDTYPE_PID``, ``desc_finalized``)."""
        return self._enums[name]

    def variable_size(self, name: str) -> int:
        """``sizeof`` a global variable, from its DWARF type."""
        return self._sizeof_die(self._variables[name].get_DIE_from_attribute("DW_AT_type"))

    # ------------------------------------------------------------ code and CFI

    def symbol(self, name: str) -> int:
        """A symbol's address (functions: their code entry, also on ELFv1)."""
        return self.symbols[name]

    def function_at(self, pc: int) -> str | None:
        for name, (low, high) in self.functions.items():
            if low <= pc < high:
                return name
        return None

    def read(self, addr: int, size: int) -> bytes:
        """Bytes of the image at a kernel address (zeros in NOBITS sections)."""
        for s in self.sections:
            if s.addr <= addr and addr + size <= s.addr + s.size:
                if s.data is None:
                    return bytes(size)
                return s.data[addr - s.addr : addr - s.addr + size]
        raise KeyError(f"{addr:#x}+{size:#x} is not in one section of {self.path.name}")

    def call_sites(self, caller: str, callee: str) -> list[int]:
        """Return addresses of every ``bl`` in ``caller`` that calls ``callee``."""
        low, high = self.functions[caller]
        tlow, thigh = self.functions[callee]
        code = self.read(low, high - low)
        order = self.byteorder
        out = []
        for i in range(0, len(code) - 3, 4):
            word = int.from_bytes(code[i : i + 4], order)
            if word >> 26 == 18 and word & 3 == 1:
                li = word & 0x03FFFFFC
                if li & 0x02000000:
                    li -= 1 << 26
                if tlow <= low + i + li < thigh:
                    out.append(low + i + 4)
        return out

    def call_site(self, caller: str, callee: str) -> int:
        """The return address of ``caller``'s first call to ``callee``."""
        sites = self.call_sites(caller, callee)
        if not sites:
            raise KeyError(f"{caller} does not call {callee} in {self.path.name}")
        return sites[0]

    def has_cfi(self, pc: int) -> bool:
        """Whether ``.debug_frame`` covers ``pc`` (assembly entry points have none)."""
        return any(start <= pc < end for start, end, _ in self._fdes)

    def cfi_row(self, pc: int) -> CfiRow:
        """The CFI row in effect at ``pc`` (from ``.debug_frame``)."""
        for start, end, table in self._fdes:
            if start <= pc < end:
                row = None
                for r in table:
                    if r["pc"] <= pc:
                        row = r
                if row is None:  # pragma: no cover - a table always starts at its FDE
                    break
                cfa = row["cfa"]
                if cfa.reg != _REG_R1:
                    raise ValueError(f"CFA at {pc:#x} is not r1-based")
                lr = row.get(_REG_LR)
                lr_offset = None
                undefined = False
                if isinstance(lr, RegisterRule):
                    if lr.type == RegisterRule.OFFSET:
                        lr_offset = int(lr.arg)  # type: ignore[arg-type]
                    elif lr.type == RegisterRule.UNDEFINED:
                        undefined = True
                return CfiRow(cfa.offset, lr_offset, undefined)
        raise KeyError(f"no CFI for {pc:#x} in {self.path.name}")

    def fault_sites(self) -> list[int]:
        """Addresses of the deliberate faulting loads (the ``__hvsim_fault_sites`` table)."""
        start = self.symbols["__start___hvsim_fault_sites"]
        stop = self.symbols["__stop___hvsim_fault_sites"]
        raw = self.read(start, stop - start)
        order = self.byteorder
        return [int.from_bytes(raw[i : i + 8], order) for i in range(0, len(raw), 8)]


@functools.lru_cache(maxsize=4)
def load_vmlinux(endian: str, path: str | None = None) -> Vmlinux:
    """The image for ``endian`` (cached: parsing DWARF takes a moment)."""
    return Vmlinux(Path(path) if path else image_path(endian), endian)
