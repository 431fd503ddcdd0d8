"""The role test playbooks (tests/tests_*.yml, linux-system-roles style), an archive host that
refuses every write, and the nas.yml example inventory, all on one module-scoped fleet.

lpar03 runs tests_prepare.yml, tests_collect.yml and tests_archive.yml in that order;
lpar01 and lpar02 run collect-dumps.yml against an SSH archive host whose archive filesystem
is full (it passes the check before collecting, then refuses the copy), then again with
nas.yml's variables (a dir target).
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hvsim import Lpar
from tests.sshd_support import Sshd
from tests.test_ansible_helpers import (
    BIN,
    REPO,
    ansible_env,
    fleet,
    needs_ansible,
    needs_sshd,
    recap,
    run_playbook,
    summary_lines,
)

pytestmark = [needs_ansible, pytest.mark.slow, pytest.mark.fuse]


@pytest.fixture(scope="module")
def roles_fleet(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, dict[str, Any], list[Any]]]:
    base = tmp_path_factory.mktemp("roles-fleet")
    with fleet(base / "fleet", 3, kinds=["crashed"], memory="1G", seed=7) as hosts:
        inv = yaml.safe_load((base / "fleet/inventory.yml").read_text())
        yield base, inv, hosts


def _inventory(path: Path, inv: dict[str, Any], names: list[str], **group_vars: Any) -> Path:
    """The fleet's inventory restricted to ``names``, with more group variables."""
    inv = copy.deepcopy(inv)
    group = inv["all"]["children"]["lpars"]
    group["hosts"] = {n: v for n, v in group["hosts"].items() if n in names}
    group["vars"].update(group_vars)
    path.write_text(yaml.safe_dump(inv))
    return path


def _run(
    playbook: Path, inventory: Path, home: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ansible-playbook"), str(playbook), "-i", str(inventory), *extra],
        cwd=REPO,
        env=ansible_env(home),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_role_test_playbooks(
    roles_fleet: tuple[Path, dict[str, Any], list[Any]], tmp_path: Path
) -> None:
    _, inv, hosts = roles_fleet
    inv_path = _inventory(tmp_path / "inventory.yml", inv, ["lpar03"])
    archive = tmp_path / "archive"
    archive.mkdir(mode=0o700)
    for name, extra in (
        ("prepare", []),
        ("collect", []),
        ("archive", ["-e", f"tests_archive_path={archive}"]),
    ):
        res = _run(REPO / f"tests/tests_{name}.yml", inv_path, tmp_path / "ansible", *extra)
        assert res.returncode == 0, f"tests_{name}.yml\n{res.stdout[-4000:]}"
        r = recap(res.stdout)["lpar03"]
        assert r["failed"] == 0 and r["rescued"] >= 1, (name, r)
    copies = list(archive.iterdir())
    assert len(copies) == 1 and (copies[0] / "dump.kdump").exists()
    verify = subprocess.run(
        [str(BIN / "hvdump"), "verify", str(copies[0])], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    lpar03 = next(h for h in hosts if h.name == "lpar03")
    with Lpar.open(lpar03.lpar) as lpar:
        assert lpar.status()["protected"]


@needs_sshd
def test_archive_host_refusing_writes_then_nas_inventory(
    roles_fleet: tuple[Path, dict[str, Any], list[Any]],
    tmp_path: Path,
) -> None:
    """The archive host is full (1 MiB): it passes the check before collecting, then refuses the
    copies. Every host keeps its verified local copy and is reported failed; memory was released
    progressively, only for ranges already saved and verified locally. Then nas.yml's variables
    (a dir target) archive the same dumps. (An archive refusing every write is caught before
    collecting: tests/test_ansible_ownership.py.)"""
    _, inv, hosts = roles_fleet
    names = ["lpar01", "lpar02"]
    sshd = Sshd(tmp_path / "sshd")
    full = tmp_path / "archive-full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(full)], check=True)
    try:
        inv_path = _inventory(
            tmp_path / "inventory.yml",
            inv,
            names,
            **sshd.target_vars(full / "dumps"),
            hvdump_archive_remove_local=True,
        )
        report_file = tmp_path / "report.json"
        res = run_playbook(
            "collect-dumps.yml",
            inv_path,
            tmp_path / "ansible",
            "-e",
            f"hvdump_report_file={report_file}",
        )
    finally:
        subprocess.run(["umount", str(full)], check=False)
        sshd.stop()
    assert res.returncode == 2, res.stdout[-4000:]
    lines = summary_lines(res.stdout)
    report = json.loads(report_file.read_text())["hosts"]
    outputs: dict[str, Path] = {}
    for h in hosts:
        if h.name not in names:
            continue
        line = next(ln for ln in lines if ln.startswith(h.name + " "))
        assert "archive failed, the local copy is kept" in line, line
        rep = report[h.name]
        assert "No space left on device" in rep["reason"], rep
        assert rep["status"] == "failed" and rep["failed_task"].startswith(
            "Copy, verify on the archive"
        ), rep
        # The local copy is complete and verifies: what was released is saved.
        local = outputs[h.name] = Path(rep["output"])
        assert (local / "dump.kdump").exists() and not (local / "ARCHIVED.json").exists()
        verify = subprocess.run(
            [str(BIN / "hvdump"), "verify", str(local)], capture_output=True, text=True, check=False
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert int(rep["released_bytes"]) > 0
        with Lpar.open(h.lpar) as lpar:
            assert lpar.status()["protected"]

    # nas.yml: its variables parse (ansible-inventory) and drive a dir-target run; only the
    # mount point differs on this machine.
    listed = subprocess.run(
        [
            str(BIN / "ansible-inventory"),
            "-i",
            str(REPO / "playbooks/inventories/nas.yml"),
            "--list",
        ],
        cwd=REPO,
        env=ansible_env(tmp_path / "ansible"),
        capture_output=True,
        text=True,
        check=True,
    )
    nas = json.loads(listed.stdout)
    nas_vars = nas["_meta"]["hostvars"]["lpar-db01.example.com"]
    assert nas_vars["hvdump_archive_target"]["type"] == "dir"
    assert nas_vars["hvdump_archive_remove_local"] is True
    nas_dir = tmp_path / "nas/hvdump"
    nas_vars = {k: v for k, v in nas_vars.items() if k.startswith("hvdump_")}
    nas_vars["hvdump_archive_target"] = {**nas_vars["hvdump_archive_target"], "path": str(nas_dir)}
    inv_path = _inventory(tmp_path / "inventory-nas.yml", inv, names, **nas_vars)
    res = run_playbook(
        "collect-dumps.yml",
        inv_path,
        tmp_path / "ansible",
        "-e",
        f"hvdump_report_file={report_file}",
    )
    assert res.returncode == 0, res.stdout[-4000:]
    report = json.loads(report_file.read_text())["hosts"]
    for name in names:
        rep = report[name]
        # Every range was released in the first run, so the LPAR has no dump waiting any more.
        assert rep["status"] == "no dump", rep
        local = outputs[name]
        assert rep["archive"] == [str(nas_dir / local.name)], rep
        assert (nas_dir / local.name / "dump.kdump").exists()
        assert not (local / "dump.kdump").exists() and (local / "ARCHIVED.json").exists()
        assert recap(res.stdout)[name]["changed"] >= 1


@needs_sshd
def test_collect_straight_to_archive_host(tmp_path: Path) -> None:
    """hvdump_collect_target: the collect role collects each host straight to the archive
    host; nothing of the dump lands in the local dump_dir, the summary and the report name
    the remote directory, each verifies there against hvsim's truth, the LPARs are back in
    production; a rerun finds them collected."""
    from tests.collect_support import compare_with_truth

    sshd = Sshd(tmp_path / "sshd")
    try:
        with fleet(tmp_path / "fleet", 2, kinds=["crashed"], memory="1G", seed=21) as hosts:
            inv = yaml.safe_load((tmp_path / "fleet/inventory.yml").read_text())
            archive = tmp_path / "archive"
            archive_vars = sshd.target_vars(archive)
            inv_path = _inventory(
                tmp_path / "inventory.yml",
                inv,
                [h.name for h in hosts],
                hvdump_collect_target=archive_vars["hvdump_archive_target"],
                hvdump_collect_ssh_key=archive_vars["hvdump_archive_ssh_key"],
                hvdump_collect_ssh_options=archive_vars["hvdump_archive_ssh_options"],
                hvdump_collect_remote_hvdump=archive_vars["hvdump_archive_remote_hvdump"],
            )
            report_file = tmp_path / "report.json"
            res = run_playbook(
                "collect-dumps.yml", inv_path, tmp_path / "ansible",
                "-e", f"hvdump_report_file={report_file}",
            )  # fmt: skip
            assert res.returncode == 0, res.stdout[-4000:]
            report = json.loads(report_file.read_text())["hosts"]
            lines = summary_lines(res.stdout)
            for h in hosts:
                rep = report[h.name]
                assert rep["status"] == "collected", rep
                url = f"ssh://root@127.0.0.1:{sshd.port}{archive}/{rep['dump_id']}"
                assert rep["output"] == url, rep
                assert any(ln.startswith(h.name + " ") and url in ln for ln in lines), lines
                assert int(rep["released_bytes"]) > 0 and int(rep["dump_size"]) > 0, rep
                remote = archive / rep["dump_id"]
                verify = subprocess.run(
                    [str(BIN / "hvdump"), "verify", str(remote)],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                assert verify.returncode == 0, verify.stdout + verify.stderr
                local = Path(inv["all"]["children"]["lpars"]["hosts"][h.name]["hvdump_dump_dir"])
                assert not (local / rep["dump_id"]).exists()
                with Lpar.open(h.lpar) as lpar:
                    assert compare_with_truth(lpar, remote) == []
                    assert lpar.status()["protected"]
            again = run_playbook(
                "collect-dumps.yml", inv_path, tmp_path / "ansible",
                "-e", f"hvdump_report_file={report_file}",
            )  # fmt: skip
            assert again.returncode == 0, again.stdout[-4000:]
            assert all(
                r["status"] == "no dump"
                for r in json.loads(report_file.read_text())["hosts"].values()
            )
    finally:
        sshd.stop()
