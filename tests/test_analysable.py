"""Dumps drgn can analyse: the format rule, VMCOREINFO's known address, verify's check."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import drgn
import pytest

from drgn_hvdump.collect import analysable
from drgn_hvdump.collect.analysable import (
    analysable_format,
    analysable_problems,
    kdump_unreadable,
    known_address,
    vmcoreinfo_problems,
)
from drgn_hvdump.collect.convert import ConvertOptions, convert
from drgn_hvdump.collect.verify import verify_dir
from tests.collect_support import FUSE_MISSING, hvdump, make_lpar, manifest, mounted

# The lines that matter of Debian 13's 6.12 VMCOREINFO (4 KiB pages, name first in uts_namespace).
V6_12 = {
    "OSRELEASE": "6.12.107+deb13-powerpc64le",
    "PAGESIZE": "4096",
    "SYMBOL(init_uts_ns)": "c0000000026e4ca8",
    "OFFSET(uts_namespace.name)": "0",
    "SYMBOL(swapper_pg_dir)": "c000000002750000",
}


def test_libkdumpfile_reads_ppc64_kdump_with_64k_pages_only() -> None:
    assert kdump_unreadable(True, 65536) is None
    assert kdump_unreadable(False, 4096) is None  # x86-64 conversions stay kdump
    why = kdump_unreadable(True, 4096)
    assert why is not None and "4 KiB" in why and "libkdumpfile" in why
    fmt, line = analysable_format("kdump", True, 4096)
    assert fmt == "elf" and line is not None and line.startswith("writing an ELF dump, not kdump")
    assert analysable_format("elf", True, 4096) == ("elf", None)
    assert analysable_format("kdump", True, 65536) == ("kdump", None)


def test_known_address_is_init_uts_ns_release_then_swapper_pg_dir() -> None:
    found = known_address(V6_12)
    assert found == (
        0xC0000000026E4CA8 + 130,
        b"6.12.107+deb13-powerpc64le\0",
        "init_uts_ns.name.release",
    )
    # 2.6-era layout: a kref before the name.
    older = {**V6_12, "OFFSET(uts_namespace.name)": "4"}
    assert known_address(older) == (0xC0000000026E4CA8 + 134, found[1], found[2])
    no_uts = {k: v for k, v in V6_12.items() if "uts" not in k}
    assert known_address(no_uts) == (0xC000000002750000, None, "swapper_pg_dir")
    assert known_address({"OSRELEASE": "x"}) is None


def test_vmcoreinfo_problems_are_what_drgn_refuses() -> None:
    assert vmcoreinfo_problems(V6_12) == []
    assert "no VMCOREINFO" in vmcoreinfo_problems(None)[0]
    missing = vmcoreinfo_problems({"OSRELEASE": "6.12", "PAGESIZE": "4096"})
    assert missing == ["VMCOREINFO has no SYMBOL(swapper_pg_dir): drgn refuses such a kernel"]
    assert "power of two" in vmcoreinfo_problems({**V6_12, "PAGESIZE": "4095"})[0]


@pytest.fixture(scope="module")
def collected_4k(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    if FUSE_MISSING:
        pytest.skip(FUSE_MISSING)
    d = tmp_path_factory.mktemp("analysable")
    lpar = make_lpar(d / "lpar", page_size=4096, endian="little")
    out = d / "out"
    with mounted(lpar, d / "root") as root:
        res = hvdump("collect", "--root", str(root), "-o", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr
    lpar.close()
    return out, res.stderr


def test_collect_writes_elf_for_a_4k_kernel_and_says_why(collected_4k: tuple[Path, str]) -> None:
    out, stderr = collected_4k
    line = "writing an ELF dump, not kdump: drgn's kdump reader (libkdumpfile) cannot read"
    assert stderr.count(line) == 1, stderr
    assert manifest(out)["dump"]["format"] == "elf"
    assert (out / "dump.elf").exists() and not (out / "dump.kdump").exists()
    ok, lines = verify_dir(out)
    assert ok, lines
    prog = drgn.Program()
    prog.set_core_dump(str(out / "dump.elf"))
    info = dict(ln.split("=", 1) for ln in manifest_vmcoreinfo(out))
    address, want, _ = known_address(info) or (0, None, "")
    assert want is not None and prog.read(address, len(want)) == want


def manifest_vmcoreinfo(out: Path) -> list[str]:
    from drgn_hvdump.formats.elfcore import ElfCore

    with ElfCore.open(out / "dump.elf") as core:
        return [f"{k}={v}" for k, v in (core.vmcoreinfo or {}).items()]


def test_verify_fails_a_4k_kdump_with_the_reason(
    collected_4k: tuple[Path, str], tmp_path: Path
) -> None:
    out, _ = collected_4k
    # What hvdump wrote before the rule: the same memory as a kdump file.
    with mock.patch.object(analysable, "analysable_format", lambda r, p, s: (r, None)):
        convert(ConvertOptions(vmcore=out / "dump.elf", output=tmp_path / "k", progress=False))
    assert (tmp_path / "k" / "dump.kdump").exists()
    ok, lines = verify_dir(tmp_path / "k")
    assert not ok
    problem = next(ln for ln in lines if "not analysable" in ln)
    assert "drgn cannot read init_uts_ns.name.release" in problem
    assert "4 KiB pages" in problem and "--format elf" in problem
    assert analysable_problems(tmp_path / "k" / "dump.kdump", "kdump") == [problem]


def test_verify_fails_a_dump_whose_known_address_holds_another_release(
    collected_4k: tuple[Path, str], tmp_path: Path
) -> None:
    out, _ = collected_4k
    dump = out / "dump.elf"
    with mock.patch.object(analysable, "_stored", lambda *a: b"2.6.32-other\0"):
        problems = analysable_problems(dump, "elf")
    assert len(problems) == 1 and "holds b'2.6.32-other'" in problems[0], problems
    with mock.patch.object(analysable, "_drgn_reads", lambda *a: b"garbage"):
        problems = analysable_problems(dump, "elf")
    assert len(problems) == 1 and "drgn reads b'garbage'" in problems[0], problems
