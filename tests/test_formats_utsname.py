"""``init_uts_ns.name`` as makedumpfile reads it (:mod:`drgn_hvdump.formats.utsname`)."""

from __future__ import annotations

from drgn_hvdump.formats.elfcore import PAGE_OFFSET_PPC64
from drgn_hvdump.formats.utsname import UTSNAME_SIZE, parse_utsname, read_utsname, utsname_paddr

FIELDS = ["Linux", "lpar1", "6.1.0", "#1 SMP", "ppc64le", "(none)"]


def _raw(fields: list[str]) -> bytes:
    return b"".join(f.encode().ljust(65, b"\0") for f in fields)


def test_parse() -> None:
    assert parse_utsname(_raw(FIELDS)) == FIELDS
    assert parse_utsname(_raw(["Linux"] * 5)) is None  # short
    assert parse_utsname(_raw(["FreeBSD", *FIELDS[1:]])) is None
    assert parse_utsname(_raw([*FIELDS[:3], "caf\u00e9", *FIELDS[4:]])) is None


def test_address_from_vmcoreinfo() -> None:
    info = {"SYMBOL(init_uts_ns)": f"{PAGE_OFFSET_PPC64 + 0x1000:x}"}
    assert utsname_paddr(info) == 0x1004
    assert utsname_paddr({**info, "OFFSET(uts_namespace.name)": "0"}) == 0x1000
    assert utsname_paddr({}) is None
    assert utsname_paddr({"SYMBOL(init_uts_ns)": "zz"}) is None


def test_read_through_a_reader() -> None:
    info = {"SYMBOL(init_uts_ns)": f"{PAGE_OFFSET_PPC64 + 0x2000:x}"}
    memory = bytearray(0x3000)
    memory[0x2004 : 0x2004 + UTSNAME_SIZE] = _raw(FIELDS)[: 0x3000 - 0x2004]
    seen: list[tuple[int, int]] = []

    def read(paddr: int, size: int) -> bytes | None:
        seen.append((paddr, size))
        return bytes(memory[paddr : paddr + size]) if paddr + size <= len(memory) else None

    assert read_utsname(info, read) == FIELDS
    assert seen == [(0x2004, UTSNAME_SIZE)]
    assert read_utsname(info, lambda a, n: None) is None
    assert read_utsname({}, read) is None
