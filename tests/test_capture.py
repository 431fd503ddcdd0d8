"""The capture-kernel interface against plain directory trees shaped like a capture root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drgn_hvdump import cli
from drgn_hvdump.capture import NoDumpError, PhypDump, open_capture
from drgn_hvdump.formats.dump_header import (
    DUMP_ERROR_FLAG,
    DUMP_PERFORMED,
    DUMP_TRIGGERED,
    build_dump_header,
    registration_header,
)
from drgn_hvdump.formats.release_region import Extent, ReleaseMap, format_release_map

CPU, HPTE, RMO = 0x10020, 0x40000, 256 << 20
RAM = 4 << 30


def _fired_header(status: int = DUMP_TRIGGERED | DUMP_PERFORMED, rmo_copied: int = RMO):
    base = (RAM - (CPU + HPTE + RMO)) & ~0xFFFF
    h = registration_header(CPU, HPTE, RMO, base)
    from dataclasses import replace

    return replace(
        h,
        status=status,
        cpu=replace(h.cpu, length_copied=CPU),
        hpte=replace(h.hpte, length_copied=HPTE),
        rmo=replace(h.rmo, length_copied=rmo_copied),
    )


def make_root(tmp_path: Path, *, waiting: bool = True, literal: bool = False, **kw: int) -> Path:
    root = tmp_path / "root"
    rtas = root / "proc/device-tree/rtas"
    rtas.mkdir(parents=True)
    (rtas / "ibm,configure-kernel-dump").write_bytes(b"\0\0\0\x2a")
    kernel = root / "sys/kernel"
    kernel.mkdir(parents=True)
    if waiting:
        header = _fired_header(**kw)
        (rtas / "ibm,dump-kernel").write_bytes(b"")
        (rtas / "ibm,kernel-dump").write_bytes(build_dump_header(header))
        scratch = CPU + HPTE + RMO
        reserved = Extent(256 << 20, RAM - (256 << 20) - scratch)
        if literal:
            shown = ReleaseMap(Extent(0, 0), Extent(CPU, 0), Extent(CPU + HPTE, 0), reserved)
        else:
            shown = ReleaseMap(
                Extent(header.cpu.destination_address, CPU),
                Extent(header.hpte.destination_address, HPTE),
                Extent(header.rmo.destination_address, header.rmo.length_copied),
                reserved,
            )
        (kernel / "release_region").write_text(format_release_map(shown))
    return root


def test_waiting_dump_is_valid(tmp_path: Path) -> None:
    state = open_capture(make_root(tmp_path)).state()
    assert state.firmware_supported and state.dump_waiting and state.valid
    assert state.warnings == []
    assert state.readable and state.sections["rmo"].length_copied == RMO
    assert state.details["release_map"]["dump"]["size"] == RMO
    assert state.reserved_bytes == RAM - (256 << 20)


def test_literal_map_is_corrected_from_header_with_warning(tmp_path: Path) -> None:
    state = open_capture(make_root(tmp_path, literal=True)).state()
    assert state.valid
    assert state.details["release_map"]["cpu"]["addr"] != 0
    assert len(state.warnings) == 1 and "disagrees" in state.warnings[0]


def test_partial_copy_is_reported(tmp_path: Path) -> None:
    state = open_capture(make_root(tmp_path, rmo_copied=RMO // 2)).state()
    assert state.dump_waiting and not state.valid
    assert "incomplete" in state.reason


def test_error_flag_is_reported(tmp_path: Path) -> None:
    root = make_root(tmp_path, status=DUMP_ERROR_FLAG | DUMP_TRIGGERED)
    state = open_capture(root).state()
    assert not state.valid and "not valid" in state.reason


def test_no_dump_waiting(tmp_path: Path) -> None:
    state = open_capture(make_root(tmp_path, waiting=False)).state()
    assert state.firmware_supported and not state.dump_waiting
    assert state.reason == "no dump is waiting"


def test_no_firmware_support(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    state = open_capture(tmp_path / "empty").state()
    assert not state.firmware_supported and "does not support" in state.reason


def test_corrupt_header_named(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    header = root / "proc/device-tree/rtas/ibm,kernel-dump"
    header.write_bytes(header.read_bytes()[:100])
    state = open_capture(root).state()
    assert not state.valid and str(header) in state.reason and "offset" in state.reason


def test_release_without_dump_is_clear(tmp_path: Path) -> None:
    capture = PhypDump(make_root(tmp_path, waiting=False))
    with pytest.raises(NoDumpError, match="no dump is waiting"):
        capture.release_extent(Extent(1 << 28, 1 << 16))


def test_cli_status_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path)
    assert cli.main(["status", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "dump waiting:        yes" in out and "RESERVED" in out
    assert cli.main(["status", "--root", str(root), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dump_waiting"] is True and data["header"]["rmo"]["length_copied"] == RMO


def test_cli_inspect_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "header.bin"
    bad.write_bytes(b"\x01\x00\x00\x00" + bytes(156))
    assert cli.main(["inspect", str(bad), "--kind", "header"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "offset" in err
