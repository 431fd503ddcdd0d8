"""The real-kernel harness's pure parts, without a guest (:mod:`tests.real_kernel`)."""

from __future__ import annotations

from tests.real_kernel import PANIC_LOOP, parse_function_ranges

# readelf -sW of a ppc64le (ELFv2) and a big-endian kernel: the localentry bracket moves Ndx.
SYMBOLS = """\
Symbol table '.symtab' contains 4 entries:
   Num:    Value          Size Type    Bind   Vis      Ndx Name
103332: c000000000024ae0    32 FUNC    GLOBAL DEFAULT [<localentry>: 8]     2 udelay
115427: c000000000141650  1116 FUNC    GLOBAL DEFAULT [<localentry>: 8]     2 panic
  2000: c000000000900000    64 FUNC    GLOBAL DEFAULT    2 __delay
  2001: c000000000900100    64 OBJECT  GLOBAL DEFAULT    2 panic_cpu
  2002: c000000000900200     0 FUNC    GLOBAL DEFAULT    2 mdelay
  2003: c000000000900300    64 FUNC    GLOBAL DEFAULT    2 panic_smp_self_stop
"""


def test_function_ranges_of_the_panic_loop() -> None:
    assert parse_function_ranges(SYMBOLS, PANIC_LOOP) == [
        (0xC000000000024AE0, 0xC000000000024B00),
        (0xC000000000141650, 0xC000000000141650 + 1116),
        (0xC000000000900000, 0xC000000000900040),
    ]
    assert parse_function_ranges(SYMBOLS, ("nothing",)) == []
