"""Every command of the operator runbooks (docs/runbooks/*.md), run as written on a simulated
fleet: INVENTORY, LPAR, DIR and DUMP_ID are filled in, paths an operator would type (/root,
/mnt/nas, /etc/hvdump, /var/crash/hvdump, /sys) point into the test's directories, and
ad-hoc module runs name the simulated LPAR's root. ``test_every_runbook_command_is_run``
keeps the list below and the runbooks equal: a command added to a runbook fails it until a
test runs it."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from hvsim import Lpar
from hvsim.kernel_image import image_path
from tests.sshd_support import free_port
from tests.test_ansible_helpers import (
    BIN,
    REPO,
    ansible_env,
    fleet,
    needs_ansible,
    recap,
    summary_lines,
)

RUNBOOKS = REPO / "docs/runbooks"
COMMAND = re.compile(r"`((?:ansible-playbook|ansible|hvdump|drgn) [^`]+)`")
# Mentions of a tool in the text, not commands to type.
MENTIONS = {"hvdump verify"}

PB_STATUS = "ansible-playbook playbooks/dump-status.yml -i INVENTORY"
PB_COLLECT = "ansible-playbook playbooks/collect-dumps.yml -i INVENTORY"
STATUS_LIMIT = f"{PB_STATUS} --limit LPAR"
STATUS_REPORT = f"{PB_STATUS} -e hvdump_report_file=/root/status.json"
COLLECT_LIMIT = f"{PB_COLLECT} --limit LPAR"
COLLECT_HOSTS = f"{PB_COLLECT} -e hvdump_hosts=LPAR"
COLLECT_MANY = (
    f"{PB_COLLECT} -f 8 -e hvdump_archive_concurrency=4 -e hvdump_report_csv=/root/collect.csv"
)
COLLECT_NAS = (
    f"{PB_COLLECT} -e "
    """'{"hvdump_archive_target": {"type": "dir", "path": "/mnt/nas/hvdump"}}'"""
)
COLLECT_NO_WAIT = f"{PB_COLLECT} -e hvdump_collect_wait=false"
COLLECT_SCRUB = f"{PB_COLLECT} -e hvdump_scrub_filter=/etc/hvdump/scrub.conf"
REGISTER = (
    'ansible LPAR -i INVENTORY -m ansible.builtin.shell -a "echo 1 > /sys/kernel/fadump/registered"'
)
RELEASE = (
    'ansible LPAR -i INVENTORY -m hvdump.power.hvdump_release -a "output=/var/crash/hvdump/DUMP_ID"'
)
ABANDON = 'ansible LPAR -i INVENTORY -m hvdump.power.hvdump_release -a "force=true"'
RUN = {
    STATUS_LIMIT, STATUS_REPORT, PB_STATUS, COLLECT_LIMIT, COLLECT_HOSTS, COLLECT_MANY,
    COLLECT_NAS, COLLECT_NO_WAIT, COLLECT_SCRUB, PB_COLLECT, REGISTER, RELEASE, ABANDON,
    "hvdump status", "hvdump verify DIR", "drgn -c DIR/dump.kdump -s vmlinux",
}  # fmt: skip


def runbook_commands() -> set[str]:
    found: set[str] = set()
    for md in RUNBOOKS.glob("*.md"):
        found.update(COMMAND.findall(md.read_text().replace("\n   ", " ")))
    return found - MENTIONS


def test_every_runbook_command_is_run() -> None:
    assert runbook_commands() == RUN


class Runbook:
    """Runs runbook commands against one fleet."""

    def __init__(self, tmp_path: Path, inventory: Path) -> None:
        self.tmp = tmp_path
        self.inventory = inventory
        self.env = ansible_env(tmp_path / "ansible")
        self.inv = yaml.safe_load(inventory.read_text()) if inventory.exists() else {}

    def host(self, name: str) -> dict[str, Any]:
        hosts: dict[str, dict[str, Any]] = self.inv["all"]["children"]["lpars"]["hosts"]
        return hosts[name]

    def run(
        self, command: str, lpar: str = "", extra: str = "", stdin: str | None = None, **fill: str
    ) -> subprocess.CompletedProcess[str]:
        assert command in RUN, command
        text = command.replace("INVENTORY", shlex.quote(str(self.inventory)))
        for word, value in fill.items():
            text = text.replace(word, value)
        if lpar:
            h = self.host(lpar)
            text = text.replace("LPAR", lpar)
            text = text.replace("/var/crash/hvdump", h["hvdump_dump_dir"])
            text = text.replace("/sys/", f"{h['hvdump_root']}/sys/")
            text = text.replace(' -a "', f' -a "root={h["hvdump_root"]} ')
            if text.startswith("hvdump status"):
                text += f" --root {shlex.quote(h['hvdump_root'])}"
        for path in ("/root/", "/mnt/nas/", "/etc/hvdump/"):
            text = text.replace(path, f"{self.tmp}{path}")
        return subprocess.run(
            ["bash", "-c", f"{text} {extra}"],
            cwd=REPO,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )


def _line(output: str, host: str) -> list[str]:
    return next(ln for ln in summary_lines(output) if ln.startswith(host + " ")).split()


def _hosts_listed(output: str) -> list[str]:
    return [ln.split()[0] for ln in summary_lines(output)[2:-1]]


def _status(lpar: str) -> dict[str, Any]:
    with Lpar.open(lpar) as h:
        return h.status()


def _waiting_collectors(root: str, other_than: int) -> list[int]:
    """Collectors of ``root`` started with --wait, other than ``other_than``."""
    out = subprocess.run(
        ["pgrep", "-f", f"collect --root {root} .*--wait"], capture_output=True, text=True
    )
    return [int(p) for p in out.stdout.split() if int(p) != other_than]


def _write_inventory(tmp_path: Path, inv: dict[str, Any]) -> Path:
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(inv))
    return path


@needs_ansible
@pytest.mark.slow
@pytest.mark.fuse
def test_lpar_crashed(tmp_path: Path) -> None:
    """lpar-crashed.md: one LPAR of three, by --limit and by hvdump_hosts; the summary lists
    only it; verify and drgn on the result; a name not in the inventory is an error."""
    kinds = ["crashed", "crashed", "healthy"]
    with fleet(tmp_path / "fleet", 3, kinds=kinds, memory="1G", seed=5) as hosts:
        rb = Runbook(tmp_path, tmp_path / "fleet/inventory.yml")
        status = rb.run(STATUS_LIMIT, "lpar01")
        assert status.returncode == 0, status.stdout[-3000:]
        assert [ln.split()[0] for ln in summary_lines(status.stdout)[2:]] == ["lpar01"]
        on_lpar = rb.run("hvdump status", "lpar01")
        assert on_lpar.returncode == 0 and "dump waiting:        yes" in on_lpar.stdout

        res = rb.run(COLLECT_LIMIT, "lpar01")
        assert res.returncode == 0, res.stdout[-4000:]
        assert _hosts_listed(res.stdout) == ["lpar01"]
        line = _line(res.stdout, "lpar01")
        assert line[1] == "collected" and line[-1].startswith(hosts[0].dump_dir), line
        assert _status(hosts[1].lpar)["dump_waiting"]  # the other LPAR was left alone
        assert set(recap(res.stdout)) == {"lpar01"}

        res2 = rb.run(COLLECT_HOSTS, "lpar02")
        assert res2.returncode == 0, res2.stdout[-4000:]
        assert _hosts_listed(res2.stdout) == ["lpar02"]
        assert _status(hosts[1].lpar)["protected"]

        directory = _line(res.stdout, "lpar01")[-1]
        verify = rb.run("hvdump verify DIR", DIR=directory)
        assert verify.returncode == 0 and "OK" in verify.stdout, verify.stdout + verify.stderr
        drgn = rb.run(
            "drgn -c DIR/dump.kdump -s vmlinux",
            DIR=directory,
            vmlinux=str(image_path(hosts[0].endian)),
            extra="-q",
            stdin="print([f.name for f in prog.crashed_thread().stack_trace()])\n",
        )
        assert drgn.returncode == 0 and "Traceback" not in drgn.stderr, drgn.stderr
        assert "panic" in drgn.stdout, drgn.stdout

        # A name that is not in the inventory: an error, not "nothing to collect".
        typo = rb.run(COLLECT_LIMIT, "lpar01", LPAR="lpar1")
        assert typo.returncode == 1 and "Could not match supplied host pattern" in typo.stderr
        typo2 = rb.run(COLLECT_HOSTS, "lpar01", LPAR="lpar1")
        assert typo2.returncode == 2 and "no hosts to work on" in typo2.stdout, typo2.stdout
        missing = Runbook(tmp_path, tmp_path / "no-such-inventory.yml").run(PB_COLLECT)
        assert missing.returncode == 2 and "no hosts to work on" in missing.stdout


@needs_ansible
@pytest.mark.slow
@pytest.mark.fuse
def test_many_crashed(tmp_path: Path) -> None:
    """many-crashed.md on 4 crashed LPARs, one more that cannot be reached, an archive: the
    status report, the collection with its throttles and CSV, the unreachable host first with
    its ssh error, a totals line, exit 2; then waves that stop after failures."""
    archive = tmp_path / "archive"
    archive.mkdir(mode=0o700)
    with fleet(tmp_path / "fleet", 4, kinds=["crashed"], memory="1G", seed=6) as hosts:
        inv = yaml.safe_load((tmp_path / "fleet/inventory.yml").read_text())
        group = inv["all"]["children"]["lpars"]
        group["vars"].update(
            hvdump_archive_target={"type": "dir", "path": str(archive)},
            hvdump_archive_remote_hvdump=str(BIN / "hvdump"),
        )
        group["hosts"]["lpar99"] = {
            "ansible_connection": "ssh",
            "ansible_host": "127.0.0.1",
            "ansible_port": free_port(),
            "hvdump_root": "/nonexistent",
            "hvdump_dump_dir": str(tmp_path / "crash99"),
        }
        rb = Runbook(tmp_path, _write_inventory(tmp_path, inv))
        (tmp_path / "root").mkdir()
        status = rb.run(STATUS_REPORT)
        assert status.returncode == 2, status.stdout[-3000:]
        report = json.loads((tmp_path / "root/status.json").read_text())
        assert all(report[h.name]["dump_waiting"] for h in hosts)
        assert report["lpar99"] is None
        assert "Connection refused" in _line(status.stdout, "lpar99")[-1] + status.stdout

        res = rb.run(COLLECT_MANY)
        assert res.returncode == 2, res.stdout[-4000:]
        lines = summary_lines(res.stdout)
        assert lines[2].split()[:2] == ["lpar99", "unreachable"], lines
        assert "Connection refused" in lines[2]
        assert lines[-1].split()[:3] == ["total", "5", "hosts"] and "lpar99" in lines[-1]
        rows = list(csv.DictReader((tmp_path / "root/collect.csv").open()))
        assert rows[0]["host"] == "lpar99"
        for r in rows[1:]:
            assert r["status"] == "collected" and r["held_bytes"] == "0", r
            assert r["location"].startswith(str(archive)), r
            assert int(r["freed_bytes"]) > 0
        for h in hosts:
            assert _status(h.lpar)["protected"]


@needs_ansible
@pytest.mark.slow
@pytest.mark.fuse
def test_waves_stop_after_failures(tmp_path: Path) -> None:
    """many-crashed.md's waves: one LPAR at a time; the first fails (a bad archive target), so
    no other starts; none of them released anything."""
    with fleet(tmp_path / "fleet", 3, kinds=["crashed"], memory="1G", seed=7) as hosts:
        inv = yaml.safe_load((tmp_path / "fleet/inventory.yml").read_text())
        inv["all"]["children"]["lpars"]["hosts"]["lpar01"]["hvdump_archive_target"] = {
            "type": "ssh", "location": "root@127.0.0.1", "port": free_port(), "path": "/x",
        }  # fmt: skip
        rb = Runbook(tmp_path, _write_inventory(tmp_path, inv))
        (tmp_path / "root").mkdir()
        res = rb.run(COLLECT_MANY, extra="-e hvdump_serial=1 -e hvdump_max_fail_percentage=20")
        assert res.returncode == 2, res.stdout[-4000:]
        rows = {r["host"]: r for r in csv.DictReader((tmp_path / "root/collect.csv").open())}
        assert "the archive target cannot be used" in rows["lpar01"]["reason"]
        # lpar02 sees 1 of 1 done failed; lpar03 2 of 2 (lpar02 not started counts).
        for n, name in enumerate(("lpar02", "lpar03"), 1):
            assert rows[name]["status"] == "failed", rows[name]
            assert f"not started: {n} of {n} hosts done so far failed" in rows[name]["reason"]
        for h in hosts:
            st = _status(h.lpar)
            assert st["dump_waiting"] and st["counters"]["releases"] == 0, st


@needs_ansible
@pytest.mark.slow
@pytest.mark.fuse
def test_archive_problems_and_sensitive_data(tmp_path: Path) -> None:
    """archive-problems.md step 2 (one run to the NAS instead of the inventory's archive host,
    which is down) and sensitive-data.md (a scrub filter); later runs with the inventory's
    target name the NAS copy and copy nothing; the rerun changes nothing."""
    nas = tmp_path / "mnt/nas/hvdump"
    (tmp_path / "etc/hvdump").mkdir(parents=True)
    (tmp_path / "etc/hvdump/scrub.conf").write_text("erase init_uts_ns size 64\n")
    with fleet(tmp_path / "fleet", 2, kinds=["crashed"], memory="1G", seed=3) as hosts:
        inv = yaml.safe_load((tmp_path / "fleet/inventory.yml").read_text())
        group = inv["all"]["children"]["lpars"]
        group["vars"].update(
            hvdump_archive_target={
                "type": "ssh", "location": "root@127.0.0.1", "port": free_port(),
                "path": "/srv/hvdump",
            },
            hvdump_archive_remove_local=True,
            hvdump_archive_remote_hvdump=str(BIN / "hvdump"),
        )  # fmt: skip
        rb = Runbook(tmp_path, _write_inventory(tmp_path, inv))
        down = rb.run(COLLECT_LIMIT, "lpar01")
        assert down.returncode == 2 and "the archive target cannot be used" in down.stdout
        assert _status(hosts[0].lpar)["counters"]["releases"] == 0

        res = rb.run(COLLECT_NAS, extra="--limit lpar01")
        assert res.returncode == 0, res.stdout[-4000:]
        where = _line(res.stdout, "lpar01")[-1]
        assert where.startswith(str(nas)) and (Path(where) / "dump.kdump").exists()
        later = rb.run(PB_COLLECT, extra="--limit lpar01")
        assert later.returncode == 0, later.stdout[-4000:]
        assert _line(later.stdout, "lpar01")[-1] == where
        assert recap(later.stdout)["lpar01"]["changed"] == 0

        scrub = rb.run(
            COLLECT_SCRUB,
            extra=f"--limit lpar02 -e '{json.dumps({'hvdump_archive_target': {'type': 'dir', 'path': str(nas)}})}'",
        )
        assert scrub.returncode == 0, scrub.stdout[-4000:]
        copy = Path(_line(scrub.stdout, "lpar02")[-1])
        manifest = json.loads((copy / "manifest.json").read_text())
        assert [r["symbol"] for r in manifest["scrub"]] == ["init_uts_ns"]
        for p in copy.iterdir():
            assert p.stat().st_mode & 0o777 == 0o600, p
        assert copy.stat().st_mode & 0o777 == 0o700


@needs_ansible
@pytest.mark.slow
@pytest.mark.fuse
def test_resume_in_progress(tmp_path: Path) -> None:
    """resume.md: while a collector from an earlier run still holds a dump, the status says
    "collecting", the no-wait run reports "in progress" (not a failure), and the plain rerun
    attaches to it and reports it collected."""
    with fleet(tmp_path / "fleet", 1, kinds=["crashed"], memory="2G", seed=8) as hosts:
        h = hosts[0]
        rb = Runbook(tmp_path, tmp_path / "fleet/inventory.yml")
        first = rb.run(PB_STATUS, extra=f"-e hvdump_report_file={tmp_path / 'status.json'}")
        dump_id = json.loads((tmp_path / "status.json").read_text())[h.name]["dump_id"]
        # The earlier run's collector (as its module started it: into DUMP_DIR/DUMP_ID), still
        # running after the controller lost it.
        out_dir = Path(h.dump_dir) / dump_id
        assert first.returncode == 0, first.stdout[-2000:]
        proc = subprocess.Popen(
            [str(BIN / "hvdump"), "collect", "--root", h.root, "-o", str(out_dir),
             "--no-progress", "--chunk-size", "8M"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            while not (out_dir / "journal.jsonl").exists():
                assert proc.poll() is None
            os.kill(proc.pid, signal.SIGSTOP)
            status = rb.run(PB_STATUS)
            assert status.returncode == 0, status.stdout[-3000:]
            assert f"being collected by pid {proc.pid}" in " ".join(_line(status.stdout, h.name))
            look = rb.run(COLLECT_NO_WAIT)
            assert look.returncode == 0, look.stdout[-3000:]
            line = " ".join(_line(look.stdout, h.name))
            assert "in progress" in line and f"pid {proc.pid}" in line, line
            # The plain rerun attaches: its collector waits for the stopped one's lock; only
            # then does the stopped one go on (else it could finish before the rerun looks).
            again_proc = subprocess.Popen(
                ["bash", "-c", f"{PB_COLLECT.replace('INVENTORY', str(rb.inventory))}"],
                cwd=REPO, env=rb.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            deadline = time.monotonic() + 240
            while not _waiting_collectors(h.root, proc.pid):
                assert again_proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
            os.kill(proc.pid, signal.SIGCONT)
            out, _ = again_proc.communicate(timeout=600)
            assert again_proc.returncode == 0, out[-3000:]
            assert _line(out, h.name)[1] == "collected", out[-3000:]
        finally:
            os.kill(proc.pid, signal.SIGCONT)
            proc.wait(timeout=300)
        assert _status(h.lpar)["protected"]


@needs_ansible
@pytest.mark.slow
@pytest.mark.fuse
def test_protected(tmp_path: Path) -> None:
    """protected.md: a dump collected with release never and archived with remove_local keeps
    its local copy while its memory is held, and the by-hand release works from it; a fadump
    LPAR whose release_mem someone wrote by hand registers with the shell command; a corrupt
    dump is given up with force; each LPAR then shows protected."""
    archive = tmp_path / "archive"
    archive.mkdir(mode=0o700)
    kinds = ["crashed", "crashed", "corrupt-header"]
    with fleet(
        tmp_path / "fleet", 3, kinds=kinds, memory="1G", seed=9, dumps=["phyp", "fadump", "phyp"]
    ) as hosts:
        inv = yaml.safe_load((tmp_path / "fleet/inventory.yml").read_text())
        inv["all"]["children"]["lpars"]["vars"].update(
            hvdump_archive_target={"type": "dir", "path": str(archive)},
            hvdump_archive_remove_local=True,
            hvdump_archive_remote_hvdump=str(BIN / "hvdump"),
        )
        rb = Runbook(tmp_path, _write_inventory(tmp_path, inv))
        res = rb.run(PB_COLLECT, extra="--limit lpar01 -e hvdump_release=never")
        assert res.returncode == 0, res.stdout[-4000:]
        dump_id = Path(_line(res.stdout, "lpar01")[-1]).name
        local = Path(hosts[0].dump_dir) / dump_id
        assert (local / "dump.kdump").exists() and (archive / dump_id / "dump.kdump").exists()
        status = rb.run(PB_STATUS)
        assert _line(status.stdout, "lpar01")[3] == "no"
        rel = rb.run(RELEASE, "lpar01", DUMP_ID=dump_id)
        assert rel.returncode == 0, rel.stdout + rel.stderr
        assert _status(hosts[0].lpar)["protected"]

        # fadump: someone gave the memory back by hand; the LPAR is not registered.
        fad = hosts[1]
        Path(fad.root, "sys/kernel/fadump/release_mem").write_text("1\n")
        assert not _status(fad.lpar)["protected"]
        reg = rb.run(REGISTER, "lpar02")
        assert reg.returncode == 0, reg.stdout + reg.stderr
        assert _status(fad.lpar)["protected"]

        gone = rb.run(ABANDON, "lpar03")
        assert gone.returncode == 0, gone.stdout + gone.stderr
        status = rb.run(PB_STATUS)
        assert status.returncode == 0
        for h in hosts:
            assert _line(status.stdout, h.name)[3] == "yes", status.stdout[-2000:]


@needs_ansible
@pytest.mark.slow
@pytest.mark.fuse
def test_install_without_an_interpreter_variable(tmp_path: Path) -> None:
    """hvdump_install=true on an inventory without ansible_python_interpreter: the install
    step uses the modules' own interpreter (here already has hvdump: nothing to do)."""
    with fleet(tmp_path / "fleet", 1, kinds=["crashed"], memory="1G", seed=10):
        inv = yaml.safe_load((tmp_path / "fleet/inventory.yml").read_text())
        del inv["all"]["children"]["lpars"]["vars"]["ansible_python_interpreter"]
        rb = Runbook(tmp_path, _write_inventory(tmp_path, inv))
        rb.env["ANSIBLE_PYTHON_INTERPRETER"] = sys.executable
        res = rb.run(PB_COLLECT, extra="-e hvdump_install=true")
        assert res.returncode == 0, res.stdout[-4000:]
        assert "Install hvdump on the host" in res.stdout
        assert _line(res.stdout, "lpar01")[1] == "collected"


@needs_ansible
@pytest.mark.slow
@pytest.mark.fuse
def test_status_shows_each_lpars_interface_on_a_mixed_fleet(tmp_path: Path) -> None:
    """dump-status.yml on phyp and fadump LPARs: the interface column, fadump's own
    registered flag, and facts that name the interface."""
    kinds = ["crashed", "crashed", "healthy", "healthy"]
    with fleet(
        tmp_path / "fleet", 4, kinds=kinds, memory="1G", seed=4, dumps=["phyp", "fadump"]
    ) as hosts:
        (tmp_path / "root").mkdir()
        res = Runbook(tmp_path, tmp_path / "fleet/inventory.yml").run(STATUS_REPORT)
        assert res.returncode == 0, res.stdout[-3000:]
    report = json.loads((tmp_path / "root/status.json").read_text())
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
