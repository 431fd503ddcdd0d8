"""`hvsim verify` on kdump-compressed dumps written by `hvdump collect`, in both byte orders."""

from __future__ import annotations

from pathlib import Path

import pytest

from hvsim.verify import verify_dump
from tests.collect_support import FUSE_MISSING, hvdump, make_lpar, manifest, mounted

pytestmark = [pytest.mark.fuse, pytest.mark.skipif(bool(FUSE_MISSING), reason=FUSE_MISSING)]


@pytest.mark.parametrize("endian", ["big", "little"])
def test_collected_kdump_verifies_and_a_changed_page_is_found(tmp_path: Path, endian: str) -> None:
    lpar = make_lpar(tmp_path / "lpar", endian=endian, page_size=65536, seed=11)
    out = tmp_path / "dump"
    with mounted(lpar, tmp_path / "root") as root:
        res = hvdump("collect", "--root", str(root), "--output", str(out), "--release", "never")
        assert res.returncode == 0, res.stderr
    dump = out / manifest(out)["dump"]["file"]
    report = verify_dump(lpar, dump)
    assert report.ok, report.lines
    assert "NT_PRSTATUS notes" in "\n".join(report.lines)

    # Store a different page where the dump keeps an uncompressed page, or break a
    # compressed one: either way verify must not say OK.
    data = bytearray(dump.read_bytes())
    data[len(data) - 4096] ^= 0xFF
    bad = tmp_path / "bad.kdump"
    bad.write_bytes(bytes(data))
    bad_report = verify_dump(lpar, bad)
    assert not bad_report.ok
    assert str(bad) in bad_report.text()
