"""collect-dumps.yml against a mixed fleet of 8 simulated LPARs (+1 unreachable): odd hosts
run phyp dump, even ones fadump, with failures injected.

One collector killed part-way (the rerun resumes it), one output disk full, one
corrupt dump header, one unreachable host, one host whose archive path refuses
writes (caught by the archive check before collecting: nothing released); the
others collect, archive over real SSH (a loopback sshd) and free their local
copies only after the archive verified them. A third run changes nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from hvsim import Lpar
from tests.sshd_support import Sshd, free_port
from tests.test_ansible_helpers import (
    ANSIBLE_PLAYBOOK,
    REPO,
    ansible_env,
    fleet,
    needs_ansible,
    needs_sshd,
    recap,
    summary_lines,
)

pytestmark = [needs_ansible, needs_sshd, pytest.mark.slow, pytest.mark.fuse]

KINDS = [
    "crashed:panic",
    "crashed:oops",
    "healthy",
    "crashed:sysrq",
    "no-firmware",
    "corrupt-header",
    "crashed:hang",
    "crashed:machine-check",
]
KILLED, DISKFULL, ARCH_RO, CORRUPT = "lpar01", "lpar04", "lpar07", "lpar06"


def _mount(kind_opts: str, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", kind_opts, "tmpfs", str(path)], check=True)


def _line(lines: list[str], host: str) -> str:
    return next(ln for ln in lines if ln.startswith(host + " "))


def test_collect_dumps_failures_resume_idempotence(tmp_path: Path) -> None:
    sshd = Sshd(tmp_path / "sshd")
    archive = tmp_path / "archive"
    mounts: list[Path] = []
    try:
        with fleet(
            tmp_path / "fleet", 8, kinds=KINDS, memory="1G", seed=5, dumps=["phyp", "fadump"]
        ) as hosts:
            assert [h.dump for h in hosts] == ["phyp", "fadump"] * 4
            byname = {h.name: h for h in hosts}
            inv = yaml.safe_load((tmp_path / "fleet/inventory.yml").read_text())
            group = inv["all"]["children"]["lpars"]
            group["vars"].update(sshd.target_vars(archive))
            group["vars"]["hvdump_archive_remove_local"] = True
            group["vars"]["hvdump_collect_poll"] = 1
            # The disk-full host: a 40 MiB output disk; skip the up-front space check so the
            # collector itself runs out of space.
            _mount("size=40m,mode=0700", Path(byname[DISKFULL].dump_dir))
            mounts.append(Path(byname[DISKFULL].dump_dir))
            group["hosts"][DISKFULL]["hvdump_space_check"] = False
            # The host whose archive path refuses writes (a read-only filesystem on the archive host).
            ro = tmp_path / "archive-ro"
            _mount("ro,size=1m", ro)
            mounts.append(ro)
            group["hosts"][ARCH_RO]["hvdump_archive_target"] = {
                **group["vars"]["hvdump_archive_target"],
                "path": str(ro / "dumps"),
            }
            group["hosts"]["lpar99"] = {
                "ansible_connection": "ssh",
                "ansible_host": "127.0.0.1",
                "ansible_port": free_port(),
                "ansible_user": "root",
            }
            inv_path = tmp_path / "inventory.yml"
            inv_path.write_text(yaml.safe_dump(inv))
            home = tmp_path / "ansible"
            cmd = [
                str(ANSIBLE_PLAYBOOK),
                str(REPO / "playbooks/collect-dumps.yml"),
                "-i",
                str(inv_path),
                "-e",
                f"hvdump_report_file={tmp_path / 'report.json'}",
            ]

            # Run 1, killing lpar01's collector part-way.
            proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                env=ansible_env(home),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            killed = False
            crash = Path(byname[KILLED].dump_dir)
            deadline = time.monotonic() + 240
            while not killed and time.monotonic() < deadline and proc.poll() is None:
                for prog in crash.glob("*.progress.json") if crash.exists() else []:
                    out_dir = Path(str(prog)[: -len(".progress.json")])
                    journal = out_dir / "journal.jsonl"
                    chunks = journal.read_text().count('"t":"chunk"') if journal.exists() else 0
                    if chunks >= 6:
                        pid = json.loads(prog.read_text())["pid"]
                        os.kill(pid, signal.SIGKILL)
                        killed = True
                time.sleep(0.05)
            out1, _ = proc.communicate(timeout=300)
            assert killed, out1[-3000:]
            assert proc.returncode == 2, out1[-3000:]
            lines = summary_lines(out1)
            r1 = recap(out1)
            assert r1["lpar99"]["ignored"] == 1  # kept in the run: the report names it
            assert "unreachable" in _line(lines, "lpar99")
            assert "killed by signal SIGKILL" in _line(
                lines, KILLED
            ) and "rerun to resume" in _line(lines, KILLED)
            assert "failed" in _line(lines, DISKFULL) and "space" in _line(lines, DISKFULL).lower()
            # lpar06 runs fadump: its damaged structure is named as such
            assert "fadump memory structure version 0xdead" in _line(lines, CORRUPT)
            # The archive check before collecting: nothing collected, nothing released.
            assert "the archive target cannot be used" in _line(lines, ARCH_RO)
            assert "not writable" in _line(lines, ARCH_RO)
            assert (tmp_path / "report.json").exists(), out1[-5000:]
            report = json.loads((tmp_path / "report.json").read_text())["hosts"]
            for name in ("lpar02", "lpar08"):
                assert report[name]["status"] == "collected", report[name]
                assert report[name]["archive"][0].endswith(report[name]["dump_id"])
                local = Path(report[name]["output"])
                assert not (local / "dump.kdump").exists() and (local / "ARCHIVED.json").exists()
                assert (archive / report[name]["dump_id"] / "dump.kdump").exists()
            # Failing hosts keep the memory they have not saved reserved.
            for name in (KILLED, DISKFULL, CORRUPT, ARCH_RO):
                with Lpar.open(byname[name].lpar) as lpar:
                    st = lpar.status()
                assert st["dump_waiting"] and st["kernel"]["reserved_bytes"] > 0, name
            with Lpar.open(byname[ARCH_RO].lpar) as lpar:
                assert lpar.status()["counters"]["releases"] == 0
            # Nothing is removed locally that was not verified in the archive.
            ro_local = Path(report[ARCH_RO]["output"]) if "output" in report[ARCH_RO] else None
            assert ro_local is None or (ro_local / "dump.kdump").exists()
            assert not list(ro.glob("*"))

            # Run 2: the killed collection resumes and completes; the others stay as they were.
            res2 = subprocess.run(
                cmd,
                cwd=REPO,
                env=ansible_env(home),
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            lines2 = summary_lines(res2.stdout)
            assert "collected" in _line(lines2, KILLED), res2.stdout[-3000:]
            report2 = json.loads((tmp_path / "report.json").read_text())["hosts"]
            assert report2[KILLED]["resumed"] in (True, "True")
            assert (archive / report2[KILLED]["dump_id"] / "dump.kdump").exists()
            with Lpar.open(byname[KILLED].lpar) as lpar:
                assert lpar.status()["protected"]
            verify = subprocess.run(
                [
                    str(REPO / ".venv/bin/hvsim"),
                    "verify",
                    byname[KILLED].lpar,
                    "--as",
                    "collected",
                    "/dev/null",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            del verify  # ground truth comparison of kdump files belongs to the collector's tests
            assert recap(res2.stdout)["lpar02"]["changed"] == 0

            # Run 3: nothing left to do changes nothing.
            res3 = subprocess.run(
                cmd[:-2],
                cwd=REPO,
                env=ansible_env(home),
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            r3 = recap(res3.stdout)
            assert all(v["changed"] == 0 for v in r3.values()), res3.stdout[-3000:]
    finally:
        for m in mounts:
            subprocess.run(["umount", str(m)], check=False)
        sshd.stop()
