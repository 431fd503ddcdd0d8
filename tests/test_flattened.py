"""makedumpfile's flattened format: ``hvdump convert -F`` and ``hvdump receive --flattened``.

Checked against makedumpfile itself: Debian's ``makedumpfile -R`` rebuilds
hvdump's flattened stream into the very file ``hvdump convert`` writes to a
directory, and (``real``: Debian 13's ppc64el makedumpfile under qemu-user)
``hvdump receive --flattened`` rebuilds makedumpfile ``-F``'s stream into the
file makedumpfile writes without ``-F``.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from drgn_hvdump.errors import FormatError
from drgn_hvdump.formats.flattened import END, FLAT_HEADER_SIZE, FLAT_RECORD, flat_header, records
from tests.collect_support import FUSE_MISSING, hvdump, make_lpar, mounted

needs_fuse = pytest.mark.skipif(bool(FUSE_MISSING), reason=FUSE_MISSING or "FUSE")
MAKEDUMPFILE = shutil.which("makedumpfile")
HVDUMP = str(Path(sys.executable).parent / "hvdump")


def _stream(*writes: tuple[int, bytes], end: bool = True) -> bytes:
    body = b"".join(FLAT_RECORD.pack(off, len(d)) + d for off, d in writes)
    return flat_header() + body + (END if end else b"")


# -- the format, without a dump ---------------------------------------------------------


def test_records_in_order_later_writes_win(tmp_path: Path) -> None:
    raw = _stream((4096, b"B" * 10), (0, b"A" * 4096), (4100, b"C" * 2))
    got = list(records(io.BytesIO(raw).read, "s"))
    assert got == [(4096, b"B" * 10), (0, b"A" * 4096), (4100, b"C" * 2)]
    # The header is makedumpfile's: signature, then type and version 1, big-endian,
    # whatever this machine's byte order.
    assert raw[:16] == b"makedumpfile\0\0\0\0" and struct.unpack(">qq", raw[16:32]) == (1, 1)
    out = tmp_path / "f"
    res = subprocess.run(
        [HVDUMP, "receive", "--flattened", str(out)], input=raw, capture_output=True, check=False
    )
    assert res.returncode == 0, res.stderr
    assert out.read_bytes() == b"A" * 4096 + b"BBBBCC" + b"B" * 4
    assert out.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("raw", "what"),
    [
        (b"not a flattened dump at all" * 200, "no makedumpfile signature"),
        (flat_header()[:16] + struct.pack("<qq", 1, 1) + bytes(4064), "type 72057594037927936"),
        (flat_header()[:2000], "ends inside its header"),
        (_stream((0, b"x" * 100), end=False), "ends without its end record"),
        (_stream((0, b"x" * 100))[: FLAT_HEADER_SIZE + 16 + 50], "ends inside a record of 100"),
        (flat_header() + FLAT_RECORD.pack(-5, 10) + bytes(10) + END, "offset -5 and size 10"),
        (flat_header() + FLAT_RECORD.pack(0, 0) + END, "offset 0 and size 0"),
    ],
)
def test_bad_streams_one_line(tmp_path: Path, raw: bytes, what: str) -> None:
    """A little-endian header (type 1 read big-endian is 2**56), a cut stream, a bad
    record: one line naming the stream offset; FILE is not made (what came is kept
    as FILE.partial)."""
    with pytest.raises(FormatError, match=r"^s: offset 0x"):
        list(records(io.BytesIO(raw).read, "s"))
    out = tmp_path / "f"
    res = subprocess.run(
        [HVDUMP, "receive", "--flattened", str(out)], input=raw, capture_output=True, check=False
    )
    lines = res.stderr.decode().strip().splitlines()
    assert res.returncode != 0 and len(lines) == 1 and what in lines[0], res.stderr
    assert "offset 0x" in lines[0] and not out.exists()


def test_receive_refuses_to_replace_without_force(tmp_path: Path) -> None:
    out = tmp_path / "f"
    out.write_bytes(b"keep")
    raw = _stream((0, b"new"))
    cmd = [HVDUMP, "receive", "--flattened", str(out)]
    res = subprocess.run(cmd, input=raw, capture_output=True, check=False)
    assert res.returncode != 0 and b"exists; give --force" in res.stderr
    assert out.read_bytes() == b"keep"
    assert subprocess.run([*cmd, "--force"], input=raw, check=False).returncode == 0
    assert out.read_bytes() == b"new"


def test_convert_flattened_needs_dash_and_collect_refuses_stdout(tmp_path: Path) -> None:
    res = hvdump("convert", "-F", "/nonexistent", str(tmp_path / "o"))
    assert res.returncode != 0 and "give - as DIR" in res.stderr
    res = hvdump("convert", "/nonexistent", "-")
    assert res.returncode != 0 and "takes --flattened" in res.stderr
    res = hvdump("collect", "--root", "/nonexistent", "-o", "-")
    assert res.returncode != 0 and "cannot go to stdout" in res.stderr


# -- against makedumpfile -----------------------------------------------------------------


@needs_fuse
@pytest.mark.skipif(
    MAKEDUMPFILE is None, reason="needs makedumpfile (apt-get install makedumpfile)"
)
@pytest.mark.parametrize(("endian", "fmt"), [("big", "kdump"), ("little", "elf")])
def test_convert_flattened_is_what_makedumpfile_rebuilds(
    tmp_path: Path, endian: str, fmt: str
) -> None:
    """``hvdump convert -F VMCORE -``: Debian's ``makedumpfile -R`` and ``hvdump receive
    --flattened`` both rebuild the very file ``hvdump convert VMCORE DIR`` writes."""
    lpar = make_lpar(tmp_path / "lpar", endian=endian, memory="1G")
    with mounted(lpar, tmp_path / "root") as root:
        local = tmp_path / "local"
        res = hvdump("collect", "--root", str(root), "-o", str(local), "--format", "elf",
                     "--release", "never", "--no-progress")  # fmt: skip
        assert res.returncode == 0, res.stderr
    vmcore = local / "dump.elf"
    whole = tmp_path / "whole"
    assert (
        hvdump("convert", str(vmcore), str(whole), "--format", fmt, "--no-progress").returncode == 0
    )
    want = (whole / f"dump.{fmt}").read_bytes()
    flat = tmp_path / "flat"
    with flat.open("wb") as f:
        res = subprocess.run(
            [HVDUMP, "convert", "-F", str(vmcore), "-", "--format", fmt, "--no-progress"],
            stdout=f, stderr=subprocess.PIPE, check=False,
        )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert b"into stdout (flattened)" in res.stderr
    assert MAKEDUMPFILE is not None
    with flat.open("rb") as f:
        mdf = subprocess.run(
            [MAKEDUMPFILE, "-R", str(tmp_path / "mdf")], stdin=f, capture_output=True, check=False
        )
    assert mdf.returncode == 0, mdf.stdout + mdf.stderr
    assert (tmp_path / "mdf").read_bytes() == want
    with flat.open("rb") as f:
        ours = subprocess.run(
            [HVDUMP, "receive", "--flattened", str(tmp_path / "ours")], stdin=f, check=False
        )
    assert ours.returncode == 0 and (tmp_path / "ours").read_bytes() == want


@needs_fuse
@pytest.mark.real
def test_receive_rebuilds_makedumpfile_flattened(tmp_path: Path) -> None:
    """Debian 13's ppc64el makedumpfile ``-F -l -d 31`` of a fadump vmcore, piped into
    ``hvdump receive --flattened``: the file makedumpfile writes without ``-F``."""
    from tests.makedumpfile_ppc64 import makedumpfile_command

    lpar = make_lpar(tmp_path / "lpar", endian="little", dump="fadump", memory="2G")
    with mounted(lpar, tmp_path / "root") as root:
        vmcore = root / "proc" / "vmcore"
        ref = tmp_path / "ref.kdump"
        cmd = makedumpfile_command()
        res = subprocess.run(
            [*cmd, "-l", "-d", "31", str(vmcore), str(ref)], capture_output=True, check=False
        )
        assert res.returncode == 0, res.stderr[-2000:]
        out = tmp_path / "rebuilt.kdump"
        mdf = subprocess.Popen([*cmd, "-F", "-l", "-d", "31", str(vmcore)], stdout=subprocess.PIPE)
        rx = subprocess.run(
            [HVDUMP, "receive", "--flattened", str(out)],
            stdin=mdf.stdout,
            capture_output=True,
            check=False,
        )
        assert mdf.wait() == 0 and rx.returncode == 0, rx.stderr
    # makedumpfile stamps the time of its run in the header: compare what follows it.
    a, b = ref.read_bytes(), out.read_bytes()
    assert len(a) == len(b) and a[4096:] == b[4096:]
