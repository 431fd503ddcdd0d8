"""The plugin's hash translation: only for hash kernels, over the range VMCOREINFO gives.

A program is built from VMCOREINFO alone (``set_linux_kernel_custom`` fires
the plugin's hook as opening a core does); no memory is needed to see which
segment answers a vmalloc address.
"""

from __future__ import annotations

import drgn
import pytest

from drgn_hvdump.plugin.translate import CACHE_KEY, HashTranslator

BASE = (
    "OSRELEASE=6.12.107+deb13-powerpc64le\nPAGESIZE=4096\n"
    "SYMBOL(swapper_pg_dir)=c000000002750000\n"
    "NUMBER(VMALLOC_START)=0xc0003d0000000000\nSYMBOL(vmemmap)=c0003f0000000000\n"
)
VMALLOC = 0xC0003D00003490A8  # crc7's .rodata in Debian 13's 6.12 (hash, 4 KiB pages)


def _program(vmcoreinfo: str) -> drgn.Program:
    data = vmcoreinfo.encode()
    flags = drgn.PlatformFlags.IS_64_BIT | drgn.PlatformFlags.IS_LITTLE_ENDIAN
    prog = drgn.Program(drgn.Platform(drgn.Architecture.PPC64, flags), vmcoreinfo=data)
    prog.set_linux_kernel_custom(data, False)
    return prog


def test_a_radix_kernel_gets_no_hash_translation() -> None:
    prog = _program(BASE + "NUMBER(RADIX_MMU)=1\n")
    assert CACHE_KEY not in prog.cache
    with pytest.raises(Exception) as exc:
        prog.read(VMALLOC, 8)
    assert "not a vmalloc" not in str(exc.value)  # drgn's own radix walker answered


@pytest.mark.parametrize("said", ["NUMBER(RADIX_MMU)=0\n", ""])
def test_a_hash_kernel_gets_the_range_its_vmcoreinfo_gives(said: str) -> None:
    prog = _program(BASE + said)
    translator = prog.cache.get(CACHE_KEY)
    assert isinstance(translator, HashTranslator)
    # Our segment answers (no debug info: the geometry is not known yet, and it says
    # so), not drgn's "only supported for Radix MMU".
    with pytest.raises(drgn.FaultError, match="not a vmalloc, module or I/O address"):
        prog.read(VMALLOC, 8)
    # The 2.6.32 and 64 KiB-page ranges are not claimed for this kernel: drgn's
    # walker answers (it needs cur_cpu_spec's debug info when VMCOREINFO is silent).
    with pytest.raises((NotImplementedError, LookupError)):
        prog.read(0xC008000000001000, 8)


def test_without_vmcoreinfo_range_both_older_ranges_are_covered() -> None:
    old = BASE.replace("NUMBER(VMALLOC_START)=0xc0003d0000000000\n", "").replace(
        "PAGESIZE=4096", "PAGESIZE=65536"
    )
    prog = _program(old)
    for address in (0xD000000000001000, 0xC008000000001000):
        with pytest.raises(drgn.FaultError):
            prog.read(address, 8)
