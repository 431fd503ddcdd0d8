"""Shared helpers of the Ansible tests (no tests here): fleets, ansible-playbook runs, a loopback sshd."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = BIN / "ansible-playbook"
SSHD = Path("/usr/sbin/sshd")


def have_fuse() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


needs_ansible = pytest.mark.skipif(
    not ANSIBLE_PLAYBOOK.exists() or not have_fuse(),
    reason="needs ansible-core in the venv and FUSE",
)
needs_sshd = pytest.mark.skipif(
    not SSHD.exists() or shutil.which("rsync") is None, reason="needs openssh-server and rsync"
)


def ansible_env(home: Path) -> dict[str, str]:
    """An environment with its own ANSIBLE_HOME, temp and async folders (tests run in parallel)."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    for sub in ("tmp", "async", "remote"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    env.update(
        ANSIBLE_HOME=str(home),
        ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
        ANSIBLE_REMOTE_TEMP=str(home / "remote"),
        ANSIBLE_ASYNC_DIR=str(home / "async"),
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
    )
    return env


def run_playbook(
    playbook: str,
    inventory: Path,
    home: Path,
    *extra: str,
    check: bool = False,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    cmd = [str(ANSIBLE_PLAYBOOK), str(REPO / "playbooks" / playbook), "-i", str(inventory), *extra]
    if check:
        cmd.append("--check")
    return subprocess.run(
        cmd,
        cwd=REPO,
        env=ansible_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP as {host: {ok, changed, unreachable, failed, skipped, rescued, ignored}}."""
    out: dict[str, dict[str, int]] = {}
    text = output[output.rfind("PLAY RECAP") :]
    for line in text.splitlines()[1:]:
        if ":" not in line:
            continue
        host, _, rest = line.partition(":")
        fields = dict(kv.split("=") for kv in rest.split())
        out[host.strip()] = {k: int(v) for k, v in fields.items()}
    return out


def summary_lines(output: str) -> list[str]:
    """The operator summary lines the report play printed."""
    start = output.find('"hvdump collection summary')
    if start < 0:
        start = output.find('"hvdump status')
    lines = []
    for raw in output[start:].splitlines():
        if raw.strip() == "]":
            break
        lines.append(json.loads(raw.strip().rstrip(",")))
    return lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def fleet(directory: Path, count: int, **kwargs: Any) -> Iterator[list[Any]]:
    from hvsim.fleet import fleet_down, fleet_up

    hosts = fleet_up(directory, count, **kwargs)
    try:
        yield hosts
    finally:
        fleet_down(directory, remove=False)


class Sshd:
    """An sshd on 127.0.0.1 with a throwaway host key and user key, its own config, in the foreground."""

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.port = free_port()
        self.host_key = base / "host_ed25519"
        self.user_key = base / "id_ed25519"
        self.known_hosts = base / "known_hosts"
        for key in (self.host_key, self.user_key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
            )
        (base / "authorized_keys").write_text(Path(f"{self.user_key}.pub").read_text())
        os.chmod(base / "authorized_keys", 0o600)
        host_pub = Path(f"{self.host_key}.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.config = base / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
            f"PidFile {base}/sshd.pid\nAuthorizedKeysFile {base}/authorized_keys\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            f"SetEnv PATH={BIN}:/usr/local/bin:/usr/bin:/bin\nPermitUserEnvironment no\n"
            "LogLevel ERROR\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True, mode=0o755)
        self.proc = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(base / "sshd.log", "wb"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 10
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {(base / 'sshd.log').read_text()}")
            time.sleep(0.05)

    @property
    def ssh_options(self) -> list[str]:
        return [
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
        ]

    def target_vars(self, path: Path) -> dict[str, Any]:
        return {
            "hvdump_archive_target": {
                "type": "ssh",
                "location": "root@127.0.0.1",
                "path": str(path),
                "port": self.port,
            },
            "hvdump_archive_ssh_key": str(self.user_key),
            "hvdump_archive_ssh_options": self.ssh_options,
            "hvdump_archive_remote_hvdump": str(BIN / "hvdump"),
        }

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
