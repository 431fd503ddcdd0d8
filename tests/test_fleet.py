"""hvsim fleet up/down/status: a seeded mix of simulated LPARs and its Ansible inventory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from drgn_hvdump.capture import open_capture
from hvsim.fleet import _kinds, fleet_down, fleet_status, fleet_up, load_fleet
from hvsim.fuse_root import is_mounted
from tests.test_ansible_helpers import have_fuse

pytestmark = [pytest.mark.fuse, pytest.mark.skipif(not have_fuse(), reason="needs FUSE")]


def test_seeded_mix_is_reproducible_and_mixed() -> None:
    a = _kinds(8, 3, None)
    assert a == _kinds(8, 3, None)
    kinds = [k for k, _ in a]
    assert kinds.count("crashed") == 5 and kinds.count("healthy") == 2
    assert kinds.count("no-firmware") == 1
    assert len({s for k, s in a if k == "crashed"}) >= 3  # different scenarios
    assert _kinds(8, 4, None) != a


def test_fleet_up_status_down(tmp_path: Path) -> None:
    d = tmp_path / "fleet"
    hosts = fleet_up(d, 8, seed=2, memory="1G")
    try:
        inv = yaml.safe_load((d / "inventory.yml").read_text())
        group = inv["all"]["children"]["lpars"]
        assert group["vars"]["ansible_connection"] == "local"
        assert group["vars"]["ansible_python_interpreter"] == "{{ ansible_playbook_python }}"
        assert sorted(group["hosts"]) == [h.name for h in hosts]
        for h in hosts:
            hv = group["hosts"][h.name]
            assert hv["hvdump_root"] == h.root and is_mounted(h.mount)
            st = open_capture(h.root).state()
            if h.kind == "crashed":
                assert st.dump_waiting and st.valid and st.reserved_bytes > 0
            elif h.kind == "healthy":
                assert not st.dump_waiting and st.firmware_supported and st.dump_enabled
            else:
                assert not st.firmware_supported
        rows = fleet_status(d)
        assert [r["dump_waiting"] for r in rows] == [h.kind == "crashed" for h in hosts]
        out = subprocess.run(
            [sys.executable, "-m", "hvsim", "fleet", "status", "--dir", str(d), "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert len(json.loads(out.stdout)) == 8
    finally:
        assert fleet_down(d) == []
    assert not d.exists()
    assert not any(is_mounted(h.mount) for h in hosts)


def test_fleet_cli_kinds_and_corrupt_header(tmp_path: Path) -> None:
    d = tmp_path / "f"
    cmd = [sys.executable, "-m", "hvsim", "fleet"]
    subprocess.run(
        [
            *cmd,
            "up",
            "--count",
            "3",
            "--dir",
            str(d),
            "--kinds",
            "corrupt-header,crashed:oops,healthy",
        ],
        check=True,
        capture_output=True,
    )
    try:
        _, hosts = load_fleet(d)
        assert [h.kind for h in hosts] == ["corrupt-header", "crashed", "healthy"]
        assert hosts[1].scenario == "oops"
        st = open_capture(hosts[0].root).state()
        assert st.dump_waiting and not st.valid and "version" in st.reason
        again = subprocess.run(
            [*cmd, "up", "--count", "1", "--dir", str(d)], capture_output=True, text=True
        )
        assert again.returncode == 1 and "already up" in again.stderr
    finally:
        subprocess.run([*cmd, "down", "--dir", str(d)], check=True)
    assert not d.exists()


def test_a_crashed_lpar_too_small_for_a_dump_is_an_error(tmp_path: Path) -> None:
    """A 512M LPAR cannot register (the 256M capture region and its scratch area do not
    fit): a fleet that says "crashed" but holds no dump would test nothing."""
    from drgn_hvdump.errors import HvdumpError

    with pytest.raises(HvdumpError, match=r"lpar01: crashed, but no dump was taken .*768M"):
        fleet_up(tmp_path / "f", 1, kinds=["crashed"], memory="512M")
    assert not any(is_mounted(str(m)) for m in (tmp_path / "f/mnt").glob("*"))
