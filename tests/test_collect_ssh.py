"""``hvdump collect --output ssh://...``: straight to an archive host, through a real sshd.

The archive host is this machine's loopback: an sshd with throwaway keys
(:class:`tests.sshd_support.Sshd`), so the remote directory can be checked
directly: against hvsim's ground truth, with ``hvdump verify``, drgn and
libkdumpfile, and with hvsim's own record of every release against the
journal's acknowledged chunks.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drgn_hvdump.dumpdir.remote import SshTarget
from drgn_hvdump.dumpdir.wire import PROTOCOL, REPLY, REQUEST
from hvsim import Lpar
from tests.collect_support import (
    FUSE_MISSING,
    compare_with_truth,
    hvdump,
    make_lpar,
    mounted,
    released_unsaved,
    start_collect,
)
from tests.sshd_support import BIN, SSHD, Sshd

# The tests that collect need both; the URL, registry and protocol tests neither.
needs_sshd = pytest.mark.skipif(not SSHD.exists(), reason="needs openssh-server")
needs_fuse = [
    pytest.mark.skipif(bool(FUSE_MISSING), reason=FUSE_MISSING or "FUSE"),
    pytest.mark.fuse,
]


def lpar_over_ssh(fn: Any) -> Any:
    """A test that collects an hvsim LPAR (FUSE) over the loopback sshd."""
    for mark in (needs_sshd, *needs_fuse):
        fn = mark(fn)
    return fn


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()


def ssh_flags(sshd: Sshd, known_hosts: Path | None = None) -> list[str]:
    """The collect options that reach the loopback sshd with its throwaway keys."""
    return [
        "--ssh-identity",
        str(sshd.user_key),
        "--ssh-option",
        f"UserKnownHostsFile={known_hosts or sshd.known_hosts}",
        "--ssh-option",
        "StrictHostKeyChecking=yes",
        "--remote-hvdump",
        str(BIN / "hvdump"),
    ]


def url(sshd: Sshd, path: Path) -> str:
    return f"ssh://root@127.0.0.1:{sshd.port}{path}"


def _error_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def _untouched(lpar: Lpar) -> None:
    """Nothing was released: the dump still waits whole."""
    assert lpar.released_ranges() == []
    assert lpar.status()["dump_waiting"]


# -- the URL ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("ssh://archive/dumps/a", ("archive", "/dumps/a", None, None)),
        ("ssh://dump@archive:2222/dumps/a", ("archive", "/dumps/a", "dump", 2222)),
        ("ssh://archive/~/dumps", ("archive", "dumps", None, None)),
        ("ssh://[fd00::1]:22/d", ("[fd00::1]", "/d", None, 22)),
    ],
)
def test_url_parsing(text: str, want: tuple[str, str, str | None, int | None]) -> None:
    t = SshTarget.parse(text)
    assert (t.host, t.path, t.user, t.port) == want
    assert SshTarget.parse(t.url) == t
    argv = t.argv()
    assert argv[-1] == "hvdump receive" and "BatchMode=yes" in argv


@pytest.mark.parametrize(
    "text", ["ssh://archive", "ssh://archive/", "ssh://u:pw@h/d", "ssh://h/d?x=1"]
)
def test_bad_url_one_line(text: str) -> None:
    res = hvdump("collect", "--root", "/nonexistent", "-o", text)
    assert res.returncode != 0
    assert "ssh://[user@]host[:port]/absolute/path" in _error_line(res)


def test_ssh_flags_need_an_ssh_output(tmp_path: Path) -> None:
    res = hvdump(
        "collect", "--root", "/nonexistent", "-o", str(tmp_path / "o"), "--ssh-identity", "k"
    )
    assert res.returncode != 0 and "apply to an ssh://host/path output only" in _error_line(res)


# -- a collection straight to the archive host -------------------------------------------


@lpar_over_ssh
@pytest.mark.parametrize(("kind", "fmt"), [("phyp", "kdump"), ("fadump", "elf")])
def test_collect_to_archive_host(sshd: Sshd, tmp_path: Path, kind: str, fmt: str) -> None:
    """The remote directory is a normal dump directory: it verifies there, it equals
    hvsim's ground truth, drgn opens it; nothing was released before its chunk was
    acknowledged; the LPAR is back in production and re-registered."""
    extra = {"fadump": {"dump": "fadump", "endian": "little", "page_size": 4096}}.get(kind, {})
    lpar = make_lpar(tmp_path / "lpar", memory="1G", **extra)
    archive = tmp_path / "archive" / "lpar01"
    with mounted(lpar, tmp_path / "root") as root:
        res = hvdump(
            "collect", "--root", str(root), "-o", url(sshd, archive), "--format", fmt,
            "--chunk-size", "8M", "--no-progress", *ssh_flags(sshd),
        )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"127.0.0.1:{archive}/dump." in res.stdout
    assert compare_with_truth(lpar, archive) == []
    assert released_unsaved(lpar, archive) == []
    ver = hvdump("verify", str(archive))
    assert ver.returncode == 0 and "OK" in ver.stdout, ver.stdout + ver.stderr
    st = lpar.status()
    assert st["state"] == "running" and st["protected"], st
    for p in archive.iterdir():
        assert p.stat().st_mode & 0o777 == 0o600, p
    assert archive.stat().st_mode & 0o777 == 0o700
    # A rerun finds the finished collection there.
    with mounted(lpar, tmp_path / "root") as root:
        again = hvdump(
            "collect", "--root", str(root), "-o", url(sshd, archive), "--no-progress",
            "--format", fmt, *ssh_flags(sshd),
        )  # fmt: skip
    assert again.returncode == 0 and "already collected" in again.stdout, again.stderr
    drgn = pytest.importorskip("drgn")
    prog = drgn.Program()
    prog.set_core_dump(str(archive / f"dump.{'kdump' if fmt == 'kdump' else 'elf'}"))
    addr, size = json.loads((archive / "manifest.json").read_text())["dump"]["segments"][-1]
    assert prog.read(addr + size - 4096, 4096, True) == lpar.expected(addr + size - 4096, 4096)


# -- faults: kill the collector, the receiver, the connection -----------------------------


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _receivers(sshd_pid: int) -> list[int]:
    """The receivers this test's sshd started (not another test run's on the same machine)."""
    out = subprocess.run(["pgrep", "-f", "hvdump receive"], capture_output=True, text=True)
    found = []
    for pid in (int(p) for p in out.stdout.split()):
        up = pid
        while up > 1 and up != sshd_pid:
            up = _parent(up)
        if up == sshd_pid:
            found.append(pid)
    return found


def _ssh_child(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid), "-x", "ssh"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _journal_done(archive: Path) -> bool:
    j = archive / "journal.jsonl"
    return j.exists() and any(
        json.loads(ln).get("t") == "done" for ln in j.read_text().splitlines() if ln.endswith("}")
    )


@lpar_over_ssh
def test_kills_at_random_points(sshd: Sshd, tmp_path: Path) -> None:
    """kill -9 of the collector, of the receiver on the archive host, and of the ssh
    connection, at random points (at least 20 of each landing mid-run): after every
    kill, hvsim's record shows no release of memory whose chunk the archive host had
    not acknowledged; every collection then resumes to a dump equal to the truth."""
    rng = random.Random(2026)
    landed = {"collector": 0, "receiver": 0, "ssh": 0}
    lpars = 0
    while min(landed.values()) < 20:
        lpars += 1
        assert lpars <= 12, landed
        lpar = make_lpar(tmp_path / f"lpar{lpars}", memory="1G", seed=lpars)
        archive = tmp_path / "archive" / f"lpar{lpars}"
        with mounted(lpar, tmp_path / f"root{lpars}") as root:
            for _attempt in range(30):
                proc = start_collect(root, url(sshd, archive), "--wait", *ssh_flags(sshd))
                what = rng.choice([k for k, n in landed.items() if n < 20] or list(landed))
                time.sleep(rng.uniform(0.3, 2.0))
                if proc.poll() is None:
                    if what == "collector":
                        proc.kill()
                    elif what == "ssh":
                        for pid in _ssh_child(proc.pid):
                            os.kill(pid, signal.SIGKILL)
                    else:
                        for pid in _receivers(sshd.proc.pid):
                            os.kill(pid, signal.SIGKILL)
                _, err = proc.communicate(timeout=120)
                if proc.returncode == 0:
                    break
                if not _journal_done(archive):
                    landed[what] += 1
                    if what != "collector":
                        msg = err.decode().strip().splitlines()
                        assert "Traceback" not in err.decode(), err
                        assert msg and "run the same command again" in msg[-1], err
                assert released_unsaved(lpar, archive) == [], what
            else:
                pytest.fail(f"lpar{lpars}: not finished after 30 runs")
        assert compare_with_truth(lpar, archive) == []
        assert released_unsaved(lpar, archive) == []
        assert hvdump("verify", str(archive)).returncode == 0
        assert lpar.status()["protected"]
    print(f"\n[ssh kills] {landed} mid-run over {lpars} LPARs: 0 releases of unacknowledged data")


# -- one clear line for each way the archive host can fail ---------------------------------


@pytest.fixture()
def waiting(tmp_path: Path) -> Iterator[tuple[Lpar, Path]]:
    lpar = make_lpar(tmp_path / "lpar", memory="1G")
    with mounted(lpar, tmp_path / "root") as root:
        yield lpar, root


@lpar_over_ssh
def test_host_key_changed(sshd: Sshd, tmp_path: Path, waiting: tuple[Lpar, Path]) -> None:
    lpar, root = waiting
    other = tmp_path / "known_hosts"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True
    )
    key = (tmp_path / "k.pub").read_text().split()
    other.write_text(f"[127.0.0.1]:{sshd.port} {key[0]} {key[1]}\n")
    res = hvdump(
        "collect", "--root", str(root), "-o", url(sshd, tmp_path / "a"), *ssh_flags(sshd, other)
    )
    assert res.returncode != 0
    assert "host key is not the one known_hosts holds" in _error_line(res)
    assert not (tmp_path / "a").exists()
    _untouched(lpar)


@lpar_over_ssh
def test_remote_hvdump_missing(sshd: Sshd, tmp_path: Path, waiting: tuple[Lpar, Path]) -> None:
    lpar, root = waiting
    flags = ssh_flags(sshd)
    flags[flags.index("--remote-hvdump") + 1] = "/nonexistent/bin/hvdump"
    res = hvdump("collect", "--root", str(root), "-o", url(sshd, tmp_path / "a"), *flags)
    assert res.returncode != 0
    line = _error_line(res)
    assert "hvdump is not installed there" in line and "--remote-hvdump" in line, line
    _untouched(lpar)


@lpar_over_ssh
def test_remote_hvdump_of_another_protocol(
    sshd: Sshd, tmp_path: Path, waiting: tuple[Lpar, Path]
) -> None:
    """A receiver that answers with another protocol version: refused before anything."""
    lpar, root = waiting
    fake = tmp_path / "old-hvdump"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, struct, sys\n"
        f"h = sys.stdin.buffer.read({REQUEST.size})\n"
        f"_, _, _, _, jl, dl = struct.unpack({REQUEST.format!r}, h)\n"
        "sys.stdin.buffer.read(jl + dl)\n"
        f"js = json.dumps({{'protocol': {PROTOCOL + 1}, 'version': '9.9.9'}}).encode()\n"
        f"sys.stdout.buffer.write(struct.pack({REPLY.format!r}, 0, 0, len(js), 0) + js)\n"
        "sys.stdout.buffer.flush()\n"
    )
    fake.chmod(0o755)
    flags = ssh_flags(sshd)
    flags[flags.index("--remote-hvdump") + 1] = str(fake)
    res = hvdump("collect", "--root", str(root), "-o", url(sshd, tmp_path / "a"), *flags)
    assert res.returncode != 0
    line = _error_line(res)
    assert "hvdump 9.9.9 there speaks another protocol" in line, line
    _untouched(lpar)


@lpar_over_ssh
def test_remote_disk_full_then_resume(
    sshd: Sshd, tmp_path: Path, waiting: tuple[Lpar, Path]
) -> None:
    """The archive host's disk fills mid-run: one line, nothing unacknowledged released;
    with space again the same command resumes and completes."""
    lpar, root = waiting
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=700", "tmpfs", str(small)], check=True
    )
    try:
        archive = small / "d"
        cmd = ["collect", "--root", str(root), "-o", url(sshd, archive), "--format", "elf",
               "--chunk-size", "4M", "--no-progress", *ssh_flags(sshd)]  # fmt: skip
        res = hvdump(*cmd)
        assert res.returncode != 0
        line = _error_line(res)
        assert "127.0.0.1:" in line and "no space left on the output device" in line, line
        assert released_unsaved(lpar, archive) == []
        assert lpar.released_ranges(), "nothing was released before the disk filled"
        subprocess.run(["mount", "-o", "remount,size=700m", str(small)], check=True)
        res = hvdump(*cmd)
        assert res.returncode == 0, res.stderr
        assert compare_with_truth(lpar, archive) == []
        assert released_unsaved(lpar, archive) == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


@lpar_over_ssh
def test_remote_directory_in_use(sshd: Sshd, tmp_path: Path, waiting: tuple[Lpar, Path]) -> None:
    """Another session holds the remote directory: refused with exit 75 (after the grace
    a dying receiver gets), nothing released."""
    lpar, root = waiting
    archive = tmp_path / "busy"
    from drgn_hvdump.dumpdir.remote import RemoteDir

    t = SshTarget.parse(
        url(sshd, archive),
        identity=str(sshd.user_key),
        options=(f"UserKnownHostsFile={sshd.known_hosts}",),
        remote_hvdump=str(BIN / "hvdump"),
    )
    holder = RemoteDir.open(t)
    try:
        assert holder.lock(wait=False, timeout=None) is None
        res = hvdump("collect", "--root", str(root), "-o", url(sshd, archive), *ssh_flags(sshd))
    finally:
        holder.close()
    assert res.returncode == 75, res.stderr
    assert "the output directory is in use on 127.0.0.1 by pid" in _error_line(res)
    _untouched(lpar)


def test_registry_names_the_archive_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """drgn on the live root finds the collection registered, sees it is on an archive host,
    and says where to read released memory instead of looking for a local directory."""
    from drgn_hvdump.dumpdir.registry import find_collection, register_collection

    monkeypatch.setenv("HVDUMP_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("HVDUMP_OUTPUT", raising=False)
    root = tmp_path / "root"
    root.mkdir()
    where = "ssh://dumps@archive:2222/srv/dumps/lpar01"
    assert register_collection(root, where, "id1", time.time()) == ""
    warnings: list[str] = []
    assert find_collection(root, "id1", warnings) is None
    assert len(warnings) == 1 and where in warnings[0] and "archive host" in warnings[0]


@lpar_over_ssh
def test_convert_to_archive_host(sshd: Sshd, tmp_path: Path) -> None:
    """hvdump convert writes its kdump file and manifest on the archive host as here; a second
    convert into it is refused unless --force; a bad vmcore creates nothing there."""
    lpar = make_lpar(tmp_path / "lpar", memory="1G")
    with mounted(lpar, tmp_path / "root") as root:
        local = tmp_path / "local"
        res = hvdump("collect", "--root", str(root), "-o", str(local), "--format", "elf",
                     "--release", "never", "--no-progress")  # fmt: skip
        assert res.returncode == 0, res.stderr
    archive = tmp_path / "archive" / "conv"
    cmd = [
        "convert",
        str(local / "dump.elf"),
        url(sshd, archive),
        "--no-progress",
        *ssh_flags(sshd),
    ]
    res = hvdump(*cmd)
    assert res.returncode == 0, res.stderr
    assert (archive / "dump.kdump").exists() and (archive / "manifest.json").exists()
    assert hvdump("verify", str(archive)).returncode == 0
    assert compare_with_truth(lpar, archive) == []
    again = hvdump(*cmd)
    assert again.returncode != 0 and "already holds a dump; give --force" in _error_line(again)
    assert hvdump(*cmd, "--force").returncode == 0
    bad = tmp_path / "bad.elf"
    bad.write_bytes(b"not an ELF file at all" * 10)
    res = hvdump("convert", str(bad), url(sshd, tmp_path / "archive" / "bad"), *ssh_flags(sshd))
    assert res.returncode != 0 and not (tmp_path / "archive" / "bad").exists()


# -- the protocol, without sshd: "ssh" runs the receiver here ------------------------------


@pytest.fixture()
def local_receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SshTarget:
    """An SshTarget whose "ssh" starts hvdump receive on this machine (no sshd needed)."""
    fake = tmp_path / "fake-ssh"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -m drgn_hvdump.cli receive\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    return SshTarget.parse(f"ssh://archive{tmp_path}/d", ssh=(str(fake),))


def test_protocol_durable_only_after_the_reply(local_receiver: SshTarget, tmp_path: Path) -> None:
    """Files are made with the local rules (0600, in a 0700 directory); a hash is of what
    the disk holds; a write the archive host refused answers the next request (the sync
    that would have counted it) with its error, naming host:path."""
    from drgn_hvdump.dumpdir.remote import RemoteDir

    d = RemoteDir.open(local_receiver)
    try:
        assert str(d.path) == f"archive:{tmp_path}/d" and d.lock(wait=False, timeout=None) is None
        f = d.open_file("dump.elf", create=True, exclusive=True)
        f.pwrite(b"x" * 8192, 4096)
        f.sync()
        from drgn_hvdump import native

        assert f.hash(4096, 8192) == native.hash64(b"x" * 8192)
        assert f.same(4096, [b"x" * 4096, b"x" * 4096]) and not f.same(0, [b"x" * 10])
        assert f.size() == 12288 and f.read(4, 0) == bytes(4)
        assert (tmp_path / "d/dump.elf").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "d").stat().st_mode & 0o777 == 0o700
        f.pwrite(b"y", 1 << 62)  # past any file system's largest file: refused there
        with pytest.raises(OSError) as err:
            f.sync()
        assert f"archive:{tmp_path}/d/dump.elf" in str(err.value)
        with pytest.raises(OSError):
            f.hash(0, 10)  # and every request after it: nothing more counts
    finally:
        d.close()
    assert d.receiver_cpu is not None or d.conn.lost is not None


# -- the check before collecting (a dry run; the Ansible module's target check) -----------


def test_probe_dir_changes_nothing(tmp_path: Path) -> None:
    from drgn_hvdump.dumpdir.outdir import probe_dir
    from drgn_hvdump.errors import HvdumpError

    new = tmp_path / "a" / "b"
    found = probe_dir(new)
    assert found["exists"] is False and int(str(found["free_bytes"])) > 0
    assert not (tmp_path / "a").exists()
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    assert probe_dir(mine)["exists"] is True and list(mine.iterdir()) == []
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(HvdumpError, match="others may write into it"):
        probe_dir(shared)
    (tmp_path / "file").write_text("x")
    with pytest.raises(HvdumpError, match="is not a directory"):
        probe_dir(tmp_path / "file" / "d")


@lpar_over_ssh
def test_dry_run_checks_the_archive_host(sshd: Sshd, tmp_path: Path) -> None:
    """``collect --dry-run`` to an archive host logs in, starts the receiver and checks the
    directory, making nothing there; a directory that cannot be written is one line, before
    anything is read or released."""
    lpar = make_lpar(tmp_path / "lpar", memory="1G")
    archive = tmp_path / "archive" / "lpar01"
    ro = tmp_path / "ro"
    ro.mkdir()
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the directory should go")
    with mounted(lpar, tmp_path / "root") as root:
        res = hvdump(
            "collect", "--root", str(root), "-o", url(sshd, archive), "--dry-run",
            *ssh_flags(sshd),
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert "archive host: root@127.0.0.1, hvdump " in res.stdout
        assert f"{archive} can be created" in res.stdout and "GiB free" in res.stdout
        assert not (tmp_path / "archive").exists()
        bad = hvdump(
            "collect", "--root", str(root), "-o", url(sshd, blocked / "d"), "--dry-run",
            *ssh_flags(sshd),
        )  # fmt: skip
        assert bad.returncode != 0
        assert f"{blocked} is not a directory" in _error_line(bad)
        from drgn_hvdump import api

        ssh = ("ssh", "-o", f"UserKnownHostsFile={sshd.known_hosts}")
        found = api.check_target(
            url(sshd, archive), ssh=ssh, identity=str(sshd.user_key),
            remote_hvdump=str(BIN / "hvdump"),
        )  # fmt: skip
        assert found["exists"] is False and found["path"] == str(archive)
        from drgn_hvdump.errors import HvdumpError

        with pytest.raises(HvdumpError, match="install hvdump"):
            api.check_target(
                url(sshd, archive), ssh=ssh, identity=str(sshd.user_key),
                remote_hvdump="/nonexistent/hvdump",
            )  # fmt: skip
    _untouched(lpar)
