"""``hvdump verify DIR``: check a collected dump against its manifest (anywhere it was copied)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from drgn_hvdump import native
from drgn_hvdump.collect.codecs import decompress_page
from drgn_hvdump.errors import FormatError, HvdumpError
from drgn_hvdump.formats.elfcore import ElfCore
from drgn_hvdump.formats.kdump import KdumpFile

__all__ = ["verify_dir"]


def _load(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((path / "manifest.json").read_text())
    except FileNotFoundError:
        raise HvdumpError(
            f"{path}/manifest.json: missing (is the collection finished? rerun hvdump collect)"
        ) from None
    except ValueError as exc:
        raise FormatError(
            f"manifest is not JSON ({exc})", path=str(path / "manifest.json")
        ) from None
    if data.get("version") != 1:
        raise FormatError("unknown manifest version", path=str(path / "manifest.json"))
    return data


def _read_sidecar(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise FormatError(f"short: {len(data)} of {size} bytes", path=str(path), offset=offset)
    return data


def verify_dir(path: Path) -> tuple[bool, list[str]]:
    """Recompute every chunk's checksum from the files in ``path``; (ok, report lines)."""
    m = _load(path)
    dump = path / m["dump"]["file"]
    lines: list[str] = []
    bad = 0
    ps = m["source"]["page_size"]
    if m["dump"]["format"] == "kdump":
        kd = KdumpFile.open(dump, decompress_page)
        if kd.page_size != ps or kd.byteorder != m["source"]["byteorder"]:
            raise FormatError("page size or byte order differs from the manifest", path=str(dump))
        if kd.header.status & 0x8:
            lines.append(f"{dump}: marked incomplete")
            bad += 1

        def read_mem(paddr: int, size: int) -> bytes:
            pfn = paddr // ps
            n = size // ps
            out = bytearray(size)
            for i, d in enumerate(kd.descriptors(pfn, n)):
                out[i * ps : (i + 1) * ps] = kd.decode(d, pfn + i)
            return bytes(out)

        closer = kd.close
    else:
        core = ElfCore.open(dump, machine=None)

        def read_mem(paddr: int, size: int) -> bytes:
            return core.read_phys(paddr, size)

        closer = core.close
    try:
        for ch in m["chunks"]:
            kind = ch["kind"]
            try:
                if kind == "cpu":
                    data = _read_sidecar(
                        path / m["metadata"]["regsave"]["file"], ch["dst"], ch["size"]
                    )
                elif kind == "hpte":
                    data = _read_sidecar(
                        path / m["metadata"]["hpte"]["file"], ch["dst"], ch["size"]
                    )
                else:
                    data = read_mem(ch["dst"], ch["size"])
            except (OSError, FormatError) as exc:
                bad += 1
                lines.append(f"chunk {ch['index']} ({kind} {ch['dst']:#x}+{ch['size']:#x}): {exc}")
                continue
            got = f"{native.hash64(data):016x}"
            if got != ch["xxh64"]:
                bad += 1
                lines.append(
                    f"chunk {ch['index']} ({kind} {ch['dst']:#x}+{ch['size']:#x}): checksum {got}, "
                    f"manifest says {ch['xxh64']}"
                )
    finally:
        closer()
    size = os.stat(dump).st_size
    if size != m["dump"]["size"]:
        bad += 1
        lines.append(f"{dump}: {size} bytes, manifest says {m['dump']['size']}")
    total = sum(ch["size"] for ch in m["chunks"])
    if bad:
        lines.append(f"FAILED: {path}: {bad} problems in {len(m['chunks'])} chunks")
    else:
        lines.append(
            f"OK: {path}: {len(m['chunks'])} chunks, {total / (1 << 30):.3f} GiB match the manifest"
        )
    return not bad, lines
