"""Faults: kill -9 at random points, a full disk, corrupt inputs. Nothing is ever lost."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from bench.export_root import export_root
from drgn_hvdump.collect.collector import CollectOptions, collect
from drgn_hvdump.collect.verify import verify_dir
from tests.collect_support import (
    FUSE_MISSING,
    compare_with_truth,
    hvdump,
    make_lpar,
    manifest,
    mounted,
    released_before_durable,
    start_collect,
)

needs_fuse = pytest.mark.skipif(bool(FUSE_MISSING), reason=FUSE_MISSING)


@needs_fuse
@pytest.mark.fuse
@pytest.mark.slow
def test_kill_9_at_30_random_points_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("HVDUMP_KILL_SEED", "4")))
    kills = 0
    lpars = 0
    while kills < 30:
        quirks = ("faithful", "corrected")[lpars % 2]
        fmt = ("kdump", "elf")[(lpars // 2) % 2]
        # Every third LPAR with makedumpfile's -d 31: left-out pages go back early.
        level = ("31", "1", "1")[lpars % 3]
        lpar = make_lpar(tmp_path / f"lpar{lpars}", memory="768M", quirks=quirks, seed=lpars)
        out = tmp_path / f"out{lpars}"
        with mounted(lpar, tmp_path / f"root{lpars}") as root:
            while True:
                proc = start_collect(
                    root, out, "--format", fmt, "--threads", str(1 + kills % 2), "-d", level
                )
                try:
                    proc.wait(timeout=rng.uniform(0.35, 1.4))
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills += 1
                    problems = released_before_durable(lpar, out, lpar.config.page_size)
                    assert problems == [], (kills, problems)
                    continue
                assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
                break
        assert lpar.state == "running" and lpar.protected, lpar.status()["events"][-3:]
        assert lpar.lost_ranges() == []
        assert compare_with_truth(lpar, out) == []
        assert verify_dir(out)[0]
        if level == "31":
            from hvsim.verify import verify_dump

            report = verify_dump(lpar, out / manifest(out)["dump"]["file"])
            assert report.ok and report.counts["level_excluded"] > 0, report.text()
        lpars += 1
    assert kills >= 30


class _Killed(Exception):
    """Stands for kill -9 at a hook point (the journal is fsynced line by line)."""


def _kill_at(event: str, nth: int, when: object = None) -> object:
    seen = [0]

    def hook(e: str, n: int) -> None:
        if e == event and (when is None or when()):  # type: ignore[operator]
            seen[0] += 1
            if seen[0] == nth:
                raise _Killed(f"{e} {n}")

    return hook


@needs_fuse
@pytest.mark.fuse
@pytest.mark.parametrize("quirks", ["faithful", "corrected"])
def test_interrupted_releases_are_decided_exactly(tmp_path: Path, quirks: str) -> None:
    """Killed after a write, before one, and after the last one: counters end exact."""
    lpar = make_lpar(tmp_path / "lpar", memory="768M", quirks=quirks)
    out = tmp_path / "out"
    with mounted(lpar, tmp_path / "root") as root:
        opts = {"root": root, "output": out, "chunk_size": 32 << 20}
        kills = [
            _kill_at("release", 3),  # the write was made, not journaled as done
            _kill_at("release-intent", 4),  # journaled as intended, not made
            _kill_at("release", 1, lambda: lpar.state == "running"),  # the last write made
        ]
        for hook in kills:
            with pytest.raises(_Killed):
                collect(CollectOptions(**opts, hook=hook))  # type: ignore[arg-type]
            assert released_before_durable(lpar, out, 65536) == []
        res = collect(CollectOptions(**opts))  # type: ignore[arg-type]
        assert res.resumed
    assert lpar.state == "running" and lpar.protected, lpar.status()["events"][-3:]
    assert lpar.lost_ranges() == []
    m = manifest(out)
    assert m["warnings"] == [] and all(w["done"] for w in m["release"]["writes"])
    assert compare_with_truth(lpar, out) == []
    journal = [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines()]
    assert [r.get("resolved") for r in journal if r.get("resolved")] == ["MemTotal"]
    assert any(r.get("gone") for r in journal)


@needs_fuse
@pytest.mark.fuse
def test_capture_kernel_reboot_between_runs_releases_again(tmp_path: Path) -> None:
    lpar = make_lpar(tmp_path / "lpar", memory="768M", quirks="faithful")
    out = tmp_path / "out"
    with mounted(lpar, tmp_path / "root") as root:
        opts = {"root": root, "output": out, "chunk_size": 32 << 20}
        with pytest.raises(_Killed):
            collect(CollectOptions(**opts, hook=_kill_at("release", 5)))  # type: ignore[arg-type]
        lpar.reboot()  # the capture kernel reboots: counters reset, released memory lost
        assert lpar.state == "capture" and lpar.lost_ranges()
        collect(CollectOptions(**opts))  # type: ignore[arg-type]
    assert lpar.state == "running" and lpar.protected, lpar.status()["events"][-3:]
    m = manifest(out)
    assert len(m["warnings"]) == 1 and "rebooted" in m["warnings"][0], m["warnings"]
    assert compare_with_truth(lpar, out) == []


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount a tmpfs"
)
def test_disk_full_then_space_freed_resumes(tmp_path: Path) -> None:
    lpar = make_lpar(
        tmp_path / "lpar", memory="768M", mix="zero=0.3,text=0.3,pointer=0.3,random=0.1"
    )
    root = export_root(lpar, tmp_path / "root")
    rr = root / "sys/kernel/release_region"
    # A plain-file root records release writes: make the file append-only text.
    rr.write_text("")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mnt)], check=True)
    try:
        out = mnt / "dump"
        res = hvdump("collect", "--root", str(root), "-o", str(out), "--release", "never")
        # the map file was emptied above: collect refuses it before writing anything
        assert res.returncode == 1 and "release_region" in res.stderr
        export_root(lpar, root, vmcore=False)
        again = ("collect", "--root", str(root), "-o", str(out), "--release", "never")
        res = hvdump(*again, "--chunk-size", "8M")
        assert res.returncode == 1
        err = res.stderr.strip().splitlines()
        assert len(err) == 1 and "no space left" in err[0] and "MiB more is needed" in err[0], err
        assert "Traceback" not in res.stderr
        subprocess.run(["mount", "-o", "remount,size=600m", str(mnt)], check=True)
        res = hvdump(*again, "--chunk-size", "8M")
        assert res.returncode == 0, res.stderr
        assert verify_dir(out)[0]
        assert compare_with_truth(lpar, out) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@needs_fuse
@pytest.mark.fuse
def test_disk_full_with_progressive_release_releases_only_saved(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    lpar = make_lpar(
        tmp_path / "lpar", memory="768M", mix="zero=0.3,text=0.3,pointer=0.3,random=0.1"
    )
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=60m", "tmpfs", str(mnt)], check=True)
    try:
        with mounted(lpar, tmp_path / "root") as root:
            out = mnt / "dump"
            res = hvdump("collect", "--root", str(root), "-o", str(out), "--chunk-size", "8M")
            assert res.returncode == 1 and "no space left" in res.stderr
            assert lpar.state == "capture"
            assert released_before_durable(lpar, out, 65536) == []
            assert lpar.released_ranges(), "saved chunks were released while space lasted"
            subprocess.run(["mount", "-o", "remount,size=600m", str(mnt)], check=True)
            res = hvdump("collect", "--root", str(root), "-o", str(out), "--chunk-size", "8M")
            assert res.returncode == 0, res.stderr
        assert lpar.protected and lpar.lost_ranges() == []
        assert compare_with_truth(lpar, out) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.fixture(scope="module")
def plain_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    base = tmp_path_factory.mktemp("plain")
    lpar = make_lpar(base / "lpar", memory="768M")
    return lpar, export_root(lpar, base / "root")


def _copy_root(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", "--reflink=auto", str(src), str(dst)], check=True)
    return dst


def _corrupt(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize(
    ("what", "expect"),
    [
        ("header-version", "ibm,kernel-dump"),
        ("header-truncated", "truncated dump header"),
        ("header-error-flag", "not valid"),
        ("map-text", "release_region"),
        ("vmcore-magic", "vmcore"),
        ("vmcore-truncated", "vmcore"),
        ("vmcore-phdr", "vmcore"),
    ],
)
def test_corrupt_input_gives_one_line_and_releases_nothing(
    plain_root: tuple[object, Path], tmp_path: Path, what: str, expect: str
) -> None:
    _, src = plain_root
    root = _copy_root(src, tmp_path / "root")
    header = root / "sys/firmware/devicetree/base/rtas/ibm,kernel-dump"
    vmcore = root / "proc/vmcore"
    os.chmod(vmcore, 0o600)
    if what == "header-version":
        _corrupt(header, 0, b"\x00\x00\x00\x07")
    elif what == "header-truncated":
        header.write_bytes(header.read_bytes()[:100])
    elif what == "header-error-flag":
        _corrupt(header, 6, b"\xe0\x00")
    elif what == "map-text":
        (root / "sys/kernel/release_region").write_text("CPU:0x2f7f0000-0xe14: HPTE:junk\n")
    elif what == "vmcore-magic":
        _corrupt(vmcore, 0, b"\x7fELG")
    elif what == "vmcore-truncated":
        os.truncate(vmcore, 100)
    elif what == "vmcore-phdr":
        _corrupt(vmcore, 64 + 56 + 8, (1 << 62).to_bytes(8, "big"))  # 1st PT_LOAD's offset
    before = (root / "sys/kernel/release_region").read_bytes()
    res = hvdump("collect", "--root", str(root), "-o", str(tmp_path / "out"))
    assert res.returncode == 1, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hvdump: error: "), res.stderr
    assert expect in lines[0], lines[0]
    # nothing written to release_region: nothing released
    assert (root / "sys/kernel/release_region").read_bytes() == before


def test_no_dump_waiting_says_so(tmp_path: Path) -> None:
    res = hvdump("collect", "--root", str(tmp_path), "-o", str(tmp_path / "out"))
    assert res.returncode == 1 and "no dump to collect" in res.stderr
    assert not (tmp_path / "out").exists()


def test_dry_run_and_json_progress(plain_root: tuple[object, Path], tmp_path: Path) -> None:
    _, root = plain_root
    res = hvdump("collect", "--root", str(root), "-o", str(tmp_path / "out"), "--dry-run")
    assert res.returncode == 0 and "release (progressive)" in res.stdout
    assert not (tmp_path / "out").exists()
    res = hvdump(
        "collect", "--root", str(root), "-o", str(tmp_path / "out"), "--release", "never", "--json"
    )
    assert res.returncode == 0, res.stderr
    import json

    events = [json.loads(line) for line in res.stdout.splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["bytes_done"] == progress[-1]["bytes_total"]
    assert {"rate_bytes_per_s", "eta_s", "released_bytes", "reserved_bytes"} <= set(progress[0])
    assert events[-1]["event"] == "done"
    # a rerun of a finished collection changes nothing and says so
    res = hvdump("collect", "--root", str(root), "-o", str(tmp_path / "out"), "--release", "never")
    assert res.returncode == 0 and "already collected" in res.stdout


def test_scrub_zeroes_named_data_and_records_it(
    plain_root: tuple[object, Path], tmp_path: Path
) -> None:
    lpar, root = plain_root
    filt = tmp_path / "filter"
    filt.write_text("# secrets\nerase init_uts_ns size 64\n")
    out = tmp_path / "out"
    res = hvdump(
        "collect", "--root", str(root), "-o", str(out), "--release", "never", "--scrub", str(filt)
    )
    assert res.returncode == 0, res.stderr
    from tests.collect_support import manifest

    m = manifest(out)
    # the symbol's address comes from the kernel image's VMCOREINFO
    (rng,) = m["scrub"]
    assert rng["symbol"] == "init_uts_ns" and rng["size"] == 64
    paddr = rng["paddr"]
    assert rng["vaddr"] == 0xC000000000000000 + paddr
    base, off = paddr // 65536 * 65536, paddr % 65536
    assert off + 64 <= 65536
    from drgn_hvdump.codecs import decompress_page
    from drgn_hvdump.formats.kdump import KdumpFile

    with KdumpFile.open(out / "dump.kdump", decompress_page) as kd:
        page = kd.read_page(base // 65536)
        erase = os.pread(
            kd._f.fileno(), kd.sub_header.size_eraseinfo, kd.sub_header.offset_eraseinfo
        )
    want = lpar.expected(base, 65536)  # type: ignore[attr-defined]
    assert page == want[:off] + bytes(64) + want[off + 64 :]
    assert erase == b"erase init_uts_ns size 64\n"
    assert verify_dir(out)[0]
    filt.write_text("erase no_such_symbol size 8\n")
    res = hvdump("collect", "--root", str(root), "-o", str(tmp_path / "o2"), "--scrub", str(filt))
    assert res.returncode == 1 and "no_such_symbol" in res.stderr
