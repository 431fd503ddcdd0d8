"""One collector per dump through Ansible, and an archive that is re-checked before anything
irreversible (issue 14, items 1 and 6).

- collect-dumps.yml rerun while the previous run's collector still runs, its controller
  killed (local connection) or its SSH connection silently dropped (a loopback sshd): no second
  collector; without waiting the host is reported "in progress" with the owner's pid and
  directory; with waiting the rerun attaches and reports "collected"; the dump verifies against
  hvsim's ground truth and hvsim's release history shows one collector's releases.
- The archive copy deleted or damaged after ARCHIVED.json recorded it: remove_local keeps the
  local copy and fails the host with the reason; restored, the same run frees it.
- Bad archive settings, an unreachable or read-only archive: the host fails before collecting,
  and hvsim's release history shows that nothing was released.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from hvsim import Lpar
from tests.collect_support import compare_with_truth
from tests.sshd_support import Sshd, free_port
from tests.test_ansible_helpers import (
    ANSIBLE_PLAYBOOK,
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


# ----------------------------------------------------------------------------- helpers


def _line(output: str, host: str) -> str:
    return next(ln for ln in summary_lines(output) if ln.startswith(host + " "))


def _report(path: Path, host: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())["hosts"][host]
    return data


def _collected_attached(out: str, report: Path, name: str) -> dict[str, Any]:
    """The run's summary line and report say ``name`` was collected, attached to the
    collector that held the dump; its report entry."""
    line = _line(out, name)
    assert line.split()[1] == "collected", line
    rep = _report(report, name)
    assert rep["status"] == "collected" and rep["attached"] in (True, "True"), rep
    return rep


def _release(lpar_path: str) -> dict[str, Any]:
    """hvsim's release history of the LPAR's capture kernel (writes, counters, targets)."""
    with Lpar.open(lpar_path) as lpar:
        st = lpar.status()
    rel: dict[str, Any] = dict(st["kernel"].get("release") or {})
    rel["protected"] = st["protected"]
    rel["dump_waiting"] = st["dump_waiting"]
    rel["kernel_reserved_bytes"] = st["kernel"]["reserved_bytes"]
    rel["releases"] = st["counters"]["releases"]
    return rel


def _start(cmd: list[str], home: Path) -> subprocess.Popen[str]:
    """ansible-playbook in the background, in its own process group (the controller)."""
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=ansible_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _playbook(inventory: Path, *extra: str) -> list[str]:
    return [
        str(ANSIBLE_PLAYBOOK),
        str(REPO / "playbooks/collect-dumps.yml"),
        "-i",
        str(inventory),
        *extra,
    ]


def _stop_collector(
    dump_dir: Path, proc: subprocess.Popen[str], lpar_path: str, chunks: int = 3
) -> tuple[int, Path]:
    """Wait until the first run's collector has saved ``chunks`` chunks and released memory,
    then SIGSTOP it: it keeps holding the dump, mid-run, for as long as the test needs."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        for prog in dump_dir.glob("*.progress.json") if dump_dir.exists() else []:
            out = Path(str(prog)[: -len(".progress.json")])
            journal = out / "journal.jsonl"
            with contextlib.suppress(OSError, ValueError, KeyError):
                saved = journal.read_text().count('"t":"chunk"')
                pid = int(json.loads(prog.read_text())["pid"])
                if saved >= chunks and _release(lpar_path)["writes"] > 0:
                    os.kill(pid, signal.SIGSTOP)
                    return pid, out
        time.sleep(0.02)
    raise AssertionError("the first run's collector never got going")


def _collectors(root: str) -> list[int]:
    """Pids of ``hvdump collect`` processes for ``root`` (waiting or collecting)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"drgn_hvdump.cli" in argv and b"collect" in argv and root.encode() in argv:
            pids.append(int(entry.name))
    return pids


def _wait_for_waiter(root: str, owner: int, proc: subprocess.Popen[str]) -> int:
    """The rerun's collector process, waiting for ``owner`` (started with --wait)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        others = [p for p in _collectors(root) if p != owner]
        if others:
            time.sleep(0.5)  # past its first lock attempt
            return others[0]
        time.sleep(0.05)
    raise AssertionError("the rerun never started waiting for the running collector")


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Ansible's workers start their own sessions: a process group
    does not hold them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _ours(pid: int) -> bool:
    """Still one of the processes this test started (an ansible run, a module, a collector)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return any(word in argv for word in (b"ansible", b"AnsiballZ", b"drgn_hvdump", b"ssh"))


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for p in pids:
        if _ours(p):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)


def _end(proc: subprocess.Popen[str], pids: list[int] | None = None) -> None:
    """Kill an ansible-playbook run and what it started (``pids``: captured earlier)."""
    _signal(sorted(set(_tree(proc.pid) + (pids or []))), signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=30)


def _end_collector(pid: int) -> None:
    """The first run's collector gone (killed if the test failed before it finished)."""
    if pid <= 0:
        return
    _signal([pid], signal.SIGKILL)
    _signal([pid], signal.SIGCONT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.05)


def _check_one_collector(lpar_path: str, out: Path, *, exact_writes: bool) -> None:
    """The dump verifies and matches the crashed kernel; hvsim saw one collector's releases."""
    manifest = json.loads((out / "manifest.json").read_text())
    rel = _release(lpar_path)
    # Counters never past their targets (two collectors push them past), LPAR protected again.
    assert rel["reserved_counter"] == rel["reserved_target"], rel
    assert rel["scratch_counter"] == rel["scratch_target"], rel
    assert rel["protected"] and not rel["dump_waiting"], rel
    if exact_writes:
        planned = [w for w in manifest["release"]["writes"] if w["done"]]
        assert rel["writes"] == len(planned), (rel["writes"], len(planned))
    verify = subprocess.run(
        [str(BIN / "hvdump"), "verify", str(out)], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    with Lpar.open(lpar_path) as lpar:
        assert compare_with_truth(lpar, out) == []


# ----------------------------------------------------------- item 1: one collector per dump


def test_rerun_while_collector_runs_local(tmp_path: Path) -> None:
    """The controller is killed mid-collection (local connection): its collector goes on.
    A rerun with hvdump_collect_wait=false reports "in progress" and starts nothing; a rerun
    with the default attaches, waits, and reports "collected"."""
    with fleet(tmp_path / "fleet", 1, kinds=["crashed:panic"], memory="1G", seed=21) as hosts:
        h = hosts[0]
        inv = tmp_path / "fleet/inventory.yml"
        report = tmp_path / "report.json"
        run1 = _start(_playbook(inv), tmp_path / "ansible1")
        pid, tree1 = -1, []
        try:
            pid, out = _stop_collector(Path(h.dump_dir), run1, h.lpar)
            tree1 = _tree(run1.pid)
            # The controller dies (kill -9 ansible-playbook); the module and its collector on
            # the "host" do not.
            os.kill(run1.pid, signal.SIGKILL)
            before = _release(h.lpar)
            assert before["dump_waiting"] and before["writes"] > 0, before

            res = run_playbook(
                "collect-dumps.yml",
                inv,
                tmp_path / "ansible2",
                "-e",
                "hvdump_collect_wait=false",
                "-e",
                f"hvdump_report_file={report}",
            )
            assert res.returncode == 0, res.stdout[-4000:]
            line = _line(res.stdout, h.name)
            assert " in progress " in line, line
            assert f"collection in progress (pid {pid}, {out}" in line, line
            rep = _report(report, h.name)
            assert rep["status"] == "in progress" and rep["owner"]["pid"] == pid, rep
            assert rep["output"] == str(out), rep
            r = recap(res.stdout)[h.name]
            assert r["changed"] == 0 and r["failed"] == 0, r
            # Nothing was released meanwhile and no second collector is left behind.
            assert _release(h.lpar) == before
            assert _collectors(h.root) == [pid]
            assert '"t":"done"' not in (out / "journal.jsonl").read_text()

            # Check mode says the same, and does not wait.
            res = run_playbook(
                "collect-dumps.yml",
                inv,
                tmp_path / "ansible2",
                "-e",
                f"hvdump_report_file={report}",
                check=True,
            )
            assert res.returncode == 0, res.stdout[-4000:]
            assert " in progress " in _line(res.stdout, h.name)

            # The default: attach to the running collector, report its result.
            run3 = _start(
                _playbook(inv, "-e", f"hvdump_report_file={report}"), tmp_path / "ansible3"
            )
            try:
                _wait_for_waiter(h.root, pid, run3)
                assert _release(h.lpar)["writes"] == before["writes"]
                _signal([pid], signal.SIGCONT)
                out3, _ = run3.communicate(timeout=300)
            except BaseException:
                _end(run3)
                raise
            assert run3.returncode == 0, out3[-4000:]
            rep = _collected_attached(out3, report, h.name)
            assert rep["owner"]["pid"] == pid, rep
            assert recap(out3)[h.name]["changed"] >= 1
        finally:
            _end_collector(pid)
            _end(run1, tree1)
        _check_one_collector(h.lpar, out, exact_writes=True)

        # Nothing left: a further run changes nothing.
        res = run_playbook("collect-dumps.yml", inv, tmp_path / "ansible2")
        assert res.returncode == 0, res.stdout[-4000:]
        assert recap(res.stdout)[h.name]["changed"] == 0


@needs_sshd
def test_rerun_while_collector_runs_over_ssh(tmp_path: Path) -> None:
    """The LPAR reached over SSH (a loopback sshd). The first run's connection drops silently
    (its controller frozen: the session and the collector live on); a rerun that gives up
    waiting after 2 s reports "in progress"; a rerun with no limit attaches; then the dropped
    connection closes for good (the first run's session and collector die) and the waiting
    rerun takes the dump over, resumes, and reports "collected"."""
    sshd = Sshd(tmp_path / "sshd")
    try:
        with fleet(tmp_path / "fleet", 1, kinds=["crashed:oops"], memory="1G", seed=22) as hosts:
            h = hosts[0]
            inv = yaml.safe_load((tmp_path / "fleet/inventory.yml").read_text())
            host = inv["all"]["children"]["lpars"]["hosts"][h.name]
            host.update(
                ansible_connection="ssh",
                ansible_host="127.0.0.1",
                ansible_port=sshd.port,
                ansible_user="root",
                ansible_ssh_private_key_file=str(sshd.user_key),
                # One TCP connection per task, held by the controller's own ssh process (no
                # ControlPersist master outliving it): freezing the controller freezes the link.
                ansible_ssh_args="-o ControlMaster=no -o ControlPersist=no",
                ansible_ssh_common_args=" ".join(sshd.ssh_options),
                ansible_python_interpreter=str(BIN / "python"),
            )
            inv_path = tmp_path / "inventory.yml"
            inv_path.write_text(yaml.safe_dump(inv))
            report = tmp_path / "report.json"
            run1 = _start(_playbook(inv_path), tmp_path / "ansible1")
            pid, tree1 = -1, []
            try:
                pid, out = _stop_collector(Path(h.dump_dir), run1, h.lpar)
                # The link drops silently: the controller, its workers and its ssh client
                # frozen; sshd keeps the session, and the module and collector on the LPAR.
                tree1 = _tree(run1.pid)
                _signal(tree1, signal.SIGSTOP)
                before = _release(h.lpar)

                t0 = time.monotonic()
                res = run_playbook(
                    "collect-dumps.yml",
                    inv_path,
                    tmp_path / "ansible2",
                    "-e",
                    "hvdump_collect_wait_timeout=2",
                    "-e",
                    f"hvdump_report_file={report}",
                )
                assert res.returncode == 0, res.stdout[-4000:]
                assert time.monotonic() - t0 < 120
                line = _line(res.stdout, h.name)
                assert (
                    " in progress " in line and f"collection in progress (pid {pid}, {out}" in line
                )
                rep = _report(report, h.name)
                assert rep["status"] == "in progress" and rep["owner"]["pid"] == pid, rep
                assert recap(res.stdout)[h.name]["changed"] == 0
                assert _release(h.lpar) == before
                assert _collectors(h.root) == [pid]

                run3 = _start(
                    _playbook(inv_path, "-e", f"hvdump_report_file={report}"),
                    tmp_path / "ansible3",
                )
                try:
                    waiter = _wait_for_waiter(h.root, pid, run3)
                    assert _release(h.lpar)["writes"] == before["writes"]
                    # The dropped connection closes for good: sshd hangs up the first run's
                    # session, whose stopped collector goes with it (SIGHUP, then SIGCONT to the
                    # orphaned group); make sure it is gone, whatever it does with SIGHUP.
                    _signal(tree1, signal.SIGKILL)
                    _end_collector(pid)
                    out3, _ = run3.communicate(timeout=300)
                except BaseException:
                    _end(run3)
                    raise
                assert run3.returncode == 0, out3[-4000:]
                rep = _collected_attached(out3, report, h.name)
                assert rep["resumed"] in (True, "True"), rep
                assert waiter not in _collectors(h.root)
            finally:
                _end_collector(pid)
                _end(run1, tree1)
            # A collector killed part-way may have been stopped anywhere: counters at their
            # targets (never past), the dump complete and right.
            _check_one_collector(h.lpar, out, exact_writes=False)
    finally:
        sshd.stop()


# ------------------------------------------- item 6: the archive is checked before it matters


def test_archive_copy_gone_or_damaged_keeps_local(tmp_path: Path) -> None:
    """ARCHIVED.json says the copy verified, then the copy is damaged or deleted: a run with
    remove_local keeps the local copy and fails the host with the reason. Restored, it frees it."""
    archive = tmp_path / "archive"
    archive.mkdir(mode=0o700)
    with fleet(tmp_path / "fleet", 1, kinds=["crashed:sysrq"], memory="1G", seed=23) as hosts:
        h = hosts[0]
        inv = yaml.safe_load((tmp_path / "fleet/inventory.yml").read_text())
        inv["all"]["children"]["lpars"]["vars"].update(
            hvdump_archive_target={"type": "dir", "path": str(archive)},
            hvdump_archive_remote_hvdump=str(BIN / "hvdump"),
        )
        inv_path = tmp_path / "inventory.yml"
        inv_path.write_text(yaml.safe_dump(inv))
        report = tmp_path / "report.json"
        home = tmp_path / "ansible"
        res = run_playbook(
            "collect-dumps.yml", inv_path, home, "-e", f"hvdump_report_file={report}"
        )
        assert res.returncode == 0, res.stdout[-4000:]
        local = Path(_report(report, h.name)["output"])
        copy = archive / local.name
        assert (local / "ARCHIVED.json").exists() and (copy / "dump.kdump").exists()
        backup = tmp_path / "backup"
        shutil.copytree(copy, backup)
        remove = ("-e", "hvdump_archive_remove_local=true", "-e", f"hvdump_report_file={report}")

        def damage_copy() -> None:
            with open(copy / "dump.kdump", "r+b") as f:
                f.seek(-4096, os.SEEK_END)
                block = f.read(4096)
                f.seek(-4096, os.SEEK_END)
                f.write(bytes(b ^ 0xFF for b in block))

        def delete_copy() -> None:
            shutil.rmtree(copy)

        for name, spoil in (("damaged", damage_copy), ("deleted", delete_copy)):
            spoil()
            res = run_playbook("collect-dumps.yml", inv_path, home, *remove)
            assert res.returncode == 2, (name, res.stdout[-4000:])
            line = _line(res.stdout, h.name)
            assert "the archive copy no longer verifies, the local copy is kept" in line, line
            rep = _report(report, h.name)
            assert rep["status"] == "failed", rep
            assert (local / "dump.kdump").exists(), name
            verify = subprocess.run(
                [str(BIN / "hvdump"), "verify", str(local)],
                capture_output=True,
                text=True,
                check=False,
            )
            assert verify.returncode == 0, (name, verify.stdout + verify.stderr)
            assert recap(res.stdout)[h.name]["changed"] == 0
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(backup, copy)

        # Restored: the copy verifies again now, so the local data goes.
        res = run_playbook("collect-dumps.yml", inv_path, home, *remove)
        assert res.returncode == 0, res.stdout[-4000:]
        assert not (local / "dump.kdump").exists() and (local / "ARCHIVED.json").exists()
        verify = subprocess.run(
            [str(BIN / "hvdump"), "verify", str(copy)], capture_output=True, text=True, check=False
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr


def test_bad_archive_target_fails_before_any_release(tmp_path: Path) -> None:
    """Each host has one kind of bad archive (or collect) target; each fails at the check
    before collecting, and hvsim's release history shows nothing released. A host with a good target
    collects and archives in the same run."""
    ro = tmp_path / "archive-ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    good = tmp_path / "archive"
    good.mkdir(mode=0o700)
    bad: dict[str, tuple[dict[str, Any], str]] = {
        "lpar01": (
            {
                "hvdump_archive_target": {
                    "type": "ssh",
                    "location": "root@127.0.0.1",
                    "path": "/srv/hvdump",
                    "port": free_port(),
                },
            },
            "Connection refused",
        ),
        "lpar02": (
            {"hvdump_archive_target": {"type": "dir", "path": str(ro / "dumps")}},
            "not writable",
        ),
        "lpar03": (
            {"hvdump_archive_target": {"type": "ssh", "path": "/srv/hvdump"}},
            "location",
        ),
        "lpar04": (
            {"hvdump_archive_target": {"type": "ftp", "path": "/srv/hvdump"}},
            "must be one of",
        ),
        "lpar05": (
            {
                "hvdump_archive_target": {"type": "dir", "path": str(good)},
                "hvdump_archive_remote_hvdump": str(tmp_path / "no-such-hvdump"),
            },
            "does not run",
        ),
        # Straight to an archive host that does not answer: the collect module's own check.
        "lpar06": (
            {
                "hvdump_collect_target": {
                    "type": "ssh",
                    "location": "root@127.0.0.1",
                    "path": "/srv/hvdump",
                    "port": free_port(),
                },
            },
            "the collect target cannot be used, nothing was done",
        ),
    }
    try:
        with fleet(tmp_path / "fleet", 7, kinds=["crashed"], memory="1G", seed=24) as hosts:
            inv = yaml.safe_load((tmp_path / "fleet/inventory.yml").read_text())
            group = inv["all"]["children"]["lpars"]
            group["vars"].update(
                hvdump_archive_target={"type": "dir", "path": str(good)},
                hvdump_archive_remote_hvdump=str(BIN / "hvdump"),
                hvdump_archive_remove_local=True,
            )
            for name, (host_vars, _) in bad.items():
                group["hosts"][name].update(host_vars)
            inv_path = tmp_path / "inventory.yml"
            inv_path.write_text(yaml.safe_dump(inv))
            report = tmp_path / "report.json"
            before = {h.name: _release(h.lpar) for h in hosts}
            res = run_playbook(
                "collect-dumps.yml",
                inv_path,
                tmp_path / "ansible",
                "-e",
                f"hvdump_report_file={report}",
            )
            assert res.returncode == 2, res.stdout[-4000:]
            for h in hosts:
                rel = _release(h.lpar)
                rep = _report(report, h.name)
                if h.name not in bad:
                    assert rep["status"] == "collected", rep
                    assert rel["protected"] and rel["writes"] > 0, rel
                    assert (good / rep["dump_id"] / "dump.kdump").exists()
                    continue
                line = _line(res.stdout, h.name)
                assert rep["status"] == "failed", rep
                want_task = "collector" if h.name == "lpar06" else "archive"
                assert want_task in rep["failed_task"].lower(), rep
                assert bad[h.name][1] in rep["reason"], rep
                # Nothing released, nothing collected: the memory is all still reserved.
                assert rel == before[h.name], (h.name, rel, before[h.name])
                assert rel["writes"] == 0 and rel["releases"] == 0, rel
                assert rel["dump_waiting"], rel
                assert not any(Path(h.dump_dir).glob("*/journal.jsonl")), line
    finally:
        subprocess.run(["umount", str(ro)], check=False)
