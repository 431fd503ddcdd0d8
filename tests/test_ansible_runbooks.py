"""Runbook commands not covered elsewhere: scrub (sensitive-data.md), a `dir`/NAS archive target
given with `-e` over the inventory's (archive-problems.md, inventories/nas.yml)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.sshd_support import free_port
from tests.test_ansible_helpers import (
    fleet,
    needs_ansible,
    recap,
    run_playbook,
    summary_lines,
)

pytestmark = [needs_ansible, pytest.mark.slow, pytest.mark.fuse]


def test_scrub_and_dir_target_override(tmp_path: Path) -> None:
    archive = tmp_path / "nas/hvdump"
    filt = tmp_path / "scrub.conf"
    filt.write_text("erase init_uts_ns size 64\n")
    with fleet(tmp_path / "fleet", 1, kinds=["crashed"], memory="1G", seed=3) as hosts:
        inv = yaml.safe_load((tmp_path / "fleet/inventory.yml").read_text())
        group = inv["all"]["children"]["lpars"]
        # The inventory's archive host is down; the operator sends this run to the NAS path.
        group["vars"]["hvdump_archive_target"] = {
            "type": "ssh",
            "location": "root@127.0.0.1",
            "port": free_port(),
            "path": "/srv/hvdump",
        }
        group["vars"]["hvdump_archive_remove_local"] = True
        inv_path = tmp_path / "inventory.yml"
        inv_path.write_text(yaml.safe_dump(inv))
        target = json.dumps({"hvdump_archive_target": {"type": "dir", "path": str(archive)}})
        res = run_playbook(
            "collect-dumps.yml",
            inv_path,
            tmp_path / "ansible",
            "-e",
            f"hvdump_scrub_filter={filt}",
            "-e",
            target,
            "-e",
            f"hvdump_report_file={tmp_path / 'report.json'}",
        )
        assert res.returncode == 0, res.stdout[-4000:]
        report = json.loads((tmp_path / "report.json").read_text())["hosts"][hosts[0].name]
        assert report["status"] == "collected", report
        assert report["archive"] == [str(archive / report["dump_id"])]
        copy = archive / report["dump_id"]
        manifest = json.loads((copy / "manifest.json").read_text())
        assert [r["symbol"] for r in manifest["scrub"]] == ["init_uts_ns"]
        assert (copy / "dump.kdump").exists()
        local = Path(report["output"])
        assert not (local / "dump.kdump").exists() and (local / "ARCHIVED.json").exists()

        # The rerun has nothing to do.
        again = run_playbook("collect-dumps.yml", inv_path, tmp_path / "ansible", "-e", target)
        assert again.returncode == 0, again.stdout[-3000:]
        assert recap(again.stdout)[hosts[0].name]["changed"] == 0


def test_status_shows_each_lpars_interface_on_a_mixed_fleet(tmp_path: Path) -> None:
    """dump-status.yml on phyp and fadump LPARs: the interface column, fadump's own
    registered flag, and facts that name the interface."""
    kinds = ["crashed", "crashed", "healthy", "healthy"]
    with fleet(
        tmp_path / "fleet", 4, kinds=kinds, memory="1G", seed=4, dumps=["phyp", "fadump"]
    ) as hosts:
        res = run_playbook(
            "dump-status.yml",
            tmp_path / "fleet/inventory.yml",
            tmp_path / "ansible",
            "-e",
            f"hvdump_report_file={tmp_path / 'status.json'}",
        )
        assert res.returncode == 0, res.stdout[-3000:]
    report = json.loads((tmp_path / "status.json").read_text())
    lines = {ln.split()[0]: ln.split() for ln in summary_lines(res.stdout)[2:]}
    for h in hosts:
        want = "fadump" if h.dump == "fadump" else "phyp"
        assert lines[h.name][1] == want, lines[h.name]
        assert report[h.name]["interface"] == ("fadump" if h.dump == "fadump" else "phyp-dump")
        crashed = h.kind == "crashed"
        assert report[h.name]["dump_waiting"] is crashed
        assert report[h.name]["registered"] is not crashed, report[h.name]
        assert lines[h.name][3] == ("no" if crashed else "yes")
    assert recap(res.stdout)[hosts[0].name]["changed"] == 0
