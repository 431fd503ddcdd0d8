"""The capture-boot service: its configuration, its unit, and ``hvdump service run`` on hvsim roots."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from drgn_hvdump import api
from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.service import (
    DEFAULT_CONFIG,
    UNIT_NAME,
    ServiceConfig,
    parse_config,
    render_unit,
)
from hvsim import Lpar
from hvsim.pytest_plugin import mounted

HVDUMP = str(Path(sys.executable).parent / "hvdump")


def test_the_shipped_configuration_is_the_defaults() -> None:
    assert parse_config(DEFAULT_CONFIG, Path("x.toml")) == ServiceConfig()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[collect\n", "not valid TOML"),
        ("[colect]\n", "unknown table [colect] (known: collect, archive, service)"),
        ("[collect]\noutptu = '/x'\n", "[collect] has no key 'outptu'"),
        ("[collect]\ncompress = 'xz'\n", "[collect] compress 'xz': one of"),
        ("[collect]\ndump_level = 32\n", "[collect] dump_level 32: 0 to 31"),
        ("[collect]\ndump_level = '31'\n", "[collect] dump_level must be a int"),
        ("[collect]\noutput = 'rel/dir'\n", "an absolute path"),
        ("[collect]\nrelease = 'later'\n", "[collect] release 'later'"),
        ("[archive]\ntarget = 'nas:/x'\n", "[archive] target 'nas:/x': ssh://"),
        ("[service]\non_failure = 'reboot'\n", "[service] on_failure 'reboot'"),
        ("[archive]\nfallback_local = 1\n", "[archive] fallback_local must be a bool"),
    ],
)
def test_a_bad_configuration_is_one_line_naming_the_key(text: str, says: str) -> None:
    with pytest.raises(HvdumpError) as exc:
        parse_config(text, Path("/etc/hvdump/hvdump.toml"))
    msg = str(exc.value)
    assert msg.startswith("/etc/hvdump/hvdump.toml: ") and says in msg and "\n" not in msg
    assert msg.endswith("check with: hvdump service status")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    proc = subprocess.run(
        [HVDUMP, "service", "install", "--unit-dir", str(tmp_path / "units"),
         "--config", str(tmp_path / "etc/hvdump.toml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    unit = tmp_path / "units" / UNIT_NAME
    assert unit.read_text() == render_unit(
        str(Path(HVDUMP).resolve()), tmp_path / "etc/hvdump.toml"
    )
    config = tmp_path / "etc/hvdump.toml"
    assert config.read_text() == DEFAULT_CONFIG
    assert config.stat().st_mode & 0o777 == 0o600
    assert config.parent.stat().st_mode & 0o777 == 0o700
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    again = subprocess.run(proc.args, capture_output=True, text=True, check=False)
    assert f"{unit}: unchanged" in again.stdout and "kept (checked)" in again.stdout


def _service(root: Path, config: Path, *op: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HVDUMP, "service", *op, "--root", str(root), "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


@pytest.mark.hvsim_fuse
@pytest.mark.parametrize("dump", ["phyp", "fadump"])
def test_run_collects_releases_and_leaves_the_lpar_protected(
    hvsim_lpar_factory: Callable[..., Lpar], tmp_path: Path, dump: str
) -> None:
    lpar = hvsim_lpar_factory(dump=dump, seed=21)
    config = tmp_path / "hvdump.toml"
    crash = tmp_path / "crash"
    config.write_text(
        f'[collect]\noutput = "{crash}"\ncompress = "lzo"\n[service]\nprogress_interval = 0.01\n'
    )
    with mounted(lpar, tmp_path / "root") as root:
        before = api.facts(root)
        proc = _service(root, config, "run")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        after = api.facts(root)
        again = _service(root, config, "run")
        status = _service(root, config, "status")
    out = proc.stdout
    assert f"dump waiting: {before['reserved_bytes'] / (1 << 30):.2f} GiB reserved" in out
    assert "progress: " in out and "% read" in out
    assert "still reserved; registered for the next crash: yes" in out
    assert not after["dump_waiting"] and after["registered"]
    (dump_dir,) = crash.iterdir()
    assert dump_dir.name == api.dump_id(socket.gethostname(), before)
    assert f"collected into {dump_dir}" in out
    assert api.verify(dump_dir)[0]
    assert (
        again.returncode == 0
        and "no dump waiting" in again.stdout
        and "nothing to do" in again.stdout
    )
    assert "dump waiting:  no" in status.stdout


@pytest.mark.hvsim_fuse
@pytest.mark.parametrize("on_failure", ["keep", "give-up"])
def test_an_unusable_archive_host_keeps_the_memory_or_gives_it_up(
    hvsim_lpar_factory: Callable[..., Lpar], tmp_path: Path, on_failure: str
) -> None:
    lpar = hvsim_lpar_factory(seed=22)
    config = tmp_path / "hvdump.toml"
    config.write_text(
        f'[collect]\noutput = "{tmp_path / "crash"}"\n'
        '[archive]\ntarget = "ssh://nobody@127.0.0.1:1/srv"\nfallback_local = false\n'
        'ssh_options = ["ConnectTimeout=5"]\n'
        f'[service]\non_failure = "{on_failure}"\n'
    )
    with mounted(lpar, tmp_path / "root") as root:
        before = api.facts(root)
        proc = _service(root, config, "run")
        after = api.facts(root)
    assert proc.returncode == 1
    assert "archive host cannot be used" in proc.stdout
    assert not (tmp_path / "crash").exists()
    if on_failure == "keep":
        assert after["dump_waiting"] and after["reserved_bytes"] == before["reserved_bytes"]
        assert "the memory stays reserved (on_failure = keep)" in proc.stdout
    else:
        assert not after["dump_waiting"] and "handed back without the dump" in proc.stdout


def test_dump_ids_are_stable_and_safe_directory_names() -> None:
    crashed = {"crash_time": 1796533333, "header": {"status": 1}, "reason": "ok"}
    assert api.dump_id("lpar04.example.com", crashed) == "lpar04-20261206-050213"
    assert api.dump_id("(none)", crashed) == "lpar-20261206-050213"  # initramfs
    assert api.dump_id("", crashed) == "lpar-20261206-050213"
    assert api.dump_id("a/b c", crashed) == "abc-20261206-050213"
    # No CRASHTIME: the header's hash, the same at every rerun.
    no_time = {"crash_time": None, "header": {"status": 1}, "reason": "ok"}
    first = api.dump_id("lpar04", no_time)
    assert first == api.dump_id("lpar04", dict(no_time)) and first.startswith("lpar04-")
    assert first != api.dump_id("lpar04", {**no_time, "header": {"status": 2}})


@pytest.mark.hvsim_fuse
def test_a_dump_another_collector_holds_is_left_to_it_even_with_give_up(
    hvsim_lpar_factory: Callable[..., Lpar], tmp_path: Path
) -> None:
    from drgn_hvdump.capture import open_capture
    from drgn_hvdump.collect.ownership import DumpLock

    lpar = hvsim_lpar_factory(seed=23)
    config = tmp_path / "hvdump.toml"
    config.write_text(
        f'[collect]\noutput = "{tmp_path / "crash"}"\n[service]\non_failure = "give-up"\n'
    )
    with mounted(lpar, tmp_path / "root") as root:
        lock = DumpLock(root, open_capture(root).lock_path)
        lock.acquire()  # an operator's collector, say
        try:
            proc = _service(root, config, "run")
        finally:
            lock.release()
        after = api.facts(root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "another collector holds the dump, leaving it to it" in proc.stdout
    assert after["dump_waiting"] and lpar.released_ranges() == []


@pytest.mark.hvsim_fuse
def test_a_stopped_local_collection_is_resumed_there_not_sent_to_the_archive(
    hvsim_lpar_factory: Callable[..., Lpar], tmp_path: Path
) -> None:
    lpar = hvsim_lpar_factory(seed=24)
    crash = tmp_path / "crash"
    config = tmp_path / "hvdump.toml"
    config.write_text(
        f'[collect]\noutput = "{crash}"\n'
        '[archive]\ntarget = "ssh://nobody@127.0.0.1:1/srv"\nfallback_local = false\n'
    )
    with mounted(lpar, tmp_path / "root") as root:
        before = api.facts(root)
        local = crash / api.dump_id(socket.gethostname(), before)
        crash.mkdir(mode=0o700)
        # An earlier run saved everything but released nothing (as if stopped there).
        first = subprocess.run(
            [HVDUMP, "collect", "--root", str(root), "-o", str(local), "--release", "never",
             "--no-progress"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert first.returncode == 0, first.stderr
        assert lpar.released_ranges() == []
        proc = _service(root, config, "run")
        after = api.facts(root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"resuming the collection in {local}" in proc.stdout
    assert "archive host" not in proc.stdout
    assert not after["dump_waiting"] and api.verify(local)[0]
